//! `fluxbuild package`: exported graphs (cpu) or engines (gpu) -> a Triton model repository.

use crate::output::{Output, BYTES_BAR};
use crate::package::{package, Options, Serving, Target};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// What `fluxbuild export` wrote (graphs, tokenizers, scheduler config, manifest.json).
    #[arg(long)]
    models: PathBuf,
    /// The repository folder to write.
    #[arg(long)]
    out: PathBuf,
    /// gpu: TensorRT plans from --engines; cpu: the ONNX graphs run by ONNX Runtime in the Python backend.
    #[arg(long, value_enum)]
    target: Target,
    /// What `fluxbuild build` wrote (plans + manifest.json with their optimization profiles); gpu only.
    #[arg(long)]
    engines: Option<PathBuf>,
    /// Prompts per batch: the orchestrator's max_batch_size (and the cpu networks').
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_batch: u32,
    /// How long the orchestrator's dynamic batcher waits to fill a batch, in microseconds.
    #[arg(long, default_value_t = 20_000)]
    queue_delay_us: u64,
    /// Default image height and width (requests may ask for others within the limits)
    /// [default: 1024, or the largest the deployment serves when smaller].
    #[arg(long)]
    height: Option<u32>,
    #[arg(long)]
    width: Option<u32>,
    /// cpu: the largest height and width served [default: 1024] (gpu: the engines' profiles decide).
    #[arg(long)]
    max_height: Option<u32>,
    #[arg(long)]
    max_width: Option<u32>,
    /// Default denoising steps (else 28 for dev, 4 for schnell).
    #[arg(long)]
    steps: Option<u32>,
    /// The most steps a request may ask for.
    #[arg(long, default_value_t = 100)]
    max_steps: u32,
    /// Default T5 length (else 512 for dev, 256 for schnell, within what the graph or engines allow).
    #[arg(long)]
    max_sequence_length: Option<u32>,
    /// cpu: NETWORK=DIR, a folder with an alternative model.onnx served as `<network>_altN` and used
    /// when the primary is not ready. Repeatable.
    #[arg(long = "alternative", value_parser = parse_alternative)]
    alternatives: Vec<(String, PathBuf)>,
    /// Replace an existing repository at --out.
    #[arg(long)]
    force: bool,
    /// Bytes per prompt; longer prompts are refused before tokenizing (T5 reads 512 tokens at most).
    #[arg(long, default_value_t = Serving::default().max_prompt_bytes)]
    max_prompt_bytes: usize,
    /// Memory one request may take, in MiB: the memory model (docs/serving.md) sets from it the
    /// largest image (refused beyond) and the pixels per network batch (split beyond).
    #[arg(long, default_value_t = Serving::default().memory_budget_mib)]
    memory_budget_mib: u64,
    /// `flux` instances: requests with other sizes or steps run beside each other, not behind.
    #[arg(long, default_value_t = Serving::default().instances)]
    instances: u32,
    /// Jobs that run the pipeline at once (at most --instances); the other instances stay free to
    /// refuse bad requests at once while every running slot is busy.
    #[arg(long, default_value_t = Serving::default().running_jobs)]
    running_jobs: u32,
    /// Requests waiting for a `flux` instance beyond this are refused at once (503).
    #[arg(long, default_value_t = Serving::default().max_queue_size)]
    max_queue_size: u32,
    /// A request still waiting after this many milliseconds is refused (503) instead of run late.
    #[arg(long, default_value_t = Serving::default().queue_timeout_ms)]
    queue_timeout_ms: u64,
    /// Each network call from `flux` fails after this many milliseconds.
    #[arg(long, default_value_t = Serving::default().network_timeout_ms)]
    network_timeout_ms: u64,
}

/// The cpu target's largest height and width when none is given.
const DEFAULT_MAX_SIZE: u32 = 1024;

fn parse_alternative(s: &str) -> Result<(String, PathBuf), String> {
    let (network, dir) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NETWORK=DIR, got {s:?}"))?;
    Ok((network.to_string(), PathBuf::from(dir)))
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    // The engines' profiles bound a gpu repository's sizes: a given maximum would be ignored.
    if let (Target::Gpu, Some(flag)) = (
        args.target,
        [("--max-height", args.max_height), ("--max-width", args.max_width)]
            .into_iter()
            .find_map(|(flag, given)| given.map(|_| flag)),
    ) {
        bail!(
            "{flag} is for --target cpu; a gpu repository serves the sizes its engines' profiles allow \
             (`fluxbuild build --profile`): drop {flag}"
        );
    }
    let options = Options {
        models: args.models,
        out: args.out,
        target: args.target,
        engines: args.engines,
        max_batch: args.max_batch,
        queue_delay_us: args.queue_delay_us,
        height: args.height,
        width: args.width,
        max_height: args.max_height.unwrap_or(DEFAULT_MAX_SIZE),
        max_width: args.max_width.unwrap_or(DEFAULT_MAX_SIZE),
        steps: args.steps,
        max_steps: args.max_steps,
        max_sequence_length: args.max_sequence_length,
        alternatives: args.alternatives,
        force: args.force,
        serving: Serving {
            max_prompt_bytes: args.max_prompt_bytes,
            memory_budget_mib: args.memory_budget_mib,
            instances: args.instances,
            running_jobs: args.running_jobs,
            max_queue_size: args.max_queue_size,
            queue_timeout_ms: args.queue_timeout_ms,
            network_timeout_ms: args.network_timeout_ms,
        },
    };
    let packaged = package(&options, &|total| out.bar(total, BYTES_BAR)).context("fluxbuild package")?;
    out.result(&packaged, || {
        format!(
            "wrote {} ({:?} target): models {}; {} files, {} bytes; serves {}..{} x {}..{} px, up to {} prompts per network call; \
             requests up to {} bytes (tritonserver --http-max-input-size={})",
            packaged.repository.display(),
            packaged.target,
            packaged.models.join(", "),
            packaged.files,
            packaged.bytes,
            packaged.limits.min_height,
            packaged.limits.max_height,
            packaged.limits.min_width,
            packaged.limits.max_width,
            packaged.limits.network_max_batch,
            packaged.max_request_bytes,
            packaged.max_request_bytes
        )
    });
    Ok(())
}
