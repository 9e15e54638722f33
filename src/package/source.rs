//! What `fluxbuild export` wrote, read back for packaging: the four graphs and their interfaces,
//! the two tokenizers, the scheduler config and the settings the orchestrator needs.
//!
//! Fields relied on (everything else in `DIR/manifest.json` is carried into the repository
//! manifest untouched):
//! - `DIR/{clip,t5,transformer,vae_decoder}/model.onnx` (+ `model.onnx.data`): inputs and outputs
//!   are read from the graph itself (the names in the brief's graph interfaces);
//!   the variant is `dev` when the transformer has a `guidance` input, else `schnell`;
//! - `DIR/tokenizer/tokenizer.json` (CLIP, must know `<|endoftext|>`), `DIR/tokenizer_2/tokenizer.json`
//!   (T5, must know `<pad>`), `DIR/scheduler/scheduler_config.json` (diffusers' format);
//! - `DIR/manifest.json`: optional; `scaling_factor` / `shift_factor` found anywhere under its
//!   `vae_decoder` entry override the FLUX.1 VAE's 0.3611 / 0.1159.

use anyhow::{anyhow, bail, Context, Result};
use fluxbuild_exporters::onnx::{read_interface, Dim, ElemType, Interface, ValueInfo};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const NETWORKS: [&str; 4] = ["clip", "t5", "transformer", "vae_decoder"];

/// The inputs and outputs each network must have (the contract between the stages).
const CONTRACT: [(&str, &[&str], &[&str]); 4] = [
    ("clip", &["input_ids"], &["pooled_embeddings"]),
    ("t5", &["input_ids"], &["text_embeddings"]),
    (
        "transformer",
        &["hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids"],
        &["noise_pred"],
    ),
    ("vae_decoder", &["latent"], &["images"]),
];

/// FLUX.1's AutoencoderKL config (FLUX_FACTS.md §1).
pub const FLUX_VAE_SCALING: f64 = 0.3611;
pub const FLUX_VAE_SHIFT: f64 = 0.1159;

#[derive(Clone, Debug)]
pub struct Network {
    pub name: String,
    pub graph: PathBuf,
    /// The external data file beside the graph, if any.
    pub data: Option<PathBuf>,
    pub interface: Interface,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Dev,
    Schnell,
}

#[derive(Clone, Debug)]
pub struct Exported {
    pub dir: PathBuf,
    pub networks: Vec<Network>,
    pub variant: Variant,
    pub clip_tokenizer: PathBuf,
    pub t5_tokenizer: PathBuf,
    pub scheduler_config: PathBuf,
    pub vae_scaling_factor: f64,
    pub vae_shift_factor: f64,
    /// `DIR/manifest.json` as written by export, when present.
    pub manifest: Option<Value>,
}

impl Exported {
    pub fn read(dir: &Path) -> Result<Exported> {
        if !dir.is_dir() {
            bail!("--models {}: not a folder (expected what `fluxbuild export` writes)", dir.display());
        }
        let networks = NETWORKS.iter().map(|n| read_network(dir, n, &dir.join(n))).collect::<Result<Vec<_>>>()?;
        let transformer = &networks[2].interface;
        let variant = if transformer.input("guidance").is_some() { Variant::Dev } else { Variant::Schnell };
        let file = |rel: &str| {
            let path = dir.join(rel);
            if path.is_file() {
                Ok(path)
            } else {
                Err(anyhow!("{}: missing (export copies it from the pipeline)", path.display()))
            }
        };
        let manifest = match std::fs::read_to_string(dir.join("manifest.json")) {
            Ok(text) => Some(serde_json::from_str(&text).with_context(|| format!("{}/manifest.json: not JSON", dir.display()))?),
            Err(_) => None,
        };
        let vae = manifest.as_ref().and_then(|m| find_key(m, "vae_decoder"));
        let factor = |key, default| vae.and_then(|v| find_key(v, key)).and_then(Value::as_f64).unwrap_or(default);
        let scheduler_config = file("scheduler/scheduler_config.json")?;
        let scheduler: Value = serde_json::from_str(&std::fs::read_to_string(&scheduler_config)?)
            .with_context(|| format!("{}: not JSON", scheduler_config.display()))?;
        for refused in ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas", "stochastic_sampling"] {
            if scheduler.get(refused).and_then(Value::as_bool) == Some(true) {
                bail!("{}: `{refused}: true` is not what FluxPipeline uses on FLUX.1", scheduler_config.display());
            }
        }
        Ok(Exported {
            dir: dir.to_path_buf(),
            variant,
            clip_tokenizer: file("tokenizer/tokenizer.json")?,
            t5_tokenizer: file("tokenizer_2/tokenizer.json")?,
            scheduler_config,
            vae_scaling_factor: factor("scaling_factor", FLUX_VAE_SCALING),
            vae_shift_factor: factor("shift_factor", FLUX_VAE_SHIFT),
            manifest,
            networks,
        })
    }

    pub fn network(&self, name: &str) -> &Network {
        self.networks.iter().find(|n| n.name == name).expect("one of NETWORKS")
    }
}

