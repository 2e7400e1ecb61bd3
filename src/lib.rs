//! Userspace RCU (read-copy-update) for device and data-plane code.
//!
//! RCU splits a shared data structure's users into *readers*, who must be
//! cheap and must never wait, and *writers*, who may wait. A writer never
//! changes data a reader may be looking at: it publishes a new version and
//! frees the old one only after a *grace period*, a wait long enough that
//! every reader that could have seen the old version has finished.
//!
//! This page gives the concepts. The [`guide`] teaches the crate topic by
//! topic (moving from `RwLock`, rust-vmm and vhost-user devices, data-plane
//! threads, reports, sandboxes, `fork`, signal handlers, correctness), with
//! the API at a glance and the Cargo features on its first page.
//!
//! # Read sections
//!
//! A reader brackets its accesses with a read section: [`read_lock`] returns
//! a [`ReadGuard`], and the section lasts until the guard is dropped.
//! Sections nest freely; only the outermost one does any work, and that work
//! is a store to the thread's own reader record plus a compiler fence (in
//! the default flavor). There is no registration call: a thread registers on
//! its first `read_lock` and unregisters when it exits. A guard is neither
//! `Send` nor `Sync`; the section belongs to its thread.
//!
//! # Grace periods
//!
//! [`synchronize_rcu`] returns once every read section that was running when
//! it was called has ended. Concurrent callers share grace periods.
//! [`call_rcu`] queues a callback to run after a grace period on a background
//! thread named `rcu-call`, without blocking the caller, and
//! [`drain_call_rcu`] waits until every callback queued before it has run.
//! Callbacks queued close together share one grace period: a small batch
//! waits a few milliseconds for more ([`set_call_rcu_batch_window`]), so a
//! writer that retires values thousands of times a second does not
//! interrupt every reader thousands of times a second.
//!
//! [`RcuCell`] packages the pattern for one value: readers get a `&T` for the
//! length of their section, writers [`replace`](RcuCell::replace) or
//! [`update`](RcuCell::update) it, and old values are dropped after a grace
//! period (or handed back after one: [`RcuCell::replace_retired`] and
//! [`Retired::wait`]).
//!
//! ```
//! use rcu_defer::{read_lock, RcuCell};
//! use std::sync::Arc;
//! use std::thread;
//!
//! #[derive(Debug)]
//! struct Config { queue_size: u16 }
//!
//! let config = Arc::new(RcuCell::new(Config { queue_size: 128 }));
//! let reader = {
//!     let config = Arc::clone(&config);
//!     thread::spawn(move || {
//!         for _ in 0..1000 {
//!             let guard = read_lock();
//!             let size = config.read(&guard).queue_size;
//!             assert!(size == 128 || size == 256);
//!         }
//!     })
//! };
//! config.replace(Config { queue_size: 256 }); // the old value is dropped after a grace period
//! reader.join().unwrap();
//! rcu_defer::drain_call_rcu(); // wait for the old value to be dropped
//! ```
//!
//! # Async code, and values that must leave the section
//!
//! A read section belongs to its thread: a [`ReadGuard`] is not `Send`, so a
//! future that holds one across an `.await` is not `Send` either, and a
//! multi-threaded executor will not spawn it. That is on purpose: the task
//! could resume on another thread, and a section held while the task is
//! suspended would hold up every grace period for as long as it sleeps. So
//! in async code (and around blocking I/O):
//!
//! - read in a block with no `.await` in it, and take out what the rest
//!   needs: a copy of a field, [`RcuCell::get_cloned`], or, for an
//!   `RcuCell<Arc<U>>`, [`RcuCell::load_full`], an `Arc` that stays valid
//!   for as long as it is held, with no section open;
//! - write with [`RcuCell::replace`], [`RcuCell::update`] and [`call_rcu`],
//!   which never wait; what waits for a grace period ([`synchronize_rcu`],
//!   [`RcuCell::replace_sync`], [`Retired::wait`], [`drain_call_rcu`])
//!   blocks its thread, so run it where blocking is allowed (tokio's
//!   `spawn_blocking`, a thread of your own).
//!
//! ```
//! use rcu_defer::{read_lock, RcuCell};
//! use std::sync::Arc;
//!
//! struct Backend { path: String, read_only: bool }
//!
//! async fn write_request(backend: &RcuCell<Arc<Backend>>) -> Result<(), String> {
//!     {
//!         let guard = read_lock();
//!         if backend.read(&guard).read_only {
//!             return Err("read-only".into());
//!         }
//!     } // the section ends here, before any .await
//!     let snapshot = backend.load_full(); // owned: it may cross an .await
//!     submit(&snapshot.path).await;
//!     Ok(())
//! }
//! # async fn submit(_path: &str) {}
//!
//! fn spawnable<F: std::future::Future + Send>(_: F) {}
//! let backend = RcuCell::new(Arc::new(Backend { path: "/srv/a.img".into(), read_only: false }));
//! spawnable(write_request(&backend)); // the future is Send
//! ```
//!
//! # Deferred local calls
//!
//! [`call_local`] records a call to make when the thread's *outermost* read
//! section ends, once per (function, `Arc`) pair: an I/O thread that
//! completes 64 requests in one pass inside one read section notifies the
//! guest once, not 64 times. Outside any section the call is made at once,
//! so code that does not batch behaves as before. [`call_local_fn`] defers a
//! closure without deduplication, and a [`DeferScope`] ([`defer_scope`])
//! batches without entering a read section, for code that must block while
//! it batches. Pending calls run on the same thread, in first-recorded
//! order, after the thread has left its section.
//!
//! Wrapping a whole pass in one outer guard also removes the fences of
//! every guard nested inside it: only the outermost one publishes anything.
//!
//! ```
//! use rcu_defer::{call_local, read_lock};
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//!
//! struct Queue { interrupts: AtomicU64 }
//! fn notify_guest(q: &Queue) { q.interrupts.fetch_add(1, Ordering::Relaxed); }
//!
//! let queue = Arc::new(Queue { interrupts: AtomicU64::new(0) });
//! {
//!     let _pass = read_lock();
//!     for _request in 0..64 {
//!         let _inner = read_lock(); // nested: a counter increment, no fence
//!         call_local(notify_guest, &queue);
//!     }
//! }
//! assert_eq!(queue.interrupts.load(Ordering::Relaxed), 1);
//! ```
//!
//! The [`virtio`] module applies this to guest notifications:
//! [`IrqNotifier::notify`](virtio::IrqNotifier::notify) sets the interrupt
//! status at once and signals the irqfd once per outermost section.
//!
//! # rust-vmm, and the Cargo features
//!
//! For virtual machine monitors and vhost-user backends built on rust-vmm:
//!
//! - [`virtio`] (always): [`IrqNotifier`](virtio::IrqNotifier), batched
//!   guest notifications over any [`Notify`](virtio::Notify); its
//!   documentation has a `virtio-queue` device loop.
//! - `vm` (feature **`vm-memory`**, vm-memory 0.18):
//!   `GuestMemoryRcu`, a drop-in for `vm_memory::GuestMemoryAtomic` whose
//!   `memory()` is a read section instead of a reference count; its
//!   documentation lists the differences (a handle is not `Send`; owned
//!   snapshots are).
//! - `vhost_user` (feature **`vhost-user-backend`**, Linux,
//!   vhost-user-backend 0.24): the vring type and memory mirroring that let
//!   a `VhostUserBackend` serve its queues through `GuestMemoryRcu` and
//!   notify through `IrqNotifier` with no lock trap; also `Notify` for
//!   `vmm_sys_util::event::EventNotifier`. Turns on `vm-memory` and
//!   `vmm-sys-util`.
//! - **`vmm-sys-util`** (Linux): `Notify` for
//!   `vmm_sys_util::eventfd::EventFd`.
//! - **`log`** and **`tracing`**: where [reports](#reports) go by default;
//!   with `tracing`, one event when a guest notification is requested and
//!   one when it is sent.
//!
//! A read section that holds back batched guest notifications for longer
//! than the stall timeout is reported even if no writer waits (see
//! [`virtio`](virtio#sections-that-block)).
//!
//! # Flavors
//!
//! The price of a read section is the price of its memory fences. In the
//! [`Flavor::Membarrier`] flavor (the default on Linux when the kernel offers
//! `membarrier(2)`), readers pay only compiler fences and each step of a
//! grace period pays one `membarrier` system call that makes every running
//! reader execute a full fence. In the [`Flavor::Fence`] flavor, readers pay
//! a real fence on entering and leaving their outermost section. The flavor
//! is chosen once per process; [`flavor`] reports it, [`set_flavor`] called
//! before the first read section chooses it (a sandbox whose seccomp filter
//! refuses `membarrier(2)` chooses [`Flavor::Fence`]), and
//! `RCU_DEFER_FLAVOR=fence|membarrier` forces one.
//!
//! # Data-plane threads and polled grace periods
//!
//! A polling thread can go *online* ([`online`]): its read sections then
//! only count their depth and note where the outermost one began, in
//! thread-local memory, with no fence and no store a writer looks at, and
//! grace periods wait for the thread itself until it reports a quiescent
//! state ([`Online::quiescent`]), goes offline ([`Online::offline`],
//! dropping the handle) or exits. That is liburcu's `urcu-qsbr`; online
//! and ordinary threads mix freely, and waits called from an online thread
//! outside a read section go offline for their duration.
//!
//! ```
//! use rcu_defer::{online, read_lock, RcuCell};
//! use std::sync::Arc;
//!
//! let routes = Arc::new(RcuCell::new(vec![10, 20]));
//! let poller = {
//!     let routes = Arc::clone(&routes);
//!     std::thread::spawn(move || {
//!         let online = online();
//!         let mut seen = 0;
//!         for _ in 0..100 {
//!             {
//!                 let guard = read_lock(); // a counter increment, no fence
//!                 seen += routes.read(&guard).len();
//!             }
//!             online.quiescent(); // once per loop iteration
//!         }
//!         seen
//!     })
//! };
//! routes.replace(vec![30]);
//! assert!(poller.join().unwrap() >= 100);
//! ```
//!
//! A writer that must not block takes a cookie
//! ([`start_poll_synchronize_rcu`], a [`PollState`]) after unpublishing
//! and frees once [`poll_state_synchronize_rcu`] says its grace period has
//! completed (one atomic load), or waits with [`cond_synchronize_rcu`],
//! which returns at once if it has:
//!
//! ```
//! use rcu_defer::{cond_synchronize_rcu, poll_state_synchronize_rcu, start_poll_synchronize_rcu};
//!
//! let cookie = start_poll_synchronize_rcu();
//! // ... the event loop polls `poll_state_synchronize_rcu(cookie)` ...
//! cond_synchronize_rcu(cookie);
//! assert!(poll_state_synchronize_rcu(cookie));
//! ```
//!
//! More, with examples: [`guide::data_plane`].
//!
//! # Deadlocks and stalls
//!
//! A grace period waits for every running read section, including one held
//! by the thread that waits. So [`synchronize_rcu`] or [`drain_call_rcu`]
//! called inside a read section would never return; instead they panic
//! with the location where the section was entered, and
//! [`try_synchronize_rcu`] and [`try_drain_call_rcu`] return
//! [`Error::InReadSection`]. [`assert_may_block`] puts the same check at the
//! top of your own blocking functions. A reader that stays in its section
//! for longer than the stall timeout ([`set_stall_timeout`], 21 s by
//! default) is named in a [`StallReport`] given to the stall handler
//! ([`set_stall_handler`]), and [`synchronize_rcu_timeout`] and
//! [`drain_call_rcu_timeout`] give up with one.
//!
//! Nothing that goes wrong during a grace period frees a value early. A
//! stall handler that panics is caught and reported, and the grace period
//! goes on waiting. If `membarrier(2)` starts failing (a seccomp filter
//! installed after the first read section), grace periods fail with
//! [`Error::MembarrierFailed`] and everything retired stays allocated; a
//! grace period that fails or unwinds wakes the writers waiting for it, and
//! the `rcu-call` thread keeps its callbacks queued and retries.
//!
//! A thread that exits while it still holds a read section (a guard leaked
//! with `mem::forget`) is reported at exit, with the location
//! where the section was entered. The section is *not* closed for it: the
//! guard might live in another thread-local whose destructor still reads
//! through it, so closing it would be unsound. Grace periods then wait for
//! it, and stall reports name the thread as exited.
//!
//! ```
//! use rcu_defer::{read_lock, try_synchronize_rcu, Error};
//!
//! let guard = read_lock();
//! match try_synchronize_rcu() {
//!     Err(Error::InReadSection { op, depth, entered_at }) => {
//!         assert_eq!((op, depth), ("synchronize_rcu", 1));
//!         println!("would deadlock: section entered at {entered_at}");
//!     }
//!     other => panic!("expected a deadlock error, got {other:?}"),
//! }
//! drop(guard);
//! try_synchronize_rcu().unwrap();
//! ```

