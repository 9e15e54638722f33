//! Stage 4: exported graphs (cpu) or engines (gpu) -> a Triton model repository.
//!
//! `clip`, `t5`, `transformer`, `vae_decoder` (one model per network) and the orchestrator `flux`
//! (prompt in, image out), each with its `config.pbtxt` and version folder `1/`, plus
//! `manifest.json` (settings, sha256 of every file). Written into a staging folder beside the
//! destination and swapped in whole when complete (`output_dir`).

pub mod config;
pub mod layout;
mod recorded;
pub mod source;

use crate::export::ExportManifest;
use crate::generate::models::Sourced;
use crate::generate::request::{self, MAX_PROMPT_BYTES, MAX_SEQUENCE_LENGTH, MEMORY_BUDGET_BYTES};
use crate::generate::scheduler::SchedulerConfig;
use crate::generate::tokenize::{PromptTokenizer, CLIP_LENGTH};
use crate::generate::Variant;
use anyhow::{bail, Context, Result};
use fluxbuild_contract::engines::{BuiltWith, EnginesManifest, Runtime};
use fluxbuild_contract::files::{sha256_file, write_atomic};
use fluxbuild_contract::manifest::{FileEntry, StageKind};
use fluxbuild_contract::output_dir::{crash_point, Existing, Staged};
use fluxbuild_contract::Network;
use fluxbuild_exporters::precision::Precision;
use layout::{Limits, ModelDir, Source};
use serde::{Deserialize, Serialize};
use source::{fixed, Exported};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use fluxbuild_contract::orchestrator::Target;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    pub models: PathBuf,
    pub out: PathBuf,
    pub target: Target,
    pub engines: Option<PathBuf>,
    /// `max_batch_size` of the orchestrator (and of the cpu networks).
    pub max_batch: u32,
    /// How long the orchestrator's dynamic batcher waits to fill a batch.
    pub queue_delay_us: u64,
    /// Default image size (else FluxPipeline's, clamped to what the deployment serves; a given
    /// size must be one the deployment serves).
    pub height: Option<u32>,
    pub width: Option<u32>,
    /// cpu: the largest image served (gpu: from the engines' profiles).
    pub max_height: u32,
    pub max_width: u32,
    /// Default steps (else 28 dev / 4 schnell) and the most a request may ask for.
    pub steps: Option<u32>,
    pub max_steps: u32,
    /// Default T5 length (else 512 dev / 256 schnell, within what the graph or engines allow).
    pub max_sequence_length: Option<u32>,
    /// cpu: alternative graphs per network (`transformer=DIR`), tried when the primary is not ready.
    pub alternatives: Vec<(String, PathBuf)>,
    /// Replace an existing repository.
    pub force: bool,
    pub serving: Serving,
}

/// How the orchestrator admits, queues and times out requests.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serving {
    /// Bytes per prompt (refused beyond, before tokenizing).
    pub max_prompt_bytes: usize,
    /// Memory one request may take (the memory model, `generate::request::max_image_pixels`):
    /// sets the pixels of one image (refused beyond) and of one network batch (split beyond).
    pub memory_budget_mib: u64,
    /// `flux` instances: requests of different sizes or steps run side by side, not behind
    /// each other's denoising loops.
    pub instances: u32,
    /// Jobs that run the pipeline at once (the `flux` instances' shared step table caps them):
    /// the instances beyond this stay free to take new requests and refuse the bad ones at once
    /// while every running slot is busy (a valid request waits there for a slot).
    pub running_jobs: u32,
    /// Requests waiting for a `flux` instance beyond this are refused at once (503).
    pub max_queue_size: u32,
    /// A request still waiting after this long is refused (503) instead of run late.
    pub queue_timeout_ms: u64,
    /// Each network call (BLS) fails after this long.
    pub network_timeout_ms: u64,
}

impl Default for Serving {
    fn default() -> Serving {
        Serving {
            max_prompt_bytes: MAX_PROMPT_BYTES,
            memory_budget_mib: (MEMORY_BUDGET_BYTES >> 20) as u64,
            instances: 8,
            running_jobs: 4,
            max_queue_size: 64,
            queue_timeout_ms: 300_000,
            network_timeout_ms: 120_000,
        }
    }
}

impl Serving {
    fn budget(&self) -> usize {
        (self.memory_budget_mib as usize) << 20
    }

    /// Pixels of one image the memory budget allows.
    pub fn max_image_pixels(&self) -> usize {
        request::max_image_pixels(self.budget())
    }

    /// Pixels per network batch the memory budget allows when its images have up to
    /// `largest_image` pixels each.
    pub fn max_batch_pixels(&self, largest_image: usize) -> usize {
        request::max_batch_pixels(self.budget(), largest_image.min(self.max_image_pixels()))
    }
}

