//! `fluxbuild generate --server URL`: the same request, checked by the same code against what the
//! deployment serves (its defaults fill what the flags leave out), sent to a Triton server's `flux`
//! model; the images are written as local generation writes them.

use super::generate_shared::{describe, request_options, summary, warn_about_defaults, write_images, Args};
use crate::client::Client;
use crate::generate::image::output_paths;
use crate::generate::Variant;
use crate::output::Output;
use anyhow::{Context, Result};
use std::time::Instant;

pub fn run(args: Args, out: &Output) -> Result<()> {
    let server = args
        .server
        .as_deref()
        .context("--server URL is required without --models")?;
    let mut client = Client::new(server)?;
    client.timeout = std::time::Duration::from_secs(args.server_timeout_s);
    let deployment = client.deployment()?;
    let variant = deployment.variant;
    let request = request_options(&args).resolve_within(&deployment.defaults, &deployment.limits)?;
    let paths = output_paths(&args.out, request.batch())?;
    let guidance_embeds = variant == Variant::Dev;
    warn_about_defaults(&args, &request, variant, guidance_embeds, out);

    let started = Instant::now();
    let served = client.generate_many(&request, args.concurrency, deployment.max_batch)?;
    let images = served.images;
    let seconds = started.elapsed().as_secs_f64();
    let guidance = guidance_embeds.then_some(request.guidance);
    write_images(&paths, &request, variant, guidance, &images)?;
    let mut report = describe(&request, variant, guidance, &paths);
    report["server"] = serde_json::json!(client.url());
    report["concurrency"] = serde_json::json!(args.concurrency);
    report["seconds"] = serde_json::json!(seconds);
    // As `flux` returned them (checked against the ones sent): what reproduces the images.
    let served_seeds: Vec<Option<i64>> = served.seeds.into_iter().map(|s| (s >= 0).then_some(s)).collect();
    report["server_seeds"] = serde_json::json!(served_seeds);
    // Which models made each image: a fallback precision set (set > 0) is said in the summary too.
    report["server_models"] = serde_json::json!(served.made_by);
    let mut confirmed = match served_seeds.first() {
        Some(Some(seed)) => format!(" (the server used seed {seed})"),
        _ => String::new(),
    };
    if let Some(fallback) = served.made_by.iter().find(|m| m.precision_set > 0) {
        let models: Vec<String> = fallback.models.iter().map(|(n, m)| format!("{n}={m}")).collect();
        confirmed += &format!(
            "; on fallback precision set {} ({})",
            fallback.precision_set,
            models.join(", ")
        );
    }
    out.result(&report, || {
        summary(
            &request,
            &paths,
            &format!("from {} in {seconds:.2} s{confirmed}", client.url()),
        )
    });
    Ok(())
}
