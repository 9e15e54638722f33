//! Output folders (`--out` of export, build and package) written crash-safely and never at the
//! expense of the user's files.
//!
//! Everything, manifest included, is written into a staging folder beside `--out`
//! (`.NAME.fluxbuild-staging-PID`, same filesystem) and swapped in by one atomic
//! `renameat2(RENAME_EXCHANGE)`: at every instant `--out` is the old complete result or the new
//! complete one. Where the filesystem cannot exchange, the old folder is renamed aside
//! (`.NAME.fluxbuild-old-PID`) and the new one renamed in; a crash between the two renames is
//! rolled back to the old folder by the next run. Leftovers of dead processes are removed by the
//! next run beside the same `--out` and by `fluxbuild clean`.
//!
//! Never touch the source: an `--out` that is, contains or lies inside an input is refused; an
//! existing `--out` is replaced only when it holds nothing but what a fluxbuild manifest lists.

use crate::manifest::{FileEntry, StageKind};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

const STAGING: &str = "fluxbuild-staging-";
const OLD: &str = "fluxbuild-old-";

/// Set to a crash point's name, the process kills itself there with SIGKILL (for crash tests).
pub const CRASH_ENV: &str = "FLUXBUILD_CRASH_AT";

/// Dies like `kill -9` when `FLUXBUILD_CRASH_AT` names this point (tests of crash safety).
pub fn crash_point(name: &str) {
    if std::env::var_os(CRASH_ENV).is_some_and(|v| v == name) {
        // SAFETY: signalling our own process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// What to do with an `--out` that already holds a fluxbuild result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Refuse (the default of export and package).
    Refuse,
    /// Replace it whole (`--force`).
    Replace,
    /// Start from it: entries this run does not write are carried over (`export --update`, build's
    /// engine cache).
    Update,
}

/// A staging folder for `out`, removed on drop unless committed.
pub struct Staged {
    out: PathBuf,
    dir: PathBuf,
    committed: bool,
    /// Removes the staging folder on Ctrl-C or SIGTERM.
    _on_interrupt: crate::interrupted::Registered,
}

impl Staged {
    /// Checks `out` against `inputs` and `existing`, removes leftovers of dead runs beside it and
    /// creates the staging folder. `kind` names the manifest kind an existing `out` must have.
    pub fn begin(out: &Path, inputs: &[PathBuf], existing: Existing, kind: StageKind) -> Result<Staged> {
        let out = &through_link(out)?;
        refuse_overlap(out, inputs)?;
        let (parent, name) = split(out)?;
        std::fs::create_dir_all(&parent).with_context(|| format!("{}: cannot create", parent.display()))?;
        recover(&parent, &name)?;
        if let Some(pid) = other_writer(&parent, &name) {
            bail!(
                "--out {}: another fluxbuild (pid {pid}) is writing it now; wait for it, or stop it and run again",
                out.display()
            );
        }
        let owned = check_existing(out, existing, kind)?;
        let dir = parent.join(hidden(&name, STAGING, std::process::id()));
        let removed = dir.clone();
        let on_interrupt = crate::interrupted::on_interrupt(move || {
            if std::fs::remove_dir_all(&removed).is_ok() {
                eprintln!("interrupted: removed the unfinished {}", removed.display());
            }
        });
        std::fs::create_dir(&dir).with_context(|| {
            format!(
                "--out {}: cannot write in {} (results are staged beside --out and swapped in whole)",
                out.display(),
                parent.display()
            )
        })?;
        let staged = Staged {
            out: out.to_path_buf(),
            dir,
            committed: false,
            _on_interrupt: on_interrupt,
        };
        if existing == Existing::Update {
            for entry in owned {
                staged.carry(Path::new(&entry))?;
            }
        }
        crash_point("staging-created");
        Ok(staged)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where a file of the staging folder ends up after the commit.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Hard-links `rel` (a file or folder of the current `out`) into the staging folder (copying
    /// where links are impossible). Files are never rewritten in place, so sharing is safe.
    pub fn carry(&self, rel: &Path) -> Result<()> {
        link_tree(&self.out.join(rel), &self.dir.join(rel))
    }

    /// Removes `rel` from the staging folder (an entry carried over that this run replaces).
    pub fn discard(&self, rel: &Path) -> Result<()> {
        let path = self.dir.join(rel);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(_) => Ok(()),
        }
        .with_context(|| format!("{}: cannot remove", path.display()))
    }

    /// Swaps the staging folder in as `out` (its contents must be complete, manifest included).
    pub fn commit(mut self) -> Result<()> {
        sync_tree(&self.dir)?;
        crash_point("before-swap");
        let (parent, name) = split(&self.out)?;
        if std::fs::symlink_metadata(&self.out).is_err() {
            std::fs::rename(&self.dir, &self.out)
                .with_context(|| format!("cannot rename {} to {}", self.dir.display(), self.out.display()))?;
        } else if exchange(&self.dir, &self.out)? {
            // The staging name now holds the old result.
            crash_point("after-swap");
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("{}: cannot remove the previous result", self.dir.display()))?;
        } else {
            let old = parent.join(hidden(&name, OLD, std::process::id()));
            std::fs::rename(&self.out, &old)
                .with_context(|| format!("{}: cannot move the previous result aside", self.out.display()))?;
            crash_point("between-renames");
            std::fs::rename(&self.dir, &self.out)
                .with_context(|| format!("cannot rename {} to {}", self.dir.display(), self.out.display()))?;
            crash_point("after-swap");
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("{}: cannot remove the previous result", old.display()))?;
        }
        sync_dir(&parent);
        self.committed = true;
        crash_point("committed");
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A symbolic link at `out` stands for the folder it points to (say, on a bigger disk): the result
/// goes there and the link stays (swapping the staging folder with `out` would replace the link).
fn through_link(out: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(out) {
        Ok(meta) if meta.file_type().is_symlink() => out.canonicalize().with_context(|| {
            let target = std::fs::read_link(out).unwrap_or_default();
            format!(
                "--out {}: a symbolic link to {}, which does not exist; create it or give another --out",
                out.display(),
                target.display()
            )
        }),
        _ => Ok(out.to_path_buf()),
    }
}

/// The checks `Staged::begin` makes, without writing anything: for refusing early, before long work.
pub fn check(out: &Path, inputs: &[PathBuf], existing: Existing, kind: StageKind) -> Result<()> {
    let out = &through_link(out)?;
    refuse_overlap(out, inputs)?;
    split(out)?;
    check_existing(out, existing, kind).map(|_| ())
}

/// `out`'s parent folder (absolute) and file name.
fn split(out: &Path) -> Result<(PathBuf, OsString)> {
    let absolute = std::path::absolute(out).with_context(|| format!("{}: not a usable path", out.display()))?;
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => Ok((parent.to_path_buf(), name.to_owned())),
        _ => bail!("--out {}: needs a folder name", out.display()),
    }
}

fn hidden(name: &OsString, mark: &str, pid: u32) -> OsString {
    let mut hidden = OsString::from(".");
    hidden.push(name);
    hidden.push(format!(".{mark}{pid}"));
    hidden
}

/// The process id in a leftover's name, if it is one of `name`'s leftovers with `mark`.
fn leftover_pid(entry: &str, name: &str, mark: &str) -> Option<u32> {
    entry
        .strip_prefix('.')?
        .strip_prefix(name)?
        .strip_prefix('.')?
        .strip_prefix(mark)?
        .parse()
        .ok()
}

/// A live process other than this one with a staging folder for `name` in `parent`.
fn other_writer(parent: &Path, name: &OsString) -> Option<u32> {
    let name = name.to_string_lossy();
    std::fs::read_dir(parent)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| leftover_pid(&e.file_name().to_string_lossy(), &name, STAGING))
        .find(|&pid| pid != std::process::id() && alive(pid))
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid == std::process::id() || unsafe { libc::kill(pid as libc::pid_t, 0) } == 0 || last_errno() == libc::EPERM
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Puts `out` back together after a crash of a dead run and removes that run's leftovers; returns
/// what was removed or restored.
pub fn recover(parent: &Path, name: &OsString) -> Result<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(Vec::new());
    };
    let name = name.to_string_lossy();
    let out = parent.join(name.as_ref());
    let mut stale: Vec<(PathBuf, bool)> = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let file = entry.file_name().to_string_lossy().into_owned();
        for (mark, is_old) in [(STAGING, false), (OLD, true)] {
            if leftover_pid(&file, &name, mark).is_some_and(|pid| !alive(pid)) {
                stale.push((entry.path(), is_old));
            }
        }
    }
    let mut done = Vec::new();
    for (path, is_old) in stale {
        if is_old && std::fs::symlink_metadata(&out).is_err() {
            // Killed between the two renames of a commit: the old result goes back.
            std::fs::rename(&path, &out)
                .with_context(|| format!("cannot restore {} to {}", path.display(), out.display()))?;
        } else {
            std::fs::remove_dir_all(&path).with_context(|| format!("{}: cannot remove", path.display()))?;
        }
        done.push(path);
    }
    // Leftovers of older fluxbuild versions, which staged inside `out`.
    if let Ok(inside) = std::fs::read_dir(&out) {
        for entry in inside.filter_map(|e| e.ok()) {
            let file = entry.file_name().to_string_lossy().into_owned();
            let pid = file.strip_prefix(".fluxbuild-staging-").and_then(|p| p.parse().ok());
            if pid.is_some_and(|pid| !alive(pid)) {
                std::fs::remove_dir_all(entry.path())
                    .with_context(|| format!("{}: cannot remove", entry.path().display()))?;
                done.push(entry.path());
            }
        }
    }
    Ok(done)
}

