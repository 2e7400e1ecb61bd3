//! Sandboxes (seccomp): the system calls rcu-defer makes, and what happens
//! when `membarrier` is refused.
//!
//! # The system calls
//!
//! Besides what any Rust program makes at start-up:
//!
//! - `membarrier` (query, `REGISTER_PRIVATE_EXPEDITED` once, then
//!   `PRIVATE_EXPEDITED` per grace-period step), in the membarrier flavor
//!   only;
//! - `futex` (its locks and condition variables), and `sched_yield` when a
//!   `call_rcu` flood outruns the callback thread;
//! - what spawning the `rcu-call` thread takes (`clone3` or `clone`, `mmap`,
//!   `mprotect`, `munmap`, `sigaltstack`, `rt_sigprocmask`,
//!   `set_robust_list`, `rseq`, `prctl(PR_SET_NAME)`), once, on the first
//!   `call_rcu` (and once more in a forked child);
//! - `eventfd2`, `write`, `read`, `ppoll` and `close` for
//!   [`virtio::EventFd`](crate::virtio::EventFd);
//! - `write` to stderr for reports (unless a report handler, logger or
//!   subscriber takes them; see [`reports`](super::reports)).
//!
//! Taking a polled grace-period cookie whose grace period is already asked
//! for, and polling one, make no system call (see
//! [`data_plane`](super::data_plane)).
//!
//! # A filter that refuses `membarrier`
//!
//! A filter that refuses `membarrier` after the first read section leaves
//! readers that rely on it: grace periods can no longer end, so
//! [`synchronize_rcu`](crate::synchronize_rcu),
//! [`drain_call_rcu`](crate::drain_call_rcu) and
//! [`RcuCell::replace_sync`](crate::RcuCell::replace_sync) fail with
//! [`Error::MembarrierFailed`](crate::Error::MembarrierFailed) (the plain
//! forms panic with it), nothing retired is freed, and nothing hangs. Either
//! allow `membarrier`, or choose the fence flavor before the first read
//! section:
//!
//! ```
//! // First thing in main, before anything uses rcu-defer:
//! rcu_defer::set_flavor(rcu_defer::Flavor::Fence).expect("no read section yet");
//! # assert_eq!(rcu_defer::flavor(), rcu_defer::Flavor::Fence);
//! ```
//!
//! Once a read section has run, the choice is made and another flavor is
//! refused with an error:
//!
//! ```
//! use rcu_defer::{flavor, read_lock, set_flavor, Flavor};
//!
//! drop(read_lock()); // the flavor is decided here
//! let other = match flavor() {
//!     Flavor::Membarrier => Flavor::Fence,
//!     Flavor::Fence => Flavor::Membarrier,
//! };
//! assert!(set_flavor(other).is_err());
//! assert!(set_flavor(flavor()).is_ok()); // the flavor in use: Ok
//! ```
