//! From a preset's ranges to the min/opt/max shape of every input of a network.
//!
//! Graph interfaces (BRIEF "Graph interfaces"): transformer `hidden_states` [B,Li,64],
//! `encoder_hidden_states` [B,Lt,joint], `pooled_projections` [B,pooled], `timestep` [B],
//! `img_ids` [Li,3], `txt_ids` [Lt,3], `guidance` [B] (dev only); clip `input_ids` [B,77];
//! t5 `input_ids` [B,L]; vae_decoder `latent` [B,16,H/8,W/8]. Li = (H/16)(W/16).

use crate::preset::{OptProfile, Preset, Range};
use crate::CLIP_TOKENS;
use fluxbuild_contract::{Network, PresetVariant};
use serde::{Deserialize, Serialize};

/// The fixed sizes of a model's inputs (full-size FLUX.1 by default; read from the exported
/// graphs when they are at hand).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDims {
    /// T5 d_model (4096): last dim of `encoder_hidden_states`.
    pub joint_dim: i64,
    /// CLIP hidden size (768): last dim of `pooled_projections`.
    pub pooled_dim: i64,
    /// Packed latent channels (16 x 2 x 2 = 64): last dim of `hidden_states`.
    pub packed_channels: i64,
    /// VAE latent channels (16).
    pub latent_channels: i64,
    /// Whether the transformer has a `guidance` input; `None` when no graph says.
    pub guidance: Option<bool>,
}

impl ModelDims {
    pub const FLUX: ModelDims = ModelDims {
        joint_dim: 4096,
        pooled_dim: 768,
        packed_channels: 64,
        latent_channels: 16,
        guidance: None,
    };
}

impl Default for ModelDims {
    fn default() -> Self {
        ModelDims::FLUX
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InputShape {
    pub name: String,
    pub min: Vec<i64>,
    pub opt: Vec<i64>,
    pub max: Vec<i64>,
    /// Only dev transformers have this input (shown when neither preset nor graph decides).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dev_only: bool,
}

/// The input shapes of one TensorRT optimization profile.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProfileShapes {
    pub inputs: Vec<InputShape>,
}

/// One corner (min, opt or max) of a profile.
struct Point {
    batch: i64,
    height: i64,
    width: i64,
    text_len: i64,
}

impl Point {
    fn image_tokens(&self) -> i64 {
        (self.height / 16) * (self.width / 16)
    }
}

type Dims = fn(&Point, &ModelDims) -> Vec<i64>;

fn interface(network: Network, guidance: bool) -> Vec<(&'static str, Dims)> {
    match network {
        Network::Clip => vec![("input_ids", |p, _| vec![p.batch, CLIP_TOKENS])],
        Network::T5 => vec![("input_ids", |p, _| vec![p.batch, p.text_len])],
        Network::Transformer => {
            let mut inputs: Vec<(&'static str, Dims)> = vec![
                ("hidden_states", |p, m| {
                    vec![p.batch, p.image_tokens(), m.packed_channels]
                }),
                ("encoder_hidden_states", |p, m| vec![p.batch, p.text_len, m.joint_dim]),
                ("pooled_projections", |p, m| vec![p.batch, m.pooled_dim]),
                ("timestep", |p, _| vec![p.batch]),
                ("img_ids", |p, _| vec![p.image_tokens(), 3]),
                ("txt_ids", |p, _| vec![p.text_len, 3]),
            ];
            if guidance {
                inputs.push(("guidance", |p, _| vec![p.batch]));
            }
            inputs
        }
        Network::VaeDecoder => vec![("latent", |p, m| {
            vec![p.batch, m.latent_channels, p.height / 8, p.width / 8]
        })],
    }
}

impl Preset {
    /// Min/opt/max shapes of every input of `network`, one entry per optimization profile.
    pub fn shapes(&self, network: Network, dims: &ModelDims) -> Vec<ProfileShapes> {
        let guidance = match dims.guidance {
            Some(g) => g,
            None => self.variant != PresetVariant::Schnell,
        };
        let dev_only = dims.guidance.is_none() && self.variant == PresetVariant::Any;
        self.profiles(network)
            .iter()
            .map(|profile| {
                let corners = corners(profile);
                let inputs = interface(network, guidance)
                    .into_iter()
                    .map(|(name, f)| {
                        let [min, opt, max] = [&corners[0], &corners[1], &corners[2]].map(|p| f(p, dims));
                        InputShape {
                            name: name.to_string(),
                            min,
                            opt,
                            max,
                            dev_only: dev_only && name == "guidance",
                        }
                    })
                    .collect();
                ProfileShapes { inputs }
            })
            .collect()
    }
}

fn corners(p: &OptProfile) -> [Point; 3] {
    // Fields a network does not use are absent; any value works for them.
    let get = |r: Option<Range>| r.unwrap_or(Range::fixed(16));
    let (h, w, l) = (get(p.height), get(p.width), get(p.text_len));
    let at = |pick: fn(&Range) -> u32| Point {
        batch: pick(&p.batch) as i64,
        height: pick(&h) as i64,
        width: pick(&w) as i64,
        text_len: pick(&l) as i64,
    };
    [at(|r| r.min), at(|r| r.opt), at(|r| r.max)]
}

impl InputShape {
    /// `NAME:1x77` style (trtexec's shape syntax) for one corner.
    pub fn spec(&self, dims: &[i64]) -> String {
        let d: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        format!("{}:{}", self.name, d.join("x"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shapes_cover_the_inputs_the_contract_declares() {
        let point = Point {
            batch: 2,
            height: 512,
            width: 768,
            text_len: 256,
        };
        for network in Network::ALL {
            for guidance in [false, true] {
                let shapes: Vec<(&str, usize)> = interface(network, guidance)
                    .into_iter()
                    .map(|(name, dims)| (name, dims(&point, &ModelDims::FLUX).len()))
                    .collect();
                let declared: Vec<(&str, usize)> = network
                    .inputs()
                    .iter()
                    .filter(|p| guidance || !p.dev_only)
                    .map(|p| (p.name, p.dims.len()))
                    .collect();
                assert_eq!(shapes, declared, "{network}, guidance {guidance}");
            }
        }
    }
}
