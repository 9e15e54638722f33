//! ComfyUI's file formats, built from the parity fixtures with their real key names and dtypes:
//! scaled fp8 (F8_E4M3 weights, per-layer `scale_weight`, `scale_input`, the `scaled_fp8`
//! marker), F8_E5M2 weights, and the all-in-one checkpoint (`model.diffusion_model.`,
//! `text_encoders.clip_l.transformer.`, `text_encoders.t5xxl.transformer.`, `vae.`).
//! Each exports exactly what the same weights, dequantized or in their own file, export to:
//! byte-identical weights in every output precision, and the same outputs on ONNX Runtime.

mod common;

use common::{export_submodel, fixtures, relative_error};
use fluxbuild::runtime::{Input, Model};
use fluxbuild_exporters::checkpoint::{read_json, Checkpoint};
use fluxbuild_exporters::models::GraphOptions;
use fluxbuild_exporters::onnx::ElemType;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One tensor to write: name, dtype, shape, little-endian bytes.
type Raw = (String, Dtype, Vec<usize>, Vec<u8>);

fn write(path: &Path, tensors: &[Raw]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Every tensor of `file` as (name, shape, f32 values).
fn tensors(file: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let ckpt = Checkpoint::load(file, "", &[]).unwrap();
    ckpt.tensors()
        .map(|t| (t.name.to_string(), t.shape().to_vec(), t.to_f32()))
        .collect()
}

fn config(path: &Path) -> Value {
    read_json(Some(path)).unwrap().unwrap()
}

fn transformer_config() -> Value {
    config(&fixtures().join("transformer/dev/diffusers/config.json"))
}

/// Exports and returns the written weights (`model.onnx.data`) and the model path.
fn export(name: &str, path: &Path, config: &Value, float: ElemType, out: &Path) -> (Vec<u8>, PathBuf) {
    let options = GraphOptions {
        float,
        wide: float,
        ..GraphOptions::default()
    };
    let (_, model) = export_submodel(name, path, Some(config), &options, out)
        .unwrap_or_else(|e| panic!("{name} from {}: {e:#}", path.display()));
    (std::fs::read(out.join("model.onnx.data")).unwrap(), model)
}

/// `source` quantized as ComfyUI's scaled fp8 files are: every 2-D `*.weight` except
/// `keep` (embeddings) as F8_E4M3 `q` with `scale_weight = amax / 448`, the layers whose names
/// contain `with_input_scale` also with a `scale_input`, the marker, keys under `prefix`.
/// Returns (scaled file, the same weights dequantized to F32 without prefix).
fn scaled_fp8(source: &Path, prefix: &str, keep: &[&str], with_input_scale: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let (mut scaled, mut dequantized) = (Vec::new(), Vec::new());
    for (name, shape, values) in tensors(source) {
        if shape.len() == 2 && name.ends_with(".weight") && !keep.contains(&name.as_str()) {
            let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 448.0;
            let q: Vec<float8::F8E4M3> = values.iter().map(|v| float8::F8E4M3::from_f32(v / scale)).collect();
            let real: Vec<f32> = q.iter().map(|q| q.to_f32() * scale).collect();
            let layer = name.strip_suffix(".weight").unwrap();
            let bits = q.iter().map(|q| q.to_bits()).collect();
            scaled.push((format!("{prefix}{name}"), Dtype::F8_E4M3, shape.clone(), bits));
            let scale_weight = format!("{prefix}{layer}.scale_weight");
            scaled.push((scale_weight, Dtype::F32, vec![], scale.to_le_bytes().to_vec()));
            if layer.contains(with_input_scale) {
                let scale_input = format!("{prefix}{layer}.scale_input");
                scaled.push((scale_input, Dtype::F32, vec![], 1f32.to_le_bytes().to_vec()));
            }
            dequantized.push((name, Dtype::F32, shape, f32_bytes(&real)));
        } else {
            scaled.push((format!("{prefix}{name}"), Dtype::F32, shape.clone(), f32_bytes(&values)));
            dequantized.push((name, Dtype::F32, shape, f32_bytes(&values)));
        }
    }
    scaled.push((format!("{prefix}scaled_fp8"), Dtype::F8_E4M3, vec![0], vec![]));
    let stem = source.file_stem().unwrap().to_str().unwrap();
    let (a, b) = (
        dir.join(format!("{stem}_fp8_scaled.safetensors")),
        dir.join(format!("{stem}_dequantized.safetensors")),
    );
    write(&a, &scaled);
    write(&b, &dequantized);
    (a, b)
}

/// The dev transformer as `flux1-dev_fp8_scaled.safetensors` (the image attention layers,
/// qkv and proj of 2 blocks, with a `scale_input`).
fn scaled_fp8_transformer(dir: &Path) -> (PathBuf, PathBuf) {
    let bfl = fixtures().join("transformer/dev/bfl.safetensors");
    scaled_fp8(&bfl, "model.diffusion_model.", &[], "img_attn", dir)
}

fn run_transformer(model: &Path) -> Vec<f32> {
    let io = fixtures().join("transformer/dev/io.safetensors");
    let inputs = common::flux::io_tensors(&io);
    let feed: Vec<(&str, Input)> = inputs
        .iter()
        .filter(|(n, _)| n != "noise_pred")
        .map(|(n, a)| (n.as_str(), Input::F32(a.clone())))
        .collect();
    let out = Model::load(model).unwrap().run(feed).unwrap();
    out["noise_pred"].iter().copied().collect()
}

#[test]
fn scaled_fp8_exports_the_dequantized_weights_in_every_precision() {
    let dir = tempfile::tempdir().unwrap();
    let (scaled, dequantized) = scaled_fp8_transformer(dir.path());
    let ckpt = Checkpoint::load(&scaled, "transformer", &["model.diffusion_model."]).unwrap();
    let summary = ckpt.scaled_fp8.clone().expect("recognised as scaled fp8");
    assert_eq!(summary.dequantized_weights, 39, "{summary:?}");
    assert_eq!(summary.input_scales, 4, "{summary:?}");
    assert!(summary.marker);
    let config = transformer_config();
    for float in [ElemType::F32, ElemType::F16, ElemType::BF16] {
        let (a, model) = export(
            "transformer",
            &scaled,
            &config,
            float,
            &dir.path().join(format!("s{float:?}")),
        );
        let (b, reference) = export(
            "transformer",
            &dequantized,
            &config,
            float,
            &dir.path().join(format!("d{float:?}")),
        );
        assert!(
            a == b,
            "{float:?}: the scaled-fp8 export differs from the dequantized weights'"
        );
        if float == ElemType::F32 {
            let err = relative_error(&run_transformer(&model), &run_transformer(&reference));
            assert!(err <= 1e-5, "rel err {err:.3e}");
        }
    }
}

/// `t5xxl_fp8_e4m3fn_scaled.safetensors`: the encoder's linear weights scaled, the embedding not.
/// (The writer lays initializers out in checkpoint byte order, which differs between the two
/// files, so the outputs are compared rather than the data files.)
#[test]
fn scaled_fp8_t5_exports_the_dequantized_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (scaled, dequantized) = scaled_fp8(
        &fixtures().join("t5/shared.safetensors"),
        "",
        &["shared.weight"],
        "SelfAttention",
        dir.path(),
    );
    let summary = Checkpoint::load(&scaled, "text_encoder_2", &[])
        .unwrap()
        .scaled_fp8
        .unwrap();
    assert!(
        summary.dequantized_weights > 0 && summary.input_scales > 0,
        "{summary:?}"
    );
    let config = config(&fixtures().join("t5/config.json"));
    let ids = common::io_tensor::<i64>(&fixtures().join("t5/io.safetensors"), "input_ids_L17");
    let run = |model: &Path| -> Vec<f32> {
        let mut model = Model::load(model).unwrap();
        let out = model.run(vec![("input_ids", Input::I64(ids.clone()))]).unwrap();
        out["text_embeddings"].iter().copied().collect()
    };
    for float in [ElemType::F32, ElemType::F16] {
        let (_, a) = export("t5", &scaled, &config, float, &dir.path().join(format!("s{float:?}")));
        let (_, b) = export(
            "t5",
            &dequantized,
            &config,
            float,
            &dir.path().join(format!("d{float:?}")),
        );
        let (a, b) = (run(&a), run(&b));
        let err = relative_error(&a, &b);
        assert!(err <= 1e-5, "{float:?}: rel err {err:.3e}");
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{float:?}: not identical"
        );
    }
}

