//! `fluxbuild generate`: a text prompt (or several, run as one batch) -> PNG images, from the graphs
//! `fluxbuild export` wrote, on ONNX Runtime; or with `--server URL`, through a Triton server.

use crate::generate::image::{output_paths, write_png};
use crate::generate::{generate, Event, ExportedModels, InitialNoise, RequestOptions};
use crate::output::{Output, STEPS_BAR};
use anyhow::Result;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Folder written by `fluxbuild export` (graphs, tokenizers, manifest.json).
    #[arg(long, value_name = "DIR", required_unless_present = "server", conflicts_with = "server")]
    pub models: Option<PathBuf>,
    /// Generate on a Triton server's `flux` model (KServe v2 HTTP), e.g. http://127.0.0.1:8000.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// With --server: requests in flight at once (the prompts are split among them).
    #[arg(long, default_value_t = 1, requires = "server")]
    pub concurrency: usize,
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

pub fn run(args: Args, out: &Output) -> Result<()> {
    let Some(dir) = &args.models else { return super::generate_remote::run(args, out) };
    let started = Instant::now();
    let models = ExportedModels::open(dir)?;
    let variant = models.variant.value;
    let options = RequestOptions {
        prompts: args.prompts,
        height: args.height,
        width: args.width,
        steps: args.steps,
        guidance: args.guidance,
        seed: args.seed,
        max_sequence_length: args.max_sequence_length,
        noise_file: args.noise,
    };
    let request = options.resolve(variant)?;
    let paths = output_paths(&args.out, request.batch())?;
    if args.guidance.is_some() && !models.guidance_embeds {
        out.warn(&format!("--guidance is ignored: the {} transformer takes no guidance", variant.name()));
    }
    if let (InitialNoise::Seed(seed), None) = (&request.noise, args.seed) {
        out.warn(&format!("no --seed given: using seed {seed} (from the clock)"));
    }

    let bar = out.bar(request.steps as u64, STEPS_BAR);
    let generation = generate(&models, &request, &mut |event| match event {
        Event::Warning(message) => bar.suspend(|| out.warn(&message)),
        Event::Stage(stage) => bar.set_message(stage),
        Event::Step { done, .. } => bar.set_position(done as u64),
    })?;
    bar.finish_and_clear();

    let seeds = request.seeds();
    let guidance = models.guidance_embeds.then_some(request.guidance);
    for (i, (path, image)) in paths.iter().zip(&generation.images).enumerate() {
        let settings = json!({
            "prompt": request.prompts[i],
            "seed": seeds.as_ref().map(|s| s[i]),
            "variant": variant.name(),
            "steps": request.steps,
            "guidance": guidance,
            "max_sequence_length": request.max_sequence_length,
            "generator": "fluxbuild generate (ONNX Runtime)",
        });
        write_png(path, image, &[("Description", request.prompts[i].clone()), ("fluxbuild", settings.to_string())])?;
    }

    let files: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let total_s = started.elapsed().as_secs_f64();
    let noise_source = match &request.noise {
        InitialNoise::Seed(seed) => json!({ "generator": "fluxbuild noise v1", "seed": seed }),
        InitialNoise::Tensor { source, .. } => json!({ "file": source }),
    };
    let report = json!({
        "models": models.dir,
        "variant": models.variant,
        "prompts": request.prompts,
        "height": request.height,
        "width": request.width,
        "steps": request.steps,
        "guidance": guidance,
        "max_sequence_length": request.max_sequence_length,
        "noise": noise_source,
        "seeds": seeds,
        "image_seq_len": request.image_seq_len(),
        "scheduler": models.scheduler,
        "mu": generation.mu,
        "sigmas": generation.sigmas,
        "vae_scaling_factor": models.vae_scaling_factor,
        "vae_shift_factor": models.vae_shift_factor,
        "files": files,
        "seconds": { "stages": generation.times, "total": total_s },
        "warnings": generation.warnings,
    });
    out.result(&report, || {
        let seed_text = seeds.as_ref().map_or("noise from file".into(), |s| format!("seed {}", s[0]));
        format!(
            "wrote {} ({} image{} {}x{}, {} steps, {seed_text}) in {total_s:.1} s",
            files.join(", "),
            files.len(),
            if files.len() == 1 { "" } else { "s" },
            request.width,
            request.height,
            request.steps
        )
    });
    Ok(())
}
