//! The transformer graph against diffusers: every fixture case exported from every layout it
//! ships in, run by ONNX Runtime on the fixture inputs, compared with diffusers' float32
//! `noise_pred` as ||out − ref|| / ||ref||.
//!
//! Tolerances: float32 rounding alone gives ~1e-6 (schnell). dev adds the sine embedding of
//! 1000·guidance (arguments up to ~4000 rad, where one f32 ulp of the frequency is ~2e-4 rad
//! of phase): 5e-5 for guidance-distilled checkpoints. Measured (2026-12-01): schnell 1.4e-6,
//! dev 3.5e-6, dev_wide 4.5e-6 (run with `-- --nocapture` to see every case).

mod common;
use common::flux::*;
use fluxbuild_contract::Network;
use fluxbuild_exporters::models::{exporter, plan, GraphOptions};
use fluxbuild_exporters::onnx::ir::InitData;
use fluxbuild_exporters::onnx::{write_model, ElemType};

const SCHNELL_TOLERANCE: f64 = 1e-5;
const DEV_TOLERANCE: f64 = 5e-5;

/// Exports each (label, checkpoint, needs --config, reference) of `case` and checks parity.
fn check_case(case: &str, variant: &str, tolerance: f64, sources: &[(&str, &str, &str)]) {
    let dir = case_dir(case);
    let config = diffusers_config(case);
    let mut failures = vec![];
    for &(label, source, io) in sources {
        let out = tempfile::tempdir().unwrap();
        let given = (!source.starts_with("diffusers")).then_some(&config);
        let analysis = export(&dir.join(source), given, ElemType::F32, out.path());
        assert_eq!(analysis.variant.as_deref(), Some(variant), "{case}/{source}");
        assert_eq!(
            analysis.layout,
            if source.starts_with("diffusers") {
                "diffusers"
            } else {
                "bfl"
            }
        );
        let (rel, max_abs) = compare(out.path(), &dir.join(io));
        eprintln!(
            "parity transformer/{case:<8} {label:<22} rel {rel:.3e}  max|d| {max_abs:.3e}  (tolerance {tolerance:.0e})"
        );
        if rel > tolerance {
            failures.push(format!("{label}: relative error {rel:.3e} > {tolerance:.0e}"));
        }
    }
    assert!(failures.is_empty(), "transformer/{case}: {failures:#?}");
}

#[test]
fn schnell_matches_diffusers_from_both_layouts() {
    check_case(
        "schnell",
        "schnell",
        SCHNELL_TOLERANCE,
        &[
            ("diffusers folder", "diffusers", "io.safetensors"),
            ("bfl single file", "bfl.safetensors", "io.safetensors"),
        ],
    );
}

#[test]
fn dev_matches_diffusers_from_every_layout_and_dtype() {
    check_case(
        "dev",
        "dev",
        DEV_TOLERANCE,
        &[
            ("diffusers folder", "diffusers", "io.safetensors"),
            ("bfl single file", "bfl.safetensors", "io.safetensors"),
            ("bfl prefixed", "bfl_prefixed.safetensors", "io.safetensors"),
            ("diffusers bf16", "diffusers_bf16", "io_bf16.safetensors"),
            ("bfl bf16", "bfl_bf16.safetensors", "io_bf16.safetensors"),
            ("bfl fp8 (F8_E4M3)", "bfl_fp8.safetensors", "io_fp8.safetensors"),
        ],
    );
}

#[test]
fn dev_wide_matches_diffusers_with_other_head_dim_and_rope_axes() {
    check_case(
        "dev_wide",
        "dev",
        DEV_TOLERANCE,
        &[
            ("diffusers folder", "diffusers", "io.safetensors"),
            ("bfl single file", "bfl.safetensors", "io.safetensors"),
        ],
    );
}

