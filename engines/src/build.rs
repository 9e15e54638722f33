//! Planning and running engine builds. Order of work (the CLI follows it): read and check the
//! graphs, probe the toolchain, plan (hash the graphs, compute cache keys, decide what is
//! reused), check free disk, then build what changed, one network at a time, each plan
//! written under a temporary name and renamed.

use crate::interface;
use crate::key::{cache_key, FileDigest, KeyInputs};
use crate::settings::{list, BuildSettings, BuilderKind, ComputeCapability, Precision, Runtime};
use crate::toolchain::Toolchain;
use anyhow::{bail, Context, Result};
use fluxbuild_contract::files::{sha256_file, write_atomic};
use fluxbuild_contract::manifest::Manifest;
use fluxbuild_onnx::{check_external_data, external_files, pb, read_model};
use fluxbuild_profiles::{Network, OptProfile, Preset, PresetVariant, ProfileShapes};
use indicatif::{ProgressBar, ProgressStyle};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

#[derive(Clone)]
pub struct BuildRequest {
    pub models: PathBuf,
    pub out: PathBuf,
    pub preset: Preset,
    pub settings: BuildSettings,
    pub timing_cache: Option<PathBuf>,
    /// Networks to build; empty means all four.
    pub only: Vec<Network>,
}

/// One network's graph, read and checked against the profile shapes.
pub struct Graph {
    pub network: Network,
    pub onnx: PathBuf,
    pub model: pb::ModelProto,
    pub shapes: Vec<ProfileShapes>,
}

/// What the engines manifest records for every engine (its `submodels` entry).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineRecord {
    pub key: String,
    /// The arithmetic label: the graph's precision for strongly typed builds, else the build's.
    pub precision: String,
    /// The plan, relative to the engines folder.
    pub plan: PathBuf,
    pub plan_bytes: u64,
    pub plan_sha256: String,
    pub onnx: PathBuf,
    pub graph_files: Vec<FileDigest>,
    /// "export manifest" (sha256 taken from DIR/manifest.json after checking it) or "hashed".
    pub graph_hashes_from: String,
    pub preset: String,
    pub variant: PresetVariant,
    /// The preset's ranges for this network, one per optimization profile.
    pub optimization_profiles: Vec<OptProfile>,
    /// The exact min/opt/max shapes given to TensorRT.
    pub shapes: Vec<ProfileShapes>,
    pub settings: BuildSettings,
    pub timing_cache: Option<PathBuf>,
    /// The version of the runtime that built it (`settings.runtime`: TensorRT or TensorRT-RTX).
    pub tensorrt_version: String,
    /// The GPUs it runs on: the building GPU's compute capability (TensorRT), or the
    /// TensorRT-RTX targets ("8.0, 8.6, 8.9, 12.0, 12.1").
    pub compute_capability: String,
    /// The GPU that built it; empty for TensorRT-RTX's ahead-of-time builds.
    pub gpu: String,
    /// The trtexec command line (trtexec builds only).
    pub command_line: Option<Vec<String>>,
    /// Of build_seconds, the ONNX parse (native builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse_seconds: Option<f64>,
    pub build_seconds: f64,
    pub built_unix: u64,
}

pub fn networks(request: &BuildRequest) -> Vec<Network> {
    if request.only.is_empty() {
        Network::ALL.to_vec()
    } else {
        Network::ALL.into_iter().filter(|n| request.only.contains(n)).collect()
    }
}

/// Reads every requested graph (protobuf only) and checks it against the preset's shapes.
pub fn read_graphs(request: &BuildRequest) -> Result<Vec<Graph>> {
    let models = &request.models;
    match std::fs::metadata(models) {
        Err(_) => bail!("--models {}: no such folder", models.display()),
        Ok(m) if !m.is_dir() => bail!(
            "--models {}: a file; give the folder `fluxbuild export` wrote (it holds */model.onnx)",
            models.display()
        ),
        Ok(_) => {}
    }
    let wanted = networks(request);
    let path = |n: Network| request.models.join(n.name()).join("model.onnx");
    let missing: Vec<String> = wanted
        .iter()
        .filter(|n| !path(**n).is_file())
        .map(|n| format!("{n}/model.onnx"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{}: missing {} (expected the folder `fluxbuild export` writes); build a subset with --only",
            request.models.display(),
            missing.join(", ")
        );
    }
    let models: Vec<(Network, pb::ModelProto)> = wanted
        .iter()
        .map(|n| Ok((*n, read_model(&path(*n))?)))
        .collect::<Result<_>>()?;
    let find = |net: Network| models.iter().find(|(n, _)| *n == net).map(|(_, m)| m);
    let dims = interface::model_dims(find(Network::Transformer), find(Network::VaeDecoder));
    interface::check_variant(&request.preset, &dims)?;
    models
        .into_iter()
        .map(|(network, model)| {
            let shapes = request.preset.shapes(network, &dims);
            interface::check(network, &path(network), &model, &shapes)?;
            Ok(Graph {
                network,
                onnx: path(network),
                model,
                shapes,
            })
        })
        .collect()
}

