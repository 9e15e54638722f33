//! The orchestrator's parameters: what `fluxbuild package` writes into the `parameters` of the
//! `flux` model's config.pbtxt, and what reads them back: the orchestrator (model.py, through
//! flux_params.py, which declares the same keys and types), `fluxbuild serve`, its supervisor and
//! `generate --server`. A field's name is its parameter key.
//!
//! Written as `parameters` describes: `request_rules` and `input_dtypes` as compact JSON, fallback
//! lists comma-separated (empty when there is none). Absent optional fields are not written.

use crate::parameters::{comma_list, json_text, Parameters};
use crate::{Network, Variant};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where the networks run: Python-backend models on ONNX Runtime's CPU, or TensorRT plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Python-backend models running the ONNX graphs with ONNX Runtime on the CPU.
    Cpu,
    /// TensorRT plans (KIND_GPU) from `--engines`.
    Gpu,
}

/// How the step scheduler orders the denoising steps of concurrent jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOrder {
    /// The job with the fewest steps left runs first (the default).
    ShortestFirst,
    /// Every job steps as it comes (for comparisons).
    Concurrent,
}

/// The `flux` model's parameters. `Rules` is the request validation table
/// (`generate::request::Limits` in the fluxbuild crate), written as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "Rules: Serialize", deserialize = "Rules: DeserializeOwned"))]
pub struct OrchestratorParameters<Rules> {
    pub target: Target,
    pub variant: Variant,
    /// What a request gets for each setting it leaves out.
    pub default_height: u32,
    pub default_width: u32,
    pub default_steps: u32,
    pub default_guidance: f32,
    pub default_max_sequence_length: u32,
    /// What a request may ask for; every request is checked against it before any batch work.
    #[serde(with = "json_text")]
    pub request_rules: Rules,
    /// Pixels one network batch may hold (the memory model); larger batches are split.
    pub max_batch_pixels: u64,
    /// Each network call (BLS) fails after this long.
    pub network_timeout_ms: u64,
    /// Jobs that run the pipeline at once across the `flux` instances; the instances beyond it
    /// stay free to refuse bad requests at once.
    pub running_jobs: u32,
    /// CLIP's token length.
    pub clip_length: u32,
    pub clip_pad_token: String,
    pub t5_pad_token: String,
    pub vae_scaling_factor: f64,
    pub vae_shift_factor: f64,
    /// The largest batch every network takes.
    pub network_max_batch: u32,
    /// Input name -> numpy dtype name (`float32`, `float16`, `bfloat16`, `int64`): the
    /// transformer's inputs and the VAE decoder's `latent`.
    #[serde(with = "json_text")]
    pub input_dtypes: BTreeMap<String, String>,
    /// The primary model of each network, and the ones tried, in order, when it is not ready.
    pub model_clip: String,
    pub model_t5: String,
    pub model_transformer: String,
    pub model_vae_decoder: String,
    #[serde(with = "comma_list")]
    pub fallback_clip: Vec<String>,
    #[serde(with = "comma_list")]
    pub fallback_t5: Vec<String>,
    #[serde(with = "comma_list")]
    pub fallback_transformer: Vec<String>,
    #[serde(with = "comma_list")]
    pub fallback_vae_decoder: Vec<String>,
    /// Tuning `package` does not write (set by hand or by a config override): the torch tensor
    /// path on the cpu target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch_on_cpu: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_order: Option<StepOrder>,
}

impl<Rules: Serialize + DeserializeOwned> Parameters for OrchestratorParameters<Rules> {
    const WHAT: &'static str = "the orchestrator's parameters";
}

impl<Rules> OrchestratorParameters<Rules> {
    /// Sets `network`'s models, primary first.
    pub fn set_models(&mut self, network: Network, models: &[String]) {
        let (primary, fallbacks) = match network {
            Network::Clip => (&mut self.model_clip, &mut self.fallback_clip),
            Network::T5 => (&mut self.model_t5, &mut self.fallback_t5),
            Network::Transformer => (&mut self.model_transformer, &mut self.fallback_transformer),
            Network::VaeDecoder => (&mut self.model_vae_decoder, &mut self.fallback_vae_decoder),
        };
        *primary = models.first().cloned().unwrap_or_default();
        *fallbacks = models.iter().skip(1).cloned().collect();
    }

    /// Every network's models, primary first.
    pub fn models(&self, network: Network) -> Vec<String> {
        let (primary, fallbacks) = match network {
            Network::Clip => (&self.model_clip, &self.fallback_clip),
            Network::T5 => (&self.model_t5, &self.fallback_t5),
            Network::Transformer => (&self.model_transformer, &self.fallback_transformer),
            Network::VaeDecoder => (&self.model_vae_decoder, &self.fallback_vae_decoder),
        };
        std::iter::once(primary).chain(fallbacks).cloned().collect()
    }
}
