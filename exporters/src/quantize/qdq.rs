//! The FP8 rewrite of a built graph: every linear layer (a MatMul whose right operand is a
//! checkpoint weight matrix) that the policy quantizes becomes
//!
//! ```text
//!   x ─ QuantizeLinear(s_x) ─ DequantizeLinear(s_x) ─┐
//!                                                    MatMul ─ (+ bias, unchanged)
//!   W (FLOAT8E4M3FN initializer) ─ DequantizeLinear(s_w) ─┘
//! ```
//!
//! which is the pattern TensorRT's explicit quantization fuses into one FP8 GEMM (both MatMul
//! inputs come straight from a DQ; the weight DQ reads a quantized constant, so the FP8 bytes
//! are what the engine stores). `s_x` is per tensor, from calibration; `s_w` is per tensor or
//! per output channel (axis 1 of the [in, out] matrix), from the weight's own amax. FLOAT8 in
//! Q/DQ needs opset 19, so the graph's opset is raised to 19 (the graph must have been built
//! for 19: ops such as ReduceMean change form at 18).

use super::fp8::scale_for;
use super::{Fp8Policy, Fp8Summary, WeightScaling};
use crate::checkpoint::TensorRef;
use crate::onnx::encode::encode_f32;
use crate::onnx::ir::{Attr, Graph, InitData, Initializer, Node, WeightPlan};
use crate::onnx::ElemType;
use anyhow::{bail, Result};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

/// Opset that has QuantizeLinear/DequantizeLinear with FLOAT8E4M3FN.
pub const FP8_OPSET: i64 = 19;
const ZERO_POINT: &str = "fp8_zero_point";

/// The weight initializer names of the graph's linear layers, in node order.
pub fn linear_weights(graph: &Graph<'_>) -> Vec<String> {
    let weights: HashMap<&str, &Initializer<'_>> = graph.initializers.iter().map(|i| (i.name.as_str(), i)).collect();
    graph
        .nodes
        .iter()
        .filter(|n| n.op == "MatMul" && n.inputs.len() == 2)
        .filter(|n| weights.get(n.inputs[1].as_str()).is_some_and(|w| is_weight_matrix(w)))
        .map(|n| n.inputs[1].clone())
        .collect()
}

fn is_weight_matrix(init: &Initializer<'_>) -> bool {
    init.dims.len() == 2 && init.elem.is_float() && matches!(init.data, InitData::Weights(_))
}

/// Rewrites the linear layers that `policy` quantizes; `amax` holds each one's calibrated input amax.
pub fn quantize_linears(graph: &mut Graph<'_>, policy: &Fp8Policy, amax: &BTreeMap<String, f32>) -> Result<Fp8Summary> {
    if graph.opset < FP8_OPSET {
        bail!(
            "{}: FP8 Q/DQ needs opset {FP8_OPSET}, the graph was built for {}",
            graph.name,
            graph.opset
        );
    }
    let linears = linear_weights(graph);
    let (quantized, kept): (Vec<String>, Vec<String>) = linears.into_iter().partition(|w| !policy.keeps(w));
    let missing: Vec<&String> = quantized.iter().filter(|w| !amax.contains_key(*w)).collect();
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).map(|s| s.as_str()).collect();
        bail!(
            "{}: the calibration has no amax for {} linear layer(s) ({}{}): calibrate the graphs exported from this checkpoint",
            graph.name,
            missing.len(),
            shown.join(", "),
            if missing.len() > 5 { ", ..." } else { "" }
        );
    }

    let mut sites: HashMap<String, Site> = HashMap::new();
    for name in &quantized {
        let init = graph
            .initializers
            .iter_mut()
            .find(|i| &i.name == name)
            .expect("linear weight initializer");
        let elem = init.elem;
        let InitData::Weights(plan) = &mut init.data else {
            unreachable!("checked by linear_weights")
        };
        let w_scale: Vec<f32> = weight_amax(plan, policy.weights)
            .into_iter()
            .map(|a| scale_for(a, elem))
            .collect();
        plan.scale = Some(w_scale.clone());
        init.elem = ElemType::F8E4M3;
        sites.insert(
            name.clone(),
            Site {
                elem,
                w_scale,
                x_scale: scale_for(amax[name], elem),
            },
        );
    }

    let mut new_inits = vec![Initializer {
        name: ZERO_POINT.into(),
        elem: ElemType::F8E4M3,
        dims: vec![],
        data: InitData::Bytes(vec![0]),
    }];
    let mut nodes = Vec::with_capacity(graph.nodes.len() + 3 * sites.len());
    for node in std::mem::take(&mut graph.nodes) {
        let site = (node.op == "MatMul")
            .then(|| node.inputs.get(1).and_then(|w| sites.get(w)))
            .flatten();
        let Some(site) = site else {
            nodes.push(node);
            continue;
        };
        let (x, w) = (node.inputs[0].clone(), node.inputs[1].clone());
        let per_channel = site.w_scale.len() > 1;
        let x_scale = scale_init(&format!("{w}.input_scale"), site.elem, &[site.x_scale], &mut new_inits)?;
        let w_scale = scale_init(&format!("{w}.weight_scale"), site.elem, &site.w_scale, &mut new_inits)?;
        let (xq, xdq, wdq) = (
            format!("{w}:input_q"),
            format!("{w}:input_dq"),
            format!("{w}:dequantized"),
        );
        nodes.push(qdq_node("QuantizeLinear", &w, &[&x, &x_scale, ZERO_POINT], &xq, vec![]));
        nodes.push(qdq_node("DequantizeLinear", &w, &[&xq, &x_scale], &xdq, vec![]));
        let axis = if per_channel {
            vec![("axis".to_string(), Attr::Int(1))]
        } else {
            vec![]
        };
        nodes.push(qdq_node("DequantizeLinear", &w, &[&w, &w_scale], &wdq, axis));
        nodes.push(Node {
            inputs: vec![xdq, wdq],
            ..node
        });
    }
    graph.nodes = nodes;
    graph.initializers.extend(new_inits);
    Ok(Fp8Summary {
        weights: policy.weights,
        quantized: quantized.len(),
        kept,
        calibration_sha256: None,
    })
}

