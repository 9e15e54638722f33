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
/// Longest tensor name (real ones are under 100 bytes).
const MAX_NAME_BYTES: usize = 1024;
/// Most dimensions a tensor may have (FLUX tensors have at most 4).
const MAX_RANK: usize = 8;
/// Longest dtype string ("F8_E4M3" and friends are 7 bytes).
const MAX_DTYPE_BYTES: usize = 16;

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        refuse_pickle_name(path)?;
        require_regular_file(path)?;
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
        // header_len <= MAX_HEADER first, so `8 + header_len` cannot overflow.
        if header_len > MAX_HEADER || 8 + header_len > file_len {
            bail!(
                "{}: header length {header_len} goes beyond the file ({file_len} bytes) or the 100 MB limit: truncated or not a safetensors file",
                path.display()
            );
        }
        let header = &mmap[8..8 + header_len as usize];
        let (tensors, metadata) = parse_header(header, 8 + header_len, file_len)
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

/// Parses and validates a header: every entry well-formed and within the limits, and the
/// tensors tiling the data section `[data_start, file_len)` exactly (no gap, no overlap, no
/// trailing byte), as the reference loader requires. A header length off by a few bytes shifts
/// every tensor; exact tiling is what catches it.
pub fn parse_header(
    header: &[u8],
    data_start: u64,
    file_len: u64,
) -> Result<(BTreeMap<String, TensorInfo>, BTreeMap<String, String>)> {
    let entries: Entries = serde_json::from_slice(header).map_err(|e| anyhow!("header is not a JSON object: {e}"))?;
    let data_len = file_len
        .checked_sub(data_start)
        .ok_or_else(|| anyhow!("the header ends beyond the file"))?;
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, entry) in entries.0 {
        if name == "__metadata__" {
            metadata = parse_metadata(entry)?;
            continue;
        }
        if name.len() > MAX_NAME_BYTES {
            bail!(
                "tensor name {} is {} bytes long (at most {MAX_NAME_BYTES})",
                shorten(&name),
                name.len()
            );
        }
        let info = parse_entry(&name, &entry, data_start, data_len)?;
        if tensors.insert(name.clone(), info).is_some() {
            bail!("tensor {} is listed twice in the header", shorten(&name));
        }
    }
    check_tiling(&tensors, data_start, data_len)?;
    Ok((tensors, metadata))
}

/// One tensor's entry: `{"dtype": .., "shape": [..], "data_offsets": [begin, end]}`.
fn parse_entry(name: &str, entry: &serde_json::Value, data_start: u64, data_len: u64) -> Result<TensorInfo> {
    let name = shorten(name);
    let field = |key: &str| {
        entry
            .get(key)
            .ok_or_else(|| anyhow!("tensor {name}: missing field `{key}`"))
    };
    let dtype = match field("dtype")?.as_str() {
        Some(s) if s.len() <= MAX_DTYPE_BYTES => DType::parse(s).with_context(|| format!("tensor {name}"))?,
        Some(s) => bail!("tensor {name}: dtype {} is not a safetensors dtype", shorten(s)),
        None => bail!("tensor {name}: `dtype` must be a string"),
    };
    let shape = field("shape")?
        .as_array()
        .ok_or_else(|| anyhow!("tensor {name}: `shape` must be a list of non-negative integers"))?;
    if shape.len() > MAX_RANK {
        bail!(
            "tensor {name}: shape has {} dimensions (at most {MAX_RANK})",
            shape.len()
        );
    }
    let shape: Vec<usize> = shape
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow!("tensor {name}: `shape` must be a list of non-negative integers"))?;
    let offsets: [u64; 2] = serde_json::from_value(field("data_offsets")?.clone())
        .map_err(|_| anyhow!("tensor {name}: `data_offsets` must be two non-negative integers"))?;
    let [begin, end] = offsets;
    let expected = shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64));
    if end < begin || Some(end - begin) != expected {
        bail!(
            "tensor {name}: data_offsets [{begin}, {end}] hold {} bytes but shape {shape:?} of {dtype} needs {}",
            end.saturating_sub(begin),
            expected.map_or("an impossible number of".to_string(), |e| e.to_string())
        );
    }
    if end > data_len {
        bail!("tensor {name}: data_offsets [{begin}, {end}] end beyond the file (data section is {data_len} bytes): truncated file?");
    }
    // Both fit the file now, so the sums below cannot overflow and fit a usize (the file is mapped).
    Ok(TensorInfo {
        dtype,
        shape,
        start: (data_start + begin) as usize,
        end: (data_start + end) as usize,
    })
}

