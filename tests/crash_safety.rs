//! Output folders survive kill -9 at every commit step, a full disk and careless `--out`s.
//!
//! `FLUXBUILD_CRASH_AT=<point>` makes fluxbuild SIGKILL itself at that point (exactly what
//! `kill -9` does: no destructor runs). After every kill the output folder must hold the previous
//! result or the new one, complete: every file its manifest lists, with that size and sha256, and
//! nothing else. The next run (or `fluxbuild clean`) leaves no staging behind.

mod common;
use fluxbuild::export::list_files;
use fluxbuild_contract::files::sha256_file;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pipeline() -> PathBuf {
    common::fixtures().join("pipeline/dev")
}

fn fluxbuild(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fluxbuild"));
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn ok(output: Output) -> Output {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn export(out: &Path, clip_precision: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    export_from(&pipeline(), out, clip_precision, extra, env)
}

fn export_from(pipeline: &Path, out: &Path, clip_precision: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let precision = format!("clip={clip_precision}");
    let mut args = vec![
        "export",
        "--checkpoint",
        pipeline.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--precision",
        &precision,
    ];
    args.extend_from_slice(extra);
    fluxbuild(&args, env)
}

fn package_cpu(models: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec!["package", "--models", models.to_str().unwrap(), "--target", "cpu"];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend_from_slice(extra);
    fluxbuild(&args, env)
}

/// Which result `out` holds (`label` reads it from the manifest), after checking it is complete:
/// every listed file there with its size and sha256, and no top-level entry the manifest does not own.
fn complete_state(out: &Path, label: fn(&serde_json::Value) -> String) -> String {
    let text = std::fs::read_to_string(out.join("manifest.json"))
        .unwrap_or_else(|e| panic!("{}: no manifest ({e})", out.display()));
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut owned = vec!["manifest.json".to_string()];
    for file in manifest["files"].as_array().unwrap() {
        let rel = file["path"].as_str().unwrap();
        let path = out.join(rel);
        let bytes = std::fs::metadata(&path).unwrap_or_else(|_| panic!("{} missing", path.display()));
        assert_eq!(bytes.len(), file["bytes"].as_u64().unwrap(), "{rel}");
        assert_eq!(sha256_file(&path).unwrap(), file["sha256"].as_str().unwrap(), "{rel}");
        owned.push(rel.split('/').next().unwrap().to_string());
    }
    for entry in std::fs::read_dir(out).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            owned.contains(&name),
            "{}: {name} is not in the manifest",
            out.display()
        );
    }
    label(&manifest)
}

fn export_label(manifest: &serde_json::Value) -> String {
    manifest["settings"]["precision"]["clip"].as_str().unwrap().to_string()
}

fn package_label(manifest: &serde_json::Value) -> String {
    manifest["settings"]["max_batch"].to_string()
}

