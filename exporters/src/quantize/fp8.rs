//! FP8 E4M3FN numerics: scales from amax, saturating quantization as ONNX QuantizeLinear-19
//! defines it (`saturate(x / scale)`, round to nearest even), and weight encoding.

use crate::onnx::ElemType;
use float8::F8E4M3;
use half::{bf16, f16};

/// E4M3FN's largest finite value.
pub const E4M3_MAX: f32 = 448.0;

/// The scale that maps `amax` onto E4M3's largest finite value, as the graph will store it
/// (in `elem`). It is rounded *up* to `elem`, so `amax / scale <= 448` and nothing saturates;
/// it is never below the smallest normal of `elem` (a layer whose inputs are all zero gets
/// the smallest scale, which quantizes zero exactly).
pub fn scale_for(amax: f32, elem: ElemType) -> f32 {
    let raw = amax / E4M3_MAX;
    match elem {
        ElemType::F16 => round_up(
            raw.max(f16::MIN_POSITIVE.to_f32()),
            |v| f16::from_f32(v).to_f32(),
            |v| f16::from_bits(f16::from_f32(v).to_bits() + 1).to_f32(),
        ),
        ElemType::BF16 => round_up(
            raw.max(bf16::MIN_POSITIVE.to_f32()),
            |v| bf16::from_f32(v).to_f32(),
            |v| bf16::from_bits(bf16::from_f32(v).to_bits() + 1).to_f32(),
        ),
        _ => raw.max(f32::MIN_POSITIVE),
    }
}

fn round_up(v: f32, round: impl Fn(f32) -> f32, next: impl Fn(f32) -> f32) -> f32 {
    let r = round(v);
    if r >= v {
        r
    } else {
        next(v)
    }
}

/// `x / scale` saturated to ±448 and rounded to E4M3FN (NaN stays NaN).
pub fn quantize(x: f32, scale: f32) -> F8E4M3 {
    F8E4M3::from_f32((x / scale).clamp(-E4M3_MAX, E4M3_MAX))
}

/// Quantize then dequantize: the value an FP8 GEMM sees in place of `x`.
pub fn fake_quantize(x: f32, scale: f32) -> f32 {
    quantize(x, scale).to_f32() * scale
}

/// Encodes a row-major matrix with `cols` columns as E4M3FN bytes: `scale` is one value for
/// all, or one per column. Returns the bytes and how many values saturated.
pub fn encode(values: &[f32], cols: usize, scale: &[f32]) -> (Vec<u8>, u64) {
    assert!(
        scale.len() == 1 || scale.len() == cols,
        "fp8 scale: {} values for {cols} columns",
        scale.len()
    );
    let mut saturated = 0;
    let bytes = values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let s = if scale.len() == 1 { scale[0] } else { scale[i % cols] };
            saturated += ((v / s).abs() > E4M3_MAX) as u64;
            quantize(v, s).to_bits()
        })
        .collect();
    (bytes, saturated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_never_let_amax_saturate() {
        for amax in [1e-9f32, 0.0, 0.013, 0.7, 1.0, 3.3, 1234.5, 60000.0] {
            for elem in [ElemType::F32, ElemType::F16, ElemType::BF16] {
                let s = scale_for(amax, elem);
                assert!(s > 0.0 && amax / s <= E4M3_MAX, "{amax} {elem:?} -> {s}");
                assert_eq!(
                    quantize(amax, s),
                    F8E4M3::from_f32(amax / s),
                    "{amax} {elem:?}: no saturation"
                );
            }
        }
        assert_eq!(scale_for(448.0, ElemType::F16), 1.0);
    }

    #[test]
    fn quantization_rounds_to_e4m3_and_saturates() {
        // E4M3 near 1: steps of 1/8; 1.0625 is a tie between 1.0 and 1.125 -> even (1.0).
        assert_eq!(fake_quantize(1.0625, 1.0), 1.0);
        assert_eq!(fake_quantize(1.07, 1.0), 1.125);
        assert_eq!(fake_quantize(1000.0, 1.0), 448.0);
        assert_eq!(fake_quantize(-1000.0, 2.0), -896.0);
        // Subnormals: the smallest is 2^-9.
        assert_eq!(fake_quantize(2f32.powi(-9), 1.0), 2f32.powi(-9));
        let (bytes, saturated) = encode(&[1.0, 500.0, -2.0, 0.5], 2, &[1.0, 0.5]);
        assert_eq!(saturated, 1);
        let back: Vec<f32> = bytes.iter().map(|b| F8E4M3::from_bits(*b).to_f32()).collect();
        assert_eq!(back, vec![1.0, 448.0, -2.0, 1.0]);
    }
}
