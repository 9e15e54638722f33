//! T5EncoderModel (transformers), FLUX's T5-v1.1-XXL text encoder: `input_ids` [B, L] ->
//! `text_embeddings` [B, L, d_model] (last_hidden_state), L dynamic. Reads transformers' layout
//! with the embedding stored as `shared.weight`, `encoder.embed_tokens.weight` or both, in any
//! float type the loader decodes (ComfyUI's `t5xxl_fp16` and F8_E4M3 files included).

use super::derive::Derivation;
use super::{Analysis, Exporter, GraphOptions};
use crate::checkpoint::Checkpoint;
use crate::onnx::{nn, Dim, ElemType, Graph, GraphBuilder, Weights, V};
use anyhow::{bail, Result};
use fluxbuild_contract::Network;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

pub struct T5Exporter;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub num_heads: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    /// The embedding tensor used (`shared.weight` or `encoder.embed_tokens.weight`).
    pub embedding: String,
    /// Where each value came from.
    pub origins: BTreeMap<String, String>,
}

const SHARED: &str = "shared.weight";
const EMBED_TOKENS: &str = "encoder.embed_tokens.weight";
const POSITION_BIAS: &str = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight";

/// Element types of T5's parts: the hook for a half-precision policy. In T5-v1.1-XXL the
/// gated-FFN product and `wo`'s output, and the residual stream they are added to, grow past
/// fp16's 65504 in the late blocks (transformers keeps `wo` in fp32 and clamps the residual in
/// fp16). A safe fp16 engine therefore sets `ffn_out` (the product `gelu(wi_0 h)·wi_1 h` and
/// `wo`) and `residual` (the stream, its adds and RMSNorms, and the output) to F32 while
/// `compute` (attention and the wi_0/wi_1 matmuls) is F16; Casts are inserted only at the
/// boundaries where types differ. `build` uses one type for everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct T5Precision {
    pub compute: ElemType,
    pub ffn_out: ElemType,
    pub residual: ElemType,
}

impl Exporter for T5Exporter {
    fn network(&self) -> Network {
        Network::T5
    }
    fn key_prefixes(&self) -> &'static [&'static str] {
        &[]
    }
    fn detect(&self, ckpt: &Checkpoint) -> bool {
        ckpt.contains("encoder.block.0.layer.0.SelfAttention.q.weight")
    }

    fn analyze(&self, ckpt: &Checkpoint, config: Option<&Value>) -> Result<Analysis> {
        let mut d = Derivation::new(ckpt, config, Network::T5)?;
        let embedding = match (ckpt.get(SHARED), ckpt.get(EMBED_TOKENS)) {
            (Some(a), Some(b)) if a.shape() != b.shape() => bail!(d.error(format!(
                "{SHARED} {:?} and {EMBED_TOKENS} {:?} should be the same (tied) embedding",
                a.shape(),
                b.shape()
            ))),
            (Some(_), _) => SHARED,
            (None, Some(_)) => EMBED_TOKENS,
            (None, None) => {
                bail!(d.error(format!(
                    "no token embedding: neither {SHARED} nor {EMBED_TOKENS} is in the file"
                )))
            }
        };
        let [vocab, model] = d.shape(embedding, 2)?[..] else {
            unreachable!()
        };
        let vocab_size = d.from_shape("vocab_size", vocab, embedding)?;
        let d_model = d.from_shape("d_model", model, embedding)?;
        let num_layers = d.count("encoder.block.", "encoder block")?;
        let xxl = (d_model == 4096).then_some((24, "T5-v1.1-XXL (d_model 4096)"));
        let num_layers = d.from_count("num_layers", num_layers, "encoder.block.", xxl)?;
        let q = "encoder.block.0.layer.0.SelfAttention.q.weight";
        let inner = d.shape(q, 2)?[0];
        let wi = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight";
        let d_ff = d.from_shape("d_ff", d.shape(wi, 2)?[0], wi)?;
        // The bias table is [buckets, heads]: the one tensor that carries the head count.
        let [buckets, heads] = d.shape(POSITION_BIAS, 2)?[..] else {
            unreachable!()
        };
        let num_heads = d.from_shape("num_heads", heads, POSITION_BIAS)?;
        let relative_attention_num_buckets = d.from_shape("relative_attention_num_buckets", buckets, POSITION_BIAS)?;
        if heads == 0 || inner % heads != 0 {
            bail!(d.error(format!(
                "{q} has {inner} rows, not a multiple of the {heads} heads of {POSITION_BIAS}"
            )));
        }
        if buckets < 4 || buckets % 4 != 0 {
            bail!(d.error(format!(
                "{POSITION_BIAS} has {buckets} buckets; T5's bidirectional bucketing needs a multiple of 4"
            )));
        }
        let d_kv = d.from_shape("d_kv", inner / heads, q)?;
        let feed_forward: String = d.or_default("feed_forward_proj", "gated-gelu".to_string())?;
        let activation: String = d.or_default("dense_act_fn", "gelu_new".to_string())?;
        if feed_forward != "gated-gelu" || activation != "gelu_new" {
            bail!(d.error(format!(
                "feed_forward_proj `{feed_forward}` / dense_act_fn `{activation}` is not T5 v1.1's gated-gelu / gelu_new"
            )));
        }
        let config = T5Config {
            vocab_size,
            d_model,
            d_kv,
            num_heads,
            d_ff,
            num_layers,
            relative_attention_num_buckets,
            relative_attention_max_distance: d.or_default("relative_attention_max_distance", 128)?,
            layer_norm_epsilon: d.or_default("layer_norm_epsilon", 1e-6)?,
            embedding: embedding.to_string(),
            origins: d.origins(),
        };
        let is_xxl = (d_model, num_layers, d_ff, num_heads, d_kv) == (4096, 24, 10240, 64, 64);
        Ok(Analysis {
            layout: "transformers".into(),
            variant: is_xxl.then(|| "t5-v1_1-xxl".to_string()),
            config: serde_json::to_value(config)?,
        })
    }

    fn build<'a>(&self, w: &Weights<'a>, analysis: &Analysis, options: &GraphOptions) -> Result<Graph<'a>> {
        let cfg: T5Config = serde_json::from_value(analysis.config.clone())?;
        build_graph(
            w,
            &cfg,
            options,
            T5Precision {
                compute: options.float,
                ffn_out: options.wide,
                residual: options.wide,
            },
        )
    }
}

