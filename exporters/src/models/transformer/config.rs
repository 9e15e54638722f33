//! What a FLUX transformer checkpoint is, read from its tensor shapes: the layout (diffusers or
//! black-forest-labs), the variant (guidance embedder present = dev) and every dimension.
//! Only the RoPE axes split cannot be seen in any shape; it comes from the config when given.

use crate::checkpoint::Checkpoint;
use anyhow::{bail, ensure, Result};
use fluxbuild_contract::Variant;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Checkpoint naming scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// diffusers' FluxTransformer2DModel: split q/k/v, `transformer_blocks.N.`.
    Diffusers,
    /// black-forest-labs / ComfyUI single file: fused qkv and linear1, `double_blocks.N.`.
    Bfl,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Diffusers => "diffusers",
            Layout::Bfl => "bfl",
        }
    }

    pub fn parse(name: &str) -> Result<Layout> {
        match name {
            "diffusers" => Ok(Layout::Diffusers),
            "bfl" => Ok(Layout::Bfl),
            other => bail!("unknown transformer layout `{other}` (expected diffusers or bfl)"),
        }
    }

    pub fn detect(ckpt: &Checkpoint) -> Option<Layout> {
        if ckpt.contains("x_embedder.weight") {
            Some(Layout::Diffusers)
        } else if ckpt.contains("img_in.weight") {
            Some(Layout::Bfl)
        } else {
            None
        }
    }

    /// Checkpoint names of the tensors whose shapes give the dimensions.
    fn probes(self) -> Probes {
        match self {
            Layout::Diffusers => Probes {
                double_blocks: "transformer_blocks.",
                single_blocks: "single_transformer_blocks.",
                img_in: "x_embedder.weight",
                txt_in: "context_embedder.weight",
                time_in: "time_text_embed.timestep_embedder.linear_1.weight",
                vector_in: "time_text_embed.text_embedder.linear_1.weight",
                guidance: "time_text_embed.guidance_embedder.",
                final_linear: "proj_out.weight",
                double_q_norm: "attn.norm_q.weight",
                double_mlp_in: "ff.net.0.proj.weight",
                single_q_norm: "attn.norm_q.weight",
                single_mlp_in: "proj_mlp.weight",
            },
            Layout::Bfl => Probes {
                double_blocks: "double_blocks.",
                single_blocks: "single_blocks.",
                img_in: "img_in.weight",
                txt_in: "txt_in.weight",
                time_in: "time_in.in_layer.weight",
                vector_in: "vector_in.in_layer.weight",
                guidance: "guidance_in.",
                final_linear: "final_layer.linear.weight",
                double_q_norm: "img_attn.norm.query_norm.scale",
                double_mlp_in: "img_mlp.0.weight",
                single_q_norm: "norm.query_norm.scale",
                // linear1 = [q; k; v; mlp]: its rows minus 3·width
                single_mlp_in: "linear1.weight",
            },
        }
    }
}

struct Probes {
    double_blocks: &'static str,
    single_blocks: &'static str,
    img_in: &'static str,
    txt_in: &'static str,
    time_in: &'static str,
    vector_in: &'static str,
    guidance: &'static str,
    final_linear: &'static str,
    double_q_norm: &'static str,
    double_mlp_in: &'static str,
    single_q_norm: &'static str,
    single_mlp_in: &'static str,
}

/// The derived configuration, in diffusers' config.json names where one exists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FluxConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Model width (3072 in FLUX.1) = num_attention_heads · attention_head_dim.
    pub inner_dim: usize,
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub mlp_hidden_dim: usize,
    /// Double-stream blocks.
    pub num_layers: usize,
    /// Single-stream blocks.
    pub num_single_layers: usize,
    /// Text-encoder (T5) width.
    pub joint_attention_dim: usize,
    /// Pooled text embedding (CLIP) width.
    pub pooled_projection_dim: usize,
    /// Width of the sinusoidal timestep / guidance embedding (256).
    pub timestep_embedding_dim: usize,
    pub guidance_embeds: bool,
    /// RoPE dims per position axis; they sum to attention_head_dim.
    pub axes_dims_rope: Vec<usize>,
}

/// RoPE split of FLUX.1 (head dim 128), also BFL's `FluxParams.axes_dim`.
const FLUX1_AXES: [usize; 3] = [16, 56, 56];