/// Every leftover of dead runs in `folder` (beside any output in it), removed or restored.
pub fn clean(folder: &Path) -> Result<Vec<PathBuf>> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(folder).with_context(|| format!("{}: cannot list", folder.display()))? {
        let file = entry?.file_name().to_string_lossy().into_owned();
        for mark in [STAGING, OLD] {
            if let Some((name, _)) = file.strip_prefix('.').and_then(|f| f.rsplit_once(&format!(".{mark}"))) {
                names.insert(name.to_string());
            }
        }
        if !file.starts_with('.') {
            names.insert(file);
        }
    }
    let mut done = Vec::new();
    for name in names {
        done.extend(recover(folder, &OsString::from(name))?);
    }
    Ok(done)
}

/// Refuses an `out` that is, contains or lies inside any of `inputs` (symlinks resolved).
pub fn refuse_overlap(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    let out_real = resolve(out);
    for input in inputs {
        let Ok(input_real) = input.canonicalize() else { continue };
        let why = if out_real == input_real {
            "is"
        } else if input_real.starts_with(&out_real) {
            "contains"
        } else if out_real.starts_with(&input_real) {
            "lies inside"
        } else {
            continue;
        };
        bail!(
            "--out {} {why} the input {}: fluxbuild never writes over its inputs; choose another place",
            out.display(),
            input.display()
        );
    }
    Ok(())
}

