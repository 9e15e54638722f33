//! Element types found in FLUX checkpoints and their conversion to f32.

use anyhow::{bail, Result};
use half::{bf16, f16};

/// A checkpoint element type (the safetensors spelling is kept in messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// float8 e4m3 "fn" (no infinities, NaN = 0x7f/0xff); ONNX FLOAT8E4M3FN.
    F8E4M3,
    /// float8 e5m2 (with infinities; kijai's `*_fp8_e5m2.safetensors`).
    F8E5M2,
    /// Index buffers some files carry (CLIP's `position_ids`); listed, never a weight.
    I64,
}

impl DType {
    pub fn parse(s: &str) -> Result<DType> {
        Ok(match s {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F8_E4M3" => DType::F8E4M3,
            "F8_E5M2" => DType::F8E5M2,
            "I64" => DType::I64,
            other => bail!("unsupported dtype {other} (expected F32, F16, BF16, F8_E4M3, F8_E5M2 or I64)"),
        })
    }

    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F8E4M3 | DType::F8E5M2 => 1,
            DType::I64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
            DType::I64 => "I64",
        }
    }

    /// Decodes little-endian elements of this type into `out` (exact: every float source value is an
    /// f32, and index buffers hold small integers).
    pub fn decode_into(self, bytes: &[u8], out: &mut Vec<f32>) {
        out.reserve(bytes.len() / self.size());
        match self {
            DType::F32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            DType::F16 => out.extend(bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
            DType::BF16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            DType::F8E4M3 => out.extend(bytes.iter().map(|&b| float8::F8E4M3::from_bits(b).to_f32())),
            DType::F8E5M2 => out.extend(bytes.iter().map(|&b| float8::F8E5M2::from_bits(b).to_f32())),
            DType::I64 => out.extend(
                bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32),
            ),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
