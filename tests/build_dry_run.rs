//! `fluxbuild build --dry-run`: the exact trtexec line per network for a given TensorRT release,
//! without TensorRT or a GPU, checked against what trtexec 10.x and 11.x parse.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn fluxbuild(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The tiny schnell pipeline exported in bf16 once for every test here.
fn graphs() -> &'static Path {
    static ONCE: OnceLock<PathBuf> = OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("build_dry_run");
        let _ = std::fs::remove_dir_all(&dir);
        let checkpoint = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipeline/schnell");
        let out = fluxbuild(&[
            "export",
            "--checkpoint",
            s(&checkpoint),
            "--out",
            s(&dir.join("graphs")),
            "--precision",
            "bf16",
        ]);
        assert!(out.status.success(), "export: {}", String::from_utf8_lossy(&out.stderr));
        dir.join("graphs")
    })
}

/// Runs a dry run with `--json`; returns each network's argv, or the failure's stderr.
fn dry_run(preset: &str, tensorrt: &str, extra: &[&str]) -> Result<Vec<(String, Vec<String>)>, String> {
    let engines = graphs().with_file_name(format!("engines-{preset}-{tensorrt}"));
    let mut args = vec![
        "build",
        "--models",
        s(graphs()),
        "--profile",
        preset,
        "--out",
        s(&engines),
        "--dry-run",
        "--tensorrt-version",
        tensorrt,
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = fluxbuild(&args);
    assert!(!engines.exists(), "a dry run wrote {}", engines.display());
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    // Exactly one JSON document on stdout.
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(report["engines"].as_str(), Some(s(&engines)));
    Ok(report["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let argv = c["argv"].as_array().unwrap();
            let argv: Vec<String> = argv.iter().map(|a| a.as_str().unwrap().to_string()).collect();
            (c["network"].as_str().unwrap().to_string(), argv)
        })
        .collect())
}

const WEAK_FLAGS: [&str; 5] = ["--fp16", "--bf16", "--fp8", "--int8", "--best"];

/// schnell-fast has two optimization profiles per network: trtexec takes them only as
/// `--profile=0 <triple> --profile=1 <triple>`.
#[test]
fn schnell_fast_lines_number_their_profiles() {
    for tensorrt in ["10.8", "10.13", "11.1"] {
        let commands = dry_run("schnell-fast", tensorrt, &[]).unwrap();
        let networks: Vec<&str> = commands.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(networks, ["clip", "t5", "transformer", "vae_decoder"]);
        for (network, argv) in &commands {
            assert_eq!(argv[0], "trtexec");
            assert!(argv[1].starts_with("--onnx=") && argv[1].ends_with(&format!("{network}/model.onnx")));
            assert!(argv[2].ends_with(&format!("engines-schnell-fast-{tensorrt}/{network}/model.plan")));
            for profile in 0..2 {
                let at = argv
                    .iter()
                    .position(|a| *a == format!("--profile={profile}"))
                    .unwrap_or_else(|| panic!("{network} ({tensorrt}): no --profile={profile} in {argv:?}"));
                let triple: Vec<&str> = argv[at + 1..at + 4]
                    .iter()
                    .map(|a| a.split('=').next().unwrap())
                    .collect();
                assert_eq!(
                    triple,
                    ["--minShapes", "--optShapes", "--maxShapes"],
                    "{network}: {argv:?}"
                );
            }
            assert_eq!(argv.iter().filter(|a| a.starts_with("--minShapes=")).count(), 2);
            assert!(!argv.iter().any(|a| a == "--profile=2"));
            assert_eq!(argv.last().unwrap(), "--skipInference");
        }
    }
}

#[test]
fn tensorrt_10_lines_are_strongly_typed_with_the_graphs_types() {
    for (network, argv) in dry_run("tiny-check", "10.13", &[]).unwrap() {
        assert!(argv.contains(&"--stronglyTyped".to_string()), "{network}: {argv:?}");
        assert!(
            !argv.iter().any(|a| a.starts_with("--profile")),
            "one profile needs no index"
        );
        assert!(
            !argv.iter().any(|a| WEAK_FLAGS.contains(&a.as_str())),
            "{network}: {argv:?}"
        );
    }
    let weak = dry_run("tiny-check", "10.13", &["--precision", "fp16"]).unwrap();
    assert!(weak.iter().all(|(_, argv)| argv.contains(&"--fp16".to_string())));
}

