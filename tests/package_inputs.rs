//! `fluxbuild package` copies only what the manifests it reads describe, and writes only
//! deployments that serve their own defaults. An export file or plan changed since it was
//! written (truncated, one byte flipped), engines built from another export, and serving settings
//! that contradict each other are refused with one line naming the file or rule, a non-zero exit,
//! nothing at --out and the inputs unchanged.

mod common;

use fluxbuild_contract::files::sha256_file;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fluxbuild(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(output: Output) -> Output {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    output
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn export(variant: &str, out: &Path) -> PathBuf {
    let pipeline = common::fixtures().join("pipeline").join(variant);
    ok(fluxbuild(&[
        "export",
        "--checkpoint",
        path(&pipeline),
        "--out",
        path(out),
    ]));
    out.to_path_buf()
}

/// Every file under `dir` with its sha256.
fn hashes(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let entry = entry.unwrap().path();
            if entry.is_dir() {
                stack.push(entry);
            } else {
                let sha = sha256_file(&entry).unwrap();
                files.push((entry, sha));
            }
        }
    }
    files.sort();
    files
}

/// `package` with `args` is refused: non-zero, its one-line error contains each of `expected`,
/// nothing at `out` or beside it, the inputs (`inputs`) unchanged.
fn refused(args: &[&str], out: &Path, inputs: &[&Path], expected: &[&str]) {
    let before: Vec<_> = inputs.iter().map(|d| hashes(d)).collect();
    let mut all = vec!["package", "--out", path(out)];
    all.extend_from_slice(args);
    let output = fluxbuild(&all);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "packaged with {args:?}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    for expected in expected {
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in:\n{stderr}"
        );
    }
    assert!(!out.exists(), "{} written", out.display());
    let parent = out.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("fluxbuild-staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let after: Vec<_> = inputs.iter().map(|d| hashes(d)).collect();
    assert!(before == after, "{args:?}: an input changed");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap().path();
        let dest = to.join(entry.file_name().unwrap());
        if entry.is_dir() {
            copy_dir(&entry, &dest);
        } else {
            std::fs::copy(&entry, &dest).unwrap();
        }
    }
}

fn flip_a_byte(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn export_files_changed_since_export_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let models = export("dev", &dir.path().join("models"));
    let out = dir.path().join("repo");
    let cpu = |models: &Path| {
        vec![
            "--models".to_string(),
            path(models).to_string(),
            "--target".into(),
            "cpu".into(),
        ]
    };

    let truncated = dir.path().join("truncated");
    copy_dir(&models, &truncated);
    let data = truncated.join("transformer/model.onnx.data");
    let file = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    file.set_len(100_000).unwrap();
    let args = cpu(&truncated);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let expected = format!("{}: 100000 bytes, but", data.display());
    refused(&args, &out, &[&truncated], &[&expected]);

    let flipped = dir.path().join("flipped");
    copy_dir(&models, &flipped);
    let data = flipped.join("t5/model.onnx.data");
    flip_a_byte(&data);
    let args = cpu(&flipped);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let expected = format!("{}: sha256 ", data.display());
    let changed = "the file changed after `fluxbuild export` wrote it";
    refused(&args, &out, &[&flipped], &[&expected, changed]);

    // The untouched export packages.
    let args = cpu(&models);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut all = vec!["package", "--out", path(&out)];
    all.extend_from_slice(&args);
    ok(fluxbuild(&all));
}

/// TensorRT-RTX plans stand in for TensorRT's (no GPU here): their manifest says `tensorrt`, as
/// one built on a GPU host would, so that `--target gpu` takes them.
fn engines_for_gpu(models: &Path, out: &Path) -> PathBuf {
    ok(fluxbuild(&[
        "build",
        "--runtime",
        "tensorrt-rtx",
        "--models",
        path(models),
        "--profile",
        "tiny-check",
        "--out",
        path(out),
    ]));
    let manifest = out.join("manifest.json");
    let mut value: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    value["settings"]["runtime"] = "tensorrt".into();
    std::fs::write(&manifest, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
    out.to_path_buf()
}

#[test]
fn engines_from_another_export_or_changed_since_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dev = export("dev", &dir.path().join("dev"));
    let schnell = export("schnell", &dir.path().join("schnell"));
    let engines = engines_for_gpu(&dev, &dir.path().join("engines"));
    let out = dir.path().join("repo");
    let gpu = |models: &Path, engines: &Path| {
        vec![
            "--models".to_string(),
            path(models).into(),
            "--engines".into(),
            path(engines).into(),
            "--target".into(),
            "gpu".into(),
        ]
    };

    // dev's engines with schnell's export: another transformer (no guidance), another scheduler.
    let args = gpu(&schnell, &engines);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let expected = format!(
        "the clip engine was built from {} (sha256 ",
        dev.join("clip/model.onnx").display()
    );
    let remedy = format!("build the engines from {}", schnell.display());
    refused(&args, &out, &[&schnell, &engines], &[&expected, &remedy]);

    let changed = dir.path().join("changed-engines");
    copy_dir(&engines, &changed);
    let plan = changed.join("vae_decoder/model.plan");
    flip_a_byte(&plan);
    let args = gpu(&dev, &changed);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let expected = format!("{}: sha256 ", plan.display());
    let since = "the file changed after `fluxbuild build` wrote it";
    refused(&args, &out, &[&dev, &changed], &[&expected, since]);

    let args = gpu(&dev, &engines);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut all = vec!["package", "--out", path(&out), "--height", "64", "--width", "64"];
    all.extend_from_slice(&args);
    ok(fluxbuild(&all));
}

#[test]
fn serving_settings_that_refuse_their_own_defaults_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let models = export("dev", &dir.path().join("models"));
    let out = dir.path().join("repo");
    let defaults = "the repository would refuse a request with its own defaults";
    for (settings, rule) in [
        (
            &["--height", "100"][..],
            "height 100 is not a multiple of 16 [rule size_multiple]",
        ),
        (
            &["--width", "2048"],
            "width 2048 is out of range 16..=1024 [rule size_range]",
        ),
        (&["--steps", "200", "--max-steps", "50"], "[rule steps_range]"),
        (&["--max-steps", "0"], "[rule steps_range]"),
        (&["--max-sequence-length", "9999"], "[rule sequence_length_range]"),
        (&["--max-prompt-bytes", "0"], "[rule prompt_too_long]"),
        (&["--memory-budget-mib", "1"], "[rule image_pixels]"),
    ] {
        let mut args = vec!["--models", path(&models), "--target", "cpu"];
        args.extend_from_slice(settings);
        refused(&args, &out, &[&models], &[defaults, rule]);
    }
    let package_cpu = |extra: &[&str]| {
        let mut args = vec![
            "package",
            "--models",
            path(&models),
            "--target",
            "cpu",
            "--out",
            path(&out),
        ];
        args.extend_from_slice(extra);
        fluxbuild(&args)
    };
    let zero_batch = package_cpu(&["--max-batch", "0"]);
    assert!(!zero_batch.status.success());
    assert!(String::from_utf8_lossy(&zero_batch.stderr).contains("--max-batch"));
    assert!(!out.exists());

    // FluxPipeline's default size is clamped to a smaller deployment; a given one is not.
    ok(package_cpu(&["--max-height", "64", "--max-width", "64"]));
    let config = std::fs::read_to_string(out.join("flux/config.pbtxt")).unwrap();
    let at = config.find("key: \"default_height\"").expect("default_height");
    assert!(
        config[at..].starts_with("key: \"default_height\"\n  value {\n    string_value: \"64\""),
        "{config}"
    );
}
