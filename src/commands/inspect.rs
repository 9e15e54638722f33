//! `fluxbuild inspect PATH`: what a checkpoint is, as the exporters see it, and what is wrong with it.

use crate::export::graph_options;
use crate::output::{AlreadyReported, Output};
use crate::pipeline_files::{self, pipeline_folder, PipelineFileSources};
use anyhow::{bail, Result};
use fluxbuild_contract::Variant;
use fluxbuild_exporters::checkpoint::{check_pipeline_index, diagnose, read_json, Checkpoint, ScaledFp8};
use fluxbuild_exporters::models::{self, Exporter, EXPORTERS};
use fluxbuild_exporters::onnx::{Problem, DEFAULT_OPSET};
use fluxbuild_exporters::precision::{NetworkPrecision, Precision};
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
    /// The key root of this part, when the file is a ComfyUI all-in-one checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    all_in_one_part: Option<String>,
    /// ComfyUI scaled fp8: weights dequantized on load.
    #[serde(skip_serializing_if = "Option::is_none")]
    scaled_fp8: Option<ScaledFp8>,
    layout: Option<String>,
    variant: Option<String>,
    tensors: usize,
    parameters: u64,
    bytes: u64,
    dtypes: BTreeMap<String, usize>,
    config: Option<serde_json::Value>,
    problems: Vec<String>,
}

impl Report {
    /// A component whose files cannot be read: its folder and why.
    fn unreadable(submodel: &'static str, folder: &Path, error: &anyhow::Error) -> Report {
        Report {
            submodel,
            files: vec![folder.to_path_buf()],
            source_kind: "unreadable".into(),
            all_in_one_part: None,
            scaled_fp8: None,
            layout: None,
            variant: None,
            tensors: 0,
            parameters: 0,
            bytes: 0,
            dtypes: BTreeMap::new(),
            config: None,
            problems: vec![format!("{error:#}")],
        }
    }
}

/// Problems shown in the text report (`--json` has all).
const LISTED: usize = 20;

/// The whole answer: one JSON document with `--json`, problems included.
#[derive(Serialize)]
struct Inspection {
    submodels: Vec<Report>,
    /// What `export` would write beside the graphs: tokenizer, tokenizer_2, scheduler.
    pipeline_files: BTreeMap<&'static str, String>,
    problems: usize,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let config = read_json(args.config.as_deref())?;
    let index = args.path.join("model_index.json");
    let reports = if index.is_file() {
        check_pipeline_index(&index)?;
        // Every component is reported: one that cannot be read (a truncated download) is one
        // problem among the others, not the end of the inspection.
        EXPORTERS
            .iter()
            .filter(|e| args.path.join(e.subfolder()).is_dir())
            .map(|e| {
                inspect(*e, &args.path, config.as_ref())
                    .unwrap_or_else(|error| Report::unreadable(e.name(), &args.path.join(e.subfolder()), &error))
            })
            .collect()
    } else {
        detect(&args.path)?
            .into_iter()
            .map(|e| inspect(e, &args.path, config.as_ref()))
            .collect::<Result<Vec<_>>>()?
    };
    let problems: usize = reports.iter().map(|r| r.problems.len()).sum();
    let inspection = Inspection {
        pipeline_files: pipeline_files_of(&args.path, &reports),
        submodels: reports,
        problems,
    };
    out.result(&inspection, || {
        let mut text: Vec<String> = inspection.submodels.iter().map(text).collect();
        let files: Vec<String> = inspection
            .pipeline_files
            .iter()
            .map(|(folder, origin)| format!("  {folder:<12} {origin}"))
            .collect();
        text.push(format!("export would write:\n{}", files.join("\n")));
        text.join("\n\n")
    });
    if problems > 0 {
        return Err(AlreadyReported(format!("{}: {problems} problem(s) found", args.path.display())).into());
    }
    Ok(())
}

/// Where export would take each tokenizer and the scheduler config from.
fn pipeline_files_of(path: &Path, reports: &[Report]) -> BTreeMap<&'static str, String> {
    let sources = PipelineFileSources {
        pipeline: pipeline_folder(path),
        ..Default::default()
    };
    // Image-conditioned variants (fill, kontext, ...) are dev-based: dev's schedule.
    let variant = reports
        .iter()
        .find_map(|r| r.variant.as_deref())
        .and_then(|v| Variant::parse(v).ok());
    let variant = variant.unwrap_or(Variant::Dev);
    let describe = |file: Result<pipeline_files::PipelineFile>| match file {
        Ok(f) => f.origin.to_string(),
        Err(e) => format!("unusable: {e:#}"),
    };
    BTreeMap::from([
        ("tokenizer", describe(pipeline_files::clip_tokenizer(&sources))),
        ("tokenizer_2", describe(pipeline_files::t5_tokenizer(&sources))),
        ("scheduler", describe(pipeline_files::scheduler(&sources, variant))),
    ])
}

