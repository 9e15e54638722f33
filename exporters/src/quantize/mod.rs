//! Reduced precision beyond the graph's float type: FP8 weight and activation quantization of
//! linear layers (explicit Q/DQ, TensorRT's FP8 GEMM pattern), the calibration it needs, and
//! 16-bit emulation in fp32 for measuring accuracy on ONNX Runtime's CPU.
//!
//! These are passes over a built `Graph` keyed by the weights' checkpoint names, so the model
//! definitions stay as they are: a linear layer is recognised as a MatMul against a weight matrix.

pub mod amax;
pub mod calibration;
pub mod emulate;
pub mod fp8;
pub mod qdq;

use fluxbuild_contract::Network;
use serde::{Deserialize, Serialize};

/// Granularity of FP8 weight scales.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightScaling {
    /// One scale per weight matrix (TensorRT Model Optimizer's FP8 default).
    #[default]
    PerTensor,
    /// One scale per output channel.
    PerChannel,
}

/// Which linear layers become FP8, and how.
#[derive(Clone, Debug, Serialize)]
pub struct Fp8Policy {
    pub weights: WeightScaling,
    /// Weight-name patterns (`*` matches anything) of layers kept in the graph's float type.
    pub keep: Vec<String>,
}

/// Layers of the FLUX transformer that stay in 16-bit, in both checkpoint layouts: the input
/// embedders (their inputs are raw latents, text features and sinusoids, far from the block
/// statistics) and the final projection (its error goes straight into the velocity), as
/// TensorRT Model Optimizer's diffusion recipes leave them.
pub const TRANSFORMER_KEEP: [&str; 11] = [
    // diffusers
    "x_embedder.*",
    "context_embedder.*",
    "time_text_embed.*",
    "norm_out.*",
    "proj_out.*",
    // BFL
    "img_in.*",
    "txt_in.*",
    "time_in.*",
    "vector_in.*",
    "guidance_in.*",
    "final_layer.*",
];

impl Fp8Policy {
    /// The default policy for a network (`keep` extended by `extra_keep`).
    pub fn for_network(network: Network, weights: WeightScaling, extra_keep: &[String]) -> Fp8Policy {
        let mut keep: Vec<String> = match network {
            Network::Transformer => TRANSFORMER_KEEP.iter().map(|s| s.to_string()).collect(),
            _ => vec![],
        };
        keep.extend(extra_keep.iter().cloned());
        Fp8Policy { weights, keep }
    }

    /// Whether the layer with weight `name` stays in higher precision.
    pub fn keeps(&self, name: &str) -> bool {
        self.keep.iter().any(|p| glob_match(p, name))
    }
}

/// What the FP8 rewrite did, for the manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fp8Summary {
    pub weights: WeightScaling,
    /// Number of linear layers running in FP8.
    pub quantized: usize,
    /// Linear layers left in the graph's float type, by weight name.
    pub kept: Vec<String>,
    /// sha256 of the calibration file the activation scales came from.
    pub calibration_sha256: Option<String>,
}

/// `*`-only glob over the whole string.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| glob_match(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_patterns_are_anchored_module_paths() {
        let p = Fp8Policy::for_network(
            Network::Transformer,
            WeightScaling::PerTensor,
            &["*.norm1.linear.weight".into()],
        );
        assert!(p.keeps("proj_out.weight"));
        assert!(!p.keeps("single_transformer_blocks.3.proj_out.weight"));
        assert!(p.keeps("time_text_embed.timestep_embedder.linear_1.weight"));
        assert!(p.keeps("transformer_blocks.0.norm1.linear.weight"));
        assert!(!p.keeps("transformer_blocks.0.attn.to_q.weight"));
        assert!(p.keeps("final_layer.adaLN_modulation.1.weight"));
        assert!(glob_match("a*b*c", "aXXbYc") && !glob_match("a*b*c", "aXXbY"));
    }
}
