//! Linux: `membarrier(2)` with `MEMBARRIER_CMD_PRIVATE_EXPEDITED`, through
//! rustix.

use rustix::thread::{membarrier as sys_membarrier, membarrier_query, MembarrierCommand};
use std::io;

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
