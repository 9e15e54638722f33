//! The typed ONNX vocabulary: what the exporters build graphs from and what reading a graph
//! gives back.

use fluxbuild_contract::manifest::TensorSpec;

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

/// A tensor dimension: fixed, or a named symbol (`B`, `Li`, ...) left dynamic. A graph read
/// back that leaves a dynamic dimension unnamed gives `Sym("")`.
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
