//! CLIP's tokenizer as the official FLUX.1 repositories ship it (`vocab.json` + `merges.txt`, what
//! the slow `CLIPTokenizer` reads) turned into the `tokenizer.json` that `CLIPTokenizerFast` writes:
//! the bundled CLIP-L tokenizer's pipeline (NFC, whitespace, lowercase, CLIP's split regex,
//! byte-level BPE with `</w>`, start/end tokens) with this folder's vocabulary and merges.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;

const START: &str = "<|startoftext|>";
const END: &str = "<|endoftext|>";

/// `tokenizer.json` bytes for the BPE in `dir`, on `template` (the bundled CLIP-L tokenizer.json).
pub fn tokenizer_json(dir: &Path, template: &[u8]) -> Result<Vec<u8>> {
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    let vocab: serde_json::Map<String, Value> = serde_json::from_slice(
        &std::fs::read(&vocab_path).with_context(|| format!("{}: cannot read", vocab_path.display()))?,
    )
    .with_context(|| format!("{}: not a JSON object of token -> id", vocab_path.display()))?;
    let merges = read_merges(&merges_path)?;
    let id = |token: &str| -> Result<u64> {
        vocab
            .get(token)
            .and_then(Value::as_u64)
            .with_context(|| format!("{}: no {token} token (not a CLIP vocabulary?)", vocab_path.display()))
    };
    let (start, end) = (id(START)?, id(END)?);

    let mut tokenizer: Value = serde_json::from_slice(template).context("the bundled CLIP tokenizer")?;
    tokenizer["model"]["vocab"] = Value::Object(vocab);
    tokenizer["model"]["merges"] = json!(merges);
    for added in tokenizer["added_tokens"].as_array_mut().into_iter().flatten() {
        match added["content"].as_str() {
            Some(START) => added["id"] = start.into(),
            Some(END) => added["id"] = end.into(),
            _ => {}
        }
    }
    tokenizer["post_processor"]["cls"] = json!([START, start]);
    tokenizer["post_processor"]["sep"] = json!([END, end]);
    Ok(serde_json::to_vec(&tokenizer)?)
}

/// Merge rules `a b`, one a line, after an optional `#version` line.
fn read_merges(path: &Path) -> Result<Vec<[String; 2]>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut merges = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.is_empty() || (number == 0 && line.starts_with("#version")) {
            continue;
        }
        let Some((a, b)) = line
            .split_once(' ')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains(' '))
        else {
            bail!(
                "{}: line {}: expected a merge rule `a b`, found {line:?}",
                path.display(),
                number + 1
            );
        };
        merges.push([a.to_string(), b.to_string()]);
    }
    if merges.is_empty() {
        bail!("{}: no merge rules", path.display());
    }
    Ok(merges)
}
