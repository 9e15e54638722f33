//! Turning checkpoint tensors into initializer bytes: stacking row blocks, transposing to
//! MatMul layout, converting the element type. One tensor at a time, so memory stays bounded
//! by the largest tensor rather than the checkpoint. Converted bytes land in page-aligned
//! buffers, which the writer passes to the disk without copying.

use super::ir::{ElemType, Part, WeightPlan};
use super::pagebuf::PageBuf;
use crate::checkpoint::DType;
use crate::quantize::fp8;
use anyhow::{bail, Result};
use float8::F8E4M3;
use half::{bf16, f16};
use std::ops::Deref;

/// What a conversion had to change.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ConversionStats {
    /// Values beyond the target's finite range, saturated to its largest finite value.
    pub saturated: u64,
}

/// An initializer's bytes: the checkpoint's own, or produced here.
pub enum Encoded<'a> {
    Borrowed(&'a [u8]),
    Owned(PageBuf),
}

impl Deref for Encoded<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Encoded::Borrowed(bytes) => bytes,
            Encoded::Owned(buf) => buf,
        }
    }
}

/// Encodes one plan as `elem`, little-endian. Borrows the checkpoint bytes when nothing changes.
pub fn encode_plan<'a>(plan: &WeightPlan<'a>, elem: ElemType) -> Result<(Encoded<'a>, ConversionStats)> {
    // A scaled-fp8 source, or one scale per channel, needs the values: the f32 path below.
    if plan.parts.iter().all(|p| p.tensor.scale.is_none()) {
        let direct = match plan.scale.as_deref() {
            None => {
                if let Some(bytes) = passthrough(plan, elem) {
                    return Ok((Encoded::Borrowed(bytes), ConversionStats::default()));
                }
                rearrange_direct(plan, elem)
            }
            Some(&[scale]) if elem == ElemType::F8E4M3 => quantize_direct(plan, scale),
            Some(_) => None,
        };
        if let Some((bytes, saturated)) = direct {
            return Ok((Encoded::Owned(bytes), ConversionStats { saturated }));
        }
    }
    let mut values = Vec::with_capacity(plan.rows() * plan.cols);
    for part in &plan.parts {
        part.tensor.decode_into(part_bytes(plan, part), &mut values);
    }
    if plan.transpose {
        values = transpose(&values, plan.rows(), plan.cols);
    }
    if let Some(scale) = &plan.scale {
        anyhow::ensure!(
            elem == ElemType::F8E4M3,
            "a quantization scale needs an FP8 initializer, not {elem:?}"
        );
        let cols = if plan.transpose { plan.rows() } else { plan.cols };
        let (bytes, saturated) = fp8::encode(&values, cols, scale);
        return Ok((
            Encoded::Owned(PageBuf::from_slice(&bytes)),
            ConversionStats { saturated },
        ));
    }
    let (bytes, stats) = encode_f32(&values, elem)?;
    Ok((Encoded::Owned(PageBuf::from_slice(&bytes)), stats))
}

fn part_bytes<'a>(plan: &WeightPlan<'a>, part: &Part<'a>) -> &'a [u8] {
    let row_bytes = plan.cols * part.tensor.dtype().size();
    &part.tensor.bytes()[part.rows.start * row_bytes..part.rows.end * row_bytes]
}

fn same_type(dtype: DType, elem: ElemType) -> bool {
    matches!(
        (dtype, elem),
        (DType::F32, ElemType::F32)
            | (DType::F16, ElemType::F16)
            | (DType::BF16, ElemType::BF16)
            | (DType::F8E4M3, ElemType::F8E4M3)
    )
}

fn passthrough<'a>(plan: &WeightPlan<'a>, elem: ElemType) -> Option<&'a [u8]> {
    let [part] = plan.parts.as_slice() else { return None };
    let whole = part.rows.start == 0 && part.rows.len() * plan.cols == part.tensor.info.numel();
    (same_type(part.tensor.dtype(), elem) && whole && !plan.transpose).then(|| part.tensor.bytes())
}