#[test]
fn dimensions_come_from_tensor_shapes() {
    let transformer = exporter(Network::Transformer);
    let wide = case_dir("dev_wide");
    let from_folder = transformer
        .analyze(&open(&wide.join("diffusers")).unwrap(), None)
        .unwrap();
    let from_file = transformer
        .analyze(
            &open(&wide.join("bfl.safetensors")).unwrap(),
            Some(&diffusers_config("dev_wide")),
        )
        .unwrap();
    assert_eq!(from_folder.config, from_file.config);
    let c = &from_folder.config;
    let expect = serde_json::json!({
        "in_channels": 64, "out_channels": 64, "inner_dim": 72, "num_attention_heads": 3, "attention_head_dim": 24,
        "mlp_hidden_dim": 288, "num_layers": 2, "num_single_layers": 2, "joint_attention_dim": 48,
        "pooled_projection_dim": 32, "timestep_embedding_dim": 256, "guidance_embeds": true, "axes_dims_rope": [4, 10, 10]
    });
    assert_eq!(c, &expect);
    let schnell = transformer
        .analyze(&open(&case_dir("schnell").join("diffusers")).unwrap(), None)
        .unwrap();
    assert_eq!(schnell.variant.as_deref(), Some("schnell"));
    assert_eq!(schnell.config["guidance_embeds"], false);
}

#[test]
fn single_file_with_unusual_head_dim_asks_for_config() {
    let transformer = exporter(Network::Transformer);
    let err = transformer
        .analyze(&open(&case_dir("dev").join("bfl.safetensors")).unwrap(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bfl.safetensors"), "{err}");
    assert!(
        err.contains("head dim is 16") && err.contains("axes_dims_rope") && err.contains("--config"),
        "{err}"
    );
}

#[test]
fn config_that_contradicts_the_tensors_is_refused() {
    let transformer = exporter(Network::Transformer);
    let mut config = diffusers_config("dev");
    config["num_layers"] = serde_json::json!(19);
    config["joint_attention_dim"] = serde_json::json!(4096);
    let err = transformer
        .analyze(&open(&case_dir("dev").join("bfl.safetensors")).unwrap(), Some(&config))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("num_layers is 19 in the config but 2 in the tensors"),
        "{err}"
    );
    assert!(
        err.contains("joint_attention_dim is 4096 in the config but 40 in the tensors"),
        "{err}"
    );
}

#[test]
fn bf16_graph_keeps_weights_bf16_and_io_float32() {
    let ckpt = open(&case_dir("dev").join("diffusers_bf16")).unwrap();
    let options = GraphOptions {
        float: ElemType::BF16,
        ..GraphOptions::default()
    };
    let (_, graph, problems) = plan(exporter(Network::Transformer), &ckpt, None, &options).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let mut weights = 0;
    for init in graph
        .initializers
        .iter()
        .filter(|i| matches!(i.data, InitData::Weights(_)))
    {
        // q/k RMSNorm weights join the f32 statistics; everything else is bf16 as stored.
        let qk_norm = init.name.contains("norm_q") || init.name.contains("norm_k") || init.name.contains("norm_added");
        let want = if qk_norm { ElemType::F32 } else { ElemType::BF16 };
        assert_eq!(init.elem, want, "{}", init.name);
        weights += 1;
    }
    // Stacking: per double block 2 streams × (6 q/k/v tensors → 2), per single block 8 → 2.
    assert_eq!(
        weights,
        ckpt.len() - 2 * 2 * 4 - 3 * 6,
        "one initializer per tensor, stacked ones fused"
    );
    assert!(graph
        .inputs
        .iter()
        .chain(&graph.outputs)
        .all(|v| v.elem == ElemType::F32));
    let out = tempfile::tempdir().unwrap();
    write_model(&graph, out.path(), &mut |_, _| {}).unwrap();
}

/// fp16 keeps activations in half precision (unit roundoff u = 2⁻¹¹ ≈ 4.9e-4); ORT runs it on
/// the CPU. The error against the float32 reference stays within a few u (measured ≈ 1.3u).
#[test]
fn fp16_graph_runs_within_half_precision_error() {
    let dir = case_dir("schnell");
    let out = tempfile::tempdir().unwrap();
    export(&dir.join("diffusers"), None, ElemType::F16, out.path());
    let (rel, _) = compare(out.path(), &dir.join("io.safetensors"));
    eprintln!("parity transformer/schnell fp16 graph rel {rel:.3e}");
    let u = 2f64.powi(-11);
    assert!(rel < 8.0 * u, "fp16 graph: relative error {rel:.3e} > 8u");
}
