//! The networks a preset covers and the model variants it may target.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    Clip,
    T5,
    Transformer,
    VaeDecoder,
}

impl Network {
    /// Pipeline order (text encoders, denoiser, decoder).
    pub const ALL: [Network; 4] = [Network::Clip, Network::T5, Network::Transformer, Network::VaeDecoder];

    /// The name used for folders, manifests and `--only`.
    pub fn name(self) -> &'static str {
        match self {
            Network::Clip => "clip",
            Network::T5 => "t5",
            Network::Transformer => "transformer",
            Network::VaeDecoder => "vae_decoder",
        }
    }

    pub fn parse(name: &str) -> Result<Network> {
        match Network::ALL.into_iter().find(|n| n.name() == name) {
            Some(n) => Ok(n),
            None => bail!("unknown network {name:?} (expected one of clip, t5, transformer, vae_decoder)"),
        }
    }

    /// Whether the image size (`uses_image`) or the T5 text length (`uses_text`) shapes this network's inputs.
    pub fn uses_image(self) -> bool {
        matches!(self, Network::Transformer | Network::VaeDecoder)
    }
    pub fn uses_text(self) -> bool {
        matches!(self, Network::T5 | Network::Transformer)
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The FLUX variant a preset targets: only dev transformers have the `guidance` input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Dev,
    Schnell,
    #[default]
    Any,
}
