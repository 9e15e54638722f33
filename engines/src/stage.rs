//! The engines stage as one call: planned graphs -> TensorRT plans plus `ENGINES/manifest.json`.
//!
//! After every engine the folder is committed whole (`output_dir`): the plan and the manifest
//! are written into a staging copy of the engines folder (earlier plans hard-linked) that is
//! swapped in, so a later failure keeps what was built and a crash leaves the previous or the
//! new folder, complete.

use crate::build::{self, BuildRequest, EngineRecord, Graph};
use crate::settings::{list, BuildSettings, Runtime};
use crate::toolchain::{Gpu, Toolchain};
use anyhow::Result;
use fluxbuild_contract::engines::{Engine, EnginesManifest, Profile, Shapes};
use fluxbuild_contract::files::sha256_file;
use fluxbuild_contract::manifest::{FileEntry, Manifest, StageKind};
use fluxbuild_contract::output_dir::{self, crash_point, Existing, Staged};
use fluxbuild_contract::Network;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `ENGINES/manifest.json`: the build settings, one record per engine, and the `engines` list
/// `fluxbuild package` reads.
pub type EnginesStageManifest = Manifest<EnginesSettings, EngineRecord>;

/// The settings of the run that last wrote the engines folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnginesSettings {
    /// The export folder the graphs came from (absolute).
    pub models: PathBuf,
    pub preset: String,
    pub build: BuildSettings,
    pub timing_cache: Option<PathBuf>,
    pub runtime: Runtime,
    pub tensorrt: String,
    pub compute_capability: String,
    pub gpu: Option<Gpu>,
}

/// What one network's engine came to in this run.
#[derive(Serialize)]
pub struct Built {
    pub network: Network,
    pub reused: bool,
    pub plan: PathBuf,
    pub plan_bytes: u64,
    pub key: String,
    pub build_seconds: f64,
}

