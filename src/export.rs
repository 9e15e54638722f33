//! Stage 2: checkpoint -> one ONNX graph per submodel, plus the tokenizer and scheduler files
//! the later stages need, and a manifest tracing every output back to its inputs.
//!
//! Everything is validated before anything is written; outputs and the manifest go to a staging
//! folder beside `out`, swapped in whole only when all submodels succeeded (`output_dir`).

use crate::pipeline_files::{self, Origin, PipelineFile, PipelineFileSources};
use anyhow::{bail, Context, Result};
use fluxbuild_contract::manifest::{FileEntry, Manifest, StageKind};
use fluxbuild_contract::output_dir::{self, crash_point, Existing, Staged};
use fluxbuild_contract::{Network, Variant};
use fluxbuild_exporters::checkpoint::{read_json, Checkpoint};
use fluxbuild_exporters::models::{self, Analysis, GraphOptions};
use fluxbuild_exporters::onnx::{problems_error, write_model, Graph};
use fluxbuild_exporters::precision::{NetworkPrecision, Precision};
use fluxbuild_exporters::quantize::calibration::CalibrationTable;
use fluxbuild_exporters::quantize::{qdq, Fp8Policy, Fp8Summary, WeightScaling};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where one submodel comes from and how it is exported.
#[derive(Clone, Debug)]
pub struct SubmodelSource {
    pub network: Network,
    /// A pipeline folder, component folder or single file.
    pub path: PathBuf,
    /// `--config` override (else the checkpoint's own config.json is used).
    pub config: Option<PathBuf>,
    /// The precision resolved for this network, once: export, the manifest and fp8 all read it.
    pub plan: NetworkPrecision,
}

#[derive(Clone, Debug)]
pub struct ExportRequest {
    pub submodels: Vec<SubmodelSource>,
    /// Where the tokenizers and the scheduler config come from.
    pub files: PipelineFileSources,
    pub out: PathBuf,
    /// What to do with an `out` that holds an earlier export.
    pub existing: Existing,
    pub opset: i64,
    pub precision: PrecisionSettings,
}

/// How reduced precisions are applied.
#[derive(Clone, Debug, Default)]
pub struct PrecisionSettings {
    /// The table `fluxbuild calibrate` wrote (activation amax per linear layer), for fp8.
    pub calibration: Option<PathBuf>,
    pub fp8_weights: WeightScaling,
    /// Weight-name patterns kept in 16-bit besides the defaults.
    pub fp8_keep: Vec<String>,
    /// fp16/bf16/fp8 submodels become fp32 graphs that round like them (16-bit weights, every
    /// 16-bit op output rounded), for accuracy checks on ONNX Runtime's CPU, which lacks bf16
    /// kernels and runs fp16 ops in fp32. Not for deployment.
    pub emulate: bool,
}

/// `MODELS/manifest.json`: the export settings and one record per exported submodel.
pub type ExportManifest = Manifest<ExportSettings, ExportedSubmodel>;

/// The settings of an export (of the last run, for `--update`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSettings {
    pub opset: i64,
    /// Submodel -> the precision it was exported at (this run's submodels).
    pub precision: BTreeMap<String, Precision>,
    /// Present when some submodel is fp8.
    pub fp8: Option<Fp8Settings>,
    pub emulated_in_fp32: bool,
    /// The diffusers pipeline folder the weights came from, if any.
    pub pipeline: Option<PathBuf>,
    /// Output folder (`tokenizer`, `tokenizer_2`, `scheduler`) -> where its files came from.
    pub pipeline_files: BTreeMap<String, Origin>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fp8Settings {
    /// The table `fluxbuild calibrate` wrote.
    pub calibration: PathBuf,
    pub calibration_sha256: String,
    pub weights: WeightScaling,
    pub keep: Vec<String>,
}