/// The encoder graph with the element types of `precision` (see `T5Precision`).
pub fn build_graph<'a>(
    w: &Weights<'a>,
    cfg: &T5Config,
    options: &GraphOptions,
    precision: T5Precision,
) -> Result<Graph<'a>> {
    // A file with both tied copies: read one.
    w.ignore(|n| n == EMBED_TOKENS && cfg.embedding == SHARED);
    let mut b = GraphBuilder::new(Network::T5.name(), options.opset, precision.compute);
    let ids = b.input("input_ids", ElemType::I64, &[Dim::from("B"), Dim::from("L")]);
    let table = w.get(&cfg.embedding, &[cfg.vocab_size, cfg.d_model]).add_to(&mut b);
    let x = b.gather(&table, &ids, 0);
    let mut x = b.convert(&x, precision.compute, precision.residual);
    let bias = b.scoped("position_bias", |b| {
        position_bias(b, &w.pp(POSITION_BIAS.trim_end_matches(".weight")), &ids, cfg)
    });
    for i in 0..cfg.num_layers {
        let block = w.pp("encoder.block").pp(i);
        x = b.scoped(block.prefix(), |b| encoder_block(b, &block, &x, &bias, cfg, precision));
    }
    let x = b.with_float(precision.residual, |b| {
        rms_norm(b, &w.pp("encoder.final_layer_norm"), &x, cfg)
    });
    let dims = [Dim::from("B"), Dim::from("L"), Dim::from(cfg.d_model)];
    b.output(&x, "text_embeddings", precision.residual, &dims);
    b.metadata("fluxbuild.config", serde_json::to_string(cfg)?);
    Ok(b.finish())
}

/// x + attn(RMS x), then + ffn(RMS x); the stream stays in `residual`, the branches convert.
fn encoder_block<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, x: &V, bias: &V, cfg: &T5Config, p: T5Precision) -> V {
    let h = b.with_float(p.residual, |b| rms_norm(b, &w.pp("layer.0.layer_norm"), x, cfg));
    let h = b.convert(&h, p.residual, p.compute);
    let a = self_attention(b, &w.pp("layer.0.SelfAttention"), &h, bias, cfg);
    let a = b.convert(&a, p.compute, p.residual);
    let x = b.add(x, &a);
    let h = b.with_float(p.residual, |b| rms_norm(b, &w.pp("layer.1.layer_norm"), &x, cfg));
    let h = b.convert(&h, p.residual, p.compute);
    let f = feed_forward(b, &w.pp("layer.1.DenseReluDense"), &h, cfg, p);
    let f = b.convert(&f, p.ffn_out, p.residual);
    b.add(&x, &f)
}

/// T5's RMSNorm: weight · x / √(mean(x²) + eps), no mean subtraction, no bias.
fn rms_norm<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, x: &V, cfg: &T5Config) -> V {
    nn::rms_norm(b, w.get("weight", &[cfg.d_model]), x, cfg.layer_norm_epsilon as f32)
}

