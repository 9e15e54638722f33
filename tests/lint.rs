//! The TensorRT lint: every graph fluxbuild exports passes; graphs with what TensorRT 10's
//! parser rejects fail, naming the node, operator and reason, with a non-zero exit.

#[path = "../engines/tests/support/mod.rs"]
mod support;

use fluxbuild_engines::lint::{lint_file, Finding, TrtVersion};
use fluxbuild_exporters::onnx::ir::InitData;
use fluxbuild_exporters::onnx::{write_model, Attr, Dim, ElemType, Graph, GraphBuilder};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fluxbuild(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args(args)
        .output()
        .unwrap()
}

fn v(s: &str) -> TrtVersion {
    s.parse().unwrap()
}

fn lint(graph: &Graph<'_>, dir: &Path, target: &str) -> Vec<Finding> {
    write_model(graph, dir, &mut |_, _| {}).unwrap();
    lint_file(&dir.join("model.onnx"), v(target)).unwrap().findings
}

/// Exports the tiny dev pipeline with fluxbuild itself; returns the networks exported.
/// Submodels whose exporter has not landed yet say so and are not exported.
fn export(out: &Path, precision: &str) -> Vec<String> {
    let pipeline = support_fixtures().join("pipeline/dev");
    let mut exported = Vec::new();
    for network in ["clip", "t5", "transformer", "vae_decoder"] {
        let o = fluxbuild(&[
            "export",
            "--checkpoint",
            pipeline.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--update",
            "--only",
            network,
            "--precision",
            precision,
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        if o.status.success() {
            exported.push(network.to_string());
        } else {
            assert!(
                stderr.contains("is not implemented yet"),
                "export of {network} ({precision}) failed: {stderr}"
            );
        }
    }
    exported
}

fn support_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn every_exported_graph_passes_for_every_precision() {
    let dir = tempfile::tempdir().unwrap();
    for precision in ["fp32", "fp16", "bf16"] {
        let out = dir.path().join(precision);
        let exported = export(&out, precision);
        assert!(
            exported.len() >= 3,
            "clip, t5 and vae_decoder export today: {exported:?}"
        );
        for target in ["10.0", "10.15", "11.0", "11.1"] {
            let o = fluxbuild(&["lint", out.to_str().unwrap(), "--json", "--trt-version", target]);
            let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert!(
                o.status.success(),
                "{precision} graphs fail TensorRT {target}: {}",
                serde_json::to_string_pretty(&report).unwrap()
            );
            let linted: Vec<String> = report["graphs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["path"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(linted.len(), exported.len());
            assert!(report["graphs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|g| g["nodes"].as_u64().unwrap() > 10));
        }
    }
}

/// TensorRT 11 hosts (what `make engines` and `make gpu-check` pass on): accepted, checked with
/// the 10.15 table and said so; releases the lint knows nothing of are refused by name.
#[test]
fn tensorrt_11_is_checked_and_unknown_majors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    support::write_models(dir.path(), true);
    let path = dir.path().to_str().unwrap();
    for (target, shown) in [("11", "11.1"), ("11.0", "11.0"), ("11.1.3", "11.1")] {
        let o = fluxbuild(&["lint", path, "--json", "--trt-version", target]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            (report["target"]["major"].as_u64(), report["target"]["minor"].as_u64()),
            (Some(11), Some(shown[3..].parse().unwrap()))
        );
        assert!(String::from_utf8_lossy(&o.stderr)
            .contains(&format!("TensorRT {shown} is newer than the operator table (10.15)")));
    }
    for bad in ["9.3", "12.0"] {
        let o = fluxbuild(&["lint", path, "--trt-version", bad]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success()
                && stderr.contains(&format!("TensorRT version {bad}"))
                && stderr.contains("10.x and 11.x"),
            "{stderr}"
        );
    }
    // The checks still apply on 11: a graph TensorRT cannot parse fails there too.
    let dir = tempfile::tempdir().unwrap();
    let mut b = GraphBuilder::new("g", 17, ElemType::F32);
    let x = b.input("x", ElemType::F32, &[Dim::from(4usize)]);
    let y = b.op_n("Unique", &[&x], &[], 1).remove(0);
    b.output(&y, "y", ElemType::F32, &[Dim::from(4usize)]);
    let findings = lint(&b.finish(), dir.path(), "11.1");
    assert_eq!(findings.len(), 1, "{findings:?}");
}

#[test]
fn the_interface_graphs_pass() {
    let dir = tempfile::tempdir().unwrap();
    support::write_models(dir.path(), true);
    let o = fluxbuild(&["lint", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout.matches("ok   ").count(), 4, "{stdout}");
}

#[test]
fn an_unsupported_operator_fails_naming_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = GraphBuilder::new("g", 17, ElemType::F32);
    let x = b.input("x", ElemType::F32, &[Dim::from("B"), Dim::from(8usize)]);
    let y = b.scoped("transformer_blocks.0.attn", |b| {
        let s = b.softmax(&x, -1);
        b.op_n("Unique", &[&s], &[], 1).remove(0)
    });
    b.output(&y, "y", ElemType::F32, &[Dim::from("B"), Dim::from(8usize)]);
    let path = dir.path().join("bad");
    write_model(&b.finish(), &path, &mut |_, _| {}).unwrap();

    let o = fluxbuild(&["lint", path.join("model.onnx").to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success());
    assert!(stdout.contains("FAIL"), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("[Unique]"))
        .unwrap_or_else(|| panic!("no Unique finding: {stdout}"));
    assert!(
        line.trim().starts_with("transformer_blocks.0.attn/Unique_"),
        "the node is named by its module path: {line}"
    );
    assert!(
        line.ends_with("[Unique]: Unique is not supported by TensorRT's ONNX parser"),
        "{line}"
    );
    assert!(
        !stdout.contains("Softmax"),
        "the supported node is not reported: {stdout}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 of 1 graphs would not parse in TensorRT 10.15"));

    let o = fluxbuild(&["lint", path.to_str().unwrap(), "--json"]);
    assert!(!o.status.success());
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    assert_eq!(report["passed"], false);
    assert!(report["graphs"][0]["findings"][0]["node"]
        .as_str()
        .unwrap()
        .starts_with("transformer_blocks.0.attn/Unique_"));
    assert_eq!(report["graphs"][0]["findings"][0]["op"], "Unique");
}

#[test]
fn graph_level_limits() {
    let dir = tempfile::tempdir().unwrap();
    let simple = |opset: i64| {
        let mut b = GraphBuilder::new("g", opset, ElemType::F32);
        let x = b.input("x", ElemType::F32, &[Dim::from(4usize)]);
        let y = b.sigmoid(&x);
        b.output(&y, "y", ElemType::F32, &[Dim::from(4usize)]);
        b.finish()
    };
    // Opset: 21 is beyond 10.8 (20) but within 10.9+; 25 is beyond every 10.x.
    assert!(lint(&simple(21), &dir.path().join("a"), "10.15").is_empty());
    let f = lint(&simple(21), &dir.path().join("b"), "10.8");
    assert_eq!(f.len(), 1);
    assert!(
        f[0].reason.contains("opset 21 is outside TensorRT 10.8's range 9..20") && f[0].node == "(model)",
        "{f:?}"
    );
    // Opset 23 graphs carry IR version 11 (ONNX 1.18), which 10.10 does not read.
    let f = lint(&simple(23), &dir.path().join("c"), "10.10");
    assert!(
        f.iter().any(|f| f
            .reason
            .contains("IR version 11 is newer than TensorRT 10.10's ONNX (10)")),
        "{f:?}"
    );
    let f = lint(&simple(25), &dir.path().join("d"), "10.15");
    assert!(f[0].reason.contains("opset 25 is outside"), "{f:?}");

    // DOUBLE initializers and inputs.
    let mut b = GraphBuilder::new("g", 17, ElemType::F32);
    let x = b.input("x", ElemType::F32, &[Dim::from(2usize)]);
    let mut g = {
        let c = b.const_float(ElemType::F32, &[2], &[1.0, 2.0]);
        let y = b.add(&x, &c);
        b.output(&y, "y", ElemType::F32, &[Dim::from(2usize)]);
        b.finish()
    };
    g.initializers.push(fluxbuild_exporters::onnx::ir::Initializer {
        name: "scale64".into(),
        elem: ElemType::F32,
        dims: vec![1],
        data: InitData::Bytes(1.0f32.to_le_bytes().to_vec()),
    });
    write_model(&g, &dir.path().join("e"), &mut |_, _| {}).unwrap();
    // Rewrite the initializer's type to DOUBLE (the builder has no f64 type on purpose).
    let path = dir.path().join("e/model.onnx");
    let mut model = fluxbuild_onnx::read_model(&path).unwrap();
    let init = model
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .iter_mut()
        .find(|i| i.name == "scale64")
        .unwrap();
    init.data_type = 11;
    init.raw_data = 1.0f64.to_le_bytes().to_vec();
    std::fs::write(&path, protobuf::Message::write_to_bytes(&model).unwrap()).unwrap();
    let f = lint_file(&path, v("10.15")).unwrap().findings;
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].node.as_str(), f[0].op.as_str()), ("scale64", "initializer"));
    assert!(f[0].reason.contains("DOUBLE initializer"));
}

#[test]
fn operators_newer_than_the_target_and_checkable_restrictions() {
    let dir = tempfile::tempdir().unwrap();
    let f32 = ElemType::F32;
    let four = [Dim::from("B"), Dim::from(2usize), Dim::from("L"), Dim::from(8usize)];

    // Attention (opset 23) parses from TensorRT 10.14 on, only with 4-D Q/K/V.
    let attention = |q_dims: &[Dim]| {
        let mut b = GraphBuilder::new("g", 23, f32);
        let q = b.input("q", f32, q_dims);
        let k = b.input("k", f32, &four);
        let y = b.scoped("attn", |b| b.op("Attention", &[&q, &k, &k], &[]));
        b.output(&y, "y", f32, &four);
        b.finish()
    };
    assert!(lint(&attention(&four), &dir.path().join("a"), "10.15").is_empty());
    let f = lint(&attention(&four), &dir.path().join("b"), "10.13");
    assert!(
        f.iter().any(|f| f.node.starts_with("attn/Attention_")
            && f.reason == "Attention needs TensorRT 10.14 or newer (target 10.13)"),
        "{f:?}"
    );
    let three = [Dim::from("B"), Dim::from("L"), Dim::from(16usize)];
    let f = lint(&attention(&three), &dir.path().join("c"), "10.15");
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].reason, "`Q` must be 4-D, it is 3-D");

    // RMSNormalization-23 needs 10.15; Swish-24 is no operator of the table at all.
    let unary = |op: &str, opset: i64| {
        let mut b = GraphBuilder::new("g", opset, f32);
        let x = b.input("x", f32, &[Dim::from(4usize)]);
        let s = b.const_float(f32, &[4], &[1.0; 4]);
        let y = if op == "RMSNormalization" {
            b.op(op, &[&x, &s], &[])
        } else {
            b.op(op, &[&x], &[])
        };
        b.output(&y, "y", f32, &[Dim::from(4usize)]);
        b.finish()
    };
    assert!(lint(&unary("RMSNormalization", 23), &dir.path().join("d"), "10.15").is_empty());
    assert!(lint(&unary("RMSNormalization", 23), &dir.path().join("e"), "10.14")
        .iter()
        .any(|f| f.reason.contains("needs TensorRT 10.15")));
    let f = lint(&unary("Swish", 24), &dir.path().join("f"), "10.15");
    assert!(
        f.iter()
            .any(|f| f.op == "Swish" && f.reason == "Swish is not an operator TensorRT's ONNX parser knows"),
        "{f:?}"
    );

    // Resize: cubic interpolation is not supported; LayerNormalization's extra outputs neither.
    let mut b = GraphBuilder::new("g", 17, f32);
    let x = b.input("x", f32, &four);
    let scales = b.const_float(f32, &[4], &[1.0, 1.0, 2.0, 2.0]);
    let up = b.op(
        "Resize",
        &[&x, &GraphBuilder::none(), &scales],
        &[("mode", Attr::Str("cubic".into()))],
    );
    let (s, z) = (b.const_float(f32, &[8], &[1.0; 8]), b.const_float(f32, &[8], &[0.0; 8]));
    let ln = b.op_n("LayerNormalization", &[&up, &s, &z], &[("axis", Attr::Int(-1))], 3);
    b.output(&ln[0], "y", f32, &four);
    let f = lint(&b.finish(), &dir.path().join("g"), "10.15");
    let reasons: Vec<&str> = f.iter().map(|f| f.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("`mode` \"cubic\" is unsupported")),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"only the first output `Y` is supported"),
        "{reasons:?}"
    );

    // Types: a Cast to FP8 outside Q/DQ, and a custom-domain node.
    let mut b = GraphBuilder::new("g", 17, f32);
    let x = b.input("x", f32, &[Dim::from(4usize)]);
    let c = b.cast(&x, ElemType::F8E4M3);
    let y = b.cast(&c, f32);
    let y = b.op("FusedGelu", &[&y], &[]);
    b.output(&y, "y", f32, &[Dim::from(4usize)]);
    let mut g = b.finish();
    g.nodes.last_mut().unwrap().domain = "com.microsoft".into();
    let f = lint(&g, &dir.path().join("h"), "10.15");
    let reasons: Vec<String> = f.iter().map(|f| format!("{}: {}", f.node, f.reason)).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.ends_with("Cast to FLOAT8E4M3FN is unsupported")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.ends_with("Cast input of type FLOAT8E4M3FN is unsupported")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("custom domain \"com.microsoft\"")),
        "{reasons:?}"
    );
}