/// Stacking, transposing and converting in one pass over the elements, on all cores, for
/// parts of one type (`None` for mixed types, which go through f32). Narrowing to float16
/// saturates and counts on the way.
fn rearrange_direct(plan: &WeightPlan<'_>, elem: ElemType) -> Option<(PageBuf, u64)> {
    let dtype = single_dtype(plan)?;
    let bf16_of = |v: f32| (bf16::from_f32(v).to_le_bytes(), false);
    let f16_of = |v: f32| {
        let (bits, saturated) = f16_saturating(v);
        (bits.to_le_bytes(), saturated)
    };
    Some(match (dtype, elem) {
        (DType::F32, ElemType::F32) => rearrange::<4, 4>(plan, |x| (x, false)),
        (DType::F16, ElemType::F16) | (DType::BF16, ElemType::BF16) => rearrange::<2, 2>(plan, |x| (x, false)),
        (DType::F8E4M3, ElemType::F8E4M3) => rearrange::<1, 1>(plan, |x| (x, false)),
        (DType::BF16, ElemType::F32) => rearrange::<2, 4>(plan, |x| (bf16_to_f32(x).to_le_bytes(), false)),
        (DType::F16, ElemType::F32) => {
            rearrange::<2, 4>(plan, |x| (f16::from_le_bytes(x).to_f32().to_le_bytes(), false))
        }
        (DType::F8E4M3, ElemType::F32) => {
            rearrange::<1, 4>(plan, |[x]| (F8E4M3::from_bits(x).to_f32().to_le_bytes(), false))
        }
        (DType::F32, ElemType::BF16) => rearrange::<4, 2>(plan, |x| bf16_of(f32::from_le_bytes(x))),
        (DType::F16, ElemType::BF16) => rearrange::<2, 2>(plan, |x| bf16_of(f16::from_le_bytes(x).to_f32())),
        (DType::F8E4M3, ElemType::BF16) => rearrange::<1, 2>(plan, |[x]| bf16_of(F8E4M3::from_bits(x).to_f32())),
        (DType::F32, ElemType::F16) => rearrange::<4, 2>(plan, |x| f16_of(f32::from_le_bytes(x))),
        (DType::BF16, ElemType::F16) => {
            let table = bf16_to_f16_table();
            rearrange::<2, 2>(plan, |x| {
                let bits = u16::from_le_bytes(x);
                let abs = bits & 0x7fff;
                // beyond 65504 (the next bfloat16 is 65536) and finite
                let saturated = (0x4780..0x7f80).contains(&abs);
                (table[bits as usize].to_le_bytes(), saturated)
            })
        }
        // e4m3 (max 448) fits f16 exactly.
        (DType::F8E4M3, ElemType::F16) => rearrange::<1, 2>(plan, |[x]| f16_of(F8E4M3::from_bits(x).to_f32())),
        _ => return None,
    })
}

/// FP8 weights with one scale (the default policy) in the same one pass, saturation counted as
/// `fp8::encode` counts it: the same bytes as the f32 path. A 16- or 8-bit source quantizes
/// through a table of all its bit patterns (65,536 conversions per tensor instead of one per
/// weight: the f32 -> E4M3 rounding costs about 25 ns).
fn quantize_direct(plan: &WeightPlan<'_>, scale: f32) -> Option<(PageBuf, u64)> {
    let fp8_of = |v: f32| ([fp8::quantize(v, scale).to_bits()], (v / scale).abs() > fp8::E4M3_MAX);
    let table_of = |decode: &dyn Fn([u8; 2]) -> f32| -> Vec<([u8; 1], bool)> {
        (0..=u16::MAX).map(|bits| fp8_of(decode(bits.to_le_bytes()))).collect()
    };
    Some(match single_dtype(plan)? {
        DType::F32 => rearrange::<4, 1>(plan, |x| fp8_of(f32::from_le_bytes(x))),
        DType::F16 => {
            let table = table_of(&|x| f16::from_le_bytes(x).to_f32());
            rearrange::<2, 1>(plan, |x| table[u16::from_le_bytes(x) as usize])
        }
        DType::BF16 => {
            let table = table_of(&bf16_to_f32);
            rearrange::<2, 1>(plan, |x| table[u16::from_le_bytes(x) as usize])
        }
        DType::F8E4M3 => {
            let table: Vec<_> = (0..=u8::MAX).map(|x| fp8_of(F8E4M3::from_bits(x).to_f32())).collect();
            rearrange::<1, 1>(plan, |[x]| table[x as usize])
        }
        _ => return None,
    })
}

