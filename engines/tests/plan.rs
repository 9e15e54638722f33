//! Planning without TensorRT: graphs checked against the profile shapes, graph hashes (from
//! the export manifest when it is consistent), cache keys and reuse of earlier plans.

mod support;

use fluxbuild_contract::files::sha256_file;
use fluxbuild_engines::build::{self, BuildRequest, EngineRecord};
use fluxbuild_engines::settings::{BuildSettings, BuilderKind, Precision, Runtime};
use fluxbuild_engines::toolchain::{Gpu, Toolchain, Version};
use fluxbuild_exporters::onnx::write_model;
use fluxbuild_profiles::{Network, Preset};
use std::collections::BTreeMap;
use std::path::Path;

fn request(models: &Path, out: &Path, preset: &str, only: &[Network]) -> BuildRequest {
    BuildRequest {
        models: models.to_path_buf(),
        out: out.to_path_buf(),
        preset: Preset::load(preset).unwrap(),
        settings: BuildSettings::new(BuilderKind::Trtexec, Precision::Typed, None, None).unwrap(),
        timing_cache: None,
        only: only.to_vec(),
    }
}

fn toolchain(tensorrt: Version, cc: &str) -> Toolchain {
    Toolchain {
        runtime: Runtime::Tensorrt,
        builder: BuilderKind::Trtexec,
        tensorrt,
        libs: None,
        trtexec: Some("/usr/src/tensorrt/bin/trtexec".into()),
        gpu: Some(Gpu {
            name: "NVIDIA H200".into(),
            compute_capability: cc.into(),
            memory_bytes: 141 << 30,
            cuda_version: "12.8".into(),
        }),
    }
}

const TRT: Version = Version {
    major: 10,
    minor: 13,
    patch: 0,
};

fn err<T>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.err().expect("should fail"))
}

#[test]
fn graphs_are_read_and_sized_from_the_transformer() {
    let dir = tempfile::tempdir().unwrap();
    support::write_models(dir.path(), true);
    let graphs = build::read_graphs(&request(dir.path(), &dir.path().join("e"), "tiny-check", &[])).unwrap();
    assert_eq!(graphs.iter().map(|g| g.network).collect::<Vec<_>>(), Network::ALL);
    let t = &graphs[2].shapes[0].inputs;
    let enc = t.iter().find(|i| i.name == "encoder_hidden_states").unwrap();
    assert_eq!(enc.max, vec![2, 64, support::JOINT as i64]);
    assert!(t.iter().any(|i| i.name == "guidance" && !i.dev_only));
    let only = build::read_graphs(&request(
        dir.path(),
        &dir.path().join("e"),
        "tiny-check",
        &[Network::Clip],
    ))
    .unwrap();
    assert_eq!(only.len(), 1);
}

#[test]
fn mismatched_graphs_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path();
    support::write_models(models, false);
    let out = models.join("engines");
    // A schnell transformer (no guidance) under a dev preset, and the reverse.
    let dev_preset = models.join("dev.toml");
    std::fs::write(
        &dev_preset,
        "description = \"d\"\nvariant = \"dev\"\n[[profile]]\nbatch = 1\nheight = 64\nwidth = 64\ntext_len = 32\n",
    )
    .unwrap();
    let mut r = request(models, &out, "tiny-check", &[]);
    r.preset = Preset::from_file(&dev_preset).unwrap();
    assert!(
        err(build::read_graphs(&r)).contains("targets FLUX.1-dev, but the transformer graph has no `guidance` input")
    );
    support::write_models(models, true);
    let e = err(build::read_graphs(&request(models, &out, "schnell-fast", &[])));
    assert!(e.contains("targets FLUX.1-schnell"), "{e}");

    // A graph exported with a fixed image size cannot take a dynamic-size profile.
    let mut g = support::graph("vae_decoder", true);
    g.inputs[0].dims[2] = fluxbuild_exporters::onnx::Dim::Fixed(6);
    write_model(&g, &models.join("vae_decoder"), &mut |_, _| {}).unwrap();
    let e = err(build::read_graphs(&request(models, &out, "tiny-check", &[])));
    assert!(e.contains("vae_decoder/model.onnx: input `latent` dimension 2 is fixed to 6 in the graph, but optimization profile 0 needs 4..16 (opt 6)"), "{e}");

    // Missing and extra inputs.
    let mut g = support::graph("t5", true);
    g.inputs[0].name = "tokens".into();
    write_model(&g, &models.join("t5"), &mut |_, _| {}).unwrap();
    let e = err(build::read_graphs(&request(models, &out, "tiny-check", &[Network::T5])));
    assert!(
        e.contains("input `tokens` is not in the t5 interface [input_ids (rank 2)]"),
        "{e}"
    );

    std::fs::remove_file(models.join("clip/model.onnx")).unwrap();
    let e = err(build::read_graphs(&request(models, &out, "tiny-check", &[])));
    assert!(e.contains("missing clip/model.onnx") && e.contains("--only"), "{e}");
    assert!(!out.exists(), "nothing may be written");
}

