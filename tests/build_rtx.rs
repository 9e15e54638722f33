//! TensorRT-RTX is the judge: its real ONNX parser and builder (ahead of time, no GPU; `make setup`
//! fetches the libraries) build every network of both tiny fixtures, exported by fluxbuild in
//! fp32, fp16, bf16 and fp8, for tiny-check and a two-profile preset at tiny sizes. A failure
//! names the fixture, precision, preset, network and the node the parser rejects.

use fluxbuild_engines::build::{self, BuildRequest};
use fluxbuild_engines::rtx;
use fluxbuild_engines::settings::{BuildSettings, BuilderKind, ComputeCapability, Precision, Runtime};
use fluxbuild_profiles::Preset;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Instant;

const VARIANTS: [&str; 2] = ["dev", "schnell"];
const PRECISIONS: [&str; 4] = ["fp32", "fp16", "bf16", "fp8"];
/// schnell-fast's shape (profile 0 a static single prompt, profile 1 batches 2..4) at the
/// fixtures' reference size.
const TWO_PROFILES: &str = r#"description = "schnell-fast's two profiles at the tiny fixtures' size"
variant = "any"

[[profile]]
batch = 1
height = 48
width = 80
text_len = 32

[[profile]]
batch = { min = 2, opt = 2, max = 4 }
height = 48
width = 80
text_len = 32
"#;

fn fluxbuild(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args(args)
        .output()
        .unwrap()
}

