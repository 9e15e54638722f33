//! The CLIP, T5 and VAE-decoder graphs beyond fp32 parity: full-size checkpoints (header-only
//! sparse files with the real names and shapes) are recognised and build; every node is an
//! opset-17 operator TensorRT 10's ONNX parser supports; T5's in-graph bucketing is exact for
//! any length; T5's precision hook builds a runnable mixed fp16/fp32 graph; `detect` tells the
//! files apart.

mod common;
use common::*;
use fluxbuild::runtime::{Input, Model};
use fluxbuild_contract::Network;
use fluxbuild_exporters::checkpoint::Checkpoint;
use fluxbuild_exporters::models::{self, t5, GraphOptions};
use fluxbuild_exporters::onnx::{write_model, Dim, ElemType, Graph, GraphBuilder, Weights};
use ndarray::ArrayD;
use std::path::Path;

/// Operators the three graphs may use: all exist at opset ≤ 17 in this form, and all are in
/// onnx-tensorrt's support list (docs/operators.md, TensorRT 10) for the types used here.
const ALLOWED_OPS: [&str; 33] = [
    "Abs",
    "Add",
    "ArgMax",
    "Cast",
    "Conv",
    "Div",
    "Floor",
    "Gather",
    "GatherND",
    "Greater",
    "Identity",
    "InstanceNormalization",
    "LayerNormalization",
    "Less",
    "Log",
    "MatMul",
    "Max",
    "Min",
    "Mul",
    "Range",
    "ReduceMean",
    "Reshape",
    "Resize",
    "Shape",
    "Sigmoid",
    "Softmax",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
    "Where",
];

fn assert_tensorrt_friendly(what: &str, graph: &Graph<'_>) {
    assert_eq!(graph.opset, 17, "{what}");
    for node in &graph.nodes {
        assert!(
            node.domain.is_empty(),
            "{what}: node {} is in domain {}",
            node.name,
            node.domain
        );
        assert!(
            ALLOWED_OPS.contains(&node.op.as_str()),
            "{what}: node {} uses {}",
            node.name,
            node.op
        );
    }
}

/// A safetensors file whose header lists `tensors` (BF16) and whose data section is a hole:
/// full-size shapes at no disk cost. Analysis and graph building never read tensor data.
fn header_only(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend(&json);
    std::fs::write(path, &bytes).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len((bytes.len() + offset) as u64)
        .unwrap();
}

/// A table of full-size names and shapes, copied from the reference material's tensor-names/.
fn reference_table(file: &str) -> String {
    let path = repo().join("tests/tensor_names").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Names and shapes of a `name_pattern  shape  count` reference table, `{i}` expanded to 0..count.
fn reference_tensors(table: &str) -> Vec<(String, Vec<usize>)> {
    let text = reference_table(table);
    let mut out = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let shape: Vec<usize> = serde_json::from_str(cols[1]).unwrap();
        let count: usize = cols[2].parse().unwrap();
        if cols[0].contains("{i}") {
            out.extend((0..count).map(|i| (cols[0].replace("{i}", &i.to_string()), shape.clone())));
        } else {
            out.push((cols[0].to_string(), shape));
        }
    }
    out
}

/// The full-size VAE in one of `vae_name_map.tsv`'s two layouts (columns: diffusers, LDM names, then shapes).
fn reference_vae(ldm: bool) -> Vec<(String, Vec<usize>)> {
    let text = reference_table("vae_name_map.tsv");
    let column = ldm as usize;
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (
                cols[column].to_string(),
                serde_json::from_str(cols[2 + column]).unwrap(),
            )
        })
        .collect()
}