#[test]
fn e5m2_weights_export_like_their_f32_values() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e5m2, mut wide) = (Vec::new(), Vec::new());
    for (name, shape, values) in tensors(&fixtures().join("transformer/dev/bfl.safetensors")) {
        let q: Vec<float8::F8E5M2> = values.iter().map(|&v| float8::F8E5M2::from_f32(v)).collect();
        let real: Vec<f32> = q.iter().map(|q| q.to_f32()).collect();
        e5m2.push((
            name.clone(),
            Dtype::F8_E5M2,
            shape.clone(),
            q.iter().map(|q| q.to_bits()).collect(),
        ));
        wide.push((name, Dtype::F32, shape, f32_bytes(&real)));
    }
    let (a_path, b_path) = (
        dir.path().join("flux1-dev-fp8-e5m2.safetensors"),
        dir.path().join("f32.safetensors"),
    );
    write(&a_path, &e5m2);
    write(&b_path, &wide);
    let config = transformer_config();
    let (a, model) = export("transformer", &a_path, &config, ElemType::F32, &dir.path().join("a"));
    let (b, reference) = export("transformer", &b_path, &config, ElemType::F32, &dir.path().join("b"));
    assert!(a == b, "e5m2 weights differ from their f32 values");
    let err = relative_error(&run_transformer(&model), &run_transformer(&reference));
    assert!(err <= 1e-5, "rel err {err:.3e}");
}

