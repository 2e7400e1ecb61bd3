//! Platform code: the process-wide memory barrier behind the membarrier
//! flavor, the registration of the fork handlers, the start of a thread and
//! the writes to stderr in a forked child, and (Linux) the eventfd
//! behind `virtio::EventFd`. One cfg-selected file per platform, and a
//! fallback that always compiles (and that loom uses).

#[cfg(all(target_os = "linux", not(loom)))]
mod linux;
#[cfg(all(target_os = "linux", not(loom)))]
pub(crate) use linux::{
    membarrier, membarrier_register, register_atfork, spawn_after_fork, write_stderr,
};
#[cfg(target_os = "linux")]
pub(crate) mod eventfd;

#[cfg(not(all(target_os = "linux", not(loom))))]
mod fallback;
#[cfg(not(all(target_os = "linux", not(loom))))]
pub(crate) use fallback::membarrier_register;
// Under loom the membarrier flavor is emulated (`flavor::emulated`).
#[cfg(all(not(target_os = "linux"), not(loom)))]
pub(crate) use fallback::membarrier;
// Under loom nothing registers fork handlers (`fork.rs`).
#[cfg(all(not(target_os = "linux"), not(loom)))]
pub(crate) use fallback::{register_atfork, spawn_after_fork, write_stderr};