/// The manifest entry of one exported submodel.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedSubmodel {
    pub source: Vec<PathBuf>,
    pub source_kind: String,
    /// The key root of this submodel's part of a ComfyUI all-in-one checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_in_one_part: Option<String>,
    /// ComfyUI scaled fp8: weights dequantized (q · scale_weight) while streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaled_fp8: Option<fluxbuild_exporters::checkpoint::ScaledFp8>,
    pub layout: String,
    pub variant: Option<String>,
    pub config: serde_json::Value,
    pub precision: Precision,
    /// Element types and wider parts the precision implies.
    #[serde(default)]
    pub precision_plan: Option<NetworkPrecision>,
    /// FP8 quantization details (fp8 submodels only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Fp8Summary>,
    pub opset: i64,
    pub parameters: u64,
    pub nodes: usize,
    pub initializers: usize,
    pub inputs: Vec<fluxbuild_contract::manifest::TensorSpec>,
    pub outputs: Vec<fluxbuild_contract::manifest::TensorSpec>,
    /// Tensors whose values were saturated converting to a narrower type, with counts.
    pub saturated: Vec<(String, u64)>,
}

/// How `network`'s graph is built at `precision`. fp8 builds the graph of its base type (bf16;
/// fp16 for fp8-fp16) at opset 19 (FP8 Q/DQ), which `quantize_fp8` then rewrites.
pub fn graph_options(plan: &NetworkPrecision, opset: i64) -> GraphOptions {
    let opset = if plan.fp8_linears {
        opset.max(qdq::FP8_OPSET)
    } else {
        opset
    };
    GraphOptions {
        float: plan.float,
        wide: plan.wide,
        opset,
    }
}

struct Planned<'a> {
    source: &'a SubmodelSource,
    ckpt: &'a Checkpoint,
    analysis: Analysis,
    graph: Graph<'a>,
    fp8: Option<Fp8Summary>,
    emulated: bool,
}

/// The calibration table, loaded when some submodel is fp8.
struct Calibration {
    path: PathBuf,
    sha256: String,
    table: CalibrationTable,
}

fn load_calibration(request: &ExportRequest) -> Result<Option<Calibration>> {
    let Some(fp8) = request.submodels.iter().find(|s| s.plan.precision.is_fp8()) else {
        return Ok(None);
    };
    let Some(path) = &request.precision.calibration else {
        bail!(
            "--precision {}={} needs activation scales: pass --calibration FILE (written by `fluxbuild calibrate --models DIR` on an fp32 export)",
            fp8.network,
            fp8.plan.precision
        );
    };
    let table = CalibrationTable::read(path)?;
    if table.model.submodel != fp8.network.name() {
        bail!(
            "{}: a calibration of `{}`, not of `{}`",
            path.display(),
            table.model.submodel,
            fp8.network
        );
    }
    Ok(Some(Calibration {
        path: path.clone(),
        sha256: fluxbuild_contract::files::sha256_file(path)?,
        table,
    }))
}

/// Rewrites the linear layers of an fp8 submodel's graph into FP8 Q/DQ form.
fn quantize_fp8(
    request: &ExportRequest,
    source: &SubmodelSource,
    graph: &mut Graph<'_>,
    calibration: &Calibration,
) -> Result<Fp8Summary> {
    let policy = Fp8Policy::for_network(
        source.network,
        request.precision.fp8_weights,
        &request.precision.fp8_keep,
    );
    let mut summary = qdq::quantize_linears(graph, &policy, &calibration.table.amax)
        .with_context(|| format!("{} with calibration {}", source.network, calibration.path.display()))?;
    summary.calibration_sha256 = Some(calibration.sha256.clone());
    Ok(summary)
}

