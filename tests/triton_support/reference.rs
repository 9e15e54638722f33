//! The local reference the served images are compared with: the exported graphs run in-process
//! by ONNX Runtime, tokenized, noised ("fluxbuild noise v1"), scheduled and decoded as FluxPipeline
//! does. (Replaced by `fluxbuild::generate` once local generation lands on main.)

use fluxbuild::runtime::{Input, Model};
use ndarray::{ArrayD, IxDyn};
use std::path::Path;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

pub struct Settings {
    pub height: usize,
    pub width: usize,
    pub steps: usize,
    pub guidance: f32,
    pub seed: u64,
    pub max_sequence_length: usize,
}

pub fn gaussian(seed: u64, count: usize) -> Vec<f32> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut values = Vec::with_capacity(count + 1);
    while values.len() < count {
        let (a, b) = (next(), next());
        let u1 = ((a >> 11) + 1) as f64 * 2f64.powi(-53);
        let u2 = (b >> 11) as f64 * 2f64.powi(-53);
        let r = (-2.0 * u1.ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * u2;
        values.push((r * angle.cos()) as f32);
        values.push((r * angle.sin()) as f32);
    }
    values.truncate(count);
    values
}

fn tokens(path: &Path, prompt: &str, length: usize, pad: &str) -> ArrayD<i64> {
    let mut tok = Tokenizer::from_file(path).unwrap();
    let pad_id = tok.token_to_id(pad).unwrap();
    tok.with_truncation(Some(TruncationParams { max_length: length, ..Default::default() })).unwrap();
    tok.with_padding(Some(PaddingParams { strategy: PaddingStrategy::Fixed(length), pad_id, pad_token: pad.into(), ..Default::default() }));
    let ids: Vec<i64> = tok.encode(prompt, true).unwrap().get_ids().iter().map(|&i| i as i64).collect();
    ArrayD::from_shape_vec(IxDyn(&[1, length]), ids).unwrap()
}

/// dev: sigmas shifted by mu (float32 arithmetic as diffusers), terminal 0.
fn sigmas(steps: usize, image_seq_len: usize) -> Vec<f32> {
    let m = (1.15 - 0.5) / (4096.0 - 256.0);
    let b = 0.5 - m * 256.0;
    let mu = image_seq_len as f64 * m + b;
    let e = mu.exp() as f32;
    let step = if steps > 1 { (1.0 / steps as f64 - 1.0) / (steps - 1) as f64 } else { 0.0 };
    let mut s: Vec<f32> = (0..steps)
        .map(|i| if i + 1 == steps { 1.0 / steps as f64 } else { 1.0 + i as f64 * step })
        .map(|x| x as f32)
        .map(|t| e / (e + (1.0f32 / t - 1.0)))
        .collect();
    s.push(0.0);
    s
}

/// One image [H, W, 3] for `prompt`.
pub fn generate(models: &Path, prompt: &str, s: &Settings) -> Vec<u8> {
    let load = |n: &str| Model::load(&models.join(n).join("model.onnx")).unwrap();
    let (rows, cols) = (s.height / 16, s.width / 16);
    let clip_ids = tokens(&models.join("tokenizer/tokenizer.json"), prompt, 77, "<|endoftext|>");
    let t5_ids = tokens(&models.join("tokenizer_2/tokenizer.json"), prompt, s.max_sequence_length, "<pad>");
    let pooled = load("clip").run(vec![("input_ids", Input::I64(clip_ids))]).unwrap().remove("pooled_embeddings").unwrap();
    let text = load("t5").run(vec![("input_ids", Input::I64(t5_ids))]).unwrap().remove("text_embeddings").unwrap();
    let (h, w) = (2 * rows, 2 * cols);
    let noise = gaussian(s.seed, 16 * h * w);
    // pack [16,h,w] -> [(h/2)(w/2), 64], channel c*4 + dy*2 + dx
    let mut latents = vec![0f32; rows * cols * 64];
    for r in 0..rows {
        for c in 0..cols {
            for ch in 0..16 {
                for dy in 0..2 {
                    for dx in 0..2 {
                        latents[(r * cols + c) * 64 + ch * 4 + dy * 2 + dx] = noise[(ch * h + 2 * r + dy) * w + 2 * c + dx];
                    }
                }
            }
        }
    }
    let img_ids: Vec<f32> = (0..rows * cols).flat_map(|t| [0.0, (t / cols) as f32, (t % cols) as f32]).collect();
    let mut transformer = load("transformer");
    let sig = sigmas(s.steps, rows * cols);
    for i in 0..s.steps {
        let timestep = (sig[i] * 1000.0) / 1000.0;
        let f = |shape: &[usize], v: Vec<f32>| Input::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap());
        let out = transformer
            .run(vec![
                ("hidden_states", f(&[1, rows * cols, 64], latents.clone())),
                ("encoder_hidden_states", Input::F32(text.clone())),
                ("pooled_projections", Input::F32(pooled.clone())),
                ("timestep", f(&[1], vec![timestep])),
                ("img_ids", f(&[rows * cols, 3], img_ids.clone())),
                ("txt_ids", f(&[s.max_sequence_length, 3], vec![0.0; s.max_sequence_length * 3])),
                ("guidance", f(&[1], vec![s.guidance])),
            ])
            .unwrap();
        let v = out["noise_pred"].as_slice().unwrap();
        let dt = sig[i + 1] - sig[i];
        latents.iter_mut().zip(v).for_each(|(x, v)| *x += dt * v);
    }
    let mut z = vec![0f32; 16 * h * w];
    for r in 0..rows {
        for c in 0..cols {
            for ch in 0..16 {
                for dy in 0..2 {
                    for dx in 0..2 {
                        z[(ch * h + 2 * r + dy) * w + 2 * c + dx] = latents[(r * cols + c) * 64 + ch * 4 + dy * 2 + dx] / 0.3611 + 0.1159;
                    }
                }
            }
        }
    }
    let z = ArrayD::from_shape_vec(IxDyn(&[1, 16, h, w]), z).unwrap();
    let images = load("vae_decoder").run(vec![("latent", Input::F32(z))]).unwrap().remove("images").unwrap();
    let (hh, ww) = (s.height, s.width);
    let mut pixels = Vec::with_capacity(hh * ww * 3);
    for y in 0..hh {
        for x in 0..ww {
            for ch in 0..3 {
                let v = (images[[0, ch, y, x]] * 0.5 + 0.5).clamp(0.0, 1.0);
                pixels.push((v * 255.0).round_ties_even() as u8);
            }
        }
    }
    pixels
}

/// PSNR in dB of two 8-bit images (infinite when identical).
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>() / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}
