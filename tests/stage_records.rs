//! The contract between the stages, from real runs on the tiny FLUX.1-dev fixture:
//! - every stage's manifest (export, engines built by TensorRT-RTX ahead of time, repository)
//!   loads into its typed struct, whose records refuse unknown keys: a key written but not typed
//!   fails here;
//! - the orchestrator's parameters, rendered into flux/config.pbtxt by `fluxbuild package`, are
//!   read by the Rust struct and by the Python reader model.py uses (flux_params.py, run with the
//!   Triton venv's python): the same keys on both sides, every key present and of its declared
//!   type, and no other flux module reads the parameters;
//! - the same for each cpu network model's parameters (onnx_network_params.py).

mod triton_support;

use fluxbuild::deploy::pbtxt::Message;
use fluxbuild::export::ExportManifest;
use fluxbuild::generate::request::FluxParameters;
use fluxbuild::package::RepositoryManifest;
use fluxbuild_contract::manifest::StageKind;
use fluxbuild_contract::onnx_network::OnnxNetworkParameters;
use fluxbuild_contract::orchestrator::StepOrder;
use fluxbuild_contract::parameters::Parameters;
use fluxbuild_contract::Network;
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
    assert_eq!(exported.kind, StageKind::Export);
    let networks = ["clip", "t5", "transformer", "vae_decoder"];
    assert_eq!(exported.submodels.keys().collect::<Vec<_>>(), networks);
    assert_eq!(exported.settings.precision.len(), 4);
    exported.verify(&models).unwrap();

    let built = EnginesStageManifest::read(&engines.join("manifest.json")).unwrap();
    assert_eq!(built.kind, StageKind::Engines);
    assert_eq!(built.submodels.keys().collect::<Vec<_>>(), networks);
    assert_eq!(built.engines.as_ref().map(Vec::len), Some(4));
    assert_eq!(built.files.len(), 4);
    built.verify(&engines).unwrap();

    let packaged = RepositoryManifest::read(&repo).unwrap();
    assert_eq!(packaged.kind, StageKind::Repository);
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

/// What the reader module `MODULE` declares ({key: [type, required]}), and for the config on stdin
/// the type of each value it read, or its error.
const READ_CONFIG: &str = r#"
import dataclasses, json, sys
import typed_params
import MODULE as reader
config = sys.stdin.read()
try:
    params = reader.read(config)
    parsed = {f.name: type(getattr(params, f.name)).__name__ for f in dataclasses.fields(params)}
    error = None
except typed_params.ParameterError as e:
    parsed, error = None, str(e)
print(json.dumps({"declared": reader.declared(), "parsed": parsed, "error": error}))
"#;

/// The Python reader `module` (as shipped in `modules`) on the config of `model` with `rendered`'s
/// parameters.
fn read_in_python(modules: &Path, module: &str, model: &str, rendered: &[(String, String)]) -> serde_json::Value {
    python(
        modules,
        &READ_CONFIG.replace("MODULE", module),
        &model_config(model, rendered),
    )
}

/// The Python reader `module` reads `rendered` (what `package` wrote), declares exactly
/// `rust_keys`, requires exactly the rendered ones and parses each as its declared type.
fn python_reader_agrees(
    modules: &Path,
    module: &str,
    model: &str,
    rendered: &[(String, String)],
    rust_keys: &BTreeSet<String>,
) {
    let answer = read_in_python(modules, module, model, rendered);
    assert_eq!(answer["error"], serde_json::Value::Null, "{module}: {answer}");
    let declared = answer["declared"].as_object().unwrap();
    let python_keys: BTreeSet<String> = declared.keys().cloned().collect();
    assert_eq!(
        &python_keys, rust_keys,
        "{module}: the Python reader and the Rust struct declare different keys"
    );
    let rendered_keys: BTreeSet<String> = rendered.iter().map(|(k, _)| k.clone()).collect();
    for (key, spec) in declared {
        let (kind, required) = (spec[0].as_str().unwrap(), spec[1].as_bool().unwrap());
        assert_eq!(
            rendered_keys.contains(key),
            required,
            "{module}: {key}: required by the Python reader = {required}, rendered by package = {}",
            !required
        );
        assert_eq!(
            answer["parsed"][key], kind,
            "{module}: {key}: parsed as {}, declared {kind}",
            answer["parsed"][key]
        );
    }
}

/// `rendered` without `key`, and with `key`'s value replaced by `ill`.
fn broken(rendered: &[(String, String)], key: &str, ill: &str) -> [Vec<(String, String)>; 2] {
    let without = rendered.iter().filter(|(k, _)| k != key).cloned().collect();
    let mut ill_typed = rendered.to_vec();
    ill_typed.iter_mut().find(|(k, _)| k == key).unwrap().1 = ill.into();
    [without, ill_typed]
}