#[test]
fn tensorrt_11_lines_carry_no_precision_flags() {
    let settings = [vec![], vec!["--workspace", "2", "--builder-optimization-level", "4"]];
    for extra in settings {
        for (network, argv) in dry_run("schnell-fast", "11.1", &extra).unwrap() {
            let flags: Vec<&String> = argv.iter().filter(|a| WEAK_FLAGS.contains(&a.as_str())).collect();
            assert!(flags.is_empty(), "{network}: {flags:?} in {argv:?}");
            // Strong typing is trtexec 11's only mode; its --stronglyTyped is a deprecated no-op.
            assert!(!argv.contains(&"--stronglyTyped".to_string()));
            if !extra.is_empty() {
                assert!(argv.contains(&format!("--memPoolSize=workspace:{}B", 2u64 << 30)));
                assert!(argv.contains(&"--builderOptimizationLevel=4".to_string()));
            }
            assert!(!argv
                .iter()
                .any(|a| a.starts_with("--workspace") || a == "--explicitBatch"));
        }
    }
}

#[test]
fn tensorrt_11_refuses_weak_precisions_before_anything() {
    for weak in ["fp32", "fp16", "bf16"] {
        let error = dry_run("tiny-check", "11.0", &["--precision", weak]).unwrap_err();
        assert!(
            error.contains(&format!("--precision {weak}")) && error.contains("strongly typed networks only"),
            "{error}"
        );
    }
}

#[test]
fn fp8_needs_fp8_graphs() {
    let error = dry_run("tiny-check", "10.13", &["--precision", "fp8"]).unwrap_err();
    assert!(
        error.contains("none of the graphs") && error.contains("--precision fp8"),
        "{error}"
    );
}

#[test]
fn text_output_is_one_pasteable_line_per_network() {
    let engines = graphs().with_file_name("engines-text");
    let out = fluxbuild(&[
        "build",
        "--models",
        s(graphs()),
        "--profile",
        "tiny-check",
        "--out",
        s(&engines),
        "--dry-run",
        "--tensorrt-version",
        "10.13",
        "--only",
        "clip,vae_decoder",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines.iter().all(|l| l.starts_with("trtexec --onnx=")), "{text}");
    assert!(lines[1].contains("vae_decoder/model.onnx"));
}

#[test]
fn mistakes_are_refused_with_the_flag_named() {
    let engines = graphs().with_file_name("engines-mistakes");
    let base = [
        "build",
        "--models",
        s(graphs()),
        "--profile",
        "tiny-check",
        "--out",
        s(&engines),
    ];
    let run = |extra: &[&str]| {
        let out = fluxbuild(&[&base[..], extra].concat());
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&["--dry-run", "--builder", "native", "--tensorrt-version", "10.13"]).contains("--builder trtexec"));
    assert!(run(&["--dry-run", "--tensorrt-version", "9.3"]).contains("TensorRT 10 or newer"));
    assert!(run(&["--dry-run", "--tensorrt-version", "ten"]).contains("ten"));
    assert!(run(&["--tensorrt-version", "10.13"]).contains("--dry-run"));
    assert!(!engines.exists());
}

/// Without --tensorrt-version the version comes from the trtexec on PATH (its banner).
#[test]
fn the_version_comes_from_the_trtexec_found() {
    let bin = graphs().with_file_name("fake-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let trtexec = bin.join("trtexec");
    std::fs::write(
        &trtexec,
        "#!/bin/sh\necho '&&&& RUNNING TensorRT.trtexec [TensorRT v110100] [b12] # trtexec --help'\n",
    )
    .unwrap();
    std::fs::set_permissions(&trtexec, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args(["build", "--models", s(graphs()), "--profile", "tiny-check", "--out"])
        .arg(graphs().with_file_name("engines-found"))
        .args(["--dry-run", "--json", "--only", "t5"])
        .env("PATH", path)
        .env_remove("TENSORRT_LIB_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tensorrt"], "11.1.0");
    assert!(!report["commands"][0]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "--stronglyTyped"));
}