/// Refuses a calibration measured on another checkpoint (known once the inputs are hashed).
fn check_calibration(planned: &[Planned<'_>], inputs: &[FileEntry], calibration: Option<&Calibration>) -> Result<()> {
    let Some(calibration) = calibration else { return Ok(()) };
    for p in planned.iter().filter(|p| p.fp8.is_some()) {
        let hashes: Vec<String> = p
            .ckpt
            .source_files()
            .iter()
            .filter_map(|f| {
                let absolute = std::path::absolute(f).unwrap_or_else(|_| f.clone());
                inputs.iter().find(|i| i.path == absolute).map(|i| i.sha256.clone())
            })
            .collect();
        calibration.table.check_checkpoint(&calibration.path, &hashes)?;
    }
    Ok(())
}

/// Runs the export. Returns the manifest written to `out/manifest.json`.
pub fn export(request: &ExportRequest, progress: &ProgressBar) -> Result<ExportManifest> {
    if request.submodels.is_empty() {
        bail!("nothing to export: give --checkpoint PIPELINE or one of --clip/--t5/--transformer/--vae");
    }
    let checkpoints: Vec<Checkpoint> = request
        .submodels
        .iter()
        .map(|s| {
            let exporter = models::exporter(s.network);
            Checkpoint::load(&s.path, exporter.subfolder(), exporter.key_prefixes())
                .with_context(|| format!("loading the {}", s.network))
        })
        .collect::<Result<_>>()?;
    // A wrong --out is refused before the inputs are read through.
    let inputs = input_paths(request, &checkpoints);
    output_dir::check(&request.out, &inputs, request.existing, StageKind::Export)?;
    let inputs_hashing = hash_inputs_in_background(&checkpoints);
    let calibration = load_calibration(request)?;

    let planned = plan_all(request, &checkpoints, calibration.as_ref())?;
    let extras = resolve_pipeline_files(request, &planned)?;
    let staging = Staged::begin(
        &request.out,
        &input_paths(request, &checkpoints),
        request.existing,
        StageKind::Export,
    )?;
    let total: u64 = planned
        .iter()
        .flat_map(|p| &p.graph.initializers)
        .map(|i| i.byte_len() as u64)
        .sum();
    progress.set_length(total);

    let mut submodels = BTreeMap::new();
    let mut files = Vec::new();
    for p in &planned {
        progress.set_message(p.source.network.name());
        let dir = staging.path().join(p.source.network.name());
        staging.discard(Path::new(p.source.network.name()))?;
        let written = write_model(&p.graph, &dir, &mut |_, bytes| progress.inc(bytes))
            .with_context(|| format!("writing {}", p.source.network))?;
        files.push(FileEntry::new(
            &request.out,
            &request.out.join(p.source.network.name()).join("model.onnx"),
            written.model_bytes,
            written.model_sha256.clone(),
        ));
        files.push(FileEntry::new(
            &request.out,
            &request.out.join(p.source.network.name()).join("model.onnx.data"),
            written.data_bytes,
            written.data_sha256.clone(),
        ));
        submodels.insert(p.source.network.name().to_string(), describe(p, &written));
        crash_point(&format!("export-wrote-{}", p.source.network));
    }
    progress.finish_and_clear();

    for extra in extras.iter().filter(|e| !e.files.is_empty()) {
        staging.discard(Path::new(extra.folder))?;
        extra.write(staging.path())?;
        for file in list_files(&staging.path().join(extra.folder))? {
            let rel = file.strip_prefix(staging.path()).unwrap();
            files.push(FileEntry::hash(&request.out, &request.out.join(rel), &file)?);
        }
    }

    let inputs = inputs_hashing.join().expect("hashing thread")?;
    check_calibration(&planned, &inputs, calibration.as_ref())?;
    let settings = ExportSettings {
        opset: request.opset,
        precision: planned
            .iter()
            .map(|p| (p.source.network.name().to_string(), p.source.plan.precision))
            .collect(),
        fp8: calibration.as_ref().map(|c| Fp8Settings {
            calibration: c.path.clone(),
            calibration_sha256: c.sha256.clone(),
            weights: request.precision.fp8_weights,
            keep: request.precision.fp8_keep.clone(),
        }),
        emulated_in_fp32: request.precision.emulate,
        pipeline: request.files.pipeline.clone(),
        pipeline_files: extras
            .iter()
            .map(|e| (e.folder.to_string(), e.origin.clone()))
            .collect(),
    };
    let mut manifest = ExportManifest::new(StageKind::Export, settings, inputs, files);
    manifest.submodels = submodels;
    let entries: Vec<&str> = planned
        .iter()
        .map(|p| p.source.network.name())
        .chain(extras.iter().filter(|e| !e.files.is_empty()).map(|e| e.folder))
        .collect();
    // Only an explicit --update keeps what an earlier export wrote; --force replaces it all.
    let manifest = match request.existing {
        Existing::Update => Manifest::merge_previous(&request.out.join("manifest.json"), &manifest, &entries)?,
        Existing::Refuse | Existing::Replace => manifest,
    };
    crash_point("export-before-manifest");
    manifest.write(&staging.path().join("manifest.json"))?;
    crash_point("export-manifest-written");
    staging.commit()?;
    Ok(manifest)
}

/// The tokenizer each exported text encoder needs and the transformer's scheduler config,
/// resolved (and checked) before anything is written.
fn resolve_pipeline_files(request: &ExportRequest, planned: &[Planned<'_>]) -> Result<Vec<PipelineFile>> {
    let mut files = Vec::new();
    for p in planned {
        match p.source.network {
            Network::Clip => {
                files.push(check_vocabulary(pipeline_files::clip_tokenizer(&request.files)?, p)?);
            }
            Network::T5 => {
                files.push(check_vocabulary(pipeline_files::t5_tokenizer(&request.files)?, p)?);
            }
            Network::Transformer => {
                // The image-conditioned variants (fill, kontext, ...) are dev-based: dev's schedule.
                let variant = p.analysis.variant.as_deref().and_then(|v| Variant::parse(v).ok());
                files.push(pipeline_files::scheduler(
                    &request.files,
                    variant.unwrap_or(Variant::Dev),
                )?);
            }
            Network::VaeDecoder => {}
        }
    }
    Ok(files)
}

/// A tokenizer with ids beyond the encoder's embedding table belongs to another model: an error
/// for one the user or the checkpoint supplied; the bundled one is left out (the encoder is not
/// CLIP-L / T5-XXL, e.g. a tiny test model), which the manifest says.
fn check_vocabulary(file: PipelineFile, p: &Planned<'_>) -> Result<PipelineFile> {
    let rows = p.analysis.config.get("vocab_size").and_then(serde_json::Value::as_u64);
    let (Some(rows), Some(size)) = (rows, file.vocab_size) else {
        return Ok(file);
    };
    if size as u64 <= rows {
        return Ok(file);
    }
    let why = format!(
        "{size} tokens, but the {} encoder ({}) embeds only {rows}",
        p.source.network,
        p.source.path.display()
    );
    match file.origin {
        Origin::Bundled { .. } => Ok(file.left_out(format!(
            "the bundled tokenizer has {why}; pass --{} DIR with this encoder's tokenizer",
            if p.source.network == Network::Clip {
                "tokenizer"
            } else {
                "tokenizer-2"
            }
        ))),
        _ => bail!("{}: {why}: the tokenizer belongs to another model", file.origin),
    }
}

/// Analyzes and builds every graph; reports every checkpoint problem of every submodel at once.
fn plan_all<'a>(
    request: &'a ExportRequest,
    checkpoints: &'a [Checkpoint],
    calibration: Option<&Calibration>,
) -> Result<Vec<Planned<'a>>> {
    let mut planned = Vec::new();
    let mut failures = Vec::new();
    for (source, ckpt) in request.submodels.iter().zip(checkpoints) {
        if let Some(what) = fluxbuild_exporters::checkpoint::diagnose::mismatch(ckpt, Some(source.network)) {
            failures.push(format!("{}: {what}", source.network));
            continue;
        }
        let exporter = models::exporter(source.network);
        let emulate = request.precision.emulate && source.plan.precision != Precision::Fp32;
        let options = graph_options(&source.plan, request.opset);
        let config = match &source.config {
            Some(path) => read_json(Some(path))?,
            None => ckpt.config()?,
        };
        let (analysis, mut graph, problems) = models::plan(exporter, ckpt, config.as_ref(), &options)
            .with_context(|| format!("{} ({})", source.network, source.path.display()))?;
        if problems.is_empty() {
            let fp8 = match calibration.filter(|_| source.plan.precision.is_fp8()) {
                Some(c) => Some(quantize_fp8(request, source, &mut graph, c)?),
                None => None,
            };
            if emulate {
                fluxbuild_exporters::quantize::emulate::emulate_in_fp32(&mut graph);
            }
            planned.push(Planned {
                source,
                ckpt,
                analysis,
                graph,
                fp8,
                emulated: emulate,
            });
        } else {
            let files: Vec<String> = ckpt.source_files().iter().map(|f| f.display().to_string()).collect();
            failures.push(format!(
                "{:#}",
                problems_error(&format!("{} ({})", source.network, files.join(", ")), &problems)
            ));
        }
    }
    match &failures[..] {
        [] => {}
        // The diagnosis comes first.
        [one] => bail!("{one}\nnothing was written"),
        several => bail!("nothing was written:\n{}", several.join("\n")),
    }
    Ok(planned)
}

