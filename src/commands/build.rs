//! `fluxbuild build --models DIR --profile NAME --out ENGINES`: graphs -> TensorRT plans.
//!
//! Nothing is written until the graphs are checked and the toolchain (TensorRT or trtexec, a
//! GPU) is found; each plan is written under a temporary name and renamed; the engines
//! manifest is rewritten after every engine, so a later failure keeps what was built.

use crate::manifest::{FileEntry, Manifest};
use crate::output::Output;
use anyhow::{bail, Context, Result};
use fluxbuild_engines::build::{self, BuildRequest, EngineRecord};
use fluxbuild_engines::settings::{BuildSettings, BuilderKind, Precision};
use fluxbuild_engines::toolchain::{self, Toolchain, Version};
use fluxbuild_engines::trtexec;
use fluxbuild_profiles::{Network, Preset};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Exported graphs (`fluxbuild export --out`): DIR/{clip,t5,transformer,vae_decoder}/model.onnx.
    #[arg(long)]
    models: PathBuf,
    /// Optimization-profile preset: a built-in name (`fluxbuild profile list`) or a .toml file.
    #[arg(long)]
    profile: String,
    /// Engines folder: NET/model.plan plus manifest.json.
    #[arg(long)]
    out: PathBuf,
    /// typed (the graph's own types, strongly typed), or weakly typed fp32 | fp16 | bf16 | fp8.
    #[arg(long, default_value = "typed")]
    precision: Precision,
    /// TensorRT timing cache file, read if present and updated (trtexec builder).
    #[arg(long)]
    timing_cache: Option<PathBuf>,
    /// 0 (fast build) .. 5 (most tactics); TensorRT's default is 3.
    #[arg(long)]
    builder_optimization_level: Option<u8>,
    /// Workspace memory pool limit in GiB (default: TensorRT's, the GPU's memory).
    #[arg(long, value_name = "GiB")]
    workspace: Option<f64>,
    /// native (TensorRT builder API through trtx) or trtexec; default: native where the TensorRT
    /// found here matches its headers, else trtexec.
    #[arg(long)]
    builder: Option<BuilderKind>,
    /// Print the trtexec command line of every network and stop: no TensorRT or GPU needed.
    #[arg(long)]
    dry_run: bool,
    /// TensorRT release the --dry-run lines are for (default: the trtexec or libnvinfer found here).
    #[arg(long, value_name = "X.Y", requires = "dry_run")]
    tensorrt_version: Option<toolchain::Version>,
    /// Build only these networks (comma-separated: clip,t5,transformer,vae_decoder).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Serialize)]
struct Built {
    network: Network,
    reused: bool,
    plan: PathBuf,
    plan_bytes: u64,
    key: String,
    build_seconds: f64,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let builder = match (args.builder, args.dry_run) {
        (Some(BuilderKind::Native), true) => bail!("--dry-run prints trtexec command lines: use --builder trtexec"),
        (_, true) => BuilderKind::Trtexec,
        (Some(builder), false) => builder,
        (None, false) => toolchain::default_builder(),
    };
    let request = BuildRequest {
        preset: Preset::load(&args.profile)?,
        settings: BuildSettings::new(builder, args.precision, args.workspace, args.builder_optimization_level)?,
        only: args
            .only
            .iter()
            .map(|n| Network::parse(n.trim()))
            .collect::<Result<_>>()?,
        models: args.models,
        out: args.out,
        timing_cache: args.timing_cache,
    };
    let graphs = build::read_graphs(&request)?;
    if args.dry_run {
        return dry_run(&request, &graphs, args.tensorrt_version, out);
    }
    let toolchain = toolchain::probe(request.settings.builder)?;
    build::check_builder(&request, &toolchain, &graphs)?;
    let manifest_path = request.out.join("manifest.json");
    let mut records = previous_records(&manifest_path)?;
    // A record whose plan is gone (or was replaced by hand) describes nothing any more.
    records.retain(|_, r| std::fs::metadata(request.out.join(&r.plan)).is_ok_and(|m| m.len() == r.plan_bytes));
    let plans = build::plan(&request, graphs, &toolchain, &records)?;
    build::check_disk(&request, &plans)?;

