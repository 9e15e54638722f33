//! The fixture pipelines laid out as users have them: the official hub repository (CLIP's
//! tokenizer as vocab.json + merges.txt) in a symlinked Hugging Face cache, and ComfyUI's
//! `models/` folder of separate files (pipeline_files, triton_layouts).
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};

/// `vocab.json` + `merges.txt` as the official repositories keep CLIP's tokenizer, written from
/// the fixture's tokenizer.json.
pub fn write_vocab_and_merges(tokenizer_json: &Path, dir: &Path) {
    let json: Value = serde_json::from_slice(&std::fs::read(tokenizer_json).unwrap()).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("vocab.json"), json["model"]["vocab"].to_string()).unwrap();
    let mut merges = String::from("#version: 0.2\n");
    for pair in json["model"]["merges"].as_array().unwrap() {
        merges += &format!("{} {}\n", pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
    }
    std::fs::write(dir.join("merges.txt"), merges).unwrap();
}

/// The fixture pipeline as the official hub repository lays it out (CLIP's tokenizer as
/// vocab.json + merges.txt, no tokenizer.json), inside a Hugging Face cache whose snapshot
/// files are relative symlinks into `blobs/`. Returns (repo root, snapshot).
pub fn hub_cache(variant: &str, root: &Path) -> (PathBuf, PathBuf) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pipeline")
        .join(variant);
    let staged = root.join("staged");
    copy_tree(&source, &staged);
    std::fs::remove_file(staged.join("tokenizer/tokenizer.json")).unwrap();
    write_vocab_and_merges(&source.join("tokenizer/tokenizer.json"), &staged.join("tokenizer"));
    let repo = root.join(format!("hub/models--black-forest-labs--FLUX.1-{variant}"));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for (i, file) in list(&staged).iter().enumerate() {
        let rel = file.strip_prefix(&staged).unwrap();
        let blob = repo.join("blobs").join(format!("blob{i:04}"));
        std::fs::rename(file, &blob).unwrap();
        let link = snapshot.join(rel);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let up = "../".repeat(rel.components().count() + 1);
        std::os::unix::fs::symlink(format!("{up}blobs/blob{i:04}"), &link).unwrap();
        assert!(link.is_file(), "{}", link.display());
    }
    (repo, snapshot)
}

pub fn list(dir: &Path) -> Vec<PathBuf> {
    fluxbuild::export::list_files(dir).unwrap()
}

pub fn copy_tree(from: &Path, to: &Path) {
    for file in list(from) {
        let target = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
}

/// ComfyUI's `models/` folder with the fixture pipeline's weights under ComfyUI's file names
/// (no tokenizer, no scheduler); returns the ComfyUI root.
pub fn comfyui_folder(pipeline: &Path, root: &Path) -> PathBuf {
    let models_dir = root.join("models");
    for (from, to) in [
        (
            "transformer/diffusion_pytorch_model.safetensors",
            "diffusion_models/flux1-dev.safetensors",
        ),
        ("text_encoder/model.safetensors", "text_encoders/clip_l.safetensors"),
        (
            "text_encoder_2/model.safetensors",
            "text_encoders/t5xxl_fp16.safetensors",
        ),
        ("vae/diffusion_pytorch_model.safetensors", "vae/ae.safetensors"),
    ] {
        std::fs::create_dir_all(models_dir.join(to).parent().unwrap()).unwrap();
        std::fs::copy(pipeline.join(from), models_dir.join(to)).unwrap();
    }
    root.to_path_buf()
}

/// `--config NAME=FILE` for the tiny models, whose head counts no shape gives.
pub fn comfyui_configs(pipeline: &Path) -> Vec<String> {
    [
        ("transformer", "transformer"),
        ("clip", "text_encoder"),
        ("t5", "text_encoder_2"),
        ("vae_decoder", "vae"),
    ]
    .iter()
    .flat_map(|(name, sub)| {
        [
            "--config".to_string(),
            format!("{name}={}", pipeline.join(sub).join("config.json").display()),
        ]
    })
    .collect()
}
