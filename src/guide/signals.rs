//! Signal handlers: what is async-signal-safe.
//!
//! # Safe in a handler
//!
//! [`in_read_section()`](crate::in_read_section) and
//! [`read_depth()`](crate::read_depth), and a read section *nested* inside
//! one the interrupted code holds: if `in_read_section()` is true when the
//! handler starts, its [`read_lock()`](crate::read_lock) and the guard's
//! drop only change the thread's depth counter, and
//! [`RcuCell::read`](crate::RcuCell::read) is one atomic load. So a handler
//! may read RCU-protected data when it interrupted a read section.
//!
//! ```
//! # #[cfg(target_os = "linux")] {
//! use rcu_defer::{in_read_section, read_lock, RcuCell};
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::LazyLock;
//!
//! static QUEUE_SIZE: LazyLock<RcuCell<u32>> = LazyLock::new(|| RcuCell::new(256));
//! static SEEN: AtomicU32 = AtomicU32::new(0);
//!
//! extern "C" fn on_sigusr1(_: libc::c_int) {
//!     if in_read_section() {
//!         let guard = read_lock(); // nested: a counter increment
//!         SEEN.store(*QUEUE_SIZE.read(&guard), Ordering::Relaxed);
//!     } // else: leave RCU data alone (an outermost section is not safe here)
//! }
//!
//! LazyLock::force(&QUEUE_SIZE); // initialise outside the handler
//! let handler: extern "C" fn(libc::c_int) = on_sigusr1;
//! // SAFETY: the handler is an `extern "C" fn` that only does what is
//! // async-signal-safe here: a nested section, a load and an atomic store.
//! unsafe { libc::signal(libc::SIGUSR1, handler as libc::sighandler_t) };
//! {
//!     let _section = read_lock();
//!     // SAFETY: raise(2) runs the handler installed above on this thread.
//!     unsafe { libc::raise(libc::SIGUSR1) };
//! }
//! assert_eq!(SEEN.load(Ordering::Relaxed), 256);
//! # }
//! ```
//!
//! # Not safe in a handler
//!
//! A thread's first `read_lock` (registration allocates and takes the
//! registry lock); an outermost section in general (its end may take a lock
//! to wake a waiting writer, and runs the thread's deferred calls);
//! [`synchronize_rcu`](crate::synchronize_rcu),
//! [`call_rcu`](crate::call_rcu), the drains,
//! [`call_local`](crate::call_local) and the [`RcuCell`](crate::RcuCell)
//! writers (they lock or allocate). A `fork()` from a signal handler that
//! interrupted rcu-defer code can deadlock in the fork handlers, which take
//! the locks that code may hold (with fork handlers registered, glibc's
//! `fork` is not async-signal-safe either; see [`fork`](super::fork)).
