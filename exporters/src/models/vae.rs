//! AutoencoderKL's decoder (diffusers), FLUX's 16-channel VAE: `latent` [B, 16, h, w] ->
//! `images` [B, 3, 8h, 8w], exactly `vae.decode(latent).sample` (no scaling, shift or clamp: the
//! pipeline does those). Reads diffusers' layout (`vae/`) and the original LDM layout of BFL's
//! `ae.safetensors`; only `decoder.*` is used.

use super::derive::Derivation;
use super::{Analysis, Exporter, GraphOptions};
use crate::checkpoint::Checkpoint;
use crate::onnx::{nn, Dim, Graph, GraphBuilder, Param, Weights, V};
use anyhow::{bail, Result};
use fluxbuild_contract::Network;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

pub struct VaeDecoderExporter;

/// Every GroupNorm of the diffusers VAE decoder uses this epsilon (hard-coded there too).
const NORM_EPS: f32 = 1e-6;
const FLUX_CHANNELS: [usize; 4] = [128, 256, 512, 512];
/// FLUX.1's latent normalization (`vae/config.json`), for checkpoints that come without a config.
pub const FLUX_VAE_SCALING: f64 = 0.3611;
pub const FLUX_VAE_SHIFT: f64 = 0.1159;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaeLayout {
    /// diffusers: `decoder.up_blocks.{i}.resnets.{j}`, `mid_block.attentions.0.to_q` [C, C].
    Diffusers,
    /// LDM / BFL `ae.safetensors`: `decoder.up.{n-1-i}.block.{j}`, `mid.attn_1.q` [C, C, 1, 1].
    Ldm,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VaeDecoderConfig {
    pub layout: VaeLayout,
    pub latent_channels: usize,
    pub out_channels: usize,
    /// In diffusers' (encoder) order; the decoder runs them from the last to the first.
    pub block_out_channels: Vec<usize>,
    /// The decoder's up blocks have layers_per_block + 1 resnets.
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub mid_block_add_attention: bool,
    /// The latent normalization the pipeline undoes before decoding (`z / scaling + shift`). Not
    /// part of the graph: recorded in the manifest for local generation and the orchestrator.
    pub scaling_factor: f64,
    pub shift_factor: f64,
    /// Where each value came from.
    pub origins: BTreeMap<String, String>,
}

impl VaeDecoderConfig {
    fn up_blocks(&self) -> usize {
        self.block_out_channels.len()
    }
    /// Channels of up block `i` (decoder order).
    fn up_channels(&self, i: usize) -> usize {
        self.block_out_channels[self.up_blocks() - 1 - i]
    }
}

/// Module paths in each layout; `up` counts in decoder order.
impl VaeLayout {
    fn up_block(self, up: usize, blocks: usize) -> String {
        match self {
            VaeLayout::Diffusers => format!("decoder.up_blocks.{up}"),
            VaeLayout::Ldm => format!("decoder.up.{}", blocks - 1 - up),
        }
    }
    fn resnets(self) -> &'static str {
        match self {
            VaeLayout::Diffusers => "resnets.",
            VaeLayout::Ldm => "block.",
        }
    }
    fn resnet(self, j: usize) -> String {
        format!("{}{j}", self.resnets())
    }
    fn upsampler(self) -> &'static str {
        match self {
            VaeLayout::Diffusers => "upsamplers.0.conv",
            VaeLayout::Ldm => "upsample.conv",
        }
    }
    fn mid_resnet(self, r: usize) -> String {
        match self {
            VaeLayout::Diffusers => format!("decoder.mid_block.resnets.{r}"),
            VaeLayout::Ldm => format!("decoder.mid.block_{}", r + 1),
        }
    }
    fn mid_attention(self) -> &'static str {
        match self {
            VaeLayout::Diffusers => "decoder.mid_block.attentions.0",
            VaeLayout::Ldm => "decoder.mid.attn_1",
        }
    }
    /// (norm, q, k, v, out) under the attention.
    fn attention_parts(self) -> [&'static str; 5] {
        match self {
            VaeLayout::Diffusers => ["group_norm", "to_q", "to_k", "to_v", "to_out.0"],
            VaeLayout::Ldm => ["norm", "q", "k", "v", "proj_out"],
        }
    }
    fn shortcut(self) -> &'static str {
        match self {
            VaeLayout::Diffusers => "conv_shortcut",
            VaeLayout::Ldm => "nin_shortcut",
        }
    }
    fn norm_out(self) -> &'static str {
        match self {
            VaeLayout::Diffusers => "decoder.conv_norm_out",
            VaeLayout::Ldm => "decoder.norm_out",
        }
    }
    fn up_prefix(self) -> &'static str {
        match self {
            VaeLayout::Diffusers => "decoder.up_blocks.",
            VaeLayout::Ldm => "decoder.up.",
        }
    }
}

