//! fluxbuild's first two stages: checkpoints in, one ONNX graph per FLUX submodel out.

pub mod checkpoint;
pub mod models;
pub mod onnx;
pub mod precision;
pub mod quantize;