fn record_for(plan: &build::EnginePlan, out: &Path, plan_bytes: u64) -> EngineRecord {
    let path = out.join(&plan.plan);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, vec![7u8; plan_bytes as usize]).unwrap();
    EngineRecord {
        key: plan.key.clone(),
        precision: "fp32".into(),
        plan: plan.plan.clone(),
        plan_bytes,
        plan_sha256: sha256_file(&path).unwrap(),
        onnx: plan.graph.onnx.clone(),
        graph_files: plan.files.clone(),
        graph_hashes_from: plan.hashes_from.into(),
        preset: "tiny-check".into(),
        variant: fluxbuild_profiles::PresetVariant::Any,
        optimization_profiles: vec![],
        shapes: plan.graph.shapes.clone(),
        settings: BuildSettings::new(BuilderKind::Trtexec, Precision::Typed, None, None).unwrap(),
        timing_cache: None,
        tensorrt_version: "10.13.0".into(),
        compute_capability: "9.0".into(),
        gpu: "NVIDIA H200".into(),
        command_line: Some(vec!["trtexec".into()]),
        parse_seconds: None,
        build_seconds: 1.5,
        built_unix: 1,
    }
}

#[test]
fn plans_are_reused_only_when_the_key_and_the_plan_file_match() {
    let dir = tempfile::tempdir().unwrap();
    let (models, out) = (dir.path().join("m"), dir.path().join("e"));
    support::write_models(&models, true);
    let r = request(&models, &out, "tiny-check", &[]);
    let plan = |previous: &BTreeMap<String, EngineRecord>| {
        build::plan(&r, build::read_graphs(&r).unwrap(), &toolchain(TRT, "9.0"), previous).unwrap()
    };
    let mut previous = BTreeMap::new();
    let first = plan(&previous);
    assert!(first.iter().all(|p| p.reuse.is_none()));
    let keys: Vec<&str> = first.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys.iter().collect::<std::collections::BTreeSet<_>>().len(),
        4,
        "one key per network"
    );

    for p in &first {
        previous.insert(p.graph.network.name().to_string(), record_for(p, &out, 100));
    }
    let second = plan(&previous);
    assert!(
        second.iter().all(|p| p.reuse.is_some()),
        "same graphs, settings, TensorRT and GPU: reuse"
    );
    assert_eq!(
        second.iter().map(|p| &p.key).collect::<Vec<_>>(),
        first.iter().map(|p| &p.key).collect::<Vec<_>>()
    );

    // A truncated plan is not reused.
    std::fs::write(out.join("clip/model.plan"), [1u8; 10]).unwrap();
    let third = plan(&previous);
    assert!(third[0].reuse.is_none() && third[1].reuse.is_some());

    // Another TensorRT or GPU: nothing is reused.
    for tc in [toolchain(Version { patch: 1, ..TRT }, "9.0"), toolchain(TRT, "8.9")] {
        let plans = build::plan(&r, build::read_graphs(&r).unwrap(), &tc, &previous).unwrap();
        assert!(plans.iter().all(|p| p.reuse.is_none()));
    }

    // A changed graph changes only its own key.
    let mut g = support::graph("t5", true);
    g.name = "t5-changed".into();
    write_model(&g, &models.join("t5"), &mut |_, _| {}).unwrap();
    let fourth = plan(&previous);
    assert_ne!(fourth[1].key, first[1].key);
    assert_eq!(fourth[2].key, first[2].key);
}

