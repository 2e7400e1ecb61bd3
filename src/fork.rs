//! `fork()`: handlers that keep both processes working, registered with
//! `pthread_atfork` before the process first takes one of rcu-defer's locks.
//!
//! A child process has one thread, a copy of the one that called `fork()`,
//! and a copy of everything else in memory: locks held by threads that do
//! not exist in the child, reader records of those threads, a grace period
//! led by one of them, the `rcu-call` worker's state. So:
//!
//! - *prepare* (the forking thread, before the fork) takes every lock of
//!   rcu-defer that the process has used, in an order that cannot deadlock
//!   with the order in which the library itself nests them (below), and
//!   keeps the guards in thread-locals of the forking thread. No other
//!   thread holds one of them at the fork, so none is half-way through
//!   changing what it guards;
//! - *parent* releases them: nothing else changes;
//! - *child* repairs what refers to threads that are gone, then releases
//!   them: only the forking thread's reader records stay in the registry
//!   (with its open section, if it forked inside one; its pending
//!   `call_local` calls are in its own thread-locals), no grace period is
//!   running unless the forking thread leads it, and the `rcu-call` worker
//!   is started again on first need (with `pthread_create`, not
//!   `std::thread`: see `sys::spawn_after_fork`), with the callbacks whose
//!   grace period had not ended at the fork given back to the queue (see
//!   `call_rcu`'s `Queue::after_fork_child`).
//!
//! # Hooks
//!
//! This module sits below the modules whose locks it holds and names none
//! of them (docs/architecture.md). Each of them registers a `Hook` here
//! instead, with `register`, before it takes its lock (the first
//! registration of the process also registers the handlers): a `prepare`
//! that takes the lock and keeps the guard (in a `Kept`, a thread-local
//! of the module, which only the forking thread fills), a `repair` for the
//! child and a `release`. A hook's `Rank` is its place in the order below;
//! prepare runs the registered hooks' `prepare` in that order, parent their
//! `release` in the same order, and child every `repair` (in
//! `REPAIR_ORDER`) before the first `release`. The polled grace periods'
//! hook takes no lock: it only repairs.
//!
//! # Lock order
//!
//! The library nests its locks in one way only: the registry lock, then the
//! flavor decision's (`flavor_signal` under the registry lock; the flavor
//! is always decided by then, so it is an order on paper). Besides that,
//! leader election (`LEADER`), the `call_rcu` queue, the grace-period
//! event, the stall handler's lock, the `RcuCell` writers' wait lock and the
//! report handler's lock are each held alone: `LEADER` is released before a
//! grace period scans the registry, the queue's lock is released before the
//! worker's grace period, the others are held for a few instructions (or
//! released by a condition variable's wait) and nothing is taken under
//! them. The queue's lock is taken with a drain's own lock under it (to
//! fail a drain), which prepare does not take and under which nothing else
//! is taken. Prepare takes `LEADER`, the registry, the flavor decision, the
//! queue, the event, the stall handler's lock, the writers' wait lock and
//! the report handler's lock, in that order (`Rank`): the registry before
//! the flavor decision, as the library does, and no lock it takes is ever
//! held by a thread waiting for one that comes earlier. No user code runs
//! under any of them, and forks are one at a time: a second thread that
//! forks meanwhile waits in its prepare (at `Table::window`) until the
//! first fork's parent handler.
//!
//! # A registration during a fork
//!
//! A hook's slot is empty, registered (for good: a child inherits it) or
//! closed. Prepare walks the slots in rank order: it runs a registered
//! slot's `prepare` and closes an empty one. A thread that registers a
//! closed slot waits (at `Table::window`, which the forking thread holds
//! from prepare to parent or child) until parent or child has reopened it,
//! so no thread takes a lock during a fork that prepare passed without
//! taking: a closed slot is a lock that prepare holds. A slot that prepare
//! has not reached yet registers at once, and prepare then finds it
//! registered.
//!
//! That wait cannot deadlock. A module registers its hook before it takes
//! its lock, while it holds no lock of rcu-defer of a higher rank (the one
//! nesting is in rank order). A thread that finds rank `r` closed holds no
//! lock of rank below `r` either: prepare passed each of them, and took it
//! if it was registered by then, so this thread does not hold it, or else
//! closed it, so this thread would have waited to register it. So it holds
//! no lock that prepare has taken or still needs (a drain's lock, an
//! `RcuCell`'s writer lock and the user's own locks are not among them),
//! and the fork, then parent or child, ends and lets it go on.
//!
//! An `RcuCell`'s writer lock is not a lock prepare can take (there is one
//! per cell, and `update` holds it while user code runs): it records its
//! holder and fork generation instead, so that a child takes over a cell
//! lock held by a thread that does not exist there (see `cell`). The user's
//! own locks held by another thread at the fork stay locked in the child,
//! as any `Mutex` would.