impl Exporter for VaeDecoderExporter {
    fn network(&self) -> Network {
        Network::VaeDecoder
    }
    fn key_prefixes(&self) -> &'static [&'static str] {
        &[]
    }
    fn detect(&self, ckpt: &Checkpoint) -> bool {
        ckpt.contains("decoder.conv_in.weight")
    }

    fn analyze(&self, ckpt: &Checkpoint, config: Option<&Value>) -> Result<Analysis> {
        let mut d = Derivation::new(ckpt, config, Network::VaeDecoder)?;
        let layout = match (
            ckpt.indices_under("decoder.up_blocks.").is_empty(),
            ckpt.indices_under("decoder.up.").is_empty(),
        ) {
            (false, true) => VaeLayout::Diffusers,
            (true, false) => VaeLayout::Ldm,
            (false, false) => {
                bail!(d.error("has both decoder.up_blocks.* (diffusers) and decoder.up.* (LDM) tensors"))
            }
            (true, true) => {
                bail!(d.error("no decoder up blocks (neither decoder.up_blocks.* nor decoder.up.*): not a VAE decoder"))
            }
        };
        let conv_in = "decoder.conv_in.weight";
        let conv_in_shape = d.shape(conv_in, 4)?;
        let latent_channels = d.from_shape("latent_channels", conv_in_shape[1], conv_in)?;
        let blocks = d.count(layout.up_prefix(), "decoder up block")?;
        let mut up_channels = Vec::with_capacity(blocks);
        let mut resnets = None;
        for up in 0..blocks {
            let block = layout.up_block(up, blocks);
            let conv2 = format!("{block}.{}.conv2.weight", layout.resnet(0));
            up_channels.push(d.shape(&conv2, 4)?[0]);
            let count = d.count(&format!("{block}.{}", layout.resnets()), "resnet")?;
            match resnets {
                Some(n) if n != count => {
                    bail!(d.error(format!(
                        "{} has {count} resnets, the first up block has {n}",
                        d.file_name(&block)
                    )))
                }
                _ => resnets = Some(count),
            }
        }
        if conv_in_shape[0] != up_channels[0] {
            bail!(d.error(format!(
                "{conv_in} gives {} channels but the first up block ({}) takes {}",
                conv_in_shape[0],
                d.file_name(&layout.up_block(0, blocks)),
                up_channels[0]
            )));
        }
        let conv_out = "decoder.conv_out.weight";
        let conv_out_shape = d.shape(conv_out, 4)?;
        if conv_out_shape[1] != up_channels[blocks - 1] {
            bail!(d.error(format!(
                "{conv_out} takes {} channels but the last up block ({}) gives {}: is an up block missing?",
                conv_out_shape[1],
                d.file_name(&layout.up_block(blocks - 1, blocks)),
                up_channels[blocks - 1]
            )));
        }
        let out_channels = d.from_shape("out_channels", conv_out_shape[0], conv_out)?;
        let block_out_channels: Vec<usize> = up_channels.iter().rev().copied().collect();
        let origin = format!(
            "shapes of {}N.{}0.conv2.weight",
            d.file_name(layout.up_prefix()),
            layout.resnets()
        );
        let block_out_channels = d.record("block_out_channels", block_out_channels, origin)?;
        let resnets_prefix = format!("{}.{}", layout.up_block(0, blocks), layout.resnets());
        let layers_per_block = d.from_count("layers_per_block", resnets.unwrap_or(1) - 1, &resnets_prefix, None)?;
        let flux = (block_out_channels == FLUX_CHANNELS)
            .then_some((32, "FLUX's VAE (channels [128, 256, 512, 512]) uses 32 groups"));
        let norm_num_groups: usize = d.required("norm_num_groups", flux, "GroupNorm group count")?;
        if let Some(c) = block_out_channels
            .iter()
            .find(|c| norm_num_groups == 0 || *c % norm_num_groups != 0)
        {
            bail!(d.error(format!(
                "norm_num_groups = {norm_num_groups} does not divide the {c} channels of a block"
            )));
        }
        let config = VaeDecoderConfig {
            layout,
            latent_channels,
            out_channels,
            block_out_channels,
            layers_per_block,
            norm_num_groups,
            mid_block_add_attention: d.or_default("mid_block_add_attention", true)?,
            scaling_factor: d.required(
                "scaling_factor",
                Some((FLUX_VAE_SCALING, "FLUX.1 default")),
                "latent scaling factor",
            )?,
            shift_factor: d.required(
                "shift_factor",
                Some((FLUX_VAE_SHIFT, "FLUX.1 default")),
                "latent shift factor",
            )?,
            origins: d.origins(),
        };
        let is_flux = config.block_out_channels == FLUX_CHANNELS && (latent_channels, layers_per_block) == (16, 2);
        Ok(Analysis {
            layout: serde_json::to_value(layout)?.as_str().unwrap_or_default().to_string(),
            variant: is_flux.then(|| "flux".to_string()),
            config: serde_json::to_value(config)?,
        })
    }

    fn build<'a>(&self, w: &Weights<'a>, analysis: &Analysis, options: &GraphOptions) -> Result<Graph<'a>> {
        let cfg: VaeDecoderConfig = serde_json::from_value(analysis.config.clone())?;
        let layout = cfg.layout;
        // The encoder half of the autoencoder is not needed to decode.
        w.ignore(|n| n.starts_with("encoder.") || n.starts_with("quant_conv."));
        let mut b = GraphBuilder::new(Network::VaeDecoder.name(), options.opset, options.float);
        let float = b.float;
        let latent = b.input(
            "latent",
            float,
            &[
                Dim::from("B"),
                Dim::from(cfg.latent_channels),
                Dim::from("h"),
                Dim::from("w"),
            ],
        );
        let top = cfg.up_channels(0);
        let mut x = nn::conv2d(&mut b, &w.pp("decoder.conv_in"), &latent, cfg.latent_channels, top, 3);
        x = b.scoped("decoder.mid", |b| {
            let x = resnet_block(b, &w.pp(layout.mid_resnet(0)), &x, top, top, &cfg);
            let x = if cfg.mid_block_add_attention {
                attention(b, &w.pp(layout.mid_attention()), &x, top, &cfg)
            } else {
                x
            };
            resnet_block(b, &w.pp(layout.mid_resnet(1)), &x, top, top, &cfg)
        });
        let mut channels = top;
        for up in 0..cfg.up_blocks() {
            let block = w.pp(layout.up_block(up, cfg.up_blocks()));
            x = b.scoped(block.prefix(), |b| up_block(b, &block, &x, up, channels, &cfg));
            channels = cfg.up_channels(up);
        }
        let x = nn::group_norm(
            &mut b,
            &w.pp(layout.norm_out()),
            &x,
            channels,
            cfg.norm_num_groups,
            NORM_EPS,
        );
        let x = b.silu(&x);
        let images = nn::conv2d(&mut b, &w.pp("decoder.conv_out"), &x, channels, cfg.out_channels, 3);
        b.output(
            &images,
            "images",
            float,
            &[
                Dim::from("B"),
                Dim::from(cfg.out_channels),
                Dim::from("H"),
                Dim::from("W"),
            ],
        );
        b.metadata("fluxbuild.config", analysis.config.to_string());
        Ok(b.finish())
    }
}

