//! What the native (trtx) builder refuses up front, before loading any library.
#![cfg(feature = "native-builder")]

use fluxbuild_engines::native::{check, header_version};
use fluxbuild_engines::settings::{BuildSettings, BuilderKind, Precision};
use fluxbuild_engines::toolchain::{TensorRtLibs, Version};
use std::path::Path;

fn libs(major: u32, minor: u32) -> TensorRtLibs {
    let version = Version { major, minor, patch: 0 };
    TensorRtLibs {
        nvinfer: format!("/usr/lib/libnvinfer.so.{version}").into(),
        onnxparser: "/usr/lib/libnvonnxparser.so".into(),
        version,
    }
}

fn settings(precision: Precision) -> BuildSettings {
    BuildSettings::new(BuilderKind::Native, precision, None, None).unwrap()
}

fn err(r: anyhow::Result<()>) -> String {
    format!("{:#}", r.unwrap_err())
}

#[test]
fn the_headers_are_standard_tensorrt_11_4() {
    assert_eq!(
        header_version(),
        Version {
            major: 11,
            minor: 4,
            patch: 0
        }
    );
}

#[test]
fn only_a_compatible_tensorrt_and_strong_typing() {
    let h = header_version();
    assert!(check(&libs(h.major, h.minor), &settings(Precision::Typed), None).is_ok());
    assert!(check(&libs(h.major, h.minor + 1), &settings(Precision::Fp32), None).is_ok());
    let e = err(check(&libs(10, 13), &settings(Precision::Typed), None));
    assert!(
        e.contains("needs TensorRT 11.4 or a later 11.x; /usr/lib/libnvinfer.so.10.13.0 is TensorRT 10.13.0")
            && e.contains("--builder trtexec"),
        "{e}"
    );
    assert!(check(&libs(h.major, h.minor - 1), &settings(Precision::Typed), None).is_err());
    let e = err(check(
        &libs(h.major, h.minor),
        &settings(Precision::Typed),
        Some(Path::new("t.cache")),
    ));
    assert!(e.contains("does not expose TensorRT's ITimingCache"), "{e}");
    for weak in [Precision::Fp16, Precision::Bf16, Precision::Fp8] {
        let e = err(check(&libs(h.major, h.minor), &settings(weak), None));
        assert!(
            e.contains("always strongly typed") && e.contains("--precision typed"),
            "{e}"
        );
    }
}
