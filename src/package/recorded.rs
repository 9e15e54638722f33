//! What `package` copies is what the manifests it reads describe. Every file an export or engines
//! manifest lists is checked by size before any work and by sha256 as its copy is hashed (the
//! repository's own manifest needs that hash anyway), and engines must have been built from this
//! export's graphs: a plan built from another export's transformer (another variant, another
//! precision) would serve silently wrong images.

use crate::export::ExportManifest;
use anyhow::{bail, Context, Result};
use fluxbuild_contract::manifest::{FileEntry, StageKind};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A file as a manifest records it.
#[derive(Clone, Debug)]
struct Record {
    bytes: u64,
    sha256: String,
    manifest: PathBuf,
    /// What wrote it.
    kind: StageKind,
}

/// The recorded size and sha256 of every file of the folders package reads, by canonical path.
#[derive(Default)]
pub struct Recorded {
    files: BTreeMap<PathBuf, Record>,
}

impl Recorded {
    /// Adds the files `dir/manifest.json` lists (relative to `dir`; written by `kind`), after
    /// checking their sizes.
    pub fn add_folder(&mut self, dir: &Path, kind: StageKind, files: &[FileEntry]) -> Result<()> {
        let manifest = dir.join("manifest.json");
        for entry in files {
            let path = dir.join(&entry.path);
            let bytes = std::fs::metadata(&path)
                .with_context(|| format!("{}: listed in {} but missing", path.display(), manifest.display()))?
                .len();
            if bytes != entry.bytes {
                bail!(
                    "{}: {bytes} bytes, but {} records {}: the file changed after `{}` wrote it \
                     (truncated or replaced); run it again",
                    path.display(),
                    manifest.display(),
                    entry.bytes,
                    kind.command()
                );
            }
            let record = Record {
                bytes: entry.bytes,
                sha256: entry.sha256.clone(),
                manifest: manifest.clone(),
                kind,
            };
            self.files.insert(canonical(&path), record);
        }
        Ok(())
    }

    /// Adds an export folder's files; returns them.
    pub fn add_export(&mut self, dir: &Path) -> Result<Vec<FileEntry>> {
        let manifest = ExportManifest::read(&dir.join("manifest.json"))?;
        self.add_folder(dir, StageKind::Export, &manifest.files)?;
        Ok(manifest.files)
    }

    /// Checks the copy of `source` (its size and sha256) against the record, if any.
    pub fn check(&self, source: &Path, copy: &FileEntry) -> Result<()> {
        let Some(record) = self.files.get(&canonical(source)) else {
            return Ok(());
        };
        if (record.bytes, record.sha256.as_str()) != (copy.bytes, copy.sha256.as_str()) {
            bail!(
                "{}: sha256 {}, but {} records {}: the file changed after `{}` wrote it; run it again",
                source.display(),
                short(&copy.sha256),
                record.manifest.display(),
                short(&record.sha256),
                record.kind.command()
            );
        }
        Ok(())
    }
}

/// Engines are built from the graphs of the export `models`: each graph file an engines manifest
/// lists as an input (`<models>/<network>/<file>` when it was built) must be the file of the same
/// name in this export, by sha256.
pub fn check_engines_built_from(
    models: &Path,
    export: &[FileEntry],
    engines: &Path,
    inputs: &[FileEntry],
) -> Result<()> {
    let in_export: BTreeMap<PathBuf, &str> = export.iter().map(|f| (f.path.clone(), f.sha256.as_str())).collect();
    for input in inputs {
        let Some(relative) = network_and_file(&input.path) else {
            continue;
        };
        let Some(&exported) = in_export.get(&relative) else {
            continue;
        };
        if exported != input.sha256 {
            bail!(
                "{}/manifest.json: the {} engine was built from {} (sha256 {}), not from this export's {} \
                 (sha256 {}): build the engines from {} (`fluxbuild build --models {}`) or package the export \
                 they were built from",
                engines.display(),
                relative.parent().unwrap_or(Path::new("")).display(),
                input.path.display(),
                short(&input.sha256),
                models.join(&relative).display(),
                short(exported),
                models.display(),
                models.display()
            );
        }
    }
    Ok(())
}

/// `network/file` of a graph file's path.
fn network_and_file(path: &Path) -> Option<PathBuf> {
    let file = path.file_name()?;
    let network = path.parent()?.file_name()?;
    Some(Path::new(network).join(file))
}

fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}
