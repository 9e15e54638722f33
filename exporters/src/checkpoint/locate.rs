//! Finding the safetensors files of one submodel: a diffusers pipeline folder, a diffusers
//! component folder (single or sharded), or a single black-forest-labs / ComfyUI file.

use super::index::read_weight_map;
use super::safetensors_file::{refuse_pickle_name, shorten, why_not_a_file};
use anyhow::{bail, Context, Result};
use fluxbuild_contract::Network;
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
    let Ok(metadata) = std::fs::metadata(path) else {
        let reason = why_not_a_file(path).unwrap_or_else(|| "cannot be read".to_string());
        bail!("{}: {reason}", path.display());
    };
    if metadata.is_file() {
        return single_file(path, subfolder);
    }
    if !metadata.is_dir() {
        let reason = why_not_a_file(path).unwrap_or_else(|| "is not a file or folder".to_string());
        bail!("{}: {reason}", path.display());
    }
    if let Some(snapshot) = hub_cache_snapshot(path) {
        bail!(
            "{}: a Hugging Face cache folder, not a checkpoint: use its snapshot, {}",
            path.display(),
            snapshot.display()
        );
    }
    // A diffusers pipeline that lost its model_index.json (a partial download, a copy of some
    // folders) would otherwise read as a ComfyUI folder (it has `vae/`), with a misleading answer.
    let diffusers_components = [Network::Transformer, Network::Clip, Network::T5]
        .iter()
        .any(|n| path.join(n.folder()).join("config.json").is_file());
    if diffusers_components && !path.join("model_index.json").is_file() {
        bail!(
            "{}: a diffusers pipeline folder (transformer/, text_encoder/, ... with config.json) without \
             model_index.json; restore it (it comes with the model's files on the Hub) or pass each \
             component folder (--transformer, --clip, --t5, --vae)",
            path.display()
        );
    }
    if let Some(models) = comfy_models_folder(path) {
        return comfy_file(&models, subfolder);
    }
    if path.join("model_index.json").is_file() {
        check_pipeline_index(&path.join("model_index.json"))?;
        let component = path.join(subfolder);
        if !component.is_dir() {
            bail!("{}: pipeline folder has no `{subfolder}/` component", path.display());
        }
        return component_folder(&component);
    }
    component_folder(path)
}

/// The snapshot to use when `path` is a Hugging Face cache repository (`models--org--name/`
/// with `snapshots/` and `refs/`): the one `refs/main` names, else the only or first one.
fn hub_cache_snapshot(path: &Path) -> Option<PathBuf> {
    let snapshots = path.join("snapshots");
    if !snapshots.is_dir() || !path.join("refs").is_dir() {
        return None;
    }
    let main = std::fs::read_to_string(path.join("refs/main")).ok();
    if let Some(commit) = main
        .map(|c| c.trim().to_string())
        .filter(|c| snapshots.join(c).is_dir())
    {
        return Some(snapshots.join(commit));
    }
    let mut all: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    all.sort();
    Some(all.into_iter().next().unwrap_or(snapshots.join("<commit>")))
}

/// ComfyUI's model folders, per submodel: where to look and which file names fit (lowercase
/// substrings; empty = any). The folder and file names are ComfyUI's vocabulary, not networks.
const COMFY_FOLDERS: [(Network, &[&str], &[&str]); 4] = [
    (Network::Transformer, &["diffusion_models", "unet"], &[]),
    (Network::Clip, &["text_encoders", "clip"], &["clip_l"]), // not a network name: ComfyUI's folder
    (Network::T5, &["text_encoders", "clip"], &["t5"]),       // not a network name: ComfyUI's folder, file names
    (Network::VaeDecoder, &["vae"], &[]),                     // not a network name: ComfyUI's folder
];

/// The submodel whose diffusers folder is `subfolder`.
fn network_of(subfolder: &str) -> Option<Network> {
    Network::ALL.into_iter().find(|n| n.folder() == subfolder)
}

/// `path` itself or `path/models` when it is a ComfyUI `models/` folder (not a diffusers folder).
fn comfy_models_folder(path: &Path) -> Option<PathBuf> {
    let is_models = |p: &Path| {
        ["diffusion_models", "unet", "text_encoders", "vae"] // not a network name: ComfyUI's folders
            .iter()
            .any(|f| p.join(f).is_dir())
            && !p.join("model_index.json").is_file()
    };
    [path.to_path_buf(), path.join("models")]
        .into_iter()
        .find(|p| is_models(p))
}