/// The four fixture submodels in one file, as ComfyUI saves an all-in-one checkpoint.
fn all_in_one(dir: &Path) -> PathBuf {
    let mut all = Vec::new();
    for (root, file) in [
        ("model.diffusion_model.", "transformer/dev/bfl.safetensors"),
        ("text_encoders.clip_l.transformer.", "clip/model.safetensors"),
        ("text_encoders.t5xxl.transformer.", "t5/shared.safetensors"),
        ("vae.", "vae/ae.safetensors"),
    ] {
        for (name, shape, values) in tensors(&fixtures().join(file)) {
            all.push((format!("{root}{name}"), Dtype::F32, shape, f32_bytes(&values)));
        }
    }
    let path = dir.join("flux1-dev-all-in-one.safetensors");
    write(&path, &all);
    path
}

#[test]
fn each_part_of_an_all_in_one_checkpoint_exports_like_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let aio = all_in_one(dir.path());
    let f = fixtures();
    for (name, own, config) in [
        (
            "transformer",
            f.join("transformer/dev/bfl.safetensors"),
            transformer_config(),
        ),
        (
            "clip",
            f.join("clip/model.safetensors"),
            config(&f.join("clip/config.json")),
        ),
        ("t5", f.join("t5/shared.safetensors"), config(&f.join("t5/config.json"))),
        (
            "vae_decoder",
            f.join("vae/ae.safetensors"),
            config(&f.join("vae/diffusers/config.json")),
        ),
    ] {
        let (a, _) = export(
            name,
            &aio,
            &config,
            ElemType::F32,
            &dir.path().join(format!("aio-{name}")),
        );
        let (b, _) = export(
            name,
            &own,
            &config,
            ElemType::F32,
            &dir.path().join(format!("own-{name}")),
        );
        assert!(a == b, "{name}: the all-in-one part differs from its own file");
    }
}

/// Through the command line: `--checkpoint` an all-in-one file exports all four parts, and the
/// manifest says where each came from; a scaled-fp8 transformer is recorded as dequantized.
#[test]
fn cli_exports_all_in_one_and_scaled_fp8_and_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let aio = all_in_one(dir.path());
    let (scaled, _) = scaled_fp8_transformer(dir.path());
    let f = fixtures();
    let configs = [
        format!(
            "transformer={}",
            f.join("transformer/dev/diffusers/config.json").display()
        ),
        format!("clip={}", f.join("clip/config.json").display()),
        format!("t5={}", f.join("t5/config.json").display()),
        format!("vae_decoder={}", f.join("vae/diffusers/config.json").display()),
    ];
    let out_dir = dir.path().join("out");
    let mut args = vec![
        "export",
        "--checkpoint",
        aio.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ];
    for c in &configs {
        args.extend(["--config", c.as_str()]);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manifest: Value = serde_json::from_slice(&std::fs::read(out_dir.join("manifest.json")).unwrap()).unwrap();
    for (name, root) in [
        ("transformer", "model.diffusion_model."),
        ("clip", "text_encoders.clip_l.transformer."),
        ("t5", "text_encoders.t5xxl.transformer."),
        ("vae_decoder", "vae."),
    ] {
        assert_eq!(manifest["submodels"][name]["all_in_one_part"], root, "{name}");
    }

    let scaled_out = dir.path().join("scaled");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args([
            "export",
            "--transformer",
            scaled.to_str().unwrap(),
            "--config",
            &configs[0],
        ])
        .args(["--precision", "fp16", "--out", scaled_out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manifest: Value = serde_json::from_slice(&std::fs::read(scaled_out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["submodels"]["transformer"]["scaled_fp8"]["dequantized_weights"],
        39
    );
}
