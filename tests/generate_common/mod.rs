//! Reading the FluxPipeline end-to-end references (tests/fixtures/pipeline/{dev,schnell}/).
#![allow(dead_code)]

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::path::PathBuf;

pub struct Reference {
    pub dir: PathBuf,
    pub json: Value,
    bytes: Vec<u8>,
}

impl Reference {
    pub fn load(variant: &str) -> Reference {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pipeline")
            .join(variant);
        let json = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
        Reference { dir, json, bytes }
    }

    fn tensor(&self, name: &str, dtype: Dtype) -> (Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("reference has no {name}"));
        assert_eq!(t.dtype(), dtype, "{name}");
        (t.shape().to_vec(), t.data().to_vec())
    }

    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, b) = self.tensor(name, Dtype::F32);
        (
            shape,
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
    }

    pub fn i64(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
        let (shape, b) = self.tensor(name, Dtype::I64);
        (
            shape,
            b.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
    }

    pub fn u8(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        self.tensor(name, Dtype::U8)
    }

    pub fn prompts(&self) -> Vec<String> {
        self.json["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect()
    }

    pub fn usize(&self, key: &str) -> usize {
        self.json[key]
            .as_u64()
            .unwrap_or_else(|| panic!("reference.json {key}")) as usize
    }
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// PSNR in dB of `a` against `b` for signals with range `peak`.
pub fn psnr(a: &[f64], b: &[f64], peak: f64) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (peak * peak / mse).log10()
    }
}
