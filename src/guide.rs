//! Guide: moving device code from `RwLock<T>` to [`RcuCell<T>`].
//!
//! This module has no code of its own; every snippet below runs as a doc
//! test.
//!
//! # Why
//!
//! Device code often guards its configuration (queue sizes, feature bits,
//! the table of backing files) with an `RwLock`, and every I/O request
//! takes the read lock. Even uncontended, each `read()` is an atomic
//! read-modify-write on a cache line that every reader thread shares, and a
//! writer that holds the lock stops every request. An [`RcuCell`] read is
//! one load inside a read section that costs a thread-local store and a
//! compiler fence, and a writer never stops a reader.
//!
//! # 1. Readers
//!
//! Before:
//!
//! ```
//! use std::sync::RwLock;
//!
//! struct Config { queue_size: u16, read_only: bool }
//! struct Device { config: RwLock<Config> }
//!
//! fn handle_request(dev: &Device) -> u16 {
//!     let config = dev.config.read().unwrap();
//!     if config.read_only { 0 } else { config.queue_size }
//! }
//! # let dev = Device { config: RwLock::new(Config { queue_size: 128, read_only: false }) };
//! # assert_eq!(handle_request(&dev), 128);
//! ```
//!
//! After: take a [`ReadGuard`](crate::ReadGuard) and read through it. The
//! reference lives as long as the guard; the value it points to stays valid
//! even if a writer replaces it meanwhile.
//!
//! ```
//! use rcu_defer::{read_lock, RcuCell};
//!
//! struct Config { queue_size: u16, read_only: bool }
//! struct Device { config: RcuCell<Config> }
//!
//! fn handle_request(dev: &Device) -> u16 {
//!     let guard = read_lock();
//!     let config = dev.config.read(&guard);
//!     if config.read_only { 0 } else { config.queue_size }
//! }
//! # let dev = Device { config: RcuCell::new(Config { queue_size: 128, read_only: false }) };
//! # assert_eq!(handle_request(&dev), 128);
//! ```
//!
//! What changes for readers: nothing blocks, nothing is poisoned, and two
//! reads in one section may see two different versions if a writer
//! published in between (read once and keep the reference if the request
//! needs one consistent view). The guard cannot leave the thread.
//!
//! # 2. Writers
//!
//! An `RwLock` writer mutates in place. An RCU writer builds a new value and
//! publishes it; readers that started earlier keep the old one, which is
//! dropped after a grace period. [`RcuCell::update`] is the usual form:
//! copy, modify, publish. Writers are serialized with each other, so two
//! concurrent updates never lose a change.
//!
//! ```
//! use rcu_defer::{read_lock, RcuCell};
//!
//! #[derive(Clone)]
//! struct Config { queue_size: u16, read_only: bool }
//!
//! let config = RcuCell::new(Config { queue_size: 128, read_only: false });
//!
//! // Before: `config.write().unwrap().read_only = true;`
//! config.update(|old| Config { read_only: true, ..old.clone() });
//!
//! let guard = read_lock();
//! assert!(config.read(&guard).read_only);
//! ```
//!
//! [`RcuCell::replace`] publishes a whole new value without looking at the
//! old one. Both return at once: the old value is dropped later on the
//! `rcu-call` thread (call [`drain_call_rcu`](crate::drain_call_rcu) to wait
//! for that, e.g. before checking that a file was closed).
//! [`RcuCell::replace_sync`] waits for the grace period and hands the old
//! value back, for when the writer must finish with it itself (close a
//! backing file, return buffers to a pool):
//!
//! ```
//! use rcu_defer::RcuCell;
//!
//! let backing = RcuCell::new(String::from("disk-a.img"));
//! let old = backing.replace_sync(String::from("disk-b.img"));
//! // No reader can still see `old`: release what it owns here.
//! assert_eq!(old, "disk-a.img");
//! ```
//!
//! Fields that readers themselves update (statistics counters) do not fit
//! the copy-and-publish model; keep them outside the cell, or make them
//! atomics inside it, which every version then shares through an `Arc`.
//!
//! # 3. What must not happen inside a read section
//!
//! A read section must not wait for a grace period: the grace period waits
//! for the section, so the thread would wait for itself. `synchronize_rcu`,
//! `drain_call_rcu` and `RcuCell::replace_sync` check for this and panic
//! with the place where the section was entered (the `try_` forms return
//! [`Error::InReadSection`](crate::Error::InReadSection)). Keep sections
//! short and free of blocking calls in general: a long section delays every
//! writer's grace period, and one that lasts longer than the stall timeout
//! is reported. Put [`assert_may_block`](crate::assert_may_block) at the
//! top of your own blocking functions so that a call from inside a section
//! is caught on its first use:
//!
//! ```
//! use rcu_defer::{read_lock, try_synchronize_rcu, Error};
//!
//! fn reload_config_from_disk() {
//!     rcu_defer::assert_may_block("reload_config_from_disk");
//!     // ... read a file, then RcuCell::replace_sync ...
//! }
//!
//! reload_config_from_disk(); // fine: not in a section
//!
//! let guard = read_lock();
//! assert!(matches!(try_synchronize_rcu(), Err(Error::InReadSection { .. })));
//! assert!(std::panic::catch_unwind(reload_config_from_disk).is_err());
//! drop(guard);
//! ```
//!
//! If code must wait while it batches, use a
//! [`defer_scope`](crate::defer_scope) instead of a read section (next
//! step): it batches calls without being a read section.
//!
//! # 4. Batching side effects with `call_local`
//!
//! With `RwLock`, each request typically takes the lock, completes, and
//! notifies the guest. With RCU, wrap the whole completion pass in one read
//! section: every guard taken inside it (by your code or by libraries you
//! call) becomes a counter increment, and side effects deferred with
//! [`call_local`](crate::call_local) run once per distinct (function, `Arc`)
//! when the pass ends.
//!
//! ```
//! use rcu_defer::{call_local, read_lock, RcuCell};
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//!
//! struct Config { queue_size: u16 }
//! struct Queue { config: RcuCell<Config>, interrupts: AtomicU32 }
//!
//! fn notify_guest(q: &Queue) {
//!     q.interrupts.fetch_add(1, Ordering::Relaxed); // an eventfd write in real code
//! }
//! // One function pointer for every call site: a function can have several
//! // addresses in an optimised build, and call_local deduplicates by address.
//! static NOTIFY_GUEST: fn(&Queue) = notify_guest;
//!
//! fn complete(q: &Arc<Queue>) {
//!     let guard = read_lock(); // nested inside the pass: no fence
//!     let _size = q.config.read(&guard).queue_size;
//!     call_local(NOTIFY_GUEST, q); // recorded once per pass
//! }
//!
//! let q = Arc::new(Queue {
//!     config: RcuCell::new(Config { queue_size: 256 }),
//!     interrupts: AtomicU32::new(0),
//! });
//! {
//!     let _pass = read_lock();
//!     for _ in 0..64 {
//!         complete(&q);
//!     }
//! }
//! assert_eq!(q.interrupts.load(Ordering::Relaxed), 1);
//! ```
//!
//! For guest notifications over an irqfd, [`virtio::IrqNotifier`] does this
//! for you, including the interrupt status bit and statistics.
//!
//! [`RcuCell`]: crate::RcuCell
//! [`RcuCell<T>`]: crate::RcuCell
//! [`RcuCell::update`]: crate::RcuCell::update
//! [`RcuCell::replace`]: crate::RcuCell::replace
//! [`RcuCell::replace_sync`]: crate::RcuCell::replace_sync
//! [`virtio::IrqNotifier`]: crate::virtio::IrqNotifier