/// `path` with symlinks resolved as far as it exists, the rest appended.
fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut resolved = existing.canonicalize().unwrap_or_else(|_| existing.to_path_buf());
    resolved.extend(rest.iter().rev());
    resolved
}

/// The top-level entries of an existing `out` a fluxbuild manifest of `kind` owns (empty when
/// `out` is absent or empty). Anything else in `out`, or another kind, is refused.
fn check_existing(out: &Path, existing: Existing, kind: StageKind) -> Result<Vec<String>> {
    let entries: Vec<String> = match std::fs::read_dir(out) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) if std::fs::symlink_metadata(out).is_err() => return Ok(Vec::new()),
        Err(_) => bail!("--out {}: exists and is not a folder", out.display()),
    };
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let owned = owned_entries(out, kind)?;
    let foreign: Vec<&String> = entries.iter().filter(|e| !owned.contains(*e)).collect();
    if !foreign.is_empty() && existing != Existing::Update {
        let shown: Vec<&str> = foreign.iter().take(5).map(|s| s.as_str()).collect();
        bail!(
            "--out {}: holds {} that fluxbuild did not write ({}{}); refusing to replace it: choose an empty or new folder",
            out.display(),
            if foreign.len() == 1 { "an entry" } else { "entries" },
            shown.join(", "),
            if foreign.len() > 5 { ", ..." } else { "" }
        );
    }
    if existing == Existing::Refuse {
        bail!(
            "--out {}: already holds the result of an earlier `{}`; pass --force to replace it{}",
            out.display(),
            kind.command(),
            if kind == StageKind::Export {
                " (or --update to replace only what this run exports)"
            } else {
                ""
            }
        );
    }
    Ok(entries)
}

/// `manifest.json` plus the top-level entries its `files` list, for a manifest of `kind`.
fn owned_entries(out: &Path, kind: StageKind) -> Result<BTreeSet<String>> {
    /// The part of every stage's manifest that says what it owns.
    #[derive(serde::Deserialize)]
    struct Owner {
        kind: StageKind,
        files: Vec<FileEntry>,
    }
    let path = out.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|_| {
        anyhow::anyhow!(
            "--out {}: not empty and not a fluxbuild output (no manifest.json); refusing to touch it",
            out.display()
        )
    })?;
    let owner: Owner = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a fluxbuild manifest; refusing to touch the folder",
            path.display()
        )
    })?;
    if owner.kind != kind {
        bail!(
            "--out {}: holds the result of `{}`, not of `{}`; refusing to replace it",
            out.display(),
            owner.kind.command(),
            kind.command()
        );
    }
    let mut owned: BTreeSet<String> = owner
        .files
        .iter()
        .filter_map(|f| f.path.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    owned.insert("manifest.json".into());
    Ok(owned)
}

/// Hard links of every file under `from` at the same places under `to` (symlinks recreated).
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(from).with_context(|| format!("{}: cannot stat", from.display()))?;
    if meta.is_dir() {
        std::fs::create_dir_all(to).with_context(|| format!("{}: cannot create", to.display()))?;
        for entry in std::fs::read_dir(from).with_context(|| format!("{}: cannot list", from.display()))? {
            let entry = entry?;
            link_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
            .with_context(|| format!("{}: cannot create", to.display()))?;
    } else if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// Flushes every file and folder under `dir` to disk (a rename after a power loss must not
/// reveal empty files).
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            std::fs::File::open(entry.path())
                .and_then(|f| f.sync_all())
                .with_context(|| format!("{}: cannot flush", entry.path().display()))?;
        }
    }
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Atomically exchanges two paths; false where the filesystem cannot.
fn exchange(a: &Path, b: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    if std::env::var_os("FLUXBUILD_NO_EXCHANGE").is_some() {
        return Ok(false);
    }
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).expect("no NUL in paths");
    let (ca, cb) = (c(a), c(b));
    // SAFETY: two valid NUL-terminated paths relative to the current directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    match (r, last_errno()) {
        (0, _) => Ok(true),
        (_, libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot exchange {} and {}", a.display(), b.display())),
    }
}