/// Leftovers of runs beside (and inside) `out`.
fn leftovers(out: &Path) -> Vec<String> {
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.contains(".fluxbuild-") || n.starts_with(".fluxbuild"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found = names(out.parent().unwrap());
    found.extend(names(out));
    found
}

/// A crash point, and whether the filesystem's atomic exchange is turned off (the two-rename
/// fallback, whose crash between the renames the next run rolls back).
type Point = (&'static str, bool);

const EXPORT_POINTS: [Point; 12] = [
    ("staging-created", false),
    ("export-wrote-clip", false),
    ("export-wrote-t5", false),
    ("export-wrote-transformer", false),
    ("export-wrote-vae_decoder", false),
    ("export-before-manifest", false),
    ("export-manifest-written", false),
    ("before-swap", false),
    ("after-swap", false),
    ("committed", false),
    ("between-renames", true),
    ("after-swap", true),
];

const PACKAGE_POINTS: [Point; 12] = [
    ("staging-created", false),
    ("package-wrote-clip", false),
    ("package-wrote-t5", false),
    ("package-wrote-transformer", false),
    ("package-wrote-vae_decoder", false),
    ("package-wrote-flux", false),
    ("package-before-manifest", false),
    ("package-manifest-written", false),
    ("before-swap", false),
    ("after-swap", false),
    ("committed", false),
    ("between-renames", true),
];

/// Writes `out` as variant `.1`, with the environment `.2`.
type Run<'a> = dyn Fn(&Path, &str, &[(&str, &str)]) -> Output + 'a;

/// Kills a run at each point and checks the folder, then recovers (by `clean` or by the next run,
/// alternately) and checks that nothing is left over. `run(out, variant, env)` writes `variant`.
fn kill_at_every_point(
    out: &Path,
    points: &[Point],
    variants: [&str; 2],
    label: fn(&serde_json::Value) -> String,
    run: &Run,
) -> usize {
    let mut kills = 0;
    for (i, &(point, no_exchange)) in points.iter().enumerate() {
        let old = complete_state(out, label);
        let new = if old == variants[0] { variants[1] } else { variants[0] };
        let mut env = vec![("FLUXBUILD_CRASH_AT", point)];
        if no_exchange {
            env.push(("FLUXBUILD_NO_EXCHANGE", "1"));
        }
        let output = run(out, new, &env);
        assert_eq!(
            output.status.signal(),
            Some(9),
            "{point}: not killed there: {}",
            stderr(&output)
        );
        kills += 1;
        if point == "between-renames" {
            // The fallback's one window: out is aside until the next run puts it back.
            assert!(!out.exists(), "{point}");
        } else {
            let now = complete_state(out, label);
            assert!(now == old || now == new, "{point}: {now}");
            let committed = matches!(point, "after-swap" | "committed");
            assert_eq!(now, if committed { new } else { old.as_str() }, "{point}");
        }
        if i % 2 == 0 {
            ok(fluxbuild(&["clean", out.to_str().unwrap()], &[]));
            let after = complete_state(out, label);
            assert!(after == old || after == new, "{point}: after clean {after}");
        } else {
            ok(run(out, &old, &[]));
            assert_eq!(complete_state(out, label), old, "{point}: the next run");
        }
        assert!(leftovers(out).is_empty(), "{point}: {:?}", leftovers(out));
    }
    kills
}

#[test]
fn export_and_package_killed_at_every_commit_step_leave_old_or_new_complete() {
    let dir = tempfile::tempdir().unwrap();
    let graphs = dir.path().join("graphs");
    ok(export(&graphs, "fp32", &[], &[]));
    let run_export = |out: &Path, precision: &str, env: &[(&str, &str)]| export(out, precision, &["--force"], env);
    let mut kills = kill_at_every_point(&graphs, &EXPORT_POINTS, ["fp32", "fp16"], export_label, &run_export);
    // Package from the fp32 graphs (the cpu target needs them).
    ok(export(&graphs, "fp32", &["--force"], &[]));
    let repo = dir.path().join("repo");
    let package = |out: &Path, batch: &str, env: &[(&str, &str)]| {
        package_cpu(&graphs, out, &["--max-batch", batch, "--force"], env)
    };
    ok(package(&repo, "2", &[]));
    kills += kill_at_every_point(&repo, &PACKAGE_POINTS, ["2", "3"], package_label, &package);
    eprintln!("{kills} kill -9 points checked");
    assert!(kills >= 20);
}

#[test]
fn a_full_disk_leaves_the_previous_export_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    // A 24 MiB tmpfs: the 15 MB export fits once, not twice. Where mounting is not allowed (not
    // root), a 20 MB file size limit (RLIMIT_FSIZE) makes the same writes fail instead.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs", small.to_str().unwrap()])
        .output()
        .is_ok_and(|o| o.status.success());
    let out = small.join("graphs");
    ok(export(&out, "fp32", &[], &[]));
    let before = complete_state(&out, export_label);
    let failed = if mounted {
        export(&out, "fp16", &["--force"], &[])
    } else {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fluxbuild"));
        let precision = "clip=fp16";
        command.args(["export", "--checkpoint", pipeline().to_str().unwrap(), "--out"]);
        command.args([out.to_str().unwrap(), "--precision", precision, "--force"]);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let limit = libc::rlimit {
                    rlim_cur: 1 << 20,
                    rlim_max: 1 << 20,
                };
                libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
                Ok(())
            });
        }
        command.output().unwrap()
    };
    let message = stderr(&failed);
    eprintln!(
        "disk full by {}: {message}",
        if mounted { "tmpfs" } else { "RLIMIT_FSIZE" }
    );
    assert_eq!(failed.status.code(), Some(1), "{message}");
    assert!(
        message.contains("No space left on device") || message.contains("File too large"),
        "{message}"
    );
    assert_eq!(complete_state(&out, export_label), before);
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    if mounted {
        let _ = Command::new("umount").arg(&small).status();
    }
}

