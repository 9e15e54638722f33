//! TensorRT optimization-profile presets for the four FLUX networks.
//!
//! A preset (TOML, `profiles/presets/*.toml`) gives batch sizes, image sizes and T5 text lengths
//! as min/opt/max ranges; [`Preset::shapes`] turns them into the exact min/opt/max shape of every
//! input of a network, following the graph interfaces (`Li = (H/16)(W/16)`, latent `H/8 x W/8`,
//! CLIP always 77 tokens).

mod preset;
mod shapes;

pub use fluxbuild_contract::{Network, PresetVariant, Variant};
pub use preset::{OptProfile, Preset, Range};
pub use shapes::{InputShape, ModelDims, ProfileShapes};

/// T5-XXL's longest sequence in FLUX (`max_sequence_length` above 512 is rejected by the pipeline).
pub const T5_MAX_TOKENS: u32 = 512;
/// CLIP-L's fixed sequence length.
pub const CLIP_TOKENS: i64 = 77;
/// Image sizes must be multiples of this: the 8x VAE latent is packed in 2x2 patches.
pub const IMAGE_MULTIPLE: u32 = 16;