/// `fluxbuild build --runtime tensorrt-rtx --models MODELS --profile tiny-check --out OUT EXTRA...`
fn build_rtx(models: &Path, out: &Path, extra: &[&str]) -> Output {
    let (models, out) = (models.to_str().unwrap(), out.to_str().unwrap());
    let mut args = vec![
        "build",
        "--runtime",
        "tensorrt-rtx",
        "--models",
        models,
        "--profile",
        "tiny-check",
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    fluxbuild(&args)
}

fn ok(o: Output, what: &str) -> Output {
    assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Every fixture exported once in every precision (fp8 calibrated on the fp32 export), shared
/// by the tests of this file: WORK/{dev,schnell}-{fp32,fp16,bf16,fp8}.
fn exports() -> &'static Path {
    static WORK: OnceLock<PathBuf> = OnceLock::new();
    WORK.get_or_init(|| {
        let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("build_rtx");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let prompts = work.join("prompts.txt");
        std::fs::write(&prompts, "a red fox in the snow\n").unwrap();
        for variant in VARIANTS {
            let checkpoint = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/pipeline")
                .join(variant);
            let models = |p: &str| work.join(format!("{variant}-{p}")).to_string_lossy().into_owned();
            let calibration = work.join(format!("{variant}-calibration.json"));
            for precision in PRECISIONS {
                let mut args = vec!["export", "--checkpoint", checkpoint.to_str().unwrap()];
                let out = models(precision);
                args.extend(["--out", &out, "--precision", precision]);
                if precision == "fp8" {
                    let fp32 = models("fp32");
                    let calib = [
                        "calibrate",
                        "--models",
                        &fp32,
                        "--prompts",
                        prompts.to_str().unwrap(),
                        "--steps",
                        "2",
                        "--height",
                        "48",
                        "--width",
                        "80",
                        "--out",
                        calibration.to_str().unwrap(),
                    ];
                    ok(fluxbuild(&calib), &format!("calibrating {variant}"));
                    args.extend(["--calibration", calibration.to_str().unwrap()]);
                }
                ok(fluxbuild(&args), &format!("exporting {variant} {precision}"));
            }
        }
        work
    })
}

fn settings(targets: Vec<ComputeCapability>) -> BuildSettings {
    BuildSettings::new(BuilderKind::Native, Precision::Typed, None, None)
        .unwrap()
        .with_runtime(Runtime::TensorrtRtx, targets)
        .unwrap()
}

/// FP8 runs on Ada (8.9) and Blackwell (12.x) only; the rest builds for TensorRT-RTX's defaults.
fn targets(precision: &str) -> Vec<ComputeCapability> {
    match precision {
        "fp8" => vec![ComputeCapability(89), ComputeCapability(120)],
        _ => vec![],
    }
}

#[test]
fn every_network_of_both_fixtures_builds_in_every_precision_and_preset() {
    let work = exports();
    let toolchain = rtx::probe().unwrap_or_else(|e| panic!("{e:#}\n(`make setup` fetches TensorRT-RTX)"));
    let two_profiles = work.join("two-profiles.toml");
    std::fs::write(&two_profiles, TWO_PROFILES).unwrap();
    let presets = [
        Preset::load("tiny-check").unwrap(),
        Preset::from_file(&two_profiles).unwrap(),
    ];
    assert_eq!(presets[1].profiles(fluxbuild_profiles::Network::Transformer).len(), 2);

    let started = Instant::now();
    let (mut built, mut failures) = (0, Vec::new());
    for variant in VARIANTS {
        for precision in PRECISIONS {
            for preset in &presets {
                let case = format!("{variant} {precision} preset {}", preset.name);
                let request = BuildRequest {
                    models: work.join(format!("{variant}-{precision}")),
                    out: work
                        .join("engines")
                        .join(format!("{variant}-{precision}-{}", preset.name)),
                    preset: preset.clone(),
                    settings: settings(targets(precision)),
                    timing_cache: None,
                    only: vec![],
                };
                let graphs = build::read_graphs(&request).unwrap();
                build::check_builder(&request, &toolchain, &graphs).unwrap();
                build::check_targets(&request, &graphs, &toolchain).unwrap();
                let plans = build::plan(&request, graphs, &toolchain, &BTreeMap::new()).unwrap();
                assert_eq!(plans.len(), 4, "{case}");
                for plan in &plans {
                    match build::build_one(&request, &toolchain, plan) {
                        Ok(record) => {
                            let path = request.out.join(&record.plan);
                            assert_eq!(std::fs::metadata(&path).unwrap().len(), record.plan_bytes, "{case}");
                            // A plan carries the weights: at least the graph's external data.
                            assert!(record.plan_bytes >= plan.weight_bytes, "{case} {}", plan.graph.network);
                            built += 1;
                        }
                        Err(e) => failures.push(format!("{case} {}: {e:#}", plan.graph.network)),
                    }
                }
                // Plans are a few MB each: keep only what the next case needs (nothing).
                let _ = std::fs::remove_dir_all(&request.out);
            }
        }
    }
    eprintln!(
        "TensorRT-RTX {}: {built} engines built in {:.1} s",
        toolchain.tensorrt,
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} builds failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert_eq!(built, VARIANTS.len() * PRECISIONS.len() * presets.len() * 4);
}

#[test]
fn the_cli_builds_four_plans_and_a_manifest_then_reuses_them() {
    let work = exports();
    let out = work.join("cli-engines");
    let models = work.join("dev-bf16");
    let json = |o: Output, what: &str| -> serde_json::Value { serde_json::from_slice(&ok(o, what).stdout).unwrap() };
    let first = json(build_rtx(&models, &out, &["--json"]), "first build");
    let built = first["built"].as_array().unwrap();
    assert_eq!(built.len(), 4, "{first}");
    assert!(built
        .iter()
        .all(|b| b["reused"] == false && b["plan_bytes"].as_u64().unwrap() > 0));
    for network in ["clip", "t5", "transformer", "vae_decoder"] {
        assert!(out.join(network).join("model.plan").is_file(), "{network}");
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["settings"]["runtime"], "tensorrt-rtx");
    assert_eq!(manifest["settings"]["tensorrt"], toolchain_version());
    assert_eq!(manifest["settings"]["compute_capability"], "8.0, 8.6, 8.9, 12.0, 12.1");
    assert_eq!(manifest["engines"].as_array().unwrap().len(), 4);
    assert_eq!(manifest["submodels"]["transformer"]["precision"], "bf16");

    let second = json(build_rtx(&models, &out, &["--json"]), "second build");
    for (a, b) in built.iter().zip(second["built"].as_array().unwrap()) {
        assert_eq!(b["reused"], true, "{second}");
        assert_eq!(a["key"], b["key"]);
    }
    // A plan changed since (one byte, same size) is not reused: built again, and recorded as it is.
    let plan = out.join("t5/model.plan");
    let mut bytes = std::fs::read(&plan).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&plan, bytes).unwrap();
    let repaired = json(build_rtx(&models, &out, &["--json"]), "build over a corrupted plan");
    let reused: Vec<bool> = repaired["built"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["reused"].as_bool().unwrap())
        .collect();
    assert_eq!(reused, [true, false, true, true], "{repaired}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["submodels"]["t5"]["plan_sha256"].as_str().unwrap(),
        fluxbuild_contract::files::sha256_file(&plan).unwrap()
    );
    // Other targets are other engines: a new key, built again.
    let ada = ["--json", "--compute-capability", "8.9", "--only", "clip"];
    let third = json(build_rtx(&models, &out, &ada), "8.9 build");
    assert_eq!(third["built"][0]["reused"], false);
    assert_ne!(third["built"][0]["key"], built[0]["key"]);
}

