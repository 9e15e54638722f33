//! Layers shared by the FLUX submodels, in terms of `Weights` and the graph builder.

use super::builder::{GraphBuilder, V};
use super::ir::ElemType;
use super::weights::{Param, Weights};

/// `y = x @ Wᵀ + b` with PyTorch's `weight` [out, in] and `bias` [out] under `w`, both required:
/// a layer that has a bias in the architecture must have it in the checkpoint (a missing one is a
/// reported problem, never a silent zero). Layers without bias use `linear_no_bias`.
pub fn linear<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, x: &V, in_features: usize, out_features: usize) -> V {
    let weight = w.get("weight", &[out_features, in_features]);
    let bias = w.get("bias", &[out_features]);
    linear_param(b, x, weight, Some(bias))
}

/// Linear layer without bias (T5).
pub fn linear_no_bias<'a>(
    b: &mut GraphBuilder<'a>,
    w: &Weights<'a>,
    x: &V,
    in_features: usize,
    out_features: usize,
) -> V {
    let weight = w.get("weight", &[out_features, in_features]);
    linear_param(b, x, weight, None)
}

/// Linear layer from explicit params (fused or stacked weights).
pub fn linear_param<'a>(b: &mut GraphBuilder<'a>, x: &V, weight: Param<'a>, bias: Option<Param<'a>>) -> V {
    let w = weight.add_transposed(b);
    let y = b.matmul(x, &w);
    match bias {
        Some(bias) => {
            let bias = bias.add_to(b);
            b.add(&y, &bias)
        }
        None => y,
    }
}

/// LayerNorm with learned `weight` and `bias` [dim] under `w`.
pub fn layer_norm<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, x: &V, dim: usize, eps: f32) -> V {
    let scale = w.get("weight", &[dim]).add_to(b);
    let bias = w.get("bias", &[dim]).add_to(b);
    b.layer_norm(x, &scale, &bias, eps)
}

/// RMSNorm over the last axis: `x / sqrt(mean(x²) + eps) · weight`. The normalization runs in
/// f32 whatever the graph's float type (as transformers' T5LayerNorm does: a mean of squares in
/// bf16 keeps 8 bits of the variance, in fp16 it overflows), then the weight scales in the float type.
pub fn rms_norm<'a>(b: &mut GraphBuilder<'a>, weight: Param<'a>, x: &V, eps: f32) -> V {
    let x = b.to_f32(x);
    let normed = b.with_float(ElemType::F32, |b| {
        let x2 = b.mul(&x, &x);
        let mean = b.reduce_mean(&x2, &[-1], true);
        let var = b.add_scalar(&mean, eps);
        let rms = b.unary("Sqrt", &var);
        b.div(&x, &rms)
    });
    let normed = b.to_float(&normed);
    let weight = weight.add_to(b);
    b.mul(&normed, &weight)
}

/// `Conv2d(c_in, c_out, kernel, padding=kernel/2)` with `weight` [c_out, c_in, k, k] and `bias` [c_out].
pub fn conv2d<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, x: &V, c_in: usize, c_out: usize, kernel: usize) -> V {
    let weight = w.get("weight", &[c_out, c_in, kernel, kernel]).add_to(b);
    let bias = w.get("bias", &[c_out]).add_to(b);
    let pad = (kernel / 2) as i64;
    b.conv(x, &weight, Some(&bias), [pad; 4], 1)
}

/// GroupNorm over [N, C, H, W] with per-channel `weight` and `bias` [C], written as
/// Reshape [N, G, -1] -> InstanceNormalization (unit scale) -> Reshape back -> Mul/Add per channel:
/// GroupNormalization-18 scales per group (wrong for these weights) and -21 is newer than the
/// opset-17 parsers, while TensorRT and ONNX Runtime both run this form natively. TensorRT's
/// InstanceNormalization takes only float32 or float16, so a bfloat16 graph normalizes in float32.
pub fn group_norm<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, x: &V, channels: usize, groups: usize, eps: f32) -> V {
    let float = b.float;
    let norm_float = if float == ElemType::BF16 { ElemType::F32 } else { float };
    let ones = b.const_float(norm_float, &[groups], &vec![1.0; groups]);
    let zeros = b.const_float(norm_float, &[groups], &vec![0.0; groups]);
    let grouped = b.reshape(x, &[0, groups as i64, -1]);
    let grouped = b.convert(&grouped, float, norm_float);
    let normed = b.instance_norm(&grouped, &ones, &zeros, eps);
    let normed = b.convert(&normed, norm_float, float);
    let shape = b.shape_of(x, 0, i64::MAX);
    let normed = b.reshape_to(&normed, &shape);
    let scale = w.get("weight", &[channels]).reshaped(&[channels, 1, 1]).add_to(b);
    let shift = w.get("bias", &[channels]).reshaped(&[channels, 1, 1]).add_to(b);
    let scaled = b.mul(&normed, &scale);
    b.add(&scaled, &shift)
}

/// [B, L, heads·d] -> [B, heads, L, d].
pub fn split_heads(b: &mut GraphBuilder<'_>, x: &V, heads: usize, head_dim: usize) -> V {
    let x = b.reshape(x, &[0, 0, heads as i64, head_dim as i64]);
    b.transpose(&x, &[0, 2, 1, 3])
}

/// [B, heads, L, d] -> [B, L, heads·d].
pub fn merge_heads(b: &mut GraphBuilder<'_>, x: &V, width: usize) -> V {
    let x = b.transpose(x, &[0, 2, 1, 3]);
    b.reshape(&x, &[0, 0, width as i64])
}

/// softmax(scale·q·kᵀ + bias)·v for q, k, v [B, heads, L, d]. `q` is scaled before the product
/// (scores stay in range in half precision); `bias` is an additive mask or position bias, broadcast.
pub fn attention(b: &mut GraphBuilder<'_>, q: &V, k: &V, v: &V, scale: f32, bias: Option<&V>) -> V {
    let q = if scale == 1.0 {
        q.clone()
    } else {
        b.mul_scalar(q, scale)
    };
    let kt = b.transpose(k, &[0, 1, 3, 2]);
    let scores = b.matmul(&q, &kt);
    let scores = match bias {
        Some(bias) => b.add(&scores, bias),
        None => scores,
    };
    let probs = b.softmax(&scores, -1);
    b.matmul(&probs, v)
}