/// The parts' element type when they all share one.
fn single_dtype(plan: &WeightPlan<'_>) -> Option<DType> {
    let dtype = plan.parts[0].tensor.dtype();
    plan.parts.iter().all(|p| p.tensor.dtype() == dtype).then_some(dtype)
}

fn bf16_to_f32(x: [u8; 2]) -> f32 {
    f32::from_bits((u16::from_le_bytes(x) as u32) << 16)
}

/// `f16_saturating` of every bfloat16 value, by its bits (128 KiB, made once): a lookup per
/// element costs less than the arithmetic, which the compiler does not vectorise here.
fn bf16_to_f16_table() -> &'static [u16; 1 << 16] {
    static TABLE: std::sync::OnceLock<Box<[u16; 1 << 16]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = Box::new([0u16; 1 << 16]);
        for (bits, half) in table.iter_mut().enumerate() {
            *half = f16_saturating(f32::from_bits((bits as u32) << 16)).0;
        }
        table
    })
}

/// f32 to float16 bits, rounding to nearest even as `half::f16::from_f32` does, except that
/// finite values beyond ±65504 saturate to it (the `bool` says so) instead of becoming
/// infinite; infinities and NaNs stay what they are. Plain integer and float arithmetic, without
/// `half`'s per-call CPU feature check, so it inlines into the conversion loops.
#[inline(always)]
pub fn f16_saturating(v: f32) -> (u16, bool) {
    const F16_MAX: u32 = 0x477f_e000; // 65504.0
    const INFINITY: u32 = 0x7f80_0000;
    // 2^-14: below it, halves are subnormal.
    const SMALLEST_NORMAL: u32 = 113 << 23;
    // Adding 0.5 (this float) to a value below 2^-14 leaves its subnormal-half mantissa in the
    // low 10 bits, rounded to nearest even by the float addition itself.
    const SUBNORMAL_MAGIC: u32 = ((127 - 15) + (23 - 10) + 1) << 23;
    let bits = v.to_bits();
    let sign = (bits >> 16) as u16 & 0x8000;
    let abs = bits & 0x7fff_ffff;
    let saturated = abs > F16_MAX && abs < INFINITY;
    let abs = if saturated { F16_MAX } else { abs };
    let subnormal = (f32::from_bits(abs) + f32::from_bits(SUBNORMAL_MAGIC)).to_bits() - SUBNORMAL_MAGIC;
    // Rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to nearest even.
    let rebias = 15u32.wrapping_sub(127) << 23;
    let normal = abs.wrapping_add(rebias).wrapping_add(0xfff + ((abs >> 13) & 1)) >> 13;
    let mantissa = abs & 0x007f_ffff;
    let special = 0x7c00 | if mantissa != 0 { 0x0200 } else { 0 } | (mantissa >> 13);
    let half = if abs >= INFINITY {
        special
    } else if abs < SMALLEST_NORMAL {
        subnormal
    } else {
        normal
    };
    (sign | half as u16, saturated)
}

/// Tensors below this size are rearranged on the calling thread.
const PARALLEL_MIN_BYTES: usize = 1 << 20;

