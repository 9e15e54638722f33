//! CLIPTextModel (transformers), FLUX's CLIP-L/14 text encoder: `input_ids` [B, 77] ->
//! `text_embeddings` [B, 77, hidden] (last_hidden_state) and `pooled_embeddings` [B, hidden]
//! (pooler_output, the only part FLUX uses). Reads transformers' layout with or without the
//! `text_model.` prefix (FLUX's diffusers repo, transformers 5, ComfyUI's `clip_l.safetensors`).

use super::derive::Derivation;
use super::{Analysis, Exporter, GraphOptions};
use crate::checkpoint::Checkpoint;
use crate::onnx::{nn, Attr, Dim, ElemType, Graph, GraphBuilder, Weights, V};
use anyhow::{bail, Result};
use fluxbuild_contract::Network;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

pub struct ClipExporter;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// The sequence length: `input_ids` is [B, max_position_embeddings].
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: String,
    /// 2 (FLUX's legacy value): pool at argmax(input_ids); otherwise at the first id equal to it.
    pub eos_token_id: i64,
    /// Where each value came from.
    pub origins: BTreeMap<String, String>,
}

impl Exporter for ClipExporter {
    fn network(&self) -> Network {
        Network::Clip
    }
    fn key_prefixes(&self) -> &'static [&'static str] {
        &["text_model."]
    }
    fn detect(&self, ckpt: &Checkpoint) -> bool {
        // Also when the `text_model.` prefix was not stripped (a loader that knows no prefixes).
        ckpt.names().any(|n| n.ends_with("embeddings.token_embedding.weight"))
    }

    fn analyze(&self, ckpt: &Checkpoint, config: Option<&Value>) -> Result<Analysis> {
        let mut d = Derivation::new(ckpt, config, Network::Clip)?;
        let token = "embeddings.token_embedding.weight";
        let [vocab, hidden] = d.shape(token, 2)?[..] else {
            unreachable!()
        };
        let vocab_size = d.from_shape("vocab_size", vocab, token)?;
        let hidden_size = d.from_shape("hidden_size", hidden, token)?;
        let position = "embeddings.position_embedding.weight";
        let positions = d.shape(position, 2)?;
        if positions[1] != hidden {
            bail!(d.error(format!(
                "tensor {} is {positions:?}, but the width is {hidden}",
                d.file_name(position)
            )));
        }
        let max_position_embeddings = d.from_shape("max_position_embeddings", positions[0], position)?;
        let layers = d.count("encoder.layers.", "encoder layer")?;
        let clip_l = (hidden == 768).then_some((12, "CLIP-L (width 768)"));
        let num_hidden_layers = d.from_count("num_hidden_layers", layers, "encoder.layers.", clip_l)?;
        let fc1 = "encoder.layers.0.mlp.fc1.weight";
        let intermediate_size = d.from_shape("intermediate_size", d.shape(fc1, 2)?[0], fc1)?;
        let clip_l = (hidden == 768).then_some((12, "CLIP-L (width 768) has 12 heads"));
        let num_attention_heads: usize = d.required("num_attention_heads", clip_l, "number of attention heads")?;
        if num_attention_heads == 0 || hidden % num_attention_heads != 0 {
            bail!(d.error(format!(
                "num_attention_heads = {num_attention_heads} does not divide the width {hidden}"
            )));
        }
        let hidden_act: String = d.or_default("hidden_act", "quick_gelu".to_string())?;
        if hidden_act != "quick_gelu" {
            bail!(d.error(format!(
                "hidden_act `{hidden_act}` is not supported (CLIP-L uses quick_gelu)"
            )));
        }
        let config = ClipConfig {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            max_position_embeddings,
            layer_norm_eps: d.or_default("layer_norm_eps", 1e-5)?,
            hidden_act,
            eos_token_id: d.required(
                "eos_token_id",
                Some((2, "FLUX's CLIP-L config (legacy id 2)")),
                "eos token id",
            )?,
            origins: d.origins(),
        };
        // The pooling key id·L + position must fit the int32 that ArgMax runs on.
        if (vocab_size as u64 + 1) * max_position_embeddings as u64 >= i32::MAX as u64 {
            bail!(d.error(format!("vocabulary of {vocab_size} is too large for the pooling index")));
        }
        let is_clip_l = (
            hidden_size,
            num_hidden_layers,
            intermediate_size,
            max_position_embeddings,
        ) == (768, 12, 3072, 77);
        Ok(Analysis {
            layout: if ckpt.prefix.is_empty() {
                "transformers"
            } else {
                "transformers (text_model. prefix)"
            }
            .into(),
            variant: is_clip_l.then(|| "clip-l".to_string()),
            config: serde_json::to_value(config)?,
        })
    }

    fn build<'a>(&self, w: &Weights<'a>, analysis: &Analysis, options: &GraphOptions) -> Result<Graph<'a>> {
        let cfg: ClipConfig = serde_json::from_value(analysis.config.clone())?;
        // Unused by FLUX: the position-id buffer of old files and CLIPTextModelWithProjection's head.
        w.ignore(|n| n == "embeddings.position_ids" || n == "text_projection.weight");
        let mut b = GraphBuilder::new(Network::Clip.name(), options.opset, options.float);
        let len = cfg.max_position_embeddings;
        let ids = b.input("input_ids", ElemType::I64, &[Dim::from("B"), Dim::from(len)]);
        let mut x = embeddings(&mut b, &w.pp("embeddings"), &ids, &cfg);
        let mask = causal_mask(&mut b, len);
        for i in 0..cfg.num_hidden_layers {
            let layer = w.pp("encoder.layers").pp(i);
            x = b.scoped(layer.prefix(), |b| encoder_layer(b, &layer, &x, &mask, &cfg));
        }
        let hidden = nn::layer_norm(
            &mut b,
            &w.pp("final_layer_norm"),
            &x,
            cfg.hidden_size,
            cfg.layer_norm_eps as f32,
        );
        let pooled = b.scoped("pooler", |b| pool(b, &hidden, &ids, &cfg));
        let float = b.float;
        b.output(
            &hidden,
            "text_embeddings",
            float,
            &[Dim::from("B"), Dim::from(len), Dim::from(cfg.hidden_size)],
        );
        b.output(
            &pooled,
            "pooled_embeddings",
            float,
            &[Dim::from("B"), Dim::from(cfg.hidden_size)],
        );
        b.metadata("fluxbuild.config", analysis.config.to_string());
        Ok(b.finish())
    }
}