/// UpDecoderBlock2D: layers_per_block + 1 resnets, then (except the last block) nearest ×2 + conv.
fn up_block<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, x: &V, up: usize, c_in: usize, cfg: &VaeDecoderConfig) -> V {
    let c = cfg.up_channels(up);
    let mut x = x.clone();
    for j in 0..=cfg.layers_per_block {
        x = resnet_block(
            b,
            &w.pp(cfg.layout.resnet(j)),
            &x,
            if j == 0 { c_in } else { c },
            c,
            cfg,
        );
    }
    if up + 1 == cfg.up_blocks() {
        return x;
    }
    let x = b.resize_nearest(&x, &[1.0, 1.0, 2.0, 2.0]);
    nn::conv2d(b, &w.pp(cfg.layout.upsampler()), &x, c, c, 3)
}

/// ResnetBlock2D: shortcut(x) + conv2(SiLU(GN2(conv1(SiLU(GN1 x))))); 1×1 conv shortcut when
/// the channel count changes.
fn resnet_block<'a>(
    b: &mut GraphBuilder<'a>,
    w: &Weights<'a>,
    x: &V,
    c_in: usize,
    c_out: usize,
    cfg: &VaeDecoderConfig,
) -> V {
    let groups = cfg.norm_num_groups;
    let h = nn::group_norm(b, &w.pp("norm1"), x, c_in, groups, NORM_EPS);
    let h = b.silu(&h);
    let h = nn::conv2d(b, &w.pp("conv1"), &h, c_in, c_out, 3);
    let h = nn::group_norm(b, &w.pp("norm2"), &h, c_out, groups, NORM_EPS);
    let h = b.silu(&h);
    let h = nn::conv2d(b, &w.pp("conv2"), &h, c_out, c_out, 3);
    let skip = if c_in == c_out {
        x.clone()
    } else {
        nn::conv2d(b, &w.pp(cfg.layout.shortcut()), x, c_in, c_out, 1)
    };
    b.add(&skip, &h)
}