/// The plan's matrix (parts stacked, transposed if asked) with every element of `I` bytes
/// mapped to `O` bytes by `convert`, which also says whether it saturated the value; with the
/// number of saturated values. Output rows are shared out among the cores.
fn rearrange<const I: usize, const O: usize>(
    plan: &WeightPlan<'_>,
    convert: impl Fn([u8; I]) -> ([u8; O], bool) + Sync,
) -> (PageBuf, u64) {
    let (rows, cols) = (plan.rows(), plan.cols);
    let mut first = 0;
    let blocks: Vec<Block<'_, I>> = plan
        .parts
        .iter()
        .map(|part| {
            let block = Block {
                first_row: first,
                elems: part_bytes(plan, part).as_chunks::<I>().0,
            };
            first += part.rows.len();
            block
        })
        .collect();
    let mut out = PageBuf::zeroed(rows * cols * O);
    let out_width = if plan.transpose { rows } else { cols };
    let out_rows = rows * cols / out_width.max(1);
    let threads = if out.len() < PARALLEL_MIN_BYTES {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    let rows_per_thread = out_rows.div_ceil(threads).max(1);
    let (elems, _) = out.as_chunks_mut::<O>();
    let mut saturated = 0;
    std::thread::scope(|s| {
        let mut running = Vec::new();
        for (t, chunk) in elems.chunks_mut(rows_per_thread * out_width).enumerate() {
            let (blocks, convert) = (&blocks, &convert);
            let mut fill = move || {
                let first_out_row = t * rows_per_thread;
                if plan.transpose {
                    fill_transposed(chunk, first_out_row, blocks, cols, rows, convert)
                } else {
                    fill_stacked(chunk, first_out_row, blocks, cols, convert)
                }
            };
            if threads == 1 {
                saturated += fill();
            } else {
                running.push(s.spawn(fill));
            }
        }
        for thread in running {
            saturated += thread.join().expect("a conversion thread panicked");
        }
    });
    (out, saturated)
}

/// One part's rows, starting at row `first_row` of the stacked matrix.
struct Block<'a, const I: usize> {
    first_row: usize,
    elems: &'a [[u8; I]],
}