#[test]
fn out_is_never_an_input_nor_a_folder_fluxbuild_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    // A copy of the pipeline, the user's source.
    let source = dir.path().join("models/flux");
    for file in list_files(&pipeline()).unwrap() {
        let target = source.join(file.strip_prefix(pipeline()).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
    let before = tree_digest(&source);
    let cases: [(PathBuf, &str); 3] = [
        (source.clone(), "is the input"),
        (source.join("transformer"), "lies inside the input"),
        (dir.path().join("models"), "contains the input"),
    ];
    for (out, want) in cases {
        let output = export_from(&source, &out, "fp32", &["--force"], &[]);
        assert!(
            !output.status.success() && stderr(&output).contains(want),
            "{}: {}",
            out.display(),
            stderr(&output)
        );
    }
    assert_eq!(tree_digest(&source), before, "the source changed");

    // A folder with someone else's files: refused, with or without --force.
    let theirs = dir.path().join("theirs");
    std::fs::create_dir_all(theirs.join("transformer")).unwrap();
    std::fs::write(theirs.join("transformer/notes.txt"), b"mine").unwrap();
    for extra in [&[][..], &["--force"][..]] {
        let output = export(&theirs, "fp32", extra, &[]);
        assert!(
            stderr(&output).contains("not a fluxbuild output"),
            "{}",
            stderr(&output)
        );
    }
    assert_eq!(std::fs::read(theirs.join("transformer/notes.txt")).unwrap(), b"mine");

    // An earlier export: refused without --force; a stray file in it stops --force too.
    let graphs = dir.path().join("graphs");
    ok(export(&graphs, "fp32", &[], &[]));
    let again = export(&graphs, "fp16", &[], &[]);
    assert!(
        stderr(&again).contains("pass --force to replace it"),
        "{}",
        stderr(&again)
    );
    std::fs::write(graphs.join("README.txt"), b"notes").unwrap();
    let forced = export(&graphs, "fp16", &["--force"], &[]);
    assert!(
        stderr(&forced).contains("fluxbuild did not write (README.txt)"),
        "{}",
        stderr(&forced)
    );
    std::fs::remove_file(graphs.join("README.txt")).unwrap();
    assert_eq!(complete_state(&graphs, export_label), "fp32");

    // --update replaces only what this run exports, and says so in the manifest.
    let only_clip = export(&graphs, "fp16", &["--update", "--only", "clip"], &[]);
    ok(only_clip);
    assert_eq!(complete_state(&graphs, export_label), "fp16");
    assert!(graphs.join("transformer/model.onnx").is_file());

    // Package behaves the same way.
    let repo = dir.path().join("repo");
    let package = |extra: &[&str]| package_cpu(&graphs, &repo, extra, &[]);
    ok(package(&[]));
    assert!(stderr(&package(&[])).contains("pass --force to replace it"));
    ok(package(&["--force"]));
    // Another stage's result: refused by its kind, with or without --force.
    for extra in [&[][..], &["--force"][..]] {
        let output = export(&repo, "fp32", extra, &[]);
        assert!(
            stderr(&output).contains("holds the result of `fluxbuild package`, not of `fluxbuild export`"),
            "{}",
            stderr(&output)
        );
    }
    let into_models = package_cpu(&graphs, &graphs.join("repo"), &[], &[]);
    assert!(
        stderr(&into_models).contains("lies inside the input"),
        "{}",
        stderr(&into_models)
    );
    // And build, whose --out holds earlier engines: checked before their records are read.
    for (out, expected) in [
        (&graphs, "is the input".to_string()),
        (
            &repo,
            "holds the result of `fluxbuild package`, not of `fluxbuild build`".into(),
        ),
    ] {
        let args = [
            "build",
            "--runtime",
            "tensorrt-rtx",
            "--models",
            graphs.to_str().unwrap(),
        ];
        let output = fluxbuild(
            &[&args[..], &["--profile", "tiny-check", "--out", out.to_str().unwrap()]].concat(),
            &[],
        );
        assert!(stderr(&output).contains(&expected), "{}", stderr(&output));
    }
}

/// sha256 of every file under `dir`, with its path.
fn tree_digest(dir: &Path) -> Vec<(PathBuf, String)> {
    list_files(dir)
        .unwrap()
        .into_iter()
        .map(|f| {
            let sha = sha256_file(&f).unwrap();
            (f, sha)
        })
        .collect()
}

/// A stand-in for the GPU build host, for testing how `build` commits (no engine is real): a
/// libcuda.so.1 answering the driver calls fluxbuild makes, and a `trtexec` that writes its
/// command line as the "plan". Returns the environment that puts them first.
fn stand_in_toolchain(dir: &Path) -> Vec<(String, String)> {
    let lib = dir.join("lib");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let source = dir.join("cuda.c");
    std::fs::write(
        &source,
        r#"#include <stddef.h>
#include <string.h>
int cuInit(unsigned flags) { return 0; }
int cuDeviceGet(int *device, int ordinal) { *device = 0; return 0; }
int cuDeviceGetAttribute(int *value, int attribute, int device) { *value = attribute == 75 ? 8 : 9; return 0; }
int cuDeviceGetName(char *name, int len, int device) { strncpy(name, "stand-in GPU", len); return 0; }
int cuDeviceTotalMem_v2(size_t *bytes, int device) { *bytes = (size_t)80 << 30; return 0; }
int cuDriverGetVersion(int *version) { *version = 12080; return 0; }
"#,
    )
    .unwrap();
    let cc = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(lib.join("libcuda.so.1"))
        .arg(&source)
        .status()
        .unwrap();
    assert!(cc.success());
    let trtexec = bin.join("trtexec");
    std::fs::write(
        &trtexec,
        "#!/bin/sh\n[ \"$1\" = --help ] && { echo '[TensorRT v100800]'; exit 0; }\n\
         for a in \"$@\"; do case $a in --saveEngine=*) printf '%s\\n' \"$*\" > \"${a#--saveEngine=}\";; esac; done\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&trtexec, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    vec![
        ("LD_LIBRARY_PATH".into(), lib.display().to_string()),
        ("PATH".into(), path),
    ]
}

fn build_label(manifest: &serde_json::Value) -> String {
    manifest["settings"]["build"]["optimization_level"].to_string()
}

/// The networks in build order.
const NETWORKS: [&str; 4] = ["clip", "t5", "transformer", "vae_decoder"];

/// Each network's engine record in `engines`' manifest, in build order (None while a commit
/// without atomic exchange has the folder renamed away).
fn engine_records(engines: &Path) -> Option<Vec<serde_json::Value>> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(engines.join("manifest.json")).ok()?).unwrap();
    Some(NETWORKS.iter().map(|n| manifest["submodels"][n].clone()).collect())
}