/// The parameters of `model`'s config.pbtxt in `repo`, as written.
fn rendered_parameters(repo: &Path, model: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo.join(model).join("config.pbtxt")).unwrap();
    Message::parse(&text)
        .unwrap()
        .string_parameters()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pairs(rendered: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
    rendered.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

/// No Python module in `triton/models/<dir>` but `reader` touches the parameters.
fn only_the_reader_reads_parameters(dir: &str, reader: &str) {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("triton/models").join(dir);
    for entry in std::fs::read_dir(&folder).unwrap() {
        let file = entry.unwrap().path();
        if file.extension().is_some_and(|e| e == "py") && !file.ends_with(reader) {
            let source = std::fs::read_to_string(&file).unwrap();
            for pattern in ["\"parameters\"", "'parameters'", "string_value", "params.get("] {
                assert!(
                    !source.contains(pattern),
                    "{}: reads the parameters ({pattern}) instead of through {reader}",
                    file.display()
                );
            }
        }
    }
}

/// Triton's JSON view of a model config (`args["model_config"]`), name and parameters only.
fn model_config(name: &str, parameters: &[(String, String)]) -> String {
    let parameters: serde_json::Map<String, serde_json::Value> = parameters
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!({ "string_value": v })))
        .collect();
    serde_json::json!({ "name": name, "parameters": parameters }).to_string()
}

#[test]
fn the_orchestrator_parameters_are_one_typed_contract() {
    let dir = tempfile::tempdir().unwrap();
    let models = export("dev", &dir.path().join("export"));
    let repo = dir.path().join("repo");
    package_cpu(&models, &repo, &[]);
    let rendered = rendered_parameters(&repo, "flux");

    // Rust: the rendered parameters read back into the struct and render the same.
    let parameters = FluxParameters::from_strings(pairs(&rendered)).unwrap();
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
    python_reader_agrees(&modules, "flux_params", "flux", &rendered, &rust_keys);

    // Both readers name a missing or ill-typed key.
    let [missing, _] = broken(&rendered, "clip_length", "");
    let [_, ill_typed] = broken(&rendered, "default_height", "64.5");
    for (key, parameters) in [("clip_length", missing), ("default_height", ill_typed)] {
        let answer = read_in_python(&modules, "flux_params", "flux", &parameters);
        assert!(
            answer["error"].as_str().unwrap().contains(&format!("'{key}'")),
            "{answer}"
        );
        let error = FluxParameters::from_strings(pairs(&parameters)).unwrap_err();
        assert!(format!("{error:#}").contains(key), "{error:#}");
    }
    only_the_reader_reads_parameters("flux", "flux_params.py");
}

#[test]
fn the_cpu_network_parameters_are_one_typed_contract() {
    let dir = tempfile::tempdir().unwrap();
    let models = export("dev", &dir.path().join("export"));
    let repo = dir.path().join("repo");
    package_cpu(&models, &repo, &[]);
    let session_config = fluxbuild::runtime::session_config();
    assert!(!session_config.is_empty(), "session_config.json sets nothing");
    for network in Network::ALL {
        let model = network.name();
        let rendered = rendered_parameters(&repo, model);
        // Rust: read back, the values package means, rendered the same again.
        let parameters = OnnxNetworkParameters::from_strings(pairs(&rendered)).unwrap();
        assert_eq!(parameters.onnx_file, "model.onnx", "{model}");
        assert!(
            repo.join(model).join("1").join(&parameters.onnx_file).is_file(),
            "{model}"
        );
        assert_eq!(parameters.ort_session_config, session_config, "{model}");
        let one_image_per_run = network == Network::VaeDecoder;
        assert_eq!(parameters.max_run_batch, u32::from(one_image_per_run), "{model}");
        let again: BTreeMap<String, String> = parameters.to_strings().unwrap().into_iter().collect();
        assert_eq!(again, rendered.iter().cloned().collect::<BTreeMap<_, _>>(), "{model}");
        let rust_keys: BTreeSet<String> = again.into_keys().collect();

        // Python: the reader the network's model.py uses, as shipped in the repository.
        let modules = repo.join(model).join("1");
        python_reader_agrees(&modules, "onnx_network_params", model, &rendered, &rust_keys);
        for (case, parameters) in ["missing", "ill-typed"]
            .into_iter()
            .zip(broken(&rendered, "max_run_batch", "one"))
        {
            let answer = read_in_python(&modules, "onnx_network_params", model, &parameters);
            let error = answer["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{model} {case}: {answer}"));
            assert!(
                error.contains(&format!("of {model}")) && error.contains("'max_run_batch'"),
                "{case}: {error}"
            );
            let error = OnnxNetworkParameters::from_strings(pairs(&parameters)).unwrap_err();
            assert!(format!("{error:#}").contains("max_run_batch"), "{case}: {error:#}");
        }
    }
    only_the_reader_reads_parameters("onnx_network", "onnx_network_params.py");
}