/// `REPOSITORY/manifest.json`: what the repository was made from and with which settings, the
/// limits it serves, its models, and every file with its sha256.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryManifest {
    /// Always [`StageKind::Repository`].
    pub kind: StageKind,
    /// The fluxbuild version that wrote it.
    pub fluxbuild: String,
    pub target: Target,
    pub variant: Sourced<Variant>,
    pub vae_scaling_factor: Sourced<f64>,
    pub vae_shift_factor: Sourced<f64>,
    pub scheduler: Sourced<SchedulerConfig>,
    pub settings: Options,
    pub limits: Limits,
    /// One model folder each.
    pub models: Vec<String>,
    pub source: RepositorySource,
    pub files: Vec<FileEntry>,
}

/// The stage outputs a repository was packaged from.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySource {
    /// The export folder.
    pub models: PathBuf,
    pub export_manifest_sha256: Option<String>,
    pub engines_manifest_sha256: Option<String>,
}

impl RepositoryManifest {
    pub fn read(repo: &Path) -> Result<RepositoryManifest> {
        let path = repo.join("manifest.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a fluxbuild repository manifest", path.display()))
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Packaged {
    pub repository: PathBuf,
    pub target: Target,
    pub models: Vec<String>,
    pub files: usize,
    pub bytes: u64,
    pub limits: Limits,
    /// The largest request body the limits allow (plain JSON, noise included): the server's
    /// `--http-max-input-size` (`fluxbuild serve` sets it).
    pub max_request_bytes: u64,
}

pub fn package(options: &Options, progress: &dyn Fn(u64) -> indicatif::ProgressBar) -> Result<Packaged> {
    check_target_options(options)?;
    let exported = Exported::read(&options.models)?;
    check_tokenizers(&exported)?;
    let mut recorded = recorded::Recorded::default();
    let export_files = recorded.add_export(&options.models)?;
    let mut dirs: Vec<ModelDir> = Vec::new();
    let mut models: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let limits = match options.target {
        Target::Cpu => {
            refuse_bf16_on_cpu(&exported)?;
            for network in &exported.networks {
                dirs.push(layout::cpu_network(network, network.name.name(), options)?);
                models.insert(network.name.to_string(), vec![network.name.to_string()]);
            }
            for (i, (name, dir)) in options.alternatives.iter().enumerate() {
                let Ok(network) = Network::parse(name) else {
                    let names = Network::ALL.map(Network::name);
                    bail!("--alternative {name}=...: unknown network (expected one of {names:?})");
                };
                let alternative = source::read_network(dir, network, dir)?;
                // An alternative is a folder with a graph: an export's network folder, or one of
                // its own; the export manifest that lists it, if any, vouches for its files.
                if let Some(export) = [dir.as_path(), dir.parent().unwrap_or(dir)]
                    .into_iter()
                    .find(|d| d.join("manifest.json").is_file())
                {
                    recorded.add_export(export)?;
                }
                let model = format!("{name}_alt{}", i + 1);
                dirs.push(layout::cpu_network(&alternative, &model, options)?);
                models.get_mut(name).expect("all networks").push(model);
            }
            cpu_limits(&exported, options)?
        }
        Target::Gpu => {
            let dir = options
                .engines
                .as_ref()
                .context("--target gpu needs --engines DIR (what `fluxbuild build` writes)")?;
            let manifest = EnginesManifest::read(dir)?;
            // Triton's TensorRT backend deserializes plans with standard TensorRT, which cannot load
            // TensorRT-RTX plans (weightless ones even less): refuse them here, not at model load.
            if let Some(BuiltWith {
                runtime: Runtime::TensorrtRtx,
            }) = manifest.settings
            {
                bail!(
                    "{}/manifest.json: these engines were built with --runtime tensorrt-rtx (for RTX and \
                     Ampere-or-newer applications), which Triton's TensorRT backend cannot load; build the \
                     repository's engines with `fluxbuild build --runtime tensorrt` on the GPU host",
                    dir.display()
                );
            }
            recorded.add_folder(dir, StageKind::Engines, &manifest.files)?;
            recorded::check_engines_built_from(&options.models, &export_files, dir, &manifest.inputs)?;
            for network in &exported.networks {
                let engines = manifest.of(network.name);
                if engines.is_empty() {
                    bail!("{}/manifest.json: no engine for {}", dir.display(), network.name);
                }
                for (i, engine) in engines.iter().enumerate() {
                    let name = engine.model_name(i);
                    dirs.push(layout::gpu_network(network, engine, &name)?);
                    models.entry(network.name.to_string()).or_default().push(name);
                }
            }
            gpu_limits(&manifest)?
        }
    };
    dirs.push(layout::orchestrator(&exported, options, &limits, &models)?);
    write_repository(options, &exported, &dirs, &limits, &recorded, progress)
}

/// `--engines` feeds only the gpu target and `--alternative` only the cpu one: either given to the
/// other target would be ignored, and the repository would not serve what the user asked for.
fn check_target_options(options: &Options) -> Result<()> {
    match options.target {
        Target::Cpu if options.engines.is_some() => bail!(
            "--engines is for --target gpu (Triton's TensorRT backend); --target cpu serves the ONNX graphs \
             of --models: drop --engines or use --target gpu"
        ),
        Target::Gpu if !options.alternatives.is_empty() => bail!(
            "--alternative is for --target cpu (another ONNX graph served when the primary fails); \
             --target gpu serves the engines' profiles from --engines: drop --alternative or use --target cpu"
        ),
        _ => Ok(()),
    }
}

/// The orchestrator pads with the tokens local generation pads with: both must be there.
fn check_tokenizers(exported: &Exported) -> Result<()> {
    PromptTokenizer::clip(&exported.models.clip_tokenizer)?;
    PromptTokenizer::t5(&exported.models.t5_tokenizer, 1)?;
    Ok(())
}

/// ONNX Runtime's CPU kernels have no bf16 MatMul, Conv or Softmax: a bf16 graph fails there at
/// its first request. Refused here, where the fix (another `--precision`) is still cheap.
fn refuse_bf16_on_cpu(exported: &Exported) -> Result<()> {
    let manifest = exported.models.dir.join("manifest.json");
    let settings = ExportManifest::read(&manifest).ok().map(|m| m.settings);
    for network in &exported.networks {
        // `--emulate` writes fp32 graphs that round like bf16: those run.
        let precision = settings
            .as_ref()
            .filter(|s| !s.emulated_in_fp32)
            .and_then(|s| s.precision.get(network.name.name()));
        let bf16_io = network
            .interface
            .inputs
            .iter()
            .chain(&network.interface.outputs)
            .find(|v| v.elem == fluxbuild_exporters::onnx::ElemType::BF16);
        if let Some(value) = bf16_io {
            bail!(
                "{}: `{}` is bf16, which the cpu target (ONNX Runtime's CPU kernels) cannot run; \
                 export with --precision fp32 or fp16 for the cpu target (bf16 is for --target gpu)",
                network.graph.display(),
                value.name
            );
        }
        if precision == Some(&Precision::Bf16) {
            bail!(
                "{}: a bf16 graph ({} says so), which the cpu target (ONNX Runtime's CPU kernels) cannot run; \
                 export with --precision fp32 or fp16 for the cpu target (bf16 is for --target gpu)",
                network.graph.display(),
                manifest.display()
            );
        }
    }
    Ok(())
}

fn cpu_limits(exported: &Exported, options: &Options) -> Result<Limits> {
    let clip = exported
        .network(Network::Clip)
        .interface
        .input("input_ids")
        .expect("checked");
    let t5 = exported
        .network(Network::T5)
        .interface
        .input("input_ids")
        .expect("checked");
    for (name, size) in [("--max-height", options.max_height), ("--max-width", options.max_width)] {
        if size < 16 || size % 16 != 0 {
            bail!("{name} {size}: must be a positive multiple of 16");
        }
    }
    Ok(Limits {
        min_height: 16,
        max_height: options.max_height.into(),
        min_width: 16,
        max_width: options.max_width.into(),
        clip_length: clip.dims.get(1).and_then(fixed).unwrap_or(CLIP_LENGTH as i64),
        min_sequence_length: t5.dims.get(1).and_then(fixed).unwrap_or(1),
        max_sequence_length: t5.dims.get(1).and_then(fixed).unwrap_or(MAX_SEQUENCE_LENGTH as i64),
        network_max_batch: options.max_batch.into(),
    })
}

/// What the primary engines accept, all profiles together.
fn gpu_limits(manifest: &EnginesManifest) -> Result<Limits> {
    let engine = |n: Network| manifest.of(n)[0];
    let vae = engine(Network::VaeDecoder);
    let (min_h, max_h) = vae.range("latent", 2)?;
    let (min_w, max_w) = vae.range("latent", 3)?;
    let clip_length = engine(Network::Clip).range("input_ids", 1)?.1;
    // T5's output is the transformer's text input: both engines must take the length.
    let (t5_min, t5_max) = engine(Network::T5).range("input_ids", 1)?;
    let (text_min, text_max) = engine(Network::Transformer).range("encoder_hidden_states", 1)?;
    let (min_sequence_length, max_sequence_length) = (t5_min.max(text_min), t5_max.min(text_max));
    if min_sequence_length > max_sequence_length {
        bail!(
            "the t5 engine takes {t5_min}..={t5_max} tokens, the transformer engine {text_min}..={text_max}: no T5 length fits both"
        );
    }
    // Each network's first input has the batch (the transformer's `hidden_states`, not its ids).
    let batch = Network::ALL
        .iter()
        .map(|n| engine(*n).covered_batch(n.inputs()[0].name))
        .collect::<Result<Vec<_>>>()?;
    let round_up = |v: i64| (v * 8 + 15) / 16 * 16;
    Ok(Limits {
        min_height: round_up(min_h),
        max_height: max_h * 8 / 16 * 16,
        min_width: round_up(min_w),
        max_width: max_w * 8 / 16 * 16,
        clip_length,
        min_sequence_length,
        max_sequence_length,
        network_max_batch: batch.into_iter().min().expect("four networks"),
    })
}

fn write_repository(
    options: &Options,
    exported: &Exported,
    dirs: &[ModelDir],
    limits: &Limits,
    recorded: &recorded::Recorded,
    progress: &dyn Fn(u64) -> indicatif::ProgressBar,
) -> Result<Packaged> {
    let out = &options.out;
    let mut inputs = vec![options.models.clone()];
    inputs.extend(options.engines.clone());
    inputs.extend(options.alternatives.iter().map(|(_, dir)| dir.clone()));
    let existing = if options.force {
        Existing::Replace
    } else {
        Existing::Refuse
    };
    let staged = Staged::begin(out, &inputs, existing, StageKind::Repository)?;
    let tmp = staged.path();
    let result = (|| {
        let mut files = Vec::new();
        for dir in dirs {
            let model = tmp.join(&dir.config.name);
            std::fs::create_dir_all(model.join("1"))?;
            std::fs::write(model.join("config.pbtxt"), dir.config.to_pbtxt())?;
            files.push((PathBuf::from(&dir.config.name).join("config.pbtxt"), None));
            for (rel, source) in &dir.files {
                let dest = model.join(rel);
                std::fs::create_dir_all(dest.parent().expect("inside the model"))?;
                let from = match source {
                    Source::Bytes(bytes) => {
                        std::fs::write(&dest, bytes)?;
                        None
                    }
                    Source::Link(from) => {
                        link_or_copy(from, &dest)?;
                        Some(from)
                    }
                };
                files.push((PathBuf::from(&dir.config.name).join(rel), from));
            }
            crash_point(&format!("package-wrote-{}", dir.config.name));
        }
        let total: u64 = files
            .iter()
            .map(|(f, _)| std::fs::metadata(tmp.join(f)).map(|m| m.len()).unwrap_or(0))
            .sum();
        let bar = progress(total);
        bar.set_message("sha256");
        let mut listed = Vec::new();
        for (file, from) in &files {
            let path = tmp.join(file);
            let bytes = std::fs::metadata(&path)?.len();
            let entry = FileEntry::new(tmp, &path, bytes, sha256_file(&path)?);
            if let Some(from) = from {
                recorded.check(from, &entry)?;
            }
            listed.push(entry);
            bar.inc(bytes);
        }
        bar.finish_and_clear();
        let models: Vec<String> = dirs.iter().map(|d| d.config.name.clone()).collect();
        let manifest = RepositoryManifest {
            kind: StageKind::Repository,
            fluxbuild: env!("CARGO_PKG_VERSION").into(),
            target: options.target,
            variant: exported.models.variant.clone(),
            vae_scaling_factor: exported.models.vae_scaling_factor.clone(),
            vae_shift_factor: exported.models.vae_shift_factor.clone(),
            scheduler: exported.models.scheduler.clone(),
            settings: options.clone(),
            limits: limits.clone(),
            models: models.clone(),
            source: RepositorySource {
                models: exported.models.dir.clone(),
                export_manifest_sha256: sha256_file(&exported.models.dir.join("manifest.json")).ok(),
                engines_manifest_sha256: options
                    .engines
                    .as_ref()
                    .and_then(|e| sha256_file(&e.join("manifest.json")).ok()),
            },
            files: listed,
        };
        crash_point("package-before-manifest");
        write_atomic(
            &tmp.join("manifest.json"),
            serde_json::to_string_pretty(&manifest)?.as_bytes(),
        )?;
        crash_point("package-manifest-written");
        Ok::<_, anyhow::Error>((models, files.len(), total))
    })();
    let (models, count, bytes) = result.with_context(|| format!("writing the repository {}", out.display()))?;
    staged.commit()?;
    Ok(Packaged {
        repository: out.clone(),
        target: options.target,
        models,
        files: count,
        bytes,
        limits: limits.clone(),
        max_request_bytes: crate::serve::repository_max_request_bytes(out)?,
    })
}

fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}