impl FluxConfig {
    /// Derives the configuration from tensor shapes. `config` (a `--config` file or the
    /// checkpoint's config.json) supplies the RoPE axes and is checked against the shapes.
    pub fn derive(ckpt: &Checkpoint, layout: Layout, config: Option<&Value>) -> Result<FluxConfig> {
        let p = layout.probes();
        let source = ckpt
            .located
            .files
            .first()
            .map(|f| f.display().to_string())
            .unwrap_or_default();
        let mut missing = Vec::new();
        let mut shape = |name: &str, rank: usize, why: &str| -> Vec<usize> {
            match ckpt.get(name) {
                Some(t) if t.shape().len() == rank => t.shape().to_vec(),
                Some(t) => {
                    missing.push(format!("{name} has shape {:?}, which cannot give {why}", t.shape()));
                    vec![0; rank]
                }
                None => {
                    missing.push(format!("{name} (gives {why}) is missing"));
                    vec![0; rank]
                }
            }
        };
        let num_layers = block_count(ckpt, p.double_blocks);
        let num_single_layers = block_count(ckpt, p.single_blocks);
        let img_in = shape(p.img_in, 2, "the width and in_channels");
        let (inner_dim, in_channels) = (img_in[0], img_in[1]);
        let joint_attention_dim = shape(p.txt_in, 2, "joint_attention_dim")[1];
        let timestep_embedding_dim = shape(p.time_in, 2, "the timestep embedding width")[1];
        let pooled_projection_dim = shape(p.vector_in, 2, "pooled_projection_dim")[1];
        let out_channels = shape(p.final_linear, 2, "out_channels")[0];
        // Head dim and MLP width from the first block there is (double, else single).
        let (head_dim, mlp_rows) = if num_layers > 0 {
            let first = format!(
                "{}{}.",
                p.double_blocks,
                ckpt.indices_under(p.double_blocks).first().unwrap()
            );
            (
                shape(&format!("{first}{}", p.double_q_norm), 1, "the head dim")[0],
                shape(&format!("{first}{}", p.double_mlp_in), 2, "the MLP width")[0],
            )
        } else if num_single_layers > 0 {
            let first = format!(
                "{}{}.",
                p.single_blocks,
                ckpt.indices_under(p.single_blocks).first().unwrap()
            );
            (
                shape(&format!("{first}{}", p.single_q_norm), 1, "the head dim")[0],
                shape(&format!("{first}{}", p.single_mlp_in), 2, "the MLP width")[0],
            )
        } else {
            missing.push(format!(
                "no {}N.* or {}N.* tensors: no transformer blocks",
                p.double_blocks, p.single_blocks
            ));
            (0, 0)
        };
        if !missing.is_empty() {
            bail!(
                "{source}: cannot derive the FLUX transformer configuration ({} layout):\n  - {}",
                layout.name(),
                missing.join("\n  - ")
            );
        }
        let mlp_hidden_dim = if num_layers == 0 && layout == Layout::Bfl {
            mlp_rows.saturating_sub(3 * inner_dim)
        } else {
            mlp_rows
        };
        ensure!(
            head_dim > 0 && head_dim % 2 == 0,
            "{source}: head dim {head_dim} (from the q-norm weight) must be even and positive (RoPE rotates pairs)"
        );
        ensure!(
            inner_dim % head_dim == 0,
            "{source}: width {inner_dim} (from {}) is not a multiple of the head dim {head_dim}",
            p.img_in
        );
        ensure!(
            timestep_embedding_dim % 2 == 0,
            "{source}: {} has an odd width {timestep_embedding_dim}",
            p.time_in
        );
        let guidance_embeds = ckpt.names().any(|n| n.starts_with(p.guidance));
        let axes_dims_rope = rope_axes(config, head_dim, &source)?;
        let derived = FluxConfig {
            in_channels,
            out_channels,
            inner_dim,
            num_attention_heads: inner_dim / head_dim,
            attention_head_dim: head_dim,
            mlp_hidden_dim,
            num_layers,
            num_single_layers,
            joint_attention_dim,
            pooled_projection_dim,
            timestep_embedding_dim,
            guidance_embeds,
            axes_dims_rope,
        };
        if let Some(config) = config {
            derived.check_against(config, &source)?;
        }
        Ok(derived)
    }

