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

pub use fluxbuild_contract::engines::Runtime;

/// A GPU compute capability an engine is built for, as major·10 + minor (`89` is 8.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ComputeCapability(pub u32);

impl ComputeCapability {
    /// What TensorRT-RTX 1.7 builds for (its ComputeCapability enum): Turing 7.5, Ampere 8.0 and
    /// 8.6, Ada 8.9, Blackwell 12.0 and 12.1. Hopper (9.0) and 10.x are not RTX targets.
    pub const RTX: [ComputeCapability; 6] = [
        ComputeCapability(75),
        ComputeCapability(80),
        ComputeCapability(86),
        ComputeCapability(89),
        ComputeCapability(120),
        ComputeCapability(121),
    ];
    /// TensorRT-RTX's default targets when none are chosen ("8.0, 8.6, 8.9, 12.0 and later").
    pub const RTX_DEFAULT: [ComputeCapability; 5] = [
        ComputeCapability(80),
        ComputeCapability(86),
        ComputeCapability(89),
        ComputeCapability(120),
        ComputeCapability(121),
    ];
}

impl std::fmt::Display for ComputeCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0 / 10, self.0 % 10)
    }
}

impl std::str::FromStr for ComputeCapability {
    type Err = anyhow::Error;
    /// "8.9" (or "sm89", "89").
    fn from_str(s: &str) -> Result<ComputeCapability> {
        let t = s.trim().trim_start_matches("sm").trim_start_matches('_');
        let parsed = match t.split_once('.') {
            Some((major, minor)) => major
                .parse::<u32>()
                .ok()
                .zip(minor.parse::<u32>().ok().filter(|m| *m < 10))
                .map(|(a, b)| a * 10 + b),
            None => t.parse::<u32>().ok(),
        };
        parsed
            .map(ComputeCapability)
            .ok_or_else(|| anyhow::anyhow!("compute capability {s:?}: expected MAJOR.MINOR, e.g. 8.9"))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BuildSettings {
    /// Older manifests predate TensorRT-RTX: they were all standard TensorRT.
    #[serde(default)]
    pub runtime: Runtime,
    /// Target GPUs (TensorRT-RTX only; empty: TensorRT-RTX's default set, `RTX_DEFAULT`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compute_capabilities: Vec<ComputeCapability>,
    /// A weightless plan (kSTRIP_PLAN + kREFIT_INDIVIDUAL over the parser's placeholder weights):
    /// small, refitted from the graph's weights when it is deployed (TensorRT-RTX only here).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_weights: bool,
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
            runtime: Runtime::Tensorrt,
            compute_capabilities: Vec::new(),
            strip_weights: false,
            builder,
            precision,
            workspace_bytes,
            optimization_level,
        })
    }
}

impl BuildSettings {
    /// For TensorRT-RTX: the native builder, and the compute capabilities to build for (sorted,
    /// each one TensorRT-RTX can target). Standard TensorRT builds for the GPU it runs on.
    pub fn with_runtime(mut self, runtime: Runtime, mut targets: Vec<ComputeCapability>) -> Result<BuildSettings> {
        targets.sort();
        targets.dedup();
        match runtime {
            Runtime::Tensorrt if !targets.is_empty() => bail!(
                "--compute-capability is for --runtime tensorrt-rtx; standard TensorRT builds for the GPU it runs on"
            ),
            Runtime::TensorrtRtx => {
                if let Some(bad) = targets.iter().find(|t| !ComputeCapability::RTX.contains(t)) {
                    bail!(
                        "--compute-capability {bad}: TensorRT-RTX builds for {} (not data-centre GPUs such as 9.0 H100/H200; \
                         use --runtime tensorrt there)",
                        list(&ComputeCapability::RTX)
                    );
                }
                if self.builder == BuilderKind::Trtexec {
                    bail!("--builder trtexec drives standard TensorRT; --runtime tensorrt-rtx builds with the native builder");
                }
            }
            Runtime::Tensorrt => {}
        }
        self.runtime = runtime;
        self.compute_capabilities = targets;
        Ok(self)
    }

    /// Weightless plans (TensorRT-RTX builds only).
    pub fn with_strip_weights(mut self, strip: bool) -> Result<BuildSettings> {
        if strip && self.runtime != Runtime::TensorrtRtx {
            bail!("--strip-weights builds weightless TensorRT-RTX plans; use it with --runtime tensorrt-rtx");
        }
        self.strip_weights = strip;
        Ok(self)
    }

    /// The GPUs a TensorRT-RTX engine will run on: the chosen ones or TensorRT-RTX's default set.
    pub fn rtx_targets(&self) -> Vec<ComputeCapability> {
        if self.compute_capabilities.is_empty() {
            ComputeCapability::RTX_DEFAULT.to_vec()
        } else {
            self.compute_capabilities.clone()
        }
    }
}

/// "8.0, 8.6, 8.9".
pub fn list(targets: &[ComputeCapability]) -> String {
    targets.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
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
