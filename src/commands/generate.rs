//! `fluxbuild generate`: a text prompt (or several, run as one batch) -> PNG images, from the graphs
//! `fluxbuild export` wrote, on ONNX Runtime.

use super::generate_shared::{describe, request_options, summary, warn_about_defaults, write_images, Args};
use crate::generate::image::output_paths;
use crate::generate::{generate, Event, ExportedModels};
use crate::output::{Output, STEPS_BAR};
use anyhow::{Context, Result};
use serde_json::json;
use std::time::Instant;

pub fn run(args: Args, out: &Output) -> Result<()> {
    let dir = args
        .models
        .as_ref()
        .context("--models DIR is required without --server")?;
    let started = Instant::now();
    let models = ExportedModels::open(dir)?;
    crate::generate::models::check_runs_on_cpu(dir)?;
    let variant = models.variant.value;
    let request = request_options(&args).resolve(variant)?;
    let paths = output_paths(&args.out, request.batch())?;
    warn_about_defaults(&args, &request, variant, models.guidance_embeds, out);

    let bar = out.bar(request.steps as u64, STEPS_BAR);
    let generation = generate(&models, &request, &mut |event| match event {
        Event::Warning(message) => bar.suspend(|| out.warn(&message)),
        Event::Stage(stage) => bar.set_message(stage),
        Event::Step { done, .. } => bar.set_position(done as u64),
        Event::Transformer { .. } => {}
    })?;
    bar.finish_and_clear();

    let guidance = models.guidance_embeds.then_some(request.guidance);
    write_images(&paths, &request, variant, guidance, &generation.images)?;
    let total_s = started.elapsed().as_secs_f64();
    let mut report = describe(&request, variant, guidance, &paths);
    report["models"] = json!(models.dir);
    report["variant"] = json!(models.variant);
    report["image_seq_len"] = json!(request.image_seq_len());
    report["scheduler"] = json!(models.scheduler);
    report["mu"] = json!(generation.mu);
    report["sigmas"] = json!(generation.sigmas);
    report["vae_scaling_factor"] = json!(models.vae_scaling_factor);
    report["vae_shift_factor"] = json!(models.vae_shift_factor);
    report["seconds"] = json!({ "stages": generation.times, "total": total_s });
    report["warnings"] = json!(generation.warnings);
    out.result(&report, || summary(&request, &paths, &format!("in {total_s:.1} s")));
    Ok(())
}
