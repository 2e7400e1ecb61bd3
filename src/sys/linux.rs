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
