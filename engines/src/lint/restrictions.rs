//! The "Restrictions" column of onnx-tensorrt's operators.md (TensorRT 10.15) for the
//! restrictions that can be decided from the graph alone: attributes, optional inputs and
//! outputs, build-time constants. Each returns the reasons a node breaks them.

use super::types::Facts;
use fluxbuild_onnx::pb;

pub fn check(node: &pb::NodeProto, facts: &Facts) -> Vec<String> {
    let mut why = Vec::new();
    let n = Node { node, facts };
    match node.op_type.as_str() {
        "Attention" => {
            for (i, name) in [(4, "past_key"), (5, "past_value"), (6, "nonpad_kv_seqlen")] {
                if n.has_input(i) {
                    why.push(format!("input `{name}` is unsupported"));
                }
            }
            for (i, name) in [(1, "present_key"), (2, "present_value"), (3, "qk_matmul_output")] {
                if n.has_output(i) {
                    why.push(format!("output `{name}` is unsupported"));
                }
            }
            for attr in ["qk_matmul_output_mode", "softcap"] {
                if n.int(attr).is_some_and(|v| v != 0) || n.float(attr).is_some_and(|v| v != 0.0) {
                    why.push(format!("attribute `{attr}` is unsupported"));
                }
            }
            for (i, name) in [(0, "Q"), (1, "K"), (2, "V"), (3, "attn_mask")] {
                if let Some(rank) = n.input_rank(i).filter(|r| *r != 4) {
                    why.push(format!("`{name}` must be 4-D, it is {rank}-D"));
                }
            }
        }
        "LayerNormalization" if n.has_output(1) || n.has_output(2) => {
            why.push("only the first output `Y` is supported".into())
        }
        "Dropout" if n.has_input(2) && !n.constant_input(2) => {
            why.push("`training_mode` must be an initializer (and false)".into())
        }
        "CumSum" if !n.constant_input(1) => why.push("`axis` must be a build-time constant".into()),
        "OneHot" if !n.constant_input(1) => why.push("`depth` must be a build-time constant".into()),
        "TopK" if n.int("sorted").is_some_and(|s| s != 1) => why.push("`sorted` must be 1".into()),
        "ScatterND" if n.string("reduction").is_some_and(|r| r != "none") => {
            why.push("`reduction` other than none is unsupported".into())
        }
        "LSTM" => {
            for attr in ["input_forget", "layout"] {
                if n.int(attr).is_some_and(|v| v != 0) {
                    why.push(format!("`{attr}` must be 0"));
                }
            }
        }
        "Constant" => {
            for attr in ["sparse_value", "value_string", "value_strings"] {
                if n.attr(attr).is_some() {
                    why.push(format!("attribute `{attr}` is unsupported"));
                }
            }
        }
        "MaxPool" | "AveragePool" | "LpPool" => {
            if node.op_type == "MaxPool" && n.has_output(1) {
                why.push("the `Indices` output is unsupported".into());
            }
            if n.ints("dilations").is_some_and(|d| d.iter().any(|x| *x != 1)) {
                why.push("`dilations` must be empty or all ones".into());
            }
        }
        "Resize" => resize(&n, &mut why),
        "DequantizeLinear" | "QuantizeLinear"
            if n.has_input(2) && n.inline_input(2).is_some_and(|b| b.iter().any(|x| *x != 0)) =>
        {
            why.push("the zero point must be zero".into())
        }
        op if op.starts_with("Reduce") && n.has_input(1) && !n.constant_input(1) => {
            why.push("`axes` must be an initializer".into())
        }
        _ => {}
    }
    why
}

fn resize(n: &Node<'_>, why: &mut Vec<String>) {
    let allowed = [
        ("mode", "nearest", &["nearest", "linear"][..]),
        (
            "coordinate_transformation_mode",
            "half_pixel",
            &[
                "half_pixel",
                "pytorch_half_pixel",
                "tf_half_pixel_for_nn",
                "asymmetric",
                "align_corners",
            ],
        ),
        (
            "nearest_mode",
            "round_prefer_floor",
            &["floor", "ceil", "round_prefer_floor", "round_prefer_ceil"],
        ),
        ("keep_aspect_ratio_policy", "stretch", &["stretch"]),
    ];
    for (attr, default, ok) in allowed {
        let value = n.string(attr).unwrap_or_else(|| default.to_string());
        if !ok.contains(&value.as_str()) {
            why.push(format!(
                "`{attr}` {value:?} is unsupported (supported: {})",
                ok.join(", ")
            ));
        }
    }
    if n.int("antialias").is_some_and(|a| a != 0) {
        why.push("antialiasing is unsupported".into());
    }
}

struct Node<'a> {
    node: &'a pb::NodeProto,
    facts: &'a Facts,
}

impl Node<'_> {
    fn attr(&self, name: &str) -> Option<&pb::AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }
    fn int(&self, name: &str) -> Option<i64> {
        self.attr(name)
            .filter(|a| a.type_.value() == pb::attribute_proto::AttributeType::INT as i32)
            .map(|a| a.i)
    }
    fn float(&self, name: &str) -> Option<f32> {
        self.attr(name)
            .filter(|a| a.type_.value() == pb::attribute_proto::AttributeType::FLOAT as i32)
            .map(|a| a.f)
    }
    fn ints(&self, name: &str) -> Option<&[i64]> {
        self.attr(name).map(|a| a.ints.as_slice())
    }
    fn string(&self, name: &str) -> Option<String> {
        self.attr(name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
    fn has_input(&self, i: usize) -> bool {
        self.node.input.get(i).is_some_and(|n| !n.is_empty())
    }
    fn has_output(&self, i: usize) -> bool {
        self.node.output.get(i).is_some_and(|n| !n.is_empty())
    }
    fn constant_input(&self, i: usize) -> bool {
        self.node.input.get(i).is_some_and(|n| self.facts.is_constant(n))
    }
    fn inline_input(&self, i: usize) -> Option<&[u8]> {
        self.node.input.get(i).and_then(|n| self.facts.inline_bytes(n))
    }
    fn input_rank(&self, i: usize) -> Option<usize> {
        self.node
            .input
            .get(i)
            .filter(|n| !n.is_empty())
            .and_then(|n| self.facts.get(n).rank)
    }
}
