//! One memory-mapped safetensors file with a fully validated header.
//!
//! Only the header is read eagerly; tensor bytes are paged in from the mapping when asked for
//! and can be released again (`release`) so streaming a 24 GB file keeps the resident set small.

use super::dtype::DType;
use anyhow::{anyhow, bail, Context, Result};
use memmap2::{Advice, Mmap, UncheckedAdvice};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Where one tensor lives inside a file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

pub struct SafetensorsFile {
    pub path: PathBuf,
    mmap: Mmap,
    pub tensors: BTreeMap<String, TensorInfo>,
    /// The free-form `__metadata__` entry, if any.
    pub metadata: BTreeMap<String, String>,
}

/// Largest header we accept (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        refuse_pickle_name(path)?;
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let file_len = file
            .metadata()
            .with_context(|| format!("{}: cannot stat", path.display()))?
            .len();
        if file_len < 8 {
            bail!(
                "{}: truncated safetensors file ({file_len} bytes; the 8-byte header length is missing)",
                path.display()
            );
        }
        // SAFETY: the mapping is read-only; a checkpoint modified while we export it is the user's race.
        let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot memory-map", path.display()))?;
        refuse_pickle_magic(path, &mmap)?;
        let header_len = u64::from_le_bytes(mmap[..8].try_into().unwrap());
        if header_len > MAX_HEADER || 8 + header_len > file_len {
            bail!(
                "{}: header length {header_len} goes beyond the file ({file_len} bytes): truncated or not a safetensors file",
                path.display()
            );
        }
        let header = &mmap[8..8 + header_len as usize];
        let (tensors, metadata) = parse_header(header, 8 + header_len as usize, file_len as usize)
            .with_context(|| format!("{}: invalid safetensors header", path.display()))?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            mmap,
            tensors,
            metadata,
        })
    }

    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.start..info.end]
    }

    /// Asks the kernel to start reading `info` from disk in the background.
    pub fn prefetch(&self, info: &TensorInfo) {
        let _ = self
            .mmap
            .advise_range(Advice::WillNeed, info.start, info.end - info.start);
    }

    /// Maps all pages of `info` in one call (instead of one page fault per 4 KiB when read).
    pub fn populate(&self, info: &TensorInfo) {
        let _ = self
            .mmap
            .advise_range(Advice::PopulateRead, info.start, info.end - info.start);
    }

    /// Drops the pages of `info` from this process's resident set (the page cache keeps them).
    pub fn release(&self, info: &TensorInfo) {
        // Page-align inward; the few shared boundary pages stay mapped.
        let page = 4096;
        let start = info.start.div_ceil(page) * page;
        let end = info.end / page * page;
        if end > start {
            // SAFETY: the mapping is private and read-only, so DONTNEED only drops clean pages, which
            // are re-read from the file if touched again; no slice into them outlives this call's users.
            unsafe {
                let _ = self
                    .mmap
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start);
            }
        }
    }
}

fn parse_header(
    header: &[u8],
    data_start: usize,
    file_len: usize,
) -> Result<(BTreeMap<String, TensorInfo>, BTreeMap<String, String>)> {
    let json: serde_json::Value = serde_json::from_slice(header).map_err(|e| anyhow!("header is not JSON: {e}"))?;
    let entries = json.as_object().ok_or_else(|| anyhow!("header is not a JSON object"))?;
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, entry) in entries {
        if name == "__metadata__" {
            if let Some(map) = entry.as_object() {
                for (k, v) in map {
                    metadata.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                }
            }
            continue;
        }
        let field = |key: &str| {
            entry
                .get(key)
                .ok_or_else(|| anyhow!("tensor {name}: missing field `{key}`"))
        };
        let dtype = DType::parse(field("dtype")?.as_str().unwrap_or("?")).with_context(|| format!("tensor {name}"))?;
        let shape: Vec<usize> = serde_json::from_value(field("shape")?.clone())
            .map_err(|_| anyhow!("tensor {name}: `shape` must be a list of non-negative integers"))?;
        let offsets: [usize; 2] = serde_json::from_value(field("data_offsets")?.clone())
            .map_err(|_| anyhow!("tensor {name}: `data_offsets` must be two non-negative integers"))?;
        let [begin, end] = offsets;
        let numel = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let expected = numel.and_then(|n| n.checked_mul(dtype.size()));
        if end < begin || Some(end - begin) != expected {
            bail!(
                "tensor {name}: data_offsets [{begin}, {end}] hold {} bytes but shape {shape:?} of {dtype} needs {}",
                end.saturating_sub(begin),
                expected.map_or("an impossible number of".to_string(), |e| e.to_string())
            );
        }
        if data_start + end > file_len {
            bail!(
                "tensor {name}: data_offsets [{begin}, {end}] end beyond the file (data section is {} bytes): truncated file?",
                file_len - data_start
            );
        }
        tensors.insert(
            name.clone(),
            TensorInfo {
                dtype,
                shape,
                start: data_start + begin,
                end: data_start + end,
            },
        );
    }
    check_no_overlap(&tensors, data_start)?;
    Ok((tensors, metadata))
}

fn check_no_overlap(tensors: &BTreeMap<String, TensorInfo>, data_start: usize) -> Result<()> {
    let mut spans: Vec<(&String, &TensorInfo)> = tensors.iter().filter(|(_, t)| t.end > t.start).collect();
    spans.sort_by_key(|(_, t)| t.start);
    for pair in spans.windows(2) {
        let ((a, ta), (b, tb)) = (pair[0], pair[1]);
        if tb.start < ta.end {
            bail!(
                "tensors {a} [{}, {}] and {b} [{}, {}] overlap",
                ta.start - data_start,
                ta.end - data_start,
                tb.start - data_start,
                tb.end - data_start
            );
        }
    }
    Ok(())
}

/// PyTorch pickles can execute code when loaded: fluxbuild never opens them.
pub fn refuse_pickle_name(path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if matches!(ext.as_str(), "ckpt" | "pt" | "pth" | "bin" | "pkl" | "pickle") {
        bail!(
            "{}: refusing a pickle checkpoint (.{ext}): pickles can run arbitrary code when loaded; \
             convert it to .safetensors with a trusted tool first",
            path.display()
        );
    }
    Ok(())
}

fn refuse_pickle_magic(path: &Path, bytes: &[u8]) -> Result<()> {
    // torch.save writes a zip archive ("PK\x03\x04") or a raw pickle (protocol 2+: 0x80 0x02..0x05).
    if bytes.starts_with(b"PK\x03\x04") || (bytes[0] == 0x80 && (2..=5).contains(&bytes[1])) {
        bail!(
            "{}: this is a PyTorch pickle/zip checkpoint, not safetensors; refusing to load it",
            path.display()
        );
    }
    Ok(())
}
