//! Reading a model's protobuf without its weights: the interface a graph promises (typed, for
//! the stages after export), values, initializers and nodes as declared (for checks of any
//! graph, whatever its types), opset and external data files. External data is never loaded.

use crate::types::{Dim, ElemType, ValueInfo};
use anyhow::{bail, Context, Result};
use onnx_protobuf as pb;
use protobuf::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Parses `model.onnx` (the protobuf only).
pub fn read_model(path: &Path) -> Result<pb::ModelProto> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    parse_model(path, &bytes)
}

/// Parses the bytes of `path` (read by the caller, who keeps them).
pub fn parse_model(path: &Path, bytes: &[u8]) -> Result<pb::ModelProto> {
    pb::ModelProto::parse_from_bytes(bytes)
        .with_context(|| format!("{}: not an ONNX model (protobuf parse failed)", path.display()))
}

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

/// The interface of `model.onnx`: every input and output a tensor of a type fluxbuild uses,
/// with a shape.
pub fn read_interface(path: &Path) -> Result<Interface> {
    let model = read_model(path)?;
    let graph = model
        .graph
        .as_ref()
        .with_context(|| format!("{}: the model has no graph", path.display()))?;
    let convert =
        |v: &pb::ValueInfoProto| value_info(v).with_context(|| format!("{}: value {}", path.display(), v.name));
    Ok(Interface {
        inputs: real_inputs(graph).map(convert).collect::<Result<_>>()?,
        outputs: graph.output.iter().map(convert).collect::<Result<_>>()?,
    })
}

fn value_info(v: &pb::ValueInfoProto) -> Result<ValueInfo> {
    let Some(tensor) = tensor_type(v) else {
        bail!("is not a tensor");
    };
    let elem = ElemType::from_onnx_code(tensor.elem_type)
        .with_context(|| format!("has element type {} that fluxbuild does not use", tensor.elem_type))?;
    let shape = tensor.shape.as_ref().context("has no shape")?;
    Ok(ValueInfo {
        name: v.name.clone(),
        elem,
        dims: shape.dim.iter().map(dim).collect(),
    })
}

/// A value as the graph declares it, whatever its type: checks of any graph (the lint, the
/// interface check before a build) report what they find instead of refusing to read it.
#[derive(Clone, Debug)]
pub struct Declared {
    pub name: String,
    /// TensorProto.DataType code; 0 where none is declared or the value is not a tensor.
    pub elem: i32,
    /// Empty where no shape is declared.
    pub dims: Vec<Dim>,
}

pub fn declared(v: &pb::ValueInfoProto) -> Declared {
    let (elem, dims) = match tensor_type(v) {
        Some(t) => (t.elem_type, t.shape.dim.iter().map(dim).collect()),
        None => (0, vec![]),
    };
    Declared {
        name: v.name.clone(),
        elem,
        dims,
    }
}

/// The graph inputs that are real inputs (not initializers listed as inputs, as old exporters
/// write them), as declared.
pub fn declared_inputs(model: &pb::ModelProto) -> Vec<Declared> {
    real_inputs(model.graph.get_or_default()).map(declared).collect()
}

fn real_inputs(graph: &pb::GraphProto) -> impl Iterator<Item = &pb::ValueInfoProto> {
    let initializers: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .filter(move |v| !initializers.contains(v.name.as_str()))
}

fn tensor_type(v: &pb::ValueInfoProto) -> Option<&pb::type_proto::Tensor> {
    match v.type_.as_ref()?.value.as_ref()? {
        pb::type_proto::Value::TensorType(tensor) => Some(tensor),
        _ => None,
    }
}

fn dim(d: &pb::tensor_shape_proto::Dimension) -> Dim {
    use pb::tensor_shape_proto::dimension::Value;
    match &d.value {
        Some(Value::DimValue(n)) => Dim::Fixed(*n),
        Some(Value::DimParam(s)) => Dim::Sym(s.clone()),
        _ => Dim::Sym(String::new()),
    }
}

/// An initializer as declared (its data is not read).
#[derive(Clone, Copy, Debug)]
pub struct TensorDecl<'m> {
    pub name: &'m str,
    /// None for element types fluxbuild does not use.
    pub elem: Option<ElemType>,
    pub dims: &'m [i64],
}

pub fn initializers(model: &pb::ModelProto) -> impl Iterator<Item = TensorDecl<'_>> {
    model.graph.get_or_default().initializer.iter().map(|t| TensorDecl {
        name: &t.name,
        elem: ElemType::from_onnx_code(t.data_type),
        dims: &t.dims,
    })
}

/// A node's operator and inputs, as the graph has them.
#[derive(Clone, Copy, Debug)]
pub struct NodeDecl<'m> {
    pub op: &'m str,
    pub inputs: &'m [String],
}