#[test]
fn full_size_checkpoints_are_recognised_with_flux_defaults_and_build() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "clip",
            "clip_l.safetensors",
            reference_tensors("clip_l_text_encoder.tsv"),
            "clip-l",
            "transformers",
        ),
        (
            "t5",
            "t5xxl.safetensors",
            reference_tensors("t5_xxl_encoder.tsv"),
            "t5-v1_1-xxl",
            "transformers",
        ),
        (
            "vae_decoder",
            "vae.safetensors",
            reference_vae(false),
            "flux",
            "diffusers",
        ),
        ("vae_decoder", "ae.safetensors", reference_vae(true), "flux", "ldm"),
    ];
    for (name, file, tensors, variant, layout) in cases {
        let path = dir.path().join(file);
        header_only(&path, &tensors);
        let exporter = models::exporter(Network::parse(name).unwrap());
        let ckpt = Checkpoint::load(&path, exporter.subfolder(), exporter.key_prefixes()).unwrap();
        let detected: Vec<&str> = models::EXPORTERS
            .iter()
            .filter(|e| e.detect(&ckpt))
            .map(|e| e.name())
            .collect();
        assert_eq!(detected, vec![name], "{file}");
        // No config.json beside the file: what the shapes do not say comes from FLUX's defaults.
        let (analysis, graph, problems) = models::plan(exporter, &ckpt, None, &GraphOptions::default()).unwrap();
        assert!(problems.is_empty(), "{file}: {problems:?}");
        assert_eq!(analysis.variant.as_deref(), Some(variant), "{file}");
        assert_eq!(analysis.layout, layout, "{file}");
        let config = &analysis.config;
        match name {
            "clip" => assert_eq!(config["num_attention_heads"], 12),
            "t5" => assert_eq!(
                (config["num_heads"].as_u64(), config["d_kv"].as_u64()),
                (Some(64), Some(64))
            ),
            _ => assert_eq!(config["norm_num_groups"], 32),
        }
        assert_tensorrt_friendly(file, &graph);
        // Parameters in the graph = parameters in the file, less what FLUX does not use.
        let in_graph: usize = graph
            .initializers
            .iter()
            .filter(|i| i.name.contains(".weight") || i.name.contains(".bias"))
            .map(|i| i.numel())
            .sum();
        let unused: usize = tensors
            .iter()
            .filter(|(n, _)| n == "encoder.embed_tokens.weight" || n.starts_with("encoder.") && name == "vae_decoder")
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(in_graph as u64, ckpt.param_count() - unused as u64, "{file}");
    }
}

#[test]
fn full_size_files_missing_their_last_blocks_are_refused_unless_a_config_says_so() {
    let dir = tempfile::tempdir().unwrap();
    for (name, table, last, key, depth) in [
        ("t5", "t5_xxl_encoder.tsv", "encoder.block.23.", "num_layers", 23),
        (
            "clip",
            "clip_l_text_encoder.tsv",
            "encoder.layers.11.",
            "num_hidden_layers",
            11,
        ),
    ] {
        let path = dir.path().join(format!("{name}.safetensors"));
        let tensors: Vec<_> = reference_tensors(table)
            .into_iter()
            .filter(|(n, _)| !n.starts_with(last))
            .collect();
        header_only(&path, &tensors);
        let exporter = models::exporter(Network::parse(name).unwrap());
        let ckpt = Checkpoint::load(&path, exporter.subfolder(), exporter.key_prefixes()).unwrap();
        let message = format!("{:#}", exporter.analyze(&ckpt, None).unwrap_err());
        assert!(
            message.contains(&format!("{name}.safetensors: {depth} blocks")),
            "{message}"
        );
        assert!(message.contains("is a block missing?"), "{message}");
        let config = serde_json::json!({ key: depth });
        assert_eq!(exporter.analyze(&ckpt, Some(&config)).unwrap().config[key], depth);
    }
}

#[test]
fn the_fixture_graphs_are_tensorrt_friendly_and_detect_picks_one_exporter() {
    let f = fixtures();
    let vae_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.join("vae/diffusers/config.json")).unwrap()).unwrap();
    let cases = [
        ("clip", f.join("clip/model.safetensors"), None),
        ("clip", f.join("clip/model_noprefix.safetensors"), None),
        ("t5", f.join("t5/both.safetensors"), None),
        ("vae_decoder", f.join("vae/diffusers"), None),
        ("vae_decoder", f.join("vae/ae.safetensors"), Some(&vae_config)),
    ];
    for (name, path, config) in cases {
        let exporter = models::exporter(Network::parse(name).unwrap());
        let ckpt = Checkpoint::load(&path, exporter.subfolder(), exporter.key_prefixes()).unwrap();
        let detected: Vec<&str> = models::EXPORTERS
            .iter()
            .filter(|e| e.detect(&ckpt))
            .map(|e| e.name())
            .collect();
        assert_eq!(detected, vec![name], "{}", path.display());
        let (_, graph, problems) = models::plan(exporter, &ckpt, config, &GraphOptions::default()).unwrap();
        assert!(problems.is_empty(), "{}: {problems:?}", path.display());
        assert_tensorrt_friendly(&path.display().to_string(), &graph);
    }
}

/// transformers' bucket of key − query, in exact integer arithmetic: the f32 formula's value
/// 2·log2(n/8) is an integer exactly at n = 16, 32, 64 and at least 0.016 away from one elsewhere
/// below 128, so flooring it is the same as counting the powers of two n²/64 reaches.
fn reference_bucket(relative: i64) -> i64 {
    let (base, n) = (if relative > 0 { 16 } else { 0 }, relative.abs());
    if n < 8 {
        return base + n;
    }
    let steps = (1..).take_while(|k| 64 * (1i64 << k) <= n * n).count() as i64;
    base + (8 + steps).min(15)
}

