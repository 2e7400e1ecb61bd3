//! Data-plane threads (online, quiescent-state-based readers) and polled
//! grace periods.
//!
//! # Online threads
//!
//! A thread that polls (an I/O thread looping over its queues) can go
//! *online* ([`online`](crate::online)): its read sections then only count
//! their depth and note where the outermost one began, in thread-local
//! memory, with no fence and no store a writer looks at, in either flavor.
//! In exchange, grace periods wait for the thread itself until it reports a
//! quiescent state, a point where it holds nothing it read before, typically
//! once per loop iteration. Blocking while online holds up every writer:
//! block inside [`offline`](crate::Online::offline). This is liburcu's
//! `urcu-qsbr`, DPDK's `rte_rcu_qsbr` and Open vSwitch's `ovsrcu`; online
//! and ordinary threads mix freely in one process.
//!
//! ```
//! use rcu_defer::{online, read_lock, RcuCell};
//! use std::sync::Arc;
//!
//! let queues = Arc::new(RcuCell::new(vec![0u32; 4]));
//! let io_thread = {
//!     let queues = Arc::clone(&queues);
//!     std::thread::spawn(move || {
//!         let online = online(); // this thread is online until `online` is dropped
//!         for _pass in 0..100 {
//!             {
//!                 let guard = read_lock(); // a counter increment
//!                 let _ = queues.read(&guard).len();
//!             }
//!             online.quiescent(); // nothing read before this is still in use
//!         }
//!         online.offline(|| std::thread::sleep(std::time::Duration::from_millis(1)));
//!     })
//! };
//! queues.replace(vec![0; 8]); // the old vector goes after the I/O thread's next quiescent state
//! io_thread.join().unwrap();
//! ```
//!
//! [`read_lock`](crate::read_lock) stays the read-side API on an online
//! thread: sections nest, [`call_local`](crate::call_local) batches until
//! the outermost one ends, and waiting for a grace period inside one is
//! refused. [`synchronize_rcu`](crate::synchronize_rcu),
//! [`drain_call_rcu`](crate::drain_call_rcu) and the other waits called
//! outside a section take the thread offline for the wait (as liburcu
//! does). [`quiescent()`](crate::Online::quiescent) inside a section panics
//! with where the section began ([`try_quiescent`](crate::Online::try_quiescent)
//! returns the error):
//!
//! ```
//! use rcu_defer::{online, read_lock, Error};
//!
//! let online = online();
//! let guard = read_lock();
//! assert!(matches!(online.try_quiescent(), Err(Error::InReadSection { .. })));
//! drop(guard);
//! online.try_quiescent().unwrap();
//! ```
//!
//! Dropping the handle, or exiting, takes the thread offline (at the end of
//! the current section if one is open); a fork's child keeps the forking
//! thread online. Stall reports name an online thread that has not reported
//! for the stall timeout, with where it went online and where it last
//! reported.
//!
//! # Polled grace periods
//!
//! A writer that must not block takes a cookie and polls it from its event
//! loop, as with liburcu's and the kernel's functions of the same names:
//!
//! ```
//! use rcu_defer::{cond_synchronize_rcu, poll_state_synchronize_rcu, start_poll_synchronize_rcu};
//!
//! // ... unpublish the old value first, then:
//! let cookie = start_poll_synchronize_rcu(); // never blocks
//! if poll_state_synchronize_rcu(cookie) {    // one atomic load
//!     // free the old value
//! }
//! cond_synchronize_rcu(cookie); // waits only if the grace period has not completed
//! assert!(poll_state_synchronize_rcu(cookie));
//! ```
//!
//! A cookie ([`PollState`](crate::PollState)) is the number of the first
//! grace period that begins after it was taken; a cookie taken earlier is
//! complete whenever a later one is.
//! [`start_poll_synchronize_rcu`](crate::start_poll_synchronize_rcu) makes
//! sure that grace period happens (it queues a `call_rcu` callback, once per
//! grace period however many cookies are taken), and
//! [`get_state_synchronize_rcu`](crate::get_state_synchronize_rcu) takes a
//! cookie without asking for one. Taking a cookie whose grace period is
//! already asked for, and polling one, make no system call (`tests/poll.rs`
//! checks it under a seccomp filter that kills the process on any system
//! call).
//!
//! ```
//! use rcu_defer::{get_state_synchronize_rcu, poll_state_synchronize_rcu, synchronize_rcu};
//!
//! let cookie = get_state_synchronize_rcu(); // asks for no grace period
//! synchronize_rcu(); // someone else's grace period completes it
//! assert!(poll_state_synchronize_rcu(cookie));
//! ```