/// `__metadata__`: a map of strings to strings, as the format says.
fn parse_metadata(entry: serde_json::Value) -> Result<BTreeMap<String, String>> {
    let serde_json::Value::Object(map) = entry else {
        bail!("`__metadata__` must be an object of strings");
    };
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(v) => Ok((k, v)),
            _ => bail!("`__metadata__` entry {} is not a string", shorten(&k)),
        })
        .collect()
}

/// In offset order every tensor starts where the previous ended, the first at 0, the last at the
/// end of the data section. Overlaps are reported before gaps (an overlap also leaves a gap).
fn check_tiling(tensors: &BTreeMap<String, TensorInfo>, data_start: u64, data_len: u64) -> Result<()> {
    let mut spans: Vec<(&String, u64, u64)> = tensors
        .iter()
        .map(|(name, t)| (name, t.start as u64 - data_start, t.end as u64 - data_start))
        .collect();
    spans.sort_by_key(|&(_, start, end)| (start, end));
    let mut covered = 0u64;
    let mut gap = None;
    for pair in spans.windows(2) {
        let ((a, a_start, a_end), (b, b_start, b_end)) = (pair[0], pair[1]);
        if b_start < a_end {
            bail!(
                "tensors {} [{a_start}, {a_end}] and {} [{b_start}, {b_end}] overlap",
                shorten(a),
                shorten(b)
            );
        }
    }
    for &(name, start, end) in &spans {
        if start > covered && gap.is_none() {
            gap = Some((covered, start, name));
        }
        covered = end;
    }
    if let Some((from, to, name)) = gap {
        bail!(
            "bytes [{from}, {to}) of the data section belong to no tensor (before tensor {}): \
             a corrupted header or a wrong header length",
            shorten(name)
        );
    }
    if covered != data_len {
        bail!(
            "{} byte(s) after the last tensor belong to no tensor (the data section is {data_len} bytes, \
             the tensors cover {covered}): a wrong header length or a corrupted file",
            data_len - covered
        );
    }
    Ok(())
}

/// Header entries in file order, duplicates kept (a `serde_json::Map` would silently keep one).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Entries, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// An untrusted string for an error message: control characters escaped, cut after 64 characters.
pub fn shorten(text: &str) -> String {
    const KEEP: usize = 64;
    let escaped: String = text.chars().take(KEEP).flat_map(char::escape_debug).collect();
    let total = text.chars().count();
    if total > KEEP {
        format!("{escaped}... ({} bytes)", text.len())
    } else {
        escaped
    }
}

/// A checkpoint path must be (or link to) a regular file; each way it is not gets its own message.
pub fn require_regular_file(path: &Path) -> Result<()> {
    match why_not_a_file(path) {
        Some(reason) => bail!("{}: {reason}", path.display()),
        None => Ok(()),
    }
}

/// Why `path` is not a readable regular file (None when it is one).
pub fn why_not_a_file(path: &Path) -> Option<String> {
    let link = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => return Some(io_reason(&e, "does not exist")),
    };
    let target = link.file_type().is_symlink().then(|| {
        std::fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_default()
    });
    let via = target
        .as_ref()
        .map_or(String::new(), |t| format!(" (a symlink to {})", shorten(t)));
    let resolved = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Some(format!("is a symlink loop{via}: it never reaches a file"))
        }
        Err(e) => {
            return Some(format!(
                "{}{via}",
                io_reason(&e, "is a symlink whose target does not exist")
            ))
        }
    };
    if resolved.is_dir() {
        Some(format!("is a folder{via}, not a safetensors file"))
    } else if !resolved.is_file() {
        Some(format!("is a device or special file{via}, not a safetensors file"))
    } else {
        None
    }
}

fn io_reason(e: &std::io::Error, not_found: &str) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => not_found.to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => format!("cannot be read: {e}"),
    }
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
