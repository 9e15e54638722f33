//! FluxTransformer2DModel (placeholder until the transformer exporter lands).
use super::{Analysis, Exporter, GraphOptions};
use crate::checkpoint::Checkpoint;
use crate::onnx::{Graph, Weights};
use anyhow::{bail, Result};
use serde_json::Value;

pub struct TransformerExporter;

impl Exporter for TransformerExporter {
    fn name(&self) -> &'static str {
        "transformer"
    }
    fn subfolder(&self) -> &'static str {
        "transformer"
    }
    fn key_prefixes(&self) -> &'static [&'static str] {
        &["model.diffusion_model."]
    }
    fn detect(&self, ckpt: &Checkpoint) -> bool {
        ckpt.contains("x_embedder.weight") || ckpt.contains("img_in.weight")
    }
    fn analyze(&self, _ckpt: &Checkpoint, _config: Option<&Value>) -> Result<Analysis> {
        bail!("transformer export is not implemented yet")
    }
    fn build<'a>(&self, _w: &Weights<'a>, _analysis: &Analysis, _options: &GraphOptions) -> Result<Graph<'a>> {
        bail!("transformer export is not implemented yet")
    }
}
