//! The ONNX plumbing under every exporter: an in-memory graph (`ir`), a builder with typed
//! operator helpers, checkpoint-backed weights, shared layers, and the streaming writer. The
//! protobuf itself and the typed vocabulary live one layer down, in `fluxbuild_onnx`.

pub mod builder;
pub mod encode;
pub mod ir;
pub mod nn;
pub mod pagebuf;
pub mod weights;
pub mod writer;

pub use builder::{GraphBuilder, V};
pub use ir::{Attr, Dim, ElemType, Graph, ValueInfo};
pub use weights::{problems_error, Param, Problem, Weights};
pub use writer::{write_model, WrittenModel};

/// Opset of the default graphs: LayerNormalization-17 is the newest op they need, and every
/// TensorRT 10 ONNX parser accepts opset 17.
pub const DEFAULT_OPSET: i64 = 17;