/// token_embedding[ids] + position_embedding[0..L].
fn embeddings<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, ids: &V, cfg: &ClipConfig) -> V {
    let (vocab, d, len) = (cfg.vocab_size, cfg.hidden_size, cfg.max_position_embeddings);
    let table = w.get("token_embedding.weight", &[vocab, d]).add_to(b);
    let tokens = b.gather(&table, ids, 0);
    let positions = w.get("position_embedding.weight", &[len, d]).add_to(b);
    b.add(&tokens, &positions)
}

/// [L, L]: 0 on and below the diagonal, the float type's lowest value above it (as transformers).
fn causal_mask(b: &mut GraphBuilder<'_>, len: usize) -> V {
    let lowest = match b.float {
        ElemType::F16 => half::f16::MIN.to_f32(),
        ElemType::BF16 => half::bf16::MIN.to_f32(),
        _ => f32::MIN,
    };
    let values: Vec<f32> = (0..len * len)
        .map(|i| if i % len > i / len { lowest } else { 0.0 })
        .collect();
    let float = b.float;
    b.const_float(float, &[len, len], &values)
}

/// Pre-LN block: x + attn(LN1 x), then + mlp(LN2 x).
fn encoder_layer<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, x: &V, mask: &V, cfg: &ClipConfig) -> V {
    let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps as f32);
    let h = nn::layer_norm(b, &w.pp("layer_norm1"), x, d, eps);
    let h = self_attention(b, &w.pp("self_attn"), &h, mask, cfg);
    let x = b.add(x, &h);
    let h = nn::layer_norm(b, &w.pp("layer_norm2"), &x, d, eps);
    let h = mlp(b, &w.pp("mlp"), &h, cfg);
    b.add(&x, &h)
}

/// Causal multi-head self-attention, scale 1/√head_dim.
fn self_attention<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, x: &V, mask: &V, cfg: &ClipConfig) -> V {
    let (d, heads) = (cfg.hidden_size, cfg.num_attention_heads);
    let head_dim = d / heads;
    let project = |b: &mut GraphBuilder<'a>, name: &str| {
        let y = nn::linear(b, &w.pp(name), x, d, d);
        nn::split_heads(b, &y, heads, head_dim)
    };
    let (q, k, v) = (project(b, "q_proj"), project(b, "k_proj"), project(b, "v_proj"));
    let a = nn::attention(b, &q, &k, &v, (head_dim as f32).powf(-0.5), Some(mask));
    let a = nn::merge_heads(b, &a, d);
    nn::linear(b, &w.pp("out_proj"), &a, d, d)
}

/// fc2(quick_gelu(fc1 x)), quick_gelu = x·σ(1.702x).
fn mlp<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, x: &V, cfg: &ClipConfig) -> V {
    let (d, inner) = (cfg.hidden_size, cfg.intermediate_size);
    let h = nn::linear(b, &w.pp("fc1"), x, d, inner);
    let s = b.mul_scalar(&h, 1.702);
    let s = b.sigmoid(&s);
    let h = b.mul(&h, &s);
    nn::linear(b, &w.pp("fc2"), &h, inner, d)
}

/// The final-norm hidden state of each row's first end-of-text token, as transformers picks it:
/// with the legacy eos_token_id 2 (FLUX's config) that is argmax(input_ids), the first maximal id
/// (the tokenizer's end-of-text 49407, which it also pads with); otherwise the first id equal to
/// eos_token_id. TensorRT does not promise which of tied maxima ArgMax returns, so the key is
/// made unique first: key = f(id)·L + (L−1−position) is largest at the first maximal f(id).
fn pool(b: &mut GraphBuilder<'_>, hidden: &V, ids: &V, cfg: &ClipConfig) -> V {
    let len = cfg.max_position_embeddings;
    let ids = b.cast(ids, ElemType::I32);
    let score = if cfg.eos_token_id == 2 {
        ids
    } else {
        let eos = b.const_i32(&[cfg.eos_token_id as i32]);
        let is_eos = b.op("Equal", &[&ids, &eos], &[]);
        b.cast(&is_eos, ElemType::I32)
    };
    let len_const = b.const_i32(&[len as i32]);
    let scaled = b.mul(&score, &len_const);
    let tie_break = b.const_i32(&(0..len as i32).rev().collect::<Vec<_>>());
    let key = b.add(&scaled, &tie_break);
    let position = b.op("ArgMax", &[&key], &[("axis", Attr::Int(1)), ("keepdims", Attr::Int(1))]);
    b.op("GatherND", &[hidden, &position], &[("batch_dims", Attr::Int(1))])
}
