//! Finding what an engine build needs on this machine — TensorRT's libraries (or `trtexec`)
//! and an NVIDIA GPU — before any work starts, and saying exactly what is missing.

use crate::settings::{BuilderKind, Runtime};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::ffi::{c_char, c_int};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    /// From TensorRT's integer encoding: major*10000 + minor*100 + patch (NV_TENSORRT_VERSION).
    pub fn from_int(v: u32) -> Version {
        Version {
            major: v / 10000,
            minor: (v / 100) % 100,
            patch: v % 100,
        }
    }
}

impl std::str::FromStr for Version {
    type Err = anyhow::Error;
    /// "10.13", "11.1.0" or "11" (a bare major means its .0 release).
    fn from_str(text: &str) -> Result<Version> {
        let parts: Vec<&str> = text.trim().trim_start_matches('v').split('.').collect();
        let numbers: Option<Vec<u32>> = parts.iter().map(|p| p.parse().ok()).collect();
        match numbers.as_deref() {
            Some([major, rest @ ..]) if rest.len() <= 2 => Ok(Version {
                major: *major,
                minor: rest.first().copied().unwrap_or(0),
                patch: rest.get(1).copied().unwrap_or(0),
            }),
            _ => bail!("TensorRT version {text:?}: expected MAJOR.MINOR such as 10.13 or 11.1"),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TensorRtLibs {
    pub nvinfer: PathBuf,
    pub onnxparser: PathBuf,
    pub version: Version,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    pub name: String,
    /// "major.minor", e.g. "9.0".
    pub compute_capability: String,
    pub memory_bytes: u64,
    /// CUDA version the driver supports (cuDriverGetVersion), e.g. "12.8".
    pub cuda_version: String,
}

/// What this machine builds engines with.
#[derive(Clone, Debug, Serialize)]
pub struct Toolchain {
    pub runtime: Runtime,
    pub builder: BuilderKind,
    /// The TensorRT that will build (trtexec's own for trtexec builds).
    pub tensorrt: Version,
    pub libs: Option<TensorRtLibs>,
    pub trtexec: Option<PathBuf>,
    /// The GPU that builds (standard TensorRT); none for TensorRT-RTX's ahead-of-time builds.
    pub gpu: Option<Gpu>,
}

const HOW_TO_GET: &str = "Engines are built on a GPU host with the NVIDIA driver and TensorRT 10 or newer: \
for example inside NVIDIA's TensorRT container (`docker run --gpus all nvcr.io/nvidia/tensorrt:<yy.mm>-py3`), \
which has the libraries in /usr/lib/x86_64-linux-gnu and trtexec in /usr/src/tensorrt/bin; or install TensorRT \
from developer.nvidia.com/tensorrt and set TENSORRT_LIB_DIR to its lib folder (for --builder trtexec, put its \
bin/trtexec on PATH). `fluxbuild build --dry-run --tensorrt-version X.Y` prints the trtexec lines without either.";

/// The TensorRT a `--dry-run` writes trtexec lines for when none is given: trtexec's banner,
/// else libnvinfer's version, else none.
pub fn local_tensorrt() -> Option<Version> {
    find_trtexec()
        .ok()
        .and_then(|t| trtexec_version(&t))
        .or_else(|| find_tensorrt_libs().ok().map(|l| l.version))
}

/// Probes everything `builder` needs; one error lists every missing piece.
pub fn probe(builder: BuilderKind) -> Result<Toolchain> {
    let mut missing = Vec::new();
    let libs = find_tensorrt_libs()
        .map_err(|e| missing.push(format!("TensorRT: {e}")))
        .ok();
    let trtexec = match builder {
        BuilderKind::Trtexec => find_trtexec().map_err(|e| missing.push(format!("trtexec: {e}"))).ok(),
        BuilderKind::Native => None,
    };
    let gpu = probe_gpu().map_err(|e| missing.push(format!("GPU: {e}"))).ok();
    // trtexec carries its own TensorRT; the libraries are then optional (its banner gives the version).
    let tensorrt = match (&trtexec, &libs) {
        (Some(t), _) => trtexec_version(t).or(libs.as_ref().map(|l| l.version)),
        (None, Some(l)) => Some(l.version),
        (None, None) => None,
    };
    if builder == BuilderKind::Trtexec && trtexec.is_some() {
        missing.retain(|m| !m.starts_with("TensorRT:") || tensorrt.is_none());
    }
    match (missing.is_empty(), tensorrt, gpu) {
        (true, Some(tensorrt), Some(gpu)) => Ok(Toolchain {
            runtime: Runtime::Tensorrt,
            builder,
            tensorrt,
            libs,
            trtexec,
            gpu: Some(gpu),
        }),
        _ => {
            if missing.is_empty() {
                missing.push("TensorRT: cannot tell the version of trtexec (no `[TensorRT vNNNNNN]` in `trtexec --help`) nor find libnvinfer".into());
            }
            bail!(
                "cannot build TensorRT engines on this machine ({} builder); nothing was written:\n  - {}\n{HOW_TO_GET}",
                builder.name(),
                missing.join("\n  - ")
            )
        }
    }
}

/// Where libnvinfer is looked for, in order.
pub fn library_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for var in ["TENSORRT_LIB_DIR", "LD_LIBRARY_PATH"] {
        if let Some(v) = std::env::var_os(var) {
            dirs.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
        }
    }
    for d in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/local/tensorrt/lib",
        "/opt/tensorrt/lib",
        "/usr/local/lib",
        "/usr/lib64",
        "/usr/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

/// The most specific versioned `STEM.N[.N.N]` in the first folder that has one
/// (`libnvinfer.so.10.13.0` over `libnvinfer.so.10`).
pub fn find_versioned(dirs: &[PathBuf], stem: &str) -> Option<PathBuf> {
    let prefix = format!("{stem}.");
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut best: Option<(Vec<u32>, PathBuf)> = None;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(version) = name.strip_prefix(&prefix) else {
                continue;
            };
            let Ok(parts) = version
                .split('.')
                .map(|p| p.parse::<u32>())
                .collect::<Result<Vec<u32>, _>>()
            else {
                continue;
            };
            if best.as_ref().is_none_or(|(b, _)| (parts.len(), &parts) > (b.len(), b)) {
                best = Some((parts, entry.path()));
            }
        }
        if let Some((_, path)) = best {
            return Some(path);
        }
    }
    None
}

fn describe_dirs(dirs: &[PathBuf]) -> String {
    let set = |v: &str| {
        if std::env::var_os(v).is_some() {
            ""
        } else {
            " (not set)"
        }
    };
    format!(
        "TENSORRT_LIB_DIR{}, LD_LIBRARY_PATH{}, {}",
        set("TENSORRT_LIB_DIR"),
        set("LD_LIBRARY_PATH"),
        dirs.iter()
            .rev()
            .take(7)
            .rev()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

pub fn find_tensorrt_libs() -> Result<TensorRtLibs> {
    let dirs = library_dirs();
    let Some(nvinfer) = find_versioned(&dirs, "libnvinfer.so") else {
        bail!("no libnvinfer.so.* in {}", describe_dirs(&dirs));
    };
    let version = Version::from_int(library_int(&nvinfer, b"getInferLibVersion")?);
    let parser_dirs: Vec<PathBuf> = nvinfer
        .parent()
        .map(Path::to_path_buf)
        .into_iter()
        .chain(dirs.iter().cloned())
        .collect();
    let Some(onnxparser) = find_versioned(&parser_dirs, "libnvonnxparser.so") else {
        bail!(
            "found {} (TensorRT {version}) but no libnvonnxparser.so.* next to it or in {}",
            nvinfer.display(),
            describe_dirs(&dirs)
        );
    };
    let parser_version = Version::from_int(library_int(&onnxparser, b"getNvOnnxParserVersion")?);
    if parser_version.major != version.major {
        bail!(
            "{} is TensorRT {version} but {} is {parser_version}",
            nvinfer.display(),
            onnxparser.display()
        );
    }
    Ok(TensorRtLibs {
        nvinfer,
        onnxparser,
        version,
    })
}

/// A TensorRT library's version from its `int f(void)` version getter.
pub fn library_version(path: &Path, symbol: &[u8]) -> Result<Version> {
    library_int(path, symbol).map(Version::from_int)
}

/// Calls an `int f(void)` exported by a shared library (TensorRT's version getters).
fn library_int(path: &Path, symbol: &[u8]) -> Result<u32> {
    // SAFETY: loading TensorRT runs its initializers, which have no preconditions; the symbol
    // is `int32_t f() noexcept` in NvInferRuntimeBase.h / NvOnnxParser.h.
    unsafe {
        let lib = libloading::Library::new(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot be loaded ({e})", path.display()))?;
        let f: libloading::Symbol<unsafe extern "C" fn() -> c_int> = lib
            .get(symbol)
            .map_err(|e| anyhow::anyhow!("{}: no {} ({e})", path.display(), String::from_utf8_lossy(symbol)))?;
        Ok(f() as u32)
    }
}

pub fn find_trtexec() -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(lib) = std::env::var_os("TENSORRT_LIB_DIR") {
        dirs.extend(std::env::split_paths(&lib).map(|l| l.join("../bin")));
    }
    dirs.push(PathBuf::from("/usr/src/tensorrt/bin"));
    dirs.iter()
        .map(|d| d.join("trtexec"))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("no trtexec on PATH, in TENSORRT_LIB_DIR/../bin or /usr/src/tensorrt/bin"))
}

/// TensorRT version from trtexec's banner, `[TensorRT v101300]`.
pub fn trtexec_version(trtexec: &Path) -> Option<Version> {
    let out = std::process::Command::new(trtexec).arg("--help").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    parse_banner_version(&text)
}

pub fn parse_banner_version(text: &str) -> Option<Version> {
    let start = text.find("[TensorRT v")? + "[TensorRT v".len();
    let digits: String = text[start..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok().map(Version::from_int)
}

/// The first CUDA device (as CUDA_VISIBLE_DEVICES shows it), through the driver API.
pub fn probe_gpu() -> Result<Gpu> {
    type Status = c_int;
    // SAFETY: the CUDA driver API's documented C signatures; out-pointers are valid locals.
    unsafe {
        let lib = libloading::Library::new("libcuda.so.1").map_err(|e| {
            anyhow::anyhow!(
                "cannot load the NVIDIA driver library libcuda.so.1 ({e}): no NVIDIA driver on this machine"
            )
        })?;
        let sym = |name: &[u8]| -> Result<*const ()> {
            let s: libloading::Symbol<*const ()> = lib
                .get(name)
                .map_err(|e| anyhow::anyhow!("libcuda.so.1 has no {} ({e})", String::from_utf8_lossy(name)))?;
            Ok(*s)
        };
        let cu_init: unsafe extern "C" fn(u32) -> Status = std::mem::transmute(sym(b"cuInit")?);
        let device_get: unsafe extern "C" fn(*mut c_int, c_int) -> Status = std::mem::transmute(sym(b"cuDeviceGet")?);
        let attribute: unsafe extern "C" fn(*mut c_int, c_int, c_int) -> Status =
            std::mem::transmute(sym(b"cuDeviceGetAttribute")?);
        let get_name: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> Status =
            std::mem::transmute(sym(b"cuDeviceGetName")?);
        let total_mem: unsafe extern "C" fn(*mut usize, c_int) -> Status =
            std::mem::transmute(sym(b"cuDeviceTotalMem_v2")?);
        let driver_version: unsafe extern "C" fn(*mut c_int) -> Status =
            std::mem::transmute(sym(b"cuDriverGetVersion")?);
        let check = |status: Status, what: &str| -> Result<()> {
            match status {
                0 => Ok(()),
                100 => bail!("{what}: no CUDA-capable device (CUDA_ERROR_NO_DEVICE; check CUDA_VISIBLE_DEVICES and `docker run --gpus all`)"),
                s => bail!("{what} failed with CUDA error {s}"),
            }
        };
        check(cu_init(0), "cuInit")?;
        let mut device = 0;
        check(device_get(&mut device, 0), "cuDeviceGet(0)")?;
        let (mut major, mut minor) = (0, 0);
        // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
        check(attribute(&mut major, 75, device), "cuDeviceGetAttribute")?;
        check(attribute(&mut minor, 76, device), "cuDeviceGetAttribute")?;
        let mut name = [0 as c_char; 256];
        check(
            get_name(name.as_mut_ptr(), name.len() as c_int, device),
            "cuDeviceGetName",
        )?;
        let mut memory = 0usize;
        check(total_mem(&mut memory, device), "cuDeviceTotalMem")?;
        let mut driver = 0;
        check(driver_version(&mut driver), "cuDriverGetVersion")?;
        Ok(Gpu {
            name: std::ffi::CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
            compute_capability: format!("{major}.{minor}"),
            memory_bytes: memory as u64,
            cuda_version: format!("{}.{}", driver / 1000, (driver % 1000) / 10),
        })
    }
}
