//! The layouts users download go export -> package -> Triton with no file added by hand: the
//! official hub repository (CLIP's tokenizer as vocab.json + merges.txt) from a symlinked
//! Hugging Face cache, and ComfyUI's separate files (no tokenizer, no scheduler anywhere).
//! The served image is the local one, byte for byte. Needs the Triton venv: `make triton-venv`.

mod common;
mod layouts;
mod triton_support;

use std::path::Path;
use triton_support::{assert_served_equals_local, fluxbuild_ok, package_cpu, path, start};

/// Packages `models`, serves it, and checks one image through Triton against local generate.
fn served_equals_local(models: &Path, dir: &Path) {
    let repo = dir.join("repo");
    package_cpu(models, &repo, &[]);
    let server = start(&repo, false);
    let args = [
        "--prompt",
        "a photo of a cat",
        "--seed",
        "42",
        "--height",
        "32",
        "--width",
        "48",
        "--steps",
        "3",
    ];
    assert_served_equals_local(&server, models, &args, dir, "layout");
}

#[test]
fn official_hub_layout_goes_to_triton_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (_, snapshot) = layouts::hub_cache("dev", dir.path());
    let models = dir.path().join("models");
    fluxbuild_ok(&["export", "--checkpoint", path(&snapshot), "--out", path(&models)]);
    served_equals_local(&models, dir.path());
}

#[test]
fn comfyui_separate_files_go_to_triton_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipeline/dev");
    let root = layouts::comfyui_folder(&pipeline, &dir.path().join("ComfyUI"));
    let models = dir.path().join("models");
    let configs = layouts::comfyui_configs(&pipeline);
    let mut args = vec!["export", "--checkpoint", path(&root), "--out", path(&models)];
    args.extend(configs.iter().map(String::as_str));
    fluxbuild_ok(&args);
    served_equals_local(&models, dir.path());
}
