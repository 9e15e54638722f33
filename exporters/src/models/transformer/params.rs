//! Where each weight of the model lives in each checkpoint layout. The model definition
//! (`model.rs`) sees only these structs; every tensor of both layouts is requested here with
//! its exact expected shape, so one pass reports everything missing or mis-shaped.
//!
//! Both layouts meet in one graph form: one fused QKV matmul per stream (diffusers' to_q/to_k/
//! to_v stacked, BFL's qkv as is), one fused [q; k; v; mlp] matmul per single block (diffusers'
//! to_q/to_k/to_v/proj_mlp stacked, BFL's linear1 as is), and the final modulation in
//! diffusers' [scale; shift] order (BFL stores [shift; scale]: its halves are swapped by rows).

use super::config::{FluxConfig, Layout};
use crate::onnx::{nn, GraphBuilder, Param, Weights, V};

/// `y = x @ Wᵀ + b` with PyTorch's weight [out, in] and bias [out] (every FLUX linear has a bias).
pub struct Linear<'a> {
    pub weight: Param<'a>,
    pub bias: Param<'a>,
}

impl<'a> Linear<'a> {
    fn new(w: &Weights<'a>, in_features: usize, out_features: usize) -> Self {
        Linear {
            weight: w.get("weight", &[out_features, in_features]),
            bias: w.get("bias", &[out_features]),
        }
    }

    /// Output rows `rows` of a fused linear with `total` outputs.
    fn rows(w: &Weights<'a>, in_features: usize, total: usize, rows: std::ops::Range<usize>) -> Self {
        Linear {
            weight: w.rows("weight", &[total, in_features], rows.clone()),
            bias: w.rows("bias", &[total], rows),
        }
    }

    /// Linears over the same input stacked along their outputs: one matmul instead of several.
    fn stack(w: &Weights<'a>, name: &str, parts: Vec<Linear<'a>>) -> Self {
        let (weights, biases) = parts.into_iter().map(|l| (l.weight, l.bias)).unzip();
        Linear {
            weight: Param::stack(w.path(&format!("{name}.weight")), weights),
            bias: Param::stack(w.path(&format!("{name}.bias")), biases),
        }
    }

    pub fn forward(self, b: &mut GraphBuilder<'a>, x: &V) -> V {
        nn::linear_param(b, x, self.weight, Some(self.bias))
    }
}

/// Linear → activation → Linear (the embedders with SiLU, the feed-forwards with GELU).
pub struct Mlp<'a> {
    pub fc1: Linear<'a>,
    pub fc2: Linear<'a>,
}

impl<'a> Mlp<'a> {
    fn new(w: &Weights<'a>, (fc1, fc2): (&str, &str), dims: [usize; 3]) -> Self {
        Mlp {
            fc1: Linear::new(&w.pp(fc1), dims[0], dims[1]),
            fc2: Linear::new(&w.pp(fc2), dims[1], dims[2]),
        }
    }
}

/// The input embedders and the conditioning MLPs.
pub struct Embedders<'a> {
    pub img_in: Linear<'a>,
    pub txt_in: Linear<'a>,
    pub time_in: Mlp<'a>,
    pub guidance_in: Option<Mlp<'a>>,
    pub vector_in: Mlp<'a>,
}

/// One stream (image or text) of a double block.
pub struct Stream<'a> {
    /// → [shift1, scale1, gate1, shift2, scale2, gate2]
    pub modulation: Linear<'a>,
    /// → [q; k; v]
    pub qkv: Linear<'a>,
    pub q_norm: Param<'a>,
    pub k_norm: Param<'a>,
    pub proj: Linear<'a>,
    pub mlp: Mlp<'a>,
}

pub struct DoubleBlock<'a> {
    /// Module path in the checkpoint (names the graph's nodes).
    pub path: String,
    pub img: Stream<'a>,
    pub txt: Stream<'a>,
}

pub struct SingleBlock<'a> {
    pub path: String,
    /// → [shift, scale, gate]
    pub modulation: Linear<'a>,
    /// → [q; k; v; mlp]
    pub linear1: Linear<'a>,
    pub q_norm: Param<'a>,
    pub k_norm: Param<'a>,
    /// [attention; mlp] → width
    pub linear2: Linear<'a>,
}

pub struct FinalLayer<'a> {
    /// → [scale; shift]
    pub modulation: Linear<'a>,
    pub linear: Linear<'a>,
}

pub struct FluxParams<'a> {
    pub embedders: Embedders<'a>,
    pub double_blocks: Vec<DoubleBlock<'a>>,
    pub single_blocks: Vec<SingleBlock<'a>>,
    pub final_layer: FinalLayer<'a>,
}

impl<'a> FluxParams<'a> {
    pub fn load(w: &Weights<'a>, layout: Layout, c: &FluxConfig) -> Self {
        match layout {
            Layout::Diffusers => diffusers(w, c),
            Layout::Bfl => bfl(w, c),
        }
    }
}

