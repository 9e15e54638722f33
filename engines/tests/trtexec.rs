//! The trtexec command line carries exactly the build settings and profile shapes.

use fluxbuild_engines::settings::{BuildSettings, BuilderKind, Precision};
use fluxbuild_engines::toolchain::Version;
use fluxbuild_engines::trtexec::{command_line, TrtexecJob};
use fluxbuild_profiles::{ModelDims, Network, Preset};
use std::path::Path;

fn v(text: &str) -> Version {
    text.parse().unwrap()
}

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
        tensorrt: v("10.13"),
    };
    let shapes = |b: usize| {
        format!("hidden_states:{b}x4096x64,encoder_hidden_states:{b}x512x4096,pooled_projections:{b}x768,timestep:{b},img_ids:4096x3,txt_ids:512x3,guidance:{b}")
    };
    assert_eq!(
        command_line(&job).unwrap(),
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

/// trtexec 10.0 to 11.1 refuse repeated shape triples unless `--profile=N` precedes each one.
#[test]
fn two_profiles_give_two_numbered_shape_triples_in_order() {
    let preset = Preset::load("schnell-fast").unwrap();
    let profiles = preset.shapes(Network::VaeDecoder, &ModelDims::FLUX);
    let s = settings(Precision::Fp16, None, None);
    let job = TrtexecJob {
        onnx: Path::new("v.onnx"),
        engine: Path::new("v.plan"),
        profiles: &profiles,
        settings: &s,
        timing_cache: None,
        tensorrt: v("10.8"),
    };
    assert_eq!(
        command_line(&job).unwrap(),
        [
            "--onnx=v.onnx",
            "--saveEngine=v.plan",
            "--profile=0",
            "--minShapes=latent:1x16x128x128",
            "--optShapes=latent:1x16x128x128",
            "--maxShapes=latent:1x16x128x128",
            "--profile=1",
            "--minShapes=latent:2x16x128x128",
            "--optShapes=latent:2x16x128x128",
            "--maxShapes=latent:4x16x128x128",
            "--fp16",
            "--skipInference",
        ]
    );
}

fn precision_flags(precision: Precision, tensorrt: &str) -> anyhow::Result<Vec<String>> {
    let preset = Preset::load("static-1024").unwrap();
    let profiles = preset.shapes(Network::Clip, &ModelDims::FLUX);
    let s = settings(precision, None, None);
    let job = TrtexecJob {
        onnx: Path::new("c.onnx"),
        engine: Path::new("c.plan"),
        profiles: &profiles,
        settings: &s,
        timing_cache: None,
        tensorrt: v(tensorrt),
    };
    Ok(command_line(&job)?[5..].to_vec())
}

#[test]
fn precision_flags_of_tensorrt_10() {
    let flags = |p| precision_flags(p, "10.13").unwrap();
    assert_eq!(flags(Precision::Typed), ["--stronglyTyped", "--skipInference"]);
    assert_eq!(flags(Precision::Fp32), ["--noTF32", "--skipInference"]);
    assert_eq!(flags(Precision::Fp16), ["--fp16", "--skipInference"]);
    assert_eq!(flags(Precision::Bf16), ["--bf16", "--skipInference"]);
    // Explicit quantization is strongly typed: no --fp16/--fp8 beside it.
    assert_eq!(flags(Precision::Fp8), ["--stronglyTyped", "--skipInference"]);
}

/// TensorRT 11 is strongly typed only: trtexec 11 has no --fp16/--bf16/--fp8 (they would be
/// "Unknown option") and --stronglyTyped is a deprecated no-op.
#[test]
fn tensorrt_11_takes_no_precision_flags_and_refuses_weak_precisions() {
    for version in ["11.0", "11.1"] {
        assert_eq!(precision_flags(Precision::Typed, version).unwrap(), ["--skipInference"]);
        assert_eq!(precision_flags(Precision::Fp8, version).unwrap(), ["--skipInference"]);
        for weak in [Precision::Fp32, Precision::Fp16, Precision::Bf16] {
            let error = precision_flags(weak, version).unwrap_err().to_string();
            assert!(
                error.contains(&format!("--precision {}", weak.name())) && error.contains("strongly typed"),
                "{error}"
            );
            assert!(error.contains("--precision typed"), "says what to do instead: {error}");
        }
    }
}

#[test]
fn tensorrt_versions_parse() {
    assert_eq!(
        v("10.13"),
        Version {
            major: 10,
            minor: 13,
            patch: 0
        }
    );
    assert_eq!(v("11").minor, 0);
    assert_eq!(v("v11.1.2").patch, 2);
    for bad in ["", "ten", "10.x", "10.1.2.3"] {
        assert!(bad.parse::<Version>().is_err(), "{bad:?}");
    }
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