/// Refuses, before any work, settings this toolchain cannot build with.
pub fn check_builder(request: &BuildRequest, toolchain: &Toolchain, graphs: &[Graph]) -> Result<()> {
    crate::settings::check_precision(request.settings.precision, toolchain.tensorrt)?;
    crate::capability::check_fp8(graphs, request.settings.precision, toolchain.gpu.as_ref())?;
    if let Some(cache) = &request.timing_cache {
        let parent = cache
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !parent.is_dir() {
            bail!(
                "--timing-cache {}: folder {} does not exist",
                cache.display(),
                parent.display()
            );
        }
    }
    if request.settings.runtime != toolchain.runtime {
        bail!(
            "internal: {} settings with a {} toolchain",
            request.settings.runtime,
            toolchain.runtime
        );
    }
    match (toolchain.runtime, toolchain.builder) {
        (Runtime::Tensorrt, BuilderKind::Trtexec) => Ok(()),
        (Runtime::Tensorrt, BuilderKind::Native) => bail!(
            "--builder native builds TensorRT-RTX engines (--runtime tensorrt-rtx); standard TensorRT builds with \
             --builder trtexec (fluxbuild's native builder is compiled against the TensorRT-RTX headers)"
        ),
        #[cfg(feature = "native-builder")]
        (Runtime::TensorrtRtx, _) => crate::native::check(&request.settings, request.timing_cache.as_deref(), graphs),
        #[cfg(not(feature = "native-builder"))]
        (Runtime::TensorrtRtx, _) => {
            bail!("this fluxbuild was built without the native builder (feature native-builder), which TensorRT-RTX needs")
        }
    }
}

/// The GPUs the engines will run on: the building GPU (TensorRT) or the TensorRT-RTX targets.
pub fn targets(settings: &BuildSettings, toolchain: &Toolchain) -> Vec<ComputeCapability> {
    match settings.runtime {
        Runtime::TensorrtRtx => settings.rtx_targets(),
        Runtime::Tensorrt => toolchain
            .gpu
            .iter()
            .filter_map(|g| g.compute_capability.parse().ok())
            .collect(),
    }
}

/// The oldest GPU that runs a graph's number types: FP8 needs compute capability 8.9 (Ada),
/// BF16 8.0 (Ampere). Read from the initializers' types (their data is never loaded).
pub fn required_capability(model: &pb::ModelProto) -> Option<(ComputeCapability, &'static str)> {
    let types: Vec<i32> = model
        .graph
        .get_or_default()
        .initializer
        .iter()
        .map(|t| t.data_type)
        .collect();
    if types.iter().any(|t| (17..=20).contains(t)) {
        Some((ComputeCapability(89), "FP8"))
    } else if types.contains(&16) {
        Some((ComputeCapability(80), "BF16"))
    } else {
        None
    }
}

/// Refuses, before any work, graphs whose number types some target GPU cannot run.
pub fn check_targets(request: &BuildRequest, graphs: &[Graph], toolchain: &Toolchain) -> Result<()> {
    let targets = targets(&request.settings, toolchain);
    for graph in graphs {
        let Some((needed, what)) = required_capability(&graph.model) else {
            continue;
        };
        let unable: Vec<ComputeCapability> = targets.iter().copied().filter(|t| *t < needed).collect();
        if unable.is_empty() {
            continue;
        }
        let problem = format!(
            "{}: {what} graph, but it would run on compute capability {}",
            graph.onnx.display(),
            list(&unable)
        );
        match request.settings.runtime {
            Runtime::TensorrtRtx => {
                let able: Vec<ComputeCapability> =
                    ComputeCapability::RTX.into_iter().filter(|t| *t >= needed).collect();
                let default = if request.settings.compute_capabilities.is_empty() {
                    " (TensorRT-RTX's default targets)"
                } else {
                    ""
                };
                bail!(
                    "{problem}{default}; {what} needs {needed} or newer. Build for GPUs that run it \
                     (--compute-capability {}) or export another precision",
                    list(&able).replace(' ', "")
                )
            }
            Runtime::Tensorrt => bail!(
                "{problem} (this GPU); {what} needs {needed} or newer: build on such a GPU or export another precision"
            ),
        }
    }
    Ok(())
}

