//! The ONNX plumbing end to end: weights streamed from a safetensors file (fused and split,
//! transposed, converted), external data written, and the graph run by ONNX Runtime.

mod common;
use common::*;
use fluxbuild::runtime::{Input, Model};
use fluxbuild_exporters::checkpoint::Checkpoint;
use fluxbuild_exporters::onnx::{nn, write_model, Dim, ElemType, GraphBuilder, Param, Weights};
use ndarray::ArrayD;

#[test]
fn linear_layers_from_fused_and_split_weights_match_a_direct_computation() {
    let dir = tempfile::tempdir().unwrap();
    let (d_in, d_out) = (40, 300); // 300x40 f32 = 48 KB: goes to the external data file
    let fused = pseudo_random(3 * d_out * d_in, 1);
    let bias = pseudo_random(3 * d_out, 2);
    let file = dir.path().join("w.safetensors");
    write_f32_safetensors(
        &file,
        &[
            ("qkv.weight", vec![3 * d_out, d_in], fused.clone()),
            ("qkv.bias", vec![3 * d_out], bias.clone()),
        ],
    );
    let ckpt = Checkpoint::load(&file, "", &[]).unwrap();
    let w = Weights::new(&ckpt);
    let mut b = GraphBuilder::new("test", 17, ElemType::F32);
    let x = b.input("x", ElemType::F32, &[Dim::from("B"), Dim::from(d_in)]);
    // The middle third (k) of the fused tensor, as BFL checkpoints store it.
    let k = Param::stack(
        "k.weight",
        vec![w.pp("qkv").rows("weight", &[3 * d_out, d_in], d_out..2 * d_out)],
    );
    let kb = w.pp("qkv").rows("bias", &[3 * d_out], d_out..2 * d_out);
    let y = nn::linear_param(&mut b, &x, k, Some(kb));
    b.output(&y, "y", ElemType::F32, &[Dim::from("B"), Dim::from(d_out)]);
    assert!(w.problems().is_empty(), "{:?}", w.problems());
    let graph = b.finish();
    let written = write_model(&graph, &dir.path().join("out"), &mut |_, _| {}).unwrap();
    assert!(written.data_bytes >= (d_out * d_in * 4) as u64);

    let batch = 3;
    let xs = pseudo_random(batch * d_in, 3);
    let mut model = Model::load(&written.model).unwrap();
    let out = model
        .run(vec![(
            "x",
            Input::F32(ArrayD::from_shape_vec(vec![batch, d_in], xs.clone()).unwrap()),
        )])
        .unwrap();
    let got = out["y"].as_slice().unwrap().to_vec();
    let mut want = vec![0f32; batch * d_out];
    for n in 0..batch {
        for o in 0..d_out {
            let row = &fused[(d_out + o) * d_in..(d_out + o + 1) * d_in];
            want[n * d_out + o] = bias[d_out + o]
                + row
                    .iter()
                    .zip(&xs[n * d_in..(n + 1) * d_in])
                    .map(|(a, b)| a * b)
                    .sum::<f32>();
        }
    }
    assert!(
        relative_error(&got, &want) < 1e-6,
        "rel err {}",
        relative_error(&got, &want)
    );
}

#[test]
fn missing_and_misshaped_tensors_are_reported_together_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.safetensors");
    write_f32_safetensors(
        &file,
        &[("a.weight", vec![2, 3], vec![0.0; 6]), ("extra", vec![1], vec![0.0])],
    );
    let ckpt = Checkpoint::load(&file, "", &[]).unwrap();
    let w = Weights::new(&ckpt);
    let mut b = GraphBuilder::new("test", 17, ElemType::F32);
    let x = b.input("x", ElemType::F32, &[Dim::from(3)]);
    nn::linear(&mut b, &w.pp("a"), &x, 4, 2);
    nn::linear(&mut b, &w.pp("b"), &x, 3, 2);
    let text: Vec<String> = w.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(
        text,
        vec![
            "tensor a.weight has shape [2, 3], expected [2, 4]",
            // A linear layer's bias is part of it: missing, it is reported, never taken as zero.
            "missing tensor a.bias (expected shape [2])",
            "missing tensor b.weight (expected shape [2, 3])",
            "missing tensor b.bias (expected shape [2])",
            "unexpected tensor extra [1]",
        ]
    );
}
