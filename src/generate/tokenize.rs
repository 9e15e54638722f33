//! Prompt -> token ids as FluxPipeline's tokenizers produce them (`padding="max_length"`,
//! `truncation=True`), from the `tokenizer.json` files `fluxbuild export` copies out of the pipeline.

use anyhow::{anyhow, Context, Result};
use std::path::Path;
use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// CLIP's fixed context length.
pub const CLIP_LENGTH: usize = 77;
/// What FluxPipeline's tokenizers pad with (CLIP: its end-of-text token, 49407 in CLIP-L; T5: id 0).
pub const CLIP_PAD_TOKEN: &str = "<|endoftext|>";
pub const T5_PAD_TOKEN: &str = "<pad>";

/// One of the two text encoders' tokenizers.
pub struct PromptTokenizer {
    /// "CLIP" or "T5", for messages.
    pub encoder: &'static str,
    tokenizer: Tokenizer,
    length: usize,
    pad_id: u32,
}

/// Token ids [batch, length] and, per truncated prompt, a message saying what was dropped.
pub struct Tokens {
    pub ids: Vec<i64>,
    pub length: usize,
    pub warnings: Vec<String>,
}

impl PromptTokenizer {
    /// CLIP: 77 tokens, padded with its end-of-text token (`<|endoftext|>`, 49407 in CLIP-L).
    pub fn clip(path: &Path) -> Result<PromptTokenizer> {
        PromptTokenizer::load("CLIP", path, CLIP_LENGTH, CLIP_PAD_TOKEN)
    }

    /// T5: `length` tokens (the pipeline's max_sequence_length), `</s>` then `<pad>` (0).
    pub fn t5(path: &Path, length: usize) -> Result<PromptTokenizer> {
        PromptTokenizer::load("T5", path, length, T5_PAD_TOKEN)
    }

    fn load(encoder: &'static str, path: &Path, length: usize, pad_token: &str) -> Result<PromptTokenizer> {
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: cannot load the {encoder} tokenizer: {e}", path.display()))?;
        let pad_id = tokenizer
            .token_to_id(pad_token)
            .with_context(|| format!("{}: the {encoder} tokenizer has no {pad_token} token", path.display()))?;
        // Settings stored in the file are replaced by the pipeline's own.
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| anyhow!("{e}"))?;
        Ok(PromptTokenizer {
            encoder,
            tokenizer,
            length,
            pad_id,
        })
    }

    /// Encodes a batch; prompts longer than the context are truncated (and reported).
    pub fn encode(&self, prompts: &[String]) -> Result<Tokens> {
        let fail = |e| anyhow!("{} tokenizer failed: {e}", self.encoder);
        let full = self.tokenizer.encode_batch(prompts.to_vec(), true).map_err(fail)?;
        let mut fitted = self.tokenizer.clone();
        fitted
            .with_truncation(Some(TruncationParams {
                max_length: self.length,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("{e}"))?;
        fitted.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(self.length),
            direction: PaddingDirection::Right,
            pad_id: self.pad_id,
            pad_token: self.tokenizer.id_to_token(self.pad_id).unwrap_or_default(),
            ..Default::default()
        }));
        let encodings = fitted.encode_batch(prompts.to_vec(), true).map_err(fail)?;
        let mut warnings = Vec::new();
        for (i, encoding) in full.iter().enumerate() {
            let dropped = encoding.len().saturating_sub(self.length);
            if dropped > 0 {
                warnings.push(format!(
                    "prompt {i}: {dropped} of its {} {} tokens were dropped (the {} encoder reads {} tokens)",
                    encoding.len(),
                    self.encoder,
                    self.encoder,
                    self.length
                ));
            }
        }
        let ids = encodings
            .iter()
            .flat_map(|e| e.get_ids().iter().map(|&id| id as i64))
            .collect::<Vec<_>>();
        debug_assert_eq!(ids.len(), prompts.len() * self.length);
        Ok(Tokens {
            ids,
            length: self.length,
            warnings,
        })
    }
}