#[test]
fn bad_targets_and_paths_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let o = fluxbuild(&["lint", dir.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no */model.onnx found"));
    let o = fluxbuild(&["lint", dir.path().to_str().unwrap(), "--trt-version", "8.6"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("the lint knows TensorRT 10.x and 11.x parsers"));
    std::fs::create_dir(dir.path().join("clip")).unwrap();
    std::fs::write(dir.path().join("clip/model.onnx"), b"not a protobuf").unwrap();
    let o = fluxbuild(&["lint", dir.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("clip/model.onnx: not an ONNX model"));

    // A graph the export's manifest lists and the folder lacks is a finding, not a graph less.
    let models = dir.path().join("models");
    assert_eq!(export(&models, "fp32").len(), 4);
    assert!(fluxbuild(&["lint", models.to_str().unwrap()]).status.success());
    std::fs::remove_file(models.join("vae_decoder/model.onnx")).unwrap();
    let o = fluxbuild(&["lint", models.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("vae_decoder/model.onnx: missing ("),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The parser reads the weights too: a data file missing or cut short fails the graph.
    let models = dir.path().join("models-data");
    assert_eq!(export(&models, "fp32").len(), 4);
    std::fs::remove_file(models.join("clip/model.onnx.data")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(models.join("t5/model.onnx.data"))
        .unwrap()
        .set_len(1000)
        .unwrap();
    let o = fluxbuild(&["lint", models.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success());
    assert!(
        stdout.contains("[external data]: ")
            && stdout
                .contains("clip/model.onnx.data: external data file model.onnx.data (named in the graph) is missing"),
        "{stdout}"
    );
    assert!(stdout.contains("t5/model.onnx.data: 1000 bytes, but"), "{stdout}");
}
