//! Finding the safetensors files of one submodel: a diffusers pipeline folder, a diffusers
//! component folder (single or sharded), or a single black-forest-labs / ComfyUI file.

use super::index::read_weight_map;
use super::safetensors_file::{refuse_pickle_name, shorten, why_not_a_file};
use anyhow::{bail, Context, Result};
use std::path::{Component, Path, PathBuf};

/// Where a submodel's weights were found.
#[derive(Clone, Debug)]
pub struct Located {
    pub files: Vec<PathBuf>,
    /// `config.json` of the component folder, or one beside a single file.
    pub config: Option<PathBuf>,
    /// The shard index, when the weights are sharded.
    pub index: Option<PathBuf>,
    pub kind: SourceKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A folder with `config.json` and `diffusion_pytorch_model*.safetensors` or `model*.safetensors`.
    DiffusersFolder,
    /// One `.safetensors` file (black-forest-labs, ComfyUI).
    SingleFile,
}

/// Weight file stems of a diffusers/transformers component folder, in order of preference.
const WEIGHT_STEMS: [&str; 2] = ["diffusion_pytorch_model", "model"];

/// Locates a component. `path` may be a pipeline folder (then `subfolder` is entered),
/// a component folder, or a single file.
pub fn locate(path: &Path, subfolder: &str) -> Result<Located> {
    if path.is_file() {
        return single_file(path);
    }
    if !path.is_dir() {
        let reason = why_not_a_file(path).unwrap_or_else(|| "is not a file or folder".to_string());
        bail!("{}: {reason}", path.display());
    }
    if path.join("model_index.json").is_file() {
        let component = path.join(subfolder);
        if !component.is_dir() {
            bail!("{}: pipeline folder has no `{subfolder}/` component", path.display());
        }
        return component_folder(&component);
    }
    component_folder(path)
}

fn single_file(path: &Path) -> Result<Located> {
    refuse_pickle_name(path)?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !matches!(ext, "safetensors" | "sft") {
        bail!("{}: expected a .safetensors file", path.display());
    }
    let beside = path.with_file_name("config.json");
    Ok(Located {
        files: vec![path.to_path_buf()],
        config: beside.is_file().then_some(beside),
        index: None,
        kind: SourceKind::SingleFile,
    })
}

fn component_folder(dir: &Path) -> Result<Located> {
    let config = Some(dir.join("config.json")).filter(|p| p.is_file());
    for stem in WEIGHT_STEMS {
        let index = dir.join(format!("{stem}.safetensors.index.json"));
        if index.is_file() {
            let files = shards_from_index(dir, &index)?;
            return Ok(Located {
                files,
                config,
                index: Some(index),
                kind: SourceKind::DiffusersFolder,
            });
        }
        let single = dir.join(format!("{stem}.safetensors"));
        if single.is_file() {
            return Ok(Located {
                files: vec![single],
                config,
                index: None,
                kind: SourceKind::DiffusersFolder,
            });
        }
    }
    let pickles: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list folder", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| refuse_pickle_name(p).is_err())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    if !pickles.is_empty() {
        bail!(
            "{}: only pickle weights found ({}): refusing to load pickles; provide .safetensors",
            dir.display(),
            pickles.join(", ")
        );
    }
    bail!(
        "{}: no weights found (expected diffusion_pytorch_model.safetensors, model.safetensors or a *.safetensors.index.json)",
        dir.display()
    )
}

/// The shard files an index names, in first-seen order. A shard name must stay inside its folder;
/// the file itself may be a symlink (the Hugging Face cache links snapshots to blobs elsewhere).
fn shards_from_index(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let map = read_weight_map(index)?;
    let mut files: Vec<PathBuf> = Vec::new();
    for (tensor, shard) in &map {
        let (tensor, shard) = (shorten(tensor), shard.as_str());
        let escapes = Path::new(shard)
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
            || Path::new(shard).components().count() != 1;
        if escapes {
            bail!(
                "{}: weight_map[{tensor}] names shard `{}`, which is outside the index's folder; refusing",
                index.display(),
                shorten(shard)
            );
        }
        let path = dir.join(shard);
        if !files.contains(&path) {
            if let Some(reason) = why_not_a_file(&path) {
                bail!(
                    "{}: shard `{}` (for tensor {tensor}) {reason}",
                    index.display(),
                    shorten(shard)
                );
            }
            files.push(path);
        }
    }
    Ok(files)
}
