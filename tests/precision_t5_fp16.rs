//! T5 in fp16: plain fp16 overflows where T5-XXL does (the FFN output projection `wo` and the
//! residual stream); fluxbuild's fp16 T5 keeps those in fp32. The tiny T5 is made to overflow
//! by scaling its `wo` weights (still well inside fp16's range) so that the FFN outputs exceed
//! 65504.

mod common;
use common::*;
use fluxbuild::runtime::{Input, Model};
use fluxbuild_exporters::checkpoint::Checkpoint;
use fluxbuild_exporters::models::{self, GraphOptions};
use fluxbuild_exporters::onnx::{write_model, ElemType};
use ndarray::ArrayD;
use safetensors::SafeTensors;
use std::path::Path;

/// Largest |wo| after scaling stays below this, so the weights themselves are exact in fp16.
const WO_MAX: f32 = 30000.0;

fn scaled_t5(dir: &Path) -> f32 {
    let bytes = std::fs::read(fixtures().join("t5/shared.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = Vec::new();
    let mut scale = 0.0;
    for (name, view) in st.tensors() {
        let mut values: Vec<f32> = view.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        if name.ends_with("DenseReluDense.wo.weight") {
            let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            scale = WO_MAX / amax;
            values.iter_mut().for_each(|v| *v *= scale);
        }
        tensors.push((name, view.shape().to_vec(), values));
    }
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors.iter().map(|(n, s, v)| (n.as_str(), s.clone(), v.clone())).collect();
    write_f32_safetensors(&dir.join("model.safetensors"), &refs);
    std::fs::copy(fixtures().join("t5/config.json"), dir.join("config.json")).unwrap();
    scale
}

fn run_t5(ckpt_dir: &Path, out: &Path, float: ElemType, wide: ElemType, ids: &ArrayD<i64>) -> Vec<f32> {
    let exporter = models::exporter("t5").unwrap();
    let ckpt = Checkpoint::load(&ckpt_dir.join("model.safetensors"), exporter.subfolder(), exporter.key_prefixes()).unwrap();
    let options = GraphOptions { float, wide, opset: fluxbuild_exporters::onnx::DEFAULT_OPSET };
    let (_, graph, problems) = models::plan(exporter, &ckpt, ckpt.config().unwrap().as_ref(), &options).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let written = write_model(&graph, out, &mut |_, _| {}).unwrap();
    assert!(written.saturated.is_empty(), "weights saturated: {:?}", written.saturated);
    let mut model = Model::load(&written.model).unwrap();
    let outputs = model.run(vec![("input_ids", Input::I64(ids.clone()))]).unwrap();
    outputs["text_embeddings"].iter().copied().collect()
}

#[test]
fn fp16_t5_keeps_the_overflowing_parts_in_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let scale = scaled_t5(dir.path());
    let io = std::fs::read(fixtures().join("t5/io.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&io).unwrap();
    let view = io.tensor("input_ids_L17").unwrap();
    let ids: Vec<i64> = view.data().chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    let ids = ArrayD::from_shape_vec(view.shape().to_vec(), ids).unwrap();

    let fp32 = run_t5(dir.path(), &dir.path().join("fp32"), ElemType::F32, ElemType::F32, &ids);
    let plain = run_t5(dir.path(), &dir.path().join("plain"), ElemType::F16, ElemType::F16, &ids);
    let safe = run_t5(dir.path(), &dir.path().join("safe"), ElemType::F16, ElemType::F32, &ids);

    // The input really overflows plain fp16: the fp32 graph's values are fine, plain fp16's are not.
    assert!(fp32.iter().all(|v| v.is_finite()));
    let broken = plain.iter().filter(|v| !v.is_finite()).count();
    assert!(broken > 0, "plain fp16 did not overflow (wo scaled by {scale}): the test input is too weak");
    // fluxbuild's fp16 T5 stays finite and close to fp32 (fp16 rounding of the attention/FFN inputs).
    assert!(safe.iter().all(|v| v.is_finite()), "fp16 T5 with fp32 residual produced non-finite values");
    let err = relative_error(&safe, &fp32);
    assert!(err < 1e-2, "fp16 T5 vs fp32: relative error {err}");
    eprintln!("wo x{scale:.0}: plain fp16 {broken}/{} non-finite; safe fp16 rel err {err:.2e}", plain.len());
}
