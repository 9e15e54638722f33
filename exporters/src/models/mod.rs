//! One graph builder per FLUX submodel, behind a common interface so the export stage,
//! `inspect` and the tests treat all four alike.

pub mod clip;
pub mod derive;
pub mod t5;
pub mod transformer;
pub mod vae;

use crate::checkpoint::Checkpoint;
use crate::onnx::{ElemType, Graph, Problem, Weights, DEFAULT_OPSET};
use anyhow::Result;
use fluxbuild_contract::Network;
use serde_json::Value;

/// What the checkpoint says about itself, derived from tensor shapes (plus `config.json`
/// or `--config` where shapes cannot tell).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Analysis {
    /// e.g. "diffusers", "bfl", "ldm", "transformers"
    pub layout: String,
    /// e.g. "dev" / "schnell" for the transformer
    pub variant: Option<String>,
    /// The derived configuration (each exporter's own typed config, serialized).
    pub config: Value,
}

/// How the graph is built.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GraphOptions {
    /// Element type of weights and activations.
    pub float: ElemType,
    /// Element type of the parts that overflow in `float` and must run wider (T5's residual
    /// stream and FFN output projection `wo` in an fp16 graph); equal to `float` otherwise.
    pub wide: ElemType,
    pub opset: i64,
}

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions {
            float: ElemType::F32,
            wide: ElemType::F32,
            opset: DEFAULT_OPSET,
        }
    }
}

pub trait Exporter: Sync {
    fn network(&self) -> Network;
    /// Output folder and Triton model name: `clip`, `t5`, `transformer`, `vae_decoder`.
    fn name(&self) -> &'static str {
        self.network().name()
    }
    /// Folder of this component inside a diffusers pipeline.
    fn subfolder(&self) -> &'static str {
        self.network().folder()
    }
    /// Key prefixes stripped on load (e.g. `model.diffusion_model.`), first match wins.
    fn key_prefixes(&self) -> &'static [&'static str];
    /// Whether this checkpoint holds this submodel (used by `inspect` on unknown files).
    fn detect(&self, ckpt: &Checkpoint) -> bool;
    /// Derives layout, variant and config. `config` is `--config` or the checkpoint's config.json.
    fn analyze(&self, ckpt: &Checkpoint, config: Option<&Value>) -> Result<Analysis>;
    /// Builds the graph; problems with tensors are collected in `w`, not returned as errors.
    fn build<'a>(&self, w: &Weights<'a>, analysis: &Analysis, options: &GraphOptions) -> Result<Graph<'a>>;
}

pub static EXPORTERS: [&dyn Exporter; 4] = [
    &clip::ClipExporter,
    &t5::T5Exporter,
    &transformer::TransformerExporter,
    &vae::VaeDecoderExporter,
];

pub fn exporter(network: Network) -> &'static dyn Exporter {
    EXPORTERS
        .iter()
        .copied()
        .find(|e| e.network() == network)
        .expect("an exporter per network")
}

/// Analyzes and builds in one go: the graph, or every problem with the checkpoint at once.
pub fn plan<'a>(
    exporter: &dyn Exporter,
    ckpt: &'a Checkpoint,
    config: Option<&Value>,
    options: &GraphOptions,
) -> Result<(Analysis, Graph<'a>, Vec<Problem>)> {
    let analysis = exporter.analyze(ckpt, config)?;
    let weights = Weights::new(ckpt);
    let graph = exporter.build(&weights, &analysis, options)?;
    Ok((analysis, graph, weights.problems()))
}