#[cfg(not(loom))]
mod handlers {
    use crate::sync::{
        lock, thread_local_const, AtomicU64, AtomicU8, Mutex, MutexGuard, Once, OnceLock, Ordering,
    };
    use crate::sys;
    use std::cell::RefCell;
    use std::io;
    use std::mem::ManuallyDrop;

    /// A lock's place in the order prepare takes them (see the module
    /// documentation), one per hook.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Rank {
        /// Leader election (`grace`).
        Leader,
        /// The reader registry (`reader`).
        Registry,
        /// The flavor decision (`flavor`).
        Deciding,
        /// The `call_rcu` queue (`call_rcu`).
        Queue,
        /// The grace-period event (`event`).
        Event,
        /// The stall handler (`detect`).
        StallHandler,
        /// The `RcuCell` writers' wait lock (`cell`).
        CellWait,
        /// The report handler (`report`).
        ReportHandler,
        /// The polled grace periods (`poll`): no lock, a repair.
        Poll,
    }

    /// How many ranks there are.
    const RANKS: usize = Rank::Poll as usize + 1;

    /// Every rank, in rank order (the index of a slot).
    const BY_RANK: [Rank; RANKS] = [
        Rank::Leader,
        Rank::Registry,
        Rank::Deciding,
        Rank::Queue,
        Rank::Event,
        Rank::StallHandler,
        Rank::CellWait,
        Rank::ReportHandler,
        Rank::Poll,
    ];

    /// The order of the child's repairs, every rank once.
    const REPAIR_ORDER: [Rank; RANKS] = [
        Rank::Registry,
        Rank::Leader,
        Rank::Queue,
        Rank::CellWait,
        Rank::Event,
        Rank::Poll,
        Rank::Deciding,
        Rank::StallHandler,
        Rank::ReportHandler,
    ];

    impl Rank {
        /// The rank's bit in `Window`'s sets.
        fn bit(self) -> u32 {
            1 << self as u32
        }
    }

    /// What a module does with its lock across a fork, on the forking
    /// thread. A `static`: registered by reference, for the process's life.
    pub(crate) struct Hook {
        pub(crate) rank: Rank,
        /// Before the fork: takes the lock, keeping the guard in a `Kept`.
        pub(crate) prepare: fn(),
        /// In the child, before any hook's `release`: repairs what refers
        /// to threads that do not exist there.
        pub(crate) repair: fn(),
        /// After the fork, in the parent, and in the child after every
        /// repair: releases the guard `prepare` kept.
        pub(crate) release: fn(),
    }

    /// A hook's guard, from its `prepare` to its `release`: the value of a
    /// thread-local of the hook's module, which only the forking thread
    /// fills. `ManuallyDrop`, so that the thread-local has no destructor and
    /// can be used until the thread's very end (a fork from another
    /// thread-local's destructor); the hook moves the guard in and out.
    pub(crate) struct Kept<G>(RefCell<ManuallyDrop<Option<G>>>);

    impl<G> Kept<G> {
        pub(crate) const fn new() -> Self {
            Kept(RefCell::new(ManuallyDrop::new(None)))
        }

        /// Keeps `guard` (in `prepare`).
        pub(crate) fn keep(&self, guard: G) {
            **self.0.borrow_mut() = Some(guard);
        }

        /// Runs `f` on the kept guard, if any (in `repair`).
        pub(crate) fn repair(&self, f: impl FnOnce(&mut G)) {
            if let Some(guard) = self.0.borrow_mut().as_mut() {
                f(guard);
            }
        }

        /// Drops the kept guard, if any (in `release`).
        pub(crate) fn release(&self) {
            drop(self.0.borrow_mut().take());
        }
    }

    /// A slot's states.
    const EMPTY: u8 = 0;
    const REGISTERED: u8 = 1;
    const CLOSED: u8 = 2;

    /// One rank's hook.
    struct Slot {
        /// `EMPTY`, `REGISTERED` (for good) or `CLOSED` (by a fork's
        /// prepare, until its parent or child; see the module
        /// documentation).
        state: AtomicU8,
        /// Set before `state` first becomes `REGISTERED`.
        hook: OnceLock<&'static Hook>,
    }

    impl Slot {
        const fn new() -> Self {
            Slot {
                state: AtomicU8::new(EMPTY),
                hook: OnceLock::new(),
            }
        }
    }

    /// The hooks, and the forks under way (one at a time).
    pub(super) struct Table {
        slots: [Slot; RANKS],
        /// Held by the forking thread from prepare to parent or child: forks
        /// are one at a time, and a thread that registers a closed slot
        /// waits here.
        window: Mutex<()>,
    }

    /// A fork under way, kept by the forking thread from prepare to parent
    /// or child.
    pub(super) struct Window {
        _one_at_a_time: MutexGuard<'static, ()>,
        /// The ranks whose `prepare` ran.
        prepared: u32,
        /// The ranks prepare closed.
        closed: u32,
    }

    impl Table {
        pub(super) const fn new() -> Self {
            Table {
                slots: [const { Slot::new() }; RANKS],
                window: Mutex::new(()),
            }
        }

        fn slot(&self, rank: Rank) -> &Slot {
            &self.slots[rank as usize]
        }

        /// Whether `rank`'s hook is registered (for good).
        #[inline]
        pub(super) fn is_registered(&self, rank: Rank) -> bool {
            // Acquire pairs with the Release of the registering
            // compare-exchange in `register`: what the registering thread
            // did before (registering the fork handlers) is done.
            self.slot(rank).state.load(Ordering::Acquire) == REGISTERED
        }

        /// Registers `hook`; if a fork's prepare has closed its slot, waits
        /// until that fork's parent or child has reopened it.
        pub(super) fn register(&self, hook: &'static Hook) {
            let slot = self.slot(hook.rank);
            // One hook per rank: a second registration finds it set.
            let _ = slot.hook.set(hook);
            loop {
                // Release pairs with the Acquire loads of `is_registered`
                // and of prepare's compare-exchange (its failure ordering):
                // the hook is set, the fork handlers registered.
                match slot.state.compare_exchange(
                    EMPTY,
                    REGISTERED,
                    Ordering::Release,
                    // Acquire: as `is_registered`, when another thread
                    // registered it first.
                    Ordering::Acquire,
                ) {
                    Ok(_) | Err(REGISTERED) => return,
                    // Closed: the forking thread holds `window` until it has
                    // reopened the slot.
                    Err(_) => drop(lock(&self.window)),
                }
            }
        }

        /// Before a fork: runs the registered hooks' `prepare` in rank
        /// order and closes the empty slots.
        pub(super) fn prepare(&'static self) -> Window {
            let mut window = Window {
                _one_at_a_time: lock(&self.window),
                prepared: 0,
                closed: 0,
            };
            for (slot, rank) in self.slots.iter().zip(BY_RANK) {
                // Closing needs no ordering: a thread that reads `CLOSED`
                // waits for `window`, which this thread holds until it has
                // reopened the slot. Acquire (failure) pairs with the Release
                // of the registering compare-exchange: the hook is set.
                match slot.state.compare_exchange(
                    EMPTY,
                    CLOSED,
                    Ordering::Relaxed,
                    Ordering::Acquire,
                ) {
                    Ok(_) => window.closed |= rank.bit(),
                    Err(REGISTERED) => {
                        if let Some(hook) = slot.hook.get() {
                            (hook.prepare)();
                            window.prepared |= rank.bit();
                        }
                    }
                    // Closed: only a fork closes a slot, and it reopens it
                    // before its `window` ends; forks are one at a time.
                    Err(_) => {}
                }
            }
            window
        }

        /// After a fork, in the parent: releases in rank order.
        pub(super) fn parent(&self, window: Window) {
            self.release(&window);
            self.reopen(window);
        }

        /// After a fork, in the child: every repair, then the releases.
        pub(super) fn child(&self, window: Window) {
            for rank in REPAIR_ORDER {
                if window.prepared & rank.bit() != 0 {
                    if let Some(hook) = self.slot(rank).hook.get() {
                        (hook.repair)();
                    }
                }
            }
            self.release(&window);
            self.reopen(window);
        }

        fn release(&self, window: &Window) {
            for (slot, rank) in self.slots.iter().zip(BY_RANK) {
                if window.prepared & rank.bit() != 0 {
                    if let Some(hook) = slot.hook.get() {
                        (hook.release)();
                    }
                }
            }
        }

        /// Reopens the slots prepare closed, then ends the window, waking
        /// the threads that wait to register them.
        fn reopen(&self, window: Window) {
            for (slot, rank) in self.slots.iter().zip(BY_RANK) {
                if window.closed & rank.bit() != 0 {
                    // Relaxed: a registering thread reads it again after it
                    // has taken `window`, which is released below.
                    slot.state.store(EMPTY, Ordering::Relaxed);
                }
            }
            drop(window);
        }
    }

    /// The process's hooks.
    static TABLE: Table = Table::new();

    thread_local_const! {
        /// The forking thread's fork under way, from prepare to parent or
        /// child. `ManuallyDrop`: as `Kept`.
        static WINDOW: RefCell<ManuallyDrop<Option<Window>>> =
            RefCell::new(ManuallyDrop::new(None));
    }

    /// How many forks lie between this process and the first one that used
    /// rcu-defer: 0 there, 1 in a child, 2 in a grandchild.
    static GENERATION: AtomicU64 = AtomicU64::new(0);

    /// Registered once, before the first hook.
    static HANDLERS: Once = Once::new();

    /// Registers `hook` (idempotent), and the fork handlers the first time
    /// in the process. A module calls this before it takes the hook's lock,
    /// holding no lock of a higher rank (see the module documentation): the
    /// call may wait for a fork under way. A child inherits the handlers
    /// and the registered hooks.
    ///
    /// # Errors
    ///
    /// The error of `pthread_atfork`, returned to the one call that tried
    /// to register the handlers, for it to report.
    #[inline]
    pub(crate) fn register(hook: &'static Hook) -> io::Result<()> {
        if TABLE.is_registered(hook.rank) {
            return Ok(());
        }
        register_slow(hook)
    }

    #[cold]
    fn register_slow(hook: &'static Hook) -> io::Result<()> {
        let mut handlers = Ok(());
        HANDLERS.call_once(|| handlers = sys::register_atfork(prepare, parent, child));
        TABLE.register(hook);
        handlers
    }

    /// The current generation (see `GENERATION`).
    #[inline]
    pub(crate) fn generation() -> u64 {
        // Relaxed: changed only in a child before its first other thread
        // exists; threads spawned later see it through the spawn.
        GENERATION.load(Ordering::Relaxed)
    }

    /// Before the fork, on the forking thread: takes every registered lock,
    /// in rank order.
    extern "C" fn prepare() {
        let window = TABLE.prepare();
        WINDOW.with(|slot| **slot.borrow_mut() = Some(window));
    }

    /// After the fork, in the parent: releases the locks.
    extern "C" fn parent() {
        if let Some(window) = take() {
            TABLE.parent(window);
        }
    }

    /// After the fork, in the child: repairs what refers to threads that do
    /// not exist here, then releases the locks.
    extern "C" fn child() {
        let Some(window) = take() else { return };
        // Relaxed: see `generation`.
        GENERATION.fetch_add(1, Ordering::Relaxed);
        TABLE.child(window);
    }

    /// The window prepare opened, if it ran on this thread.
    fn take() -> Option<Window> {
        WINDOW.with(|slot| slot.borrow_mut().take())
    }

    /// The table's handling of a fork, on tables of their own (the
    /// process's `TABLE` holds the library's hooks), with the handlers
    /// called directly: no process forks here.
    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::sync::thread;
        use std::sync::mpsc;
        use std::time::{Duration, Instant};

        /// What a test waits for before it takes a thread for stuck.
        const LIMIT: Duration = Duration::from_secs(20);

        fn noop() {}

        #[test]
        fn every_rank_has_its_place_once() {
            for (i, rank) in BY_RANK.into_iter().enumerate() {
                assert_eq!(rank as usize, i);
            }
            let mut repaired = 0;
            for rank in REPAIR_ORDER {
                assert_eq!(repaired & rank.bit(), 0, "{rank:?} twice in REPAIR_ORDER");
                repaired |= rank.bit();
            }
            assert_eq!(repaired, (1 << RANKS) - 1);
        }

        #[test]
        fn a_registration_of_a_slot_that_prepare_closed_waits_for_the_fork_to_end() {
            static TABLE: Table = Table::new();
            static PREPARED: AtomicU64 = AtomicU64::new(0);
            static HOOK: Hook = Hook {
                rank: Rank::Registry,
                // Relaxed: read by the test after the handlers returned.
                prepare: || {
                    PREPARED.fetch_add(1, Ordering::Relaxed);
                },
                repair: noop,
                release: noop,
            };
            let window = TABLE.prepare();
            let (done, registered) = mpsc::channel();
            let registrant = thread::spawn(move || {
                TABLE.register(&HOOK);
                done.send(()).unwrap();
            });
            // It waits as long as the fork is under way (here, 200 ms).
            assert_eq!(
                registered.recv_timeout(Duration::from_millis(200)),
                Err(mpsc::RecvTimeoutError::Timeout)
            );
            assert!(!TABLE.is_registered(Rank::Registry));
            TABLE.parent(window);
            registered
                .recv_timeout(LIMIT)
                .expect("the registration ends with the fork");
            registrant.join().unwrap();
            assert!(TABLE.is_registered(Rank::Registry));
            // The next fork's prepare runs the hook.
            let window = TABLE.prepare();
            TABLE.parent(window);
            // Relaxed: as above.
            assert_eq!(PREPARED.load(Ordering::Relaxed), 1);
        }

        #[test]
        fn a_registration_under_a_lock_that_prepare_waits_for_goes_ahead() {
            static TABLE: Table = Table::new();
            static LEADER: Mutex<()> = Mutex::new(());
            thread_local_const! {
                static HELD: Kept<MutexGuard<'static, ()>> = Kept::new();
            }
            static LEADER_HOOK: Hook = Hook {
                rank: Rank::Leader,
                prepare: || HELD.with(|held| held.keep(lock(&LEADER))),
                repair: noop,
                release: || HELD.with(Kept::release),
            };
            static LOG: Mutex<Vec<&str>> = Mutex::new(Vec::new());
            static REGISTRY_HOOK: Hook = Hook {
                rank: Rank::Registry,
                prepare: || lock(&LOG).push("prepare"),
                repair: noop,
                release: || lock(&LOG).push("release"),
            };
            TABLE.register(&LEADER_HOOK);
            // This thread holds the lower rank's lock, as the registry lock
            // is held when the flavor decision's hook registers.
            let leader = lock(&LEADER);
            let forker = thread::spawn(|| {
                let window = TABLE.prepare();
                TABLE.parent(window);
            });
            // Once the forker holds `window`, it waits for `LEADER`, before
            // it reaches the registry's slot.
            let since = Instant::now();
            while TABLE.window.try_lock().is_ok() {
                assert!(since.elapsed() < LIMIT, "the forker never began");
                thread::yield_now();
            }
            TABLE.register(&REGISTRY_HOOK);
            assert!(TABLE.is_registered(Rank::Registry));
            drop(leader);
            forker.join().unwrap();
            assert_eq!(*lock(&LOG), ["prepare", "release"]);
        }

        #[test]
        fn a_child_repairs_everything_before_it_releases_anything() {
            static TABLE: Table = Table::new();
            static LOG: Mutex<Vec<&str>> = Mutex::new(Vec::new());
            static LEADER_HOOK: Hook = Hook {
                rank: Rank::Leader,
                prepare: || lock(&LOG).push("prepare leader"),
                repair: || lock(&LOG).push("repair leader"),
                release: || lock(&LOG).push("release leader"),
            };
            static REGISTRY_HOOK: Hook = Hook {
                rank: Rank::Registry,
                prepare: || lock(&LOG).push("prepare registry"),
                repair: || lock(&LOG).push("repair registry"),
                release: || lock(&LOG).push("release registry"),
            };
            TABLE.register(&REGISTRY_HOOK);
            TABLE.register(&LEADER_HOOK);
            let window = TABLE.prepare();
            TABLE.child(window);
            assert_eq!(
                *lock(&LOG),
                [
                    "prepare leader",
                    "prepare registry",
                    "repair registry",
                    "repair leader",
                    "release leader",
                    "release registry",
                ]
            );
            // The slots prepare closed are open again.
            for rank in &BY_RANK[2..] {
                // Relaxed: this thread reopened them.
                let state = TABLE.slot(*rank).state.load(Ordering::Relaxed);
                assert_eq!(state, EMPTY, "{rank:?}");
            }
        }
    }
}

