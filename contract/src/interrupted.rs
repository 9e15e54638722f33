//! Ctrl-C or SIGTERM during a stage removes its unfinished staging folder before the process
//! ends (a kill -9 leaves it for the next run or `fluxbuild clean`, as before). The handler only
//! writes a byte to a pipe (async-signal-safe); a watcher thread does the removal and exits with
//! 128 + the signal, the shell's convention. The folder being written is removed under the
//! writer's feet, which is safe: the output folder still holds the previous result, and a commit
//! in flight leaves the old or the new one (the staging name holds the old one after the swap).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The staging folders of this process not yet committed.
static STAGING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// The pipe's write end, for the handler.
static PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

pub(crate) fn staging_began(dir: &Path) {
    STAGING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.to_path_buf());
}

pub(crate) fn staging_ended(dir: &Path) {
    STAGING.lock().unwrap_or_else(|e| e.into_inner()).retain(|d| d != dir);
}

extern "C" fn on_signal(signal: libc::c_int) {
    let byte = signal as u8;
    let fd = PIPE.load(std::sync::atomic::Ordering::Relaxed);
    unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
}

/// Installs the SIGINT and SIGTERM handling (once, at the start of a command that stages).
pub fn remove_staging_on_interrupt() {
    let mut fds = [0; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return;
    }
    PIPE.store(fds[1], std::sync::atomic::Ordering::Relaxed);
    let read_end = fds[0];
    std::thread::spawn(move || {
        let mut byte = 0u8;
        if unsafe { libc::read(read_end, (&mut byte as *mut u8).cast(), 1) } != 1 {
            return;
        }
        let staging = STAGING.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for dir in staging {
            if std::fs::remove_dir_all(&dir).is_ok() {
                eprintln!("interrupted: removed the unfinished {}", dir.display());
            }
        }
        // _exit, not exit: exit's atexit handlers and C++ static destructors (TensorRT's) would
        // run while the main thread is still inside those libraries, and abort.
        unsafe { libc::_exit(128 + i32::from(byte)) };
    });
    for signal in [libc::SIGINT, libc::SIGTERM] {
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}
