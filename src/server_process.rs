//! A tritonserver process and the Python-backend stubs it starts: stopping it (our child, or one
//! a detached `fluxbuild serve` left running) and cleaning up what it leaves behind.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long Triton gets to unload its models after SIGTERM before SIGKILL.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Stops tritonserver `pid` (a child of this process or not): SIGTERM (Triton unloads its
/// models), then SIGKILL if it has not exited after `grace`; then the stubs that outlived it.
/// Returns whether it took SIGKILL.
pub fn stop_server_process(pid: i32, grace: Duration) -> bool {
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let forced = !wait_gone(pid, grace);
    if forced {
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_gone(pid, Duration::from_secs(5));
    }
    kill_orphaned_stubs(pid as u32);
    forced
}

/// Waits up to `limit` for `pid` to end; whether it did.
fn wait_gone(pid: i32, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        // Reaps it when it is our child (a no-op otherwise), so that it does not linger as a zombie.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        if !running(pid) {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` is a live process (a zombie has ended: only its parent's wait is missing). One
/// we may not signal (another user's) is alive too.
fn running(pid: i32) -> bool {
    if unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "PID (COMM) STATE ...": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    state != Some('Z')
}

/// A Python-backend stub process: `triton_python_backend_stub MODEL.py SHM_REGION SIZE GROWTH
/// SERVER_PID ...`.
pub struct Stub {
    pub pid: i32,
    /// `REPOSITORY/MODEL/VERSION/model.py`.
    pub script: PathBuf,
    /// Its shared memory region in /dev/shm.
    region: String,
}

impl Stub {
    /// The model it serves.
    pub fn model(&self) -> Option<String> {
        let model = self.script.parent()?.parent()?.file_name()?;
        Some(model.to_string_lossy().into_owned())
    }
}

/// The stubs of tritonserver `server_pid`, by the server pid in their arguments: also once the
/// server is gone (zombies have no arguments left, so they are not listed).
pub fn stubs_of(server_pid: u32) -> Vec<Stub> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let server = server_pid.to_string();
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let argv: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_stub = argv[0].ends_with("/triton_python_backend_stub");
            (is_stub && argv.get(5) == Some(&server)).then(|| Stub {
                pid,
                script: PathBuf::from(&argv[1]),
                region: argv[2].clone(),
            })
        })
        .collect()
}

/// The orchestrator's step table of a server: `/dev/shm/fluxbuild-steps-SERVER_PID-MODEL`
/// (triton/models/flux/model.py names it so; the serving tests check that both agree).
const STEP_TABLE_PREFIX: &str = "fluxbuild-steps-";

/// Python-backend stubs outlive a tritonserver that did not shut them down (killed, crashed),
/// forever and holding their models' memory (about 1 GB on the tiny fixture), and so do their
/// shared memory regions and the orchestrator's step table. Those of `server_pid`, which has
/// ended, are killed and removed; returns how many stubs.
pub fn kill_orphaned_stubs(server_pid: u32) -> usize {
    let shm = Path::new("/dev/shm");
    let stubs = stubs_of(server_pid);
    for stub in &stubs {
        unsafe { libc::kill(stub.pid, libc::SIGKILL) };
        // The region (1 MB and up, in RAM) the dead server would have removed.
        if stub.region.starts_with("triton_python_backend_shm_region_") && !stub.region.contains('/') {
            let _ = std::fs::remove_file(shm.join(&stub.region));
        }
    }
    let table = format!("{STEP_TABLE_PREFIX}{server_pid}-");
    for entry in std::fs::read_dir(shm).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&table) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    stubs.len()
}

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
/// removes the pid file. A pid that now belongs to another program is left alone, as is its file.
pub fn stop_by_pid_file(pid_file: &Path, grace: Duration) -> Result<Stopped> {
    let text = match std::fs::read_to_string(pid_file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "--pid-file {}: no such file, so nothing to stop (stopped before, or started with another --pid-file?)",
            pid_file.display()
        ),
        read => read.with_context(|| format!("--pid-file {}: cannot read", pid_file.display()))?,
    };
    let Some(pid) = text.trim().parse::<i32>().ok().filter(|p| *p > 0) else {
        bail!(
            "--pid-file {}: holds {:?}, not a process id (what `fluxbuild serve --pid-file` writes)",
            pid_file.display(),
            text.trim()
        );
    };
    let program = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if running(pid) && unsafe { libc::kill(pid, 0) } != 0 {
        bail!(
            "--pid-file {}: process {pid} (`{}`) belongs to another user: not permitted to stop it",
            pid_file.display(),
            program.trim()
        );
    }
    let (was, forced) = match program.trim() {
        _ if !running(pid) => (Found::NotRunning, false),
        "tritonserver" => (Found::Tritonserver, stop_server_process(pid, grace)),
        "fluxbuild" => {
            unsafe { libc::kill(pid, libc::SIGTERM) };
            // It gives its server SHUTDOWN_GRACE before SIGKILL, then cleans up.
            if !wait_gone(pid, grace + SHUTDOWN_GRACE + Duration::from_secs(5)) {
                bail!(
                    "--pid-file {}: `fluxbuild serve` (pid {pid}) did not stop within {} s of SIGTERM",
                    pid_file.display(),
                    (grace + SHUTDOWN_GRACE).as_secs() + 5
                );
            }
            (Found::FluxbuildServe, false)
        }
        other => bail!(
            "--pid-file {}: process {pid} is `{other}`, not a tritonserver or `fluxbuild serve`: the file is \
             stale (its server ended and the pid was reused); left both alone",
            pid_file.display()
        ),
    };
    let stubs_killed = kill_orphaned_stubs(pid as u32);
    match std::fs::remove_file(pid_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("--pid-file {}: cannot remove", pid_file.display()))
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
