//! Initial noise: "fluxbuild noise v1" (docs/noise.md), a seeded Gaussian generator simple enough to be
//! reimplemented bit for bit in Python (the Triton orchestrator does), and noise files for exact comparison
//! with other implementations (`--noise FILE`: safetensors holding `noise` [B,16,H/8,W/8] float32).

use anyhow::{bail, Context, Result};
use ndarray::Array4;
use std::path::Path;

/// The name of the tensor a noise file holds.
pub const NOISE_TENSOR: &str = "noise";

/// SplitMix64 (Steele, Lea, Flood 2014): one u64 word per call.
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `count` standard normal values from `seed`: Box–Muller on pairs of words, in f64, each cast to f32.
pub fn gaussian(seed: u64, count: usize) -> Vec<f32> {
    const TWO_POW_MINUS_53: f64 = 1.0 / (1u64 << 53) as f64;
    let mut words = SplitMix64::new(seed);
    let mut values = Vec::with_capacity(count + 1);
    while values.len() < count {
        let (a, b) = (words.next_u64(), words.next_u64());
        let u1 = ((a >> 11) + 1) as f64 * TWO_POW_MINUS_53; // (0, 1]: ln never sees 0
        let u2 = (b >> 11) as f64 * TWO_POW_MINUS_53; // [0, 1)
        let r = (-2.0 * u1.ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * u2;
        values.push((r * angle.cos()) as f32);
        values.push((r * angle.sin()) as f32);
    }
    values.truncate(count);
    values
}

/// The seed of prompt `index` in a request seeded with `seed`.
pub fn prompt_seed(seed: u64, index: usize) -> u64 {
    seed.wrapping_add(index as u64)
}

/// Unpacked initial latents [batch, channels, h, w]: image i drawn from seed `seed + i`.
pub fn seeded_noise(seed: u64, [batch, channels, h, w]: [usize; 4]) -> Array4<f32> {
    let per_image = channels * h * w;
    let values: Vec<f32> = (0..batch)
        .flat_map(|i| gaussian(prompt_seed(seed, i), per_image))
        .collect();
    Array4::from_shape_vec((batch, channels, h, w), values).expect("batch * per-image values")
}

/// Reads `noise` from a safetensors file and checks it has `expected` shape.
pub fn read_noise_file(path: &Path, expected: [usize; 4]) -> Result<Array4<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read the noise file", path.display()))?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
    let view = tensors.tensor(NOISE_TENSOR).map_err(|_| {
        let names: Vec<String> = tensors.names().into_iter().map(String::from).collect();
        anyhow::anyhow!(
            "{}: no tensor `{NOISE_TENSOR}` (found: {})",
            path.display(),
            names.join(", ")
        )
    })?;
    if view.dtype() != safetensors::Dtype::F32 {
        bail!(
            "{}: tensor `{NOISE_TENSOR}` is {:?}, expected F32",
            path.display(),
            view.dtype()
        );
    }
    if view.shape() != expected {
        bail!(
            "{}: tensor `{NOISE_TENSOR}` has shape {:?}, expected {expected:?} ([batch, 16, height/8, width/8])",
            path.display(),
            view.shape()
        );
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: tensor `{NOISE_TENSOR}` holds a non-finite value at flat index {i}",
            path.display()
        );
    }
    Ok(Array4::from_shape_vec(expected, values).expect("shape checked"))
}
