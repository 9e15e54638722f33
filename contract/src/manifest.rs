//! Manifests: every artifact fluxbuild writes says what it was made from (sha256 of inputs),
//! what it is (sha256 of outputs) and with which settings.

use crate::engines::Engine;
use crate::files::{sha256_file, write_atomic};
use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative to the artifact's folder for outputs; as given for inputs.
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

impl FileEntry {
    /// An output `path` inside `root`, whose hash is already known.
    pub fn new(root: &Path, path: &Path, bytes: u64, sha256: String) -> FileEntry {
        FileEntry {
            path: path.strip_prefix(root).unwrap_or(path).to_path_buf(),
            bytes,
            sha256,
        }
    }

    /// An output listed as `path` (inside `root`) whose content is currently at `content`.
    pub fn hash(root: &Path, path: &Path, content: &Path) -> Result<FileEntry> {
        let bytes = std::fs::metadata(content)
            .with_context(|| format!("{}: cannot stat", content.display()))?
            .len();
        Ok(FileEntry::new(root, path, bytes, sha256_file(content)?))
    }

    /// An input file, recorded by its absolute path.
    pub fn hash_absolute(path: &Path) -> Result<FileEntry> {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let bytes = std::fs::metadata(path)
            .with_context(|| format!("{}: cannot stat", path.display()))?
            .len();
        Ok(FileEntry {
            path: absolute,
            bytes,
            sha256: sha256_file(path)?,
        })
    }
}

/// A graph input or output as the manifest records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    /// Fixed sizes as numbers, dynamic ones by their symbol.
    pub dims: Vec<serde_json::Value>,
}

/// Which stage wrote a folder: its manifest.json's `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StageKind {
    #[serde(rename = "export")]
    Export,
    #[serde(rename = "engines")]
    Engines,
    #[serde(rename = "fluxbuild triton repository")]
    Repository,
}

impl StageKind {
    /// The command that writes such a folder, as users know it.
    pub fn command(self) -> &'static str {
        match self {
            StageKind::Export => "fluxbuild export",
            StageKind::Engines => "fluxbuild build",
            StageKind::Repository => "fluxbuild package",
        }
    }
}

/// One stage's manifest: the same header for every stage, the stage's typed `settings` and one
/// typed record per submodel (`S`, `R`: export, engines; the repository has its own shape).
/// Read and written by the same types, with unknown keys refused: a key written but not typed
/// cannot appear. A reader that needs only part of a stage's records passes `IgnoredAny` for the rest.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest<S, R> {
    pub fluxbuild_version: String,
    /// Export or engines.
    pub kind: StageKind,
    pub created_unix: u64,
    pub settings: S,
    pub inputs: Vec<FileEntry>,
    pub files: Vec<FileEntry>,
    /// Per-submodel records, keyed by submodel name.
    #[serde(default = "BTreeMap::new")]
    pub submodels: BTreeMap<String, R>,
    /// Engines stage only: the list `fluxbuild package` reads ([`crate::engines::EnginesManifest`]), a view of
    /// the records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engines: Option<Vec<Engine>>,
}

impl<S, R> Manifest<S, R> {
    pub fn new(kind: StageKind, settings: S, inputs: Vec<FileEntry>, files: Vec<FileEntry>) -> Manifest<S, R> {
        let created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Manifest {
            fluxbuild_version: env!("CARGO_PKG_VERSION").to_string(),
            kind,
            created_unix,
            settings,
            inputs,
            files,
            submodels: BTreeMap::new(),
            engines: None,
        }
    }

    pub fn read(path: &Path) -> Result<Manifest<S, R>>
    where
        S: DeserializeOwned,
        R: DeserializeOwned,
    {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a fluxbuild manifest", path.display()))
    }

    pub fn write(&self, path: &Path) -> Result<()>
    where
        S: Serialize,
        R: Serialize,
    {
        write_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// `new` plus what an earlier manifest at `previous` recorded for top-level entries
    /// (`clip/`, `tokenizer/`, ...) that `new` did not replace.
    pub fn merge_previous(previous: &Path, new: &Manifest<S, R>, replaced: &[&str]) -> Result<Manifest<S, R>>
    where
        S: Clone + DeserializeOwned,
        R: Clone + DeserializeOwned,
    {
        let Ok(old) = Manifest::<S, R>::read(previous) else {
            return Ok(new.clone());
        };
        if old.kind != new.kind {
            return Ok(new.clone());
        }
        let top = |p: &Path| {
            p.components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let mut merged = new.clone();
        let kept: Vec<FileEntry> = old
            .files
            .into_iter()
            .filter(|f| !replaced.contains(&top(&f.path).as_str()) && !new.files.contains(f))
            .collect();
        merged.files.extend(kept);
        merged.files.sort_by(|a, b| a.path.cmp(&b.path));
        for input in old.inputs {
            if !merged.inputs.contains(&input) {
                merged.inputs.push(input);
            }
        }
        for (name, entry) in old.submodels {
            if !replaced.contains(&name.as_str()) {
                merged.submodels.entry(name).or_insert(entry);
            }
        }
        Ok(merged)
    }

    /// Checks every listed output file against its size and sha256, relative to `root`.
    pub fn verify(&self, root: &Path) -> Result<()> {
        for f in &self.files {
            let path = root.join(&f.path);
            let entry = FileEntry::hash(root, &path, &path)?;
            anyhow::ensure!(
                entry.bytes == f.bytes && entry.sha256 == f.sha256,
                "{}: does not match the manifest (size {} vs {}, sha256 {} vs {})",
                path.display(),
                entry.bytes,
                f.bytes,
                entry.sha256,
                f.sha256
            );
        }
        Ok(())
    }
}
