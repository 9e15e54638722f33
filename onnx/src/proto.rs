//! Typed values, nodes and tensors as protobuf messages: the whole model for the writer, and
//! appended nodes and outputs for edits of a written model (the calibration variant).

use crate::types::{Attr, Dim, ElemType, Node, ValueInfo};
use anyhow::{Context, Result};
use onnx_protobuf as pb;
use protobuf::{EnumOrUnknown, Message, MessageField};
use std::path::Path;

/// Everything a model holds besides its initializers.
pub struct Outline<'g> {
    pub name: &'g str,
    pub opset: i64,
    pub inputs: &'g [ValueInfo],
    pub outputs: &'g [ValueInfo],
    pub nodes: &'g [Node],
    /// Free-form metadata stored in the model.
    pub metadata: &'g [(String, String)],
}

/// ONNX IR version matching an opset (the oldest IR that carries it, for the widest reach).
fn ir_version_for(opset: i64) -> i64 {
    match opset {
        ..=16 => 8,
        17..=18 => 8,
        19..=20 => 9,
        21..=22 => 10,
        _ => 11,
    }
}

pub fn model_proto(outline: &Outline<'_>, initializers: Vec<pb::TensorProto>) -> pb::ModelProto {
    let mut g = pb::GraphProto::new();
    g.name = outline.name.to_string();
    g.input = outline.inputs.iter().map(value_info_proto).collect();
    g.output = outline.outputs.iter().map(value_info_proto).collect();
    g.node = outline.nodes.iter().map(node_proto).collect();
    g.initializer = initializers;

    let mut model = pb::ModelProto::new();
    model.ir_version = ir_version_for(outline.opset);
    model.producer_name = "fluxbuild".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    let mut opset = pb::OperatorSetIdProto::new();
    opset.domain = String::new();
    opset.version = outline.opset;
    model.opset_import.push(opset);
    for (key, value) in outline.metadata {
        model.metadata_props.push(entry(key, value.clone()));
    }
    model.graph = MessageField::some(g);
    model
}

fn entry(key: &str, value: String) -> pb::StringStringEntryProto {
    let mut entry = pb::StringStringEntryProto::new();
    entry.key = key.to_string();
    entry.value = value;
    entry
}

fn tensor(name: &str, elem: ElemType, dims: &[usize]) -> pb::TensorProto {
    let mut tensor = pb::TensorProto::new();
    tensor.name = name.to_string();
    tensor.dims = dims.iter().map(|&d| d as i64).collect();
    tensor.data_type = elem.onnx_code();
    tensor
}

/// An initializer with its bytes inside the protobuf.
pub fn inline_tensor(name: &str, elem: ElemType, dims: &[usize], bytes: Vec<u8>) -> pb::TensorProto {
    let mut tensor = tensor(name, elem, dims);
    tensor.raw_data = bytes;
    tensor
}

/// An initializer whose `length` bytes lie at `offset` in the external data file `location`.
pub fn external_tensor(
    name: &str,
    elem: ElemType,
    dims: &[usize],
    location: &str,
    offset: u64,
    length: usize,
) -> pb::TensorProto {
    let mut tensor = tensor(name, elem, dims);
    tensor.data_location = EnumOrUnknown::new(pb::tensor_proto::DataLocation::EXTERNAL);
    for (key, value) in [
        ("location", location.to_string()),
        ("offset", offset.to_string()),
        ("length", length.to_string()),
    ] {
        tensor.external_data.push(entry(key, value));
    }
    tensor
}

pub fn value_info_proto(v: &ValueInfo) -> pb::ValueInfoProto {
    let mut shape = pb::TensorShapeProto::new();
    for d in &v.dims {
        let mut dim = pb::tensor_shape_proto::Dimension::new();
        dim.value = Some(match d {
            Dim::Fixed(n) => pb::tensor_shape_proto::dimension::Value::DimValue(*n),
            Dim::Sym(s) => pb::tensor_shape_proto::dimension::Value::DimParam(s.clone()),
        });
        shape.dim.push(dim);
    }
    let mut tensor = pb::type_proto::Tensor::new();
    tensor.elem_type = v.elem.onnx_code();
    tensor.shape = MessageField::some(shape);
    let mut ty = pb::TypeProto::new();
    ty.value = Some(pb::type_proto::Value::TensorType(tensor));
    let mut info = pb::ValueInfoProto::new();
    info.name = v.name.clone();
    info.type_ = MessageField::some(ty);
    info
}

pub fn node_proto(n: &Node) -> pb::NodeProto {
    use pb::attribute_proto::AttributeType as T;
    let mut p = pb::NodeProto::new();
    p.op_type = n.op.clone();
    p.domain = n.domain.clone();
    p.name = n.name.clone();
    p.input = n.inputs.clone();
    p.output = n.outputs.clone();
    for (name, attr) in &n.attrs {
        let mut a = pb::AttributeProto::new();
        a.name = name.clone();
        let ty = match attr {
            Attr::Int(i) => {
                a.i = *i;
                T::INT
            }
            Attr::Ints(v) => {
                a.ints = v.clone();
                T::INTS
            }
            Attr::Float(f) => {
                a.f = *f;
                T::FLOAT
            }
            Attr::Floats(v) => {
                a.floats = v.clone();
                T::FLOATS
            }
            Attr::Str(s) => {
                a.s = s.as_bytes().to_vec();
                T::STRING
            }
        };
        a.type_ = EnumOrUnknown::new(ty);
        p.attribute.push(a);
    }
    p
}

/// Appends `nodes` to the model's graph.
pub fn add_nodes(model: &mut pb::ModelProto, nodes: &[Node]) -> Result<()> {
    graph_mut(model)?.node.extend(nodes.iter().map(node_proto));
    Ok(())
}

/// Appends `outputs` to the model's graph outputs.
pub fn add_outputs(model: &mut pb::ModelProto, outputs: &[ValueInfo]) -> Result<()> {
    graph_mut(model)?.output.extend(outputs.iter().map(value_info_proto));
    Ok(())
}

fn graph_mut(model: &mut pb::ModelProto) -> Result<&mut pb::GraphProto> {
    model.graph.as_mut().context("the model has no graph")
}

/// The model's protobuf bytes.
pub fn encode(model: &pb::ModelProto) -> Result<Vec<u8>> {
    Ok(model.write_to_bytes()?)
}

/// Writes the model to `path` atomically (a temporary name, then renamed).
pub fn write_model_proto(path: &Path, model: &pb::ModelProto) -> Result<()> {
    fluxbuild_contract::files::write_atomic(path, &encode(model)?)
}
