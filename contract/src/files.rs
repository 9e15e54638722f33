//! File plumbing shared by every stage: atomic writes and sha256.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A file written under a temporary name (`NAME.tmp`) and renamed into place by `commit`.
/// Dropped without `commit` (an error on the way), the temporary file is removed.
pub struct AtomicFile {
    file: Option<File>,
    tmp: PathBuf,
    path: PathBuf,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        AtomicFile::create_with(path, &options)
    }

    /// Creates the temporary file with `options` (e.g. O_DIRECT flags).
    pub fn create_with(path: &Path, options: &std::fs::OpenOptions) -> Result<AtomicFile> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = options
            .open(&tmp)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        Ok(AtomicFile {
            file: Some(file),
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// Turns O_DIRECT on or off for the open file.
    pub fn set_direct(&mut self, direct: bool) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_ref().expect("not committed").as_raw_fd();
        // SAFETY: fcntl on a file descriptor this struct owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        let flags = if direct {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("committed once");
        file.sync_all()
            .with_context(|| format!("{}: cannot flush", self.tmp.display()))?;
        drop(file);
        let renamed = std::fs::rename(&self.tmp, &self.path);
        if renamed.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        renamed.with_context(|| format!("cannot rename {} to {}", self.tmp.display(), self.path.display()))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("not committed").write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)
        .with_context(|| format!("{}: write failed", path.display()))?;
    file.commit()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file, read in 8 MiB chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("{}: read failed", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}
