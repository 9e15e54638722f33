//! Reading back what a written graph promises: its inputs and outputs (names, element types,
//! dims). Later stages (packaging, engine building) take interfaces from the graph itself.

use super::ir::{Dim, ElemType, ValueInfo};
use anyhow::{bail, Context, Result};
use onnx_protobuf as pb;
use protobuf::Message;
use std::path::Path;

/// A graph's inputs (initializers excluded) and outputs.
#[derive(Clone, Debug)]
pub struct Interface {
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
}

impl Interface {
    pub fn input(&self, name: &str) -> Option<&ValueInfo> {
        self.inputs.iter().find(|v| v.name == name)
    }
    pub fn output(&self, name: &str) -> Option<&ValueInfo> {
        self.outputs.iter().find(|v| v.name == name)
    }
}

/// Parses `model.onnx` (external data is not read).
pub fn read_interface(path: &Path) -> Result<Interface> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let model =
        pb::ModelProto::parse_from_bytes(&bytes).with_context(|| format!("{}: not an ONNX model", path.display()))?;
    let graph = model
        .graph
        .as_ref()
        .with_context(|| format!("{}: the model has no graph", path.display()))?;
    let initializers: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let convert =
        |v: &pb::ValueInfoProto| value_info(v).with_context(|| format!("{}: value {}", path.display(), v.name));
    Ok(Interface {
        inputs: graph
            .input
            .iter()
            .filter(|v| !initializers.contains(v.name.as_str()))
            .map(convert)
            .collect::<Result<_>>()?,
        outputs: graph.output.iter().map(convert).collect::<Result<_>>()?,
    })
}

fn value_info(v: &pb::ValueInfoProto) -> Result<ValueInfo> {
    use pb::tensor_shape_proto::dimension::Value;
    let Some(pb::type_proto::Value::TensorType(tensor)) = v.type_.as_ref().and_then(|t| t.value.as_ref()) else {
        bail!("is not a tensor");
    };
    let elem = ElemType::from_onnx_code(tensor.elem_type)
        .with_context(|| format!("has element type {} that fluxbuild does not use", tensor.elem_type))?;
    let dims = tensor
        .shape
        .as_ref()
        .context("has no shape")?
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(Value::DimValue(n)) => Dim::Fixed(*n),
            Some(Value::DimParam(s)) => Dim::Sym(s.clone()),
            _ => Dim::Sym(String::new()),
        })
        .collect();
    Ok(ValueInfo {
        name: v.name.clone(),
        elem,
        dims,
    })
}