/// Stacked rows `first_out_row..` into `out`; returns the number of saturated values.
fn fill_stacked<const I: usize, const O: usize>(
    out: &mut [[u8; O]],
    first_out_row: usize,
    blocks: &[Block<'_, I>],
    cols: usize,
    convert: &impl Fn([u8; I]) -> ([u8; O], bool),
) -> u64 {
    let mut saturated = 0;
    for (i, row_out) in out.chunks_mut(cols).enumerate() {
        let r = first_out_row + i;
        let block = blocks
            .iter()
            .rev()
            .find(|b| b.first_row <= r)
            .expect("row within the plan");
        let row_in = &block.elems[(r - block.first_row) * cols..][..cols];
        for (o, &x) in row_out.iter_mut().zip(row_in) {
            let (y, s) = convert(x);
            *o = y;
            saturated += s as u64;
        }
    }
    saturated
}

/// Rows `first_out_row..` of the transpose (= columns of the stacked matrix, `rows` long) into
/// `out`, tile by tile so that reads and writes both stay in cache; returns the number of
/// saturated values.
fn fill_transposed<const I: usize, const O: usize>(
    out: &mut [[u8; O]],
    first_out_row: usize,
    blocks: &[Block<'_, I>],
    cols: usize,
    rows: usize,
    convert: &impl Fn([u8; I]) -> ([u8; O], bool),
) -> u64 {
    const TILE: usize = 64;
    let mut saturated = 0;
    let out_rows = out.len() / rows;
    for block in blocks {
        let block_rows = block.elems.len() / cols;
        for r0 in (0..block_rows).step_by(TILE) {
            let r1 = (r0 + TILE).min(block_rows);
            for c0 in (0..out_rows).step_by(TILE) {
                for oc in c0..(c0 + TILE).min(out_rows) {
                    let c = first_out_row + oc;
                    let dst = &mut out[oc * rows + block.first_row..][..block_rows];
                    for (d, r) in dst[r0..r1].iter_mut().zip(r0..) {
                        let (y, s) = convert(block.elems[r * cols + c]);
                        *d = y;
                        saturated += s as u64;
                    }
                }
            }
        }
    }
    saturated
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
    let mut stats = ConversionStats::default();
    let mut out = Vec::with_capacity(values.len() * elem.size());
    match elem {
        ElemType::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        ElemType::F16 => {
            for &v in values {
                let (bits, saturated) = f16_saturating(v);
                stats.saturated += saturated as u64;
                out.extend(bits.to_le_bytes());
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

    /// The one-pass rearrangement gives the same bytes as decoding to f32, transposing and encoding.
    #[test]
    fn direct_rearrangement_matches_the_f32_path() {
        use crate::checkpoint::Checkpoint;
        use crate::onnx::ir::Part;
        use safetensors::tensor::{Dtype, TensorView};
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                Dtype::F32,
                DType::F32,
                &[ElemType::F32, ElemType::BF16, ElemType::F16][..],
            ),
            (
                Dtype::BF16,
                DType::BF16,
                &[ElemType::BF16, ElemType::F32, ElemType::F16],
            ),
            (Dtype::F16, DType::F16, &[ElemType::F16, ElemType::BF16]),
            (Dtype::F8_E4M3, DType::F8E4M3, &[ElemType::F32, ElemType::F16]),
        ];
        for (st_dtype, dtype, targets) in cases {
            // Two tensors with ragged sizes, the second big enough to be split among threads.
            let shapes = [vec![37usize, 700], vec![1100, 700]];
            let mut state = 12345u64;
            let data: Vec<Vec<u8>> = shapes
                .iter()
                .map(|shape| {
                    (0..shape.iter().product::<usize>() * dtype.size())
                        .map(|i| {
                            state = state
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            let byte = (state >> 33) as u8;
                            // keep exponents moderate (no NaN/inf patterns): clear the top exponent bit
                            if (i + 1) % dtype.size() == 0 {
                                byte & 0xbf
                            } else {
                                byte
                            }
                        })
                        .collect()
                })
                .collect();
            let views: Vec<(String, TensorView)> = shapes
                .iter()
                .zip(&data)
                .enumerate()
                .map(|(i, (shape, bytes))| {
                    (
                        format!("t{i}"),
                        TensorView::new(st_dtype, shape.clone(), bytes).unwrap(),
                    )
                })
                .collect();
            let path = dir.path().join(format!("{}.safetensors", dtype.name()));
            safetensors::serialize_to_file(views, None, &path).unwrap();
            let ckpt = Checkpoint::load(&path, "", &[]).unwrap();
            let (t0, t1) = (ckpt.get("t0").unwrap(), ckpt.get("t1").unwrap());
            for transposed in [false, true] {
                let plan = WeightPlan {
                    parts: vec![
                        Part {
                            tensor: t1,
                            rows: 5..1005,
                        },
                        Part {
                            tensor: t0,
                            rows: 0..37,
                        },
                    ],
                    cols: 700,
                    transpose: transposed,
                    scale: None,
                };
                for &elem in targets {
                    let (fast, _) = rearrange_direct(&plan, elem).expect("a direct conversion");
                    let mut values = Vec::new();
                    for part in &plan.parts {
                        dtype.decode_into(part_bytes(&plan, part), &mut values);
                    }
                    if transposed {
                        values = transpose(&values, plan.rows(), plan.cols);
                    }
                    let (slow, _) = encode_f32(&values, elem).unwrap();
                    assert!(
                        *fast == slow[..],
                        "{dtype} -> {elem:?} (transposed {transposed}) differs"
                    );
                }
                // FP8 with one scale that saturates the largest values.
                let mut values = Vec::new();
                for part in &plan.parts {
                    dtype.decode_into(part_bytes(&plan, part), &mut values);
                }
                if transposed {
                    values = transpose(&values, plan.rows(), plan.cols);
                }
                let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = amax / 1000.0;
                let (fast, fast_saturated) = quantize_direct(&plan, scale).expect("a direct quantization");
                let (slow, slow_saturated) = fp8::encode(&values, 1, &[scale]);
                assert!(*fast == slow[..], "{dtype} -> fp8 (transposed {transposed}) differs");
                assert_eq!(fast_saturated, slow_saturated, "{dtype} -> fp8 saturation count");
                assert!(fast_saturated > 0, "{dtype}: the scale saturates nothing");
            }
        }
    }

    /// `f16_saturating` is today's conversion (clamp finite overflow, then `half`'s round to
    /// nearest even) bit for bit: on every bfloat16 value with the low mantissa bits that decide
    /// rounding (ties, just below and above them), on every NaN and infinity, and on a stride
    /// through all 2^32 bit patterns.
    #[test]
    fn f16_saturating_is_bit_exact() {
        let max = f16::MAX.to_f32();
        let reference = |v: f32| {
            let saturated = v.abs() > max && v.is_finite();
            let clamped = if saturated { max.copysign(v) } else { v };
            (f16::from_f32(clamped).to_bits(), saturated)
        };
        let low_bits = [
            0u32, 1, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3000, 0x7fff, 0x8000, 0xffff,
        ];
        let near_ties = (0..=0xffffu32).flat_map(|high| low_bits.iter().map(move |low| high << 16 | low));
        for bits in near_ties.chain((0..=u32::MAX).step_by(997)) {
            let v = f32::from_bits(bits);
            assert_eq!(f16_saturating(v), reference(v), "{v:e} ({bits:#010x})");
        }
    }

    /// Saturation is counted in the one-pass path, threads and transposes included.
    #[test]
    fn direct_fp16_counts_saturation() {
        use crate::checkpoint::Checkpoint;
        use crate::onnx::ir::Part;
        use safetensors::tensor::{Dtype, TensorView};
        let (rows, cols) = (1000usize, 700usize);
        let special = [70000.0f32, -1e9, 65504.0, 65519.0, f32::INFINITY, f32::NAN, 1.0];
        let values: Vec<f32> = (0..rows * cols).map(|i| special[i % 7919 % special.len()]).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.safetensors");
        let view = TensorView::new(Dtype::BF16, vec![rows, cols], &bytes).unwrap();
        safetensors::serialize_to_file([("w", view)], None, &path).unwrap();
        let ckpt = Checkpoint::load(&path, "", &[]).unwrap();
        let expected: u64 = values
            .iter()
            .map(|&v| bf16::from_f32(v).to_f32())
            .filter(|v| v.is_finite() && v.abs() > 65504.0)
            .count() as u64;
        assert!(expected > 1000);
        for transpose in [false, true] {
            let plan = WeightPlan {
                parts: vec![Part {
                    tensor: ckpt.get("w").unwrap(),
                    rows: 0..rows,
                }],
                cols,
                transpose,
                scale: None,
            };
            let (_, stats) = encode_plan(&plan, ElemType::F16).unwrap();
            assert_eq!(stats.saturated, expected, "transpose {transpose}");
        }
    }

    #[test]
    fn fp16_saturates_and_counts() {
        let (bytes, stats) = encode_f32(&[1.0, 70000.0, -1e9, f32::INFINITY], ElemType::F16).unwrap();
        let back: Vec<f32> = bytes
            .chunks(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        assert_eq!(back, vec![1.0, 65504.0, -65504.0, f32::INFINITY]);
        assert_eq!(stats.saturated, 2);
    }
}
