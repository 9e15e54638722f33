//! The files a FLUX pipeline needs besides its graphs: CLIP's tokenizer (`tokenizer/`), T5's
//! (`tokenizer_2/`) and the scheduler config (`scheduler/`). Each comes from an override
//! (`--tokenizer DIR`, `--tokenizer-2 DIR`, `--scheduler FILE`), else from the pipeline folder the
//! weights come from, else from the copies bundled with fluxbuild (the real CLIP-L BPE and T5 v1.1
//! tokenizers, FLUX.1's published scheduler configs), so an export is always usable. Tokenizers
//! always end up as `tokenizer.json`, the one form the Rust and Python pipelines both load.

mod bundled;
mod clip_bpe;
mod spiece;

use crate::generate::scheduler::SchedulerConfig;
use crate::generate::tokenize::{CLIP_PAD_TOKEN, T5_PAD_TOKEN};
use crate::generate::Variant;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the user pointed for each file (all optional).
#[derive(Clone, Debug, Default)]
pub struct PipelineFileSources {
    pub tokenizer: Option<PathBuf>,
    pub tokenizer_2: Option<PathBuf>,
    pub scheduler: Option<PathBuf>,
    /// The diffusers pipeline folder (with `model_index.json`) the weights come from, if any.
    pub pipeline: Option<PathBuf>,
}

/// One output folder (`tokenizer`, `tokenizer_2`, `scheduler`) and what fills it.
pub struct PipelineFile {
    pub folder: &'static str,
    /// Where it came from, in words (the manifest records it).
    pub origin: Origin,
    /// (file name, content) written into the folder; `tokenizer.json` or `scheduler_config.json` first.
    pub files: Vec<(String, Vec<u8>)>,
    /// How many tokens a tokenizer knows (with its added tokens).
    pub vocab_size: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// `--tokenizer`, `--tokenizer-2` or `--scheduler`.
    Override { path: PathBuf, form: String },
    /// The pipeline folder's own files.
    Checkpoint { path: PathBuf, form: String },
    /// A copy that ships with fluxbuild.
    Bundled { name: String },
    /// Nothing was written, for this reason.
    LeftOut { why: String },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Override { path, form } => write!(f, "{} ({form}, given on the command line)", path.display()),
            Origin::Checkpoint { path, form } => write!(f, "{} ({form})", path.display()),
            Origin::Bundled { name } => write!(f, "bundled with fluxbuild: {name}"),
            Origin::LeftOut { why } => write!(f, "not written: {why}"),
        }
    }
}

/// The pipeline folder above a weights path: the path itself, or the parent of a component folder.
pub fn pipeline_folder(path: &Path) -> Option<PathBuf> {
    [Some(path), path.parent()]
        .into_iter()
        .flatten()
        .find(|p| p.join("model_index.json").is_file())
        .map(Path::to_path_buf)
}

/// What differs between the two encoders' tokenizers.
struct TokenizerKind {
    encoder: &'static str,
    folder: &'static str,
    flag: &'static str,
    bundled_name: &'static str,
    bundled: fn() -> Result<Vec<u8>>,
    pad_token: &'static str,
    /// The slow tokenizer's files (besides tokenizer.json) and how they become tokenizer.json,
    /// on the bundled tokenizer.json as a template.
    slow_form: &'static str,
    slow_files: &'static [&'static str],
    convert: fn(&Path, &[u8]) -> Result<Vec<u8>>,
}

const CLIP: TokenizerKind = TokenizerKind {
    encoder: "CLIP",
    folder: "tokenizer",
    flag: "--tokenizer",
    bundled_name: bundled::CLIP_NAME,
    bundled: bundled::clip_tokenizer_json,
    pad_token: CLIP_PAD_TOKEN,
    slow_form: "vocab.json + merges.txt",
    slow_files: &["vocab.json", "merges.txt"],
    convert: clip_bpe::tokenizer_json,
};

const T5: TokenizerKind = TokenizerKind {
    encoder: "T5",
    folder: "tokenizer_2",
    flag: "--tokenizer-2",
    bundled_name: bundled::T5_NAME,
    bundled: bundled::t5_tokenizer_json,
    pad_token: T5_PAD_TOKEN,
    slow_form: "spiece.model",
    slow_files: &["spiece.model"],
    convert: spiece::tokenizer_json,
};

/// CLIP's tokenizer, as `tokenizer/tokenizer.json` plus the source's other files.
pub fn clip_tokenizer(sources: &PipelineFileSources) -> Result<PipelineFile> {
    tokenizer(&CLIP, &sources.tokenizer, &sources.pipeline)
}

/// T5's tokenizer, as `tokenizer_2/tokenizer.json` plus the source's other files.
pub fn t5_tokenizer(sources: &PipelineFileSources) -> Result<PipelineFile> {
    tokenizer(&T5, &sources.tokenizer_2, &sources.pipeline)
}