    std::fs::create_dir_all(&request.out).with_context(|| format!("{}: cannot create", request.out.display()))?;
    let mut built = Vec::new();
    for plan in &plans {
        let record = match &plan.reuse {
            Some(record) => record.clone(),
            None => {
                if let Some(warning) = build::memory_warning(plan) {
                    out.warn(&warning);
                }
                build::build_one(&request, &toolchain, plan)?
            }
        };
        built.push(Built {
            network: plan.graph.network,
            reused: plan.reuse.is_some(),
            plan: request.out.join(&record.plan),
            plan_bytes: record.plan_bytes,
            key: record.key.clone(),
            build_seconds: record.build_seconds,
        });
        records.insert(plan.graph.network.name().to_string(), record);
        write_engines_manifest(
            &engines_manifest(&request, &toolchain, &records)?,
            &records,
            &manifest_path,
        )?;
    }
    let value = serde_json::json!({ "engines": request.out, "toolchain": toolchain, "built": built });
    out.result(&value, || {
        let lines: Vec<String> = built
            .iter()
            .map(|b| {
                let what = if b.reused {
                    "reused (key matches)".to_string()
                } else {
                    format!("built in {:.1} s", b.build_seconds)
                };
                format!(
                    "{:<12} {:<22} {:>10.1} MB  key {}  {}",
                    b.network.name(),
                    what,
                    b.plan_bytes as f64 / 1e6,
                    &b.key[..16],
                    b.plan.display()
                )
            })
            .collect();
        format!(
            "{}\nTensorRT {} on {} (sm {}); manifest {}",
            lines.join("\n"),
            toolchain.tensorrt,
            toolchain.gpu.name,
            toolchain.gpu.compute_capability,
            manifest_path.display()
        )
    });
    Ok(())
}

/// `--dry-run`: the trtexec line per network, for TensorRT `tensorrt` (else the one found here).
fn dry_run(request: &BuildRequest, graphs: &[build::Graph], tensorrt: Option<Version>, out: &Output) -> Result<()> {
    let Some(tensorrt) = tensorrt.or_else(toolchain::local_tensorrt) else {
        bail!("--dry-run: no trtexec or libnvinfer here to take the TensorRT version from; give --tensorrt-version (10.13, 11.1, ...)");
    };
    let commands = trtexec::dry_run(request, graphs, tensorrt)?;
    let value = serde_json::json!({ "tensorrt": tensorrt.to_string(), "engines": request.out, "commands": commands });
    out.result(&value, || {
        let lines: Vec<String> = commands
            .iter()
            .map(|c| format!("# {}\n{}", c.network, c.shell_line()))
            .collect();
        format!(
            "# trtexec lines for TensorRT {tensorrt} (nothing was built)\n{}",
            lines.join("\n")
        )
    });
    Ok(())
}

/// Records of an earlier engines manifest in the same folder (none if absent).
pub fn previous_records(path: &std::path::Path) -> Result<BTreeMap<String, EngineRecord>> {
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    let manifest = Manifest::read(path)?;
    anyhow::ensure!(
        manifest.kind == "engines",
        "{}: a {} manifest, not an engines folder",
        path.display(),
        manifest.kind
    );
    serde_json::from_value(manifest.submodels).with_context(|| format!("{}: unreadable engine records", path.display()))
}

/// Writes the manifest plus the `engines` list that `fluxbuild package` reads.
pub fn write_engines_manifest(
    manifest: &Manifest,
    records: &BTreeMap<String, EngineRecord>,
    path: &std::path::Path,
) -> Result<()> {
    let mut value = serde_json::to_value(manifest)?;
    value["engines"] = build::package_view(records);
    fluxbuild_exporters::util::write_atomic(path, serde_json::to_string_pretty(&value)?.as_bytes())
}

/// The engines manifest: graph files as inputs, plans as files, one record per engine (kept
/// from earlier runs for networks this run did not touch).
pub fn engines_manifest(
    request: &BuildRequest,
    toolchain: &Toolchain,
    records: &BTreeMap<String, EngineRecord>,
) -> Result<Manifest> {
    let inputs = records
        .values()
        .flat_map(|r| {
            let folder = r.onnx.parent().map(PathBuf::from).unwrap_or_default();
            r.graph_files.iter().map(move |f| FileEntry {
                path: folder.join(&f.name),
                bytes: f.bytes,
                sha256: f.sha256.clone(),
            })
        })
        .collect();
    let files = records
        .values()
        .map(|r| FileEntry {
            path: r.plan.clone(),
            bytes: r.plan_bytes,
            sha256: r.plan_sha256.clone(),
        })
        .collect();
    let mut manifest = Manifest::new("engines", inputs, files);
    manifest.settings = serde_json::json!({
        "models": std::path::absolute(&request.models).unwrap_or_else(|_| request.models.clone()),
        "preset": request.preset.name,
        "build": request.settings,
        "timing_cache": request.timing_cache,
        "tensorrt": toolchain.tensorrt.to_string(),
        "gpu": toolchain.gpu,
    });
    manifest.submodels = serde_json::to_value(records)?;
    Ok(manifest)
}
