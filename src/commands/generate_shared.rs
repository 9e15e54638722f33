//! What local and `--server` generation share: the flags, the request they give, the PNGs written
//! and the report.

use crate::generate::image::{write_png, RgbImage};
use crate::generate::{InitialNoise, Request, RequestOptions, Variant};
use crate::output::Output;
use anyhow::Result;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Folder written by `fluxbuild export` (graphs, tokenizers, manifest.json).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "server",
        conflicts_with = "server"
    )]
    pub models: Option<PathBuf>,
    /// Generate on a Triton server's `flux` model (KServe v2 HTTP), e.g. http://127.0.0.1:8000.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// With --server: requests in flight at once (the prompts are split among them).
    #[arg(long, default_value_t = 1, conflicts_with = "models", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub concurrency: usize,
    /// With --server: seconds each request may take (a large image on a CPU server takes minutes).
    #[arg(long, default_value_t = 600, conflicts_with = "models", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub server_timeout_s: u64,
    /// Text prompt; repeat for a batch (one image per prompt).
    #[arg(long = "prompt", value_name = "TEXT", required = true)]
    pub prompts: Vec<String>,
    /// Image height in pixels, a multiple of 16 [default: 1024].
    #[arg(long)]
    pub height: Option<usize>,
    /// Image width in pixels, a multiple of 16 [default: 1024].
    #[arg(long)]
    pub width: Option<usize>,
    /// Denoising steps [default: 28 for dev, 4 for schnell].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Guidance scale (dev only) [default: 3.5].
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Seed of the initial noise ("fluxbuild noise v1", docs/noise.md); prompt i uses seed + i
    /// [default: from the clock, reported].
    #[arg(long)]
    pub seed: Option<u64>,
    /// T5 tokens per prompt [default: 512 for dev, 256 for schnell].
    #[arg(long)]
    pub max_sequence_length: Option<usize>,
    /// Initial noise from a safetensors file holding `noise` [B,16,H/8,W/8] float32 (unpacked).
    #[arg(long, value_name = "FILE")]
    pub noise: Option<PathBuf>,
    /// Output PNG; several prompts write OUT-0.png, OUT-1.png, ...
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}

/// The request as the flags give it (the same for local generation and `--server`).
pub fn request_options(args: &Args) -> RequestOptions {
    RequestOptions {
        prompts: args.prompts.clone(),
        height: args.height,
        width: args.width,
        steps: args.steps,
        guidance: args.guidance,
        seed: args.seed,
        max_sequence_length: args.max_sequence_length,
        noise_file: args.noise.clone(),
    }
}

/// Says which settings were not the user's: a guidance the transformer ignores, a clock seed.
pub fn warn_about_defaults(args: &Args, request: &Request, variant: Variant, guidance_embeds: bool, out: &Output) {
    if args.guidance.is_some() && !guidance_embeds {
        out.warn(&format!(
            "--guidance is ignored: the {} transformer takes no guidance",
            variant.name()
        ));
    }
    if let (InitialNoise::Seed(seed), None) = (&request.noise, args.seed) {
        out.warn(&format!("no --seed given: using seed {seed} (from the clock)"));
    }
}

/// One PNG per image with the settings that make it again as text chunks. Where it was computed is
/// left to the report: equal pixels locally and through Triton give byte-identical files.
pub fn write_images(
    paths: &[PathBuf],
    request: &Request,
    variant: Variant,
    guidance: Option<f32>,
    images: &[RgbImage],
) -> Result<()> {
    let seeds = request.seeds();
    for (i, (path, image)) in paths.iter().zip(images).enumerate() {
        let settings = json!({
            "prompt": request.prompts[i],
            "seed": seeds.as_ref().map(|s| s[i]),
            "variant": variant.name(),
            "steps": request.steps,
            "guidance": guidance,
            "max_sequence_length": request.max_sequence_length,
        });
        write_png(
            path,
            image,
            &[
                ("Description", request.prompts[i].clone()),
                ("fluxbuild", settings.to_string()),
            ],
        )?;
    }
    Ok(())
}

/// The report's common part: what was asked and which files were written.
pub fn describe(request: &Request, variant: Variant, guidance: Option<f32>, paths: &[PathBuf]) -> serde_json::Value {
    let noise = match &request.noise {
        InitialNoise::Seed(seed) => json!({ "generator": "fluxbuild noise v1", "seed": seed }),
        InitialNoise::Tensor { source, .. } => json!({ "file": source }),
    };
    json!({
        "variant": variant.name(),
        "prompts": request.prompts,
        "height": request.height,
        "width": request.width,
        "steps": request.steps,
        "guidance": guidance,
        "max_sequence_length": request.max_sequence_length,
        "noise": noise,
        "seeds": request.seeds(),
        "files": paths,
    })
}

/// `wrote a.png (1 image 96x64, 4 steps, seed 42) <how>`.
pub fn summary(request: &Request, paths: &[PathBuf], how: &str) -> String {
    let files: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let seed = request
        .seeds()
        .map_or("noise from file".into(), |s| format!("seed {}", s[0]));
    let plural = if files.len() == 1 { "" } else { "s" };
    format!(
        "wrote {} ({} image{plural} {}x{}, {} steps, {seed}) {how}",
        files.join(", "),
        files.len(),
        request.width,
        request.height,
        request.steps
    )
}
