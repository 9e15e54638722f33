//! `fluxbuild build --builder trtexec` end to end on this GPU-less machine, with stand-ins for the
//! two things it lacks: a driver library answering the CUDA driver calls fluxbuild makes (one
//! device of a chosen compute capability) and a `trtexec` that parses its command line as the
//! real one does where fluxbuild's lines once failed (repeated shape triples need `--profile=N`;
//! TensorRT 11 has no precision flags) and writes the line as its "plan". What the stand-ins
//! cannot show (that TensorRT builds these plans) is not claimed: see the README.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const FAKE_DRIVER: &str = r#"
int cuInit(unsigned f) { return 0; }
int cuDeviceGet(int *d, int i) { *d = 0; return 0; }
int cuDeviceGetAttribute(int *v, int attr, int d) { *v = attr == 75 ? MAJOR : MINOR; return 0; }
int cuDeviceGetName(char *name, int len, int d) {
    const char *n = "Stand-in GPU"; int i = 0;
    for (; n[i] && i < len - 1; i++) name[i] = n[i];
    name[i] = 0; return 0;
}
int cuDeviceTotalMem_v2(unsigned long *bytes, int d) { *bytes = 1UL << 34; return 0; }
int cuDriverGetVersion(int *v) { *v = 13000; return 0; }
"#;

const FAKE_TRTEXEC: &str = r#"#!/bin/bash
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v${FAKE_TENSORRT}] [b1] # trtexec $*"
[ "$1" = --help ] && exit 0
out=
for a in "$@"; do
  case $a in
    --saveEngine=*) out=${a#--saveEngine=} ;;
    --fp16|--bf16|--fp8|--int8|--best) [ "${FAKE_TENSORRT:0:2}" = 11 ] && { echo "Unknown option: $a"; exit 1; } ;;
  esac
done
if [ "$(printf '%s\n' "$@" | grep -c '^--minShapes=')" -gt 1 ] && ! printf '%s\n' "$@" | grep -q '^--profile='; then
  echo "Multiple --minShapes/--optShapes/--maxShapes without --profile are not allowed."; exit 1
fi
printf '%s\n' "$@" > "$out"
echo "&&&& PASSED TensorRT.trtexec"
"#;

fn work() -> &'static Path {
    static ONCE: OnceLock<PathBuf> = OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("build_trtexec");
        let _ = std::fs::remove_dir_all(&dir);
        for (cc, (major, minor)) in [("9.0", (9, 0)), ("8.6", (8, 6))] {
            let lib = dir.join(format!("driver-{cc}"));
            std::fs::create_dir_all(&lib).unwrap();
            std::fs::write(lib.join("driver.c"), FAKE_DRIVER).unwrap();
            let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
                .args([
                    "-shared",
                    "-fPIC",
                    &format!("-DMAJOR={major}"),
                    &format!("-DMINOR={minor}"),
                    "-o",
                ])
                .arg(lib.join("libcuda.so.1"))
                .arg(lib.join("driver.c"))
                .status()
                .unwrap();
            assert!(status.success(), "cc failed");
        }
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("trtexec"), FAKE_TRTEXEC).unwrap();
        std::fs::set_permissions(bin.join("trtexec"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let checkpoint = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipeline/schnell");
        let out = Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
            .args(["export", "--checkpoint"])
            .arg(checkpoint)
            .arg("--out")
            .arg(dir.join("graphs"))
            .args(["--precision", "bf16"])
            .output()
            .unwrap();
        assert!(out.status.success(), "export: {}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

/// `fluxbuild build` with the stand-ins: TensorRT `tensorrt` (e.g. 101300) on a GPU of `cc`.
fn build(tensorrt: &str, cc: &str, engines: &Path, extra: &[&str]) -> Output {
    let path = format!("{}:{}", work().join("bin").display(), std::env::var("PATH").unwrap());
    Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .arg("build")
        .arg("--models")
        .arg(work().join("graphs"))
        .arg("--out")
        .arg(engines)
        .args(extra)
        .env("PATH", path)
        .env("LD_LIBRARY_PATH", work().join(format!("driver-{cc}")))
        .env("FAKE_TENSORRT", tensorrt)
        .env_remove("TENSORRT_LIB_DIR")
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

#[test]
fn two_profile_preset_builds_with_numbered_profiles_and_is_reused() {
    let engines = work().join("engines-schnell-fast");
    let args = ["--profile", "schnell-fast", "--json"];
    let first = json(&build("101300", "9.0", &engines, &args));
    // No libnvinfer here: the builder is chosen as trtexec, whose banner gives the version.
    assert_eq!(first["toolchain"]["builder"], "trtexec");
    assert_eq!(first["toolchain"]["tensorrt"]["minor"], 13);
    assert_eq!(first["toolchain"]["gpu"]["compute_capability"], "9.0");
    let built = first["built"].as_array().unwrap();
    assert_eq!(built.len(), 4);
    for network in ["clip", "t5", "transformer", "vae_decoder"] {
        let argv = std::fs::read_to_string(engines.join(network).join("model.plan")).unwrap();
        let argv: Vec<&str> = argv.lines().collect();
        assert!(
            argv.contains(&"--profile=0") && argv.contains(&"--profile=1"),
            "{network}: {argv:?}"
        );
        assert!(argv.contains(&"--stronglyTyped"));
        assert!(
            argv[1].starts_with("--saveEngine=") && argv[1].contains(".tmp-"),
            "written under a temporary name"
        );
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(engines.join("manifest.json")).unwrap()).unwrap();
    let line = manifest["submodels"]["t5"]["command_line"].as_array().unwrap();
    assert!(
        line.iter().any(|a| a == "--profile=1"),
        "the manifest keeps the exact line"
    );
    let again = json(&build("101300", "9.0", &engines, &args));
    assert!(
        again["built"].as_array().unwrap().iter().all(|b| b["reused"] == true),
        "{again}"
    );
}

#[test]
fn tensorrt_11_builds_strongly_typed_and_refuses_weak_precisions_before_any_work() {
    let engines = work().join("engines-11");
    let first = json(&build(
        "110100",
        "9.0",
        &engines,
        &["--profile", "tiny-check", "--json"],
    ));
    assert_eq!(first["built"].as_array().unwrap().len(), 4);
    let argv = std::fs::read_to_string(engines.join("transformer/model.plan")).unwrap();
    assert!(!argv
        .lines()
        .any(|a| a.starts_with("--fp") || a == "--bf16" || a == "--stronglyTyped"));

    let refused = work().join("engines-11-bf16");
    let out = build(
        "110100",
        "9.0",
        &refused,
        &["--profile", "tiny-check", "--precision", "bf16"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("strongly typed networks only"),
        "{stderr}"
    );
    assert!(!refused.exists(), "nothing is written when the settings are refused");
}

#[test]
fn fp8_precision_over_graphs_without_fp8_is_refused_on_the_gpu_path_too() {
    let engines = work().join("engines-fp8");
    let out = build(
        "101300",
        "8.6",
        &engines,
        &["--profile", "tiny-check", "--precision", "fp8"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("none of the graphs"),
        "{stderr}"
    );
    assert!(!engines.exists());
}
