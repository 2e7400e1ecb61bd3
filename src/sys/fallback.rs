//! Platforms without `membarrier(2)` (and loom): the membarrier flavor is
//! never available, so readers use the fence flavor.

use std::io;

/// Always fails: there is no process-wide barrier here.
pub(crate) fn membarrier_register() -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "membarrier(2) is not available on this platform",
    ))
}

/// Never called: registration always fails, so the flavor is `Fence`.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn membarrier() -> io::Result<()> {
    membarrier_register()
}

/// Does nothing: fork handlers are registered on Linux only (and never
/// under loom, which has no processes).
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn register_atfork(
    _prepare: extern "C" fn(),
    _parent: extern "C" fn(),
    _child: extern "C" fn(),
) -> io::Result<()> {
    Ok(())
}

/// Starts a thread named `name` that runs `body`, with `std::thread`: no
/// fork handlers run here, so no child needs another way.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn spawn_after_fork(name: &'static std::ffi::CStr, body: fn()) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.to_string_lossy().into_owned())
        .spawn(body)
        .map(drop)
}

/// Writes `bytes` to stderr (through the standard library: no fork handlers
/// run here, so no child needs another way); errors are dropped.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn write_stderr(bytes: &[u8]) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(bytes);
}
