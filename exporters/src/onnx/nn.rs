//! Layers shared by the FLUX submodels, in terms of `Weights` and the graph builder.

use super::builder::{GraphBuilder, V};
use super::weights::{Param, Weights};

/// `y = x @ Wᵀ + b` with PyTorch's `weight` [out, in] and `bias` [out] under `w`.
pub fn linear<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, x: &V, in_features: usize, out_features: usize) -> V {
    let weight = w.get("weight", &[out_features, in_features]);
    let bias = w.has("bias").then(|| w.get("bias", &[out_features]));
    linear_param(b, x, weight, bias)
}

/// Linear layer without bias (T5).
pub fn linear_no_bias<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, x: &V, in_features: usize, out_features: usize) -> V {
    let weight = w.get("weight", &[out_features, in_features]);
    linear_param(b, x, weight, None)
}

/// Linear layer from explicit params (fused or stacked weights).
pub fn linear_param<'a>(b: &mut GraphBuilder<'a>, x: &V, weight: Param<'a>, bias: Option<Param<'a>>) -> V {
    let w = weight.add_transposed(b);
    let y = b.matmul(x, &w);
    match bias {
        Some(bias) => {
            let bias = bias.add(b);
            b.add(&y, &bias)
        }
        None => y,
    }
}

/// LayerNorm over the last axis with unit scale and zero shift (FLUX's elementwise_affine=False).
pub fn layer_norm_plain(b: &mut GraphBuilder<'_>, x: &V, dim: usize, eps: f32) -> V {
    let float = b.float;
    let ones = b.const_float(float, &[dim], &vec![1.0; dim]);
    let zeros = b.const_float(float, &[dim], &vec![0.0; dim]);
    b.layer_norm(x, &ones, &zeros, eps)
}

/// LayerNorm with learned `weight` and `bias` [dim] under `w`.
pub fn layer_norm<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, x: &V, dim: usize, eps: f32) -> V {
    let scale = w.get("weight", &[dim]).add(b);
    let bias = w.get("bias", &[dim]).add(b);
    b.layer_norm(x, &scale, &bias, eps)
}

/// RMSNorm over the last axis: `x / sqrt(mean(x²) + eps) · weight`, computed in f32.
pub fn rms_norm<'a>(b: &mut GraphBuilder<'a>, weight: Param<'a>, x: &V, eps: f32) -> V {
    let x2 = b.mul(x, x);
    let mean = b.reduce_mean(&x2, &[-1], true);
    let var = b.add_scalar(&mean, eps);
    let rms = b.unary("Sqrt", &var);
    let normed = b.div(x, &rms);
    let weight = weight.add(b);
    b.mul(&normed, &weight)
}