/// Weights copied over an export's with their old time kept (`cp -p`, `rsync -a`, `tar x`) are
/// hashed again, not taken for the ones the export manifest records: the plan is built anew.
#[test]
fn weights_copied_in_with_their_old_time_are_hashed_again() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let source = exports().join("dev-bf16");
    for file in walk(&source) {
        let to = models.join(file.strip_prefix(&source).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&file, &to).unwrap();
    }
    // The copy's manifest last, as an export writes it: its recorded digests are trusted.
    let manifest = models.join("manifest.json");
    std::fs::copy(source.join("manifest.json"), &manifest).unwrap();
    let out = dir.path().join("engines");
    let json = |o: Output, what: &str| -> serde_json::Value { serde_json::from_slice(&ok(o, what).stdout).unwrap() };
    let first = json(build_rtx(&models, &out, &["--json", "--only", "t5"]), "first build");
    let again = json(build_rtx(&models, &out, &["--json", "--only", "t5"]), "second build");
    assert_eq!(again["built"][0]["reused"], true, "{again}");

    // Other weights of the same size, with the time the old ones had.
    let data = models.join("t5/model.onnx.data");
    let old_time = std::fs::metadata(&data).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&data, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&data)
        .unwrap()
        .set_modified(old_time)
        .unwrap();
    let swapped = json(
        build_rtx(&models, &out, &["--json", "--only", "t5"]),
        "build after the swap",
    );
    assert_eq!(swapped["built"][0]["reused"], false, "{swapped}");
    assert_ne!(swapped["built"][0]["key"], first["built"][0]["key"]);

    // --only from another export keeps t5's engine from this one: said, naming both.
    let other = exports().join("dev-fp32");
    let mixed = ok(
        build_rtx(&other, &out, &["--only", "clip"]),
        "build from another export",
    );
    let stderr = String::from_utf8_lossy(&mixed.stderr);
    assert!(
        stderr.contains(&format!(
            "keeps engines built from another export than {}: t5 (",
            other.display()
        )),
        "{stderr}"
    );
}

fn toolchain_version() -> String {
    rtx::probe().unwrap().tensorrt.to_string()
}

