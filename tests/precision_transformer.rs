//! Reduced precision on the tiny FLUX dev transformer, against diffusers' fp32 output and our
//! fp32 graph on the same inputs. 16-bit graphs are emulated (`quantize::emulate`: every op
//! output rounded to its type), since ONNX Runtime's CPU computes fp16 mostly in fp32.
//!
//! Tolerances: fp16 rounds each op output with relative error <= 2^-11; through the block stack
//! (modulation, attention, MLP) that compounds to ~1e-3 on noise_pred, so 1e-2 is the bar. The
//! transformer also rounds 1000·σ and 1000·g in fp16 before embedding them, as diffusers does
//! (`timestep.to(dtype) * 1000`): a shift of up to 0.25 in the embedded value, an input change
//! rather than arithmetic error, so at mid-schedule σ the fp16 graph is compared with the fp32
//! graph fed the same rounded conditioning. FP8 (E4M3, 3 mantissa bits: relative step 2^-4 on
//! both GEMM operands) gives a few 1e-2 per layer; 0.1 on the output is the bar.

mod common;
use common::flux::{case_dir, diffusers_config, export, io_tensors, open};
use common::relative_error;
use fluxbuild::accuracy::rounded_conditioning;
use fluxbuild::runtime::{Input, Model};
use fluxbuild_contract::Network;
use fluxbuild_exporters::models::{exporter, plan, GraphOptions};
use fluxbuild_exporters::onnx::{write_model, ElemType};
use fluxbuild_exporters::precision::Precision;
use fluxbuild_exporters::quantize::emulate::emulate_in_fp32;
use fluxbuild_exporters::quantize::{amax, qdq, Fp8Policy, WeightScaling};
use ndarray::ArrayD;
use std::collections::BTreeMap;
use std::path::Path;

/// Writes the dev transformer at `float` (FP8 linears from `fp8`), emulated or not; returns the
/// bytes of the tensors in its data file.
fn write(dir: &Path, float: ElemType, fp8: Option<&BTreeMap<String, f32>>, emulate: bool) -> u64 {
    let ckpt = open(&case_dir("dev").join("bfl.safetensors")).unwrap();
    let opset = if fp8.is_some() { qdq::FP8_OPSET } else { 17 };
    let options = GraphOptions {
        float,
        wide: float,
        opset,
    };
    let (_, mut graph, problems) = plan(
        exporter(Network::Transformer),
        &ckpt,
        Some(&diffusers_config("dev")),
        &options,
    )
    .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    if let Some(table) = fp8 {
        let policy = Fp8Policy::for_network(Network::Transformer, WeightScaling::PerTensor, &[]);
        let summary = qdq::quantize_linears(&mut graph, &policy, table).unwrap();
        assert!(summary.quantized > 0 && !summary.kept.is_empty());
    }
    if emulate {
        emulate_in_fp32(&mut graph);
    }
    let written = write_model(&graph, dir, &mut |_, _| {}).unwrap();
    initializer_bytes(&written.model)
}

/// The bytes of every initializer: in the data file (without its page padding) or inline.
fn initializer_bytes(model: &Path) -> u64 {
    let proto = fluxbuild_onnx::read_model(model).unwrap();
    proto
        .graph
        .initializer
        .iter()
        .map(|t| {
            let external = t
                .external_data
                .iter()
                .find(|e| e.key == "length")
                .map(|e| e.value.parse::<u64>().unwrap());
            external.unwrap_or(t.raw_data.len() as u64)
        })
        .sum()
}

type Inputs = Vec<(String, ArrayD<f32>)>;

/// A folder holding the fp32 graph (`fp32/`), the fixture's inputs, and diffusers' fp32 noise_pred for them.
fn fixture() -> (tempfile::TempDir, Inputs, Vec<f32>) {
    let dir = tempfile::tempdir().unwrap();
    export(
        &case_dir("dev").join("bfl.safetensors"),
        Some(&diffusers_config("dev")),
        ElemType::F32,
        &dir.path().join("fp32"),
    );
    let mut tensors = io_tensors(&case_dir("dev").join("io.safetensors"));
    let at = tensors.iter().position(|(n, _)| n == "noise_pred").unwrap();
    let want = tensors.remove(at).1.iter().copied().collect();
    (dir, tensors, want)
}

fn run(dir: &Path, inputs: &Inputs) -> BTreeMap<String, ArrayD<f32>> {
    run_graph(&dir.join("model.onnx"), inputs)
}

fn run_graph(model: &Path, inputs: &Inputs) -> BTreeMap<String, ArrayD<f32>> {
    let feed = inputs
        .iter()
        .map(|(n, a)| (n.as_str(), Input::F32(a.clone())))
        .collect();
    Model::load(model).unwrap().run(feed).unwrap()
}

fn noise_pred(dir: &Path, inputs: &Inputs) -> Vec<f32> {
    run(dir, inputs)["noise_pred"].iter().copied().collect()
}

