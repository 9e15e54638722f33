//! Builds through NVIDIA's `trtexec`: the command line is a pure function of the job (tests
//! check it), then trtexec runs with a spinner and its output is kept as the build log.

use crate::build::{BuildRequest, Graph};
use crate::settings::{check_precision, BuildSettings, Precision};
use crate::toolchain::Version;
use anyhow::{bail, Context, Result};
use fluxbuild_profiles::{Network, ProfileShapes};
use indicatif::ProgressBar;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct TrtexecJob<'a> {
    pub onnx: &'a Path,
    /// Where trtexec writes the plan (a temporary name, renamed by the caller on success).
    pub engine: &'a Path,
    pub profiles: &'a [ProfileShapes],
    pub settings: &'a BuildSettings,
    pub timing_cache: Option<&'a Path>,
    /// The TensorRT release of this trtexec (its flags changed in 11).
    pub tensorrt: Version,
}

/// The arguments after `trtexec`, in a stable order (flags as trtexec 10.0 to 11.1 parse them);
/// refuses weak precisions on TensorRT 11.
pub fn command_line(job: &TrtexecJob<'_>) -> Result<Vec<String>> {
    check_precision(job.settings.precision, job.tensorrt)?;
    let mut args = vec![
        format!("--onnx={}", job.onnx.display()),
        format!("--saveEngine={}", job.engine.display()),
    ];
    // One --minShapes/--optShapes/--maxShapes triple per optimization profile, in order; with
    // several, trtexec wants `--profile=N` right before each triple (it refuses repeated triples).
    let several = job.profiles.len() > 1;
    for (index, profile) in job.profiles.iter().enumerate() {
        let spec = |corner: fn(&fluxbuild_profiles::InputShape) -> &Vec<i64>| {
            profile
                .inputs
                .iter()
                .map(|i| i.spec(corner(i)))
                .collect::<Vec<_>>()
                .join(",")
        };
        if several {
            args.push(format!("--profile={index}"));
        }
        args.push(format!("--minShapes={}", spec(|i| &i.min)));
        args.push(format!("--optShapes={}", spec(|i| &i.opt)));
        args.push(format!("--maxShapes={}", spec(|i| &i.max)));
    }
    // Explicit quantization (fp8) is strongly typed. TensorRT 11 is always strongly typed; its
    // --stronglyTyped is a deprecated no-op, so it is left out there.
    let flag = match job.settings.precision {
        Precision::Typed | Precision::Fp8 => (job.tensorrt.major < 11).then_some("--stronglyTyped"),
        Precision::Fp32 => Some("--noTF32"),
        Precision::Fp16 => Some("--fp16"),
        Precision::Bf16 => Some("--bf16"),
    };
    args.extend(flag.map(String::from));
    if let Some(bytes) = job.settings.workspace_bytes {
        // trtexec takes MiB by default; a byte count with the B suffix is exact.
        args.push(format!("--memPoolSize=workspace:{bytes}B"));
    }
    if let Some(level) = job.settings.optimization_level {
        args.push(format!("--builderOptimizationLevel={level}"));
    }
    if let Some(cache) = job.timing_cache {
        args.push(format!("--timingCacheFile={}", cache.display()));
    }
    // Build only: no inference run, no timing of the finished engine.
    args.push("--skipInference".into());
    Ok(args)
}

/// One network's trtexec invocation as `fluxbuild build --dry-run` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Invocation {
    pub network: Network,
    /// `trtexec` and its arguments; the engine goes straight to OUT/NET/model.plan.
    pub argv: Vec<String>,
}

impl Invocation {
    /// The line to paste into a shell (arguments quoted where a shell would split or expand them).
    pub fn shell_line(&self) -> String {
        self.argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
    }
}

/// The trtexec lines a build of `graphs` runs with TensorRT `tensorrt`, computed without
/// TensorRT or a GPU (the FP8 capability check then waits for the real build).
pub fn dry_run(request: &BuildRequest, graphs: &[Graph], tensorrt: Version) -> Result<Vec<Invocation>> {
    if tensorrt.major < 10 {
        bail!("TensorRT {tensorrt}: fluxbuild builds with TensorRT 10 or newer (trtexec flags differ before 10)");
    }
    crate::capability::check_fp8(graphs, request.settings.precision, None)?;
    graphs
        .iter()
        .map(|graph| {
            let engine = request.out.join(graph.network.name()).join("model.plan");
            let job = TrtexecJob {
                onnx: &graph.onnx,
                engine: &engine,
                profiles: &graph.shapes,
                settings: &request.settings,
                timing_cache: request.timing_cache.as_deref(),
                tensorrt,
            };
            Ok(Invocation {
                network: graph.network,
                argv: std::iter::once("trtexec".to_string())
                    .chain(command_line(&job)?)
                    .collect(),
            })
        })
        .collect()
}

fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_=.,:/+@%".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// Runs trtexec; returns its combined output (the build log) on success.
pub fn run(trtexec: &Path, args: &[String], spinner: &ProgressBar) -> Result<String> {
    let mut child = Command::new(trtexec)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", trtexec.display()))?;
    let stderr = child.stderr.take().expect("piped");
    let err_thread =
        std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
    let mut log = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        spinner.set_message(last_words(&line));
        log.push_str(&line);
        log.push('\n');
    }
    for line in err_thread.join().expect("stderr reader") {
        log.push_str(&line);
        log.push('\n');
    }
    let status = child.wait().context("waiting for trtexec")?;
    if !status.success() {
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .take(25)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!("trtexec failed ({status}); last lines:\n{}", tail.join("\n"));
    }
    Ok(log)
}

fn last_words(line: &str) -> String {
    let line = line.trim();
    let cut: String = line
        .chars()
        .rev()
        .take(70)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if cut.len() < line.len() {
        format!("…{cut}")
    } else {
        cut
    }
}

/// The engine's temporary name while trtexec writes it.
pub fn temporary_engine(plan: &Path) -> PathBuf {
    let mut tmp = plan.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    PathBuf::from(tmp)
}
