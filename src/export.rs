//! Stage 2: checkpoint -> one ONNX graph per submodel, plus the tokenizer and scheduler files
//! the later stages need, and a manifest tracing every output back to its inputs.
//!
//! Everything is validated before anything is written; outputs go to a staging folder inside
//! `out` and are renamed into place only when all submodels succeeded.

use crate::manifest::{FileEntry, Manifest};
use anyhow::{bail, Context, Result};
use fluxbuild_exporters::checkpoint::{read_json, Checkpoint};
use fluxbuild_exporters::models::{self, Analysis, Exporter, GraphOptions};
use fluxbuild_exporters::onnx::{problems_error, write_model, ElemType, Graph};
use fluxbuild_exporters::precision::Precision;
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
    pub opset: i64,
    pub parameters: u64,
    pub nodes: usize,
    pub initializers: usize,
    pub inputs: Vec<crate::manifest::TensorSpec>,
    pub outputs: Vec<crate::manifest::TensorSpec>,
    /// Tensors whose values were saturated converting to a narrower type, with counts.
    pub saturated: Vec<(String, u64)>,
}

/// Graph element type for a precision (fp8 quantizes weights on top of a 16-bit graph).
pub fn graph_options(precision: Precision, opset: i64) -> Result<GraphOptions> {
    let float = match precision {
        Precision::Fp32 => ElemType::F32,
        Precision::Fp16 => ElemType::F16,
        Precision::Bf16 => ElemType::BF16,
        Precision::Fp8 => bail!("fp8 export needs calibration support, which this build does not have yet"),
    };
    Ok(GraphOptions { float, opset })
}

struct Planned<'a> {
    source: &'a SubmodelSource,
    ckpt: &'a Checkpoint,
    analysis: Analysis,
    graph: Graph<'a>,
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

    let planned = plan_all(request, &checkpoints)?;
    let staging = Staging::create(&request.out)?;
    let total: u64 = planned.iter().flat_map(|p| &p.graph.initializers).map(|i| i.byte_len() as u64).sum();
    progress.set_length(total);

    let mut submodels = BTreeMap::new();
    let mut files = Vec::new();
    for p in &planned {
        progress.set_message(p.source.name);
        let dir = staging.path().join(p.source.name);
        let written = write_model(&p.graph, &dir, &mut |_, bytes| progress.inc(bytes))
            .with_context(|| format!("writing {}", p.source.name))?;
        files.push(FileEntry::new(&request.out, &request.out.join(p.source.name).join("model.onnx"), written.model_bytes, written.model_sha256.clone()));
        files.push(FileEntry::new(&request.out, &request.out.join(p.source.name).join("model.onnx.data"), written.data_bytes, written.data_sha256.clone()));
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
    let mut manifest = Manifest::new("export", inputs, files);
    manifest.settings = serde_json::json!({
        "opset": request.opset,
        "precision": planned.iter().map(|p| (p.source.name, p.source.precision)).collect::<BTreeMap<_, _>>(),
        "pipeline": request.pipeline,
    });
    manifest.submodels = serde_json::to_value(&submodels)?;
    let entries: Vec<&str> = planned.iter().map(|p| p.source.name).chain(extras.iter().copied()).collect();
    staging.commit(&entries, &manifest)?;
    Ok(manifest)
}

fn exporter_for(name: &str) -> &'static dyn Exporter {
    models::exporter(name).unwrap_or_else(|| panic!("no exporter named {name}"))
}

/// Analyzes and builds every graph; reports every checkpoint problem of every submodel at once.
fn plan_all<'a>(request: &'a ExportRequest, checkpoints: &'a [Checkpoint]) -> Result<Vec<Planned<'a>>> {
    let mut planned = Vec::new();
    let mut failures = Vec::new();
    for (source, ckpt) in request.submodels.iter().zip(checkpoints) {
        let exporter = exporter_for(source.name);
        let options = graph_options(source.precision, request.opset)?;
        let config = match &source.config {
            Some(path) => read_json(Some(path))?,
            None => ckpt.config()?,
        };
        let (analysis, graph, problems) = models::plan(exporter, ckpt, config.as_ref(), &options)
            .with_context(|| format!("{} ({})", source.name, source.path.display()))?;
        if problems.is_empty() {
            planned.push(Planned { source, ckpt, analysis, graph });
        } else {
            let files: Vec<String> = ckpt.source_files().iter().map(|f| f.display().to_string()).collect();
            failures.push(format!("{:#}", problems_error(&format!("{} ({})", source.name, files.join(", ")), &problems)));
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
        Ok(Staging { out: out.to_path_buf(), dir, committed: false })
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
            std::fs::rename(self.dir.join(entry), &target).with_context(|| format!("{}: cannot move into place", target.display()))?;
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