/// The optimization level of each network's engine, in build order.
fn engine_levels(engines: &Path) -> Vec<String> {
    levels(&engine_records(engines).expect("an engines manifest"))
}

fn levels(records: &[serde_json::Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["settings"]["optimization_level"].to_string())
        .collect()
}

/// The seconds each network's engine took to build, in build order.
fn build_seconds(engines: &Path) -> Vec<f64> {
    let records = engine_records(engines).expect("an engines manifest");
    records.iter().map(|r| r["build_seconds"].as_f64().unwrap()).collect()
}

/// Waits until the build in `child` has committed its first `networks` engines at `level`.
fn wait_for_commits(engines: &Path, child: &mut std::process::Child, level: &str, networks: usize, what: &str) {
    let committed = || engine_records(engines).is_some_and(|r| levels(&r[..networks]).iter().all(|l| l == level));
    while !committed() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{what}: the build ended before it got there"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `build(level, crash point)`: `fluxbuild build` writing engines at that optimization level.
type Build<'a> = dyn Fn(&str, Option<&str>) -> Output + 'a;

/// Kills `build` at every commit step (levels 1 and 2 alternating) and checks that the engines
/// folder is complete each time, the networks before the kill from the killed run and the rest
/// from the previous one (engines are committed one by one), and that the next run completes it
/// and leaves no staging. Returns the kills made.
fn kill_build_at_every_point(engines: &Path, build: &Build) -> usize {
    ok(build("1", None));
    assert_eq!(complete_state(engines, build_label), "1");
    // Each crash point, and how many engines of the killed run were committed before it.
    let points = [
        ("staging-created", 0),
        ("build-staged-clip", 0),
        ("build-staged-t5", 1),
        ("build-staged-transformer", 2),
        ("build-staged-vae_decoder", 3),
        ("before-swap", 0),
        ("after-swap", 1),
        ("committed", 1),
    ];
    for (i, (point, committed)) in points.into_iter().enumerate() {
        let (old, level) = if i % 2 == 0 { ("1", "2") } else { ("2", "1") };
        let output = build(level, Some(point));
        assert_eq!(
            output.status.signal(),
            Some(9),
            "{point}: not killed there: {}",
            stderr(&output)
        );
        complete_state(engines, build_label);
        let expected: Vec<String> = (0..4)
            .map(|k| if k < committed { level } else { old }.to_string())
            .collect();
        assert_eq!(engine_levels(engines), expected, "{point}");
        ok(build(level, None));
        assert_eq!(complete_state(engines, build_label), level, "{point}: the next run");
        assert!(leftovers(engines).is_empty(), "{point}: {:?}", leftovers(engines));
    }
    points.len()
}

#[test]
fn build_killed_at_every_commit_step_leaves_a_complete_engines_folder() {
    let dir = tempfile::tempdir().unwrap();
    let graphs = dir.path().join("graphs");
    ok(export(&graphs, "fp32", &[], &[]));
    let toolchain = stand_in_toolchain(dir.path());
    let engines = dir.path().join("engines");
    let build = |level: &str, crash: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fluxbuild"));
        command.args(["build", "--models", graphs.to_str().unwrap(), "--profile", "tiny-check"]);
        command.args(["--out", engines.to_str().unwrap(), "--builder", "trtexec"]);
        command.args(["--builder-optimization-level", level]);
        command
            .envs(toolchain.iter().map(|(k, v)| (k, v)))
            .env_remove("TENSORRT_LIB_DIR");
        if let Some(point) = crash {
            command.env("FLUXBUILD_CRASH_AT", point);
        }
        command.output().unwrap()
    };
    assert_eq!(kill_build_at_every_point(&engines, &build), 8);
}