/// Reads one network's graph from `folder` and checks it against the contract of `network`.
pub fn read_network(dir: &Path, network: &str, folder: &Path) -> Result<Network> {
    let graph = folder.join("model.onnx");
    if !graph.is_file() {
        bail!("{}: missing (run `fluxbuild export --out {}` first)", graph.display(), dir.display());
    }
    let interface = read_interface(&graph)?;
    let (_, inputs, outputs) = CONTRACT.iter().find(|(n, _, _)| *n == network).expect("known network");
    for name in inputs.iter() {
        if interface.input(name).is_none() {
            bail!("{}: has no input `{name}` (inputs: {})", graph.display(), names(&interface.inputs));
        }
    }
    for name in outputs.iter() {
        if interface.output(name).is_none() {
            bail!("{}: has no output `{name}` (outputs: {})", graph.display(), names(&interface.outputs));
        }
    }
    let data = folder.join("model.onnx.data");
    Ok(Network { name: network.to_string(), graph, data: data.is_file().then_some(data), interface })
}

fn names(values: &[ValueInfo]) -> String {
    values.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// The first value under `key` anywhere in `value` (depth first).
fn find_key<'v>(value: &'v Value, key: &str) -> Option<&'v Value> {
    match value {
        Value::Object(map) => map.get(key).or_else(|| map.values().find_map(|v| find_key(v, key))),
        Value::Array(items) => items.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

/// A fixed dimension, if it is one.
pub fn fixed(dim: &Dim) -> Option<i64> {
    match dim {
        Dim::Fixed(n) if *n > 0 => Some(*n),
        _ => None,
    }
}

/// Triton's data type of an ONNX element type.
pub fn data_type(elem: ElemType) -> Result<super::config::DataType> {
    use super::config::DataType as T;
    Ok(match elem {
        ElemType::F32 => T::Fp32,
        ElemType::F16 => T::Fp16,
        ElemType::BF16 => T::Bf16,
        ElemType::I64 => T::Int64,
        ElemType::I32 => T::Int32,
        ElemType::U8 => T::Uint8,
        ElemType::Bool => T::Bool,
        ElemType::F8E4M3 => bail!("FLOAT8 graph inputs cannot cross Triton's interface (keep I/O in fp32/fp16)"),
    })
}

/// numpy's name of an element type (the orchestrator casts to these).
pub fn numpy_dtype(elem: ElemType) -> &'static str {
    match elem {
        ElemType::F32 => "float32",
        ElemType::F16 => "float16",
        ElemType::BF16 => "bfloat16",
        ElemType::I64 => "int64",
        ElemType::I32 => "int32",
        ElemType::U8 => "uint8",
        ElemType::Bool => "bool",
        ElemType::F8E4M3 => "float8_e4m3fn",
    }
}
