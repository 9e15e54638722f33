//! A tritonserver process and the Python-backend stubs it starts: stopping it (our child, or one
//! a detached `fluxbuild serve` left running) and cleaning up what it leaves behind.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long Triton gets to unload its models after SIGTERM before SIGKILL.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Stops tritonserver `pid` (a child of this process or not): SIGTERM (Triton unloads its
/// models), then SIGKILL if it has not exited after `grace`; then the stubs that outlived it.
/// Returns whether it took SIGKILL.
pub fn stop_server_process(pid: i32, grace: Duration) -> bool {
    let server = Process::hold(pid);
    let forced = !server.terminate(grace);
    kill_orphaned_stubs(pid as u32);
    forced
}

/// A process held by a pidfd where the kernel has them (Linux 5.3+), so that no signal or wait
/// reaches another process that took its pid after it ended; by its pid otherwise.
pub struct Process {
    pub pid: i32,
    pidfd: Option<OwnedFd>,
}

impl Process {
    pub fn hold(pid: i32) -> Process {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        // SAFETY: a non-negative result is a descriptor we own.
        let pidfd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) });
        Process { pid, pidfd }
    }

    /// Sends `signal`; whether it was delivered (false: ended, or not ours to signal).
    pub fn signal(&self, signal: i32) -> bool {
        let sent = match &self.pidfd {
            // SAFETY: the descriptor is open; no siginfo, no flags.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            },
            // SAFETY: kill only sends a signal.
            None => libc::c_long::from(unsafe { libc::kill(self.pid, signal) }),
        };
        sent == 0
    }

    /// SIGTERM, then SIGKILL if it has not ended after `grace`; whether SIGTERM was enough.
    pub fn terminate(&self, grace: Duration) -> bool {
        self.signal(libc::SIGTERM);
        if self.wait_exit(grace) {
            return true;
        }
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(5));
        false
    }

    /// Waits up to `limit` for it to end (a child of ours is reaped); whether it did.
    pub fn wait_exit(&self, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.ended() {
                // Reaps it when it is our child (a no-op otherwise): it held its pid until now.
                unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), libc::WNOHANG) };
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ended(&self) -> bool {
        match &self.pidfd {
            // A pidfd is readable once its process has ended (reaped or not).
            Some(fd) => {
                let mut poll = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, no wait.
                unsafe { libc::poll(&mut poll, 1, 0) > 0 }
            }
            None => {
                // Without a pidfd, a child of ours is reaped here, or it would stay a zombie.
                let reaped = unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), libc::WNOHANG) } == self.pid;
                reaped || liveness(self.pid) == Liveness::Gone
            }
        }
    }
}

/// Whether a pid is a live process: a zombie has ended (only its parent's wait is missing); one
/// we may not signal belongs to another user.
#[derive(Debug, PartialEq, Eq)]
pub enum Liveness {
    Gone,
    Ours,
    OtherUser,
}

pub fn liveness(pid: i32) -> Liveness {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EPERM) => Liveness::OtherUser,
            _ => Liveness::Gone,
        };
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "PID (COMM) STATE ...": the state follows the last ')'.
    match stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
    {
        Some('Z') | None => Liveness::Gone,
        _ => Liveness::Ours,
    }
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
