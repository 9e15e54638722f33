//! `fluxbuild perf-data`: perf_analyzer's `--input-data` file for a packaged repository's `flux`.

use crate::deploy::perf_data::{input_data, Field, MODEL};
use crate::output::Output;
use anyhow::{Context, Result};
use fluxbuild_contract::files::write_atomic;
use fluxbuild_contract::output_dir::refuse_overlap;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The model repository (`fluxbuild package --out`); its flux/config.pbtxt names the inputs.
    #[arg(long)]
    repo: PathBuf,
    /// One request per prompt (perf_analyzer cycles through them). Repeatable.
    #[arg(long = "prompt", value_name = "TEXT", required = true)]
    prompts: Vec<String>,
    #[arg(long)]
    height: Option<u32>,
    #[arg(long)]
    width: Option<u32>,
    #[arg(long)]
    steps: Option<u32>,
    #[arg(long)]
    guidance: Option<f32>,
    /// The first request's seed; request i gets seed + i.
    #[arg(long)]
    seed: Option<u64>,
    /// The JSON file to write (`perf_analyzer --input-data FILE`).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    refuse_overlap(&args.out, std::slice::from_ref(&args.repo))?;
    let fields: Vec<Field> = [
        ("height", args.height.map(f64::from)),
        ("width", args.width.map(f64::from)),
        ("steps", args.steps.map(f64::from)),
        ("guidance", args.guidance.map(f64::from)),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name.to_string(), value?)))
    .collect();
    let data = input_data(&args.repo, &args.prompts, &fields, args.seed)?;
    let text = serde_json::to_string_pretty(&data)?;
    write_atomic(&args.out, text.as_bytes()).with_context(|| format!("{}: cannot write", args.out.display()))?;
    let report = json!({ "file": args.out, "model": MODEL, "requests": args.prompts.len() });
    out.result(&report, || {
        format!(
            "wrote {} ({} requests for {MODEL}; perf_analyzer -m {MODEL} --input-data {})",
            args.out.display(),
            args.prompts.len(),
            args.out.display()
        )
    });
    Ok(())
}
