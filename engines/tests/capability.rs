//! The FP8 capability check: FP8 graphs need compute capability 8.9 or newer, and
//! `--precision fp8` needs FP8 graphs.

use fluxbuild_engines::build::Graph;
use fluxbuild_engines::capability::{check_fp8, has_fp8, parse_compute_capability};
use fluxbuild_engines::settings::Precision;
use fluxbuild_engines::toolchain::Gpu;
use fluxbuild_onnx::pb;
use fluxbuild_profiles::Network;

/// A graph whose only initializer has ONNX type `data_type` (17: FLOAT8E4M3FN, 10: FLOAT16).
fn graph(network: Network, data_type: i32) -> Graph {
    let mut model = pb::ModelProto::new();
    let mut tensor = pb::TensorProto::new();
    tensor.name = "w".into();
    tensor.data_type = data_type;
    model.graph.mut_or_insert_default().initializer.push(tensor);
    Graph {
        network,
        onnx: format!("{network}/model.onnx").into(),
        model,
        shapes: vec![],
    }
}

fn gpu(name: &str, cc: &str) -> Gpu {
    Gpu {
        name: name.into(),
        compute_capability: cc.into(),
        memory_bytes: 0,
        cuda_version: "13.0".into(),
    }
}

#[test]
fn fp8_graphs_need_ada_or_newer() {
    let graphs = [graph(Network::T5, 10), graph(Network::Transformer, 17)];
    assert!(has_fp8(&graphs[1].model) && !has_fp8(&graphs[0].model));
    for cc in ["8.9", "9.0", "10.0", "12.0"] {
        check_fp8(&graphs, Precision::Fp8, Some(&gpu("new", cc))).unwrap();
        check_fp8(&graphs, Precision::Typed, Some(&gpu("new", cc))).unwrap();
    }
    for cc in ["7.5", "8.0", "8.6"] {
        let error = check_fp8(&graphs, Precision::Typed, Some(&gpu("NVIDIA A100", cc)))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("transformer: FP8")
                && error.contains(&format!("NVIDIA A100 has compute capability {cc}")),
            "{error}"
        );
        assert!(error.contains("8.9 or newer"), "{error}");
    }
    // Without FP8 graphs any GPU builds; a dry run (no GPU) checks the graphs only.
    check_fp8(&graphs[..1], Precision::Typed, Some(&gpu("old", "7.5"))).unwrap();
    check_fp8(&graphs, Precision::Fp8, None).unwrap();
}

#[test]
fn fp8_precision_without_fp8_graphs_is_refused() {
    let graphs = [graph(Network::Clip, 10), graph(Network::Transformer, 16)];
    let error = check_fp8(&graphs, Precision::Fp8, None).unwrap_err().to_string();
    assert!(error.contains("none of the graphs (clip, transformer)"), "{error}");
}

#[test]
fn compute_capabilities_parse() {
    assert_eq!(parse_compute_capability("8.9").unwrap(), (8, 9));
    assert!(parse_compute_capability("12.0").unwrap() > (8, 9));
    assert!(parse_compute_capability("89").is_err());
}