#[test]
fn fp8_for_gpus_that_cannot_run_it_is_refused_before_any_work() {
    let work = exports();
    let out = work.join("fp8-refused");
    let models = work.join("schnell-fp8");
    let o = build_rtx(&models, &out, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("transformer/model.onnx: FP8 graph, but it would run on compute capability 8.0, 8.6 (TensorRT-RTX's default targets); FP8 needs 8.9 or newer")
            && stderr.contains("--compute-capability 8.9,12.0,12.1"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn without_tensorrt_rtx_the_error_names_the_wheel() {
    let work = exports();
    let empty = tempfile::tempdir().unwrap();
    let out = empty.path().join("engines");
    let o = Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args([
            "build",
            "--runtime",
            "tensorrt-rtx",
            "--profile",
            "tiny-check",
            "--out",
            out.to_str().unwrap(),
        ])
        .arg("--models")
        .arg(work.join("dev-fp16"))
        .env(rtx::DIR_VAR, empty.path())
        .current_dir(empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    for needle in [
        "no libtensorrt_rtx.so.* in FLUXBUILD_TENSORRT_RTX_DIR=",
        "nothing was written",
        "onnxruntime-ep-nv-tensorrt-rtx-cu13==0.5.0",
        "make setup",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?}: {stderr}");
    }
    assert!(!out.exists());
}

/// The first 64 bytes of each of the graph's 2-D initializers (the Linear weights, every one a
/// MatMul operand), from its external data.
fn matmul_weight_heads(models: &Path) -> std::collections::BTreeSet<Vec<u8>> {
    let folder = models.join("transformer");
    let model = fluxbuild_onnx::read_model(&folder.join("model.onnx")).unwrap();
    let data = std::fs::read(folder.join("model.onnx.data")).unwrap();
    model
        .graph
        .initializer
        .iter()
        .filter(|t| t.dims.len() == 2)
        .map(|t| {
            let offset = t
                .external_data
                .iter()
                .find(|e| e.key == "offset")
                .map_or(0, |e| e.value.parse().unwrap());
            data[offset..offset + 64].to_vec()
        })
        .collect()
}

/// How many of `heads` occur somewhere in `plan`.
fn found_in(plan: &[u8], heads: &std::collections::BTreeSet<Vec<u8>>) -> usize {
    let mut by_prefix: BTreeMap<&[u8], Vec<&[u8]>> = BTreeMap::new();
    for head in heads {
        by_prefix.entry(&head[..8]).or_default().push(head);
    }
    let mut found = std::collections::BTreeSet::new();
    for (at, window) in plan.windows(8).enumerate() {
        for head in by_prefix.get(window).into_iter().flatten() {
            if plan[at..].starts_with(head) {
                found.insert(*head);
            }
        }
    }
    found.len()
}

#[test]
fn weightless_plans_build_without_a_gpu_and_leave_the_matmul_weights_out() {
    let work = exports();
    let models = work.join("dev-bf16");
    let (full, out) = (work.join("full"), work.join("stripped"));
    ok(build_rtx(&models, &full, &["--only", "transformer"]), "the full plan");
    ok(
        build_rtx(&models, &out, &["--strip-weights", "--only", "transformer"]),
        "the weightless plan",
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let settings = &manifest["submodels"]["transformer"]["settings"];
    assert_eq!(settings["strip_weights"], true, "{manifest}");
    // The full plan holds the MatMul weights verbatim (bf16, as exported); the weightless one
    // holds none of them: they are refitted at deploy time.
    let heads = matmul_weight_heads(&models);
    let plan = |dir: &Path| std::fs::read(dir.join("transformer/model.plan")).unwrap();
    let (in_full, in_stripped) = (found_in(&plan(&full), &heads), found_in(&plan(&out), &heads));
    eprintln!(
        "MatMul weights: {} in the graph, {in_full} in the full plan, {in_stripped} in the weightless one",
        heads.len()
    );
    assert_eq!(
        in_full,
        heads.len(),
        "the full plan lacks MatMul weights: the check below would prove nothing"
    );
    assert_eq!(
        in_stripped,
        0,
        "the weightless plan holds {in_stripped} of {} MatMul weights",
        heads.len()
    );
    let o = fluxbuild(&[
        "build",
        "--models",
        models.to_str().unwrap(),
        "--profile",
        "tiny-check",
        "--out",
        out.to_str().unwrap(),
        "--strip-weights",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("use it with --runtime tensorrt-rtx"));
}

#[test]
fn weightless_fp8_plans_are_built_for_one_gpu_at_a_time() {
    let work = exports();
    let models = work.join("dev-fp8");
    let out = work.join("stripped-fp8");
    let o = build_rtx(&models, &out, &["--strip-weights", "--compute-capability", "8.9,12.0"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("--strip-weights with FP8 graphs") && stderr.contains("pass one --compute-capability"),
        "{stderr}"
    );
    assert!(!out.exists(), "a refused build wrote {}", out.display());
    ok(
        build_rtx(&models, &out, &["--strip-weights", "--compute-capability", "8.9"]),
        "weightless fp8 plans for 8.9",
    );
    for network in ["clip", "t5", "transformer", "vae_decoder"] {
        assert!(out.join(network).join("model.plan").is_file(), "no {network} plan");
    }
}

/// A truncated external data file is found for every graph before any engine is built: the
/// error names the file, its size and what the graph reads; no engines folder is written.
#[test]
fn a_truncated_graph_is_refused_before_any_engine_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    for entry in walk(&exports().join("dev-fp32")) {
        let to = models.join(entry.strip_prefix(exports().join("dev-fp32")).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &to).unwrap();
    }
    // The last network built: without the early check, three engines would be built first.
    let data = models.join("vae_decoder/model.onnx.data");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(1000)
        .unwrap();
    let out = dir.path().join("engines");
    let o = build_rtx(&models, &out, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    let expected = format!(
        "{}: 1000 bytes, but {} reads up to byte ",
        data.display(),
        models.join("vae_decoder/model.onnx").display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!out.exists(), "an engines folder was written");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
