//! The trtexec command line carries exactly the build settings and profile shapes.

use fluxbuild_engines::settings::{BuildSettings, BuilderKind, Precision};
use fluxbuild_engines::trtexec::{command_line, TrtexecJob};
use fluxbuild_profiles::{ModelDims, Network, Preset};
use std::path::Path;

fn settings(precision: Precision, workspace: Option<f64>, level: Option<u8>) -> BuildSettings {
    BuildSettings::new(BuilderKind::Trtexec, precision, workspace, level).unwrap()
}

#[test]
fn static_transformer_with_every_setting() {
    let preset = Preset::load("static-1024").unwrap();
    let dims = ModelDims {
        guidance: Some(true),
        ..ModelDims::FLUX
    };
    let profiles = preset.shapes(Network::Transformer, &dims);
    let s = settings(Precision::Typed, Some(16.0), Some(4));
    let job = TrtexecJob {
        onnx: Path::new("/m/transformer/model.onnx"),
        engine: Path::new("/e/transformer/model.plan.tmp-7"),
        profiles: &profiles,
        settings: &s,
        timing_cache: Some(Path::new("/cache/flux.timing")),
    };
    let shapes = |b: usize| {
        format!("hidden_states:{b}x4096x64,encoder_hidden_states:{b}x512x4096,pooled_projections:{b}x768,timestep:{b},img_ids:4096x3,txt_ids:512x3,guidance:{b}")
    };
    assert_eq!(
        command_line(&job),
        vec![
            "--onnx=/m/transformer/model.onnx".to_string(),
            "--saveEngine=/e/transformer/model.plan.tmp-7".into(),
            format!("--minShapes={}", shapes(1)),
            format!("--optShapes={}", shapes(1)),
            format!("--maxShapes={}", shapes(4)),
            "--stronglyTyped".into(),
            format!("--memPoolSize=workspace:{}B", 16u64 << 30),
            "--builderOptimizationLevel=4".into(),
            "--timingCacheFile=/cache/flux.timing".into(),
            "--skipInference".into(),
        ]
    );
}

#[test]
fn two_profiles_give_two_shape_triples_in_order() {
    let preset = Preset::load("schnell-fast").unwrap();
    let profiles = preset.shapes(Network::VaeDecoder, &ModelDims::FLUX);
    let s = settings(Precision::Fp16, None, None);
    let job = TrtexecJob {
        onnx: Path::new("v.onnx"),
        engine: Path::new("v.plan"),
        profiles: &profiles,
        settings: &s,
        timing_cache: None,
    };
    assert_eq!(
        command_line(&job),
        [
            "--onnx=v.onnx",
            "--saveEngine=v.plan",
            "--minShapes=latent:1x16x128x128",
            "--optShapes=latent:1x16x128x128",
            "--maxShapes=latent:1x16x128x128",
            "--minShapes=latent:2x16x128x128",
            "--optShapes=latent:2x16x128x128",
            "--maxShapes=latent:4x16x128x128",
            "--fp16",
            "--skipInference",
        ]
    );
}

#[test]
fn precision_flags() {
    let preset = Preset::load("static-1024").unwrap();
    let profiles = preset.shapes(Network::Clip, &ModelDims::FLUX);
    let flags = |p| {
        let s = settings(p, None, None);
        let job = TrtexecJob {
            onnx: Path::new("c.onnx"),
            engine: Path::new("c.plan"),
            profiles: &profiles,
            settings: &s,
            timing_cache: None,
        };
        command_line(&job)[5..].to_vec()
    };
    assert_eq!(flags(Precision::Typed), ["--stronglyTyped", "--skipInference"]);
    assert_eq!(flags(Precision::Fp32), ["--noTF32", "--skipInference"]);
    assert_eq!(flags(Precision::Bf16), ["--bf16", "--skipInference"]);
    assert_eq!(flags(Precision::Fp8), ["--fp16", "--fp8", "--skipInference"]);
}

#[test]
fn settings_are_validated() {
    assert!(BuildSettings::new(BuilderKind::Trtexec, Precision::Typed, None, Some(6)).is_err());
    assert!(BuildSettings::new(BuilderKind::Trtexec, Precision::Typed, Some(0.0), None).is_err());
    assert!(BuildSettings::new(BuilderKind::Trtexec, Precision::Typed, Some(f64::NAN), None).is_err());
    assert_eq!(
        BuildSettings::new(BuilderKind::Trtexec, Precision::Typed, Some(0.5), None)
            .unwrap()
            .workspace_bytes,
        Some(512 << 20)
    );
    assert_eq!("fp8".parse::<Precision>().unwrap(), Precision::Fp8);
    assert!("int8".parse::<Precision>().is_err());
    assert_eq!("trtexec".parse::<BuilderKind>().unwrap(), BuilderKind::Trtexec);
}

#[test]
fn trtexec_banner_version() {
    use fluxbuild_engines::toolchain::{parse_banner_version, Version};
    let banner = "&&&& RUNNING TensorRT.trtexec [TensorRT v101300] [b35] # trtexec --help";
    assert_eq!(
        parse_banner_version(banner),
        Some(Version {
            major: 10,
            minor: 13,
            patch: 0
        })
    );
    assert_eq!(parse_banner_version("no banner"), None);
}