pub fn nodes(model: &pb::ModelProto) -> impl Iterator<Item = NodeDecl<'_>> {
    model.graph.get_or_default().node.iter().map(|n| NodeDecl {
        op: &n.op_type,
        inputs: &n.input,
    })
}

/// Opset of the default (ai.onnx) domain.
pub fn default_opset(model: &pb::ModelProto) -> Option<i64> {
    model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
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

/// An initializer's external data entry `key` (`location`, `offset`, `length`, ...).
pub fn external_field<'a>(tensor: &'a pb::TensorProto, key: &str) -> Option<&'a str> {
    tensor
        .external_data
        .iter()
        .find(|e| e.key == key)
        .map(|e| e.value.as_str())
}

/// Per external data file, the end of the furthest bytes an initializer reads from it
/// (`offset + length`): what the file must hold at least.
pub fn external_extents(model: &pb::ModelProto) -> BTreeMap<String, u64> {
    let mut extents = BTreeMap::new();
    for tensor in &model.graph.get_or_default().initializer {
        let field = |key: &str| external_field(tensor, key);
        let Some(location) = field("location") else {
            continue;
        };
        let number = |key: &str| field(key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let end = number("offset").saturating_add(number("length"));
        let extent = extents.entry(location.to_string()).or_insert(0);
        *extent = end.max(*extent);
    }
    extents
}

/// The graph at `onnx` can read its external data: each file it names stays in its folder,
/// exists, and holds the furthest bytes an initializer reads (else truncated). The first problem,
/// naming the file.
pub fn check_external_data(onnx: &Path, model: &pb::ModelProto) -> Result<()> {
    let folder = onnx.parent().unwrap_or(Path::new("."));
    for (name, needed) in external_extents(model) {
        let path = folder.join(&name);
        if Path::new(&name)
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            bail!(
                "{}: external data location {name:?} leaves the graph's folder",
                onnx.display()
            );
        }
        let Some(meta) = std::fs::metadata(&path).ok().filter(|m| m.is_file()) else {
            bail!(
                "{}: external data file {name} (named in the graph) is missing",
                path.display()
            );
        };
        if meta.len() < needed {
            bail!(
                "{}: {} bytes, but {} reads up to byte {needed} of it: truncated; export it again",
                path.display(),
                meta.len(),
                onnx.display()
            );
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{add_outputs, inline_tensor, model_proto, value_info_proto, write_model_proto, Outline};

    fn value(name: &str, elem: ElemType, dims: Vec<Dim>) -> ValueInfo {
        ValueInfo {
            name: name.into(),
            elem,
            dims,
        }
    }

    /// A written model reads back as the interface it was written with: an initializer listed as
    /// a graph input is no input, outputs appended later are outputs, and a type fluxbuild does not
    /// use is refused by the typed reader but reported as declared.
    #[test]
    fn written_interfaces_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let x = value("x", ElemType::F16, vec!["B".into(), 4usize.into()]);
        let w = value("w", ElemType::F16, vec![4usize.into()]);
        let y = value("y", ElemType::F32, vec![]);
        let inputs = [x.clone(), w];
        let outline = Outline {
            name: "g",
            opset: 17,
            inputs: &inputs,
            outputs: &[],
            nodes: &[],
            metadata: &[],
        };
        let mut model = model_proto(&outline, vec![inline_tensor("w", ElemType::F16, &[4], vec![0; 8])]);
        add_outputs(&mut model, &[y]).unwrap();
        let path = dir.path().join("model.onnx");
        write_model_proto(&path, &model).unwrap();

        let interface = read_interface(&path).unwrap();
        let names = |v: &[ValueInfo]| v.iter().map(|v| v.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&interface.inputs), ["x"]);
        assert_eq!(names(&interface.outputs), ["y"]);
        let read_x = interface.input("x").unwrap();
        assert_eq!((read_x.elem, &read_x.dims), (x.elem, &x.dims));
        assert_eq!(default_opset(&read_model(&path).unwrap()), Some(17));

        let mut double = value_info_proto(&value("d", ElemType::F32, vec![Dim::Fixed(2)]));
        if let Some(pb::type_proto::Value::TensorType(t)) = double.type_.mut_or_insert_default().value.as_mut() {
            t.elem_type = 11;
        }
        let declared_double = declared(&double);
        assert_eq!((declared_double.elem, declared_double.dims), (11, vec![Dim::Fixed(2)]));
        model.graph.mut_or_insert_default().input.push(double);
        write_model_proto(&path, &model).unwrap();
        let error = format!("{:#}", read_interface(&path).unwrap_err());
        assert!(
            error.ends_with("value d: has element type 11 that fluxbuild does not use"),
            "{error}"
        );
        assert_eq!(declared_inputs(&read_model(&path).unwrap()).len(), 2);
    }
}
