//! File plumbing shared by every stage: atomic writes and sha256.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A file written under a temporary name (`NAME.tmp-PID-N`, new for every file: two writers of
/// one path never share it, nor clobber a file of that name) and renamed into place by `commit`.
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
        static CREATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp-{}-{n}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let file = options
            .clone()
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("{}: cannot create (writing {})", path.display(), tmp.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two writers of one path, interleaved: each commits its whole content (the last rename
    /// wins), and a user's file named like an old temporary (`x.png.tmp`) is not touched.
    #[test]
    fn writers_of_one_path_never_share_a_temporary_file() {
        let dir = std::env::temp_dir().join(format!("fluxbuild-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.png");
        std::fs::write(dir.join("x.png.tmp"), b"mine").unwrap();
        let mut first = AtomicFile::create(&path).unwrap();
        let mut second = AtomicFile::create(&path).unwrap();
        first.write_all(b"first, longer content").unwrap();
        second.write_all(b"second").unwrap();
        first.write_all(b" and more").unwrap();
        second.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        first.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first, longer content and more");
        assert_eq!(std::fs::read(dir.join("x.png.tmp")).unwrap(), b"mine");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