#[test]
fn graph_hashes_come_from_a_consistent_export_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let (models, out) = (dir.path().join("m"), dir.path().join("e"));
    support::write_models(&models, true);
    let r = request(&models, &out, "tiny-check", &[Network::Transformer]);
    let plan = || {
        build::plan(
            &r,
            build::read_graphs(&r).unwrap(),
            &toolchain(TRT, "9.0"),
            &BTreeMap::new(),
        )
        .unwrap()
        .remove(0)
    };
    let hashed = plan();
    assert_eq!(hashed.hashes_from, "hashed");
    let names: Vec<&str> = hashed.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["model.onnx", "model.onnx.data"]);
    assert_eq!(
        hashed.files[1].sha256,
        sha256_file(&models.join("transformer/model.onnx.data")).unwrap()
    );

    let write_manifest = |data_sha: &str| {
        let entry = |name: &str, sha: String| {
            let path = models.join("transformer").join(name);
            serde_json::json!({ "path": format!("transformer/{name}"), "bytes": std::fs::metadata(&path).unwrap().len(), "sha256": sha })
        };
        let files = vec![
            entry(
                "model.onnx",
                sha256_file(&models.join("transformer/model.onnx")).unwrap(),
            ),
            entry("model.onnx.data", data_sha.to_string()),
        ];
        std::fs::write(
            models.join("manifest.json"),
            serde_json::json!({ "fluxbuild_version": "test", "kind": "export", "created_unix": 0, "settings": {},
                "inputs": [], "files": files })
            .to_string(),
        )
        .unwrap();
    };
    write_manifest(&hashed.files[1].sha256);
    let from_manifest = plan();
    assert_eq!(from_manifest.hashes_from, "export manifest");
    assert_eq!(from_manifest.key, hashed.key, "same digests, same key");

    // The manifest's word is taken for the weights (that is the point: no 24 GB re-hash), so a
    // recorded digest changes the key...
    write_manifest(&"0".repeat(64));
    assert_ne!(plan().key, hashed.key);
    // ...but not when model.onnx no longer matches the manifest: then everything is hashed.
    let mut g = support::graph("transformer", true);
    g.name = "edited".into();
    write_model(&g, &models.join("transformer"), &mut |_, _| {}).unwrap();
    assert_eq!(plan().hashes_from, "hashed");
}

#[test]
fn engine_records_round_trip_through_json() {
    let dir = tempfile::tempdir().unwrap();
    let (models, out) = (dir.path().join("m"), dir.path().join("e"));
    support::write_models(&models, true);
    let r = request(&models, &out, "tiny-check", &[Network::VaeDecoder]);
    let plans = build::plan(
        &r,
        build::read_graphs(&r).unwrap(),
        &toolchain(TRT, "9.0"),
        &BTreeMap::new(),
    )
    .unwrap();
    let record = record_for(&plans[0], &out, 64);
    let json = serde_json::to_value(&record).unwrap();
    assert_eq!(json["plan"], "vae_decoder/model.plan");
    assert_eq!(
        json["shapes"][0]["inputs"][0]["max"],
        serde_json::json!([2, 16, 16, 16])
    );
    assert_eq!(json["settings"]["precision"], "typed");
    let back: EngineRecord = serde_json::from_value(json).unwrap();
    assert_eq!(back, record);
}