//!
//! # Reports
//!
//! What goes wrong where no caller can be given an error (a [`call_rcu`]
//! callback that panics, a failed guest notification, a thread that exits
//! inside a read section, a stalled grace period under the default stall
//! handler, an unusable `RCU_DEFER_FLAVOR`) is a [`Report`], with a
//! [`ReportKind`] and a [`Severity`]. Reports go to the handler set with
//! [`set_report_handler`]; without one, to the `log` facade (feature `log`)
//! or to `tracing` (feature `tracing`) when a logger or subscriber takes
//! their level at target `rcu_defer`, and to stderr otherwise. A handler
//! runs with none of rcu-defer's locks held, and a panic in it is caught.
//!
//! ```
//! // Route rcu-defer's reports into the program's own log.
//! rcu_defer::set_report_handler(|report| {
//!     eprintln!("[{:?}] rcu-defer: {report}", report.severity());
//! });
//! ```
//!
//! More, with examples: [`guide::reports`].
//!
//! # fork
//!
//! `fork()` at any moment is safe for both processes, with no call to make:
//! on Linux, rcu-defer registers `pthread_atfork` handlers before it first
//! takes one of its locks, and they hold those locks across the fork. The
//! parent is unaffected. The child, which has only the forking thread,
//! keeps that thread's reader state (an open read section, pending
//! [`call_local`] calls) and none of the other threads' records, so their
//! sections never hold up its grace periods and its stall reports never
//! name them. Its next [`call_rcu`] or drain starts a new `rcu-call`
//! thread (with `pthread_create`: a `std::thread` started in the child of a
//! multi-threaded process can block forever on a lock of Rust's standard
//! library that another thread held at the fork), which runs the callbacks
//! queued before the fork, the batch that was waiting for its grace period
//! included; the batch the `rcu-call` thread was running at the fork is not
//! run in the child (the parent runs it). Its reports to stderr take no
//! lock of the standard library either. An [`RcuCell`] that another thread
//! was writing at the fork can be written in the child. Your own locks are
//! not covered: one held by another thread at the fork stays locked in the
//! child.
//!
//! More, with an example: [`guide::fork`].
//!
//! # Signal handlers
//!
//! A read section entered in a signal handler is async-signal-safe only
//! nested inside a section that the interrupted code holds (check
//! [`in_read_section`] first): then [`read_lock`] and the guard's drop
//! only change a counter, and [`RcuCell::read`] is one atomic load. A
//! thread's first `read_lock` (registration allocates and takes a lock), an
//! outermost section's end (it may take a lock to wake a writer, and runs
//! deferred calls), and every writer-side function are not
//! async-signal-safe.
//!
//! More, with an example: [`guide::signals`].

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms)]