fn diffusers<'a>(w: &Weights<'a>, c: &FluxConfig) -> FluxParams<'a> {
    let (d, hd, mlp) = (c.inner_dim, c.attention_head_dim, c.mlp_hidden_dim);
    let tte = w.pp("time_text_embed");
    let embedder = |name: &str, in_dim| Mlp::new(&tte.pp(name), ("linear_1", "linear_2"), [in_dim, d, d]);
    let embedders = Embedders {
        img_in: Linear::new(&w.pp("x_embedder"), c.in_channels, d),
        txt_in: Linear::new(&w.pp("context_embedder"), c.joint_attention_dim, d),
        time_in: embedder("timestep_embedder", c.timestep_embedding_dim),
        guidance_in: c
            .guidance_embeds
            .then(|| embedder("guidance_embedder", c.timestep_embedding_dim)),
        vector_in: embedder("text_embedder", c.pooled_projection_dim),
    };
    let double_blocks = (0..c.num_layers)
        .map(|i| {
            let w = w.pp("transformer_blocks").pp(i);
            let attn = w.pp("attn");
            let stream = |norm: &str, (fused, qkv): (&str, [&str; 3]), norms: [&str; 2], proj: &str, ff: &str| Stream {
                modulation: Linear::new(&w.pp(norm).pp("linear"), d, 6 * d),
                qkv: Linear::stack(&attn, fused, qkv.map(|n| Linear::new(&attn.pp(n), d, d)).into()),
                q_norm: attn.get(&format!("{}.weight", norms[0]), &[hd]),
                k_norm: attn.get(&format!("{}.weight", norms[1]), &[hd]),
                proj: Linear::new(&attn.pp(proj), d, d),
                mlp: Mlp::new(&w.pp(ff).pp("net"), ("0.proj", "2"), [d, mlp, d]),
            };
            DoubleBlock {
                path: w.prefix().to_string(),
                img: stream(
                    "norm1",
                    ("to_qkv", ["to_q", "to_k", "to_v"]),
                    ["norm_q", "norm_k"],
                    "to_out.0",
                    "ff",
                ),
                txt: stream(
                    "norm1_context",
                    ("add_qkv_proj", ["add_q_proj", "add_k_proj", "add_v_proj"]),
                    ["norm_added_q", "norm_added_k"],
                    "to_add_out",
                    "ff_context",
                ),
            }
        })
        .collect();
    let single_blocks = (0..c.num_single_layers)
        .map(|i| {
            let w = w.pp("single_transformer_blocks").pp(i);
            let attn = w.pp("attn");
            let qkv = ["to_q", "to_k", "to_v"].map(|n| Linear::new(&attn.pp(n), d, d));
            let parts = qkv
                .into_iter()
                .chain([Linear::new(&w.pp("proj_mlp"), d, mlp)])
                .collect();
            SingleBlock {
                path: w.prefix().to_string(),
                modulation: Linear::new(&w.pp("norm").pp("linear"), d, 3 * d),
                linear1: Linear::stack(&w, "to_qkv_mlp", parts),
                q_norm: attn.get("norm_q.weight", &[hd]),
                k_norm: attn.get("norm_k.weight", &[hd]),
                linear2: Linear::new(&w.pp("proj_out"), d + mlp, d),
            }
        })
        .collect();
    let final_layer = FinalLayer {
        modulation: Linear::new(&w.pp("norm_out").pp("linear"), d, 2 * d),
        linear: Linear::new(&w.pp("proj_out"), d, c.out_channels),
    };
    FluxParams {
        embedders,
        double_blocks,
        single_blocks,
        final_layer,
    }
}

fn bfl<'a>(w: &Weights<'a>, c: &FluxConfig) -> FluxParams<'a> {
    let (d, hd, mlp) = (c.inner_dim, c.attention_head_dim, c.mlp_hidden_dim);
    let embedder = |name: &str, in_dim| Mlp::new(&w.pp(name), ("in_layer", "out_layer"), [in_dim, d, d]);
    let embedders = Embedders {
        img_in: Linear::new(&w.pp("img_in"), c.in_channels, d),
        txt_in: Linear::new(&w.pp("txt_in"), c.joint_attention_dim, d),
        time_in: embedder("time_in", c.timestep_embedding_dim),
        guidance_in: c
            .guidance_embeds
            .then(|| embedder("guidance_in", c.timestep_embedding_dim)),
        vector_in: embedder("vector_in", c.pooled_projection_dim),
    };
    let double_blocks = (0..c.num_layers)
        .map(|i| {
            let w = w.pp("double_blocks").pp(i);
            let stream = |s: &str| {
                let attn = w.pp(format!("{s}_attn"));
                Stream {
                    modulation: Linear::new(&w.pp(format!("{s}_mod")).pp("lin"), d, 6 * d),
                    qkv: Linear::new(&attn.pp("qkv"), d, 3 * d),
                    q_norm: attn.get("norm.query_norm.scale", &[hd]),
                    k_norm: attn.get("norm.key_norm.scale", &[hd]),
                    proj: Linear::new(&attn.pp("proj"), d, d),
                    mlp: Mlp::new(&w.pp(format!("{s}_mlp")), ("0", "2"), [d, mlp, d]),
                }
            };
            DoubleBlock {
                path: w.prefix().to_string(),
                img: stream("img"),
                txt: stream("txt"),
            }
        })
        .collect();
    let single_blocks = (0..c.num_single_layers)
        .map(|i| {
            let w = w.pp("single_blocks").pp(i);
            SingleBlock {
                path: w.prefix().to_string(),
                modulation: Linear::new(&w.pp("modulation").pp("lin"), d, 3 * d),
                linear1: Linear::new(&w.pp("linear1"), d, 3 * d + mlp),
                q_norm: w.get("norm.query_norm.scale", &[hd]),
                k_norm: w.get("norm.key_norm.scale", &[hd]),
                linear2: Linear::new(&w.pp("linear2"), d + mlp, d),
            }
        })
        .collect();
    let w_final = w.pp("final_layer");
    let adaln = w_final.pp("adaLN_modulation.1");
    let final_layer = FinalLayer {
        modulation: Linear::stack(
            &adaln,
            "scale_shift",
            vec![
                Linear::rows(&adaln, d, 2 * d, d..2 * d),
                Linear::rows(&adaln, d, 2 * d, 0..d),
            ],
        ),
        linear: Linear::new(&w_final.pp("linear"), d, c.out_channels),
    };
    FluxParams {
        embedders,
        double_blocks,
        single_blocks,
        final_layer,
    }
}
