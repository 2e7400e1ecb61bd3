//! Linux: `membarrier(2)` with `MEMBARRIER_CMD_PRIVATE_EXPEDITED`, through
//! rustix; `pthread_atfork(3)` and `pthread_create(3)`, which rustix does
//! not offer, through libc.

use rustix::thread::{membarrier as sys_membarrier, membarrier_query, MembarrierCommand};
use std::ffi::{c_void, CStr};
use std::io;
use std::panic::catch_unwind;
use std::ptr;

/// Registers the process for private expedited membarriers. Must succeed
/// before [`membarrier`] may be used.
pub(crate) fn membarrier_register() -> io::Result<()> {
    let supported = membarrier_query();
    if !supported.contains_command(MembarrierCommand::PrivateExpedited)
        || !supported.contains_command(MembarrierCommand::RegisterPrivateExpedited)
    {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel does not offer MEMBARRIER_CMD_PRIVATE_EXPEDITED",
        ));
    }
    sys_membarrier(MembarrierCommand::RegisterPrivateExpedited).map_err(io::Error::from)
}

/// Issues a full memory barrier on every CPU currently running a thread of
/// this process (and on the caller).
pub(crate) fn membarrier() -> io::Result<()> {
    sys_membarrier(MembarrierCommand::PrivateExpedited).map_err(io::Error::from)
}

/// Registers `prepare`, `parent` and `child` with `pthread_atfork(3)`: the C
/// library calls `prepare` in the forking thread just before `fork()`, then
/// `parent` in the parent and `child` in the child, each in the forking
/// thread, after the fork. Handlers cannot be unregistered.
pub(crate) fn register_atfork(
    prepare: extern "C" fn(),
    parent: extern "C" fn(),
    child: extern "C" fn(),
) -> io::Result<()> {
    // SAFETY: `pthread_atfork` only stores the three function pointers. They
    // are `extern "C" fn()`, the signature it calls them with, that neither
    // unwind (a panic in an `extern "C"` function aborts) nor read any
    // argument, and they stay valid while this crate's code is loaded (glibc
    // drops the handlers a shared object registered when it is unloaded).
    let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    if rc == 0 {
        Ok(())
    } else {
        // pthread_atfork returns the error number instead of setting errno.
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// What a thread started by [`spawn_after_fork`] runs: its name and body.
struct Start {
    name: &'static CStr,
    body: fn(),
}

/// Starts a detached thread named `name` that runs `body`, with
/// `pthread_create(3)` directly rather than `std::thread`.
///
/// For a forked child of a multi-threaded process. Every thread that Rust's
/// standard library starts or ends takes one process-wide lock (its
/// stack-overflow bookkeeping, `stack_overflow::thread_info`); a fork while
/// another thread holds it leaves it held in the child forever, and a
/// `std::thread` the child starts then blocks before it runs a line of its
/// body. The C library repairs its own thread bookkeeping in the child, so
/// a thread it starts runs. Such a thread has no stack-overflow message of
/// its own (an overflow is a plain `SIGSEGV`) and no name in
/// `std::thread::current()`; its kernel name is `name`.
///
/// A panic that leaves `body` ends the thread quietly (after the panic
/// hook has printed it): it must not cross the `extern "C"` boundary.
pub(crate) fn spawn_after_fork(name: &'static CStr, body: fn()) -> io::Result<()> {
    let start = Box::into_raw(Box::new(Start { name, body }));
    let mut thread: libc::pthread_t = 0;
    // SAFETY: `thread` is a valid out-pointer; null attributes mean the
    // defaults; `run` has the signature `pthread_create` calls with, and
    // never unwinds (it catches `body`'s panics); `start` is a pointer from
    // `Box::into_raw` that only `run` takes back, if the thread starts.
    let rc = unsafe { libc::pthread_create(&mut thread, ptr::null(), run, start.cast()) };
    if rc != 0 {
        // SAFETY: no thread started, so `start` was not taken back by
        // `run`: this is its only owner.
        drop(unsafe { Box::from_raw(start) });
        // pthread_create returns the error number instead of setting errno.
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: `thread` was just started, is joinable, and is neither joined
    // nor detached anywhere else: detaching it frees its resources when it
    // ends.
    let rc = unsafe { libc::pthread_detach(thread) };
    debug_assert_eq!(rc, 0, "pthread_detach of a thread just started");
    Ok(())
}

/// The start routine of [`spawn_after_fork`]'s threads.
extern "C" fn run(start: *mut c_void) -> *mut c_void {
    // SAFETY: `start` is the `Box<Start>` that `spawn_after_fork` gave up
    // with `Box::into_raw` for this thread alone.
    let Start { name, body } = *unsafe { Box::from_raw(start.cast::<Start>()) };
    // A name is for debuggers and `ps`; a thread without one works the same.
    let _ = rustix::thread::set_name(name);
    // The panic hook has reported the panic; the body's own guards have
    // cleaned up during the unwinding.
    let _ = catch_unwind(body);
    ptr::null_mut()
}

/// Writes `bytes` to the standard error descriptor with `write(2)`,
/// retrying short writes and `EINTR`, and dropping them on any other error.
///
/// For a forked child: it takes no lock. The standard library's stderr
/// lock is held by whichever thread is writing to stderr, and in a child
/// forked meanwhile it stays held forever.
pub(crate) fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match rustix::io::write(rustix::stdio::stderr(), bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    }
}