/// The same with the real TensorRT-RTX builder (ahead of time, no GPU: real plans), plus kill -9
/// from outside at moments spread over a build, wherever TensorRT happens to be then.
#[test]
fn tensorrt_rtx_build_killed_at_every_step_and_mid_build_leaves_a_complete_engines_folder() {
    let dir = tempfile::tempdir().unwrap();
    let graphs = dir.path().join("graphs");
    ok(export(&graphs, "fp32", &[], &[]));
    let engines = dir.path().join("engines");
    let rtx_dir = std::env::var_os("FLUXBUILD_TENSORRT_RTX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/tensorrt-rtx"));
    let command = |level: &str, crash: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fluxbuild"));
        command.args([
            "build",
            "--runtime",
            "tensorrt-rtx",
            "--models",
            graphs.to_str().unwrap(),
        ]);
        command.args(["--profile", "tiny-check", "--out", engines.to_str().unwrap()]);
        command.args(["--builder-optimization-level", level]);
        command.env("FLUXBUILD_TENSORRT_RTX_DIR", &rtx_dir);
        if let Some(point) = crash {
            command.env("FLUXBUILD_CRASH_AT", point);
        }
        command
    };
    let build = |level: &str, crash: Option<&str>| command(level, crash).output().unwrap();
    let started = std::time::Instant::now();
    let kills = kill_build_at_every_point(&engines, &build);
    assert_eq!(kills, 8);
    let plan = engines.join("clip/model.plan");
    assert!(
        std::fs::metadata(&plan).unwrap().len() > 1000,
        "{}: a real plan",
        plan.display()
    );

    // A whole build at level 2 (the loop above ended at level 1: nothing is reusable), whose
    // per-network times place the kills below.
    assert_eq!(engine_levels(&engines), ["1", "1", "1", "1"]);
    ok(build("2", None));
    let seconds = build_seconds(&engines);
    eprintln!(
        "TensorRT-RTX: 8 kills at commit steps in {:.0} s; a level-2 build of {NETWORKS:?} took {seconds:.1?} s",
        started.elapsed().as_secs_f64(),
    );
    let mut before = engine_levels(&engines);
    // Each kill waits until the run has committed the networks before its target (progress, not
    // a clock: CI's load varies), then lets TensorRT work for a fraction of the target's level-2
    // time (a guide only: levels and the first build's set-up differ), and must find the build
    // still running. Each at a level no engine has yet, so every run builds all four.
    for (target, fraction, level) in [
        (0, 0.5, "0"),
        (1, 0.3, "3"),
        (2, 0.6, "4"),
        (3, 0.2, "5"),
        (1, 0.9, "1"),
    ] {
        let mut child = command(level, None)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let kill = format!("kill while building {} (level {level})", NETWORKS[target]);
        wait_for_commits(&engines, &mut child, level, target, &kill);
        std::thread::sleep(std::time::Duration::from_secs_f64(fraction * seconds[target]));
        assert!(child.try_wait().unwrap().is_none(), "{kill}: the build had ended");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Complete, and the networks in build order: those committed before the kill (at least
        // the target's predecessors; a level faster than level 2 may have got further) from the
        // killed run, the rest as they were.
        complete_state(&engines, build_label);
        let now = engine_levels(&engines);
        let updated = now.iter().take_while(|l| l.as_str() == level).count();
        assert!(
            updated >= target && now[updated..] == before[updated..],
            "{kill}: {before:?} -> {now:?}"
        );
        before = now;
    }
    ok(build("2", None));
    assert_eq!(complete_state(&engines, build_label), "2");
    assert_eq!(engine_levels(&engines), ["2", "2", "2", "2"]);
    assert!(leftovers(&engines).is_empty(), "{:?}", leftovers(&engines));
}

