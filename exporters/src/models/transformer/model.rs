//! FluxTransformer2DModel (diffusers 0.42) as an ONNX graph, in ops every TensorRT 10 parser
//! takes at opset 17: MatMul/Softmax attention, RMSNorm as ReduceMean/Sqrt/Div/Mul, RoPE as
//! Mul/Sub/Add on interleaved pairs, and the sinusoid and RoPE tables computed in the graph.
//!
//! Graph inputs and outputs are float32 whatever the precision; weights and activations are in
//! the builder's float type. The numerically sensitive parts (sinusoid, RoPE angles and
//! rotation, the q/k RMSNorm statistics) are computed in float32 in every precision.

use super::config::FluxConfig;
use super::params::FluxParams;
use super::params::{DoubleBlock, Embedders, FinalLayer, Linear, Mlp, SingleBlock, Stream};
use crate::onnx::{nn, Dim, ElemType, Graph, GraphBuilder, Param, V};

const EPS: f32 = 1e-6;
/// The pipeline passes σ ∈ [0, 1]; the model embeds 1000·σ (and 1000·guidance).
const TIME_FACTOR: f32 = 1000.0;
const MAX_PERIOD: f64 = 10000.0;
const ROPE_THETA: f64 = 10000.0;

/// What every block needs besides its weights.
struct Ctx {
    /// SiLU(temb) [B, D]: the input of every modulation.
    vec: V,
    /// RoPE tables [L, 1, d/2, 1] in f32, L = Lt + Li.
    cos: V,
    sin: V,
    /// Number of text tokens (int64 [1]): where [txt; img] splits.
    txt_len: V,
    /// Unit scale and zero shift of the affine-free LayerNorms.
    ln_scale: V,
    ln_bias: V,
    one: V,
    width: usize,
    heads: usize,
    head_dim: usize,
}

pub fn build<'a>(p: FluxParams<'a>, c: &FluxConfig, float: ElemType, opset: i64) -> Graph<'a> {
    let mut b = GraphBuilder::new("flux_transformer", opset, float);
    let f32 = ElemType::F32;
    let (batch, li, lt) = (Dim::from("B"), Dim::from("Li"), Dim::from("Lt"));
    let hidden_states = b.input("hidden_states", f32, &[batch.clone(), li.clone(), c.in_channels.into()]);
    let encoder_hidden_states = b.input(
        "encoder_hidden_states",
        f32,
        &[batch.clone(), lt.clone(), c.joint_attention_dim.into()],
    );
    let pooled_projections = b.input(
        "pooled_projections",
        f32,
        &[batch.clone(), c.pooled_projection_dim.into()],
    );
    let timestep = b.input("timestep", f32, std::slice::from_ref(&batch));
    let img_ids = b.input("img_ids", f32, &[li.clone(), 3.into()]);
    let txt_ids = b.input("txt_ids", f32, &[lt, 3.into()]);
    let guidance = c
        .guidance_embeds
        .then(|| b.input("guidance", f32, std::slice::from_ref(&batch)));

    let FluxParams {
        embedders,
        double_blocks,
        single_blocks,
        final_layer,
    } = p;
    let Embedders {
        img_in,
        txt_in,
        time_in,
        guidance_in,
        vector_in,
    } = embedders;
    let temb = time_text_embed(
        &mut b,
        [time_in, vector_in],
        guidance_in.zip(guidance),
        &timestep,
        &pooled_projections,
        c,
    );
    let (cos, sin) = b.scoped("pos_embed", |b| rope_tables(b, &txt_ids, &img_ids, &c.axes_dims_rope));
    let hidden = b.to_float(&hidden_states);
    let mut img = b.scoped("img_in", |b| img_in.forward(b, &hidden));
    let encoder = b.to_float(&encoder_hidden_states);
    let mut txt = b.scoped("txt_in", |b| txt_in.forward(b, &encoder));
    let ctx = Ctx {
        vec: b.silu(&temb),
        cos,
        sin,
        txt_len: b.shape_of(&txt, 1, 2),
        ln_scale: b.const_float(float, &[c.inner_dim], &vec![1.0; c.inner_dim]),
        ln_bias: b.const_float(float, &[c.inner_dim], &vec![0.0; c.inner_dim]),
        one: b.scalar(1.0),
        width: c.inner_dim,
        heads: c.num_attention_heads,
        head_dim: c.attention_head_dim,
    };
    for block in double_blocks {
        (img, txt) = double_block(&mut b, block, &img, &txt, &ctx);
    }
    let mut x = b.concat(&[&txt, &img], 1);
    for block in single_blocks {
        x = single_block(&mut b, block, &x, &ctx);
    }
    let (_, img) = split_tokens(&mut b, &x, &ctx);
    let out = b.scoped("final_layer", |b| final_layer_forward(b, final_layer, &img, &ctx));
    let out = b.to_f32(&out);
    b.output(&out, "noise_pred", f32, &[batch, li, c.out_channels.into()]);
    b.finish()
}