#[test]
fn t5_relative_buckets_match_transformers_at_every_distance() {
    let span: i64 = 3000;
    let mut b = GraphBuilder::new("buckets", 17, ElemType::F32);
    let relative = b.input("relative", ElemType::I64, &[Dim::from("N")]);
    let buckets = t5::relative_bucket(&mut b, &relative, 32, 128);
    let buckets = b.cast(&buckets, ElemType::F32);
    b.output(&buckets, "buckets", ElemType::F32, &[Dim::from("N")]);
    let dir = tempfile::tempdir().unwrap();
    let written = write_model(&b.finish(), dir.path(), &mut |_, _| {}).unwrap();
    let values: Vec<i64> = (-span..=span).collect();
    let input = ArrayD::from_shape_vec(vec![values.len()], values.clone()).unwrap();
    let out = Model::load(&written.model)
        .unwrap()
        .run(vec![("relative", Input::I64(input))])
        .unwrap();
    let got: Vec<i64> = out["buckets"].iter().map(|&v| v as i64).collect();
    // The examples transformers was checked on (FLUX_FACTS §8).
    for (relative, bucket) in [
        (-1, 1),
        (1, 17),
        (8, 24),
        (16, 26),
        (64, 30),
        (128, 31),
        (-128, 15),
        (0, 0),
    ] {
        assert_eq!(got[(relative + span) as usize], bucket, "relative position {relative}");
    }
    for (relative, got) in values.iter().zip(&got) {
        assert_eq!(*got, reference_bucket(*relative), "relative position {relative}");
    }
}

#[test]
fn t5_precision_hook_keeps_the_ffn_output_and_residual_stream_in_f32() {
    let dir = fixtures().join("t5");
    let exporter = models::exporter(Network::T5);
    let ckpt = Checkpoint::load(
        &dir.join("shared.safetensors"),
        exporter.subfolder(),
        exporter.key_prefixes(),
    )
    .unwrap();
    let analysis = exporter.analyze(&ckpt, None).unwrap();
    let cfg: t5::T5Config = serde_json::from_value(analysis.config.clone()).unwrap();
    let w = Weights::new(&ckpt);
    let precision = t5::T5Precision {
        compute: ElemType::F16,
        ffn_out: ElemType::F32,
        residual: ElemType::F32,
    };
    let graph = t5::build_graph(&w, &cfg, &GraphOptions::default(), precision).unwrap();
    assert!(w.problems().is_empty(), "{:?}", w.problems());
    let elem = |name: &str| graph.initializers.iter().find(|i| i.name == name).map(|i| i.elem);
    assert_eq!(
        elem("encoder.block.1.layer.1.DenseReluDense.wo.weight"),
        Some(ElemType::F32)
    );
    assert_eq!(elem("encoder.block.1.layer.1.layer_norm.weight"), Some(ElemType::F32));
    assert_eq!(
        elem("encoder.block.1.layer.1.DenseReluDense.wi_0.weight"),
        Some(ElemType::F16)
    );
    assert_eq!(
        elem("encoder.block.1.layer.0.SelfAttention.q.weight"),
        Some(ElemType::F16)
    );
    let tmp = tempfile::tempdir().unwrap();
    let written = write_model(&graph, tmp.path(), &mut |_, _| {}).unwrap();
    let mut model = Model::load(&written.model).unwrap();
    let io = dir.join("io.safetensors");
    let ids = io_tensor::<i64>(&io, "input_ids_L17");
    let out = model.run(vec![("input_ids", Input::I64(ids))]).unwrap();
    let want = io_tensor::<f32>(&io, "last_hidden_state_L17");
    let err = relative_error(out["text_embeddings"].as_slice().unwrap(), want.as_slice().unwrap());
    println!("t5 fp16 compute / fp32 ffn_out+residual: relative error {err:.3e}");
    // fp16 rounds each matmul input to 2^-11 relative; two blocks of them stay within ~10 units.
    assert!(err < 1e-2, "relative error {err:.3e}");
    assert!(
        err > 1e-5,
        "the fp16 part did not run in fp16 (error {err:.3e} is fp32-level)"
    );
}

