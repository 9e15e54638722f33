//! `fluxbuild serve`: start a Triton server on a model repository (127.0.0.1), wait until the
//! `flux` model is ready, then keep serving until the server exits or this process is stopped;
//! with `--detach`, return once it is ready and leave it running (`fluxbuild stop --pid-file FILE`).

use crate::output::{AlreadyReported, Output};
use crate::serve::{repository_max_request_bytes, Installation, Server, ServerOptions};
use crate::supervise::{self, Supervisor};
use anyhow::{bail, Context, Result};
use fluxbuild_contract::files::write_atomic;
use fluxbuild_contract::interrupted;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The model repository (`fluxbuild package --out`).
    #[arg(long)]
    repo: PathBuf,
    #[arg(long, default_value_t = 8000, value_parser = port)]
    http_port: u16,
    /// [default: HTTP port + 1]
    #[arg(long, value_parser = port)]
    grpc_port: Option<u16>,
    /// [default: HTTP port + 2]
    #[arg(long, value_parser = port)]
    metrics_port: Option<u16>,
    /// The Triton venv (default: $FLUXBUILD_TRITON_VENV or .cache/triton-venv; `make triton-venv`).
    #[arg(long)]
    venv: Option<PathBuf>,
    /// Let models be unloaded and loaded at run time (`/v2/repository/models/NAME/{load,unload}`).
    /// Always on now (the supervisor needs it); accepted for older scripts.
    #[arg(long)]
    explicit_model_control: bool,
    /// Seconds to wait for the server to be ready.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
    /// Return once the server is ready and leave it running in the background.
    #[arg(long, requires = "pid_file")]
    detach: bool,
    /// Write the server's process id here (removed again when a foreground server exits).
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// The server's log [default: a file in a temporary folder, reported].
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
}

/// A port to listen on (0, "any free port", would leave us not knowing where the server is).
fn port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) => Err("0 is not a port to listen on (give 1..=65535)".into()),
        Ok(port) => Ok(port),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let install = Installation::find(args.venv.as_deref())?;
    let port = |given: Option<u16>, offset: u16| {
        given
            .or_else(|| args.http_port.checked_add(offset))
            .context("--http-port leaves no room for the gRPC and metrics ports")
    };
    let extra_args = request_size_args(&install, &args.repo, out)?;
    let options = ServerOptions {
        repository: args.repo.clone(),
        http_port: args.http_port,
        grpc_port: port(args.grpc_port, 1)?,
        metrics_port: port(args.metrics_port, 2)?,
        // Always: the supervisor reloads dead or missing networks (and `flux` after them).
        explicit_model_control: true,
        load_models: vec!["*".into()],
        ready_model: Some("flux".into()),
        ready_timeout: Duration::from_secs(args.timeout),
        extra_args,
        log: args.log.clone(),
        detached: args.detach,
    };
    if let Some(pid_file) = &args.pid_file {
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            if unsafe { libc::kill(pid, 0) } == 0 {
                bail!(
                    "{}: process {pid} is still running (a server from before? stop it first)",
                    pid_file.display()
                );
            }
        }
    }
    if let Some(pid_file) = &args.pid_file {
        check_writable(pid_file)?;
    }
    let mut server = Server::start(&install, &options).with_context(|| format!("serving {}", args.repo.display()))?;
    server.keep_log();
    if let Some(why) = &server.restarted {
        out.warn(why);
    }
    let supervisor = Supervisor::new(server.client(), &args.repo, server.pid().context("running")?)?;
    every_network_loaded(&mut server, &supervisor, Duration::from_secs(args.timeout), out)?;
    let (url, metrics, log) = (
        server.url(),
        format!("http://127.0.0.1:{}/metrics", server.metrics_port),
        server.log.clone(),
    );
    let report = |pid: u32, stop_with: String| {
        if let Some(pid_file) = &args.pid_file {
            write_atomic(pid_file, format!("{pid}\n").as_bytes())?;
        }
        let report =
            serde_json::json!({ "url": url, "metrics": metrics, "log": log, "pid": pid, "detached": args.detach });
        out.result(&report, || {
            format!(
                "Triton is ready at {url} (metrics {metrics}, log {}); stop it with {stop_with}",
                log.display()
            )
        });
        Ok::<_, anyhow::Error>(())
    };
    // The pid file is written while the server is still ours: if that fails, it is stopped.
    let stop_command = |pid_file: &std::path::Path| format!("`fluxbuild stop --pid-file {}`", pid_file.display());
    if args.detach {
        let pid = server.pid().context("running")?;
        let pid_file = args.pid_file.as_deref().context("--detach requires --pid-file")?;
        report(pid, stop_command(pid_file))?;
        server.detach();
        return Ok(());
    }
    let pid = std::process::id();
    let stop_with = match &args.pid_file {
        Some(pid_file) => format!("Ctrl-C, `kill {pid}` or {}", stop_command(pid_file)),
        None => format!("Ctrl-C or `kill {pid}`"),
    };
    report(pid, stop_with)?;
    // Ctrl-C or `kill PID` stops the server (registered when it started) and removes the pid file.
    let _remove_pid_file = args.pid_file.clone().map(|pid_file| {
        interrupted::on_interrupt(move || {
            let _ = std::fs::remove_file(&pid_file);
        })
    });
    let status = supervise(&mut server, &supervisor, out);
    if let Some(pid_file) = &args.pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    // The ready document was --json's one document: a later failure is said on stderr only.
    let ended = |e: anyhow::Error| anyhow::Error::new(AlreadyReported(format!("{e:#}")));
    let status = status.map_err(ended)?;
    if !status.success() {
        return Err(ended(anyhow::anyhow!(
            "tritonserver exited with {status}; see {}",
            log.display()
        )));
    }
    Ok(())
}

