//! The calibration variant of an exported graph: the same model with one extra float32 scalar
//! output per linear-layer input, `ReduceMax(Abs(x))`. It is made from the written
//! `model.onnx` (weights stay in the original `model.onnx.data`, linked), so calibration runs
//! exactly the graph that was exported.

use crate::onnx::ir::{Attr, Node, ValueInfo};
use crate::onnx::writer::{node, value_info};
use crate::onnx::ElemType;
use anyhow::{bail, Context, Result};
use onnx_protobuf as pb;
use protobuf::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Adds the amax outputs; returns weight name -> output name (layers sharing an input share it).
pub fn add_amax_outputs(model: &mut pb::ModelProto) -> Result<BTreeMap<String, String>> {
    let graph = model.graph.as_mut().context("the model has no graph")?;
    let matrices: HashSet<String> = graph
        .initializer
        .iter()
        .filter(|t| t.dims.len() == 2 && matches!(t.data_type, 1 | 10 | 16))
        .map(|t| t.name.clone())
        .collect();
    let mut outputs: HashMap<String, String> = HashMap::new();
    let mut by_weight = BTreeMap::new();
    let mut added = Vec::new();
    for node in graph
        .node
        .iter()
        .filter(|n| n.op_type == "MatMul" && n.input.len() == 2 && matrices.contains(&n.input[1]))
    {
        let x = &node.input[0];
        let output = outputs.entry(x.clone()).or_insert_with(|| {
            let out = format!("amax:{x}");
            let (abs, max) = (format!("{out}/abs"), format!("{out}/max"));
            added.push(proto_node("Abs", &[x], &abs, &[]));
            added.push(proto_node("ReduceMax", &[&abs], &max, &[("keepdims", 0)]));
            added.push(proto_node("Cast", &[&max], &out, &[("to", 1)]));
            out
        });
        by_weight.insert(node.input[1].clone(), output.clone());
    }
    if by_weight.is_empty() {
        bail!("the graph has no linear layers (MatMul with a weight matrix) to calibrate");
    }
    graph.node.extend(added);
    let mut names: Vec<&String> = outputs.values().collect();
    names.sort();
    for name in names {
        graph.output.push(value_info(&ValueInfo {
            name: name.clone(),
            elem: ElemType::F32,
            dims: vec![],
        }));
    }
    Ok(by_weight)
}

/// The calibration variant on disk; a copy written beside the original graph is removed on drop.
pub struct CalibrationModel {
    pub path: PathBuf,
    /// Weight name -> amax output name.
    pub outputs: BTreeMap<String, String>,
    beside_original: bool,
}

impl Drop for CalibrationModel {
    fn drop(&mut self) {
        if self.beside_original {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes the calibration variant of `model_dir/model.onnx` into `scratch` with a hard link to
/// its `model.onnx.data` (ONNX Runtime refuses external data outside the model's folder, symlinks
/// included); where no hard link can be made (another file system), beside the original under a
/// hidden name, removed when the returned value is dropped.
pub fn write_calibration_model(model_dir: &Path, scratch: &Path) -> Result<CalibrationModel> {
    let source = model_dir.join("model.onnx");
    let bytes = std::fs::read(&source).with_context(|| format!("{}: cannot read", source.display()))?;
    let mut model =
        pb::ModelProto::parse_from_bytes(&bytes).with_context(|| format!("{}: not an ONNX model", source.display()))?;
    let outputs = add_amax_outputs(&mut model).with_context(|| source.display().to_string())?;
    std::fs::create_dir_all(scratch).with_context(|| format!("{}: cannot create", scratch.display()))?;
    let link = scratch.join("model.onnx.data");
    let _ = std::fs::remove_file(&link);
    let beside_original = std::fs::hard_link(model_dir.join("model.onnx.data"), &link).is_err();
    let path = if beside_original {
        model_dir.join(format!(".calibration-{}.onnx", std::process::id()))
    } else {
        scratch.join("model.onnx")
    };
    fluxbuild_contract::files::write_atomic(&path, &model.write_to_bytes()?)?;
    Ok(CalibrationModel {
        path,
        outputs,
        beside_original,
    })
}

fn proto_node(op: &str, inputs: &[&String], output: &str, ints: &[(&str, i64)]) -> pb::NodeProto {
    node(&Node {
        op: op.into(),
        domain: String::new(),
        name: format!("{output}/{op}"),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: vec![output.into()],
        attrs: ints.iter().map(|(k, v)| (k.to_string(), Attr::Int(*v))).collect(),
    })
}
