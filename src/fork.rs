//! `fork()`: handlers that keep both processes working, registered with
//! `pthread_atfork` the first time the process uses rcu-defer.
//!
//! A child process has one thread, a copy of the one that called `fork()`,
//! and a copy of everything else in memory: locks held by threads that do
//! not exist in the child, reader records of those threads, a grace period
//! led by one of them, the `rcu-call` worker's state. So:
//!
//! - *prepare* (the forking thread, before the fork) takes every lock of
//!   rcu-defer, in an order that cannot deadlock with the order in which the
//!   library itself nests them (below), and keeps the guards in a
//!   thread-local of the forking thread. No other thread holds one of them
//!   at the fork, so none is half-way through changing what it guards;
//! - *parent* releases them: nothing else changes;
//! - *child* repairs what refers to threads that are gone, then releases
//!   them: only the forking thread's reader records stay in the registry
//!   (with its open section, if it forked inside one; its pending
//!   `call_local` calls are in its own thread-locals), no grace period is
//!   running unless the forking thread leads it, and the `rcu-call` worker
//!   is started again on first need (with `pthread_create`, not
//!   `std::thread`: see `sys::spawn_after_fork`), with the callbacks whose
//!   grace period had not ended at the fork given back to the queue (see
//!   `call_rcu::QueueHeld::after_fork_child`).
//!
//! Lock order. The library nests its locks in one way only: the registry
//! lock, then the flavor decision's (`flavor_signal` under the registry
//! lock; the flavor is always decided by then, so it is an order on paper).
//! Besides that, leader election (`LEADER`), the `call_rcu` queue, the
//! grace-period event, the stall handler's lock, the `RcuCell` writers'
//! wait lock and the report handler's lock are each held alone: `LEADER` is released before a grace
//! period scans the registry, the queue's lock is released before the
//! worker's grace period, the others are held for a few instructions (or
//! released by a condition variable's wait) and nothing is taken under
//! them. The queue's lock is taken with a drain's own lock under it (to
//! fail a drain), which prepare does not take. Prepare takes `LEADER`, the
//! registry, the flavor decision, the queue, the event, the stall
//! handler's lock, the writers' wait lock and the report handler's lock, in
//! that order: the registry
//! before the flavor decision, as the library does, and no lock it takes is
//! ever held by a thread waiting for one that comes earlier. No user code
//! runs under any of them, and a second thread that forks at the same time
//! waits for the first fork's parent handler at `LEADER`.
//!
//! An `RcuCell`'s writer lock is not a lock prepare can take (there is one
//! per cell, and `update` holds it while user code runs): it records its
//! holder and fork generation instead, so that a child takes over a cell
//! lock held by a thread that does not exist there (see `cell`). The user's
//! own locks held by another thread at the fork stay locked in the child,
//! as any `Mutex` would.

#[cfg(not(loom))]
mod handlers {
    use crate::call_rcu::{self, QueueHeld};
    use crate::cell::{self, WaitHeld};
    use crate::detect::{self, HandlerHeld};
    use crate::flavor::{self, DecidingHeld};
    use crate::grace::{self, EventHeld, LeaderHeld};
    use crate::reader::{self, RegistryHeld};
    use crate::report::{self, report};
    use crate::sync::{thread_local_const, AtomicU64, Once, Ordering};
    use crate::sys;
    use std::cell::RefCell;
    use std::mem::ManuallyDrop;

    /// Every lock of rcu-defer, held across a fork. Dropping it releases
    /// them.
    struct Held {
        leader: LeaderHeld,
        registry: RegistryHeld,
        _deciding: DecidingHeld,
        queue: QueueHeld,
        event: EventHeld,
        _handler: HandlerHeld,
        cell_wait: WaitHeld,
        _report_handler: report::HandlerHeld,
    }

    thread_local_const! {
        /// The forking thread's `Held`, from prepare to parent or child.
        /// `ManuallyDrop`, so that the thread-local has no destructor and can
        /// be used until the thread's very end (a fork from another
        /// thread-local's destructor); the handlers move the value in and
        /// out.
        static HELD: RefCell<ManuallyDrop<Option<Held>>> =
            RefCell::new(ManuallyDrop::new(None));
    }

    /// How many forks lie between this process and the first one that used
    /// rcu-defer: 0 there, 1 in a child, 2 in a grandchild.
    static GENERATION: AtomicU64 = AtomicU64::new(0);

    /// Registered once, before the first lock of rcu-defer is taken.
    static REGISTER: Once = Once::new();

    /// Registers the fork handlers, once per process. Every path that takes
    /// a lock of rcu-defer for the first time in a process calls this
    /// first, so no lock is held before the handlers exist. A child
    /// inherits them.
    #[inline]
    pub(crate) fn register_handlers() {
        if !REGISTER.is_completed() {
            register_once();
        }
    }

    #[cold]
    fn register_once() {
        let mut failed = None;
        REGISTER.call_once(|| {
            if let Err(e) = sys::register_atfork(prepare, parent, child) {
                failed = Some(e);
            }
        });
        if let Some(e) = failed {
            // After `call_once` has returned: making a report registers the
            // handlers, which must not wait for this `call_once`.
            report!(
                ForkHandlers,
                "cannot register the fork handlers ({e}); a child process forked while \
                 another thread holds one of rcu-defer's locks may hang"
            );
        }
    }

    /// The current generation (see `GENERATION`).
    #[inline]
    pub(crate) fn generation() -> u64 {
        // Relaxed: changed only in a child before its first other thread
        // exists; threads spawned later see it through the spawn.
        GENERATION.load(Ordering::Relaxed)
    }

    /// Before the fork, on the forking thread: takes every lock, in the
    /// order the module documentation argues for.
    extern "C" fn prepare() {
        let held = Held {
            leader: grace::hold_leader_for_fork(),
            registry: reader::hold_for_fork(),
            _deciding: flavor::hold_for_fork(),
            queue: call_rcu::hold_for_fork(),
            event: grace::hold_event_for_fork(),
            _handler: detect::hold_for_fork(),
            cell_wait: cell::hold_for_fork(),
            _report_handler: report::hold_for_fork(),
        };
        HELD.with(|slot| **slot.borrow_mut() = Some(held));
    }

    /// After the fork, in the parent: releases the locks.
    extern "C" fn parent() {
        drop(take());
    }

    /// After the fork, in the child: repairs what refers to threads that do
    /// not exist here, then releases the locks.
    extern "C" fn child() {
        let Some(mut held) = take() else { return };
        // Relaxed: see `generation`.
        GENERATION.fetch_add(1, Ordering::Relaxed);
        held.registry.after_fork_child();
        held.leader.after_fork_child();
        held.queue.after_fork_child();
        held.cell_wait.after_fork_child();
        held.event.after_fork_child();
        crate::poll::after_fork_child();
        drop(held);
    }

    /// The guards prepare took, if it ran on this thread.
    fn take() -> Option<Held> {
        HELD.with(|slot| slot.borrow_mut().take())
    }
}

#[cfg(not(loom))]
pub(crate) use handlers::{generation, register_handlers};

/// Under loom there are no processes to fork: nothing to register.
#[cfg(loom)]
#[inline]
pub(crate) fn register_handlers() {}

/// Under loom there is no fork: every drain is of this process.
#[cfg(loom)]
#[inline]
pub(crate) fn generation() -> u64 {
    0
}
