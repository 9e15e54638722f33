//! The calibration variant of an exported graph: the same model with one extra float32 scalar
//! output per linear-layer input, `ReduceMax(Abs(x))`. It is made from the written
//! `model.onnx` (weights stay in the original `model.onnx.data`, linked), so calibration runs
//! exactly the graph that was exported.

use crate::onnx::ir::{Attr, ElemType, Node, ValueInfo};
use anyhow::{bail, Context, Result};
use fluxbuild_onnx::{add_nodes, add_outputs, initializers, nodes, pb, read_model, write_model_proto};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Adds the amax outputs; returns weight name -> output name (layers sharing an input share it).
fn add_amax_outputs(model: &mut pb::ModelProto) -> Result<BTreeMap<String, String>> {
    let matrices: HashSet<&str> = initializers(model)
        .filter(|t| t.dims.len() == 2 && matches!(t.elem, Some(ElemType::F32 | ElemType::F16 | ElemType::BF16)))
        .map(|t| t.name)
        .collect();
    let mut outputs: HashMap<String, String> = HashMap::new();
    let mut by_weight = BTreeMap::new();
    let mut added = Vec::new();
    for node in
        nodes(model).filter(|n| n.op == "MatMul" && n.inputs.len() == 2 && matrices.contains(n.inputs[1].as_str()))
    {
        let x = &node.inputs[0];
        let output = outputs.entry(x.clone()).or_insert_with(|| {
            let out = format!("amax:{x}");
            let (abs, max) = (format!("{out}/abs"), format!("{out}/max"));
            added.push(amax_node("Abs", &[x], &abs, &[]));
            added.push(amax_node("ReduceMax", &[&abs], &max, &[("keepdims", 0)]));
            added.push(amax_node("Cast", &[&max], &out, &[("to", 1)]));
            out
        });
        by_weight.insert(node.inputs[1].clone(), output.clone());
    }
    if by_weight.is_empty() {
        bail!("the graph has no linear layers (MatMul with a weight matrix) to calibrate");
    }
    let mut names: Vec<&String> = outputs.values().collect();
    names.sort();
    let scalars: Vec<ValueInfo> = names
        .into_iter()
        .map(|name| ValueInfo {
            name: name.clone(),
            elem: ElemType::F32,
            dims: vec![],
        })
        .collect();
    add_nodes(model, &added)?;
    add_outputs(model, &scalars)?;
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
    let mut model = read_model(&source)?;
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
    write_model_proto(&path, &model)?;
    Ok(CalibrationModel {
        path,
        outputs,
        beside_original,
    })
}

fn amax_node(op: &str, inputs: &[&String], output: &str, ints: &[(&str, i64)]) -> Node {
    Node {
        op: op.into(),
        domain: String::new(),
        name: format!("{output}/{op}"),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: vec![output.into()],
        attrs: ints.iter().map(|(k, v)| (k.to_string(), Attr::Int(*v))).collect(),
    }
}