/// Multi-head attention without 1/√d scaling (T5 folds it into the weights), plus the position bias.
fn self_attention<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, x: &V, bias: &V, cfg: &T5Config) -> V {
    let (d, heads, inner) = (cfg.d_model, cfg.num_heads, cfg.num_heads * cfg.d_kv);
    let project = |b: &mut GraphBuilder<'a>, name: &str| {
        let y = nn::linear_no_bias(b, &w.pp(name), x, d, inner);
        nn::split_heads(b, &y, heads, cfg.d_kv)
    };
    let (q, k, v) = (project(b, "q"), project(b, "k"), project(b, "v"));
    let a = nn::attention(b, &q, &k, &v, 1.0, Some(bias));
    let a = nn::merge_heads(b, &a, inner);
    nn::linear_no_bias(b, &w.pp("o"), &a, inner, d)
}

/// wo(gelu_tanh(wi_0 x) ⊙ wi_1 x): the product and `wo` run in `ffn_out` (the overflow point).
fn feed_forward<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, x: &V, cfg: &T5Config, p: T5Precision) -> V {
    let (d, ff) = (cfg.d_model, cfg.d_ff);
    let gate = nn::linear_no_bias(b, &w.pp("wi_0"), x, d, ff);
    let gate = b.gelu_tanh(&gate);
    let linear = nn::linear_no_bias(b, &w.pp("wi_1"), x, d, ff);
    let gate = b.convert(&gate, p.compute, p.ffn_out);
    let linear = b.convert(&linear, p.compute, p.ffn_out);
    b.with_float(p.ffn_out, |b| {
        let h = b.mul(&gate, &linear);
        nn::linear_no_bias(b, &w.pp("wo"), &h, ff, d)
    })
}

/// The [1, heads, L, L] bias added to every layer's attention scores: the bucket of each
/// (query, key) distance looked up in block 0's [buckets, heads] table. Computed from L in the
/// graph, so one graph serves every sequence length.
fn position_bias<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, ids: &V, cfg: &T5Config) -> V {
    let len = b.shape_of(ids, 1, 2);
    let len = b.squeeze(&len, &[0]);
    let (zero, one) = (b.scalar_i64(0), b.scalar_i64(1));
    let positions = b.op("Range", &[&zero, &len, &one], &[]);
    let query = b.unsqueeze(&positions, &[1]);
    let key = b.unsqueeze(&positions, &[0]);
    let relative = b.sub(&key, &query);
    let buckets = relative_bucket(
        b,
        &relative,
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance,
    );
    let table = w
        .get("weight", &[cfg.relative_attention_num_buckets, cfg.num_heads])
        .add_to(b);
    let bias = b.gather(&table, &buckets, 0);
    let bias = b.transpose(&bias, &[2, 0, 1]);
    b.unsqueeze(&bias, &[0])
}

/// transformers' bidirectional `_relative_position_bucket` of `relative` = key − query (int64):
/// half the buckets are for keys after the query; within a half, distances n < max_exact get a
/// bucket each and larger ones max_exact + ⌊ln(n/max_exact) / ln(max_distance/max_exact) ·
/// (half − max_exact)⌋, capped at half − 1. The float part runs in f32 in transformers' order of
/// operations (at n = 16, 32, 64 the value is an exact integer in f32, so the order matters);
/// Max(n, max_exact) keeps Log's argument ≥ 1 where Where picks the small branch anyway, so no
/// -inf or NaN is ever computed.
pub fn relative_bucket(b: &mut GraphBuilder<'_>, relative: &V, num_buckets: usize, max_distance: usize) -> V {
    let half = (num_buckets / 2) as i64;
    let max_exact = half / 2;
    let [zero, half_c, max_exact_c, last] = [0, half, max_exact, half - 1].map(|v| b.scalar_i64(v));
    let after = b.op("Greater", &[relative, &zero], &[]);
    let after = b.cast(&after, ElemType::I64);
    let base = b.mul(&after, &half_c);
    let distance = b.unary("Abs", relative);
    let small = b.op("Less", &[&distance, &max_exact_c], &[]);
    let clipped = b.op("Max", &[&distance, &max_exact_c], &[]);
    let log_steps = b.with_float(ElemType::F32, |b| {
        let n = b.cast(&clipped, ElemType::F32);
        let ratio = b.div_scalar(&n, max_exact as f32);
        let log = b.unary("Log", &ratio);
        let range = (max_distance as f64 / max_exact as f64).ln() as f32;
        let log = b.div_scalar(&log, range);
        let steps = b.mul_scalar(&log, (half - max_exact) as f32);
        b.unary("Floor", &steps)
    });
    let log_steps = b.cast(&log_steps, ElemType::I64);
    let large = b.add(&log_steps, &max_exact_c);
    let large = b.op("Min", &[&large, &last], &[]);
    let within = b.op("Where", &[&small, &distance, &large], &[]);
    b.add(&base, &within)
}
