//! Small graphs with the exact FLUX graph interfaces (input names, ranks, symbolic dims),
//! written with the exporters' GraphBuilder and writer: what the engine tests build from.
#![allow(dead_code)]

use fluxbuild_exporters::onnx::ir::InitData;
use fluxbuild_exporters::onnx::{write_model, Attr, Dim, ElemType, Graph, GraphBuilder, V};
use std::path::Path;

/// Fixed sizes of the tiny graphs (the full model has 4096 / 768).
pub const JOINT: usize = 32;
pub const POOLED: usize = 24;

fn sym(s: &str) -> Dim {
    Dim::from(s)
}

fn weight(b: &mut GraphBuilder<'static>, name: &str, dims: &[usize]) -> V {
    let n: usize = dims.iter().product();
    let bytes = (0..n).flat_map(|i| ((i % 7) as f32 * 0.01).to_le_bytes()).collect();
    b.initializer(name, ElemType::F32, dims, InitData::Bytes(bytes))
}

/// input_ids [B, L] int64 -> embeddings [B, L, width] (and pooled [B, width] for CLIP).
fn text_encoder(name: &str, len: Dim, width: usize, pooled: bool) -> Graph<'static> {
    let mut b = GraphBuilder::new(name, 17, ElemType::F32);
    let ids = b.input("input_ids", ElemType::I64, &[sym("B"), len.clone()]);
    let x = b.cast(&ids, ElemType::F32);
    let x = b.unsqueeze(&x, &[2]);
    let w = weight(&mut b, "embed", &[1, 1, width]);
    let e = b.mul(&x, &w);
    b.output(&e, "text_embeddings", ElemType::F32, &[sym("B"), len, Dim::from(width)]);
    if pooled {
        let p = b.reduce_mean(&e, &[1], false);
        b.output(&p, "pooled_embeddings", ElemType::F32, &[sym("B"), Dim::from(width)]);
    }
    b.finish()
}

fn transformer(dev: bool) -> Graph<'static> {
    let mut b = GraphBuilder::new("transformer", 17, ElemType::F32);
    let f = ElemType::F32;
    let h = b.input("hidden_states", f, &[sym("B"), sym("Li"), Dim::from(64usize)]);
    let enc = b.input("encoder_hidden_states", f, &[sym("B"), sym("Lt"), Dim::from(JOINT)]);
    let pooled = b.input("pooled_projections", f, &[sym("B"), Dim::from(POOLED)]);
    let t = b.input("timestep", f, &[sym("B")]);
    let img_ids = b.input("img_ids", f, &[sym("Li"), Dim::from(3usize)]);
    let txt_ids = b.input("txt_ids", f, &[sym("Lt"), Dim::from(3usize)]);
    let w = weight(&mut b, "proj.weight", &[64, 64]);
    let y = b.matmul(&h, &w);
    let mut temb = b.unsqueeze(&t, &[1, 2]);
    if dev {
        let g = b.input("guidance", f, &[sym("B")]);
        let g = b.unsqueeze(&g, &[1, 2]);
        temb = b.add(&temb, &g);
    }
    let text = b.reduce_mean(&enc, &[1, 2], true);
    let vec = b.reduce_mean(&pooled, &[1], true);
    let vec = b.unsqueeze(&vec, &[2]);
    let cond = b.add(&temb, &text);
    let cond = b.add(&cond, &vec);
    // Every input is used (TensorRT drops unused inputs, and the profiles name them all).
    let ids = b.concat(&[&img_ids, &txt_ids], 0);
    let ids = b.reduce_mean(&ids, &[0, 1], true);
    let cond = b.add(&cond, &ids);
    let y = b.mul(&y, &cond);
    b.output(&y, "noise_pred", f, &[sym("B"), sym("Li"), Dim::from(64usize)]);
    b.finish()
}

fn vae_decoder() -> Graph<'static> {
    let mut b = GraphBuilder::new("vae_decoder", 17, ElemType::F32);
    let z = b.input(
        "latent",
        ElemType::F32,
        &[sym("B"), Dim::from(16usize), sym("h"), sym("w")],
    );
    let scales = b.const_float(ElemType::F32, &[4], &[1.0, 1.0, 8.0, 8.0]);
    let up = b.op(
        "Resize",
        &[&z, &GraphBuilder::none(), &scales],
        &[("mode", Attr::Str("nearest".into()))],
    );
    let w = weight(&mut b, "conv_out.weight", &[3, 16, 1, 1]);
    let img = b.op("Conv", &[&up, &w], &[]);
    b.output(
        &img,
        "images",
        ElemType::F32,
        &[sym("B"), Dim::from(3usize), sym("H"), sym("W")],
    );
    b.finish()
}

/// The graph of one network, by its folder name.
pub fn graph(network: &str, dev: bool) -> Graph<'static> {
    match network {
        "clip" => text_encoder("clip", Dim::from(77usize), 768, true),
        "t5" => text_encoder("t5", sym("L"), JOINT, false),
        "transformer" => transformer(dev),
        "vae_decoder" => vae_decoder(),
        other => panic!("no network {other}"),
    }
}

/// Writes DIR/{clip,t5,transformer,vae_decoder}/model.onnx (+ model.onnx.data).
pub fn write_models(dir: &Path, dev: bool) {
    for network in ["clip", "t5", "transformer", "vae_decoder"] {
        write_model(&graph(network, dev), &dir.join(network), &mut |_, _| {}).unwrap();
    }
}