/// Which submodels a file or component folder holds (all four parts of an all-in-one file).
fn detect(path: &Path) -> Result<Vec<&'static dyn Exporter>> {
    let mut found = Vec::new();
    for exporter in EXPORTERS {
        let ckpt = Checkpoint::load(path, exporter.subfolder(), exporter.key_prefixes())?;
        if exporter.detect(&ckpt) && diagnose::mismatch(&ckpt, None).is_none() {
            found.push(exporter);
        }
    }
    if !found.is_empty() {
        return Ok(found);
    }
    let ckpt = Checkpoint::load(path, "", &[])?;
    if let Some(what) = diagnose::mismatch(&ckpt, None) {
        bail!(what);
    }
    bail!(
        "{}: not a FLUX transformer, CLIP, T5 or VAE checkpoint (no known tensor names)",
        path.display()
    )
}

fn inspect(exporter: &'static dyn Exporter, path: &Path, config: Option<&serde_json::Value>) -> Result<Report> {
    let ckpt = Checkpoint::load(path, exporter.subfolder(), exporter.key_prefixes())?;
    let config = match config {
        Some(c) => Some(c.clone()),
        None => ckpt.config()?,
    };
    let options = graph_options(
        &NetworkPrecision::new(exporter.network(), Precision::Fp32)?,
        DEFAULT_OPSET,
    );
    let planned = match diagnose::mismatch(&ckpt, Some(exporter.network())) {
        Some(what) => Err(anyhow::anyhow!(what)),
        None => models::plan(exporter, &ckpt, config.as_ref(), &options),
    };
    let (analysis, problems) = match planned {
        Ok((analysis, _graph, problems)) => (Some(analysis), problems.iter().map(Problem::to_string).collect()),
        Err(e) => (None, vec![format!("{e:#}")]),
    };
    Ok(Report {
        submodel: exporter.name(),
        files: ckpt.source_files(),
        source_kind: format!("{:?}", ckpt.located.kind),
        all_in_one_part: ckpt.all_in_one_part.clone(),
        scaled_fp8: ckpt.scaled_fp8.clone(),
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

/// The variant, with the blocks a pruned full-width model kept (FLUX.1 has 19 double and 38 single).
fn variant_text(r: &Report) -> String {
    let variant = r.variant.clone().unwrap_or_else(|| "-".into());
    let config = r.config.as_ref();
    let get = |key: &str| config.and_then(|c| c.get(key)).and_then(|v| v.as_u64());
    match (get("inner_dim"), get("num_layers"), get("num_single_layers")) {
        (Some(3072), Some(double), Some(single)) if double < 19 || single < 38 => {
            format!("{variant} (pruned: {double} of 19 double, {single} of 38 single blocks)")
        }
        _ => variant,
    }
}

fn text(r: &Report) -> String {
    let files: Vec<String> = r.files.iter().map(|f| f.display().to_string()).collect();
    let mut s = format!(
        "{} ({})\n  files:      {}\n  layout:     {}\n  variant:    {}\n  tensors:    {}\n  parameters: {} ({:.3} GB)\n  dtypes:     {:?}",
        r.submodel,
        r.source_kind,
        files.join(", "),
        r.layout.as_deref().unwrap_or("?"),
        variant_text(r),
        r.tensors,
        r.parameters,
        r.bytes as f64 / 1e9,
        r.dtypes,
    );
    if let Some(part) = &r.all_in_one_part {
        s.push_str(&format!("\n  part:       `{part}*` of an all-in-one checkpoint"));
    }
    if let Some(scaled) = &r.scaled_fp8 {
        s.push_str(&format!(
            "\n  scaled fp8: {} weights dequantized (q * scale_weight), {} scale_input ignored",
            scaled.dequantized_weights, scaled.input_scales
        ));
    }
    if let Some(config) = &r.config {
        s.push_str(&format!("\n  config:     {config}"));
    }
    if r.problems.is_empty() {
        s.push_str("\n  problems:   none");
    } else {
        s.push_str(&format!("\n  problems ({}):", r.problems.len()));
        for p in r.problems.iter().take(LISTED) {
            s.push_str(&format!("\n    - {p}"));
        }
        if r.problems.len() > LISTED {
            s.push_str(&format!(
                "\n    - ... and {} more (--json lists all)",
                r.problems.len() - LISTED
            ));
        }
    }
    s
}