mod call_rcu;
mod cell;
mod detect;
mod erased;
mod event;
#[cfg(loom)]
mod fault;
mod flavor;
mod fork;
mod grace;
pub mod guide;
mod local;
mod online;
mod poll;
mod reader;
mod report;
mod section_calls;
mod sync;
mod sys;
mod thread_bound;
#[cfg(all(target_os = "linux", feature = "vhost-user-backend"))]
#[cfg_attr(
    docsrs,
    doc(cfg(all(target_os = "linux", feature = "vhost-user-backend")))
)]
pub mod vhost_user;
pub mod virtio;
#[cfg(feature = "vm-memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "vm-memory")))]
pub mod vm;
mod watchdog;

pub use call_rcu::{
    call_rcu, drain_call_rcu, drain_call_rcu_timeout, set_call_rcu_batch_window, try_drain_call_rcu,
};
pub use cell::{RcuCell, Retired};
pub use detect::{
    assert_may_block, set_stall_handler, set_stall_timeout, Error, StallReport, StalledReader,
};
pub use flavor::{flavor, set_flavor, Flavor, FlavorError};
pub use grace::{synchronize_rcu, synchronize_rcu_timeout, try_synchronize_rcu};
pub use local::{call_local, call_local_fn, defer_scope, DeferScope};
pub use online::{online, Online};
pub use poll::{
    cond_synchronize_rcu, get_state_synchronize_rcu, poll_state_synchronize_rcu,
    start_poll_synchronize_rcu, PollState,
};
pub use reader::{in_read_section, read_depth, read_lock, ReadGuard};
pub use report::{set_report_handler, Report, ReportKind, Severity};

#[doc(hidden)]
pub use flavor::{barrier_stats, BarrierStats};
#[doc(hidden)]
pub use reader::{registry_stats, RegistryStats};

#[cfg(loom)]
#[doc(hidden)]
pub use call_rcu::loom_stop_call_rcu_thread;
#[cfg(loom)]
#[doc(hidden)]
pub use fault::{loom_inject_fault, LoomFault};

// The marker `thread_bound::ThreadBound` costs nothing: the guards stay
// zero-sized. (Here, not in `thread_bound`, which sits below the types it
// marks: see docs/architecture.md.)
const _: () =
    assert!(std::mem::size_of::<ReadGuard>() == 0 && std::mem::size_of::<DeferScope>() == 0);

/// The README's examples run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
