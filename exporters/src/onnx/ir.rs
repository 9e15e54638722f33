//! A small in-memory ONNX graph: what the builder produces and the writer serializes.
//! Weights are not held here: an initializer says how to stream its bytes from the checkpoint.

use crate::checkpoint::TensorRef;
use fluxbuild_contract::manifest::TensorSpec;
use std::ops::Range;

/// ONNX element types fluxbuild emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElemType {
    F32,
    F16,
    BF16,
    /// FLOAT8E4M3FN
    F8E4M3,
    I64,
    I32,
    U8,
    Bool,
}

impl ElemType {
    /// TensorProto.DataType code.
    pub fn onnx_code(self) -> i32 {
        match self {
            ElemType::F32 => 1,
            ElemType::U8 => 2,
            ElemType::I32 => 6,
            ElemType::I64 => 7,
            ElemType::Bool => 9,
            ElemType::F16 => 10,
            ElemType::BF16 => 16,
            ElemType::F8E4M3 => 17,
        }
    }

    pub fn from_onnx_code(code: i32) -> Option<ElemType> {
        [
            ElemType::F32,
            ElemType::U8,
            ElemType::I32,
            ElemType::I64,
            ElemType::Bool,
            ElemType::F16,
            ElemType::BF16,
            ElemType::F8E4M3,
        ]
        .into_iter()
        .find(|t| t.onnx_code() == code)
    }

    pub fn size(self) -> usize {
        match self {
            ElemType::F32 | ElemType::I32 => 4,
            ElemType::F16 | ElemType::BF16 => 2,
            ElemType::I64 => 8,
            ElemType::F8E4M3 | ElemType::U8 | ElemType::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, ElemType::F32 | ElemType::F16 | ElemType::BF16 | ElemType::F8E4M3)
    }
}

/// A tensor dimension: fixed, or a named symbol (`B`, `Li`, ...) left dynamic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Sym(String),
}

impl From<usize> for Dim {
    fn from(d: usize) -> Dim {
        Dim::Fixed(d as i64)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Dim {
        Dim::Sym(s.to_string())
    }
}

#[derive(Clone, Debug)]
pub struct ValueInfo {
    pub name: String,
    pub elem: ElemType,
    pub dims: Vec<Dim>,
}

#[derive(Clone, Debug)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Floats(Vec<f32>),
    Str(String),
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: String,
    pub domain: String,
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: Vec<(String, Attr)>,
}

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

impl From<&ValueInfo> for TensorSpec {
    fn from(v: &ValueInfo) -> TensorSpec {
        let dims = v
            .dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => serde_json::json!(n),
                Dim::Sym(s) => serde_json::json!(s),
            })
            .collect();
        let dtype = serde_json::to_value(v.elem)
            .ok()
            .and_then(|d| d.as_str().map(String::from))
            .unwrap_or_default();
        TensorSpec {
            name: v.name.clone(),
            dtype,
            dims,
        }
    }
}
