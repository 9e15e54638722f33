//! A small in-memory ONNX graph: what the builder produces and the writer serializes, in the
//! vocabulary of `fluxbuild_onnx`. Weights are not held here: an initializer says how to stream
//! its bytes from the checkpoint.

use crate::checkpoint::TensorRef;
use std::ops::Range;

pub use fluxbuild_onnx::{Attr, Dim, ElemType, Node, ValueInfo};

/// Rows `rows` (along dim 0) of one checkpoint tensor.
#[derive(Clone)]
pub struct Part<'a> {
    pub tensor: TensorRef<'a>,
    pub rows: Range<usize>,
}

/// How an initializer's values are produced from the checkpoint: the parts are stacked along
/// dim 0 (BFL's fused qkv is one part; diffusers' q, k, v are three), optionally transposed
/// (PyTorch's [out, in] becomes MatMul's [in, out]), then encoded as the initializer's type.
#[derive(Clone)]
pub struct WeightPlan<'a> {
    pub parts: Vec<Part<'a>>,
    /// Row length of every part (product of the trailing dims).
    pub cols: usize,
    pub transpose: bool,
    /// Quantization scale: values are divided by it before encoding (FP8 weights). One scale for
    /// the whole tensor, or one per column of the encoded matrix (its output channels).
    pub scale: Option<Vec<f32>>,
}

impl WeightPlan<'_> {
    pub fn rows(&self) -> usize {
        self.parts.iter().map(|p| p.rows.len()).sum()
    }
}

pub enum InitData<'a> {
    /// Already encoded in the initializer's type (constants the graph needs: tables, shapes).
    Bytes(Vec<u8>),
    /// Streamed from the checkpoint at write time.
    Weights(WeightPlan<'a>),
}

pub struct Initializer<'a> {
    pub name: String,
    pub elem: ElemType,
    pub dims: Vec<usize>,
    pub data: InitData<'a>,
}

impl Initializer<'_> {
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
    pub fn byte_len(&self) -> usize {
        self.numel() * self.elem.size()
    }
}

pub struct Graph<'a> {
    pub name: String,
    pub opset: i64,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub nodes: Vec<Node>,
    pub initializers: Vec<Initializer<'a>>,
    /// Free-form metadata stored in the model (derived config, precision).
    pub metadata: Vec<(String, String)>,
}
