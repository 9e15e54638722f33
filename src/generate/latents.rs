//! The transformer sees latents as a sequence of 2×2 patches: [B,16,h,w] <-> [B,(h/2)(w/2),64] with
//! channel index c·4 + dy·2 + dx (FluxPipeline's `_pack_latents` / `_unpack_latents`), positions in
//! `img_ids` (0, row, column) and zero `txt_ids`.

use ndarray::{Array2, Array3, Array4};

/// Latent channels of the FLUX VAE.
pub const LATENT_CHANNELS: usize = 16;
/// Pixels per latent.
pub const VAE_SCALE: usize = 8;

/// The unpacked latent shape for an image of `height`×`width` pixels (multiples of 16).
pub fn latent_shape(batch: usize, height: usize, width: usize) -> [usize; 4] {
    [batch, LATENT_CHANNELS, height / VAE_SCALE, width / VAE_SCALE]
}

pub fn pack(latents: &Array4<f32>) -> Array3<f32> {
    let (b, c, h, w) = latents.dim();
    let (rows, cols) = (h / 2, w / 2);
    Array3::from_shape_fn((b, rows * cols, c * 4), |(n, token, channel)| {
        let (r, col) = (token / cols, token % cols);
        let (ch, dy, dx) = (channel / 4, (channel / 2) % 2, channel % 2);
        latents[[n, ch, 2 * r + dy, 2 * col + dx]]
    })
}

pub fn unpack(packed: &Array3<f32>, h: usize, w: usize) -> Array4<f32> {
    let (b, _, features) = packed.dim();
    let cols = w / 2;
    Array4::from_shape_fn((b, features / 4, h, w), |(n, ch, y, x)| {
        packed[[n, (y / 2) * cols + x / 2, ch * 4 + (y % 2) * 2 + x % 2]]
    })
}

/// img_ids [rows·cols, 3]: (0, r, c) for the patch in row r, column c.
pub fn image_ids(rows: usize, cols: usize) -> Array2<f32> {
    Array2::from_shape_fn((rows * cols, 3), |(token, axis)| match axis {
        1 => (token / cols) as f32,
        2 => (token % cols) as f32,
        _ => 0.0,
    })
}

/// txt_ids [length, 3]: zeros (text tokens carry no position for RoPE).
pub fn text_ids(length: usize) -> Array2<f32> {
    Array2::zeros((length, 3))
}