fn with(inputs: &Inputs, name: &str, f: impl Fn(f32) -> f32) -> Inputs {
    inputs
        .iter()
        .map(|(n, a)| (n.clone(), if n == name { a.mapv(&f) } else { a.clone() }))
        .collect()
}

#[test]
fn fp16_transformer_stays_within_1e_2_of_fp32() {
    let (dir, inputs, want) = fixture();
    write(&dir.path().join("fp16"), ElemType::F16, None, true);
    let fp32 = noise_pred(&dir.path().join("fp32"), &inputs);
    let fp16 = noise_pred(&dir.path().join("fp16"), &inputs);
    let (vs_diffusers, vs_fp32) = (relative_error(&fp16, &want), relative_error(&fp16, &fp32));
    eprintln!("fixture inputs: fp16 (emulated) vs diffusers fp32 {vs_diffusers:.2e}, vs our fp32 {vs_fp32:.2e}");
    assert!(
        vs_diffusers <= 1e-2 && vs_fp32 <= 1e-2,
        "fp16 transformer: {vs_diffusers:.2e} / {vs_fp32:.2e}"
    );
    assert!(
        vs_fp32 > 1e-5,
        "the fp16 graph computes like fp32 ({vs_fp32:.2e}): not rounding?"
    );

    // Mid-schedule σ of the dev pipeline fixture (4 steps, shifted), where 1000·σ is not an fp16 value.
    let sigmas = [0.612_825_75, 0.345_380_7];
    let mid = with(&inputs, "timestep", |x| if x == 0.9 { sigmas[0] } else { sigmas[1] });
    let fp16 = noise_pred(&dir.path().join("fp16"), &mid);
    let raw = relative_error(&fp16, &noise_pred(&dir.path().join("fp32"), &mid));
    let rounded = with(
        &with(&mid, "timestep", |x| rounded_conditioning(x, Precision::Fp16)),
        "guidance",
        |x| rounded_conditioning(x, Precision::Fp16),
    );
    let arithmetic = relative_error(&fp16, &noise_pred(&dir.path().join("fp32"), &rounded));
    eprintln!("mid-schedule: fp16 (emulated) vs fp32 {raw:.2e}; vs fp32 with the same rounded 1000·σ, 1000·g {arithmetic:.2e}");
    assert!(
        arithmetic <= 1e-2,
        "fp16 transformer arithmetic error {arithmetic:.2e} at mid-schedule σ"
    );
}

#[test]
fn fp8_transformer_stays_close_to_fp32_and_halves_the_weights() {
    let (dir, inputs, want) = fixture();

    // Calibrated on the fixture inputs themselves (the pipeline-level calibration is tested in precision_calibrate).
    let calibration = amax::write_calibration_model(&dir.path().join("fp32"), &dir.path().join("calib")).unwrap();
    let out = run_graph(&calibration.path, &inputs);
    let table: BTreeMap<String, f32> = calibration
        .outputs
        .iter()
        .map(|(w, o)| (w.clone(), out[o].first().copied().unwrap()))
        .collect();

    let fp16_bytes = write(&dir.path().join("fp16"), ElemType::F16, None, true);
    let fp8_bytes = write(&dir.path().join("fp8"), ElemType::F16, Some(&table), true);
    let fp16 = relative_error(&noise_pred(&dir.path().join("fp16"), &inputs), &want);
    let fp8 = relative_error(&noise_pred(&dir.path().join("fp8"), &inputs), &want);
    let ratio = fp8_bytes as f64 / fp16_bytes as f64;
    eprintln!("noise_pred vs diffusers fp32: fp16 {fp16:.2e}, fp8 {fp8:.2e}; weights fp16 {fp16_bytes} B, fp8 {fp8_bytes} B, ratio {ratio:.3}");
    assert!(fp8 < 0.1, "fp8 transformer error {fp8:.2e}");
    assert!(
        fp8 > fp16,
        "fp8 ({fp8:.2e}) should cost more than fp16 ({fp16:.2e}): not quantized?"
    );

    // Quantized weights take 1 byte instead of 2; everything else (kept layers, biases, norms) 2.
    let ckpt = open(&case_dir("dev").join("bfl.safetensors")).unwrap();
    let policy = Fp8Policy::for_network(Network::Transformer, WeightScaling::PerTensor, &[]);
    let (mut quantized, mut total) = (0u64, 0u64);
    for t in ckpt.tensors() {
        let n = t.shape().iter().product::<usize>() as u64;
        total += n;
        if t.shape().len() == 2 && t.name.ends_with(".weight") && !policy.keeps(t.name) {
            quantized += n;
        }
    }
    let expected = 1.0 - quantized as f64 / total as f64 / 2.0;
    eprintln!("expected from the parameter counts: {quantized} of {total} quantized -> {expected:.3}");
    assert!(
        (ratio - expected).abs() < 0.02,
        "fp8/fp16 weights {ratio:.3}, expected {expected:.3}"
    );
}
