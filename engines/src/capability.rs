//! What a GPU can run, checked before any build: FP8 (E4M3) kernels need compute capability 8.9
//! (Ada) or newer; an FP8 graph built for an older GPU fails deep inside TensorRT's builder.

use crate::build::Graph;
use crate::settings::Precision;
use crate::toolchain::Gpu;
use anyhow::{bail, Result};
use fluxbuild_onnx::pb;

/// The oldest compute capability with FP8 tensor cores (Ada Lovelace, sm_89).
pub const FP8_MIN_COMPUTE_CAPABILITY: (u32, u32) = (8, 9);

/// ONNX TensorProto codes of the float8 types (E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ).
const FLOAT8_TYPES: [i32; 4] = [17, 18, 19, 20];

/// Whether the graph quantizes to FP8: a float8 initializer (quantized weights or Q/DQ zero points).
pub fn has_fp8(model: &pb::ModelProto) -> bool {
    model
        .graph
        .get_or_default()
        .initializer
        .iter()
        .any(|t| FLOAT8_TYPES.contains(&t.data_type))
}

/// "8.9" -> (8, 9).
pub fn parse_compute_capability(text: &str) -> Result<(u32, u32)> {
    let parsed = text
        .trim()
        .split_once('.')
        .and_then(|(major, minor)| Some((major.parse().ok()?, minor.parse().ok()?)));
    match parsed {
        Some(cc) => Ok(cc),
        None => bail!("compute capability {text:?}: expected MAJOR.MINOR such as 8.9"),
    }
}

/// Refuses, before any work, FP8 graphs for a GPU without FP8 (`gpu`: the build's GPU, none for a
/// dry run), and `--precision fp8` over graphs that have no FP8 in them (the build would be a
/// plain 16-bit one under an fp8 label).
pub fn check_fp8(graphs: &[Graph], precision: Precision, gpu: Option<&Gpu>) -> Result<()> {
    let fp8: Vec<String> = graphs
        .iter()
        .filter(|g| has_fp8(&g.model))
        .map(|g| g.network.to_string())
        .collect();
    if precision == Precision::Fp8 && fp8.is_empty() {
        bail!(
            "--precision fp8: none of the graphs ({}) is FP8-quantized; export them with \
             `fluxbuild export --precision fp8 --calibration FILE` (or build these with --precision typed)",
            graphs.iter().map(|g| g.network.name()).collect::<Vec<_>>().join(", ")
        );
    }
    let Some(gpu) = gpu.filter(|_| !fp8.is_empty()) else {
        return Ok(());
    };
    if parse_compute_capability(&gpu.compute_capability)? < FP8_MIN_COMPUTE_CAPABILITY {
        let (major, minor) = FP8_MIN_COMPUTE_CAPABILITY;
        bail!(
            "{}: FP8 graph(s) but {} has compute capability {}; FP8 kernels need {major}.{minor} or newer \
             (Ada, Hopper, Blackwell): export in bf16 or fp16 for this GPU",
            fp8.join(", "),
            gpu.name,
            gpu.compute_capability
        );
    }
    Ok(())
}
