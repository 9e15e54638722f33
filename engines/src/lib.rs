//! Stage 3: exported ONNX graphs -> TensorRT engine plans.
//!
//! - `lint`: will TensorRT 10's ONNX parser take each graph? (runs anywhere, no TensorRT)
//! - `toolchain`: what this machine has (TensorRT libraries, trtexec, GPU), probed before work;
//!   `rtx`: the TensorRT-RTX libraries (no GPU needed)
//! - `build`: plans every engine (graph hashes, profile shapes, cache keys), then builds the
//!   ones whose key changed: TensorRT-RTX with the native builder API (`native`, trtx), standard
//!   TensorRT with `trtexec` (see `native` for why one binary cannot drive both natively).

pub mod build;
pub mod capability;
pub mod interface;
pub mod key;
pub mod lint;
#[cfg(feature = "native-builder")]
pub mod native;
pub mod rtx;
pub mod settings;
pub mod stage;
pub mod toolchain;
pub mod trtexec;
