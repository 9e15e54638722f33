//! `fluxbuild export`: checkpoint(s) -> `OUT/{clip,t5,transformer,vae_decoder}/model.onnx`.

use crate::export::{export, ExportRequest, SubmodelSource, SUBMODELS};
use crate::output::{Output, BYTES_BAR};
use anyhow::{bail, Result};
use fluxbuild_exporters::onnx::DEFAULT_OPSET;
use fluxbuild_exporters::precision::{Precision, PrecisionPlan};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A diffusers FLUX pipeline folder (model_index.json, transformer/, text_encoder/, ...).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// The transformer: a single BFL/ComfyUI file or a diffusers component folder (overrides the pipeline's).
    #[arg(long)]
    transformer: Option<PathBuf>,
    /// The CLIP-L text encoder (e.g. clip_l.safetensors).
    #[arg(long)]
    clip: Option<PathBuf>,
    /// The T5-XXL encoder (e.g. t5xxl_fp16.safetensors).
    #[arg(long)]
    t5: Option<PathBuf>,
    /// The VAE (e.g. ae.safetensors or a diffusers vae/ folder).
    #[arg(long)]
    vae: Option<PathBuf>,
    /// A config.json for a submodel whose file lacks one: `FILE` (with one submodel) or `NAME=FILE`.
    #[arg(long = "config", value_name = "[NAME=]FILE")]
    configs: Vec<String>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Only these submodels (comma-separated: clip,t5,transformer,vae_decoder).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Precision, globally or per network: `fp32`, `bf16`, `transformer=bf16,t5=fp32`.
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// ONNX opset of the graphs.
    #[arg(long, default_value_t = DEFAULT_OPSET)]
    opset: i64,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let request = request(&args)?;
    let bar = out.bar(0, BYTES_BAR);
    let manifest = export(&request, &bar)?;
    out.result(&manifest, || {
        let mut text = format!("exported to {}", request.out.display());
        for s in &request.submodels {
            text.push_str(&format!("\n  {:<12} {} ({})", s.name, request.out.join(s.name).join("model.onnx").display(), s.precision));
        }
        text
    });
    Ok(())
}

fn request(args: &Args) -> Result<ExportRequest> {
    for name in &args.only {
        if !SUBMODELS.contains(&name.as_str()) {
            bail!("--only: unknown submodel `{name}` (expected {})", SUBMODELS.join(", "));
        }
    }
    let explicit = [("clip", &args.clip), ("t5", &args.t5), ("transformer", &args.transformer), ("vae_decoder", &args.vae)];
    let precision = PrecisionPlan::parse(&args.precision, &SUBMODELS)?;
    let mut submodels = Vec::new();
    for (name, path) in explicit {
        let wanted = if args.only.is_empty() { path.is_some() || args.checkpoint.is_some() } else { args.only.iter().any(|o| o == name) };
        if !wanted {
            continue;
        }
        let Some(path) = path.clone().or_else(|| args.checkpoint.clone()) else {
            bail!("--only {name}: no source for it (give --checkpoint or --{})", flag_for(name));
        };
        submodels.push(SubmodelSource { name, path, config: None, precision: precision.for_network(name, Precision::Fp32) });
    }
    assign_configs(&args.configs, &mut submodels)?;
    Ok(ExportRequest { submodels, pipeline: args.checkpoint.clone(), out: args.out.clone(), opset: args.opset })
}

fn flag_for(name: &str) -> &str {
    if name == "vae_decoder" { "vae" } else { name }
}

fn assign_configs(configs: &[String], submodels: &mut [SubmodelSource]) -> Result<()> {
    for spec in configs {
        match spec.split_once('=') {
            Some((name, file)) => {
                let Some(s) = submodels.iter_mut().find(|s| s.name == name) else {
                    bail!("--config {spec}: `{name}` is not being exported");
                };
                s.config = Some(PathBuf::from(file));
            }
            None if submodels.len() == 1 => submodels[0].config = Some(PathBuf::from(spec)),
            None => bail!("--config {spec}: several submodels are exported; say which: --config NAME=FILE"),
        }
    }
    Ok(())
}
