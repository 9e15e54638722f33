//! Reading an exported `model.onnx` without its weights: inputs, opset, external data files.
//! Only the protobuf is parsed; external data (`model.onnx.data`) is never loaded.

use anyhow::{Context, Result};
use onnx_protobuf as pb;
use protobuf::Message;
use std::collections::BTreeSet;
use std::path::Path;

/// A dimension as the graph declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Sym(String),
    Unknown,
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// TensorProto.DataType code.
    pub elem: i32,
    pub dims: Vec<Dim>,
}

pub fn read_model(path: &Path) -> Result<pb::ModelProto> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    pb::ModelProto::parse_from_bytes(&bytes)
        .with_context(|| format!("{}: not an ONNX model (protobuf parse failed)", path.display()))
}

/// Opset of the default (ai.onnx) domain.
pub fn default_opset(model: &pb::ModelProto) -> Option<i64> {
    model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
}

/// Graph inputs that are real inputs (not initializers listed as inputs, as old exporters do).
pub fn inputs(model: &pb::ModelProto) -> Vec<TensorInfo> {
    let graph = model.graph.get_or_default();
    let inits: BTreeSet<&str> = graph.initializer.iter().map(|i| i.name.as_str()).collect();
    graph
        .input
        .iter()
        .filter(|v| !inits.contains(v.name.as_str()))
        .map(tensor_info)
        .collect()
}

pub fn outputs(model: &pb::ModelProto) -> Vec<TensorInfo> {
    model.graph.get_or_default().output.iter().map(tensor_info).collect()
}

pub fn tensor_info(v: &pb::ValueInfoProto) -> TensorInfo {
    let (elem, dims) = match &v.type_.value {
        Some(pb::type_proto::Value::TensorType(t)) => {
            let dims = t
                .shape
                .dim
                .iter()
                .map(|d| match &d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) => Dim::Fixed(*n),
                    Some(pb::tensor_shape_proto::dimension::Value::DimParam(s)) => Dim::Sym(s.clone()),
                    _ => Dim::Unknown,
                })
                .collect();
            (t.elem_type, dims)
        }
        _ => (0, vec![]),
    };
    TensorInfo {
        name: v.name.clone(),
        elem,
        dims,
    }
}

/// External data files the initializers point to (relative to the model's folder), sorted.
pub fn external_files(model: &pb::ModelProto) -> BTreeSet<String> {
    model
        .graph
        .get_or_default()
        .initializer
        .iter()
        .flat_map(|t| {
            t.external_data
                .iter()
                .filter(|e| e.key == "location")
                .map(|e| e.value.clone())
        })
        .collect()
}

/// ONNX TensorProto.DataType names, as error messages and the lint print them.
pub fn elem_name(code: i32) -> &'static str {
    match code {
        1 => "FLOAT",
        2 => "UINT8",
        3 => "INT8",
        4 => "UINT16",
        5 => "INT16",
        6 => "INT32",
        7 => "INT64",
        8 => "STRING",
        9 => "BOOL",
        10 => "FLOAT16",
        11 => "DOUBLE",
        12 => "UINT32",
        13 => "UINT64",
        14 => "COMPLEX64",
        15 => "COMPLEX128",
        16 => "BFLOAT16",
        17 => "FLOAT8E4M3FN",
        18 => "FLOAT8E4M3FNUZ",
        19 => "FLOAT8E5M2",
        20 => "FLOAT8E5M2FNUZ",
        21 => "UINT4",
        22 => "INT4",
        23 => "FLOAT4E2M1",
        _ => "UNDEFINED",
    }
}
