//! FP8 explicit quantization checked against an independent fake-quantization in Rust, on a
//! small graph of three linear layers (the middle one kept in higher precision by the policy).

mod common;
use common::*;
use fluxbuild::runtime::{Input, Model};
use fluxbuild_exporters::checkpoint::Checkpoint;
use fluxbuild_exporters::onnx::{nn, write_model, Dim, ElemType, Graph, GraphBuilder, Weights};
use fluxbuild_exporters::quantize::fp8::{fake_quantize, scale_for};
use fluxbuild_exporters::quantize::{amax, qdq, Fp8Policy, WeightScaling};
use ndarray::ArrayD;
use std::collections::BTreeMap;
use std::path::Path;

const DIMS: [usize; 4] = [24, 48, 40, 16];
const NAMES: [&str; 3] = ["blocks.0.fc", "blocks.0.keep", "blocks.1.fc"];
const BATCH: usize = 5;

struct Layer {
    weight: Vec<f32>, // [out, in]
    bias: Vec<f32>,
    d_in: usize,
    d_out: usize,
}

fn layers() -> Vec<Layer> {
    (0..3)
        .map(|i| {
            let (d_in, d_out) = (DIMS[i], DIMS[i + 1]);
            // Rows of different magnitude, so per-channel scales differ from the per-tensor one.
            let weight = pseudo_random(d_out * d_in, 10 + i as u64)
                .iter()
                .enumerate()
                .map(|(k, v)| v * (0.05 + (k / d_in) as f32 * 0.02))
                .collect();
            Layer {
                weight,
                bias: pseudo_random(d_out, 20 + i as u64),
                d_in,
                d_out,
            }
        })
        .collect()
}

fn write_checkpoint(path: &Path, layers: &[Layer]) {
    let mut tensors = Vec::new();
    for (name, l) in NAMES.iter().zip(layers) {
        tensors.push((format!("{name}.weight"), vec![l.d_out, l.d_in], l.weight.clone()));
        tensors.push((format!("{name}.bias"), vec![l.d_out], l.bias.clone()));
    }
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    write_f32_safetensors(path, &refs);
}

/// x -> fc -> SiLU -> keep -> SiLU -> fc, built the way the exporters build graphs.
fn build<'a>(w: &Weights<'a>, opset: i64) -> Graph<'a> {
    let mut b = GraphBuilder::new("mlp", opset, ElemType::F32);
    let mut x = b.input("x", ElemType::F32, &[Dim::from("B"), Dim::from(DIMS[0])]);
    for (i, name) in NAMES.iter().enumerate() {
        let mut m = w.clone();
        for part in name.split('.') {
            m = m.pp(part);
        }
        x = nn::linear(&mut b, &m, &x, DIMS[i], DIMS[i + 1]);
        if i < 2 {
            x = b.silu(&x);
        }
    }
    b.output(&x, "y", ElemType::F32, &[Dim::from("B"), Dim::from(DIMS[3])]);
    assert!(w.problems().is_empty(), "{:?}", w.problems());
    b.finish()
}

fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// The forward pass in Rust (f64 accumulation); `quant[i]` = (input scale, weight scales) fake-quantizes layer i.
fn forward(layers: &[Layer], x: &[f32], quant: &[Option<(f32, Vec<f32>)>]) -> (Vec<f32>, Vec<f32>) {
    let mut h = x.to_vec();
    let mut input_amax = vec![];
    for (i, l) in layers.iter().enumerate() {
        input_amax.push(h.iter().fold(0f32, |m, v| m.max(v.abs())));
        let (xq, wq): (Vec<f32>, Vec<f32>) = match &quant[i] {
            None => (h.clone(), l.weight.clone()),
            Some((sx, sw)) => (
                h.iter().map(|v| fake_quantize(*v, *sx)).collect(),
                l.weight
                    .iter()
                    .enumerate()
                    .map(|(k, v)| fake_quantize(*v, if sw.len() == 1 { sw[0] } else { sw[k / l.d_in] }))
                    .collect(),
            ),
        };
        let mut out = vec![0f32; BATCH * l.d_out];
        for n in 0..BATCH {
            for o in 0..l.d_out {
                let dot: f64 = (0..l.d_in)
                    .map(|k| xq[n * l.d_in + k] as f64 * wq[o * l.d_in + k] as f64)
                    .sum();
                let y = (dot + l.bias[o] as f64) as f32;
                out[n * l.d_out + o] = if i < 2 { silu(y) } else { y };
            }
        }
        h = out;
    }
    (h, input_amax)
}

fn run(model: &Path, x: &[f32]) -> BTreeMap<String, ArrayD<f32>> {
    let mut model = Model::load(model).unwrap();
    model
        .run(vec![(
            "x",
            Input::F32(ArrayD::from_shape_vec(vec![BATCH, DIMS[0]], x.to_vec()).unwrap()),
        )])
        .unwrap()
}