/// Builds (or reuses, when the key matches) the engine of every graph into `request.out`,
/// committing the folder after each. `warn` receives the memory warnings of large builds.
pub fn build_engines(
    request: &BuildRequest,
    toolchain: &Toolchain,
    graphs: Vec<Graph>,
    warn: &dyn Fn(&str),
) -> Result<Vec<Built>> {
    // The --out checks (not an input, nothing foreign, not another stage's result) come before
    // reading an existing folder's records.
    output_dir::check(
        &request.out,
        std::slice::from_ref(&request.models),
        Existing::Update,
        StageKind::Engines,
    )?;
    let mut records = previous_records(&request.out.join("manifest.json"))?;
    // A record whose plan is gone, or was changed since (truncated, replaced, corrupted: its size
    // or sha256 differs), describes nothing any more: that engine is built again.
    records.retain(|_, r| {
        let plan = request.out.join(&r.plan);
        std::fs::metadata(&plan).is_ok_and(|m| m.len() == r.plan_bytes)
            && sha256_file(&plan).is_ok_and(|sha256| sha256 == r.plan_sha256)
    });
    let plans = build::plan(request, graphs, toolchain, &records)?;
    build::check_disk(request, &plans)?;
    if let Some(warning) = kept_from_another_export(request, &records, &plans) {
        warn(&warning);
    }

    let mut built = Vec::new();
    for plan in &plans {
        // A staging copy of the engines folder; the engine cache is what an existing folder is for.
        let staged = Staged::begin(
            &request.out,
            std::slice::from_ref(&request.models),
            Existing::Update,
            StageKind::Engines,
        )?;
        let record = match &plan.reuse {
            Some(record) => record.clone(),
            None => {
                if let Some(warning) = build::memory_warning(plan, &request.settings) {
                    warn(&warning);
                }
                staged.discard(&plan.plan)?;
                let into_staging = BuildRequest {
                    out: staged.path().to_path_buf(),
                    ..request.clone()
                };
                build::build_one(&into_staging, toolchain, plan)?
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
            &engines_manifest(request, toolchain, &records)?,
            &records,
            &staged.path().join("manifest.json"),
        )?;
        crash_point(&format!("build-staged-{}", plan.graph.network.name()));
        staged.commit()?;
    }
    Ok(built)
}

/// `--only` keeps the other networks' engines: said when they were built from another export
/// than `--models` (the folder would then mix two exports; `fluxbuild package` refuses that).
fn kept_from_another_export(
    request: &BuildRequest,
    records: &BTreeMap<String, EngineRecord>,
    plans: &[build::EnginePlan],
) -> Option<String> {
    let models = request.models.canonicalize().ok()?;
    let other: Vec<String> = records
        .iter()
        .filter(|(network, _)| !plans.iter().any(|p| p.graph.network.name() == network.as_str()))
        .filter_map(|(network, record)| {
            let export = record.onnx.parent()?.parent()?;
            (export.canonicalize().ok().as_ref() != Some(&models)).then(|| format!("{network} ({})", export.display()))
        })
        .collect();
    (!other.is_empty()).then(|| {
        format!(
            "{} keeps engines built from another export than {}: {}; build every network from one export \
             (without --only) before packaging",
            request.out.display(),
            request.models.display(),
            other.join(", ")
        )
    })
}

/// Records of an earlier engines manifest in the same folder (none if absent).
pub fn previous_records(path: &Path) -> Result<BTreeMap<String, EngineRecord>> {
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    let manifest = EnginesStageManifest::read(path)?;
    anyhow::ensure!(
        manifest.kind == StageKind::Engines,
        "{}: written by `{}`, not an engines folder",
        path.display(),
        manifest.kind.command()
    );
    Ok(manifest.submodels)
}

/// Writes the manifest plus the `engines` list that `fluxbuild package` reads.
pub fn write_engines_manifest(
    manifest: &EnginesStageManifest,
    records: &BTreeMap<String, EngineRecord>,
    path: &Path,
) -> Result<()> {
    let mut manifest = manifest.clone();
    manifest.engines = Some(package_view(records).engines);
    manifest.write(path)
}

/// The engines manifest: graph files as inputs, plans as files, one record per engine (kept
/// from earlier runs for networks this run did not touch).
pub fn engines_manifest(
    request: &BuildRequest,
    toolchain: &Toolchain,
    records: &BTreeMap<String, EngineRecord>,
) -> Result<EnginesStageManifest> {
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
    let settings = EnginesSettings {
        models: std::path::absolute(&request.models).unwrap_or_else(|_| request.models.clone()),
        preset: request.preset.name.clone(),
        build: request.settings.clone(),
        timing_cache: request.timing_cache.clone(),
        runtime: request.settings.runtime,
        tensorrt: toolchain.tensorrt.to_string(),
        compute_capability: list(&build::targets(&request.settings, toolchain)),
        gpu: toolchain.gpu.clone(),
    };
    let mut manifest = Manifest::new(StageKind::Engines, settings, inputs, files);
    manifest.submodels = records.clone();
    Ok(manifest)
}

/// The `engines` list `fluxbuild package` reads: per engine its network, precision label, plan
/// file and every profile's shapes by input name.
pub fn package_view(records: &BTreeMap<String, EngineRecord>) -> EnginesManifest {
    let engines = records
        .iter()
        .map(|(network, r)| Engine {
            network: network.clone(),
            precision: Some(r.precision.clone()),
            file: r.plan.clone(),
            profiles: r
                .shapes
                .iter()
                .map(|p| Profile {
                    inputs: p
                        .inputs
                        .iter()
                        .map(|i| {
                            let shapes = Shapes {
                                min: i.min.clone(),
                                opt: i.opt.clone(),
                                max: i.max.clone(),
                            };
                            (i.name.clone(), shapes)
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect();
    EnginesManifest {
        engines,
        settings: None,
        inputs: vec![],
        files: vec![],
    }
}