fn describe(p: &Planned<'_>, written: &fluxbuild_exporters::onnx::WrittenModel) -> ExportedSubmodel {
    ExportedSubmodel {
        // Absolute, like the inputs' paths: calibrate finds a source's hash from any folder.
        source: p
            .ckpt
            .source_files()
            .into_iter()
            .map(|f| std::path::absolute(&f).unwrap_or(f))
            .collect(),
        source_kind: format!("{:?}", p.ckpt.located.kind),
        all_in_one_part: p.ckpt.all_in_one_part.clone(),
        scaled_fp8: p.ckpt.scaled_fp8.clone(),
        layout: p.analysis.layout.clone(),
        variant: p.analysis.variant.clone(),
        config: p.analysis.config.clone(),
        precision: p.source.plan.precision,
        precision_plan: Some({
            let mut plan = p.source.plan.clone();
            if p.emulated {
                plan.notes.push(format!(
                    "emulated in an fp32 graph: {:?} weights, every {:?} op output rounded",
                    plan.float, plan.float
                ));
            }
            plan
        }),
        quantization: p.fp8.clone(),
        opset: p.graph.opset,
        parameters: p.ckpt.param_count(),
        nodes: written.nodes,
        initializers: written.initializers,
        inputs: p
            .graph
            .inputs
            .iter()
            .map(fluxbuild_contract::manifest::TensorSpec::from)
            .collect(),
        outputs: p
            .graph
            .outputs
            .iter()
            .map(fluxbuild_contract::manifest::TensorSpec::from)
            .collect(),
        saturated: written.saturated.clone(),
    }
}

