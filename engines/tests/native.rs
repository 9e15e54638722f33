//! What the native (TensorRT-RTX) builder refuses up front, before loading any library.
#![cfg(feature = "native-builder")]

use fluxbuild_engines::native::{check, header_version};
use fluxbuild_engines::rtx;
use fluxbuild_engines::settings::{BuildSettings, BuilderKind, ComputeCapability, Precision, Runtime};
use std::path::Path;

fn settings(precision: Precision) -> BuildSettings {
    BuildSettings::new(BuilderKind::Native, precision, None, None)
        .unwrap()
        .with_runtime(Runtime::TensorrtRtx, vec![])
        .unwrap()
}

fn err<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.unwrap_err())
}

#[test]
fn the_headers_are_tensorrt_rtx_1_7() {
    assert_eq!(header_version(), rtx::HEADERS);
}

#[test]
fn strong_typing_only_and_no_timing_cache() {
    assert!(check(&settings(Precision::Typed), None, &[]).is_ok());
    assert!(check(&settings(Precision::Fp32), None, &[]).is_ok());
    let e = err(check(&settings(Precision::Typed), Some(Path::new("t.cache")), &[]));
    assert!(e.contains("--timing-cache"), "{e}");
    for weak in [Precision::Fp16, Precision::Bf16, Precision::Fp8] {
        let e = err(check(&settings(weak), None, &[]));
        assert!(
            e.contains("always strongly typed") && e.contains("--precision typed"),
            "{e}"
        );
    }
}

#[test]
fn targets_are_tensorrt_rtx_compute_capabilities() {
    let base = || BuildSettings::new(BuilderKind::Native, Precision::Typed, None, None).unwrap();
    let cc = |s: &str| s.parse::<ComputeCapability>().unwrap();
    let s = base()
        .with_runtime(Runtime::TensorrtRtx, vec![cc("12.0"), cc("8.9"), cc("8.9")])
        .unwrap();
    assert_eq!(s.compute_capabilities, vec![cc("8.9"), cc("12.0")]);
    assert_eq!(s.rtx_targets(), vec![cc("8.9"), cc("12.0")]);
    assert_eq!(
        base().with_runtime(Runtime::TensorrtRtx, vec![]).unwrap().rtx_targets(),
        ComputeCapability::RTX_DEFAULT.to_vec()
    );
    let e = err(base().with_runtime(Runtime::TensorrtRtx, vec![cc("9.0")]));
    assert!(
        e.contains("--compute-capability 9.0") && e.contains("--runtime tensorrt"),
        "{e}"
    );
    let e = err(base().with_runtime(Runtime::Tensorrt, vec![cc("8.9")]));
    assert!(e.contains("--compute-capability is for --runtime tensorrt-rtx"), "{e}");
    let trtexec = BuildSettings::new(BuilderKind::Trtexec, Precision::Typed, None, None).unwrap();
    assert!(trtexec.with_runtime(Runtime::TensorrtRtx, vec![]).is_err());
    assert!("8.x".parse::<ComputeCapability>().is_err());
    assert_eq!(cc("sm89"), cc("8.9"));
}
