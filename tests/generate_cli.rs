//! `fluxbuild generate` refuses bad input before touching a graph: the graphs here are empty files,
//! so any attempt to load one would fail with a different (ONNX Runtime) message.

use std::path::Path;
use std::process::Command;

fn fake_models(dir: &Path, skip: Option<&str>) {
    for name in ["clip", "t5", "transformer", "vae_decoder"]
        .into_iter()
        .filter(|n| Some(*n) != skip)
    {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("model.onnx"), b"").unwrap();
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipeline/dev");
    for sub in ["tokenizer", "tokenizer_2"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::copy(
            fixture.join(sub).join("tokenizer.json"),
            dir.join(sub).join("tokenizer.json"),
        )
        .unwrap();
    }
    // Every field the export manifest's types require, with placeholder values.
    let settings = serde_json::json!({ "opset": 17, "precision": {}, "fp8": null, "emulated_in_fp32": false,
        "pipeline": null, "pipeline_files": {} });
    let transformer = serde_json::json!({ "source": [], "source_kind": "test", "layout": "diffusers",
        "variant": "dev", "config": { "guidance_embeds": true }, "precision": "fp32", "precision_plan": null,
        "opset": 17, "parameters": 0, "nodes": 0, "initializers": 0, "inputs": [], "outputs": [], "saturated": [] });
    let manifest = serde_json::json!({
        "fluxbuild_version": "test", "kind": "export", "created_unix": 0, "settings": settings, "inputs": [], "files": [],
        "submodels": { "transformer": transformer }
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
}

fn generate(models: &Path, extra: &[&str]) -> (bool, String) {
    let out = models.parent().unwrap().join("out.png");
    let mut args = vec!["generate", "--models", models.to_str().unwrap()];
    args.extend_from_slice(extra);
    if !extra.contains(&"--out") {
        args.extend(["--out", out.to_str().unwrap()]);
    }
    let output = Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args(&args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_requests_fail_before_any_graph_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    fake_models(&models, None);
    let cases: [(&[&str], &str); 7] = [
        (&["--prompt", "   "], "prompt 0 is empty"),
        (
            &["--prompt", "a cat", "--height", "100"],
            "height 100 is not a multiple of 16",
        ),
        (&["--prompt", "a cat", "--width", "8192"], "width 8192"),
        (&["--prompt", "a cat", "--steps", "0"], "steps 0"),
        (
            &["--prompt", "a cat", "--max-sequence-length", "1024"],
            "max sequence length 1024",
        ),
        (
            &["--prompt", "a cat", "--noise", "/nonexistent/noise.safetensors"],
            "cannot read the noise file",
        ),
        (&["--prompt", "a cat", "--seed", "1", "--out", "x.jpg"], ".png"),
    ];
    for (args, want) in cases {
        let (ok, err) = generate(&models, args);
        assert!(!ok && err.contains(want), "{args:?}: expected {want:?} in {err}");
    }
}

#[test]
fn a_missing_graph_or_manifest_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    fake_models(&models, Some("vae_decoder"));
    let (ok, err) = generate(&models, &["--prompt", "a cat"]);
    assert!(
        !ok && err.contains("vae_decoder/model.onnx") && err.contains("missing"),
        "{err}"
    );

    fake_models(&models, None);
    std::fs::write(models.join("manifest.json"), r#"{"kind": "export"}"#).unwrap();
    let (ok, err) = generate(&models, &["--prompt", "a cat"]);
    assert!(!ok && err.contains("manifest.json"), "{err}");

    let (ok, err) = generate(&dir.path().join("nowhere"), &["--prompt", "a cat"]);
    assert!(!ok && err.contains("not a folder"), "{err}");
}

#[test]
fn an_out_that_is_a_folder_or_unwritable_is_refused_before_generating() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    fake_models(&models, None);
    let folder = dir.path().join("picture.png");
    std::fs::create_dir(&folder).unwrap();
    let (ok, err) = generate(
        &models,
        &["--prompt", "a cat", "--seed", "1", "--out", folder.to_str().unwrap()],
    );
    // The graphs are empty files: reaching them would fail with an ONNX Runtime message instead.
    assert!(
        !ok && err.contains("is a folder or special file, not an image file"),
        "{err}"
    );
    let temporary = std::fs::read_dir(dir.path())
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().starts_with("picture.png.tmp"));
    assert!(!temporary, "a temporary file was left");

    // A folder nothing can be written in (/proc, even for root): refused before the graphs too.
    let (ok, err) = generate(&models, &["--prompt", "a cat", "--out", "/proc/fluxbuild-picture.png"]);
    assert!(
        !ok && err.contains("--out /proc/fluxbuild-picture.png: cannot write there"),
        "{err}"
    );
}
