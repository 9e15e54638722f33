//! The contract between the stages, from real runs on the tiny FLUX.1-dev fixture:
//! - every stage's manifest (export, engines built by TensorRT-RTX ahead of time, repository)
//!   loads into its typed struct, whose records refuse unknown keys: a key written but not typed
//!   fails here;
//! - the orchestrator's parameters, rendered into flux/config.pbtxt by `fluxbuild package`, are
//!   read by the Rust struct and by the Python reader model.py uses (flux_params.py, run with the
//!   Triton venv's python): the same keys on both sides, every key present and of its declared
//!   type, and no other flux module reads the parameters.

mod triton_support;

use fluxbuild::deploy::pbtxt::Message;
use fluxbuild::export::ExportManifest;
use fluxbuild::generate::request::FluxParameters;
use fluxbuild::package::RepositoryManifest;
use fluxbuild_contract::orchestrator::StepOrder;
use fluxbuild_engines::stage::EnginesStageManifest;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use triton_support::{export, fluxbuild, fluxbuild_ok, package_cpu, path};

/// `manifest.json` in `dir` with `key: 1` added at the top level and in its first record
/// (`submodels`, or `limits` for the repository): both copies must be refused.
fn with_unknown_keys(dir: &Path, record: &str) -> [serde_json::Value; 2] {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let mut top = manifest.clone();
    top["written_but_not_typed"] = 1.into();
    let mut inner = manifest;
    let entry = match inner[record].as_object_mut().unwrap().values_mut().next() {
        Some(first) if first.is_object() => first,
        _ => &mut inner[record],
    };
    entry["written_but_not_typed"] = 1.into();
    [top, inner]
}

fn refused<T: serde::de::DeserializeOwned>(values: [serde_json::Value; 2], what: &str) {
    for value in values {
        let error = serde_json::from_value::<T>(value).err();
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("unknown field `written_but_not_typed`"),
            "{what}: an unknown key was accepted ({message:?})"
        );
    }
}

#[test]
fn every_stage_manifest_loads_into_its_typed_records() {
    let dir = tempfile::tempdir().unwrap();
    let models = export("dev", &dir.path().join("export"));
    let engines = dir.path().join("engines");
    fluxbuild_ok(&[
        "build",
        "--runtime",
        "tensorrt-rtx",
        "--models",
        path(&models),
        "--profile",
        "tiny-check",
        "--out",
        path(&engines),
    ]);
    // TensorRT-RTX plans are no Triton repository's: refused before anything is written.
    let gpu_repo = dir.path().join("repo-gpu");
    let (ok, _, stderr) = fluxbuild(&[
        "package",
        "--models",
        path(&models),
        "--engines",
        path(&engines),
        "--target",
        "gpu",
        "--out",
        path(&gpu_repo),
    ]);
    assert!(!ok && stderr.contains("--runtime tensorrt-rtx"), "{stderr}");
    assert!(
        stderr.contains(&engines.join("manifest.json").display().to_string()),
        "{stderr}"
    );
    assert!(!gpu_repo.exists(), "a refused package wrote {}", gpu_repo.display());
    let repo = dir.path().join("repo");
    package_cpu(&models, &repo, &[]);

    let exported = ExportManifest::read(&models.join("manifest.json")).unwrap();
    assert_eq!(exported.kind, "export");
    let networks = ["clip", "t5", "transformer", "vae_decoder"];
    assert_eq!(exported.submodels.keys().collect::<Vec<_>>(), networks);
    assert_eq!(exported.settings.precision.len(), 4);
    exported.verify(&models).unwrap();

    let built = EnginesStageManifest::read(&engines.join("manifest.json")).unwrap();
    assert_eq!(built.kind, "engines");
    assert_eq!(built.submodels.keys().collect::<Vec<_>>(), networks);
    assert_eq!(built.engines.as_ref().map(Vec::len), Some(4));
    assert_eq!(built.files.len(), 4);
    built.verify(&engines).unwrap();

    let packaged = RepositoryManifest::read(&repo).unwrap();
    assert_eq!(packaged.models, ["clip", "t5", "transformer", "vae_decoder", "flux"]);
    assert_eq!(packaged.source.models, models);
    for file in &packaged.files {
        assert!(repo.join(&file.path).is_file(), "{}", file.path.display());
    }

    refused::<ExportManifest>(with_unknown_keys(&models, "submodels"), "export");
    refused::<EnginesStageManifest>(with_unknown_keys(&engines, "submodels"), "engines");
    refused::<RepositoryManifest>(with_unknown_keys(&repo, "limits"), "repository");
}