/// temb = time_in(E(1000σ)) [+ guidance_in(E(1000g))] + vector_in(pooled), each an MLP with SiLU.
fn time_text_embed<'a>(
    b: &mut GraphBuilder<'a>,
    [time_in, vector_in]: [Mlp<'a>; 2],
    guidance: Option<(Mlp<'a>, V)>,
    timestep: &V,
    pooled: &V,
    c: &FluxConfig,
) -> V {
    let time = b.scoped("time_in", |b| {
        let e = sinusoid(b, timestep, c.timestep_embedding_dim);
        mlp_silu(b, time_in, &e)
    });
    let time = match guidance {
        Some((guidance_in, g)) => {
            let g = b.scoped("guidance_in", |b| {
                let e = sinusoid(b, &g, c.timestep_embedding_dim);
                mlp_silu(b, guidance_in, &e)
            });
            b.add(&time, &g)
        }
        None => time,
    };
    let pooled = b.to_float(pooled);
    let vector = b.scoped("vector_in", |b| mlp_silu(b, vector_in, &pooled));
    b.add(&time, &vector)
}

/// diffusers' Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0) of 1000·x:
/// [cos(s·f), sin(s·f)], f_j = exp(−ln(10⁴)·j/(dim/2)), in f32, cast to the float type.
fn sinusoid(b: &mut GraphBuilder<'_>, x: &V, dim: usize) -> V {
    // diffusers scales in the model's dtype (`timestep.to(dtype) * 1000`), then embeds in f32.
    let x = b.to_float(x);
    let scaled = b.mul_scalar(&x, TIME_FACTOR);
    let s = b.to_f32(&scaled);
    let half = dim / 2;
    // The exponent rounded to f32 as torch forms it, then exp correctly rounded.
    let exponent_scale = -(MAX_PERIOD.ln() as f32);
    let freqs: Vec<f32> = (0..half)
        .map(|j| ((exponent_scale * j as f32 / half as f32) as f64).exp() as f32)
        .collect();
    let freqs = b.const_float(ElemType::F32, &[1, half], &freqs);
    let s = b.unsqueeze(&s, &[1]);
    let args = b.mul(&s, &freqs);
    let cos = b.unary("Cos", &args);
    let sin = b.unary("Sin", &args);
    let e = b.concat(&[&cos, &sin], 1);
    b.to_float(&e)
}

/// FluxPosEmbed: the ids of [txt; img] ([L, 3]); axis a rotates its d_a/2 pairs by
/// θ = id_a · θ₀^(−2j/d_a). Returns cos θ, sin θ as [L, 1, d/2, 1] (broadcast over batch and
/// heads). diffusers forms θ in f64; f32 here costs at most |θ|·2⁻²³ (≈ 8e-6 rad at id 64).
fn rope_tables(b: &mut GraphBuilder<'_>, txt_ids: &V, img_ids: &V, axes: &[usize]) -> (V, V) {
    let (mut axis_of_pair, mut omega) = (vec![], vec![]);
    for (axis, &dim) in axes.iter().enumerate() {
        for j in 0..dim / 2 {
            axis_of_pair.push(axis as i64);
            omega.push((1.0 / ROPE_THETA.powf((2 * j) as f64 / dim as f64)) as f32);
        }
    }
    let pairs = omega.len();
    let ids = b.concat(&[txt_ids, img_ids], 0);
    let axis_of_pair = b.const_i64(&axis_of_pair);
    let pos = b.gather(&ids, &axis_of_pair, 1); // [L, d/2]
    let omega = b.const_float(ElemType::F32, &[pairs], &omega);
    let theta = b.mul(&pos, &omega);
    let theta = b.reshape(&theta, &[-1, 1, pairs as i64, 1]);
    (b.unary("Cos", &theta), b.unary("Sin", &theta))
}

/// Rotates the interleaved pairs (x[2j], x[2j+1]) of q or k [B, L, H, d] by θ_j (f32).
fn apply_rope(b: &mut GraphBuilder<'_>, x: &V, ctx: &Ctx) -> V {
    let pairs = b.reshape(x, &[0, 0, 0, -1, 2]);
    let halves = b.split(&pairs, -1, &[1, 1]);
    let (even, odd) = (&halves[0], &halves[1]);
    let (even_cos, odd_sin) = (b.mul(even, &ctx.cos), b.mul(odd, &ctx.sin));
    let rotated_even = b.sub(&even_cos, &odd_sin);
    let (odd_cos, even_sin) = (b.mul(odd, &ctx.cos), b.mul(even, &ctx.sin));
    let rotated_odd = b.add(&odd_cos, &even_sin);
    let rotated = b.concat(&[&rotated_even, &rotated_odd], -1);
    b.reshape(&rotated, &[0, 0, 0, -1])
}

/// softmax(q·kᵀ/√d)·v over all heads; q, k, v [B, L, H, d] → [B, L, H·d]. q is scaled by 1/√d
/// before the product, so 16-bit scores stay in range (nn::attention).
fn attention(b: &mut GraphBuilder<'_>, q: &V, k: &V, v: &V, ctx: &Ctx) -> V {
    let [q, k, v] = [q, k, v].map(|x| b.transpose(x, &[0, 2, 1, 3]));
    let scale = (1.0 / (ctx.head_dim as f64).sqrt()) as f32;
    let out = nn::attention(b, &q, &k, &v, scale, None);
    let out = b.transpose(&out, &[0, 2, 1, 3]);
    b.reshape(&out, &[0, 0, -1])
}

/// q and k of [txt; img] tokens after RoPE, v alongside, all [B, L, H, d] in the float type.
struct Qkv {
    q: V,
    k: V,
    v: V,
}

/// The flat q, k, v [B, L, D] of one stream as heads; q and k RMS-normalized per head in f32.
/// RoPE is applied later, once the streams are joined.
fn heads_qkv<'a>(b: &mut GraphBuilder<'a>, qkv: &[V], q_norm: Param<'a>, k_norm: Param<'a>, ctx: &Ctx) -> Qkv {
    let heads = [0, 0, ctx.heads as i64, ctx.head_dim as i64];
    let [q, k, v] = [0, 1, 2].map(|i| b.reshape(&qkv[i], &heads));
    let (q, k) = (b.to_f32(&q), b.to_f32(&k));
    b.with_float(ElemType::F32, |b| Qkv {
        q: nn::rms_norm(b, q_norm, &q, EPS),
        k: nn::rms_norm(b, k_norm, &k, EPS),
        v,
    })
}

