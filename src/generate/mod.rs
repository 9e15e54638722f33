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

pub use fluxbuild_contract::Variant;
pub use models::ExportedModels;
pub use pipeline::{generate, Event, Generation};
pub use request::{InitialNoise, Request, RequestOptions};
