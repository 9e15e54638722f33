//! `fluxbuild generate`: local generation (ONNX Runtime) is not yet implemented here;
//! `--server URL` sends the prompts to a Triton server's `flux` model instead.

use crate::client::{write_pngs, Client, ImageRequest};
use crate::output::Output;
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The text prompt; repeat for several images.
    #[arg(long = "prompt", required = true)]
    prompts: Vec<String>,
    #[arg(long)]
    height: Option<u32>,
    #[arg(long)]
    width: Option<u32>,
    #[arg(long)]
    steps: Option<u32>,
    #[arg(long)]
    guidance: Option<f32>,
    /// Prompt i uses seed + i ("fluxbuild noise v1").
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// T5 tokens.
    #[arg(long)]
    max_sequence_length: Option<u32>,
    /// The PNG to write (`out.png`, or `out-0.png`, `out-1.png`, ... for several prompts).
    #[arg(long, default_value = "out.png")]
    out: PathBuf,
    /// Generate on a Triton server (KServe v2 HTTP), e.g. http://127.0.0.1:8000.
    #[arg(long)]
    server: Option<String>,
    /// With --server: requests in flight at once (the prompts are split among them).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let Some(server) = &args.server else {
        bail!("local `fluxbuild generate` is not implemented yet: pass --server URL")
    };
    let client = Client::new(server)?;
    let request = ImageRequest {
        prompts: args.prompts.clone(),
        height: args.height,
        width: args.width,
        steps: args.steps,
        guidance: args.guidance,
        seed: args.seed,
        max_sequence_length: args.max_sequence_length,
        noise: None,
    };
    let start = std::time::Instant::now();
    let images = client.generate_many(&request, args.concurrency)?;
    let seconds = start.elapsed().as_secs_f64();
    let paths = write_pngs(&args.out, &images)?;
    let report = serde_json::json!({ "server": client.url(), "images": paths, "seconds": seconds, "seed": args.seed });
    out.result(&report, || {
        let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        format!("wrote {} from {} in {seconds:.2} s", list.join(", "), client.url())
    });
    Ok(())
}