/// RoPE on q and k (f32), then back to the float type.
fn rotate(b: &mut GraphBuilder<'_>, qkv: Qkv, ctx: &Ctx) -> Qkv {
    let q = apply_rope(b, &qkv.q, ctx);
    let k = apply_rope(b, &qkv.k, ctx);
    Qkv {
        q: b.to_float(&q),
        k: b.to_float(&k),
        v: qkv.v,
    }
}

/// Linear(SiLU(temb)) cut into `n` vectors [B, 1, D] (diffusers' chunk order).
fn modulation<'a>(b: &mut GraphBuilder<'a>, linear: Linear<'a>, n: usize, ctx: &Ctx) -> Vec<V> {
    let m = linear.forward(b, &ctx.vec);
    let m = b.unsqueeze(&m, &[1]);
    b.split(&m, -1, &vec![ctx.width as i64; n])
}

/// LayerNorm(x)·(1 + scale) + shift, the LayerNorm without affine (eps 1e-6).
fn modulate(b: &mut GraphBuilder<'_>, x: &V, shift: &V, scale: &V, ctx: &Ctx) -> V {
    let normed = b.layer_norm(x, &ctx.ln_scale, &ctx.ln_bias, EPS);
    let one_plus = b.add(scale, &ctx.one);
    let scaled = b.mul(&normed, &one_plus);
    b.add(&scaled, shift)
}

/// x + gate·y
fn gated_residual(b: &mut GraphBuilder<'_>, x: &V, gate: &V, y: &V) -> V {
    let gated = b.mul(gate, y);
    b.add(x, &gated)
}

fn mlp_silu<'a>(b: &mut GraphBuilder<'a>, mlp: Mlp<'a>, x: &V) -> V {
    let h = mlp.fc1.forward(b, x);
    let h = b.silu(&h);
    mlp.fc2.forward(b, &h)
}

fn mlp_gelu<'a>(b: &mut GraphBuilder<'a>, mlp: Mlp<'a>, x: &V) -> V {
    let h = mlp.fc1.forward(b, x);
    let h = b.gelu_tanh(&h);
    mlp.fc2.forward(b, &h)
}

/// One stream of a double block: its modulation and attention inputs, and what it applies
/// after the joint attention.
struct StreamHalf<'a> {
    x: V,
    modulation: Vec<V>,
    proj: Linear<'a>,
    mlp: Mlp<'a>,
}

impl<'a> StreamHalf<'a> {
    fn attention_input(b: &mut GraphBuilder<'a>, w: Stream<'a>, x: &V, ctx: &Ctx) -> (StreamHalf<'a>, Qkv) {
        let Stream {
            modulation: mod_linear,
            qkv,
            q_norm,
            k_norm,
            proj,
            mlp,
        } = w;
        let m = modulation(b, mod_linear, 6, ctx); // shift1, scale1, gate1, shift2, scale2, gate2
        let normed = modulate(b, x, &m[0], &m[1], ctx);
        let fused = qkv.forward(b, &normed);
        let d = ctx.width as i64;
        let parts = b.split(&fused, -1, &[d, d, d]);
        let qkv = heads_qkv(b, &parts, q_norm, k_norm, ctx);
        (
            StreamHalf {
                x: x.clone(),
                modulation: m,
                proj,
                mlp,
            },
            qkv,
        )
    }

