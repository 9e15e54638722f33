//! A tiny FLUX-shaped model set for the Triton tests: four stand-in graphs with the real graph
//! interfaces (names, dtypes, dims; random weights, cheap math), word-level tokenizers with
//! FLUX's special tokens, the dev scheduler config, written the way `fluxbuild export` lays a
//! folder out. Plus a local reference pipeline over the same graphs (ONNX Runtime in-process,
//! the math of FluxPipeline) that the served images must equal.
#![allow(dead_code)]

pub mod reference;

use fluxbuild_exporters::onnx::{write_model, Dim, ElemType, GraphBuilder, V};
use std::path::Path;

pub const WORDS: &[&str] = &[
    "a", "photo", "of", "cat", "dog", "red", "blue", "green", "astronaut", "riding", "horse", "on", "the", "moon",
    "painting", "sunset", "over", "mountains", "city", "at", "night", "forest", "river", "lighthouse",
];
pub const HIDDEN: usize = 8;

fn rand(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}

fn constant(b: &mut GraphBuilder, dims: &[usize], seed: u64, scale: f32) -> V {
    let n = dims.iter().product();
    b.const_float(ElemType::F32, dims, &rand(n, seed, scale))
}

fn clip_vocab() -> Vec<String> {
    let mut v: Vec<String> = vec!["<|startoftext|>".into(), "<|endoftext|>".into(), "<unk>".into()];
    v.extend(WORDS.iter().map(|w| w.to_string()));
    v
}

fn t5_vocab() -> Vec<String> {
    let mut v: Vec<String> = vec!["<pad>".into(), "</s>".into(), "<unk>".into()];
    v.extend(WORDS.iter().rev().map(|w| w.to_string()));
    v
}

/// A HF `tokenizer.json`: lowercase, whitespace split, word-level vocab, `prefix $A suffix`.
fn tokenizer_json(vocab: &[String], prefix: Option<&str>, suffix: &str) -> String {
    let ids: serde_json::Map<String, serde_json::Value> = vocab.iter().enumerate().map(|(i, w)| (w.clone(), (i as u64).into())).collect();
    let special: Vec<&str> = prefix.into_iter().chain([suffix]).collect();
    let added: Vec<serde_json::Value> = vocab[..3]
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let piece = |t: &str| serde_json::json!({"SpecialToken": {"id": t, "type_id": 0}});
    let mut single: Vec<serde_json::Value> = prefix.map(piece).into_iter().collect();
    single.push(serde_json::json!({"Sequence": {"id": "A", "type_id": 0}}));
    single.push(piece(suffix));
    let tokens: serde_json::Map<String, serde_json::Value> = special
        .iter()
        .map(|t| (t.to_string(), serde_json::json!({"id": t, "ids": [vocab.iter().position(|w| w == t).unwrap()], "tokens": [t]})))
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": single, "special_tokens": tokens},
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": ids, "unk_token": "<unk>"},
    }))
    .unwrap()
}

/// clip: input_ids [B,77] -> text_embeddings [B,77,8], pooled_embeddings [B,8].
fn clip(dir: &Path, vocab: usize) {
    let mut b = GraphBuilder::new("clip", 17, ElemType::F32);
    let ids = b.input("input_ids", ElemType::I64, &[Dim::from("B"), Dim::from(77)]);
    let table = constant(&mut b, &[vocab, HIDDEN], 11, 1.0);
    let positions = constant(&mut b, &[77, HIDDEN], 12, 0.1);
    let tokens = b.gather(&table, &ids, 0);
    let x = b.add(&tokens, &positions);
    let hidden = b.unary("Tanh", &x);
    let pooled = b.reduce_mean(&hidden, &[1], false);
    b.output(&hidden, "text_embeddings", ElemType::F32, &[Dim::from("B"), Dim::from(77), Dim::from(HIDDEN)]);
    b.output(&pooled, "pooled_embeddings", ElemType::F32, &[Dim::from("B"), Dim::from(HIDDEN)]);
    write_model(&b.finish(), &dir.join("clip"), &mut |_, _| {}).unwrap();
}

/// t5: input_ids [B,L] -> text_embeddings [B,L,8].
fn t5(dir: &Path, vocab: usize) {
    let mut b = GraphBuilder::new("t5", 17, ElemType::F32);
    let ids = b.input("input_ids", ElemType::I64, &[Dim::from("B"), Dim::from("L")]);
    let table = constant(&mut b, &[vocab, HIDDEN], 21, 1.0);
    let x = b.gather(&table, &ids, 0);
    b.output(&x, "text_embeddings", ElemType::F32, &[Dim::from("B"), Dim::from("L"), Dim::from(HIDDEN)]);
    write_model(&b.finish(), &dir.join("t5"), &mut |_, _| {}).unwrap();
}

