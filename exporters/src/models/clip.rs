//! CLIPTextModel (placeholder until the CLIP exporter lands).
use super::{Analysis, Exporter, GraphOptions};
use crate::checkpoint::Checkpoint;
use crate::onnx::{Graph, Weights};
use anyhow::{bail, Result};
use serde_json::Value;

pub struct ClipExporter;

impl Exporter for ClipExporter {
    fn name(&self) -> &'static str {
        "clip"
    }
    fn subfolder(&self) -> &'static str {
        "text_encoder"
    }
    fn key_prefixes(&self) -> &'static [&'static str] {
        &["text_model."]
    }
    fn detect(&self, ckpt: &Checkpoint) -> bool {
        ckpt.names().any(|n| n.starts_with("encoder.layers.0.self_attn") || n.contains("embeddings.token_embedding"))
    }
    fn analyze(&self, _ckpt: &Checkpoint, _config: Option<&Value>) -> Result<Analysis> {
        bail!("CLIP export is not implemented yet")
    }
    fn build<'a>(&self, _w: &Weights<'a>, _analysis: &Analysis, _options: &GraphOptions) -> Result<Graph<'a>> {
        bail!("CLIP export is not implemented yet")
    }
}