/// `src` re-saved with its matrices in F8_E4M3 and the rest in F16 (ComfyUI's t5xxl_fp8 /
/// t5xxl_fp16 files), and as F32 holding exactly those rounded values.
fn low_precision_copies(src: &Path, fp8: &Path, f32_copy: &Path) {
    use safetensors::{tensor::TensorView, Dtype};
    let bytes = std::fs::read(src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut low: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut exact: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (name, t) in st.tensors() {
        let values: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let (dtype, encoded, rounded): (Dtype, Vec<u8>, Vec<f32>) = if t.shape().len() == 2 {
            let q: Vec<float8::F8E4M3> = values.iter().map(|&v| float8::F8E4M3::from_f32(v)).collect();
            (
                Dtype::F8_E4M3,
                q.iter().map(|v| v.to_bits()).collect(),
                q.iter().map(|v| v.to_f32()).collect(),
            )
        } else {
            let h: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
            (
                Dtype::F16,
                h.iter().flat_map(|v| v.to_le_bytes()).collect(),
                h.iter().map(|v| v.to_f32()).collect(),
            )
        };
        low.push((name.clone(), dtype, t.shape().to_vec(), encoded));
        exact.push((name, t.shape().to_vec(), rounded));
    }
    let views: Vec<(String, TensorView)> = low
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, fp8).unwrap();
    let exact: Vec<(&str, Vec<usize>, Vec<f32>)> = exact
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    write_f32_safetensors(f32_copy, &exact);
}

#[test]
fn t5_from_an_fp8_file_computes_what_its_decoded_f32_copy_does() {
    let dir = tempfile::tempdir().unwrap();
    let (fp8, f32_copy) = (
        dir.path().join("t5xxl_fp8_e4m3fn.safetensors"),
        dir.path().join("t5_f32.safetensors"),
    );
    low_precision_copies(&fixtures().join("t5/shared.safetensors"), &fp8, &f32_copy);
    std::fs::copy(fixtures().join("t5/config.json"), dir.path().join("config.json")).unwrap();
    let ids = io_tensor::<i64>(&fixtures().join("t5/io.safetensors"), "input_ids_L17");
    let mut outputs = Vec::new();
    for file in [&fp8, &f32_copy] {
        let out = dir.path().join(file.file_stem().unwrap());
        let (_, model) = export_submodel("t5", file, None, &GraphOptions::default(), &out).unwrap();
        let result = Model::load(&model)
            .unwrap()
            .run(vec![("input_ids", Input::I64(ids.clone()))])
            .unwrap();
        outputs.push(result["text_embeddings"].clone());
    }
    assert_eq!(
        outputs[0], outputs[1],
        "the F8_E4M3 / F16 weights were not decoded exactly"
    );
    // And the rounding did change the model (the files really hold fp8 values).
    let want = io_tensor::<f32>(&fixtures().join("t5/io.safetensors"), "last_hidden_state_L17");
    assert!(relative_error(outputs[0].as_slice().unwrap(), want.as_slice().unwrap()) > 1e-3);
}

#[test]
fn half_precision_graphs_are_well_typed_and_bf16_normalizes_in_f32() {
    let f = fixtures();
    let vae_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.join("vae/diffusers/config.json")).unwrap()).unwrap();
    for (name, path) in [
        ("clip", f.join("clip/model.safetensors")),
        ("t5", f.join("t5/shared.safetensors")),
        ("vae_decoder", f.join("vae/ae.safetensors")),
    ] {
        let config = (name == "vae_decoder").then_some(&vae_config);
        // ONNX Runtime type-checks the whole graph when it loads it.
        let dir = tempfile::tempdir().unwrap();
        let fp16 = GraphOptions {
            float: ElemType::F16,
            ..GraphOptions::default()
        };
        let (_, model) = export_submodel(name, &path, config, &fp16, dir.path()).unwrap();
        Model::load(&model).unwrap_or_else(|e| panic!("{name} fp16: {e:#}"));

        let exporter = models::exporter(Network::parse(name).unwrap());
        let ckpt = Checkpoint::load(&path, exporter.subfolder(), exporter.key_prefixes()).unwrap();
        let bf16 = GraphOptions {
            float: ElemType::BF16,
            ..GraphOptions::default()
        };
        let (_, graph, _) = models::plan(exporter, &ckpt, config, &bf16).unwrap();
        let produced_by = |value: &str| graph.nodes.iter().find(|n| n.outputs.iter().any(|o| o == value));
        let init_type = |value: &str| graph.initializers.iter().find(|i| i.name == value).map(|i| i.elem);
        for norm in graph.nodes.iter().filter(|n| n.op == "InstanceNormalization") {
            let cast = produced_by(&norm.inputs[0]).expect("InstanceNormalization input");
            assert_eq!(cast.op, "Cast", "{name}: {} does not normalize a cast", norm.name);
            assert_eq!(init_type(&norm.inputs[1]), Some(ElemType::F32), "{name}: {}", norm.name);
            assert_eq!(init_type(&norm.inputs[2]), Some(ElemType::F32), "{name}: {}", norm.name);
        }
    }
}
