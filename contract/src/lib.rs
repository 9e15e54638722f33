//! The contract between the fluxbuild stages (checkpoint -> graphs -> engines -> repository ->
//! orchestrator): the networks and variants, the manifest every stage writes and the next one
//! reads, and the file plumbing (atomic writes, sha256, crash-safe output folders) they share.
//! Every crate of the workspace may depend on this one; it depends on none of them.

pub mod engines;
pub mod files;
pub mod interrupted;
pub mod manifest;
mod network;
pub mod onnx_network;
pub mod orchestrator;
pub mod output_dir;
pub mod parameters;

pub use network::{Axis, Dtype, Network, Port, PresetVariant, Variant};
