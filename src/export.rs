//! Stage 2: checkpoint -> one ONNX graph per submodel, plus the tokenizer and scheduler files
//! the later stages need, and a manifest tracing every output back to its inputs.
//!
//! Everything is validated before anything is written; outputs go to a staging folder inside
//! `out` and are renamed into place only when all submodels succeeded.

use crate::manifest::{FileEntry, Manifest};
use anyhow::{bail, Context, Result};
use fluxbuild_exporters::checkpoint::{read_json, Checkpoint};
use fluxbuild_exporters::models::{self, Analysis, Exporter, GraphOptions};
use fluxbuild_exporters::onnx::{problems_error, write_model, Graph};
use fluxbuild_exporters::precision::{NetworkPrecision, Precision};
use fluxbuild_exporters::quantize::calibration::CalibrationTable;
use fluxbuild_exporters::quantize::{qdq, Fp8Policy, Fp8Summary, WeightScaling};
use indicatif::ProgressBar;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Submodel names in pipeline order.
pub const SUBMODELS: [&str; 4] = ["clip", "t5", "transformer", "vae_decoder"];

/// Pipeline folders copied next to the graphs (tokenizers for CLIP and T5, the scheduler config).
const PIPELINE_EXTRAS: [&str; 3] = ["tokenizer", "tokenizer_2", "scheduler"];

/// Where one submodel comes from and how it is exported.
#[derive(Clone, Debug)]
pub struct SubmodelSource {
    pub name: &'static str,
    /// A pipeline folder, component folder or single file.
    pub path: PathBuf,
    /// `--config` override (else the checkpoint's own config.json is used).
    pub config: Option<PathBuf>,
    pub precision: Precision,
}

#[derive(Clone, Debug)]
pub struct ExportRequest {
    pub submodels: Vec<SubmodelSource>,
    /// The pipeline folder, for tokenizers and the scheduler config.
    pub pipeline: Option<PathBuf>,
    pub out: PathBuf,
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

/// The manifest entry of one exported submodel.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ExportedSubmodel {
    pub source: Vec<PathBuf>,
    pub source_kind: String,
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
    pub inputs: Vec<crate::manifest::TensorSpec>,
    pub outputs: Vec<crate::manifest::TensorSpec>,
    /// Tensors whose values were saturated converting to a narrower type, with counts.
    pub saturated: Vec<(String, u64)>,
}

