//! ComfyUI's "scaled fp8" files (`t5xxl_fp8_e4m3fn_scaled.safetensors`,
//! `flux1-dev-kontext_fp8_scaled.safetensors`): each linear weight `L.weight` is stored as
//! float8 `q` with a scalar `L.scale_weight`, the real weight being `q · scale_weight`; a
//! `scaled_fp8` marker tensor flags the file, and `L.scale_input` (activation scales for fp8
//! matmuls) may be present. fluxbuild dequantizes while streaming, so every output precision
//! sees the real weights.

use super::dtype::DType;
use super::safetensors_file::{SafetensorsFile, TensorInfo};
use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// The marker tensor's name (after the part's key prefix).
pub const MARKER: &str = "scaled_fp8";
const WEIGHT_SCALE: &str = ".scale_weight";
const INPUT_SCALE: &str = ".scale_input";

/// What the scales did to a checkpoint (inspect and the export manifest show it).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScaledFp8 {
    /// Weights multiplied by their `scale_weight` on load.
    pub dequantized_weights: usize,
    /// `scale_input` tensors (activation scales for fp8 matmuls; a dequantized graph has no use for them).
    pub input_scales: usize,
    pub marker: bool,
}

/// Takes the scale tensors and the marker out of `tensors` and returns the dequantization
/// multiplier of every scaled weight; `None` when the checkpoint is not scaled.
pub fn take_scales(
    tensors: &mut BTreeMap<String, (usize, TensorInfo)>,
    files: &[SafetensorsFile],
) -> Result<Option<(ScaledFp8, BTreeMap<String, f32>)>> {
    let marker = tensors.remove(MARKER).is_some();
    let scale_names: Vec<String> = tensors
        .keys()
        .filter(|n| n.ends_with(WEIGHT_SCALE) || n.ends_with(INPUT_SCALE))
        .cloned()
        .collect();
    if scale_names.is_empty() && !marker {
        return Ok(None);
    }
    let mut summary = ScaledFp8 {
        marker,
        ..Default::default()
    };
    let mut scales = BTreeMap::new();
    for name in scale_names {
        let (file, info) = tensors.remove(&name).expect("listed above");
        let file = &files[file];
        let mut value = Vec::new();
        info.dtype.decode_into(file.bytes(&info), &mut value);
        let [scale] = value[..] else {
            bail!(
                "{}: scale tensor {name} has shape {:?}; a scaled-fp8 scale is one number",
                file.path.display(),
                info.shape
            );
        };
        if name.ends_with(INPUT_SCALE) {
            summary.input_scales += 1;
            continue;
        }
        let weight = format!("{}.weight", name.strip_suffix(WEIGHT_SCALE).unwrap());
        let Some((_, weight_info)) = tensors.get(&weight) else {
            bail!(
                "{}: {name} scales {weight}, which is not in the file",
                file.path.display()
            );
        };
        if !matches!(weight_info.dtype, DType::F8E4M3 | DType::F8E5M2) || !scale.is_finite() || scale <= 0.0 {
            bail!(
                "{}: {name} = {scale} scales {weight} of type {}; expected a positive scale of a float8 weight",
                file.path.display(),
                weight_info.dtype
            );
        }
        scales.insert(weight, scale);
    }
    summary.dequantized_weights = scales.len();
    Ok(Some((summary, scales)))
}