    fn finish(self, b: &mut GraphBuilder<'a>, attn: &V, ctx: &Ctx) -> V {
        let m = &self.modulation;
        let attn = self.proj.forward(b, attn);
        let x = gated_residual(b, &self.x, &m[2], &attn);
        let normed = modulate(b, &x, &m[3], &m[4], ctx);
        let ff = mlp_gelu(b, self.mlp, &normed);
        gated_residual(b, &x, &m[5], &ff)
    }
}

/// Image and text streams with their own weights, attending jointly over [txt; img].
fn double_block<'a>(b: &mut GraphBuilder<'a>, block: DoubleBlock<'a>, img: &V, txt: &V, ctx: &Ctx) -> (V, V) {
    let DoubleBlock {
        path,
        img: img_w,
        txt: txt_w,
    } = block;
    b.scoped(path, |b| {
        let (img_half, img_qkv) = b.scoped("img", |b| StreamHalf::attention_input(b, img_w, img, ctx));
        let (txt_half, txt_qkv) = b.scoped("txt", |b| StreamHalf::attention_input(b, txt_w, txt, ctx));
        let joint = Qkv {
            q: b.concat(&[&txt_qkv.q, &img_qkv.q], 1),
            k: b.concat(&[&txt_qkv.k, &img_qkv.k], 1),
            v: b.concat(&[&txt_qkv.v, &img_qkv.v], 1),
        };
        let Qkv { q, k, v } = rotate(b, joint, ctx);
        let attn = attention(b, &q, &k, &v, ctx);
        let (txt_attn, img_attn) = split_tokens(b, &attn, ctx);
        let img = b.scoped("img", |b| img_half.finish(b, &img_attn, ctx));
        let txt = b.scoped("txt", |b| txt_half.finish(b, &txt_attn, ctx));
        (img, clip_fp16(b, &txt))
    })
}

/// One stream over [txt; img]: attention and MLP side by side from one fused projection.
fn single_block<'a>(b: &mut GraphBuilder<'a>, block: SingleBlock<'a>, x: &V, ctx: &Ctx) -> V {
    let SingleBlock {
        path,
        modulation: mod_linear,
        linear1,
        q_norm,
        k_norm,
        linear2,
    } = block;
    b.scoped(path, |b| {
        let m = modulation(b, mod_linear, 3, ctx); // shift, scale, gate
        let normed = modulate(b, x, &m[0], &m[1], ctx);
        let fused = linear1.forward(b, &normed);
        let d = ctx.width as i64;
        let mlp_width = linear2.weight.shape[1] as i64 - d;
        let parts = b.split(&fused, -1, &[d, d, d, mlp_width]);
        let qkv = heads_qkv(b, &parts[..3], q_norm, k_norm, ctx);
        let Qkv { q, k, v } = rotate(b, qkv, ctx);
        let attn = attention(b, &q, &k, &v, ctx);
        let mlp = b.gelu_tanh(&parts[3]);
        let joined = b.concat(&[&attn, &mlp], -1);
        let out = linear2.forward(b, &joined);
        let x = gated_residual(b, x, &m[2], &out);
        clip_fp16(b, &x)
    })
}

fn final_layer_forward<'a>(b: &mut GraphBuilder<'a>, layer: FinalLayer<'a>, img: &V, ctx: &Ctx) -> V {
    let m = modulation(b, layer.modulation, 2, ctx); // scale, shift
    let normed = modulate(b, img, &m[1], &m[0], ctx);
    layer.linear.forward(b, &normed)
}

/// [txt; img] → (txt, img) along the token axis.
fn split_tokens(b: &mut GraphBuilder<'_>, x: &V, ctx: &Ctx) -> (V, V) {
    let (start, end, axis) = (b.const_i64(&[0]), b.const_i64(&[i64::MAX]), b.const_i64(&[1]));
    let txt = b.op("Slice", &[x, &start, &ctx.txt_len, &axis], &[]);
    let img = b.op("Slice", &[x, &ctx.txt_len, &end, &axis], &[]);
    (txt, img)
}

/// diffusers clips the streams to fp16's range after each block when running in fp16.
fn clip_fp16(b: &mut GraphBuilder<'_>, x: &V) -> V {
    if b.float != ElemType::F16 {
        return x.clone();
    }
    let (lo, hi) = (b.scalar(-65504.0), b.scalar(65504.0));
    b.op("Clip", &[x, &lo, &hi], &[])
}
