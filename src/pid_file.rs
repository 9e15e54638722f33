//! `fluxbuild stop`: what a `serve --pid-file` file names, checked to be that process still (not one
//! that took its pid later), stopped, and what a killed server left behind cleaned up.

use crate::server_process::{kill_orphaned_stubs, liveness, Liveness, Process, SHUTDOWN_GRACE};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// What `fluxbuild stop` found behind a pid file and did.
#[derive(Debug, serde::Serialize)]
pub struct Stopped {
    pub pid: i32,
    pub was: Found,
    /// Whether it had to be killed (SIGKILL) after the grace period.
    pub forced: bool,
    /// Stubs of the server that outlived it, killed (a server killed by a signal leaves them).
    pub stubs_killed: usize,
}

/// The process a pid file names.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Found {
    /// A server `fluxbuild serve --detach` left running.
    Tritonserver,
    /// A foreground `fluxbuild serve`, which stops its own server and removes the pid file.
    FluxbuildServe,
    /// Nothing: the server ended (or was killed) before; only its leftovers were cleaned.
    NotRunning,
}

/// Stops what `fluxbuild serve --pid-file FILE` started: a detached tritonserver (SIGTERM, SIGKILL
/// after `grace`, then its stubs) or a foreground serve (SIGTERM; it stops its server itself), and
/// removes the pid file. A pid that now belongs to another process is left alone, as is its file.
pub fn stop_by_pid_file(pid_file: &Path, grace: Duration) -> Result<Stopped> {
    let named = |what: String| format!("--pid-file {}: {what}", pid_file.display());
    let pid = read_pid(pid_file)?;
    // Held before it is identified: the signals then reach the process identified, or none.
    let process = Process::hold(pid);
    let (was, forced) = match identify(pid, pid_file)? {
        Identity::Gone => (Found::NotRunning, false),
        Identity::Stale(why) => bail!(named(format!(
            "process {pid} is {why}: the file is stale (its server ended and the pid was taken since); left both alone"
        ))),
        Identity::OtherUser(program) => bail!(named(format!(
            "process {pid} (`{program}`) belongs to another user: not permitted to stop it"
        ))),
        Identity::Server => (Found::Tritonserver, !process.terminate(grace)),
        Identity::Serve => {
            process.signal(libc::SIGTERM);
            // It gives its server SHUTDOWN_GRACE before SIGKILL, then cleans up.
            let limit = SHUTDOWN_GRACE + Duration::from_secs(10);
            if !process.wait_exit(limit) {
                bail!(named(format!(
                    "`fluxbuild serve` (pid {pid}) did not stop within {} s of SIGTERM",
                    limit.as_secs()
                )));
            }
            (Found::FluxbuildServe, false)
        }
    };
    // A foreground serve cleans up after its own server; a server's stubs name its pid.
    let stubs_killed = match was {
        Found::FluxbuildServe => 0,
        Found::Tritonserver | Found::NotRunning => kill_orphaned_stubs(pid as u32),
    };
    match std::fs::remove_file(pid_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| named("cannot remove".into()))
        }
        _ => {}
    }
    Ok(Stopped {
        pid,
        was,
        forced,
        stubs_killed,
    })
}

fn read_pid(pid_file: &Path) -> Result<i32> {
    let text = match std::fs::read_to_string(pid_file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "--pid-file {}: no such file, so nothing to stop (stopped before, or started with another --pid-file?)",
            pid_file.display()
        ),
        read => read.with_context(|| format!("--pid-file {}: cannot read", pid_file.display()))?,
    };
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => bail!(
            "--pid-file {}: holds {:?}, not a process id (what `fluxbuild serve --pid-file` writes)",
            pid_file.display(),
            text.trim()
        ),
    }
}

enum Identity {
    Gone,
    /// A tritonserver that started before the pid file was written.
    Server,
    /// A `fluxbuild` (serve) that started before the pid file was written.
    Serve,
    /// Not the process the file was written for: why.
    Stale(String),
    OtherUser(String),
}

/// Whether `pid` is still what `serve` wrote the file for: a tritonserver or fluxbuild that was
/// running when the file was written. A pid taken since belongs to a process that started later.
fn identify(pid: i32, pid_file: &Path) -> Result<Identity> {
    let program = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let program = program.trim().to_string();
    let alive = liveness(pid);
    if alive == Liveness::Gone {
        return Ok(Identity::Gone);
    }
    if program != "tritonserver" && program != "fluxbuild" {
        return Ok(Identity::Stale(format!(
            "`{program}`, not a tritonserver or `fluxbuild serve`"
        )));
    }
    if pid == std::process::id() as i32 {
        return Ok(Identity::Stale("this `fluxbuild stop` itself".into()));
    }
    let written = std::fs::metadata(pid_file)
        .and_then(|m| m.modified())
        .with_context(|| format!("--pid-file {}: cannot read its time", pid_file.display()))?;
    // Start times are known to the clock tick, the boot time to the second.
    if started(pid).is_some_and(|start| start > written + Duration::from_secs(1)) {
        return Ok(Identity::Stale(format!(
            "a `{program}` started after the file was written"
        )));
    }
    Ok(match (alive, program.as_str()) {
        (Liveness::OtherUser, _) => Identity::OtherUser(program),
        (_, "tritonserver") => Identity::Server,
        _ => Identity::Serve,
    })
}

/// When `pid` started: the boot time (/proc/stat `btime`) plus its start in clock ticks (field 22
/// of /proc/PID/stat).
fn started(pid: i32) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "(COMM)": the state is field 3, so the start time (22) is the 20th.
    let ticks: u64 = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(btime) + Duration::from_millis(ticks * 1000 / hz))
}
