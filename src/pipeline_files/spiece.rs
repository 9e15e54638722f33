//! T5's tokenizer as a SentencePiece model (`spiece.model`, what the slow `T5Tokenizer` reads)
//! turned into the `tokenizer.json` that `T5TokenizerFast` writes: the bundled T5 v1.1
//! tokenizer's pipeline with this model's pieces and scores, then the 100 `<extra_id_N>` tokens
//! (N descending), as transformers' converter lays them out.

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::path::Path;

/// How many `<extra_id_N>` sentinel tokens T5 tokenizers append.
const EXTRA_IDS: usize = 100;

/// `tokenizer.json` bytes for `dir/spiece.model`, on `template` (the bundled T5 tokenizer.json).
pub fn tokenizer_json(dir: &Path, template: &[u8]) -> Result<Vec<u8>> {
    let path = &dir.join("spiece.model");
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let pieces = pieces(&bytes).with_context(|| format!("{}: not a SentencePiece model", path.display()))?;
    let mut vocab: Vec<(String, f32)> = pieces;
    vocab.extend((0..EXTRA_IDS).rev().map(|i| (format!("<extra_id_{i}>"), 0.0)));
    let id = |token: &str| vocab.iter().position(|(p, _)| p == token);

    let mut tokenizer: Value = serde_json::from_slice(template).context("the bundled T5 tokenizer")?;
    for added in tokenizer["added_tokens"].as_array_mut().into_iter().flatten() {
        let content = added["content"].as_str().unwrap_or_default().to_string();
        let Some(found) = id(&content) else {
            bail!("{}: no {content} piece (not a T5 tokenizer?)", path.display());
        };
        added["id"] = found.into();
    }
    let unk = id("<unk>").with_context(|| format!("{}: no <unk> piece", path.display()))?;
    tokenizer["model"]["unk_id"] = unk.into();
    tokenizer["model"]["vocab"] = json!(vocab);
    Ok(serde_json::to_vec(&tokenizer)?)
}

/// The (piece, score) list of a SentencePiece `ModelProto` (field 1: repeated `SentencePiece`
/// {1: piece, 2: score}); every other field is skipped.
fn pieces(bytes: &[u8]) -> Result<Vec<(String, f32)>> {
    let mut pieces = Vec::new();
    for (field, value) in fields(bytes)? {
        if let (1, Wire::Bytes(message)) = (field, value) {
            let (mut piece, mut score) = (None, 0.0);
            for (field, value) in fields(message)? {
                match (field, value) {
                    (1, Wire::Bytes(text)) => piece = Some(String::from_utf8(text.to_vec())?),
                    (2, Wire::Fixed32(bits)) => score = f32::from_bits(bits),
                    _ => {}
                }
            }
            pieces.push((piece.context("a piece without text")?, score));
        }
    }
    ensure!(!pieces.is_empty(), "no pieces");
    Ok(pieces)
}

/// A field's value, as far as piece reading needs it.
enum Wire<'a> {
    Other,
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// The (field number, value) pairs of one protobuf message.
fn fields(mut bytes: &[u8]) -> Result<Vec<(u64, Wire<'_>)>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let value = match key & 7 {
            0 => {
                varint(&mut bytes)?;
                Wire::Other
            }
            1 => {
                ensure!(bytes.len() >= 8, "truncated");
                bytes = &bytes[8..];
                Wire::Other
            }
            2 => {
                let len = varint(&mut bytes)? as usize;
                ensure!(bytes.len() >= len, "truncated");
                let (value, rest) = bytes.split_at(len);
                bytes = rest;
                Wire::Bytes(value)
            }
            5 => {
                ensure!(bytes.len() >= 4, "truncated");
                let value = u32::from_le_bytes(bytes[..4].try_into().unwrap());
                bytes = &bytes[4..];
                Wire::Fixed32(value)
            }
            other => bail!("unknown wire type {other}"),
        };
        out.push((key >> 3, value));
    }
    Ok(out)
}

fn varint(bytes: &mut &[u8]) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first().context("truncated")?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("varint too long")
}