struct Site {
    /// The float type the layer ran in (that of its weight before quantization).
    elem: ElemType,
    w_scale: Vec<f32>,
    x_scale: f32,
}

fn scale_init(name: &str, elem: ElemType, values: &[f32], inits: &mut Vec<Initializer<'_>>) -> Result<String> {
    let (bytes, _) = encode_f32(values, elem)?;
    let dims = if values.len() == 1 { vec![] } else { vec![values.len()] };
    inits.push(Initializer {
        name: name.into(),
        elem,
        dims,
        data: InitData::Bytes(bytes),
    });
    Ok(name.into())
}

fn qdq_node(op: &str, weight: &str, inputs: &[&str], output: &str, attrs: Vec<(String, Attr)>) -> Node {
    Node {
        op: op.into(),
        domain: String::new(),
        name: format!("{weight}/{op}:{output}"),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: vec![output.into()],
        attrs,
    }
}

/// amax of the whole weight, or of each output channel (rows of the PyTorch [out, in] layout;
/// columns when the plan is not transposed). The rows are shared out among the cores: a
/// full-size transformer's weights are 23.8 GB, read here once before they are written.
fn weight_amax(plan: &WeightPlan<'_>, scaling: WeightScaling) -> Vec<f32> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::with_capacity(plan.rows());
    let mut cols = vec![0f32; plan.cols];
    for part in &plan.parts {
        let per_thread = part.rows.len().div_ceil(threads).max(1);
        let shares: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|s| {
            let running: Vec<_> = part
                .rows
                .clone()
                .step_by(per_thread)
                .map(|first| {
                    let share = first..(first + per_thread).min(part.rows.end);
                    s.spawn(move || row_and_column_amax(&part.tensor, share, plan.cols))
                })
                .collect();
            running
                .into_iter()
                .map(|t| t.join().expect("an amax thread panicked"))
                .collect()
        });
        for (share_rows, share_cols) in shares {
            rows.extend(share_rows);
            cols.iter_mut().zip(share_cols).for_each(|(c, v)| *c = c.max(v));
        }
        part.tensor.release();
    }
    match scaling {
        WeightScaling::PerTensor => vec![rows.iter().fold(0f32, |m, v| m.max(*v))],
        WeightScaling::PerChannel if plan.transpose => rows,
        WeightScaling::PerChannel => cols,
    }
}

/// (amax of each of `rows`, amax of each column over them) of a [_, cols] tensor.
fn row_and_column_amax(tensor: &TensorRef<'_>, rows: Range<usize>, cols: usize) -> (Vec<f32>, Vec<f32>) {
    let row_bytes = cols * tensor.dtype().size();
    let mut row_amax = Vec::with_capacity(rows.len());
    let mut col_amax = vec![0f32; cols];
    let mut buf = Vec::with_capacity(cols);
    for r in rows {
        buf.clear();
        tensor.decode_into(&tensor.bytes()[r * row_bytes..(r + 1) * row_bytes], &mut buf);
        row_amax.push(buf.iter().fold(0f32, |m, v| m.max(v.abs())));
        col_amax.iter_mut().zip(&buf).for_each(|(c, v)| *c = c.max(v.abs()));
    }
    (row_amax, col_amax)
}
