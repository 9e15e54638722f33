//! The tokenizers that ship inside the fluxbuild binary (gzip-compressed `tokenizer.json` files
//! under `assets/tokenizers/`; provenance in its README).

use anyhow::{Context, Result};
use std::io::Read;

pub const CLIP_NAME: &str = "CLIP-L/14 BPE tokenizer (openai/clip-vit-large-patch14)";
pub const T5_NAME: &str = "T5 v1.1 SentencePiece tokenizer (google/t5-v1_1-xxl)";

const CLIP_GZ: &[u8] = include_bytes!("../../assets/tokenizers/clip-l.tokenizer.json.gz");
const T5_GZ: &[u8] = include_bytes!("../../assets/tokenizers/t5-v1_1-xxl.tokenizer.json.gz");

pub fn clip_tokenizer_json() -> Result<Vec<u8>> {
    gunzip(CLIP_GZ).context("the bundled CLIP tokenizer")
}

pub fn t5_tokenizer_json() -> Result<Vec<u8>> {
    gunzip(T5_GZ).context("the bundled T5 tokenizer")
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}
