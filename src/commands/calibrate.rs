//! `fluxbuild calibrate`: the activation ranges FP8 export needs, measured by running the fp32
//! graphs over calibration prompts and denoising steps.

use crate::calibrate::{calibrate, CalibrationRequest, Prompts, DEFAULT_PROMPTS};
use crate::output::{Output, STEPS_BAR};
use anyhow::{bail, Result};
use fluxbuild_contract::files::sha256_file;
use fluxbuild_contract::output_dir::refuse_overlap;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Folder written by `fluxbuild export --precision fp32` (all four submodels).
    #[arg(long, value_name = "DIR")]
    models: PathBuf,
    /// Calibration prompts, one a line (# comments), all used [default: the first 4 of the bundled
    /// profiles/calibration-prompts.txt].
    #[arg(long, value_name = "FILE")]
    prompts: Option<PathBuf>,
    /// Denoising steps per prompt [default: 8 for dev, 4 for schnell].
    #[arg(long)]
    steps: Option<usize>,
    /// Image height in pixels, a multiple of 16 [default: 512].
    #[arg(long)]
    height: Option<usize>,
    /// Image width in pixels, a multiple of 16 [default: 512].
    #[arg(long)]
    width: Option<usize>,
    /// Seed of the initial noise; prompt i uses seed + i.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Prompts per pipeline run (more: fewer graph loads, more memory).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// The calibration file to write.
    #[arg(long, default_value = "calibration.json")]
    out: PathBuf,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let inputs: Vec<PathBuf> = [Some(args.models.clone()), args.prompts.clone()]
        .into_iter()
        .flatten()
        .collect();
    refuse_overlap(&args.out, &inputs)?;
    if args.out.is_dir() {
        bail!(
            "--out {}: a folder; give the calibration file's name (e.g. calibration.json)",
            args.out.display()
        );
    }
    let prompts = match &args.prompts {
        Some(path) => Prompts::read(path)?,
        None => Prompts::bundled().first(DEFAULT_PROMPTS),
    };
    let request = CalibrationRequest {
        models: args.models,
        prompts,
        steps: args.steps,
        height: args.height,
        width: args.width,
        seed: args.seed,
        batch: args.batch,
    };
    let bar = out.bar(0, STEPS_BAR);
    let calibration = calibrate(&request, &args.out, &bar)?;
    for warning in &calibration.warnings {
        out.warn(warning);
    }
    let table = &calibration.table;
    let (lo, hi) = table
        .amax
        .values()
        .fold((f32::INFINITY, 0f32), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let report = json!({
        "calibration": args.out,
        "sha256": sha256_file(&args.out)?,
        "layers": table.amax.len(),
        "amax_min": lo,
        "amax_max": hi,
        "model": table.model,
        "settings": table.settings,
    });
    out.result(&report, || {
        format!(
            "wrote {} ({} linear layers, input amax {lo:.3e} .. {hi:.3e}, {} prompts x {} steps)",
            args.out.display(),
            table.amax.len(),
            request.prompts.prompts.len(),
            table.settings["steps"]
        )
    });
    Ok(())
}
