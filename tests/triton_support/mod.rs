//! The real pipeline for the Triton tests: the tiny FLUX.1 fixture pipelines exported by
//! `fluxbuild export`, packaged by `fluxbuild package`, served by a real Triton server (the
//! pinned PyPI build, CPU, Python backend; `make triton-venv`), and compared with local
//! `fluxbuild generate`. Every wait is bounded.
#![allow(dead_code)]

use fluxbuild::serve::{Installation, Server, ServerOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs the fluxbuild binary; returns (success, stdout, stderr).
pub fn fluxbuild(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_fluxbuild"))
        .args(args)
        .output()
        .expect("run fluxbuild");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs the fluxbuild binary and requires it to succeed.
pub fn fluxbuild_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = fluxbuild(args);
    assert!(ok, "fluxbuild {} failed:\n{stderr}", args.join(" "));
    stdout
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `fluxbuild export` of `tests/fixtures/pipeline/<variant>` (fp32 graphs) into `out`.
pub fn export(variant: &str, out: &Path) -> PathBuf {
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pipeline")
        .join(variant);
    fluxbuild_ok(&["export", "--checkpoint", path(&pipeline), "--out", path(out)]);
    out.to_path_buf()
}

/// `fluxbuild package --target cpu` with small defaults (64x64, 2 steps) and limits (128 px, 50 steps).
pub fn package_cpu(models: &Path, repo: &Path, extra: &[&str]) {
    let mut args = vec![
        "package",
        "--models",
        path(models),
        "--out",
        path(repo),
        "--target",
        "cpu",
    ];
    args.extend([
        "--height",
        "64",
        "--width",
        "64",
        "--max-height",
        "128",
        "--max-width",
        "128",
        "--steps",
        "2",
        "--max-steps",
        "50",
    ]);
    args.extend(extra);
    fluxbuild_ok(&args);
}

/// `fluxbuild generate` with `args` locally from `models` and through `server` (PNGs `NAME-local.png`
/// and `NAME-served.png` in `dir`): the served PNG must be the local one, byte for byte.
pub fn assert_served_equals_local(server: &Server, models: &Path, args: &[&str], dir: &Path, name: &str) {
    let (local, served) = (
        dir.join(format!("{name}-local.png")),
        dir.join(format!("{name}-served.png")),
    );
    fluxbuild_ok(&[&["generate", "--models", path(models)], args, &["--out", path(&local)]].concat());
    fluxbuild_ok(
        &[
            &["generate", "--server", &server.url()],
            args,
            &["--out", path(&served)],
        ]
        .concat(),
    );
    assert_eq!(
        std::fs::read(&served).unwrap(),
        std::fs::read(&local).unwrap(),
        "{name}: the image through Triton differs from local generate"
    );
}

/// A Triton server on free loopback ports, ready when `flux` is.
pub fn start(repo: &Path, explicit_model_control: bool) -> Server {
    let install = Installation::find(None).expect("the Triton venv (run `make triton-venv`)");
    start_on(&install, repo, explicit_model_control)
}

/// `start` with a given installation (e.g. one with torch on the stubs' PYTHONPATH).
pub fn start_on(install: &Installation, repo: &Path, explicit_model_control: bool) -> Server {
    let mut options = ServerOptions::new(repo).unwrap();
    options.explicit_model_control = explicit_model_control;
    options.ready_timeout = Duration::from_secs(180);
    let started = Instant::now();
    let server = Server::start(install, &options).unwrap();
    eprintln!("Triton ready in {:.1} s", started.elapsed().as_secs_f64());
    server
}

/// PSNR in dB of two 8-bit images (infinite when identical).
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    fluxbuild::accuracy::psnr(a, b).unwrap_or(f64::INFINITY)
}

/// The process id of `model`'s Python backend stub.
pub fn stub_pid(repo: &Path, model: &str) -> i32 {
    let script = format!("{}/{model}/1/model.py", repo.canonicalize().unwrap().display());
    let stub = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find(|e| {
            String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).contains(&script)
        })
        .unwrap_or_else(|| panic!("no backend stub runs {script}"));
    stub.file_name().to_string_lossy().parse().unwrap()
}

/// The live (not zombie) tritonserver and backend stub processes whose command line names `repo`.
pub fn processes_of(repo: &Path) -> Vec<i32> {
    let repo = repo.canonicalize().unwrap_or_else(|_| repo.to_path_buf());
    let needle = repo.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let state = stat.rsplit_once(')')?.1.split_whitespace().next()?.to_string();
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let program = cmdline.split(|b| *b == 0).next()?;
            let triton = program.ends_with(b"/tritonserver") || program.ends_with(b"/triton_python_backend_stub");
            (triton && state != "Z" && String::from_utf8_lossy(&cmdline).contains(&needle)).then_some(pid)
        })
        .collect()
}

/// Waits (20 s at most) until no process serves `repo` any more: the server and every stub gone.
pub fn assert_nothing_left(repo: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = processes_of(repo);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: processes of {} left: {left:?}",
            repo.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The instances `repo`'s `model` runs (its config's instance_group count).
pub fn instances(repo: &Path, model: &str) -> usize {
    let config = std::fs::read_to_string(repo.join(model).join("config.pbtxt")).unwrap();
    let count = config.split("count:").nth(1).expect("an instance_group count");
    count.split_whitespace().next().unwrap().parse().unwrap()
}