/// The mid block's single-head self-attention over the h·w positions, with a residual.
fn attention<'a>(b: &mut GraphBuilder<'a>, w: &Weights<'a>, x: &V, c: usize, cfg: &VaeDecoderConfig) -> V {
    let [norm, q, k, v, out] = cfg.layout.attention_parts();
    let h = nn::group_norm(b, &w.pp(norm), x, c, cfg.norm_num_groups, NORM_EPS);
    let h = b.reshape(&h, &[0, c as i64, -1]);
    let tokens = b.transpose(&h, &[0, 2, 1]);
    let project = |b: &mut GraphBuilder<'a>, name: &str| {
        let y = nn::linear_param(
            b,
            &tokens,
            projection(&w.pp(name), c, cfg.layout),
            Some(w.pp(name).get("bias", &[c])),
        );
        nn::split_heads(b, &y, 1, c)
    };
    let (q, k, v) = (project(b, q), project(b, k), project(b, v));
    let a = nn::attention(b, &q, &k, &v, (c as f32).powf(-0.5), None);
    let a = nn::merge_heads(b, &a, c);
    let a = nn::linear_param(
        b,
        &a,
        projection(&w.pp(out), c, cfg.layout),
        Some(w.pp(out).get("bias", &[c])),
    );
    let a = b.transpose(&a, &[0, 2, 1]);
    let shape = b.shape_of(x, 0, i64::MAX);
    let a = b.reshape_to(&a, &shape);
    b.add(x, &a)
}

/// A [C, C] projection: diffusers' Linear, or LDM's 1×1 conv [C, C, 1, 1] read as one.
fn projection<'a>(w: &Weights<'a>, c: usize, layout: VaeLayout) -> Param<'a> {
    match layout {
        VaeLayout::Diffusers => w.get("weight", &[c, c]),
        VaeLayout::Ldm => w.get("weight", &[c, c, 1, 1]).reshaped(&[c, c]),
    }
}
