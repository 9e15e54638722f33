//! Decoded images -> 8-bit RGB exactly as diffusers' `VaeImageProcessor` (`(x·0.5+0.5).clamp(0,1)`,
//! then `(x·255).round()` with NumPy's round-half-to-even) -> PNG files, written atomically.

use anyhow::{bail, Context, Result};
use fluxbuild_contract::files::AtomicFile;
use ndarray::{ArrayView3, Axis};
use std::path::{Path, PathBuf};

/// An 8-bit RGB image, rows top to bottom, pixels interleaved R, G, B.
#[derive(Clone, Debug, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// The VAE's output range [-1, 1] -> [0, 1], as the pipeline's `denormalize` (float32).
pub fn denormalize(x: f32) -> f32 {
    (x * 0.5 + 0.5).clamp(0.0, 1.0)
}

/// [0, 1] -> 0..255 as `numpy_to_pil`: float32 multiply, round half to even.
pub fn to_u8(x: f32) -> u8 {
    (x * 255.0).round_ties_even() as u8
}

/// One decoded image [3, H, W] (VAE output, [-1, 1]) -> RGB.
pub fn to_rgb(decoded: ArrayView3<f32>) -> RgbImage {
    let (_, height, width) = decoded.dim();
    let hwc = decoded.permuted_axes([1, 2, 0]);
    let pixels = hwc.iter().map(|&x| to_u8(denormalize(x))).collect();
    RgbImage { width, height, pixels }
}

/// All images of a decoded batch [B, 3, H, W].
pub fn batch_to_rgb(decoded: &ndarray::Array4<f32>) -> Vec<RgbImage> {
    decoded.axis_iter(Axis(0)).map(to_rgb).collect()
}

/// Where the images of a batch go: `out.png` for one, `out-0.png`, `out-1.png`, ... for several.
pub fn output_paths(out: &Path, count: usize) -> Result<Vec<PathBuf>> {
    let is_png = out.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let Some(stem) = out.file_stem().filter(|_| is_png).and_then(|s| s.to_str()) else {
        bail!("--out {}: expected a file name ending in .png", out.display());
    };
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!(
            "--out {}: the folder {} does not exist",
            out.display(),
            parent.display()
        );
    }
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("png");
    let paths: Vec<PathBuf> = match count {
        1 => vec![out.to_path_buf()],
        n => (0..n)
            .map(|i| out.with_file_name(format!("{stem}-{i}.{ext}")))
            .collect(),
    };
    // Refused before any work: an existing folder (or device) cannot be replaced by an image.
    for path in &paths {
        if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
            bail!(
                "--out {}: {} is a folder or special file, not an image file",
                out.display(),
                path.display()
            );
        }
    }
    // And a folder the images cannot be written in (read-only, immutable, full of inodes): tried
    // with the temporary file the write uses, before minutes of denoising.
    AtomicFile::create(&paths[0]).with_context(|| format!("--out {}: cannot write there", out.display()))?;
    Ok(paths)
}

/// Writes a PNG (8-bit RGB) with `text` as tEXt chunks (keyword, value), under a temporary name first.
pub fn write_png(path: &Path, image: &RgbImage, text: &[(&str, String)]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    {
        let mut encoder = png::Encoder::new(&mut file, image.width as u32, image.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (keyword, value) in text {
            encoder
                .add_text_chunk(keyword.to_string(), value.clone())
                .context("PNG text chunk")?;
        }
        let mut writer = encoder
            .write_header()
            .with_context(|| format!("{}: cannot write PNG", path.display()))?;
        writer
            .write_image_data(&image.pixels)
            .with_context(|| format!("{}: cannot write PNG", path.display()))?;
        writer
            .finish()
            .with_context(|| format!("{}: cannot write PNG", path.display()))?;
    }
    file.commit()
}

/// Reads an 8-bit RGB PNG (for tests and comparisons).
pub fn read_png(path: &Path) -> Result<RgbImage> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .context("PNG header")?;
    let mut pixels = vec![0; reader.output_buffer_size().context("PNG size")?];
    let info = reader
        .next_frame(&mut pixels)
        .with_context(|| format!("{}: cannot decode", path.display()))?;
    if info.color_type != png::ColorType::Rgb || info.bit_depth != png::BitDepth::Eight {
        bail!(
            "{}: expected 8-bit RGB, found {:?} {:?}",
            path.display(),
            info.color_type,
            info.bit_depth
        );
    }
    pixels.truncate(info.buffer_size());
    Ok(RgbImage {
        width: info.width as usize,
        height: info.height as usize,
        pixels,
    })
}
