//! `fluxbuild inspect PATH`: what a checkpoint is, as the exporters see it, and what is wrong with it.

use crate::export::graph_options;
use crate::output::Output;
use anyhow::{bail, Context, Result};
use fluxbuild_exporters::checkpoint::{read_json, Checkpoint};
use fluxbuild_exporters::models::{self, Exporter, EXPORTERS};
use fluxbuild_exporters::onnx::{Problem, DEFAULT_OPSET};
use fluxbuild_exporters::precision::Precision;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// A single .safetensors file, a diffusers component folder or a pipeline folder.
    path: PathBuf,
    /// A config.json for a file that carries none (e.g. the RoPE axes of a non-standard transformer).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report {
    submodel: &'static str,
    files: Vec<PathBuf>,
    source_kind: String,
    layout: Option<String>,
    variant: Option<String>,
    tensors: usize,
    parameters: u64,
    bytes: u64,
    dtypes: BTreeMap<String, usize>,
    config: Option<serde_json::Value>,
    problems: Vec<String>,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let reports = if args.path.join("model_index.json").is_file() {
        EXPORTERS
            .iter()
            .filter(|e| args.path.join(e.subfolder()).is_dir())
            .map(|e| inspect(*e, &args.path, args.config.as_deref()))
            .collect::<Result<Vec<_>>>()?
    } else {
        vec![inspect(detect(&args.path)?, &args.path, args.config.as_deref())?]
    };
    let problems: usize = reports.iter().map(|r| r.problems.len()).sum();
    out.result(&reports, || reports.iter().map(text).collect::<Vec<_>>().join("\n\n"));
    if problems > 0 {
        bail!("{}: {problems} problem(s) found", args.path.display());
    }
    Ok(())
}

/// Which submodel a file or component folder holds.
fn detect(path: &Path) -> Result<&'static dyn Exporter> {
    for exporter in EXPORTERS {
        let ckpt = Checkpoint::load(path, exporter.subfolder(), exporter.key_prefixes())?;
        if exporter.detect(&ckpt) {
            return Ok(exporter);
        }
    }
    bail!(
        "{}: not a FLUX transformer, CLIP, T5 or VAE checkpoint (no known tensor names)",
        path.display()
    )
}

fn inspect(exporter: &'static dyn Exporter, path: &Path, config: Option<&Path>) -> Result<Report> {
    let ckpt = Checkpoint::load(path, exporter.subfolder(), exporter.key_prefixes())
        .with_context(|| format!("loading {}", path.display()))?;
    let config = match config {
        Some(c) => read_json(Some(c))?,
        None => ckpt.config()?,
    };
    let options = graph_options(exporter.name(), Precision::Fp32, DEFAULT_OPSET)?;
    let (analysis, problems) = match models::plan(exporter, &ckpt, config.as_ref(), &options) {
        Ok((analysis, _graph, problems)) => (Some(analysis), problems.iter().map(Problem::to_string).collect()),
        Err(e) => (None, vec![format!("{e:#}")]),
    };
    Ok(Report {
        submodel: exporter.name(),
        files: ckpt.source_files(),
        source_kind: format!("{:?}", ckpt.located.kind),
        layout: analysis.as_ref().map(|a| a.layout.clone()),
        variant: analysis.as_ref().and_then(|a| a.variant.clone()),
        tensors: ckpt.len(),
        parameters: ckpt.param_count(),
        bytes: ckpt.byte_count(),
        dtypes: ckpt.dtypes(),
        config: analysis.map(|a| a.config),
        problems,
    })
}

fn text(r: &Report) -> String {
    let files: Vec<String> = r.files.iter().map(|f| f.display().to_string()).collect();
    let mut s = format!(
        "{} ({})\n  files:      {}\n  layout:     {}\n  variant:    {}\n  tensors:    {}\n  parameters: {} ({:.3} GB)\n  dtypes:     {:?}",
        r.submodel,
        r.source_kind,
        files.join(", "),
        r.layout.as_deref().unwrap_or("?"),
        r.variant.as_deref().unwrap_or("-"),
        r.tensors,
        r.parameters,
        r.bytes as f64 / 1e9,
        r.dtypes,
    );
    if let Some(config) = &r.config {
        s.push_str(&format!("\n  config:     {config}"));
    }
    if r.problems.is_empty() {
        s.push_str("\n  problems:   none");
    } else {
        s.push_str(&format!("\n  problems ({}):", r.problems.len()));
        for p in &r.problems {
            s.push_str(&format!("\n    - {p}"));
        }
    }
    s
}
