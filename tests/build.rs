//! `fluxbuild build` end to end through the real CLI. On this machine there is no TensorRT and
//! no GPU: the build must fail before any work, say what is missing and how to get it, and
//! leave nothing in --out. (On a GPU host with TensorRT the same test builds for real.)

#[path = "../engines/tests/support/mod.rs"]
mod support;

use fluxbuild_contract::Network;
use fluxbuild_engines::build::{self, BuildRequest};
use fluxbuild_engines::settings::{BuildSettings, BuilderKind, Precision, Runtime};
use fluxbuild_engines::stage::{engines_manifest, previous_records, write_engines_manifest};
use fluxbuild_engines::toolchain::{self, Gpu, Toolchain, Version};
use fluxbuild_profiles::Preset;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn fluxbuild(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args(args)
        .env_remove("TENSORRT_LIB_DIR")
        .output()
        .unwrap()
}

fn build_args<'a>(models: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["build", "--models", models, "--profile", "tiny-check", "--out", out];
    args.extend_from_slice(extra);
    args
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn without_tensorrt_the_build_fails_first_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    support::write_models(&models, true);
    let (m, out) = (models.to_str().unwrap(), dir.path().join("engines"));
    let o = fluxbuild(&build_args(m, out.to_str().unwrap(), &[]));
    let stderr = String::from_utf8_lossy(&o.stderr);
    match toolchain::probe(BuilderKind::Trtexec) {
        Err(probe) => {
            assert!(!o.status.success(), "built without TensorRT? {stderr}");
            assert!(
                stderr.contains(&format!("{probe:#}").lines().next().unwrap().to_string()),
                "{stderr}"
            );
            for needle in [
                "cannot build TensorRT engines on this machine (trtexec builder); nothing was written",
                "TENSORRT_LIB_DIR",
                "nvcr.io/nvidia/tensorrt",
            ] {
                assert!(stderr.contains(needle), "missing {needle:?} in: {stderr}");
            }
            if toolchain::find_tensorrt_libs().is_err() {
                assert!(
                    stderr.contains("TensorRT: no libnvinfer.so.* in TENSORRT_LIB_DIR (not set)"),
                    "{stderr}"
                );
            }
            if toolchain::probe_gpu().is_err() {
                assert!(stderr.contains("GPU: "), "{stderr}");
            }
            assert!(!out.exists(), "--out was created: {:?}", entries(&out));
        }
        Ok(tc) => {
            // A GPU host with TensorRT: the tiny engines build and the manifest describes them.
            assert!(
                o.status.success(),
                "build failed on {}: {stderr}",
                tc.gpu.as_ref().unwrap().name
            );
            let records = previous_records(&out.join("manifest.json")).unwrap();
            assert_eq!(records.len(), 4);
        }
    }

    // An existing folder stays as it was; trtexec builds say where trtexec is looked for.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"x").unwrap();
    if toolchain::probe(BuilderKind::Trtexec).is_err() {
        let o = fluxbuild(&build_args(
            m,
            out.to_str().unwrap(),
            &["--builder", "trtexec", "--timing-cache", "/tmp/t.cache"],
        ));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(
            stderr.contains("trtexec: no trtexec on PATH") && stderr.contains("/usr/src/tensorrt/bin"),
            "{stderr}"
        );
        assert_eq!(entries(&out), ["keep.txt"]);
        // --json: one JSON error document on stdout.
        let o = fluxbuild(&build_args(m, out.to_str().unwrap(), &["--json"]));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(v["error"].as_str().unwrap().contains("cannot build TensorRT engines"));
        assert_eq!(entries(&out), ["keep.txt"]);
    }
}

