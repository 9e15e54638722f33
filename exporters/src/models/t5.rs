//! T5EncoderModel (placeholder until the T5 exporter lands).
use super::{Analysis, Exporter, GraphOptions};
use crate::checkpoint::Checkpoint;
use crate::onnx::{Graph, Weights};
use anyhow::{bail, Result};
use serde_json::Value;

pub struct T5Exporter;

impl Exporter for T5Exporter {
    fn name(&self) -> &'static str {
        "t5"
    }
    fn subfolder(&self) -> &'static str {
        "text_encoder_2"
    }
    fn key_prefixes(&self) -> &'static [&'static str] {
        &[]
    }
    fn detect(&self, ckpt: &Checkpoint) -> bool {
        ckpt.contains("encoder.block.0.layer.0.SelfAttention.q.weight")
    }
    fn analyze(&self, _ckpt: &Checkpoint, _config: Option<&Value>) -> Result<Analysis> {
        bail!("T5 export is not implemented yet")
    }
    fn build<'a>(&self, _w: &Weights<'a>, _analysis: &Analysis, _options: &GraphOptions) -> Result<Graph<'a>> {
        bail!("T5 export is not implemented yet")
    }
}