/// A symbolic link as --out (to a folder on a bigger disk, say) is written through: the result
/// lands in the folder it points to and the link stays, also when replaced with --force. A link
/// to nothing is refused, naming it.
#[test]
fn a_symlinked_out_is_written_through_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("big-disk/graphs");
    std::fs::create_dir_all(&real).unwrap();
    let link = dir.path().join("graphs");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    for extra in [&[][..], &["--force"][..]] {
        ok(export(&link, "fp32", extra, &[]));
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(complete_state(&real, export_label), "fp32");
        assert!(leftovers(&real).is_empty(), "{:?}", leftovers(&real));
        assert!(leftovers(&link).is_empty(), "{:?}", leftovers(&link));
    }
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    let output = export(&dangling, "fp32", &[], &[]);
    assert!(
        stderr(&output).contains("a symbolic link to") && stderr(&output).contains("which does not exist"),
        "{}",
        stderr(&output)
    );
    assert!(!dir.path().join("nowhere").exists());
}

/// Ctrl-C (SIGINT) or SIGTERM in the middle of a build (TensorRT-RTX at work on the second
/// network) removes the unfinished staging folder at once and exits 128 + the signal; the
/// engines folder holds what was committed before, complete.
#[test]
fn ctrl_c_and_sigterm_remove_the_staging_folder() {
    let dir = tempfile::tempdir().unwrap();
    let graphs = dir.path().join("graphs");
    ok(export(&graphs, "fp32", &[], &[]));
    let engines = dir.path().join("engines");
    let rtx_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/tensorrt-rtx");
    for (signal, level) in [(libc::SIGINT, "1"), (libc::SIGTERM, "2")] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
            .args([
                "build",
                "--runtime",
                "tensorrt-rtx",
                "--models",
                graphs.to_str().unwrap(),
            ])
            .args(["--profile", "tiny-check", "--out", engines.to_str().unwrap()])
            .args(["--builder-optimization-level", level])
            .env("FLUXBUILD_TENSORRT_RTX_DIR", &rtx_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let what = format!("signal {signal} while building t5");
        wait_for_commits(&engines, &mut child, level, 1, &what);
        // Between two engines' commits the next staging folder is being made: wait until it is there.
        while leftovers(&engines).is_empty() {
            assert!(child.try_wait().unwrap().is_none(), "{what}: the build ended");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        unsafe { libc::kill(child.id() as i32, signal) };
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(128 + signal), "{what}: {}", stderr(&output));
        assert!(
            stderr(&output).contains("interrupted: removed the unfinished"),
            "{}",
            stderr(&output)
        );
        assert!(leftovers(&engines).is_empty(), "{what}: {:?}", leftovers(&engines));
        complete_state(&engines, build_label);
        assert_eq!(engine_levels(&engines)[0], level, "{what}");
    }
}

/// A second run writing the same --out while the first is at it (its staging folder there, its
/// process alive) is refused, naming the other's pid; once that process is gone, its folder is a
/// leftover the next run removes.
#[test]
fn a_second_writer_of_one_out_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("graphs");
    let mut other = Command::new("sleep").arg("60").spawn().unwrap();
    let staging = dir.path().join(format!(".graphs.fluxbuild-staging-{}", other.id()));
    std::fs::create_dir(&staging).unwrap();
    let refused = export(&out, "fp32", &[], &[]);
    assert!(
        stderr(&refused).contains(&format!("another fluxbuild (pid {}) is writing it now", other.id())),
        "{}",
        stderr(&refused)
    );
    assert!(staging.exists() && !out.exists());
    other.kill().unwrap();
    other.wait().unwrap();
    ok(export(&out, "fp32", &[], &[]));
    assert!(!staging.exists(), "the dead writer's staging folder is left");
}