#[test]
fn bad_requests_are_refused_before_probing() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    support::write_models(&models, false);
    let (m, out) = (models.to_str().unwrap(), dir.path().join("engines"));
    let o = out.to_str().unwrap();
    let cases: [(Vec<&str>, &str); 6] = [
        (
            vec!["build", "--models", m, "--profile", "huge", "--out", o],
            "no profile preset named \"huge\"",
        ),
        (build_args(m, o, &["--only", "unet"]), "unknown network \"unet\""),
        (
            build_args(m, o, &["--builder-optimization-level", "7"]),
            "TensorRT accepts 0 (fastest build) to 5",
        ),
        (
            build_args(m, o, &["--workspace", "0"]),
            "expected a positive number of GiB",
        ),
        (build_args(m, o, &["--precision", "int8"]), "unknown precision \"int8\""),
        (
            vec![
                "build",
                "--models",
                m,
                "--profile",
                "tiny-check",
                "--out",
                o,
                "--only",
                "clip",
            ],
            "",
        ),
    ];
    for (args, expected) in &cases[..5] {
        let r = fluxbuild(args);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!out.exists());
    }
    // The schnell graphs under a preset that says dev.
    let preset = dir.path().join("dev.toml");
    std::fs::write(
        &preset,
        "description = \"d\"\nvariant = \"dev\"\n[[profile]]\nbatch = 1\nheight = 64\nwidth = 64\ntext_len = 32\n",
    )
    .unwrap();
    let r = fluxbuild(&[
        "build",
        "--models",
        m,
        "--profile",
        preset.to_str().unwrap(),
        "--out",
        o,
    ]);
    assert!(String::from_utf8_lossy(&r.stderr)
        .contains("targets FLUX.1-dev, but the transformer graph has no `guidance` input"));
    let r = fluxbuild(&[
        "build",
        "--models",
        dir.path().to_str().unwrap(),
        "--profile",
        "tiny-check",
        "--out",
        o,
    ]);
    assert!(String::from_utf8_lossy(&r.stderr)
        .contains("missing clip/model.onnx, t5/model.onnx, transformer/model.onnx, vae_decoder/model.onnx"));
    assert!(!out.exists());
    // Not a folder at all: said as such, not as four missing graphs.
    let file = dir.path().join("model.onnx");
    std::fs::write(&file, b"").unwrap();
    for (models, expected) in [
        (dir.path().join("no-such-export"), "no such folder"),
        (file, "a file; give the folder `fluxbuild export` wrote"),
    ] {
        let r = fluxbuild(&[
            "build",
            "--models",
            models.to_str().unwrap(),
            "--profile",
            "tiny-check",
            "--out",
            o,
        ]);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[test]
fn profile_show_reads_the_graphs() {
    let dir = tempfile::tempdir().unwrap();
    support::write_models(dir.path(), false);
    let o = fluxbuild(&[
        "profile",
        "show",
        "tiny-check",
        "--models",
        dir.path().to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["model_dims"]["joint_dim"], support::JOINT);
    assert_eq!(v["model_dims"]["guidance"], false);
    let inputs = v["networks"]["transformer"][0]["inputs"].as_array().unwrap();
    assert!(
        inputs.iter().all(|i| i["name"] != "guidance"),
        "schnell graph: no guidance"
    );
    assert_eq!(inputs[2]["max"], serde_json::json!([2, support::POOLED]));
    // A folder without graphs (a typo, a repository) is said, not read as FLUX.1's own sizes.
    let nowhere = dir.path().join("no-such-export");
    let o = fluxbuild(&["profile", "show", "tiny-check", "--models", nowhere.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no exported graph (clip/model.onnx"));
    let text = fluxbuild(&["profile", "show", "static-1024"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("guidance (dev only)") && text.contains("max [4, 4096, 64]"),
        "{text}"
    );
}

#[test]
fn the_engines_manifest_lists_graphs_plans_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let (models, out) = (dir.path().join("m"), dir.path().join("e"));
    support::write_models(&models, true);
    let request = BuildRequest {
        models: models.clone(),
        out: out.clone(),
        preset: Preset::load("tiny-check").unwrap(),
        settings: BuildSettings::new(BuilderKind::Trtexec, Precision::Fp16, Some(2.0), Some(2)).unwrap(),
        timing_cache: None,
        only: vec![],
    };
    let tc = Toolchain {
        runtime: Runtime::Tensorrt,
        builder: BuilderKind::Trtexec,
        tensorrt: Version {
            major: 10,
            minor: 13,
            patch: 0,
        },
        libs: None,
        trtexec: Some("/usr/src/tensorrt/bin/trtexec".into()),
        gpu: Some(Gpu {
            name: "NVIDIA H200".into(),
            compute_capability: "9.0".into(),
            memory_bytes: 1 << 37,
            cuda_version: "12.8".into(),
        }),
    };
    let plans = build::plan(&request, build::read_graphs(&request).unwrap(), &tc, &BTreeMap::new()).unwrap();
    // Stand-in plans (no TensorRT here) so that the records describe real files.
    let mut records = BTreeMap::new();
    for p in &plans {
        let path = out.join(&p.plan);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, p.key.as_bytes()).unwrap();
        let record = fluxbuild_engines::build::EngineRecord {
            key: p.key.clone(),
            precision: "fp16".into(),
            plan: p.plan.clone(),
            plan_bytes: 64,
            plan_sha256: fluxbuild_contract::files::sha256_file(&path).unwrap(),
            onnx: p.graph.onnx.clone(),
            graph_files: p.files.clone(),
            graph_hashes_from: p.hashes_from.into(),
            preset: request.preset.name.clone(),
            variant: request.preset.variant,
            optimization_profiles: request.preset.profiles(p.graph.network).to_vec(),
            shapes: p.graph.shapes.clone(),
            settings: request.settings.clone(),
            timing_cache: None,
            tensorrt_version: tc.tensorrt.to_string(),
            compute_capability: "9.0".into(),
            gpu: tc.gpu.as_ref().unwrap().name.clone(),
            command_line: Some(vec!["trtexec".into(), "--fp16".into()]),
            parse_seconds: None,
            build_seconds: 2.0,
            built_unix: 0,
        };
        records.insert(p.graph.network.name().to_string(), record);
    }
    let manifest = engines_manifest(&request, &tc, &records).unwrap();
    write_engines_manifest(&manifest, &records, &out.join("manifest.json")).unwrap();
    // `fluxbuild package --target gpu` reads it.
    let packaged = fluxbuild_contract::engines::EnginesManifest::read(&out).unwrap();
    assert_eq!(
        packaged.engines.iter().map(|e| e.network.as_str()).collect::<Vec<_>>(),
        ["clip", "t5", "transformer", "vae_decoder"]
    );
    let transformer = &packaged.of(Network::Transformer)[0];
    assert_eq!(transformer.precision.as_deref(), Some("fp16"));
    assert_eq!(transformer.max_batch("hidden_states").unwrap(), 2);
    assert_eq!(transformer.range("hidden_states", 1).unwrap(), (4, 64));
    assert_eq!(packaged.of(Network::VaeDecoder)[0].range("latent", 3).unwrap(), (4, 16));
    assert_eq!(manifest.kind, fluxbuild_contract::manifest::StageKind::Engines);
    let files: Vec<String> = manifest.files.iter().map(|f| f.path.display().to_string()).collect();
    assert_eq!(
        files,
        [
            "clip/model.plan",
            "t5/model.plan",
            "transformer/model.plan",
            "vae_decoder/model.plan"
        ]
    );
    manifest.verify(&out).expect("plan sha256 and sizes match");
    // Inputs: every graph file, by absolute path, with the sha256 the key was made from.
    // (graphs whose weights all fit inline reference no data file)
    assert_eq!(
        manifest.inputs.len(),
        plans.iter().map(|p| p.files.len()).sum::<usize>()
    );
    assert_eq!(
        manifest
            .inputs
            .iter()
            .filter(|i| i.path.ends_with("model.onnx.data"))
            .count(),
        2
    );
    for input in &manifest.inputs {
        assert_eq!(
            input.sha256,
            fluxbuild_contract::files::sha256_file(&input.path).unwrap(),
            "{}",
            input.path.display()
        );
    }
    let settings = serde_json::to_value(&manifest.settings).unwrap();
    assert_eq!(settings["build"]["precision"], "fp16");
    assert_eq!(settings["build"]["workspace_bytes"], 2u64 << 30);
    assert_eq!(settings["tensorrt"], "10.13.0");
    assert_eq!(settings["gpu"]["compute_capability"], "9.0");
    assert_eq!(previous_records(&out.join("manifest.json")).unwrap(), records);
    // Reading it back, the same request reuses every plan.
    let again = build::plan(&request, build::read_graphs(&request).unwrap(), &tc, &records).unwrap();
    assert!(again.iter().all(|p| p.reuse.is_some()));
}
