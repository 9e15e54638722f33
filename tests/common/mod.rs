//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod flux;

use fluxbuild_contract::Network;
use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// Writes f32 tensors to a safetensors file.
pub fn write_f32_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| (name.to_string(), TensorView::new(Dtype::F32, shape.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A deterministic pseudo-random vector in [-1, 1).
pub fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// ||a - b|| / ||b||
pub fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((*x - *y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// A tensor of a fixture's `io.safetensors` (float32 or int64) as an ndarray.
pub fn io_tensor<T: IoElem>(path: &Path, name: &str) -> ndarray::ArrayD<T> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("{}: {name}: {e}", path.display()));
    assert_eq!(t.dtype(), T::DTYPE, "{}: {name}", path.display());
    let values = t
        .data()
        .chunks_exact(std::mem::size_of::<T>())
        .map(T::from_le)
        .collect();
    ndarray::ArrayD::from_shape_vec(t.shape().to_vec(), values).unwrap()
}

pub trait IoElem: Sized {
    const DTYPE: safetensors::Dtype;
    fn from_le(bytes: &[u8]) -> Self;
}
impl IoElem for f32 {
    const DTYPE: safetensors::Dtype = safetensors::Dtype::F32;
    fn from_le(b: &[u8]) -> f32 {
        f32::from_le_bytes(b.try_into().unwrap())
    }
}
impl IoElem for i64 {
    const DTYPE: safetensors::Dtype = safetensors::Dtype::I64;
    fn from_le(b: &[u8]) -> i64 {
        i64::from_le_bytes(b.try_into().unwrap())
    }
}

/// Exports one submodel as the export stage does (locate, analyze, build, refuse on any problem,
/// write) into `out`; returns the analysis and the written `model.onnx`.
pub fn export_submodel(
    name: &str,
    path: &Path,
    config: Option<&serde_json::Value>,
    options: &fluxbuild_exporters::models::GraphOptions,
    out: &Path,
) -> anyhow::Result<(fluxbuild_exporters::models::Analysis, PathBuf)> {
    use fluxbuild_exporters::{checkpoint::Checkpoint, models, onnx};
    let exporter = models::exporter(Network::parse(name).unwrap());
    let ckpt = Checkpoint::load(path, exporter.subfolder(), exporter.key_prefixes())?;
    let (analysis, graph, problems) = models::plan(exporter, &ckpt, config, options)?;
    if !problems.is_empty() {
        let files: Vec<String> = ckpt.source_files().iter().map(|f| f.display().to_string()).collect();
        return Err(onnx::problems_error(&files.join(", "), &problems));
    }
    let written = onnx::write_model(&graph, out, &mut |_, _| {})?;
    Ok((analysis, written.model))
}
