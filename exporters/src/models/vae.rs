//! AutoencoderKL decoder (placeholder until the VAE decoder exporter lands).
use super::{Analysis, Exporter, GraphOptions};
use crate::checkpoint::Checkpoint;
use crate::onnx::{Graph, Weights};
use anyhow::{bail, Result};
use serde_json::Value;

pub struct VaeDecoderExporter;

impl Exporter for VaeDecoderExporter {
    fn name(&self) -> &'static str {
        "vae_decoder"
    }
    fn subfolder(&self) -> &'static str {
        "vae"
    }
    fn key_prefixes(&self) -> &'static [&'static str] {
        &[]
    }
    fn detect(&self, ckpt: &Checkpoint) -> bool {
        ckpt.contains("decoder.conv_in.weight")
    }
    fn analyze(&self, _ckpt: &Checkpoint, _config: Option<&Value>) -> Result<Analysis> {
        bail!("VAE decoder export is not implemented yet")
    }
    fn build<'a>(&self, _w: &Weights<'a>, _analysis: &Analysis, _options: &GraphOptions) -> Result<Graph<'a>> {
        bail!("VAE decoder export is not implemented yet")
    }
}
