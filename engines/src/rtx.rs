//! Finding TensorRT-RTX (`libtensorrt_rtx.so.1.7.1`, `libtensorrt_onnxparser_rtx.so.1.7.1`) on
//! this machine. It comes from the PyPI wheel `onnxruntime-ep-nv-tensorrt-rtx-cu13`
//! (scripts/fetch-tensorrt-rtx.sh puts it in .cache/tensorrt-rtx); it needs no GPU to build.

use crate::settings::{BuilderKind, Runtime};
use crate::toolchain::{find_versioned, library_version, TensorRtLibs, Toolchain, Version};
use anyhow::{bail, Result};
use std::path::PathBuf;

/// The environment variable naming the folder with the TensorRT-RTX libraries.
pub const DIR_VAR: &str = "FLUXBUILD_TENSORRT_RTX_DIR";
/// Where `make setup` puts them, relative to the working directory.
pub const CACHE_DIR: &str = ".cache/tensorrt-rtx";
/// The TensorRT-RTX the native builder is compiled against (trtx 0.9.1's default headers).
pub const HEADERS: Version = Version {
    major: 1,
    minor: 7,
    patch: 1,
};
const WHEEL: &str = "onnxruntime-ep-nv-tensorrt-rtx-cu13==0.5.0";

/// Folders searched, in order: $FLUXBUILD_TENSORRT_RTX_DIR, then ./.cache/tensorrt-rtx.
pub fn library_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os(DIR_VAR)
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    dirs.push(PathBuf::from(CACHE_DIR));
    dirs
}

/// The TensorRT-RTX toolchain: both libraries, of the version the headers describe. No GPU.
pub fn probe() -> Result<Toolchain> {
    let dirs = library_dirs();
    let shown = format!(
        "{DIR_VAR}{} and {CACHE_DIR}",
        match std::env::var_os(DIR_VAR) {
            Some(v) => format!("={}", v.to_string_lossy()),
            None => " (not set)".into(),
        }
    );
    let how = format!(
        "TensorRT-RTX comes from the PyPI wheel {WHEEL}: run `make setup` (scripts/fetch-tensorrt-rtx.sh) or \
         unpack libtensorrt_rtx.so.{HEADERS} and libtensorrt_onnxparser_rtx.so.{HEADERS} from the wheel into a \
         folder and set {DIR_VAR} to it"
    );
    let Some(builder) = find_versioned(&dirs, "libtensorrt_rtx.so") else {
        bail!("cannot build TensorRT-RTX engines: no libtensorrt_rtx.so.* in {shown}; nothing was written.\n{how}");
    };
    let folder: Vec<PathBuf> = builder.parent().map(PathBuf::from).into_iter().collect();
    let Some(parser) = find_versioned(&folder, "libtensorrt_onnxparser_rtx.so") else {
        bail!(
            "cannot build TensorRT-RTX engines: found {} but no libtensorrt_onnxparser_rtx.so.* next to it; nothing was written.\n{how}",
            builder.display()
        );
    };
    let version = library_version(&builder, b"getInferLibVersion")?;
    // The C++ API is inline wrappers over versioned vtables: only the release the headers
    // describe (or a later patch of it) lays them out the same way.
    if (version.major, version.minor) != (HEADERS.major, HEADERS.minor) {
        bail!(
            "{} is TensorRT-RTX {version}, but fluxbuild's builder is compiled against TensorRT-RTX {}.{} (trtx 0.9.1).\n{how}",
            builder.display(),
            HEADERS.major,
            HEADERS.minor
        );
    }
    Ok(Toolchain {
        runtime: Runtime::TensorrtRtx,
        builder: BuilderKind::Native,
        tensorrt: version,
        libs: Some(TensorRtLibs {
            nvinfer: builder,
            onnxparser: parser,
            version,
        }),
        trtexec: None,
        gpu: None,
    })
}
