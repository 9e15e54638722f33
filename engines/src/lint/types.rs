//! What the lint knows about each value without running shape inference: its element type
//! and rank where the graph declares them (inputs, initializers, value_info, Constant) or a
//! simple rule carries them through a node. Unknown stays unknown: checks that need a type
//! or rank are skipped for such values, never guessed.

use fluxbuild_onnx::pb;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Copy, Debug, Default)]
pub struct ValueFacts {
    pub elem: Option<i32>,
    pub rank: Option<usize>,
}

pub struct Facts {
    values: BTreeMap<String, ValueFacts>,
    /// Initializers and Constant outputs: values TensorRT knows at build time.
    constants: BTreeSet<String>,
    /// Initializers with their bytes inline (small ones), for value checks such as zero points.
    inline: BTreeMap<String, Vec<u8>>,
}

const BOOL: i32 = 9;
const INT64: i32 = 7;

/// Ops whose first output has the type of input `i`.
fn type_from_input(op: &str) -> Option<usize> {
    Some(match op {
        "Where" | "DequantizeLinear" => 1,
        "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" | "Equal" | "Less" | "LessOrEqual" | "Greater"
        | "GreaterOrEqual" | "Not" | "And" | "Or" | "Xor" | "IsNaN" | "IsInf" | "Cast" | "CastLike"
        | "QuantizeLinear" | "Constant" | "ConstantOfShape" => return None,
        _ => 0,
    })
}

/// Ops whose output has the rank of their first input (elementwise, normalizations, ...).
fn keeps_rank(op: &str) -> bool {
    matches!(
        op,
        "Add"
            | "Sub"
            | "Mul"
            | "Div"
            | "Pow"
            | "Where"
            | "Cast"
            | "CastLike"
            | "Softmax"
            | "LogSoftmax"
            | "LayerNormalization"
            | "RMSNormalization"
            | "GroupNormalization"
            | "Sigmoid"
            | "Tanh"
            | "Relu"
            | "Gelu"
            | "Erf"
            | "Exp"
            | "Log"
            | "Sqrt"
            | "Neg"
            | "Abs"
            | "Cos"
            | "Sin"
            | "Identity"
            | "Transpose"
            | "Concat"
            | "Slice"
            | "Split"
            | "Clip"
            | "RotaryEmbedding"
            | "Conv"
            | "Resize"
            | "QuantizeLinear"
            | "DequantizeLinear"
    )
}

impl Facts {
    pub fn new(graph: &pb::GraphProto) -> Facts {
        let mut facts = Facts {
            values: BTreeMap::new(),
            constants: BTreeSet::new(),
            inline: BTreeMap::new(),
        };
        for v in graph.input.iter().chain(&graph.value_info).chain(&graph.output) {
            let info = fluxbuild_onnx::declared(v);
            facts.values.insert(
                info.name,
                ValueFacts {
                    elem: Some(info.elem).filter(|e| *e != 0),
                    rank: Some(info.dims.len()),
                },
            );
        }
        for init in &graph.initializer {
            facts.values.insert(
                init.name.clone(),
                ValueFacts {
                    elem: Some(init.data_type),
                    rank: Some(init.dims.len()),
                },
            );
            facts.constants.insert(init.name.clone());
            if !init.raw_data.is_empty() {
                facts.inline.insert(init.name.clone(), init.raw_data.clone());
            }
        }
        for node in &graph.node {
            facts.infer(node);
        }
        facts
    }

    pub fn get(&self, name: &str) -> ValueFacts {
        self.values.get(name).copied().unwrap_or_default()
    }

    pub fn is_constant(&self, name: &str) -> bool {
        self.constants.contains(name)
    }

    pub fn inline_bytes(&self, name: &str) -> Option<&[u8]> {
        self.inline.get(name).map(|b| b.as_slice())
    }

    fn infer(&mut self, node: &pb::NodeProto) {
        let Some(out) = node.output.first().filter(|o| !o.is_empty()) else {
            return;
        };
        if self.values.contains_key(out) {
            return; // declared in value_info: the graph knows better
        }
        let input = |i: usize| node.input.get(i).map(|n| self.get(n)).unwrap_or_default();
        let attr_int = |name: &str| node.attribute.iter().find(|a| a.name == name).map(|a| a.i as i32);
        let elem = match node.op_type.as_str() {
            "Cast" => attr_int("to"),
            "CastLike" => input(1).elem,
            "Constant" => constant_type(node),
            "ConstantOfShape" => constant_type(node).or(Some(1)),
            "QuantizeLinear" => input(2).elem.or(attr_int("output_dtype").filter(|t| *t != 0)),
            "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => Some(INT64),
            "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "Not" | "And" | "Or" | "Xor"
            | "IsNaN" | "IsInf" => Some(BOOL),
            op => type_from_input(op).and_then(|i| input(i).elem),
        };
        let rank = if keeps_rank(&node.op_type) {
            node.input
                .iter()
                .filter(|n| !n.is_empty())
                .map(|n| self.get(n).rank)
                .try_fold(0, |r, x| x.map(|x| r.max(x)))
        } else {
            None
        };
        if node.op_type == "Constant" {
            self.constants.insert(out.clone());
        }
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            self.values.insert(o.clone(), ValueFacts { elem, rank });
        }
    }
}

fn constant_type(node: &pb::NodeProto) -> Option<i32> {
    node.attribute
        .iter()
        .find(|a| a.name == "value")
        .and_then(|a| a.t.as_ref())
        .map(|t| t.data_type)
}
