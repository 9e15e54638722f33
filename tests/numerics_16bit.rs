//! Where 16-bit graphs keep their range: the transformer scales q by 1/√d before Q·Kᵀ (scores of
//! unscaled 128-wide heads overflow fp16 long before softmax), and T5's RMSNorm computes its
//! variance in f32 in bf16 and fp16 graphs (as transformers' T5LayerNorm does).
//!
//! ONNX Runtime's CPU build has no bf16 kernels for these graphs and fuses a scalar Mul into
//! MatMul either side of it, so the numbers cannot tell; the graph structure is checked instead.

use fluxbuild_onnx::read_model;
use onnx_protobuf as pb;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const FLOAT: i64 = 1;

/// Exports `network` of the tiny schnell pipeline at `precision`; returns its graph.
fn export(network: &str, precision: &str) -> pb::ModelProto {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("numerics_16bit/{network}-{precision}"));
    let _ = std::fs::remove_dir_all(&dir);
    let checkpoint = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipeline/schnell");
    let out = Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args(["export", "--checkpoint"])
        .arg(&checkpoint)
        .arg("--out")
        .arg(&dir)
        .args(["--only", network, "--precision", precision])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    read_model(&dir.join(network).join("model.onnx")).unwrap()
}

/// Nodes by the tensor they produce.
fn producers(model: &pb::ModelProto) -> HashMap<&str, &pb::NodeProto> {
    let graph = model.graph.get_or_default();
    graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect()
}

fn int_attr(node: &pb::NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

#[test]
fn transformer_scales_q_before_the_scores() {
    for precision in ["fp16", "bf16", "fp32"] {
        let model = export("transformer", precision);
        let by_output = producers(&model);
        let softmaxes: Vec<&pb::NodeProto> = model
            .graph
            .get_or_default()
            .node
            .iter()
            .filter(|n| n.op_type == "Softmax")
            .collect();
        assert!(!softmaxes.is_empty());
        for softmax in softmaxes {
            // softmax(MatMul(Mul(q, 1/√d), kᵀ)): nothing between the product and the softmax.
            let scores = by_output[softmax.input[0].as_str()];
            assert_eq!(
                scores.op_type, "MatMul",
                "{precision}: {} feeds {}",
                scores.name, softmax.name
            );
            let q = by_output[scores.input[0].as_str()];
            assert_eq!(
                q.op_type, "Mul",
                "{precision}: q of {} is not scaled first",
                scores.name
            );
        }
    }
}

#[test]
fn t5_rms_norm_variance_is_float32_in_16_bit_graphs() {
    for precision in ["bf16", "fp16"] {
        let model = export("t5", precision);
        let by_output = producers(&model);
        let means: Vec<&pb::NodeProto> = model
            .graph
            .get_or_default()
            .node
            .iter()
            .filter(|n| n.op_type == "ReduceMean")
            .collect();
        // Two norms per block plus the final one (the tiny fixture has 2 blocks).
        assert!(means.len() >= 5, "{precision}: {} ReduceMean nodes", means.len());
        for mean in means {
            let square = by_output[mean.input[0].as_str()];
            assert_eq!(square.op_type, "Mul", "{precision}: {}", mean.name);
            let x = by_output
                .get(square.input[0].as_str())
                .unwrap_or_else(|| panic!("{precision}: {} squares a graph input", square.name));
            // bf16 graphs cast to f32 right before; fp16 graphs keep their whole residual
            // stream (its adds included) in f32 (tests/precision_t5_fp16.rs).
            let cast_to_f32 = x.op_type == "Cast" && int_attr(x, "to") == Some(FLOAT);
            let ok = cast_to_f32 || (precision == "fp16" && x.op_type == "Add");
            assert!(
                ok,
                "{precision}: {} squares {} ({}), not float32",
                square.name, x.name, x.op_type
            );
        }
    }
}
