//! A vhost-user-blk backend on rust-vmm's `vhost-user-backend` 0.24, with a
//! RAM disk, that notifies the guest through `rcu_defer::virtio::IrqNotifier`
//! per request or batched per pass (see `docs/vhost-user-blk.md` and the
//! binary's `--help`).
//!
//! Guest memory: vhost-user-backend's types are written over
//! `GuestMemoryAtomic<GuestMemoryMmap<B>>` (`VhostUserDaemon::new` takes
//! one, `VhostUserBackend::update_memory` receives one, and the backend's
//! vring type must be a `VringT<GuestMemoryAtomic<..>>`), so the daemon and
//! its vrings keep that type. The request path does not use it: the
//! backend mirrors each map it is handed into an
//! `rcu_defer::vm::GuestMemoryRcu` (a `GuestMemoryMmap` clone shares the
//! mapped regions), and pops chains, copies data and updates the used ring
//! through handles of that, on the vring's `virtio_queue::Queue` directly.
//! Only vhost-user-backend's own accesses (reading the used index at
//! `SET_VRING_ADDR`) go through the `GuestMemoryAtomic`.
//!
//! Modules: [`disk`] (the RAM disk and its pattern), [`request`] (virtio-blk
//! requests on a virtqueue, independent of vhost-user), [`backend`] (the
//! vhost-user glue), [`serve`] (one connection served on a thread, for
//! in-process use), [`cli`] (the command line and the stats line).

pub mod backend;
pub mod cli;
pub mod disk;
pub mod request;
pub mod serve;

use std::fmt;
use std::io::{self, Write};

/// Prints `vhost-user-blk: <message>` on stderr. Never panics (a closed
/// stderr is ignored).
pub fn warn(message: fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "vhost-user-blk: {message}");
}
