//! `fluxbuild generate --server URL`: the same request, sent to a Triton server's `flux` model.

use super::generate::Args;
use crate::client::{write_pngs, Client, ImageRequest};
use crate::output::Output;
use anyhow::{bail, Context, Result};

pub fn run(args: Args, out: &Output) -> Result<()> {
    let server = args.server.as_deref().context("--server URL is required without --models")?;
    if args.noise.is_some() {
        bail!("--noise is only supported for local generation (--models DIR)");
    }
    let narrow = |name: &str, v: Option<usize>| -> Result<Option<u32>> {
        v.map(|v| u32::try_from(v).with_context(|| format!("--{name} {v} is out of range"))).transpose()
    };
    let client = Client::new(server)?;
    let seed = args.seed.unwrap_or(0);
    let request = ImageRequest {
        prompts: args.prompts.clone(),
        height: narrow("height", args.height)?,
        width: narrow("width", args.width)?,
        steps: narrow("steps", args.steps)?,
        guidance: args.guidance,
        seed,
        max_sequence_length: narrow("max-sequence-length", args.max_sequence_length)?,
        noise: None,
    };
    let start = std::time::Instant::now();
    let images = client.generate_many(&request, args.concurrency)?;
    let seconds = start.elapsed().as_secs_f64();
    let paths = write_pngs(&args.out, &images)?;
    let report = serde_json::json!({ "server": client.url(), "images": paths, "seconds": seconds, "seed": seed });
    out.result(&report, || {
        let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        format!("wrote {} from {} in {seconds:.2} s", list.join(", "), client.url())
    });
    Ok(())
}
