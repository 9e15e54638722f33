//! `fluxbuild accuracy`: each precision's error against fp32, per network and end to end, on
//! ONNX Runtime's CPU; writes OUT/accuracy.md and OUT/accuracy.json.

use crate::accuracy::{markdown, measure, Settings, PROMPTS};
use crate::calibrate::Prompts;
use crate::output::{Output, STEPS_BAR};
use anyhow::{Context, Result};
use fluxbuild_contract::files::write_atomic;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A diffusers FLUX pipeline folder; repeat for several (one report).
    #[arg(long = "checkpoint", value_name = "PIPELINE", required = true)]
    checkpoints: Vec<PathBuf>,
    /// Folder for accuracy.md and accuracy.json.
    #[arg(long, default_value = "bench")]
    out: PathBuf,
    /// Denoising steps (the reference, the precisions and the FP8 calibration).
    #[arg(long, default_value_t = 4)]
    steps: usize,
    /// Image height in pixels, a multiple of 16.
    #[arg(long, default_value_t = 64)]
    height: usize,
    /// Image width in pixels, a multiple of 16.
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// Seed of the initial noise; prompt i uses seed + i.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// T5 tokens per prompt.
    #[arg(long, default_value_t = 64)]
    max_sequence_length: usize,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let settings = Settings {
        prompts: PROMPTS.iter().map(|p| p.to_string()).collect(),
        height: args.height,
        width: args.width,
        steps: args.steps,
        seed: args.seed,
        max_sequence_length: args.max_sequence_length,
        calibration_prompts: Prompts::bundled(),
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}: cannot create", args.out.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".fluxbuild-accuracy-")
        .tempdir_in(&args.out)?;
    let bar = out.bar(0, STEPS_BAR);
    let report = measure(&args.checkpoints, &settings, work.path(), &bar)?;
    let (md_path, json_path) = (args.out.join("accuracy.md"), args.out.join("accuracy.json"));
    write_atomic(&json_path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    let md = markdown(&report);
    write_atomic(&md_path, md.as_bytes())?;
    out.result(&report, || {
        format!("{md}\nwrote {} and {}", md_path.display(), json_path.display())
    });
    Ok(())
}
