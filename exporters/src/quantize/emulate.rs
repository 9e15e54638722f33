//! Reduced precision emulated in fp32, for accuracy measurements on ONNX Runtime's CPU: it has
//! no bf16 MatMul/Conv/Softmax kernels, and it runs most fp16 ops by casting to fp32 and
//! dropping the casts between them, so an fp16 graph there neither rounds nor overflows as a GPU
//! engine does. The rewritten graph computes every op in fp32 and rounds each fp16/bf16 value
//! to its type (a Cast there and back): IEEE rounding and overflow to ±inf at every op output,
//! as an engine that accumulates in fp32 and stores 16-bit values. Parts the graph keeps in fp32
//! (T5's residual stream) stay unrounded; weights stay stored in their 16-bit type.

use crate::onnx::ir::{Attr, Graph, Node};
use crate::onnx::ElemType;
use std::collections::HashMap;

/// Ops that only move or select values: their outputs are already rounded.
const MOVES: [&str; 13] = [
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Split",
    "Slice",
    "Gather",
    "Identity",
    "Expand",
    "Flatten",
    "Shape",
    "Tile",
];

fn low(elem: ElemType) -> bool {
    matches!(elem, ElemType::F16 | ElemType::BF16)
}

/// Rewrites a graph with fp16/bf16 values into an fp32 graph that rounds like it; float16 and
/// bfloat16 inputs and outputs become float32.
pub fn emulate_in_fp32(graph: &mut Graph<'_>) {
    let types = infer_types(graph);
    let mut renamed: HashMap<String, String> = HashMap::new();
    let mut nodes = Vec::with_capacity(graph.nodes.len() * 3);
    for init in graph.initializers.iter_mut().filter(|i| low(i.elem)) {
        let stored = format!("{}:stored", init.name);
        nodes.push(cast(&stored, &init.name, ElemType::F32));
        init.name = stored;
    }
    for input in graph.inputs.iter_mut().filter(|v| low(v.elem)) {
        let rounded = format!("{}:rounded", input.name);
        nodes.extend(round_trip(&input.name, &rounded, input.elem));
        renamed.insert(input.name.clone(), rounded);
        input.elem = ElemType::F32;
    }
    for output in graph.outputs.iter_mut().filter(|v| low(v.elem)) {
        output.elem = ElemType::F32;
    }
    for mut node in std::mem::take(&mut graph.nodes) {
        node.inputs.iter_mut().for_each(|i| {
            if let Some(r) = renamed.get(i) {
                *i = r.clone();
            }
        });
        let cast_to = (node.op == "Cast").then(|| cast_target(&node)).flatten();
        if let Some(to) = cast_to.filter(|t| low(*t)) {
            let output = node.outputs[0].clone();
            nodes.extend(round_trip(&node.inputs[0], &output, to));
            continue;
        }
        let mut rounding = Vec::new();
        if !MOVES.contains(&node.op.as_str()) && node.op != "Cast" {
            for out in node.outputs.iter_mut() {
                let Some(&elem) = types.get(out.as_str()).filter(|t| low(**t)) else {
                    continue;
                };
                let raw = format!("{out}:f32");
                rounding.extend(round_trip(&raw, out, elem));
                *out = raw;
            }
        }
        nodes.push(node);
        nodes.extend(rounding);
    }
    graph.nodes = nodes;
}

fn cast_target(node: &Node) -> Option<ElemType> {
    node.attrs.iter().find(|(k, _)| k == "to").and_then(|(_, a)| match a {
        Attr::Int(code) => ElemType::from_onnx_code(*code as i32),
        _ => None,
    })
}

fn round_trip(input: &str, output: &str, elem: ElemType) -> [Node; 2] {
    let low = format!("{output}:{}", if elem == ElemType::F16 { "f16" } else { "bf16" });
    [cast(input, &low, elem), cast(&low, output, ElemType::F32)]
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
/// Cast gives its `to`, shape and comparison ops give int64 / bool, Q/DQ their quantized /
/// scale type, the rest follow their first typed input.
pub fn infer_types(graph: &Graph<'_>) -> HashMap<String, ElemType> {
    let mut types: HashMap<String, ElemType> = graph.inputs.iter().map(|v| (v.name.clone(), v.elem)).collect();
    types.extend(graph.initializers.iter().map(|i| (i.name.clone(), i.elem)));
    for node in &graph.nodes {
        let input = |i: usize| node.inputs.get(i).and_then(|n| types.get(n)).copied();
        let elem = match node.op.as_str() {
            "Cast" => cast_target(node),
            "Shape" | "Size" | "ArgMax" | "ArgMin" | "NonZero" => Some(ElemType::I64),
            "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Not" | "And" | "Or" | "IsNaN"
            | "IsInf" => Some(ElemType::Bool),
            "Where" | "DequantizeLinear" => input(1),
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
