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
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Dev,
    Schnell,
}

impl Variant {
    pub fn parse(name: &str) -> anyhow::Result<Variant> {
        let needs = match name {
            // Krea is a dev fine-tune: same inputs, same schedule.
            "dev" | "krea" => return Ok(Variant::Dev),
            "schnell" => return Ok(Variant::Schnell),
            "fill" => "an image and a mask packed into 384 input channels",
            "canny" | "depth" | "canny-or-depth" => {
                "a control image (Canny edges or depth) packed into 128 input channels"
            }
            "kontext" => "a reference image appended to the image tokens",
            other => anyhow::bail!("unknown FLUX.1 variant {other:?} (expected \"dev\" or \"schnell\")"),
        };
        anyhow::bail!(
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
}
