//! Packing, positions and the 8-bit postprocess against what FluxPipeline recorded, and PNG files.

mod generate_common;

use fluxbuild::generate::image::{batch_to_rgb, denormalize, output_paths, read_png, to_u8, write_png, RgbImage};
use fluxbuild::generate::latents::{image_ids, pack, text_ids, unpack};
use generate_common::Reference;
use ndarray::Array4;

#[test]
fn packing_matches_the_pipeline_and_round_trips() {
    for variant in ["dev", "schnell"] {
        let r = Reference::load(variant);
        let (shape, noise) = r.f32("noise");
        let noise = Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), noise).unwrap();
        let packed = pack(&noise);
        let (pshape, want) = r.f32("initial_latents");
        assert_eq!(packed.shape(), &pshape[..]);
        assert_eq!(
            packed.iter().copied().collect::<Vec<_>>(),
            want,
            "{variant} packed noise"
        );
        assert_eq!(unpack(&packed, shape[2], shape[3]), noise);

        let ids = image_ids(shape[2] / 2, shape[3] / 2);
        assert_eq!(ids.iter().copied().collect::<Vec<_>>(), r.f32("img_ids").1);
        let (tshape, txt) = r.f32("text_ids");
        assert_eq!(text_ids(tshape[0]).iter().copied().collect::<Vec<_>>(), txt);
    }
}

#[test]
fn uint8_postprocess_matches_diffusers_exactly() {
    for variant in ["dev", "schnell"] {
        let r = Reference::load(variant);
        // `decoded` is the pipeline's output_type="pt", i.e. already (x·0.5+0.5).clamp(0,1), [B,3,H,W]
        let (s, decoded) = r.f32("decoded");
        let (_, want) = r.u8("image_uint8"); // [B,H,W,3]
        let hwc = Array4::from_shape_vec((s[0], s[1], s[2], s[3]), decoded)
            .unwrap()
            .permuted_axes([0, 2, 3, 1]);
        let got: Vec<u8> = hwc.iter().map(|&x| to_u8(x)).collect();
        assert_eq!(got, want, "{variant} uint8 images");
    }
}

#[test]
fn rgb_from_vae_output_rounds_half_to_even_like_numpy() {
    // an x with x·255 == 2.5 exactly in float32 becomes 2 (numpy's round), not 3
    let start = (2.5f32 / 255.0).to_bits();
    let x = (start - 8..start + 8)
        .map(f32::from_bits)
        .find(|x| x * 255.0 == 2.5)
        .expect("such an x exists");
    assert_eq!(to_u8(x), 2);
    // [-1, 1] -> [0, 1] with clamping, channels interleaved (0 -> 127.5 -> 128: ties to even)
    let vae_out = Array4::from_shape_vec((1, 3, 1, 2), vec![-3.0, 1.0, 0.0, 0.5, 2.0, -1.0]).unwrap();
    assert_eq!(batch_to_rgb(&vae_out)[0].pixels, vec![0, 128, 255, 255, 191, 0]);
    assert_eq!(denormalize(0.5), 0.75);
}

#[test]
fn png_files_round_trip_and_are_named_per_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    assert_eq!(output_paths(&out, 1).unwrap(), vec![out.clone()]);
    let names: Vec<String> = output_paths(&out, 3)
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["out-0.png", "out-1.png", "out-2.png"]);
    assert!(format!("{:#}", output_paths(&dir.path().join("out.jpg"), 1).unwrap_err()).contains(".png"));
    assert!(format!(
        "{:#}",
        output_paths(&dir.path().join("no/such/out.png"), 1).unwrap_err()
    )
    .contains("does not exist"));

    let pixels: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 17 % 256) as u8).collect();
    let image = RgbImage {
        width: 5,
        height: 3,
        pixels,
    };
    write_png(&out, &image, &[("Description", "a cat".into())]).unwrap();
    assert_eq!(read_png(&out).unwrap(), image);
    let temporary = std::fs::read_dir(dir.path())
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().starts_with("out.png.tmp"));
    assert!(!temporary, "a temporary file was left");
}
