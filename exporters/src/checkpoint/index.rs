//! Shard indexes (`*.safetensors.index.json`): read once, within limits, checked for shape.

use super::safetensors_file::shorten;
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

/// Largest index we read (a real FLUX transformer index is about 100 KB).
const MAX_INDEX_BYTES: u64 = 64 << 20;
/// Longest shard file name.
const MAX_SHARD_NAME_BYTES: usize = 255;

/// The index's `weight_map` as (tensor, shard file name) pairs, in file order.
pub fn read_weight_map(index: &Path) -> Result<Vec<(String, String)>> {
    let mut text = String::new();
    std::fs::File::open(index)
        .with_context(|| format!("{}: cannot read", index.display()))?
        .take(MAX_INDEX_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("{}: cannot read (not UTF-8 text?)", index.display()))?;
    if text.len() as u64 > MAX_INDEX_BYTES {
        bail!(
            "{}: larger than {} MiB: not a shard index",
            index.display(),
            MAX_INDEX_BYTES >> 20
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: missing `weight_map` object", index.display()))?;
    let mut pairs = Vec::with_capacity(map.len());
    for (tensor, shard) in map {
        let Some(shard) = shard.as_str() else {
            bail!("{}: weight_map[{}] is not a string", index.display(), shorten(tensor));
        };
        if shard.len() > MAX_SHARD_NAME_BYTES {
            bail!(
                "{}: weight_map[{}] names shard {}, longer than a file name can be",
                index.display(),
                shorten(tensor),
                shorten(shard)
            );
        }
        pairs.push((tensor.clone(), shard.to_string()));
    }
    if pairs.is_empty() {
        bail!("{}: weight_map is empty", index.display());
    }
    Ok(pairs)
}
