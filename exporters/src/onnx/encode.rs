//! Turning checkpoint tensors into initializer bytes: stacking row blocks, transposing to
//! MatMul layout, converting the element type. One tensor at a time, so memory stays bounded
//! by the largest tensor rather than the checkpoint.

use super::ir::{ElemType, WeightPlan};
use crate::checkpoint::DType;
use crate::quantize::fp8;
use anyhow::{bail, Result};
use half::{bf16, f16};
use std::borrow::Cow;

/// What a conversion had to change.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ConversionStats {
    /// Values beyond the target's finite range, saturated to its largest finite value.
    pub saturated: u64,
    /// The largest magnitude seen in the source.
    pub amax: f32,
}

/// Encodes one plan as `elem`, little-endian. Borrows the checkpoint bytes when nothing changes.
pub fn encode_plan<'a>(plan: &WeightPlan<'a>, elem: ElemType) -> Result<(Cow<'a, [u8]>, ConversionStats)> {
    if let Some(bytes) = passthrough(plan, elem) {
        return Ok((Cow::Borrowed(bytes), ConversionStats::default()));
    }
    let mut values = Vec::with_capacity(plan.rows() * plan.cols);
    for part in &plan.parts {
        let row_bytes = plan.cols * part.tensor.dtype().size();
        let bytes = &part.tensor.bytes()[part.rows.start * row_bytes..part.rows.end * row_bytes];
        part.tensor.dtype().decode_into(bytes, &mut values);
    }
    if plan.transpose {
        values = transpose(&values, plan.rows(), plan.cols);
    }
    if let Some(scale) = &plan.scale {
        anyhow::ensure!(elem == ElemType::F8E4M3, "a quantization scale needs an FP8 initializer, not {elem:?}");
        let cols = if plan.transpose { plan.rows() } else { plan.cols };
        let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (bytes, saturated) = fp8::encode(&values, cols, scale);
        return Ok((Cow::Owned(bytes), ConversionStats { saturated, amax }));
    }
    let (bytes, stats) = encode_f32(&values, elem)?;
    Ok((Cow::Owned(bytes), stats))
}

fn passthrough<'a>(plan: &WeightPlan<'a>, elem: ElemType) -> Option<&'a [u8]> {
    let [part] = plan.parts.as_slice() else { return None };
    if plan.scale.is_some() {
        return None;
    }
    let same_type = matches!(
        (part.tensor.dtype(), elem),
        (DType::F32, ElemType::F32) | (DType::F16, ElemType::F16) | (DType::BF16, ElemType::BF16) | (DType::F8E4M3, ElemType::F8E4M3)
    );
    let whole = part.rows.start == 0 && part.rows.len() * plan.cols == part.tensor.info.numel();
    (same_type && whole && !plan.transpose).then(|| part.tensor.bytes())
}

/// Cache-blocked transpose of a row-major [rows, cols] matrix.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0f32; values.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = values[r * cols + c];
                }
            }
        }
    }
    out
}

/// Encodes f32 values as `elem`; float16/bfloat16 round to nearest even, saturating overflow.
pub fn encode_f32(values: &[f32], elem: ElemType) -> Result<(Vec<u8>, ConversionStats)> {
    let mut stats = ConversionStats { amax: values.iter().fold(0f32, |m, v| m.max(v.abs())), saturated: 0 };
    let mut out = Vec::with_capacity(values.len() * elem.size());
    match elem {
        ElemType::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        ElemType::F16 => {
            let max = f16::MAX.to_f32();
            for &v in values {
                let clamped = if v.abs() > max && v.is_finite() {
                    stats.saturated += 1;
                    max.copysign(v)
                } else {
                    v
                };
                out.extend(f16::from_f32(clamped).to_le_bytes());
            }
        }
        ElemType::BF16 => out.extend(values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes())),
        other => bail!("cannot encode float weights as {other:?}"),
    }
    Ok((out, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_is_exact_on_ragged_tiles() {
        let (rows, cols) = (37, 70);
        let m: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let t = transpose(&m, rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(t[c * rows + r], m[r * cols + c]);
            }
        }
    }

    #[test]
    fn fp16_saturates_and_counts() {
        let (bytes, stats) = encode_f32(&[1.0, 70000.0, -1e9, f32::INFINITY], ElemType::F16).unwrap();
        let back: Vec<f32> = bytes.chunks(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
        assert_eq!(back, vec![1.0, 65504.0, -65504.0, f32::INFINITY]);
        assert_eq!(stats.saturated, 2);
    }
}
