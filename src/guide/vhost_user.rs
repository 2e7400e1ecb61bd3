//! In a vhost-user backend: guest memory, a pass per read section, and
//! signal moderation.
//!
//! The repository's `vhost-user-blk/` crate is a complete backend built this
//! way (its command line is in `docs/vhost-user-blk.md`); this page is what
//! it does with rcu-defer, for a backend of your own on rust-vmm's
//! `vhost-user-backend`.
//!
//! With the `vhost-user-backend` feature (Linux), `rcu_defer::vhost_user`
//! ships the pieces below: `RcuVring`, a `Vring` type whose `IrqNotifier`
//! follows SET_VRING_CALL and signals with no vring lock (a `Notify` that
//! calls `VringRwLock::signal_used_queue` would hang when a signal queued
//! under the vring's `get_mut()` guard runs), and `GuestMemoryRcu::follow`
//! for `update_memory`. The workspace's backend uses both.
//!
//! # Guest memory: a mirror in a `GuestMemoryRcu`
//!
//! vhost-user-backend's types are written over
//! `GuestMemoryAtomic<GuestMemoryMmap<B>>` (`VhostUserDaemon::new` takes
//! one, `VhostUserBackend::update_memory` hands one over, and a backend's
//! vring type must be a `VringT<GuestMemoryAtomic<..>>`), so
//! `vm::GuestMemoryRcu` cannot replace it inside the framework. The request
//! path can use `GuestMemoryRcu` anyway: the backend mirrors each map it is
//! handed (after `SET_MEM_TABLE`, `ADD_MEM_REG` and `REM_MEM_REG` alike) into
//! one (a `GuestMemoryMmap` clone shares the mapped regions), and pops
//! chains, copies data and fills the used ring through its handles, on the
//! vring's `virtio_queue::Queue` directly. Only vhost-user-backend's own
//! accesses go through the `GuestMemoryAtomic`.
//!
//! ```
//! use rcu_defer::vm::GuestMemoryRcu;
//! use std::ops::Deref;
//! use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap};
//!
//! struct Backend {
//!     mem: GuestMemoryRcu<GuestMemoryMmap<()>>, // what the request path reads
//! }
//!
//! impl Backend {
//!     // Called from `VhostUserBackend::update_memory` with the whole new map.
//!     fn update_memory(&self, atomic: GuestMemoryAtomic<GuestMemoryMmap<()>>) {
//!         let map = atomic.memory().deref().clone(); // the same regions, shared
//!         self.mem.lock().unwrap().replace(map); // the old map goes after a grace period
//!     }
//! }
//!
//! let backend = Backend { mem: GuestMemoryRcu::new(GuestMemoryMmap::new()) };
//! let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
//! backend.update_memory(GuestMemoryAtomic::new(ram));
//! assert_eq!(backend.mem.memory().num_regions(), 1);
//! ```
//!
//! # The call eventfd
//!
//! A vring's [`IrqNotifier`](crate::virtio::IrqNotifier) wraps a notifier
//! that signals whichever call eventfd the frontend set last: the frontend
//! may replace it at any time (`SET_VRING_CALL`), so the backend's vring type
//! keeps a duplicate of each fd that `SET_VRING_CALL` brings, and the
//! notifier's [`signal`](crate::virtio::Notify::signal) writes to the one
//! current then. With the `vmm-sys-util` feature,
//! [`Notify`](crate::virtio::Notify) is also implemented for
//! `vmm_sys_util::eventfd::EventFd` (see [`rust_vmm`](super::rust_vmm)).
//!
//! # A pass per read section, and when to batch
//!
//! A worker thread serves every queue that has work in one pass. Making the
//! pass one read section turns the pass's [`notify`] calls into at most one
//! eventfd write per queue, sent as the section ends. Whether that wins
//! depends on the driver, not on the device: a driver with a CPU of its own
//! that reaps completions while the device completes more loses its overlap
//! when the signal waits, while drivers sharing CPUs with the device, or a
//! guest for which each signal is an interrupt injection, gain. A
//! [`Moderation`](crate::virtio::Moderation) per worker thread chooses for
//! each pass by measuring both ways. It does not guess: it runs short epochs
//! of each way in alternation (a probe), keeps the one that completed more
//! per second, and probes again later; ties, and loads too light to measure,
//! go to signals at once, the lower-latency choice. It is a per-thread value
//! with no shared state, so it adds no synchronization to the signal path:
//!
//! ```
//! use rcu_defer::read_lock;
//! use rcu_defer::virtio::{Delivery, IrqNotifier, Moderation, Notify};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! #[derive(Default)]
//! struct CallFd(AtomicU64); // the frontend's call eventfd in a real backend
//! impl Notify for CallFd {
//!     fn signal(&self) -> std::io::Result<()> {
//!         self.0.fetch_add(1, Ordering::Relaxed);
//!         Ok(())
//!     }
//! }
//!
//! let irq = IrqNotifier::new(CallFd::default());
//! let mut moderation = Moderation::new(); // one per worker thread
//! for _pass in 0..100 {
//!     let delivery = moderation.start_pass();
//!     // Batched: the pass is one read section, and its signals go out as it ends.
//!     let pass = (delivery == Delivery::Batched).then(read_lock);
//!     let mut completed = 0;
//!     for _request in 0..16 {
//!         // ... pop a chain, serve it, add it to the used ring ...
//!         completed += 1;
//!         moderation.notify(&irq); // if the driver wants a signal (EVENT_IDX)
//!     }
//!     drop(pass);
//!     moderation.end_pass(completed);
//! }
//! let stats = irq.stats();
//! assert_eq!(stats.requested, 1600);
//! assert!(stats.signalled >= 100 && stats.signalled <= 1600);
//! ```
//!
//! Batching pays only if the device does not sleep while the driver
//! resubmits: the workspace's backend polls its queues for up to 128 µs
//! after a pass (as a QEMU IOThread's `poll-max-ns`, but longer than
//! QEMU's 32 µs default, which is shorter than waking an idle vCPU in a
//! VM), so the driver's next batch is served without a kick or a wake-up.
//! Then a pass's single signal wakes the driver once for the whole pass,
//! and both sides settle into passes that neither sleeps through: with
//! libblkio's driver, up to 1.3x per-request IOPS at iodepth 64, and up to
//! 1.6x without EVENT_IDX (BENCHMARKS.md, "libblkio against the backend").
//! A device thread that sleeps as soon as its queues are empty turns each
//! held signal into two wake-ups per round trip when the driver has a CPU
//! of its own (one queue, iodepth 16 to 64), and batching every pass loses
//! up to half the IOPS: that is the case the moderation measures and
//! avoids.
//!
//! To batch every pass, hold `read_lock()` across each one and call
//! [`notify`] directly; to signal each completion, call
//! [`notify_now`](crate::virtio::IrqNotifier::notify_now). The backend's
//! `--notify always-batched`, `batched` and `per-request` are these three.
//!
//! [`notify`]: crate::virtio::IrqNotifier::notify