/// The pid file can be written (its folder exists, it is not a folder), checked before the server
/// starts rather than after.
fn check_writable(pid_file: &std::path::Path) -> Result<()> {
    if pid_file.is_dir() {
        bail!("--pid-file {}: is a folder", pid_file.display());
    }
    let folder = match pid_file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    if !folder.is_dir() {
        bail!(
            "--pid-file {}: the folder {} does not exist",
            pid_file.display(),
            folder.display()
        );
    }
    Ok(())
}

/// Consecutive seconds with a dead or missing model before giving up (exit non-zero, so that the
/// pod's supervisor starts a fresh server).
const GIVE_UP_AFTER: u32 = 60;

/// Triton calls `flux` ready even when a network's models all failed to load; the deployment is
/// ready only when every network has a READY model (a fallback counts). Once the loads are done,
/// a network without one stops the server with an error naming its models and Triton's reasons;
/// an unready model whose network has another is a warning.
fn every_network_loaded(server: &mut Server, supervisor: &Supervisor, timeout: Duration, out: &Output) -> Result<()> {
    let started = std::time::Instant::now();
    let loaded = loop {
        let loaded = supervisor.loaded()?;
        if !loaded.loading() || started.elapsed() >= timeout {
            break loaded;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (fatal, tolerated): (Vec<_>, Vec<_>) = loaded.unready.iter().partition(|u| loaded.missing.contains(&u.network));
    for unready in tolerated {
        out.warn(&unready.to_string());
    }
    if !loaded.missing.is_empty() {
        server.stop()?;
        bail!(
            "no ready model for {} ({}): the deployment cannot serve; stopped the server (see {})",
            loaded.missing.join(", "),
            supervise::describe(fatal),
            server.log.display()
        );
    }
    Ok(())
}

/// Until the server exits: once a second, reload dead or missing networks (`flux` is unloaded
/// meanwhile, so readiness says so); give up after GIVE_UP_AFTER failed seconds. A warning is
/// said when what is wrong changes, not every second.
fn supervise(server: &mut Server, supervisor: &Supervisor, out: &Output) -> Result<std::process::ExitStatus> {
    let mut failing = 0;
    let mut last_warning = String::new();
    loop {
        if let Some(status) = server.exited()? {
            return Ok(status);
        }
        let warning = match supervisor.check() {
            Ok(repair) if repair == Default::default() => {
                failing = 0;
                String::new()
            }
            Ok(repair) => {
                failing += 1;
                format!(
                    "dead backends {:?}, networks without a ready model {:?}: reloaded {:?}{}",
                    repair.dead,
                    repair.missing,
                    repair.loaded,
                    if repair.why.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", supervise::describe(&repair.why))
                    }
                )
            }
            Err(e) => {
                failing += 1;
                format!("cannot check the server: {e:#}")
            }
        };
        if !warning.is_empty() && warning != last_warning {
            out.warn(&warning);
        }
        last_warning = warning;
        if failing >= GIVE_UP_AFTER {
            server.stop()?;
            bail!(
                "the deployment did not recover in {GIVE_UP_AFTER} s; stopped the server (see {})",
                server.log.display()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `--http-max-input-size` from the repository's request limits, where the server has it; else a
/// warning (tritonserver 2.51 reads any body, and `flux` refuses what breaks the rules).
fn request_size_args(install: &Installation, repo: &std::path::Path, out: &Output) -> Result<Vec<String>> {
    let bytes = repository_max_request_bytes(repo)?;
    let flag = "--http-max-input-size";
    if install.supports(flag) {
        return Ok(vec![format!("{flag}={bytes}")]);
    }
    out.warn(&format!(
        "{} has no {flag}: request bodies beyond the {bytes} bytes the request limits allow reach `flux` \
         (which refuses them) instead of being refused by the front end, and a plain-JSON body above about \
         4 MB crashes this server (triton-inference-server/server#5840): send tensors as binary data \
         (tritonclient's default, `fluxbuild generate --server`) or over gRPC",
        install.server.display()
    ));
    Ok(vec![])
}
