//! `fork()`: what the child gets, with no call to make.
//!
//! # The handlers
//!
//! `fork()` needs no call. The first time a process uses rcu-defer (before
//! it takes any of its locks), it registers `pthread_atfork` handlers
//! (Linux). Just before a fork they take rcu-defer's locks (reader registry,
//! grace-period leader, `call_rcu` queue, flavor, stall and report handlers,
//! wake-up event), so no other thread is half-way through changing what they
//! guard; the parent releases them and is unaffected.
//!
//! # What the child gets
//!
//! The child, where only the forking thread exists, gets:
//!
//! - the forking thread's own state: an open read section stays open
//!   ([`try_synchronize_rcu`](crate::try_synchronize_rcu) returns
//!   `InReadSection` until its guard is dropped), and its pending
//!   [`call_local`](crate::call_local) calls run when the section ends;
//! - none of the other threads' reader records: their sections do not hold
//!   up the child's grace periods, and stall reports never name them;
//! - working grace periods: one that another thread was leading is abandoned
//!   in the child, and the next caller leads a new one;
//! - a working [`call_rcu`](crate::call_rcu): the next `call_rcu` or drain
//!   starts a new `rcu-call` thread, which runs the callbacks queued before
//!   the fork, including the batch whose grace period was in progress. The
//!   batch the `rcu-call` thread was *running* at the fork (its grace period
//!   over) is not run in the child, neither the callback being run nor those
//!   after it in that batch; the parent runs it, and in the child it is
//!   leaked (never run, never dropped). Every other callback queued before
//!   the fork runs in both processes, each on its own copy of memory: a
//!   callback with an effect outside memory (a write to a shared file
//!   descriptor) has it twice;
//! - the same again in a grandchild.
//!
//! Here another thread is inside a read section when the process forks; the
//! child's grace periods, callbacks and writers do not wait for it:
//!
//! ```
//! # #[cfg(target_os = "linux")] {
//! use rcu_defer::{call_rcu, drain_call_rcu, read_lock, synchronize_rcu, RcuCell};
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::{mpsc, Arc};
//!
//! let config = Arc::new(RcuCell::new(1));
//! let (entered_tx, entered) = mpsc::channel();
//! let (leave, leave_rx) = mpsc::channel::<()>();
//! let reader = std::thread::spawn(move || {
//!     let _section = read_lock();
//!     entered_tx.send(()).unwrap();
//!     leave_rx.recv().unwrap(); // in its section until the parent says
//! });
//! entered.recv().unwrap();
//!
//! // SAFETY: fork(2) has no memory-safety preconditions; the child only
//! // runs Rust code that rcu-defer's fork handlers made safe, then exits.
//! match unsafe { libc::fork() } {
//!     0 => {
//!         // The child: only this thread exists.
//!         let ok = std::panic::catch_unwind(|| {
//!             synchronize_rcu();
//!             assert_eq!(config.replace_sync(2), 1);
//!             static RAN: AtomicBool = AtomicBool::new(false);
//!             call_rcu(|| RAN.store(true, Ordering::SeqCst)); // a new rcu-call thread
//!             drain_call_rcu();
//!             assert!(RAN.load(Ordering::SeqCst));
//!         })
//!         .is_ok();
//!         // SAFETY: _exit(2) ends the child without running the parent's
//!         // atexit handlers or unwinding the test harness twice.
//!         unsafe { libc::_exit(if ok { 0 } else { 1 }) }
//!     }
//!     child => {
//!         assert!(child > 0, "fork failed");
//!         let mut status = 0;
//!         // SAFETY: `status` is a valid, writable int for the call.
//!         assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
//!         assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
//!     }
//! }
//! leave.send(()).unwrap();
//! reader.join().unwrap();
//! # }
//! ```
//!
//! # Writers, locks and threads in the child
//!
//! An [`RcuCell`](crate::RcuCell) that another thread was writing at the
//! fork is writable in the child: its writer lock records its holder, and
//! the child takes over a lock whose holder does not exist there (the value
//! that writer was retiring is then leaked in the child, never freed under a
//! reader). Your own locks held by another thread at the fork stay locked in
//! the child, as any `Mutex` would.
//!
//! POSIX allows a child of a multi-threaded process only async-signal-safe
//! calls until it execs; rcu-defer makes its own state consistent and then
//! allocates and starts threads, which glibc supports (liburcu and QEMU do
//! the same). The child's `rcu-call` thread is started with
//! `pthread_create`, not `std::thread`: Rust's standard library takes one
//! process-wide lock in every thread it starts or ends, and a fork while
//! another thread holds it leaves it held in the child, where every
//! `std::thread` then blocks before its body runs (yours too: a child of a
//! multi-threaded Rust process cannot rely on `std::thread::spawn`). In the
//! child that thread has no name in `std::thread::current()` (its kernel
//! name is `rcu-call`). For the same reason a report that goes to stderr by
//! default is written there with one `write(2)`, not through `eprintln!`,
//! whose lock a thread of the parent may have held at the fork. Both take
//! effect in a child of a process that used rcu-defer before it forked; a
//! process that first uses it after a fork is, to rcu-defer, one that has
//! just started.
//!
//! `std::process::Command` uses `posix_spawn` where it can, which runs no
//! handlers; where it forks, the handlers wait only for whichever rcu-defer
//! lock another thread holds at that moment (none is held across a wait for
//! readers).
//!
//! A `fork()` from a signal handler is another matter: see
//! [`signals`](super::signals).
