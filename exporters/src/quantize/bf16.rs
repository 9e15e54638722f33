//! bf16 emulation in an fp32 graph, for accuracy measurements on ONNX Runtime's CPU (which has
//! no bf16 MatMul/Conv/Softmax kernels). Weights are stored as bf16 and cast up, constants are
//! rounded to bf16 values, and the output of every computing node is rounded to bf16 (a Cast
//! to BFLOAT16 and back) — what a bf16 engine does when it accumulates in f32 and stores bf16.

use crate::onnx::encode::encode_f32;
use crate::onnx::ir::{Attr, Graph, InitData, Node};
use crate::onnx::ElemType;
use anyhow::{bail, Result};
use half::bf16;
use std::collections::HashMap;

/// Ops that only move or select values: their outputs are already bf16 values.
const MOVES: [&str; 13] =
    ["Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather", "Identity", "Expand", "Flatten", "Shape", "Tile"];

/// Rewrites an fp32 graph to compute as bf16 would.
pub fn emulate_bf16(graph: &mut Graph<'_>) -> Result<()> {
    let mut nodes = Vec::new();
    for init in &mut graph.initializers {
        match &mut init.data {
            InitData::Weights(_) if init.elem == ElemType::F32 => {
                let name = std::mem::replace(&mut init.name, String::new());
                init.name = format!("{name}:bf16");
                init.elem = ElemType::BF16;
                nodes.push(cast(&init.name, &name, ElemType::F32));
            }
            InitData::Weights(_) if init.elem.is_float() => bail!("{}: bf16 emulation needs an fp32 graph, {} is {:?}", graph.name, init.name, init.elem),
            InitData::Bytes(bytes) if init.elem == ElemType::F32 => {
                let rounded: Vec<f32> =
                    bytes.chunks_exact(4).map(|c| bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_f32()).collect();
                *bytes = encode_f32(&rounded, ElemType::F32)?.0;
            }
            _ => {}
        }
    }
    nodes.append(&mut graph.nodes);
    graph.nodes = nodes;
    let types = infer_types(graph);
    let mut nodes = Vec::with_capacity(graph.nodes.len() * 3);
    for mut node in std::mem::take(&mut graph.nodes) {
        let round = !MOVES.contains(&node.op.as_str()) && !node.inputs.iter().all(|i| i.ends_with(":bf16"));
        let mut casts = Vec::new();
        for out in node.outputs.iter_mut().filter(|o| round && types.get(o.as_str()) == Some(&ElemType::F32)) {
            let (raw, low) = (format!("{out}:f32"), format!("{out}:bf16"));
            casts.push(cast(&raw, &low, ElemType::BF16));
            casts.push(cast(&low, out, ElemType::F32));
            *out = raw;
        }
        nodes.push(node);
        nodes.extend(casts);
    }
    graph.nodes = nodes;
    Ok(())
}

fn cast(input: &str, output: &str, to: ElemType) -> Node {
    Node {
        op: "Cast".into(),
        domain: String::new(),
        name: format!("{output}/Cast"),
        inputs: vec![input.into()],
        outputs: vec![output.into()],
        attrs: vec![("to".into(), Attr::Int(to.onnx_code() as i64))],
    }
}

/// Element type of every value, by a small set of rules (enough for the ops fluxbuild emits):
/// Cast gives its `to`, shape and comparison ops give int64 / bool, the rest follow their data input.
pub fn infer_types(graph: &Graph<'_>) -> HashMap<String, ElemType> {
    let mut types: HashMap<String, ElemType> = graph.inputs.iter().map(|v| (v.name.clone(), v.elem)).collect();
    types.extend(graph.initializers.iter().map(|i| (i.name.clone(), i.elem)));
    for node in &graph.nodes {
        let input = |i: usize| node.inputs.get(i).and_then(|n| types.get(n)).copied();
        let elem = match node.op.as_str() {
            "Cast" => node.attrs.iter().find(|(k, _)| k == "to").and_then(|(_, a)| match a {
                Attr::Int(code) => ElemType::from_onnx_code(*code as i32),
                _ => None,
            }),
            "Shape" | "Size" | "ArgMax" | "ArgMin" | "NonZero" => Some(ElemType::I64),
            "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Not" | "And" | "Or" | "IsNaN" | "IsInf" => Some(ElemType::Bool),
            "ConstantOfShape" => Some(ElemType::F32),
            "Where" => input(1),
            "DequantizeLinear" => input(1),
            "QuantizeLinear" => input(2).or(Some(ElemType::U8)),
            _ => node.inputs.iter().find_map(|n| types.get(n)).copied(),
        };
        if let Some(elem) = elem {
            for out in &node.outputs {
                types.insert(out.clone(), elem);
            }
        }
    }
    types
}
