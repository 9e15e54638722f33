//! FLUX.1 variants: Fill (384 input channels) and Canny/Depth (128) are named by their input
//! width and exported with it; Kontext by its file or pipeline name; generate and package refuse
//! the image-conditioned ones up front, naming what they need.
//!
//! Parity without a Fill reference model: the dev fixture with `img_in` widened by zero columns
//! is the same function of the first 64 channels whatever the others hold, so its graph must
//! reproduce diffusers' dev output (`io.safetensors`) with the extra channels filled with noise.

mod common;

use common::{fixtures, pseudo_random, relative_error};
use fluxbuild::runtime::{Input, Model};
use fluxbuild_exporters::checkpoint::Checkpoint;
use fluxbuild_exporters::onnx::ElemType;
use ndarray::{concatenate, Axis};
use std::path::Path;
use std::process::Command;

/// The tensors of `file` with `weight` ([out, 64]) widened to [out, 64·factor] by zero columns.
fn widened(file: &Path, weight: &str, factor: usize, out: &Path) {
    let ckpt = Checkpoint::load(file, "", &[]).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = ckpt
        .tensors()
        .map(|t| {
            let values = t.to_f32();
            if t.name != weight {
                return (t.name.to_string(), t.shape().to_vec(), values);
            }
            let (rows, cols) = (t.shape()[0], t.shape()[1]);
            let mut wide = vec![0f32; rows * cols * factor];
            for r in 0..rows {
                wide[r * cols * factor..][..cols].copy_from_slice(&values[r * cols..][..cols]);
            }
            (t.name.to_string(), vec![rows, cols * factor], wide)
        })
        .collect();
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    common::write_f32_safetensors(out, &refs);
}

#[test]
fn fill_and_canny_widths_export_and_match_dev_on_the_latent_channels() {
    let case = common::flux::case_dir("dev");
    let config = common::flux::diffusers_config("dev");
    let io = case.join("io.safetensors");
    for (factor, file_name, variant) in [
        (6, "flux1-fill-dev.safetensors", "fill"),
        (2, "flux1-canny-dev.safetensors", "canny"),
        (2, "flux1-depth-dev.safetensors", "depth"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(file_name);
        widened(&case.join("bfl.safetensors"), "img_in.weight", factor, &file);
        // The config.json of the dev model says in_channels 64: the variant's own says otherwise.
        let mut own = config.clone();
        own["in_channels"] = (64 * factor).into();
        let analysis = common::flux::export(&file, Some(&own), ElemType::F32, &dir.path().join("graph"));
        assert_eq!(analysis.variant.as_deref(), Some(variant));
        assert_eq!(analysis.config["in_channels"], 64 * factor);

        let tensors = common::flux::io_tensors(&io);
        let mut feed = Vec::new();
        for (name, value) in &tensors {
            let value = if name == "hidden_states" {
                let (b, l) = (value.shape()[0], value.shape()[1]);
                let extra = 64 * (factor - 1);
                let noise =
                    ndarray::ArrayD::from_shape_vec(vec![b, l, extra], pseudo_random(b * l * extra, 7)).unwrap();
                concatenate(Axis(2), &[value.view(), noise.view()]).unwrap()
            } else {
                value.clone()
            };
            if name != "noise_pred" {
                feed.push((name.as_str(), Input::F32(value)));
            }
        }
        let mut model = Model::load(&dir.path().join("graph/model.onnx")).unwrap();
        let got = &model.run(feed).unwrap()["noise_pred"];
        let want = &tensors.iter().find(|(n, _)| n == "noise_pred").unwrap().1;
        let err = relative_error(got.as_slice().unwrap(), want.as_slice().unwrap());
        eprintln!("{variant}: rel err {err:.2e}");
        assert!(err <= 1e-5, "{variant}: rel err {err:.3e}");
    }
}

fn fluxbuild(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn generate_and_package_refuse_image_conditioned_variants_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = fixtures().join("pipeline/dev");
    let transformer = pipeline.join("transformer");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(transformer.join("config.json")).unwrap()).unwrap();
    let cases = [
        (6, "flux1-fill-dev.safetensors", "fill", "mask"),
        (
            1,
            "flux1-dev-kontext_fp8_scaled.safetensors",
            "kontext",
            "reference image",
        ),
    ];
    for (factor, name, variant, needs) in cases {
        let file = dir.path().join(name);
        widened(
            &transformer.join("diffusion_pytorch_model.safetensors"),
            "x_embedder.weight",
            factor,
            &file,
        );
        config["in_channels"] = (64 * factor).into();
        let config_path = dir.path().join(format!("{variant}.json"));
        std::fs::write(&config_path, config.to_string()).unwrap();
        let models = dir.path().join(format!("models-{variant}"));
        let out = fluxbuild(&[
            "export",
            "--checkpoint",
            pipeline.to_str().unwrap(),
            "--transformer",
            file.to_str().unwrap(),
            "--config",
            &format!("transformer={}", config_path.display()),
            "--out",
            models.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(models.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["submodels"]["transformer"]["variant"], variant);

        let image = dir.path().join("x.png");
        let repo = dir.path().join(format!("repo-{variant}"));
        for args in [
            vec![
                "generate",
                "--models",
                models.to_str().unwrap(),
                "--prompt",
                "a cat",
                "--out",
                image.to_str().unwrap(),
            ],
            vec![
                "package",
                "--models",
                models.to_str().unwrap(),
                "--target",
                "cpu",
                "--out",
                repo.to_str().unwrap(),
            ],
        ] {
            let out = fluxbuild(&args);
            let message = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?}");
            assert!(
                message.contains(&format!("FLUX.1 {variant} needs image conditioning")) && message.contains(needs),
                "{args:?}: {message}"
            );
            assert!(!image.exists() && !repo.exists(), "{args:?}: nothing written");
        }
    }
}
