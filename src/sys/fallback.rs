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
pub(crate) fn membarrier() -> io::Result<()> {
    membarrier_register()
}
