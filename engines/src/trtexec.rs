//! Builds through NVIDIA's `trtexec`: the command line is a pure function of the job (tests
//! check it), then trtexec runs with a spinner and its output is kept as the build log.

use crate::settings::{BuildSettings, Precision};
use anyhow::{bail, Context, Result};
use fluxbuild_profiles::ProfileShapes;
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
}

/// The arguments after `trtexec`, in a stable order.
pub fn command_line(job: &TrtexecJob<'_>) -> Vec<String> {
    let mut args = vec![
        format!("--onnx={}", job.onnx.display()),
        format!("--saveEngine={}", job.engine.display()),
    ];
    // One --minShapes/--optShapes/--maxShapes triple per optimization profile, in order.
    for profile in job.profiles {
        let spec = |corner: fn(&fluxbuild_profiles::InputShape) -> &Vec<i64>| {
            profile
                .inputs
                .iter()
                .map(|i| i.spec(corner(i)))
                .collect::<Vec<_>>()
                .join(",")
        };
        args.push(format!("--minShapes={}", spec(|i| &i.min)));
        args.push(format!("--optShapes={}", spec(|i| &i.opt)));
        args.push(format!("--maxShapes={}", spec(|i| &i.max)));
    }
    args.extend(
        match job.settings.precision {
            Precision::Typed => &["--stronglyTyped"][..],
            Precision::Fp32 => &["--noTF32"],
            Precision::Fp16 => &["--fp16"],
            Precision::Bf16 => &["--bf16"],
            Precision::Fp8 => &["--fp16", "--fp8"],
        }
        .iter()
        .map(|s| s.to_string()),
    );
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
    args
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
