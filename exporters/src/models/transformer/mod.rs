//! FluxTransformer2DModel: the 12B rectified-flow transformer, from either checkpoint layout.
//!
//! `config` derives layout, variant and dimensions from tensor shapes, `params` finds every
//! weight in the layout at hand, `model` is the graph.

mod config;
mod model;
mod params;

pub use config::{FluxConfig, Layout};

use super::{Analysis, Exporter, GraphOptions};
use crate::checkpoint::Checkpoint;
use crate::onnx::{Graph, Weights};
use anyhow::{anyhow, Context, Result};
use fluxbuild_contract::Network;
use params::FluxParams;
use serde_json::Value;

pub struct TransformerExporter;

impl Exporter for TransformerExporter {
    fn network(&self) -> Network {
        Network::Transformer
    }
    fn key_prefixes(&self) -> &'static [&'static str] {
        &["model.diffusion_model."]
    }
    fn detect(&self, ckpt: &Checkpoint) -> bool {
        Layout::detect(ckpt).is_some()
    }
    /// `config` is `--config` or the checkpoint's config.json; when absent, a config.json
    /// beside or inside the checkpoint is still read.
    fn analyze(&self, ckpt: &Checkpoint, config: Option<&Value>) -> Result<Analysis> {
        let layout = Layout::detect(ckpt).ok_or_else(|| {
            anyhow!(
                "{}: not a FLUX transformer: it has neither x_embedder.weight (diffusers) nor img_in.weight (black-forest-labs)",
                ckpt.located.files.first().map(|f| f.display().to_string()).unwrap_or_default()
            )
        })?;
        let own = if config.is_none() { ckpt.config()? } else { None };
        let derived = FluxConfig::derive(ckpt, layout, config.or(own.as_ref()))?;
        Ok(Analysis {
            layout: layout.name().to_string(),
            variant: Some(derived.variant(ckpt)),
            config: serde_json::to_value(&derived)?,
        })
    }
    fn build<'a>(&self, w: &Weights<'a>, analysis: &Analysis, options: &GraphOptions) -> Result<Graph<'a>> {
        let layout = Layout::parse(&analysis.layout)?;
        let config: FluxConfig =
            serde_json::from_value(analysis.config.clone()).context("transformer analysis config")?;
        let params = FluxParams::load(w, layout, &config);
        let mut graph = model::build(params, &config, options.float, options.opset);
        graph.metadata.extend([
            (
                "fluxbuild.submodel".to_string(),
                Network::Transformer.name().to_string(),
            ),
            ("fluxbuild.layout".to_string(), layout.name().to_string()),
            (
                "fluxbuild.variant".to_string(),
                analysis.variant.clone().unwrap_or_default(),
            ),
            (
                "fluxbuild.precision".to_string(),
                serde_json::to_value(options.float)?
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
            ("fluxbuild.config".to_string(), analysis.config.to_string()),
        ]);
        Ok(graph)
    }
}
