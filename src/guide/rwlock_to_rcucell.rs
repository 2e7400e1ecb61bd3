//! Moving device code from `RwLock<T>` to [`RcuCell<T>`].
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
//! needs one consistent view). The guard cannot leave the thread, and a
//! section should not last across blocking I/O or an `.await`: a request
//! that needs the value after its section takes an owned copy,
//! [`RcuCell::get_cloned`], or, with the value kept as an `Arc`
//! (`RcuCell<Arc<Config>>`), [`RcuCell::load_full`], which clones only the
//! `Arc` (the [crate documentation](crate#async-code-and-values-that-must-leave-the-section)
//! has more on async code).
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
//! A write that may be refused (a value that fails validation) is
//! [`RcuCell::try_update`]: the closure returns `Err` and nothing changes.
//!
//! ```
//! use rcu_defer::{read_lock, RcuCell};
//!
//! #[derive(Clone)]
//! struct Config { queue_size: u16, read_only: bool }
//!
//! let config = RcuCell::new(Config { queue_size: 128, read_only: false });
//!
//! // Before:
//! //     let mut config = config.write().unwrap();
//! //     if !size.is_power_of_two() { return Err(..) }
//! //     config.queue_size = size;
//! let set_queue_size = |size: u16| {
//!     config.try_update(|old| {
//!         if !size.is_power_of_two() {
//!             return Err("the queue size must be a power of two");
//!         }
//!         Ok(Config { queue_size: size, ..old.clone() })
//!     })
//! };
//! assert!(set_queue_size(100).is_err());
//! set_queue_size(256).unwrap();
//! assert_eq!(config.read(&read_lock()).queue_size, 256);
//! ```
//!
//! [`RcuCell::replace`] publishes a whole new value without looking at the
//! old one. All of these return at once, and the old value is dropped later
//! on the `rcu-call` thread. When the writer must finish with the old value
//! itself (return buffers to a pool, flush a backing file and close it on a
//! thread of its choosing), [`RcuCell::replace_retired`] hands it back as a
//! [`Retired`] to [`wait`](crate::Retired::wait) for where blocking is
//! allowed, and [`RcuCell::replace_sync`] does both in one call:
//!
//! ```
//! use rcu_defer::RcuCell;
//!
//! let backing = RcuCell::new(String::from("disk-a.img"));
//! let old = backing.replace_retired(String::from("disk-b.img"));
//! // The writer goes on; readers already see "disk-b.img".
//! let old = old.wait(); // after a grace period: no reader can still see it
//! assert_eq!(old, "disk-a.img"); // release what it owns here
//!
//! assert_eq!(backing.replace_sync(String::from("disk-c.img")), "disk-b.img");
//! ```
//!
//! Either way, what comes back is the value *that call* replaced. Versions
//! retired earlier by `replace` or `update` (or by a dropped `Retired`) may
//! still be queued, each for its own grace period, holding what it holds.
//! Before anything that needs every old version gone (checking that a
//! backing file is closed, unmapping memory, shutting down), call
//! [`drain_call_rcu`](crate::drain_call_rcu): it returns once every callback
//! queued before it has run, and with them every version retired before.
//!
//! ```
//! use rcu_defer::{drain_call_rcu, RcuCell};
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//!
//! struct Backing { open_files: Arc<AtomicUsize> }
//! impl Drop for Backing {
//!     fn drop(&mut self) { self.open_files.fetch_sub(1, Ordering::SeqCst); } // close(2)
//! }
//! let open_files = Arc::new(AtomicUsize::new(0));
//! let open = || {
//!     open_files.fetch_add(1, Ordering::SeqCst);
//!     Backing { open_files: Arc::clone(&open_files) }
//! };
//!
//! let backing = RcuCell::new(open());
//! backing.replace(open()); // the first file is closed after a grace period
//! drop(backing.replace_sync(open())); // closes the second one only
//! drain_call_rcu(); // now the first one is closed too
//! assert_eq!(open_files.load(Ordering::SeqCst), 1);
//! ```
//!
//! Set-up and teardown phases, where one owner holds the cell, need no
//! grace period: [`RcuCell::get_mut`] and [`RcuCell::into_inner`] replace
//! `RwLock::get_mut` and `RwLock::into_inner` (with no poisoning to
//! unwrap). A `static` cell is a `LazyLock<RcuCell<T>>` (see
//! [`RcuCell`]'s documentation).
//!
//! Fields that readers themselves update (statistics counters) do not fit
//! the copy-and-publish model; keep them outside the cell, or make them
//! atomics inside it, which every version then shares through an `Arc`.
//!
//! # 3. What must not happen inside a read section
//!
//! A read section must not wait for a grace period: the grace period waits
//! for the section, so the thread would wait for itself. `synchronize_rcu`,
//! `drain_call_rcu`, `RcuCell::replace_sync` and `Retired::wait` check for
//! this and panic with the place where the section was entered (the `try_`
//! forms return [`Error::InReadSection`](crate::Error::InReadSection)). Keep sections
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
//! [`RcuCell::replace_retired`]: crate::RcuCell::replace_retired
//! [`RcuCell::try_update`]: crate::RcuCell::try_update
//! [`RcuCell::get_mut`]: crate::RcuCell::get_mut
//! [`RcuCell::get_cloned`]: crate::RcuCell::get_cloned
//! [`RcuCell::load_full`]: crate::RcuCell::load_full
//! [`RcuCell::into_inner`]: crate::RcuCell::into_inner
//! [`Retired`]: crate::Retired
//! [`virtio::IrqNotifier`]: crate::virtio::IrqNotifier
