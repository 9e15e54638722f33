//! Images from the server -> PNG files, written atomically: `out.png` for one image,
//! `out-0.png`, `out-1.png`, ... for several.

use super::Image;
use anyhow::{bail, Context, Result};
use fluxbuild_exporters::util::AtomicFile;
use std::path::{Path, PathBuf};

pub fn write_pngs(out: &Path, images: &[Image]) -> Result<Vec<PathBuf>> {
    let is_png = out.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let Some(stem) = out.file_stem().filter(|_| is_png).and_then(|s| s.to_str()) else {
        bail!("--out {}: expected a file name ending in .png", out.display());
    };
    let paths: Vec<PathBuf> = if images.len() == 1 {
        vec![out.to_path_buf()]
    } else {
        (0..images.len()).map(|i| out.with_file_name(format!("{stem}-{i}.png"))).collect()
    };
    for (image, path) in images.iter().zip(&paths) {
        let mut file = AtomicFile::create(path)?;
        {
            let mut encoder = png::Encoder::new(&mut file, image.width as u32, image.height as u32);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().with_context(|| format!("{}: PNG header", path.display()))?;
            writer.write_image_data(&image.pixels).with_context(|| format!("{}: PNG data", path.display()))?;
        }
        file.commit()?;
    }
    Ok(paths)
}