/// A planned engine: its key, and the earlier build it reuses if that key matches.
pub struct EnginePlan {
    pub graph: Graph,
    pub files: Vec<FileDigest>,
    pub hashes_from: &'static str,
    pub key: String,
    /// Relative to the engines folder.
    pub plan: PathBuf,
    pub reuse: Option<EngineRecord>,
    /// Bytes of the graph's weights: about the size of the plan and of host memory the build needs.
    pub weight_bytes: u64,
    /// The graph's precision as the export manifest records it.
    pub graph_precision: Option<String>,
}

pub fn plan(
    request: &BuildRequest,
    graphs: Vec<Graph>,
    toolchain: &Toolchain,
    previous: &BTreeMap<String, EngineRecord>,
) -> Result<Vec<EnginePlan>> {
    let export = ExportFiles::read(&request.models);
    let tensorrt = toolchain.tensorrt.to_string();
    let targets = list(&targets(&request.settings, toolchain));
    let spinner = spinner();
    let plans = graphs
        .into_iter()
        .map(|graph| {
            spinner.set_message(format!("hashing {}", graph.network));
            let (files, hashes_from) = graph_digests(&graph, export.as_ref())?;
            let key = cache_key(&KeyInputs {
                runtime: request.settings.runtime,
                network: graph.network,
                graph: &files,
                settings: &request.settings,
                profiles: &graph.shapes,
                tensorrt: &tensorrt,
                compute_capability: &targets,
            });
            let plan = PathBuf::from(graph.network.name()).join("model.plan");
            let reuse = previous
                .get(graph.network.name())
                .filter(|r| r.key == key && r.plan == plan)
                .filter(|r| std::fs::metadata(request.out.join(&r.plan)).is_ok_and(|m| m.len() == r.plan_bytes))
                .cloned();
            let weight_bytes = files.iter().filter(|f| f.name != "model.onnx").map(|f| f.bytes).sum();
            let graph_precision = export
                .as_ref()
                .and_then(|e| e.precision.get(graph.network.name()).cloned());
            Ok(EnginePlan {
                graph,
                files,
                hashes_from,
                key,
                plan,
                reuse,
                weight_bytes,
                graph_precision,
            })
        })
        .collect();
    spinner.finish_and_clear();
    plans
}

/// Enough free disk in the engines folder for the plans to build: about the size of their weights, or
/// for weightless plans their kernels and small weights (0.3% of the weights + 2 MB measured on slices,
/// bench/engines.md; 1% + 64 MiB asked).
pub fn check_disk(request: &BuildRequest, plans: &[EnginePlan]) -> Result<()> {
    let plan_bytes = |weights: u64| match request.settings.strip_weights {
        true => weights / 100 + (64 << 20),
        false => weights,
    };
    let needed: u64 = plans
        .iter()
        .filter(|p| p.reuse.is_none())
        .map(|p| plan_bytes(p.weight_bytes))
        .sum();
    let Some(free) = free_bytes(&request.out) else {
        return Ok(());
    };
    if needed > free {
        bail!(
            "{}: the engines need about {:.1} GB ({}) but only {:.1} GB is free there",
            request.out.display(),
            needed as f64 / 1e9,
            match request.settings.strip_weights {
                true => "weightless plans: 1% of their weights and 64 MiB each",
                false => "the size of their weights",
            },
            free as f64 / 1e9
        );
    }
    Ok(())
}

/// A warning when a build will need more host memory than is available.
pub fn memory_warning(plan: &EnginePlan, settings: &BuildSettings) -> Option<String> {
    let available = available_memory()?;
    let weights = plan.weight_bytes;
    // TensorRT-RTX 1.7 peaks at about 3x the weights for a full plan (its copy, the serialized plan,
    // the mapped file) and at 0.35 GB + 0.34x for a weightless one (fitted to slices, bench/engines.md).
    let (need, held) = match (settings.runtime, settings.strip_weights) {
        (Runtime::Tensorrt, _) => (weights, "the weights"),
        (Runtime::TensorrtRtx, false) => (
            3 * weights,
            "about 3x the weights (a tenth of that with --strip-weights)",
        ),
        (Runtime::TensorrtRtx, true) => (weights * 34 / 100 + (350 << 20), "about a third of the weights"),
    };
    (plan.reuse.is_none() && need > available).then(|| {
        format!(
            "{}: {} holds {held} in host memory while building ({:.1} GB for {:.1} GB of weights); {:.1} GB is available",
            plan.graph.network,
            settings.runtime,
            need as f64 / 1e9,
            weights as f64 / 1e9,
            available as f64 / 1e9
        )
    })
}