    /// The text-to-image base: guidance-distilled dev, or schnell.
    pub fn base_variant(&self) -> Variant {
        Variant::from_guidance(self.guidance_embeds)
    }

    /// Which FLUX.1 model this is: by input width (Fill packs image and mask into 384 input
    /// channels, Canny and Depth a control image into 128), else by the pipeline class in
    /// `model_index.json`, else by the file name ComfyUI users keep (`flux1-dev-kontext_...`);
    /// same-shaped Kontext and Krea cannot be told apart any other way.
    pub fn variant(&self, ckpt: &Checkpoint) -> String {
        let by_width = match self.in_channels / self.out_channels.max(1) {
            6 => Some("fill"),
            2 => Some("canny-or-depth"),
            _ => None,
        };
        let pipeline_class = ckpt
            .located
            .files
            .first()
            .and_then(|f| f.parent()?.parent().map(|p| p.join("model_index.json")))
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["_class_name"].as_str().map(str::to_lowercase))
            .unwrap_or_default();
        let file_name = ckpt
            .located
            .files
            .first()
            .and_then(|f| f.file_name())
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let named = |what: &str| pipeline_class.contains(what) || file_name.contains(what);
        let refined = match by_width {
            Some("canny-or-depth") if named("canny") => "canny",
            Some("canny-or-depth") if named("depth") => "depth",
            Some(width) => width,
            None if named("kontext") => "kontext",
            None if named("krea") => "krea",
            None => self.base_variant().name(),
        };
        refined.to_string()
    }

    /// A config.json that disagrees with the tensors belongs to another model.
    fn check_against(&self, config: &Value, source: &str) -> Result<()> {
        let derived = serde_json::to_value(self)?;
        let mut conflicts = Vec::new();
        for key in [
            "in_channels",
            "num_attention_heads",
            "attention_head_dim",
            "num_layers",
            "num_single_layers",
            "joint_attention_dim",
            "pooled_projection_dim",
            "guidance_embeds",
        ] {
            if let Some(given) = config.get(key).filter(|v| !v.is_null()) {
                if given != &derived[key] {
                    conflicts.push(format!(
                        "{key} is {given} in the config but {} in the tensors",
                        derived[key]
                    ));
                }
            }
        }
        if let Some(out) = config.get("out_channels").and_then(Value::as_u64) {
            if out as usize != self.out_channels {
                conflicts.push(format!(
                    "out_channels is {out} in the config but {} in the tensors",
                    self.out_channels
                ));
            }
        }
        ensure!(
            conflicts.is_empty(),
            "{source}: the config does not describe this checkpoint:\n  - {}",
            conflicts.join("\n  - ")
        );
        Ok(())
    }
}

/// Blocks are numbered 0..n; the highest index present sets n, so a gap shows up as missing tensors.
fn block_count(ckpt: &Checkpoint, prefix: &str) -> usize {
    ckpt.indices_under(prefix).last().map_or(0, |last| last + 1)
}

/// The RoPE axes: the config's `axes_dims_rope` (diffusers) or `axes_dim` (BFL) when given,
/// else FLUX.1's [16, 56, 56] for head dim 128; any other head dim needs a config.
fn rope_axes(config: Option<&Value>, head_dim: usize, source: &str) -> Result<Vec<usize>> {
    let given = config.and_then(|c| c.get("axes_dims_rope").or_else(|| c.get("axes_dim")));
    let axes: Vec<usize> = match given {
        Some(value) => serde_json::from_value(value.clone()).map_err(|_| {
            anyhow::anyhow!("{source}: config axes_dims_rope must be a list of integers, found {value}")
        })?,
        None if head_dim == FLUX1_AXES.iter().sum::<usize>() => FLUX1_AXES.to_vec(),
        None => bail!(
            "{source}: head dim is {head_dim}, not FLUX.1's 128, and a single file does not record how RoPE splits it \
             over the position axes: put a config.json with `axes_dims_rope` beside the file or pass --config FILE"
        ),
    };
    ensure!(
        axes.iter().sum::<usize>() == head_dim && axes.iter().all(|d| d % 2 == 0),
        "{source}: axes_dims_rope {axes:?} must be even numbers summing to the head dim {head_dim}"
    );
    Ok(axes)
}