fn check(scaling: WeightScaling) {
    let dir = tempfile::tempdir().unwrap();
    let layers = layers();
    let file = dir.path().join("w.safetensors");
    write_checkpoint(&file, &layers);
    let ckpt = Checkpoint::load(&file, "", &[]).unwrap();
    let x: Vec<f32> = pseudo_random(BATCH * DIMS[0], 7).iter().map(|v| v * 3.0).collect();

    // Calibration: amax outputs of the fp32 graph equal the Rust forward pass's layer inputs.
    let fp32 = write_model(
        &build(&Weights::new(&ckpt), 17),
        &dir.path().join("fp32"),
        &mut |_, _| {},
    )
    .unwrap();
    let calibration = amax::write_calibration_model(&dir.path().join("fp32"), &dir.path().join("calib")).unwrap();
    let (calib, outputs) = (run(&calibration.path, &x), &calibration.outputs);
    let (reference, input_amax) = forward(&layers, &x, &[None, None, None]);
    assert!(relative_error(calib["y"].as_slice().unwrap(), &reference) < 1e-6);
    let mut table = BTreeMap::new();
    for (i, name) in NAMES.iter().enumerate() {
        let weight = format!("{name}.weight");
        let measured = calib[&outputs[&weight]].first().copied().unwrap();
        assert!(
            (measured - input_amax[i]).abs() <= 1e-6 * input_amax[i],
            "{weight}: {measured} vs {}",
            input_amax[i]
        );
        // Calibrate the first layer low on purpose, so that its activations saturate at ±448·s.
        table.insert(weight, if i == 0 { measured * 0.5 } else { measured });
    }
    drop(fp32);

    let policy = Fp8Policy {
        weights: scaling,
        keep: vec!["*.keep.*".into()],
    };
    let mut graph = build(&Weights::new(&ckpt), qdq::FP8_OPSET);
    let summary = qdq::quantize_linears(&mut graph, &policy, &table).unwrap();
    assert_eq!(summary.quantized, 2);
    assert_eq!(summary.kept, vec!["blocks.0.keep.weight".to_string()]);
    let written = write_model(&graph, &dir.path().join("fp8"), &mut |_, _| {}).unwrap();
    let got = run(&written.model, &x)["y"].as_slice().unwrap().to_vec();

    let quant: Vec<Option<(f32, Vec<f32>)>> = NAMES
        .iter()
        .zip(&layers)
        .map(|(name, l)| {
            if name.contains("keep") {
                return None;
            }
            let rows: Vec<f32> = l
                .weight
                .chunks(l.d_in)
                .map(|r| r.iter().fold(0f32, |m, v| m.max(v.abs())))
                .collect();
            let w_amax = match scaling {
                WeightScaling::PerTensor => vec![rows.iter().fold(0f32, |m, v| m.max(*v))],
                WeightScaling::PerChannel => rows,
            };
            Some((
                scale_for(table[&format!("{name}.weight")], ElemType::F32),
                w_amax.iter().map(|a| scale_for(*a, ElemType::F32)).collect(),
            ))
        })
        .collect();
    let (want, _) = forward(&layers, &x, &quant);
    let err = relative_error(&got, &want);
    assert!(
        err < 1e-6,
        "{scaling:?}: FP8 graph vs fake quantization: relative error {err}"
    );
    // And it is a real quantization, not a no-op: the fp32 result is far away.
    let off = relative_error(&got, &reference);
    assert!(off > 1e-3, "{scaling:?}: fp8 output equals fp32 output ({off})");
    eprintln!("{scaling:?}: fp8 vs fake-quant {err:.2e}, fp8 vs fp32 {off:.2e}");
}

#[test]
fn fp8_graph_equals_fake_quantization_per_tensor() {
    check(WeightScaling::PerTensor);
}

#[test]
fn fp8_graph_equals_fake_quantization_per_channel() {
    check(WeightScaling::PerChannel);
}

#[test]
fn missing_calibration_entries_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.safetensors");
    write_checkpoint(&file, &layers());
    let ckpt = Checkpoint::load(&file, "", &[]).unwrap();
    let mut graph = build(&Weights::new(&ckpt), qdq::FP8_OPSET);
    let table = BTreeMap::from([("blocks.0.fc.weight".to_string(), 1.0f32)]);
    let policy = Fp8Policy {
        weights: WeightScaling::PerTensor,
        keep: vec![],
    };
    let err = qdq::quantize_linears(&mut graph, &policy, &table)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("2 linear layer(s)") && err.contains("blocks.1.fc.weight"),
        "{err}"
    );
    let mut old = build(&Weights::new(&ckpt), 17);
    assert!(qdq::quantize_linears(&mut old, &policy, &table)
        .unwrap_err()
        .to_string()
        .contains("opset 19"));
}