/// How `network`'s graph is built at `precision`. fp8 builds the graph of its base type (bf16;
/// fp16 for fp8-fp16) at opset 19 (FP8 Q/DQ), which `quantize_fp8` then rewrites.
pub fn graph_options(network: &str, precision: Precision, opset: i64) -> Result<GraphOptions> {
    let plan = NetworkPrecision::new(network, precision)?;
    let opset = if plan.fp8_linears {
        opset.max(qdq::FP8_OPSET)
    } else {
        opset
    };
    Ok(GraphOptions {
        float: plan.float,
        wide: plan.wide,
        opset,
    })
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
    let Some(fp8) = request.submodels.iter().find(|s| s.precision.is_fp8()) else {
        return Ok(None);
    };
    let Some(path) = &request.precision.calibration else {
        bail!(
            "--precision {}={} needs activation scales: pass --calibration FILE (written by `fluxbuild calibrate --models DIR` on an fp32 export)",
            fp8.name,
            fp8.precision
        );
    };
    let table = CalibrationTable::read(path)?;
    if table.model.submodel != fp8.name {
        bail!(
            "{}: a calibration of `{}`, not of `{}`",
            path.display(),
            table.model.submodel,
            fp8.name
        );
    }
    Ok(Some(Calibration {
        path: path.clone(),
        sha256: fluxbuild_exporters::util::sha256_file(path)?,
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
    let policy = Fp8Policy::for_network(source.name, request.precision.fp8_weights, &request.precision.fp8_keep);
    let mut summary = qdq::quantize_linears(graph, &policy, &calibration.table.amax)
        .with_context(|| format!("{} with calibration {}", source.name, calibration.path.display()))?;
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
pub fn export(request: &ExportRequest, progress: &ProgressBar) -> Result<Manifest> {
    if request.submodels.is_empty() {
        bail!("nothing to export: give --checkpoint PIPELINE or one of --clip/--t5/--transformer/--vae");
    }
    let checkpoints: Vec<Checkpoint> = request
        .submodels
        .iter()
        .map(|s| {
            let exporter = exporter_for(s.name);
            Checkpoint::load(&s.path, exporter.subfolder(), exporter.key_prefixes())
                .with_context(|| format!("loading {} from {}", s.name, s.path.display()))
        })
        .collect::<Result<_>>()?;
    let inputs_hashing = hash_inputs_in_background(&checkpoints);
    let calibration = load_calibration(request)?;

    let planned = plan_all(request, &checkpoints, calibration.as_ref())?;
    let staging = Staging::create(&request.out)?;
    let total: u64 = planned
        .iter()
        .flat_map(|p| &p.graph.initializers)
        .map(|i| i.byte_len() as u64)
        .sum();
    progress.set_length(total);

    let mut submodels = BTreeMap::new();
    let mut files = Vec::new();
    for p in &planned {
        progress.set_message(p.source.name);
        let dir = staging.path().join(p.source.name);
        let written = write_model(&p.graph, &dir, &mut |_, bytes| progress.inc(bytes))
            .with_context(|| format!("writing {}", p.source.name))?;
        files.push(FileEntry::new(
            &request.out,
            &request.out.join(p.source.name).join("model.onnx"),
            written.model_bytes,
            written.model_sha256.clone(),
        ));
        files.push(FileEntry::new(
            &request.out,
            &request.out.join(p.source.name).join("model.onnx.data"),
            written.data_bytes,
            written.data_sha256.clone(),
        ));
        submodels.insert(p.source.name.to_string(), describe(p, &written));
    }
    progress.finish_and_clear();

    let mut extras = Vec::new();
    if let Some(pipeline) = &request.pipeline {
        for folder in PIPELINE_EXTRAS.iter().filter(|f| pipeline.join(f).is_dir()) {
            copy_folder(&pipeline.join(folder), &staging.path().join(folder))?;
            extras.push(*folder);
        }
    }
    for folder in &extras {
        for file in list_files(&staging.path().join(folder))? {
            let rel = file.strip_prefix(staging.path()).unwrap();
            files.push(FileEntry::hash(&request.out, &request.out.join(rel), &file)?);
        }
    }

    let inputs = inputs_hashing.join().expect("hashing thread")?;
    check_calibration(&planned, &inputs, calibration.as_ref())?;
    let mut manifest = Manifest::new("export", inputs, files);
    manifest.settings = serde_json::json!({
        "opset": request.opset,
        "precision": planned.iter().map(|p| (p.source.name, p.source.precision)).collect::<BTreeMap<_, _>>(),
        "fp8": calibration.as_ref().map(|c| serde_json::json!({
            "calibration": c.path,
            "calibration_sha256": c.sha256,
            "weights": request.precision.fp8_weights,
            "keep": request.precision.fp8_keep,
        })),
        "emulated_in_fp32": request.precision.emulate,
        "pipeline": request.pipeline,
    });
    manifest.submodels = serde_json::to_value(&submodels)?;
    let entries: Vec<&str> = planned
        .iter()
        .map(|p| p.source.name)
        .chain(extras.iter().copied())
        .collect();
    staging.commit(&entries, &manifest)?;
    Ok(manifest)
}

fn exporter_for(name: &str) -> &'static dyn Exporter {
    models::exporter(name).unwrap_or_else(|| panic!("no exporter named {name}"))
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
        let exporter = exporter_for(source.name);
        let emulate = request.precision.emulate && source.precision != Precision::Fp32;
        let options = graph_options(source.name, source.precision, request.opset)?;
        let config = match &source.config {
            Some(path) => read_json(Some(path))?,
            None => ckpt.config()?,
        };
        let (analysis, mut graph, problems) = models::plan(exporter, ckpt, config.as_ref(), &options)
            .with_context(|| format!("{} ({})", source.name, source.path.display()))?;
        if problems.is_empty() {
            let fp8 = match calibration.filter(|_| source.precision.is_fp8()) {
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
                problems_error(&format!("{} ({})", source.name, files.join(", ")), &problems)
            ));
        }
    }
    if !failures.is_empty() {
        bail!("nothing was written:\n{}", failures.join("\n"));
    }
    Ok(planned)
}

fn describe(p: &Planned<'_>, written: &fluxbuild_exporters::onnx::WrittenModel) -> ExportedSubmodel {
    ExportedSubmodel {
        source: p.ckpt.source_files(),
        source_kind: format!("{:?}", p.ckpt.located.kind),
        layout: p.analysis.layout.clone(),
        variant: p.analysis.variant.clone(),
        config: p.analysis.config.clone(),
        precision: p.source.precision,
        precision_plan: NetworkPrecision::new(p.source.name, p.source.precision)
            .ok()
            .map(|mut plan| {
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
        inputs: p.graph.inputs.iter().map(crate::manifest::TensorSpec::from).collect(),
        outputs: p.graph.outputs.iter().map(crate::manifest::TensorSpec::from).collect(),
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

fn copy_folder(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for file in list_files(from)? {
        let target = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap())?;
        std::fs::copy(&file, &target).with_context(|| format!("copying {}", file.display()))?;
    }
    Ok(())
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

/// `out/.fluxbuild-staging-PID/`: removed on drop unless committed.
struct Staging {
    out: PathBuf,
    dir: PathBuf,
    committed: bool,
}

impl Staging {
    fn create(out: &Path) -> Result<Staging> {
        std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create output folder", out.display()))?;
        let dir = out.join(format!(".fluxbuild-staging-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        Ok(Staging {
            out: out.to_path_buf(),
            dir,
            committed: false,
        })
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    /// Moves `entries` into `out` (replacing older ones), merges the manifest with the
    /// entries of an earlier export that this one did not replace, and writes it last.
    fn commit(mut self, entries: &[&str], manifest: &Manifest) -> Result<()> {
        let merged = Manifest::merge_previous(&self.out.join("manifest.json"), manifest, entries)?;
        for entry in entries {
            let target = self.out.join(entry);
            if target.exists() {
                std::fs::remove_dir_all(&target).with_context(|| format!("{}: cannot replace", target.display()))?;
            }
            std::fs::rename(self.dir.join(entry), &target)
                .with_context(|| format!("{}: cannot move into place", target.display()))?;
        }
        merged.write(&self.out.join("manifest.json"))?;
        std::fs::remove_dir_all(&self.dir)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
            // An output folder this run created and left empty is removed too.
            let _ = std::fs::remove_dir(&self.out);
        }
    }
}