/// transformer (dev interface): a velocity that depends on every input.
fn transformer(dir: &Path) {
    let mut b = GraphBuilder::new("transformer", 17, ElemType::F32);
    let (bd, li, lt) = (Dim::from("B"), Dim::from("Li"), Dim::from("Lt"));
    let h = b.input("hidden_states", ElemType::F32, &[bd.clone(), li.clone(), Dim::from(64)]);
    let enc = b.input("encoder_hidden_states", ElemType::F32, &[bd.clone(), lt.clone(), Dim::from(HIDDEN)]);
    let pooled = b.input("pooled_projections", ElemType::F32, &[bd.clone(), Dim::from(HIDDEN)]);
    let t = b.input("timestep", ElemType::F32, &[bd.clone()]);
    let img_ids = b.input("img_ids", ElemType::F32, &[li.clone(), Dim::from(3)]);
    let txt_ids = b.input("txt_ids", ElemType::F32, &[lt, Dim::from(3)]);
    let g = b.input("guidance", ElemType::F32, &[bd.clone()]);
    let w_h = constant(&mut b, &[64, 64], 31, 0.2);
    let w_c = constant(&mut b, &[HIDDEN, 64], 32, 0.5);
    let w_p = constant(&mut b, &[HIDDEN, 64], 33, 0.5);
    let w_i = constant(&mut b, &[3, 64], 34, 0.05);
    let x = b.matmul(&h, &w_h);
    let ctx_mean = b.reduce_mean(&enc, &[1], true);
    let ctx = b.matmul(&ctx_mean, &w_c);
    let pooled_3d = b.unsqueeze(&pooled, &[1]);
    let pool = b.matmul(&pooled_3d, &w_p);
    let t3 = b.unsqueeze(&t, &[1, 2]);
    let g3 = b.unsqueeze(&g, &[1, 2]);
    let g3 = b.mul_scalar(&g3, 0.1);
    let pos = b.matmul(&img_ids, &w_i);
    let txt = b.reduce_mean(&txt_ids, &[0, 1], false);
    let mut y = b.add(&x, &ctx);
    for term in [&pool, &t3, &g3, &pos, &txt] {
        y = b.add(&y, term);
    }
    let y = b.unary("Tanh", &y);
    b.output(&y, "noise_pred", ElemType::F32, &[bd, li, Dim::from(64)]);
    write_model(&b.finish(), &dir.join("transformer"), &mut |_, _| {}).unwrap();
}

/// vae_decoder: latent [B,16,h,w] -> images [B,3,8h,8w] (1x1 conv, nearest x8, tanh).
fn vae(dir: &Path) {
    let mut b = GraphBuilder::new("vae_decoder", 17, ElemType::F32);
    let z = b.input("latent", ElemType::F32, &[Dim::from("B"), Dim::from(16), Dim::from("h"), Dim::from("w")]);
    let w = constant(&mut b, &[3, 16, 1, 1], 41, 0.5);
    let conv = b.op("Conv", &[&z, &w], &[]);
    let scales = b.const_float(ElemType::F32, &[4], &[1.0, 1.0, 8.0, 8.0]);
    let none = GraphBuilder::none();
    let up = b.op("Resize", &[&conv, &none, &scales], &[("mode", fluxbuild_exporters::onnx::Attr::Str("nearest".into()))]);
    let y = b.unary("Tanh", &up);
    b.output(&y, "images", ElemType::F32, &[Dim::from("B"), Dim::from(3), Dim::from("H"), Dim::from("W")]);
    write_model(&b.finish(), &dir.join("vae_decoder"), &mut |_, _| {}).unwrap();
}

/// Writes the whole tiny export into `dir`.
pub fn write_tiny_export(dir: &Path) {
    let (cv, tv) = (clip_vocab(), t5_vocab());
    clip(dir, cv.len());
    t5(dir, tv.len());
    transformer(dir);
    vae(dir);
    for (folder, json) in [
        ("tokenizer", tokenizer_json(&cv, Some("<|startoftext|>"), "<|endoftext|>")),
        ("tokenizer_2", tokenizer_json(&tv, None, "</s>")),
    ] {
        std::fs::create_dir_all(dir.join(folder)).unwrap();
        std::fs::write(dir.join(folder).join("tokenizer.json"), json).unwrap();
    }
    std::fs::create_dir_all(dir.join("scheduler")).unwrap();
    std::fs::write(
        dir.join("scheduler/scheduler_config.json"),
        r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5,
            "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
            "use_dynamic_shifting": true}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        r#"{"submodels": {"vae_decoder": {"config": {"scaling_factor": 0.3611, "shift_factor": 0.1159}}}}"#,
    )
    .unwrap();
}
