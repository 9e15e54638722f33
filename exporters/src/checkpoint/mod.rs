//! Stage 1 input: FLUX checkpoints as memory-mapped safetensors.

pub mod all_in_one;
pub mod diagnose;
mod dtype;
mod index;
mod locate;
mod safetensors_file;
mod scaled_fp8;

pub use dtype::DType;
pub use index::read_weight_map;
pub use locate::{check_pipeline_index, locate, Located, SourceKind};
pub use safetensors_file::{
    parse_header, refuse_pickle_name, require_regular_file, shorten, why_not_a_file, SafetensorsFile, TensorInfo,
};
pub use scaled_fp8::ScaledFp8;

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// All tensors of one submodel, possibly spread over shards, with a key prefix stripped.
pub struct Checkpoint {
    pub located: Located,
    pub files: Vec<SafetensorsFile>,
    /// Tensor name (prefix stripped) -> (file index, info).
    tensors: BTreeMap<String, (usize, TensorInfo)>,
    /// The prefix that was stripped from every key ("" if none).
    pub prefix: String,
    /// The key root of this submodel's part when the file is an all-in-one checkpoint.
    pub all_in_one_part: Option<String>,
    /// Set for ComfyUI scaled-fp8 files, whose weights are dequantized on load.
    pub scaled_fp8: Option<ScaledFp8>,
    /// Dequantization multiplier of each scaled weight, by name.
    scales: BTreeMap<String, f32>,
}

/// A borrowed view of one tensor.
#[derive(Clone, Copy)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub file: &'a SafetensorsFile,
    pub info: &'a TensorInfo,
    /// Scaled-fp8 weights: the stored values times this are the real ones.
    pub scale: Option<f32>,
}

impl<'a> TensorRef<'a> {
    pub fn shape(&self) -> &'a [usize] {
        &self.info.shape
    }
    pub fn dtype(&self) -> DType {
        self.info.dtype
    }
    pub fn bytes(&self) -> &'a [u8] {
        self.file.bytes(self.info)
    }
    /// The whole tensor as f32 (for small tensors and tests; exporters stream instead).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = Vec::new();
        self.decode_into(self.bytes(), &mut out);
        out
    }
    /// Decodes `bytes` (a row range of this tensor) to the real values, dequantized if scaled.
    pub fn decode_into(&self, bytes: &[u8], out: &mut Vec<f32>) {
        let start = out.len();
        self.dtype().decode_into(bytes, out);
        if let Some(scale) = self.scale {
            out[start..].iter_mut().for_each(|v| *v *= scale);
        }
    }
    pub fn release(&self) {
        self.file.release(self.info)
    }
    pub fn prefetch(&self) {
        self.file.prefetch(self.info)
    }
    pub fn populate(&self) {
        self.file.populate(self.info)
    }
}

impl Checkpoint {
    /// Opens the submodel of diffusers folder `subfolder` (which names its part of an all-in-one
    /// file). The first of `prefixes` that any key carries is stripped from every key that has it,
    /// so prefixed and bare layouts look the same downstream.
    pub fn open(located: Located, subfolder: &str, prefixes: &[&str]) -> Result<Checkpoint> {
        for path in &located.files {
            if let Some(what) = diagnose::foreign_file(path, &file_head(path)) {
                bail!(what);
            }
        }
        let files: Vec<SafetensorsFile> = located
            .files
            .iter()
            .map(|p| SafetensorsFile::open(p))
            .collect::<Result<_>>()?;
        let all_in_one_part = all_in_one_root(&files, subfolder)?;
        let part = all_in_one_part.as_deref().unwrap_or("");
        let in_part = |name: &str| -> Option<String> {
            let rest = name.strip_prefix(part)?;
            (part.is_empty() || !all_in_one::belongs_elsewhere(name, part)).then(|| rest.to_string())
        };
        let prefix = prefixes
            .iter()
            .find(|p| {
                files
                    .iter()
                    .any(|f| f.tensors.keys().filter_map(|k| in_part(k)).any(|k| k.starts_with(*p)))
            })
            .map(|p| p.to_string())
            .unwrap_or_default();
        let mut tensors = BTreeMap::new();
        for (index, file) in files.iter().enumerate() {
            for (name, info) in &file.tensors {
                let Some(name) = in_part(name) else { continue };
                let key = name.strip_prefix(prefix.as_str()).unwrap_or(&name).to_string();
                if let Some((other, _)) = tensors.insert(key.clone(), (index, info.clone())) {
                    bail!(
                        "tensor {key} is stored twice: in {} and {}",
                        files[other].path.display(),
                        file.path.display()
                    );
                }
            }
        }
        let (scaled_fp8, scales) = match scaled_fp8::take_scales(&mut tensors, &files)? {
            Some((summary, scales)) => (Some(summary), scales),
            None => (None, BTreeMap::new()),
        };
        let checkpoint = Checkpoint {
            located,
            files,
            tensors,
            prefix: format!("{part}{prefix}"),
            all_in_one_part,
            scaled_fp8,
            scales,
        };
        checkpoint.check_index()?;
        Ok(checkpoint)
    }

