//! Ctrl-C or SIGTERM runs the cleanups the running command registered before the process ends:
//! export, build and package remove their unfinished staging folder, serve stops the server it
//! started and removes its pid file (a kill -9 leaves staging for the next run or `fluxbuild
//! clean`, as before). The handler only writes a byte to a pipe (async-signal-safe); a watcher
//! thread runs the cleanups and exits with 128 + the signal, the shell's convention. A staging
//! folder removed under the writer's feet is safe: the output folder still holds the previous
//! result, and a commit in flight leaves the old or the new one (the staging name holds the old
//! one after the swap).

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Mutex;

type Cleanup = Box<dyn Fn() + Send>;

/// The cleanups registered and not yet released, by id.
static CLEANUPS: Mutex<Vec<(u64, Cleanup)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
/// The pipe's write end, for the handler.
static PIPE: AtomicI32 = AtomicI32::new(-1);

/// A registered cleanup; dropped, it is released (the work it undoes is done or undone).
pub struct Registered(u64);

impl Drop for Registered {
    fn drop(&mut self) {
        CLEANUPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _)| *id != self.0);
    }
}

/// Runs `cleanup` if the process is interrupted while the returned guard lives.
pub fn on_interrupt(cleanup: impl Fn() + Send + 'static) -> Registered {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    CLEANUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id, Box::new(cleanup)));
    Registered(id)
}

extern "C" fn on_signal(signal: libc::c_int) {
    let byte = signal as u8;
    let fd = PIPE.load(Ordering::Relaxed);
    unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
}

/// Installs the SIGINT and SIGTERM handling (once, at the start of a command that registers
/// cleanups).
pub fn run_cleanups_on_interrupt() {
    let mut fds = [0; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return;
    }
    PIPE.store(fds[1], Ordering::Relaxed);
    let read_end = fds[0];
    std::thread::spawn(move || {
        let mut byte = 0u8;
        if unsafe { libc::read(read_end, (&mut byte as *mut u8).cast(), 1) } != 1 {
            return;
        }
        // Newest first: a pid file before the server it names. The lock is held until _exit: a
        // registration after this point waits, so nothing it would undo (a server it is about
        // to start) begins unregistered.
        let cleanups = CLEANUPS.lock().unwrap_or_else(|e| e.into_inner());
        for (_, cleanup) in cleanups.iter().rev() {
            cleanup();
        }
        // _exit, not exit: exit's atexit handlers and C++ static destructors (TensorRT's) would
        // run while the main thread is still inside those libraries, and abort.
        unsafe { libc::_exit(128 + i32::from(byte)) };
    });
    for signal in [libc::SIGINT, libc::SIGTERM] {
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}