/// The one file of a ComfyUI `models/` folder that holds `subfolder`'s submodel.
fn comfy_file(models: &Path, subfolder: &str) -> Result<Located> {
    let Some((network, folders, names)) = COMFY_FOLDERS.iter().find(|(n, _, _)| n.folder() == subfolder) else {
        bail!("{}: a ComfyUI models folder has no `{subfolder}`", models.display());
    };
    let mut candidates = Vec::new();
    for folder in folders.iter().map(|f| models.join(f)).filter(|f| f.is_dir()) {
        let entries = std::fs::read_dir(&folder).with_context(|| format!("{}: cannot list", folder.display()))?;
        for file in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
            let name = file.file_name().unwrap_or_default().to_string_lossy().to_lowercase();
            let weights = name.ends_with(".safetensors") || name.ends_with(".sft");
            if weights && (names.is_empty() || names.iter().any(|n| name.contains(n))) {
                candidates.push(file);
            }
        }
    }
    candidates.sort();
    let flag = format!("--{}", network.flag());
    match &candidates[..] {
        [one] => single_file(one, subfolder),
        [] => bail!(
            "{}: a ComfyUI models folder with no {} file in {}/; pass {flag} FILE",
            models.display(),
            if names.is_empty() {
                "*.safetensors".to_string()
            } else {
                format!("*{}*.safetensors", names.join("|"))
            },
            folders.join("/ or "),
        ),
        several => bail!(
            "{}: a ComfyUI models folder with {} candidates for {flag} ({}); pass {flag} FILE to choose",
            models.display(),
            several.len(),
            several
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A single file; a `config.json` beside it is its config only if it describes this submodel
/// (files of several models often share a folder).
fn single_file(path: &Path, subfolder: &str) -> Result<Located> {
    refuse_pickle_name(path)?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !matches!(ext, "safetensors" | "sft" | "gguf") {
        bail!("{}: expected a .safetensors file", path.display());
    }
    let beside = path.with_file_name("config.json");
    let applies = beside.is_file() && describes(&beside, subfolder);
    Ok(Located {
        files: vec![path.to_path_buf()],
        config: applies.then_some(beside),
        index: None,
        kind: SourceKind::SingleFile,
    })
}

/// Whether the config at `path` is for `subfolder`'s kind of model, judged by the names configs
/// carry (`_class_name`, `model_type`, `architectures`); one naming none of them is assumed to.
fn describes(path: &Path, subfolder: &str) -> bool {
    let Some(config) = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return true;
    };
    let mut names: Vec<String> = ["_class_name", "model_type"]
        .iter()
        .filter_map(|k| config.get(*k).and_then(|v| v.as_str()).map(str::to_lowercase))
        .collect();
    names.extend(
        config["architectures"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_lowercase)),
    );
    // Substrings of the class and model-type names (FluxTransformer2DModel, CLIPTextModel, t5,
    // AutoencoderKL), not network names.
    let wanted: &[&str] = match network_of(subfolder) {
        Some(Network::Transformer) => &["flux", "transformer2d"],
        Some(Network::Clip) => &["clip"], // not a network name: CLIPTextModel
        Some(Network::T5) => &["t5"],     // not a network name: T5EncoderModel, model_type t5
        Some(Network::VaeDecoder) => &["autoencoder", "vae"], // not a network name: AutoencoderKL
        None => return true,
    };
    names.is_empty() || names.iter().any(|n| wanted.iter().any(|w| n.contains(w)))
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
        "{}: no weights found (expected diffusion_pytorch_model.safetensors, model.safetensors or a *.safetensors.index.json){}",
        dir.display(),
        what_the_folder_holds(dir)
    )
}

/// A diffusers pipeline's `model_index.json` must be readable and name a FLUX pipeline class: a
/// truncated download or another model family is said as such, not as missing tensors later.
pub fn check_pipeline_index(index: &Path) -> Result<()> {
    let text = std::fs::read(index).with_context(|| format!("{}: cannot read", index.display()))?;
    let value: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not JSON (an interrupted download?)", index.display()))?;
    let class = value.get("_class_name").and_then(|c| c.as_str()).unwrap_or_default();
    // FluxPipeline, FluxKontextPipeline, FluxFillPipeline, ... (FLUX.2's are Flux2*): not a network name.
    let flux1 = class.starts_with("Flux") && !class.starts_with("Flux2");
    if class.is_empty() {
        bail!(
            "{}: names no pipeline class (_class_name); expected FluxPipeline or another FLUX.1 pipeline",
            index.display()
        );
    }
    if !flux1 {
        bail!(
            "{}: the pipeline of a {class}, not a FLUX.1 pipeline (expected _class_name FluxPipeline or another Flux*Pipeline)",
            index.display()
        );
    }
    Ok(())
}

/// Why a folder without a component's weights was still given: it holds pipelines (a parent of
/// `FLUX.1-dev/`) or single files (ComfyUI-style), each to be given itself.
fn what_the_folder_holds(dir: &Path) -> String {
    let mut pipelines = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let (path, name) = (entry.path(), entry.file_name().to_string_lossy().into_owned());
        if path.join("model_index.json").is_file() {
            pipelines.push(format!("{name}/"));
        } else if name.ends_with(".safetensors") || name.ends_with(".sft") {
            files.push(name);
        }
    }
    pipelines.sort();
    files.sort();
    // `model-00001-of-00002.safetensors`: the shards of a download that lost its index.
    let is_shard = |name: &String| {
        let stem = name.trim_end_matches(".safetensors");
        stem.rsplit_once("-of-").is_some_and(|(head, total)| {
            total.chars().all(|c| c.is_ascii_digit())
                && head
                    .rsplit('-')
                    .next()
                    .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        })
    };
    match (&pipelines[..], &files[..]) {
        ([], []) => String::new(),
        ([], files) if files.iter().all(is_shard) => format!(
            "; it holds the shards {} without their *.safetensors.index.json: restore the index (it comes with the shards)",
            files.join(", ")
        ),
        ([], files) => format!("; it holds {}: give the file itself", files.join(", ")),
        (pipelines, _) => format!("; it holds the pipelines {}: give one of them", pipelines.join(", ")),
    }
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
