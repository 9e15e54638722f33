//! The orchestrator's parameters: what `fluxbuild package` writes into the `parameters` of the
//! `flux` model's config.pbtxt, and what reads them back: the orchestrator (model.py, through
//! flux_params.py, which declares the same keys and types), `fluxbuild serve`, its supervisor and
//! `generate --server`. A field's name is its parameter key.
//!
//! Triton parameters are strings: numbers are written as decimal text, booleans as `true` /
//! `false`, enums by their lowercase name, `request_rules` and `input_dtypes` as compact JSON,
//! fallback lists comma-separated (empty when there is none). Absent optional fields are not written.

use crate::{Network, Variant};
use anyhow::{Context, Result};
use serde::de::value::{Error as DeError, MapDeserializer, StrDeserializer};
use serde::de::{DeserializeOwned, Error as _, IntoDeserializer, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
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

impl<Rules: Serialize + DeserializeOwned> OrchestratorParameters<Rules> {
    /// The (key, value) pairs of config.pbtxt.
    pub fn to_strings(&self) -> Result<Vec<(String, String)>> {
        // Through JSON text, which writes an f32 as its shortest decimal (3.5, not 3.5000000...).
        let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&serde_json::to_string(self)?)?;
        Ok(fields
            .into_iter()
            .map(|(key, value)| match value {
                serde_json::Value::String(text) => (key, text),
                other => (key, other.to_string()),
            })
            .collect())
    }

    /// Reads the parameters from config.pbtxt's (key, value) pairs; other keys are ignored.
    /// Errors name the missing or ill-typed key.
    pub fn from_strings<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let pairs = pairs.into_iter().map(|(key, text)| (key, Text { key, text }));
        Self::deserialize(MapDeserializer::<_, DeError>::new(pairs)).context("the orchestrator's parameters")
    }

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

/// One parameter's text, parsed as the field's type asks.
struct Text<'a> {
    key: &'a str,
    text: &'a str,
}

impl Text<'_> {
    fn parse<T: std::str::FromStr>(&self, what: &str) -> Result<T, DeError> {
        self.text
            .parse()
            .map_err(|_| DeError::custom(format!("parameter `{}` is {:?}, not {what}", self.key, self.text)))
    }
}

impl<'de> IntoDeserializer<'de, DeError> for Text<'_> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

macro_rules! parsed {
    ($($method:ident $visit:ident $type:ty, $what:literal;)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            visitor.$visit(self.parse::<$type>($what)?)
        })*
    };
}

impl<'de> Deserializer<'de> for Text<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_str(self.text)
    }

    parsed! {
        deserialize_bool visit_bool bool, "true or false";
        deserialize_u32 visit_u32 u32, "a count";
        deserialize_u64 visit_u64 u64, "a count";
        deserialize_i64 visit_i64 i64, "an integer";
        deserialize_f32 visit_f32 f32, "a number";
        deserialize_f64 visit_f64 f64, "a number";
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_some(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        StrDeserializer::<DeError>::new(self.text)
            .deserialize_enum(name, variants, visitor)
            .map_err(|e| DeError::custom(format!("parameter `{}`: {e}", self.key)))
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i128 u8 u16 u128 char str string bytes byte_buf unit unit_struct newtype_struct seq
        tuple tuple_struct map struct identifier ignored_any
    }
}

/// A value written as its compact JSON text.
mod json_text {
    use serde::de::{DeserializeOwned, Error};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&serde_json::to_string(value).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
        let text = String::deserialize(deserializer)?;
        serde_json::from_str(&text).map_err(|e| D::Error::custom(format!("{text:?} is not the expected JSON ({e})")))
    }
}

/// Model names, comma-separated.
mod comma_list {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(names: &[String], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&names.join(","))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(text.split(',').filter(|m| !m.is_empty()).map(str::to_string).collect())
    }
}
