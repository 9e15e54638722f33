//! The four networks of a FLUX pipeline (their names, diffusers folders and graph interfaces) and
//! the model variants. The only place the workspace spells a network or variant name.

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

    /// The name used for folders, manifests, Triton models and `--only`.
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

    /// The folder of this network's component in a diffusers pipeline.
    pub fn folder(self) -> &'static str {
        match self {
            Network::Clip => "text_encoder",
            Network::T5 => "text_encoder_2",
            Network::Transformer => "transformer",
            Network::VaeDecoder => "vae",
        }
    }

    /// The `fluxbuild export --FLAG FILE` that gives this network's source.
    pub fn flag(self) -> &'static str {
        match self {
            Network::VaeDecoder => "vae",
            n => n.name(),
        }
    }

    /// The inputs of this network's graph, in the order the exporters declare them.
    pub fn inputs(self) -> &'static [Port] {
        match self {
            Network::Clip | Network::T5 => TEXT_ENCODER_INPUTS,
            Network::Transformer => TRANSFORMER_INPUTS,
            Network::VaeDecoder => VAE_DECODER_INPUTS,
        }
    }

    /// The outputs the later stages read (CLIP's graph also has `text_embeddings`, unused by FLUX).
    pub fn outputs(self) -> &'static [Port] {
        match self {
            Network::Clip => CLIP_OUTPUTS,
            Network::T5 => T5_OUTPUTS,
            Network::Transformer => TRANSFORMER_OUTPUTS,
            Network::VaeDecoder => VAE_DECODER_OUTPUTS,
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
        f.pad(self.name())
    }
}

use Axis::*;
use Dtype::*;

const TEXT_ENCODER_INPUTS: &[Port] = &[Port::new("input_ids", Int64, &[Batch, Text])];
const TRANSFORMER_INPUTS: &[Port] = &[
    Port::new("hidden_states", Float32, &[Batch, ImageTokens, Model]),
    Port::new("encoder_hidden_states", Float32, &[Batch, Text, Model]),
    Port::new("pooled_projections", Float32, &[Batch, Model]),
    Port::new("timestep", Float32, &[Batch]),
    Port::new("img_ids", Float32, &[ImageTokens, Model]),
    Port::new("txt_ids", Float32, &[Text, Model]),
    Port::new("guidance", Float32, &[Batch]).dev_only(),
];
const VAE_DECODER_INPUTS: &[Port] = &[Port::new("latent", Float, &[Batch, Model, LatentHeight, LatentWidth])];
const CLIP_OUTPUTS: &[Port] = &[Port::new("pooled_embeddings", Float, &[Batch, Model])];
const T5_OUTPUTS: &[Port] = &[Port::new("text_embeddings", Float, &[Batch, Text, Model])];
const TRANSFORMER_OUTPUTS: &[Port] = &[Port::new("noise_pred", Float32, &[Batch, ImageTokens, Model])];
const VAE_DECODER_OUTPUTS: &[Port] = &[Port::new("images", Float, &[Batch, Model, Height, Width])];

/// One input or output of a network's graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port {
    pub name: &'static str,
    pub dtype: Dtype,
    pub dims: &'static [Axis],
    /// Present in dev transformers only (schnell is not guidance-distilled).
    pub dev_only: bool,
}

impl Port {
    const fn new(name: &'static str, dtype: Dtype, dims: &'static [Axis]) -> Port {
        Port {
            name,
            dtype,
            dims,
            dev_only: false,
        }
    }

    const fn dev_only(self) -> Port {
        Port { dev_only: true, ..self }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    Int64,
    Float32,
    /// The graph's float type (fp32, fp16 or bf16, from the network's precision; T5 in fp16
    /// keeps its residual stream, and so this output, in fp32).
    Float,
}

/// What sets the size of a dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// Prompts per request.
    Batch,
    /// Text tokens: T5's sequence length (also the transformer's), CLIP's fixed 77.
    Text,
    /// Packed latent tokens: (H/16)(W/16).
    ImageTokens,
    /// The latent's H/8 and W/8.
    LatentHeight,
    LatentWidth,
    /// The image in pixels.
    Height,
    Width,
    /// A size the checkpoint fixes (channels, hidden size, the 3 RoPE axes).
    Model,
}

/// A FLUX.1 text-to-image model: dev (guidance-distilled, shifted schedule) or schnell
/// (timestep-distilled). Only dev transformers have the `guidance` input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Dev,
    Schnell,
}

impl Variant {
    /// A variant by the name the export manifest records, with the aliases generation accepts;
    /// an image-conditioned variant is refused with what it would need.
    pub fn parse(name: &str) -> Result<Variant> {
        let needs = match name {
            // Krea is a dev fine-tune: same inputs, same schedule.
            "dev" | "krea" => return Ok(Variant::Dev),
            "schnell" => return Ok(Variant::Schnell),
            "fill" => "an image and a mask packed into 384 input channels",
            "canny" | "depth" | "canny-or-depth" => {
                "a control image (Canny edges or depth) packed into 128 input channels"
            }
            "kontext" => "a reference image appended to the image tokens",
            other => bail!("unknown FLUX.1 variant {other:?} (expected \"dev\" or \"schnell\")"),
        };
        bail!(
            "FLUX.1 {name} needs image conditioning ({needs}), which fluxbuild's text-to-image pipeline \
             (generate, package) cannot drive yet; the exported graphs themselves are complete"
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Dev => "dev",
            Variant::Schnell => "schnell",
        }
    }

    /// The text-to-image base of a transformer: dev when it embeds guidance.
    pub fn from_guidance(guidance_embeds: bool) -> Variant {
        if guidance_embeds {
            Variant::Dev
        } else {
            Variant::Schnell
        }
    }
}

/// The variant a profile preset targets: one, or any (the transformer graph decides).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresetVariant {
    Dev,
    Schnell,
    #[default]
    Any,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_folders_are_distinct() {
        for n in Network::ALL {
            assert_eq!(Network::parse(n.name()).unwrap(), n);
            assert_eq!(serde_json::to_value(n).unwrap(), n.name());
        }
        let folders: std::collections::BTreeSet<_> = Network::ALL.iter().map(|n| n.folder()).collect();
        assert_eq!(folders.len(), 4);
        assert!(Network::parse("vae").is_err());
    }

    #[test]
    fn variants_parse_their_names_and_aliases() {
        for v in [Variant::Dev, Variant::Schnell] {
            assert_eq!(Variant::parse(v.name()).unwrap(), v);
            assert_eq!(serde_json::to_value(v).unwrap(), v.name());
        }
        assert_eq!(Variant::parse("krea").unwrap(), Variant::Dev);
        let fill = Variant::parse("fill").unwrap_err().to_string();
        assert!(fill.contains("384 input channels"), "{fill}");
        assert!(Variant::parse("pro").unwrap_err().to_string().contains("unknown"));
    }
}
