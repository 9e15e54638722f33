//! Local generation: exported graphs + a request -> images, reproducing diffusers' FluxPipeline
//! (tokenizers, flow-matching Euler schedule, latent packing, VAE scaling, 8-bit postprocess) on ONNX
//! Runtime. `request`, `noise` and `image` are shared with the Triton client.

pub mod image;
pub mod latents;
pub mod models;
pub mod noise;
pub mod pipeline;
pub mod request;
pub mod scheduler;
pub mod tokenize;

pub use models::ExportedModels;
pub use pipeline::{generate, Event, Generation};
pub use request::{InitialNoise, Request, RequestOptions};

/// FLUX.1 variant: dev (guidance-distilled, shifted schedule) or schnell (timestep-distilled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Dev,
    Schnell,
}

impl Variant {
    pub fn parse(name: &str) -> anyhow::Result<Variant> {
        match name {
            "dev" => Ok(Variant::Dev),
            "schnell" => Ok(Variant::Schnell),
            other => anyhow::bail!("unknown FLUX.1 variant {other:?} (expected \"dev\" or \"schnell\")"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Dev => "dev",
            Variant::Schnell => "schnell",
        }
    }
}
