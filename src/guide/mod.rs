//! The guide: how to use rcu-defer in device and data-plane code, one topic
//! per page.
//!
//! This module has no code of its own. Every example in it runs as a doc
//! test (`cargo test --doc`), so what the pages show is what the crate does.
//!
//! | Page | What it teaches |
//! | --- | --- |
//! | [`rwlock_to_rcucell`] | moving device configuration from `RwLock<T>` to [`RcuCell<T>`](crate::RcuCell), step by step: readers, writers, what must not happen inside a read section, batching side effects |
//! | [`rust_vmm`] | `vm::GuestMemoryRcu` in place of `GuestMemoryAtomic`, guest notifications in a virtio-queue device loop, the `vmm-sys-util` feature and how to make Cargo pick the monitor's release |
//! | [`vhost_user`] | rcu-defer inside a vhost-user backend built on `vhost-user-backend`: guest memory mirrored into a `GuestMemoryRcu`, a pass per read section, signal moderation |
//! | [`data_plane`] | polling threads as quiescent-state-based readers ([`online`](crate::online)), and polled grace periods for writers that must not block |
//! | [`reports`] | where the library's reports go, and the flavor chosen from the environment |
//! | [`sandboxes`] | the system calls rcu-defer makes, for a seccomp filter, and what happens when `membarrier` is refused |
//! | [`fork`] | what a forked child gets, with no call to make |
//! | [`signals`] | what a signal handler may call |
//! | [`correctness`] | what is model-checked, stress-tested and checked by Miri, and how to run each |
//!
//! The crate documentation ([`crate`]) gives the concepts (read sections,
//! grace periods, deferred local calls, flavors, deadlocks and stalls, async
//! code) on one page. Material about the workspace (the vhost-user-blk
//! backend binary, the libblkio load generator, the end-to-end run in a
//! guest, the benches, the comparison with liburcu, development) is in the
//! repository's `docs/` directory and `BENCHMARKS.md`.
//!
//! # The API at a glance
//!
//! | API | what it does |
//! | --- | --- |
//! | [`read_lock()`](crate::read_lock) → [`ReadGuard`](crate::ReadGuard) | enter a read section; nests freely; no registration call |
//! | [`synchronize_rcu()`](crate::synchronize_rcu) | wait until every section running at the call has ended |
//! | [`try_synchronize_rcu()`](crate::try_synchronize_rcu), [`synchronize_rcu_timeout(d)`](crate::synchronize_rcu_timeout) | the same, returning [`Error`](crate::Error) instead of panicking or waiting forever |
//! | [`call_rcu(f)`](crate::call_rcu), [`drain_call_rcu()`](crate::drain_call_rcu) | run `f` after a grace period on the `rcu-call` thread (small batches wait up to 5 ms for company: [`set_call_rcu_batch_window`](crate::set_call_rcu_batch_window)); wait for queued callbacks |
//! | [`try_drain_call_rcu()`](crate::try_drain_call_rcu), [`drain_call_rcu_timeout(d)`](crate::drain_call_rcu_timeout) | the same, returning `Error` instead of panicking or waiting forever (shutdown paths) |
//! | [`RcuCell<T>`](crate::RcuCell) | an RCU-protected value: `read`, `replace`, `replace_sync`, `update` (`new` is not `const`: a `static` cell is a `LazyLock<RcuCell<T>>`) |
//! | [`RcuCell::try_update(f)`](crate::RcuCell::try_update) | `update` whose closure may decline with an error (nothing changes then) |
//! | [`RcuCell::compare_exchange(current, new)`](crate::RcuCell::compare_exchange) | publish `new` only if the cell still holds the value `current` (a reference from `read`) points to; `Err(new)` otherwise. Keyed on identity; the open section rules out ABA |
//! | [`RcuCell::replace_retired(v)`](crate::RcuCell::replace_retired) → [`Retired<T>`](crate::Retired) | publish without waiting and get the old value as a handle: `Retired::wait()` returns it after a grace period, `Retired::try_wait()` only if that has passed (never blocks, for an event loop); dropped, it is retired like `replace` |
//! | [`RcuCell::get_cloned()`](crate::RcuCell::get_cloned), [`RcuCell<Arc<U>>::load_full()`](crate::RcuCell::load_full) | an owned snapshot that outlives the read section (blocking I/O, `.await`) |
//! | [`RcuCell::get_mut()`](crate::RcuCell::get_mut), [`RcuCell::into_inner()`](crate::RcuCell::into_inner) | set-up and teardown by the one owner, no grace period |
//! | [`call_local(f, &arc)`](crate::call_local), [`call_local_fn(f)`](crate::call_local_fn), [`defer_scope()`](crate::defer_scope) | defer a call to the end of the outermost read section or defer scope, deduplicated |
//! | [`online()`](crate::online) → [`Online`](crate::Online): `quiescent()`, `try_quiescent()`, `offline(f)` | make a polling thread a quiescent-state-based reader (liburcu's `urcu-qsbr`): its read sections cost a depth counter and a location store, it reports quiescent states |
//! | [`start_poll_synchronize_rcu()`](crate::start_poll_synchronize_rcu), [`get_state_synchronize_rcu()`](crate::get_state_synchronize_rcu) → [`PollState`](crate::PollState); [`poll_state_synchronize_rcu(s)`](crate::poll_state_synchronize_rcu), [`cond_synchronize_rcu(s)`](crate::cond_synchronize_rcu) | polled grace periods: a cookie checked without blocking, waited for only if still needed |
//! | [`virtio::IrqNotifier`](crate::virtio::IrqNotifier), [`virtio::EventFd`](crate::virtio::EventFd), [`virtio::vring_need_event`](crate::virtio::vring_need_event), [`virtio::Moderation`](crate::virtio::Moderation) | batched guest notifications over an eventfd (irqfd); the EVENT_IDX rule; choosing per pass, by measuring, whether to batch |
//! | `vm::GuestMemoryRcu` | guest memory map for rust-vmm (`vm-memory` feature): a drop-in for `GuestMemoryAtomic` whose `memory()` is a read section, not a reference count; `snapshot()` for an owned `Arc<M>` |
//! | `vhost_user::RcuVring`, `vhost_user::CallNotifier` | a vring for vhost-user-backend 0.24 (`vhost-user-backend` feature) whose `IrqNotifier` follows the call eventfd with no vring lock |
//! | [`flavor()`](crate::flavor), [`set_flavor(f)`](crate::set_flavor) | [`Membarrier`](crate::Flavor::Membarrier) (readers pay compiler fences only) or [`Fence`](crate::Flavor::Fence); choose one before first use |
//! | [`set_stall_timeout`](crate::set_stall_timeout), [`set_stall_handler`](crate::set_stall_handler), [`assert_may_block`](crate::assert_may_block) | stall reports (the handler may be a closure) and deadlock checks |
//! | [`set_report_handler(f)`](crate::set_report_handler), [`Report`](crate::Report), [`ReportKind`](crate::ReportKind), [`Severity`](crate::Severity) | where the library's reports go (a panicking callback, a failed guest notification, a thread exiting inside a read section, a stall, ...): default `log` or `tracing` when one listens, else stderr |
//!
//! # Cargo features
//!
//! - `vmm-sys-util`: implements [`virtio::Notify`](crate::virtio::Notify)
//!   for `vmm_sys_util::eventfd::EventFd` (rust-vmm interop; any
//!   vmm-sys-util from 0.11 to 0.15: [`rust_vmm`] says how to make Cargo
//!   pick the monitor's release);
//! - `vm-memory`: adds `vm::GuestMemoryRcu` (depends on `vm-memory` 0.18);
//! - `vhost-user-backend` (Linux): adds `vhost_user` and `Notify` for
//!   `vmm_sys_util::event::EventNotifier` (depends on vhost-user-backend
//!   0.24, and so on vmm-sys-util 0.15; it turns on `vm-memory` and
//!   `vmm-sys-util`);
//! - `tracing`: emits one `tracing` event when a guest notification is
//!   requested and one when the signal is really sent, and delivers
//!   reports as `tracing` events;
//! - `log`: delivers reports through the `log` facade.
//!
//! The crate's own tests, examples and benches enable `vm-memory` and
//! `log` (through a dev-dependency on itself), so the examples on these
//! pages that use `vm::GuestMemoryRcu` run under a plain `cargo test`.

pub mod correctness;
pub mod data_plane;
pub mod fork;
pub mod reports;
pub mod rust_vmm;
pub mod rwlock_to_rcucell;
pub mod sandboxes;
pub mod signals;
pub mod vhost_user;