/// Input files are hashed on a second thread while the graphs are written.
fn hash_inputs_in_background(checkpoints: &[Checkpoint]) -> std::thread::JoinHandle<Result<Vec<FileEntry>>> {
    let mut paths: Vec<PathBuf> = checkpoints.iter().flat_map(|c| c.source_files()).collect();
    paths.extend(checkpoints.iter().filter_map(|c| c.located.config.clone()));
    paths.dedup();
    std::thread::spawn(move || paths.iter().map(|p| FileEntry::hash_absolute(p)).collect())
}

/// Regular files under `dir`, recursively, sorted.
pub fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(list_files(&path)?);
        } else {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Every path the export reads: `--out` may be none of them, nor contain or lie inside one.
fn input_paths(request: &ExportRequest, checkpoints: &[Checkpoint]) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = request.submodels.iter().map(|s| s.path.clone()).collect();
    paths.extend(request.submodels.iter().filter_map(|s| s.config.clone()));
    let files = &request.files;
    paths.extend(
        [&files.pipeline, &files.tokenizer, &files.tokenizer_2, &files.scheduler]
            .into_iter()
            .flatten()
            .cloned(),
    );
    paths.extend(request.precision.calibration.clone());
    paths.extend(checkpoints.iter().flat_map(|c| c.source_files()));
    paths
}
