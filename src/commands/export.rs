//! `fluxbuild export`: checkpoint(s) -> `OUT/{clip,t5,transformer,vae_decoder}/model.onnx`.

use crate::export::{export, ExportRequest, PrecisionSettings, SubmodelSource};
use crate::output::{Output, BYTES_BAR};
use crate::pipeline_files::{pipeline_folder, Origin, PipelineFileSources};
use anyhow::{bail, Result};
use fluxbuild_contract::output_dir::Existing;
use fluxbuild_contract::Network;
use fluxbuild_exporters::checkpoint::Checkpoint;
use fluxbuild_exporters::onnx::DEFAULT_OPSET;
use fluxbuild_exporters::precision::PrecisionPlan;
use fluxbuild_exporters::quantize::WeightScaling;
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
    /// CLIP's tokenizer folder (tokenizer.json, or vocab.json + merges.txt); default: the pipeline's
    /// `tokenizer/`, else the CLIP-L tokenizer bundled with fluxbuild.
    #[arg(long, value_name = "DIR")]
    tokenizer: Option<PathBuf>,
    /// T5's tokenizer folder (tokenizer.json or spiece.model); default: the pipeline's `tokenizer_2/`,
    /// else the T5 v1.1 tokenizer bundled with fluxbuild.
    #[arg(long = "tokenizer-2", value_name = "DIR")]
    tokenizer_2: Option<PathBuf>,
    /// The scheduler's scheduler_config.json; default: the pipeline's, else FLUX.1-dev's or schnell's.
    #[arg(long, value_name = "FILE")]
    scheduler: Option<PathBuf>,
    /// Output folder (new or empty; an earlier export there needs --force or --update).
    #[arg(long)]
    out: PathBuf,
    /// Replace an earlier export at --out (only files fluxbuild wrote are ever removed).
    #[arg(long, conflicts_with = "update")]
    force: bool,
    /// Keep an earlier export at --out and replace only the submodels this run exports.
    #[arg(long)]
    update: bool,
    /// Only these submodels (comma-separated: clip,t5,transformer,vae_decoder).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Precision, globally or per network: `fp32`, `fp16`, `bf16`, `fp8`, `fp8-fp16`,
    /// `transformer=fp8,t5=bf16`. fp8 quantizes the transformer's linear layers over a bf16 base
    /// (fp8-fp16: an fp16 base); a global fp8 gives the other networks the base type; a global
    /// fp16 or fp8-fp16 keeps the VAE decoder fp32; T5 in fp16 keeps its residual stream and FFN
    /// output in fp32.
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Activation scales for fp8 submodels (written by `fluxbuild calibrate`).
    #[arg(long)]
    calibration: Option<PathBuf>,
    /// FP8 weight scales: one per tensor, or one per output channel [default: per-tensor].
    #[arg(long, value_enum)]
    fp8_weights: Option<Fp8WeightsArg>,
    /// Linear layers (weight-name patterns, `*` = anything) kept in 16-bit besides the defaults
    /// (embedders and final projection), e.g. `*.norm1.linear.weight`.
    #[arg(long = "fp8-keep", value_delimiter = ',')]
    fp8_keep: Vec<String>,
    /// Write fp16/bf16/fp8 submodels as fp32 graphs that round like them, for accuracy checks
    /// on ONNX Runtime's CPU (no bf16 kernels; fp16 ops run in fp32). Not for deployment.
    #[arg(long)]
    emulate: bool,
    /// ONNX opset of the graphs: 17 (LayerNormalization, which the graphs use) to 21 (the newest
    /// whose graphs are checked to give the same images); fp8 graphs get at least 19.
    #[arg(long, default_value_t = DEFAULT_OPSET, value_parser = clap::value_parser!(i64).range(17..=21))]
    opset: i64,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Fp8WeightsArg {
    PerTensor,
    PerChannel,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let request = request(&args)?;
    let bar = out.bar(0, BYTES_BAR);
    let manifest = export(&request, &bar)?;
    for s in &request.submodels {
        let saturated = manifest.submodels.get(s.network.name()).map(|e| e.saturated.as_slice());
        for (tensor, count) in saturated.unwrap_or_default() {
            out.warn(&format!(
                "{}: {count} value(s) of {tensor} exceed the {} range and were saturated",
                s.network, s.plan.precision
            ));
        }
    }
    for (folder, origin) in &manifest.settings.pipeline_files {
        if let Origin::LeftOut { why } = origin {
            out.warn(&format!("{folder}/ not written: {why}"));
        }
    }
    out.result(&manifest, || {
        let mut text = format!("exported to {}", request.out.display());
        for s in &request.submodels {
            text.push_str(&format!(
                "\n  {:<12} {} ({})",
                s.network,
                request.out.join(s.network.name()).join("model.onnx").display(),
                s.plan.precision
            ));
        }
        text
    });
    Ok(())
}