/// Runs `script` with the Triton venv's python (flux_params importable from `modules`), `input`
/// on stdin; returns its stdout as JSON.
fn python(modules: &Path, script: &str, input: &str) -> serde_json::Value {
    let python = fluxbuild::serve::default_venv().join("bin/python3");
    assert!(
        python.is_file(),
        "{}: no python (run `make triton-venv`)",
        python.display()
    );
    let mut child = Command::new(&python)
        .args(["-c", script])
        .env("PYTHONPATH", modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// What flux_params declares ({key: [type, required]}), and for the config on stdin the type of
/// each value it read, or its error.
const READ_CONFIG: &str = r#"
import dataclasses, json, sys
import flux_params
config = sys.stdin.read()
try:
    params = flux_params.read(config)
    parsed = {f.name: type(getattr(params, f.name)).__name__ for f in dataclasses.fields(params)}
    error = None
except flux_params.ParameterError as e:
    parsed, error = None, str(e)
print(json.dumps({"declared": flux_params.declared(), "parsed": parsed, "error": error}))
"#;

/// Triton's JSON view of a model config (`args["model_config"]`), parameters only.
fn model_config(parameters: &[(String, String)]) -> String {
    let parameters: serde_json::Map<String, serde_json::Value> = parameters
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!({ "string_value": v })))
        .collect();
    serde_json::json!({ "parameters": parameters }).to_string()
}

#[test]
fn the_orchestrator_parameters_are_one_typed_contract() {
    let dir = tempfile::tempdir().unwrap();
    let models = export("dev", &dir.path().join("export"));
    let repo = dir.path().join("repo");
    package_cpu(&models, &repo, &[]);
    let text = std::fs::read_to_string(repo.join("flux/config.pbtxt")).unwrap();
    let config = Message::parse(&text).unwrap();
    let rendered: Vec<(String, String)> = config
        .string_parameters()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();

    // Rust: the rendered parameters read back into the struct and render the same.
    let parameters = FluxParameters::from_strings(config.string_parameters()).unwrap();
    assert_eq!((parameters.default_height, parameters.default_steps), (64, 2));
    assert_eq!(parameters.request_rules.max_height, 128);
    let again: BTreeMap<String, String> = parameters.to_strings().unwrap().into_iter().collect();
    assert_eq!(again, rendered.iter().cloned().collect::<BTreeMap<_, _>>());
    // Every key the struct has, the optional tuning included.
    let full = FluxParameters {
        torch_on_cpu: Some(true),
        step_order: Some(StepOrder::Concurrent),
        ..parameters.clone()
    };
    let rust_keys: BTreeSet<String> = full.to_strings().unwrap().into_iter().map(|(k, _)| k).collect();

    // Python: the reader model.py uses, as shipped in the repository.
    let modules = repo.join("flux/1");
    let answer = python(&modules, READ_CONFIG, &model_config(&rendered));
    assert_eq!(answer["error"], serde_json::Value::Null, "{answer}");
    let declared = answer["declared"].as_object().unwrap();
    let python_keys: BTreeSet<String> = declared.keys().cloned().collect();
    assert_eq!(
        python_keys, rust_keys,
        "the Python reader and the Rust struct declare different keys"
    );
    let rendered_keys: BTreeSet<String> = rendered.iter().map(|(k, _)| k.clone()).collect();
    for (key, spec) in declared {
        let (kind, required) = (spec[0].as_str().unwrap(), spec[1].as_bool().unwrap());
        assert_eq!(
            rendered_keys.contains(key),
            required,
            "{key}: required by the Python reader = {required}, rendered by package = {}",
            !required
        );
        assert_eq!(
            answer["parsed"][key], kind,
            "{key}: parsed as {}, declared {kind}",
            answer["parsed"][key]
        );
    }

    // Both readers name a missing or ill-typed key.
    let without: Vec<(String, String)> = rendered.iter().filter(|(k, _)| k != "clip_length").cloned().collect();
    let answer = python(&modules, READ_CONFIG, &model_config(&without));
    assert!(answer["error"].as_str().unwrap().contains("'clip_length'"), "{answer}");
    let error = FluxParameters::from_strings(without.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap_err();
    assert!(format!("{error:#}").contains("clip_length"), "{error:#}");
    let mut ill = rendered.clone();
    ill.iter_mut().find(|(k, _)| k == "default_height").unwrap().1 = "64.5".into();
    let answer = python(&modules, READ_CONFIG, &model_config(&ill));
    assert!(
        answer["error"].as_str().unwrap().contains("'default_height'"),
        "{answer}"
    );
    let error = FluxParameters::from_strings(ill.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap_err();
    assert!(format!("{error:#}").contains("default_height"), "{error:#}");

    // No flux module but the reader touches the parameters.
    let flux = Path::new(env!("CARGO_MANIFEST_DIR")).join("triton/models/flux");
    for entry in std::fs::read_dir(&flux).unwrap() {
        let file = entry.unwrap().path();
        if file.extension().is_some_and(|e| e == "py") && !file.ends_with("flux_params.py") {
            let source = std::fs::read_to_string(&file).unwrap();
            for pattern in ["\"parameters\"", "'parameters'", "string_value", "json.loads(args"] {
                assert!(
                    !source.contains(pattern),
                    "{}: reads the parameters ({pattern}) instead of through flux_params",
                    file.display()
                );
            }
        }
    }
}