#[cfg(not(loom))]
pub(crate) use handlers::{generation, register, Hook, Kept, Rank};

/// Declares `FORK_HELD` and `FORK_HOOK` for a layer whose hook holds one
/// `Mutex` (`$lock`, guarding a `$guarded`) across a `fork()`: prepare
/// takes it, the child runs `repair` on the guard (if given) before any
/// release, release drops it. The layer registers `FORK_HOOK` before it
/// first takes the lock.
#[cfg(not(loom))]
macro_rules! lock_hook {
    ($rank:ident, $lock:expr, $guarded:ty) => {
        $crate::fork::lock_hook!($rank, $lock, $guarded, repair: |_| {});
    };
    ($rank:ident, $lock:expr, $guarded:ty, repair: $repair:expr) => {
        $crate::sync::thread_local_const! {
            /// The lock, held by the forking thread across a `fork()`.
            static FORK_HELD: $crate::fork::Kept<$crate::sync::MutexGuard<'static, $guarded>> =
                $crate::fork::Kept::new();
        }

        static FORK_HOOK: $crate::fork::Hook = $crate::fork::Hook {
            rank: $crate::fork::Rank::$rank,
            prepare: || FORK_HELD.with(|held| held.keep($crate::sync::lock(&$lock))),
            repair: || FORK_HELD.with(|held| held.repair($repair)),
            release: || FORK_HELD.with($crate::fork::Kept::release),
        };
    };
}
#[cfg(not(loom))]
pub(crate) use lock_hook;

/// Under loom there is no fork: every drain is of this process.
#[cfg(loom)]
#[inline]
pub(crate) fn generation() -> u64 {
    0
}