fn request(args: &Args) -> Result<ExportRequest> {
    for name in &args.only {
        if Network::parse(name).is_err() {
            let names = Network::ALL.map(Network::name);
            bail!("--only: unknown submodel `{name}` (expected {})", names.join(", "));
        }
    }
    let explicit = [
        (Network::Clip, &args.clip),
        (Network::T5, &args.t5),
        (Network::Transformer, &args.transformer),
        (Network::VaeDecoder, &args.vae),
    ];
    let precision = PrecisionPlan::parse(&args.precision)?;
    let mut submodels = Vec::new();
    for (network, path) in explicit {
        let wanted = if args.only.is_empty() {
            path.is_some() || args.checkpoint.is_some()
        } else {
            args.only.iter().any(|o| o == network.name())
        };
        if !wanted {
            continue;
        }
        let Some(path) = path.clone().or_else(|| args.checkpoint.clone()) else {
            bail!(
                "--only {network}: no source for it (give --checkpoint or --{})",
                network.flag()
            );
        };
        submodels.push(SubmodelSource {
            network,
            path,
            config: None,
            plan: precision.resolve(network)?,
        });
    }
    check_single_file_checkpoint(args, &submodels)?;
    check_fp8_options(args, &submodels)?;
    assign_configs(&args.configs, &mut submodels)?;
    let weights = match args.fp8_weights.unwrap_or(Fp8WeightsArg::PerTensor) {
        Fp8WeightsArg::PerTensor => WeightScaling::PerTensor,
        Fp8WeightsArg::PerChannel => WeightScaling::PerChannel,
    };
    let settings = PrecisionSettings {
        calibration: args.calibration.clone(),
        fp8_weights: weights,
        fp8_keep: args.fp8_keep.clone(),
        emulate: args.emulate,
    };
    Ok(ExportRequest {
        submodels,
        files: PipelineFileSources {
            tokenizer: args.tokenizer.clone(),
            tokenizer_2: args.tokenizer_2.clone(),
            scheduler: args.scheduler.clone(),
            pipeline: [&args.checkpoint, &args.clip, &args.t5, &args.transformer, &args.vae]
                .into_iter()
                .flatten()
                .find_map(|p| pipeline_folder(p)),
        },
        out: args.out.clone(),
        existing: match (args.force, args.update) {
            (true, _) => Existing::Replace,
            (_, true) => Existing::Update,
            _ => Existing::Refuse,
        },
        opset: args.opset,
        precision: settings,
    })
}

/// The fp8 options shape only fp8 submodels: given for an export without one, they would be
/// ignored, and the user would believe the graphs quantized.
fn check_fp8_options(args: &Args, submodels: &[SubmodelSource]) -> Result<()> {
    if submodels.iter().any(|s| s.plan.precision.is_fp8()) {
        return Ok(());
    }
    let given = [
        ("--calibration", args.calibration.is_some()),
        ("--fp8-weights", args.fp8_weights.is_some()),
        ("--fp8-keep", !args.fp8_keep.is_empty()),
    ];
    if let Some((flag, _)) = given.iter().find(|(_, given)| *given) {
        let names: Vec<&str> = submodels.iter().map(|s| s.network.name()).collect();
        bail!(
            "{flag} applies to fp8 submodels, and none of this export's ({}) is fp8 under --precision {} (a global \
             fp8 quantizes the transformer only): give a submodel fp8 (`--precision fp8` with the transformer, \
             or `NAME=fp8`), or drop {flag}",
            names.join(", "),
            args.precision
        );
    }
    Ok(())
}

/// `--checkpoint FILE` stands for all four submodels only when the file is an all-in-one
/// checkpoint; a file with fewer is named for what it holds, before any export work.
fn check_single_file_checkpoint(args: &Args, submodels: &[SubmodelSource]) -> Result<()> {
    let Some(file) = args.checkpoint.as_ref().filter(|p| p.is_file()) else {
        return Ok(());
    };
    let holds = |network: Network| -> Result<bool> {
        let exporter = fluxbuild_exporters::models::exporter(network);
        let ckpt = Checkpoint::load(file, exporter.subfolder(), exporter.key_prefixes())?;
        Ok(exporter.detect(&ckpt))
    };
    let from_file: Vec<Network> = submodels
        .iter()
        .filter(|s| &s.path == file)
        .map(|s| s.network)
        .collect();
    let mut held = Vec::new();
    let mut missing = Vec::new();
    for network in from_file {
        if holds(network)? {
            held.push(network.name());
        } else {
            missing.push(network);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let what = if held.is_empty() {
        "none of the submodels".to_string()
    } else {
        held.join(", ")
    };
    let flags: Vec<String> = missing.iter().map(|m| format!("--{} FILE", m.flag())).collect();
    let missing: Vec<&str> = missing.iter().map(|m| m.name()).collect();
    bail!(
        "{}: holds {what}, not {} (not an all-in-one checkpoint): give {}{}",
        file.display(),
        missing.join(", "),
        flags.join(" "),
        if held.is_empty() {
            String::new()
        } else {
            format!(", or --only {}", held.join(","))
        }
    )
}

fn assign_configs(configs: &[String], submodels: &mut [SubmodelSource]) -> Result<()> {
    for spec in configs {
        match spec.split_once('=') {
            Some((name, file)) => {
                let Some(s) = submodels.iter_mut().find(|s| s.network.name() == name) else {
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