fn tokenizer(kind: &TokenizerKind, given: &Option<PathBuf>, pipeline: &Option<PathBuf>) -> Result<PipelineFile> {
    let (origin, files) = match chosen(given, pipeline, kind.folder, kind.flag)? {
        None => (
            Origin::Bundled {
                name: kind.bundled_name.into(),
            },
            vec![("tokenizer.json".to_string(), (kind.bundled)()?)],
        ),
        Some((dir, overridden)) => {
            let (form, tokenizer_json) = if dir.join("tokenizer.json").is_file() {
                ("tokenizer.json", read(&dir.join("tokenizer.json"))?)
            } else if kind.slow_files.iter().all(|f| dir.join(f).is_file()) {
                (kind.slow_form, (kind.convert)(&dir, &(kind.bundled)()?)?)
            } else {
                bail!(
                    "{}: no {} tokenizer here (expected tokenizer.json or {})",
                    dir.display(),
                    kind.encoder,
                    kind.slow_form
                );
            };
            (origin_of(&dir, form, overridden), with_sources(&dir, tokenizer_json)?)
        }
    };
    let mut file = PipelineFile {
        folder: kind.folder,
        origin,
        files,
        vocab_size: None,
    };
    file.vocab_size = Some(check_loads(&file, kind.pad_token)?);
    Ok(file)
}

/// The scheduler config: `--scheduler FILE`, the pipeline's `scheduler/scheduler_config.json`, or
/// FLUX.1's published config for `variant` (dev's for every guidance-distilled model, schnell's for schnell).
pub fn scheduler(sources: &PipelineFileSources, variant: Variant) -> Result<PipelineFile> {
    let from_pipeline = sources
        .pipeline
        .as_ref()
        .map(|p| p.join("scheduler/scheduler_config.json"))
        .filter(|p| p.is_file());
    let (origin, content) = match (&sources.scheduler, from_pipeline) {
        (Some(path), _) => {
            let path = if path.is_dir() {
                path.join("scheduler_config.json")
            } else {
                path.clone()
            };
            SchedulerConfig::read(&path).context("--scheduler")?;
            let form = "scheduler_config.json".to_string();
            (
                Origin::Override {
                    path: path.clone(),
                    form,
                },
                read(&path)?,
            )
        }
        (None, Some(path)) => {
            SchedulerConfig::read(&path)?;
            let form = "scheduler_config.json".to_string();
            (
                Origin::Checkpoint {
                    path: path.clone(),
                    form,
                },
                read(&path)?,
            )
        }
        (None, None) => {
            let mut config = serde_json::to_value(SchedulerConfig::for_variant(variant))?;
            config["_class_name"] = "FlowMatchEulerDiscreteScheduler".into();
            let name = format!("FLUX.1-{} scheduler_config.json", variant.name());
            (Origin::Bundled { name }, serde_json::to_vec_pretty(&config)?)
        }
    };
    Ok(PipelineFile {
        folder: "scheduler",
        origin,
        files: vec![("scheduler_config.json".to_string(), content)],
        vocab_size: None,
    })
}

impl PipelineFile {
    /// The same folder, written empty-handed for `why`.
    pub fn left_out(self, why: String) -> PipelineFile {
        PipelineFile {
            origin: Origin::LeftOut { why },
            files: Vec::new(),
            ..self
        }
    }

    /// Writes the files into `root/<folder>/`.
    pub fn write(&self, root: &Path) -> Result<()> {
        let dir = root.join(self.folder);
        std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        for (name, content) in &self.files {
            let path = dir.join(name);
            std::fs::write(&path, content).with_context(|| format!("{}: cannot write", path.display()))?;
        }
        Ok(())
    }
}

/// The folder to read: the override (which must exist), else the pipeline's `sub/` folder;
/// `None` means the bundled copy. The flag says whether it was an override.
fn chosen(
    given: &Option<PathBuf>,
    pipeline: &Option<PathBuf>,
    sub: &str,
    flag: &str,
) -> Result<Option<(PathBuf, bool)>> {
    if let Some(dir) = given {
        let dir = if dir.is_file() {
            dir.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            dir.clone()
        };
        if !dir.is_dir() {
            bail!("{flag} {}: no such folder", dir.display());
        }
        return Ok(Some((dir, true)));
    }
    Ok(pipeline
        .as_ref()
        .map(|p| p.join(sub))
        .filter(|d| d.is_dir())
        .map(|d| (d, false)))
}

fn origin_of(dir: &Path, form: &str, overridden: bool) -> Origin {
    let (path, form) = (dir.to_path_buf(), form.to_string());
    if overridden {
        Origin::Override { path, form }
    } else {
        Origin::Checkpoint { path, form }
    }
}

/// The source folder's small files (configs, vocab, merges, spiece.model) with `tokenizer.json` set.
fn with_sources(dir: &Path, tokenizer_json: Vec<u8>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = vec![("tokenizer.json".to_string(), tokenizer_json)];
    let entries = std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "tokenizer.json")
        .collect();
    names.sort();
    for name in names {
        let content = read(&dir.join(&name))?;
        files.push((name, content));
    }
    Ok(files)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
}

/// Loads `tokenizer.json` as generation will and checks it has the token generation pads with,
/// so an export never finishes with a tokenizer that cannot be used. Returns its vocabulary size.
fn check_loads(file: &PipelineFile, pad_token: &str) -> Result<usize> {
    let (_, content) = &file.files[0];
    let tokenizer = tokenizers::Tokenizer::from_bytes(content).map_err(|e| {
        anyhow::anyhow!(
            "{}/tokenizer.json from {}: cannot be loaded: {e}",
            file.folder,
            file.origin
        )
    })?;
    if tokenizer.token_to_id(pad_token).is_none() {
        bail!(
            "{}/tokenizer.json from {}: has no {pad_token} token (is it the other encoder's tokenizer?)",
            file.folder,
            file.origin
        );
    }
    Ok(tokenizer.get_vocab_size(true))
}