    /// Convenience: locate + open.
    pub fn load(path: &Path, subfolder: &str, prefixes: &[&str]) -> Result<Checkpoint> {
        Checkpoint::open(locate(path, subfolder)?, subfolder, prefixes)
    }

    /// A shard index must not lie about where tensors are.
    fn check_index(&self) -> Result<()> {
        let Some(index) = &self.located.index else {
            return Ok(());
        };
        for (tensor, shard) in read_weight_map(index)? {
            let key = tensor.strip_prefix(self.prefix.as_str()).unwrap_or(&tensor);
            let found = self
                .tensors
                .get(key)
                .map(|(i, _)| self.files[*i].path.file_name().unwrap().to_owned());
            if found.as_deref().and_then(|f| f.to_str()) != Some(shard.as_str()) {
                bail!(
                    "{}: index says tensor {} is in {}, but {}",
                    index.display(),
                    shorten(&tensor),
                    shorten(&shard),
                    found.map_or("no shard holds it".to_string(), |f| format!(
                        "it is in {}",
                        f.to_string_lossy()
                    ))
                );
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        self.tensors.get_key_value(name).map(|(key, (file, info))| TensorRef {
            name: key,
            file: &self.files[*file],
            info,
            scale: self.scales.get(key).copied(),
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|k| k.as_str())
    }

    pub fn tensors(&self) -> impl Iterator<Item = TensorRef<'_>> {
        self.tensors.iter().map(|(key, (file, info))| TensorRef {
            name: key,
            file: &self.files[*file],
            info,
            scale: self.scales.get(key).copied(),
        })
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn param_count(&self) -> u64 {
        self.tensors.values().map(|(_, t)| t.numel() as u64).sum()
    }

    pub fn byte_count(&self) -> u64 {
        self.tensors.values().map(|(_, t)| (t.end - t.start) as u64).sum()
    }

    pub fn dtypes(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (_, t) in self.tensors.values() {
            *counts.entry(t.dtype.name().to_string()).or_default() += 1;
        }
        counts
    }

    /// `config.json` of the component (or beside a single file), if there is one.
    pub fn config(&self) -> Result<Option<serde_json::Value>> {
        read_json(self.located.config.as_deref())
    }

    /// First-level names under a prefix, e.g. the block indices of `transformer_blocks.`.
    pub fn indices_under(&self, prefix: &str) -> BTreeSet<usize> {
        self.names()
            .filter_map(|n| n.strip_prefix(prefix))
            .filter_map(|rest| rest.split('.').next()?.parse().ok())
            .collect()
    }

    pub fn source_files(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }
}

/// The key root of `subfolder`'s part when `files` form an all-in-one checkpoint (keys under the
/// roots of two or more submodels); an error when that part is not in it.
fn all_in_one_root(files: &[SafetensorsFile], subfolder: &str) -> Result<Option<String>> {
    let names = files.iter().flat_map(|f| f.tensors.keys().map(String::as_str));
    let present = all_in_one::parts_present(names);
    if present.len() < 2 {
        return Ok(None);
    }
    let Some(root) = all_in_one::root_of(subfolder) else {
        return Ok(None);
    };
    let file = &files[0].path;
    if !files.iter().any(|f| f.tensors.keys().any(|k| k.starts_with(root))) {
        bail!(
            "{}: an all-in-one checkpoint with {} but no tensors under `{root}`: give this submodel's own file",
            file.display(),
            present.join(", ")
        );
    }
    Ok(Some(root.to_string()))
}

/// The first bytes of a file (empty when unreadable: opening it then says why).
fn file_head(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut head = Vec::new();
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.take(32).read_to_end(&mut head);
    }
    head
}

/// Reads an optional JSON file (a `--config` override or a `config.json`).
pub fn read_json(path: Option<&Path>) -> Result<Option<serde_json::Value>> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    Ok(Some(value))
}
