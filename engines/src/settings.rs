//! Build settings: everything besides the graph and the shapes that changes what TensorRT
//! builds. All of it goes into the cache key and the manifest.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// How TensorRT chooses layer precisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Strongly typed network: every tensor keeps the type the exported graph gives it
    /// (choose fp32/fp16/bf16 at `fluxbuild export --precision`). The only mode in TensorRT 11.
    Typed,
    /// Weakly typed, float32 kernels only (TF32 off): the reference build.
    Fp32,
    /// Weakly typed, TensorRT may run layers in float16.
    Fp16,
    /// Weakly typed, TensorRT may run layers in bfloat16.
    Bf16,
    /// An FP8-quantized graph (explicit Q/DQ) built strongly typed, as TensorRT's explicit
    /// quantization asks: FP8 where the graph quantizes, the graph's 16-bit type elsewhere. Like
    /// `typed`, plus a check that the GPU runs FP8 (compute capability 8.9 or newer).
    Fp8,
}

impl Precision {
    /// Weakly typed modes: TensorRT picks layer precisions (gone in TensorRT 11).
    pub fn weakly_typed(self) -> bool {
        matches!(self, Precision::Fp32 | Precision::Fp16 | Precision::Bf16)
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Typed => "typed",
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
            Precision::Fp8 => "fp8",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuilderKind {
    /// The TensorRT builder API in-process (trtx).
    Native,
    /// NVIDIA's `trtexec` command-line tool.
    Trtexec,
}

impl BuilderKind {
    pub fn name(self) -> &'static str {
        match self {
            BuilderKind::Native => "native",
            BuilderKind::Trtexec => "trtexec",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BuildSettings {
    pub builder: BuilderKind,
    pub precision: Precision,
    /// Workspace memory pool limit in bytes (`None`: TensorRT's default, the device memory).
    pub workspace_bytes: Option<u64>,
    /// Builder optimization level 0..=5 (`None`: TensorRT's default, 3).
    pub optimization_level: Option<u8>,
}

impl BuildSettings {
    pub fn new(
        builder: BuilderKind,
        precision: Precision,
        workspace_gib: Option<f64>,
        optimization_level: Option<u8>,
    ) -> Result<BuildSettings> {
        let workspace_bytes = match workspace_gib {
            None => None,
            Some(g) if g.is_finite() && g > 0.0 => Some((g * (1u64 << 30) as f64).round() as u64),
            Some(g) => bail!("--workspace {g}: expected a positive number of GiB"),
        };
        if let Some(level) = optimization_level.filter(|l| *l > 5) {
            bail!("--builder-optimization-level {level}: TensorRT accepts 0 (fastest build) to 5 (most tactics); default 3");
        }
        Ok(BuildSettings {
            builder,
            precision,
            workspace_bytes,
            optimization_level,
        })
    }
}

/// Refuses a precision mode the TensorRT release does not have: TensorRT 11 builds strongly
/// typed networks only (trtexec 11 dropped --fp16, --bf16, --fp8, --int8 and --best).
pub fn check_precision(precision: Precision, tensorrt: crate::toolchain::Version) -> Result<()> {
    if tensorrt.major >= 11 && precision.weakly_typed() {
        bail!(
            "--precision {}: TensorRT {tensorrt} builds strongly typed networks only (no --fp16/--bf16/--fp8); \
             export the graphs in the type you want (`fluxbuild export --precision {}`) and build with \
             --precision typed (fp8 for FP8-quantized graphs)",
            precision.name(),
            precision.name()
        );
    }
    Ok(())
}

impl std::str::FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Precision> {
        [
            Precision::Typed,
            Precision::Fp32,
            Precision::Fp16,
            Precision::Bf16,
            Precision::Fp8,
        ]
        .into_iter()
        .find(|p| p.name() == s)
        .ok_or_else(|| anyhow::anyhow!("unknown precision {s:?} (typed, fp32, fp16, bf16, fp8)"))
    }
}

impl std::str::FromStr for BuilderKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<BuilderKind> {
        [BuilderKind::Native, BuilderKind::Trtexec]
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| anyhow::anyhow!("unknown builder {s:?} (native, trtexec)"))
    }
}