/// Builds one engine into `out/<network>/model.plan`; returns its record.
pub fn build_one(request: &BuildRequest, toolchain: &Toolchain, plan: &EnginePlan) -> Result<EngineRecord> {
    let network = plan.graph.network;
    let plan_path = request.out.join(&plan.plan);
    let folder = plan_path.parent().expect("plan in a folder").to_path_buf();
    let created = !folder.exists();
    std::fs::create_dir_all(&folder).with_context(|| format!("{}: cannot create", folder.display()))?;
    let bar = build_bar(network);
    let started = Instant::now();
    let result = run_builder(request, toolchain, plan, &plan_path, &bar);
    bar.finish_and_clear();
    let (command_line, parse_seconds) = match result {
        Ok(done) => done,
        Err(e) => {
            if created {
                let _ = std::fs::remove_dir(&folder); // only if the failed build left it empty
            }
            return Err(e.context(format!(
                "building the {network} engine from {}",
                plan.graph.onnx.display()
            )));
        }
    };
    let plan_bytes = std::fs::metadata(&plan_path)
        .with_context(|| format!("{}: missing after the build", plan_path.display()))?
        .len();
    let precision = match (request.settings.precision, &plan.graph_precision) {
        (Precision::Typed, Some(graph)) => graph.clone(),
        (p, _) => p.name().to_string(),
    };
    Ok(EngineRecord {
        key: plan.key.clone(),
        precision,
        plan: plan.plan.clone(),
        plan_bytes,
        plan_sha256: sha256_file(&plan_path)?,
        onnx: std::path::absolute(&plan.graph.onnx).unwrap_or_else(|_| plan.graph.onnx.clone()),
        graph_files: plan.files.clone(),
        graph_hashes_from: plan.hashes_from.to_string(),
        preset: request.preset.name.clone(),
        variant: request.preset.variant,
        optimization_profiles: request.preset.profiles(network).to_vec(),
        shapes: plan.graph.shapes.clone(),
        settings: request.settings.clone(),
        timing_cache: request.timing_cache.clone(),
        tensorrt_version: toolchain.tensorrt.to_string(),
        compute_capability: list(&targets(&request.settings, toolchain)),
        gpu: toolchain.gpu.as_ref().map(|g| g.name.clone()).unwrap_or_default(),
        command_line,
        parse_seconds,
        build_seconds: started.elapsed().as_secs_f64(),
        built_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

/// Runs the chosen builder; returns trtexec's command line (trtexec builds) and the seconds the
/// ONNX parse took (native builds).
fn run_builder(
    request: &BuildRequest,
    toolchain: &Toolchain,
    plan: &EnginePlan,
    plan_path: &Path,
    bar: &ProgressBar,
) -> Result<(Option<Vec<String>>, Option<f64>)> {
    match toolchain.builder {
        BuilderKind::Trtexec => {
            let trtexec = toolchain.trtexec.as_ref().expect("the trtexec probe found it");
            let tmp = crate::trtexec::temporary_engine(plan_path);
            let job = crate::trtexec::TrtexecJob {
                onnx: &plan.graph.onnx,
                engine: &tmp,
                profiles: &plan.graph.shapes,
                settings: &request.settings,
                timing_cache: request.timing_cache.as_deref(),
                tensorrt: toolchain.tensorrt,
            };
            let args = crate::trtexec::command_line(&job)?;
            let outcome = crate::trtexec::run(trtexec, &args, bar);
            let log = plan_path.with_file_name("build.log");
            let renamed = outcome.and_then(|text| {
                write_atomic(&log, text.as_bytes())?;
                std::fs::rename(&tmp, plan_path)
                    .with_context(|| format!("cannot rename {} to {}", tmp.display(), plan_path.display()))
            });
            if renamed.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            renamed?;
            Ok((
                Some(std::iter::once(trtexec.display().to_string()).chain(args).collect()),
                None,
            ))
        }
        #[cfg(feature = "native-builder")]
        BuilderKind::Native => {
            let libs = toolchain.libs.as_ref().expect("the native probe found the libraries");
            let job = crate::native::NativeJob {
                onnx: &plan.graph.onnx,
                plan: plan_path,
                profiles: &plan.graph.shapes,
                settings: &request.settings,
            };
            let parse_seconds = crate::native::build(libs, &job, bar)?;
            Ok((None, Some(parse_seconds)))
        }
        #[cfg(not(feature = "native-builder"))]
        BuilderKind::Native => unreachable!("refused by check_builder"),
    }
}

/// The export manifest's file list (`DIR/manifest.json`, written by `fluxbuild export`).
struct ExportFiles {
    files: BTreeMap<PathBuf, (u64, String)>,
    written: SystemTime,
    /// The manifest's inode change time (seconds, nanoseconds): unlike the modification time, no
    /// copy (`cp -p`, `rsync -a`, `tar x`) can set a file's to the past.
    changed: (i64, i64),
    /// Submodel -> precision label ("bf16", ...).
    precision: BTreeMap<String, String>,
}

/// The part of an export record this stage reads (the record type belongs to the export stage,
/// which this crate does not depend on).
#[derive(Deserialize)]
struct ExportedPrecision {
    /// The precision label ("bf16", ...).
    precision: String,
}

impl ExportFiles {
    fn read(models: &Path) -> Option<ExportFiles> {
        let path = models.join("manifest.json");
        let meta = std::fs::metadata(&path).ok()?;
        let (written, changed) = (meta.modified().ok()?, (meta.ctime(), meta.ctime_nsec()));
        let manifest = Manifest::<IgnoredAny, ExportedPrecision>::read(&path).ok()?;
        Some(ExportFiles {
            files: manifest
                .files
                .into_iter()
                .map(|f| (f.path, (f.bytes, f.sha256)))
                .collect(),
            written,
            changed,
            precision: manifest.submodels.into_iter().map(|(k, v)| (k, v.precision)).collect(),
        })
    }

    /// The recorded digest of `rel`, if the file on disk still looks like what was recorded: same
    /// size, neither modified nor changed (written, copied in, renamed in) after the manifest. A
    /// file copied over it with its old time kept is hashed again.
    fn digest(&self, rel: &Path, path: &Path) -> Option<&String> {
        let (bytes, sha) = self.files.get(rel)?;
        let meta = std::fs::metadata(path).ok()?;
        let unchanged = meta.modified().ok()? <= self.written && (meta.ctime(), meta.ctime_nsec()) <= self.changed;
        (meta.len() == *bytes && unchanged).then_some(sha)
    }
}

/// sha256 of `model.onnx` (always computed: it is small) and of its external data files
/// (taken from the export manifest when it is consistent with the files, else computed).
fn graph_digests(graph: &Graph, export: Option<&ExportFiles>) -> Result<(Vec<FileDigest>, &'static str)> {
    let folder = graph.onnx.parent().expect("model.onnx in a folder");
    let digest = |name: &str, sha: String| -> Result<FileDigest> {
        let path = folder.join(name);
        let bytes = std::fs::metadata(&path)
            .with_context(|| format!("{}: cannot stat", path.display()))?
            .len();
        Ok(FileDigest {
            name: name.to_string(),
            bytes,
            sha256: sha,
        })
    };
    let model = digest("model.onnx", sha256_file(&graph.onnx)?)?;
    let rel = |name: &str| PathBuf::from(graph.network.name()).join(name);
    let trusted = export.filter(|e| e.digest(&rel("model.onnx"), &graph.onnx) == Some(&model.sha256));
    let mut files = vec![model];
    let mut from_manifest = trusted.is_some();
    // Checked for every graph before any engine is built, not by the parser at its turn.
    check_external_data(&graph.onnx, &graph.model)?;
    for name in external_files(&graph.model) {
        let path = folder.join(&name);
        let known = trusted.and_then(|e| e.digest(&rel(&name), &path)).cloned();
        from_manifest &= known.is_some();
        let sha = match known {
            Some(sha) => sha,
            None => sha256_file(&path)?,
        };
        files.push(digest(&name, sha)?);
    }
    Ok((files, if from_manifest { "export manifest" } else { "hashed" }))
}

fn free_bytes(out: &Path) -> Option<u64> {
    let existing = out.ancestors().find(|p| p.exists())?;
    let c = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the struct for a valid NUL-terminated path.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut s) == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
    }
}

fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// A spinner with elapsed time; the native builder turns it into a step bar when TensorRT
/// reports phases.
fn build_bar(network: Network) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {network:>12} {{msg}} [{{bar:30}}] {{pos}}/{{len}} ({{elapsed}})"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}
