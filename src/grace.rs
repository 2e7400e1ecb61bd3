//! Grace periods: `synchronize_rcu` and its variants.
//!
//! One thread at a time (the leader) runs a grace period: it fences, advances
//! the grace-period counter, and waits until no reader record holds an older
//! value. Callers that arrive while a grace period runs wait for the next
//! one, which a single leader runs for all of them: N concurrent callers
//! cost about one grace period, not N.
//!
//! Waiting spins briefly, then sleeps on an event that a reader leaving its
//! section sets when the writer has asked it to (QEMU's `rcu_gp_event`).

use crate::detect::{self, Error, Waiter};
use crate::event::{reset_event, wait_event};
use crate::flavor;
#[cfg(not(loom))]
use crate::fork;
use crate::reader::{
    gp_counter, offline_while, ordinary_readers, registry, set_gp_counter, GP_STEP,
};
#[cfg(not(loom))]
use crate::report;
use crate::sync::{
    fence, global, lock, spin_loop, thread_local_const, AtomicU64, Condvar, Mutex, MutexGuard,
    Ordering, MAY_SPIN,
};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// How many scans the leader makes, spinning between them, before it sleeps.
const SPIN_SCANS: u32 = 100;

/// Leader election and completion count.
struct Leader {
    /// Grace periods completed since the process started.
    completed: u64,
    /// Whether a leader is running one now.
    running: bool,
    /// Callers asleep on `LEADER_DONE`: a leader that finishes notifies it
    /// only if there are any, since a notification is a system call even
    /// when nobody waits (one per grace period, on the leader's CPU).
    waiting: usize,
}

global! {
    static LEADER: Mutex<Leader> = Mutex::new(Leader {
        completed: 0,
        running: false,
        waiting: 0,
    });
}
global! {
    /// Signalled whenever a leader finishes or gives up.
    static LEADER_DONE: Condvar = Condvar::new();
}

global! {
    /// Grace-period attempts begun since the process started: attempt `n`
    /// is the one that raised it to `n`. Changed only by read-modify-writes,
    /// so that a polled cookie's read-modify-write (see `poll`) is ordered
    /// against the next attempt's.
    static STARTED: AtomicU64 = AtomicU64::new(0);
}

global! {
    /// The number of the last grace-period attempt that completed: every
    /// read section that began before it began has ended. Attempts run one
    /// at a time, so it only grows.
    static DONE: AtomicU64 = AtomicU64::new(0);
}

/// The number the next grace-period attempt will get. A read-modify-write
/// (of nothing): it reads the latest value, and its Release half pairs with
/// the Acquire increment of that attempt's leader in `LeaderSlot::take`,
/// so whatever the caller did before (unpublishing a value) happens before
/// that attempt's first fence.
pub(crate) fn next_attempt() -> u64 {
    // Release as above (a read-modify-write reads the latest value whatever
    // its ordering).
    STARTED.fetch_add(0, Ordering::Release) + 1
}

/// The number of the last grace-period attempt that completed.
pub(crate) fn done() -> u64 {
    // Acquire pairs with the Release store in `grace_period` after the
    // attempt's own Acquire fence: the read sections it waited for happen
    // before whatever the caller does once it sees the attempt done.
    DONE.load(Ordering::Acquire)
}

thread_local_const! {
    /// True on the thread that holds the `LeaderSlot`: a fork's child keeps
    /// the grace period running only if the forking thread runs it (from
    /// the stall handler).
    static IS_LEADER: Cell<bool> = Cell::new(false);
}

/// Waits until every read section that was running when it was called has
/// ended.
///
/// Concurrent callers share grace periods. Waiting spins briefly, then
/// sleeps until a reader leaving its section wakes it. If the grace period
/// waits longer than the stall timeout (see
/// [`set_stall_timeout`](crate::set_stall_timeout)), the stall handler is
/// called once with a report naming the readers that hold it up, and the
/// wait goes on.
///
/// # Panics
///
/// With the message of the [`Error`] that [`try_synchronize_rcu`] would
/// return, located at the caller:
///
/// - if the calling thread is inside a read section: the grace period would
///   wait for that section, which cannot end while this call waits. The
///   message names the depth and where the outermost section was entered;
/// - if called from the stall handler;
/// - if the membarrier flavor's system call fails (a seccomp filter that
///   refuses `membarrier(2)`; see [`Error::MembarrierFailed`]).
///
/// ```
/// rcu_defer::synchronize_rcu();
/// ```
#[track_caller]
pub fn synchronize_rcu() {
    if let Err(e) = try_synchronize_rcu() {
        panic!("{e}");
    }
}

/// Like [`synchronize_rcu`], but returns the error instead of panicking:
/// [`Error::InReadSection`] (at once) when the calling thread is inside a
/// read section, [`Error::InStallHandler`] from the stall handler, and
/// [`Error::MembarrierFailed`] if the grace period cannot end.
///
/// ```
/// use rcu_defer::{read_lock, try_synchronize_rcu, Error};
/// let guard = read_lock();
/// assert!(matches!(try_synchronize_rcu(), Err(Error::InReadSection { depth: 1, .. })));
/// drop(guard);
/// assert!(try_synchronize_rcu().is_ok());
/// ```
#[track_caller]
pub fn try_synchronize_rcu() -> Result<(), Error> {
    detect::check_may_wait("synchronize_rcu")?;
    grace_period(None)
}

/// Like [`try_synchronize_rcu`], but gives up once `limit` has passed and
/// returns [`Error::Timeout`] with a report of the readers that held the
/// grace period up.
///
/// Giving up leaves nothing half done: readers are unaffected and a later
/// grace period starts afresh.
///
/// ```
/// use std::time::Duration;
/// rcu_defer::synchronize_rcu_timeout(Duration::from_secs(5)).unwrap();
/// ```
#[track_caller]
pub fn synchronize_rcu_timeout(limit: Duration) -> Result<(), Error> {
    detect::check_may_wait("synchronize_rcu_timeout")?;
    let until = Instant::now().checked_add(limit);
    grace_period(until)
}

/// Waits for a full grace period that starts after this call, sharing it
/// with concurrent callers; gives up at `until`.
///
/// A grace period that fails (a refused membarrier) or panics is not
/// counted: the callers waiting for it are woken, and each runs its own
/// attempt, which fails or succeeds on its own.
pub(crate) fn grace_period(until: Option<Instant>) -> Result<(), Error> {
    // An online caller outside any read section goes offline for the wait,
    // or it would wait for its own quiescent state.
    offline_while(|| grace_period_offline(until))
}

fn grace_period_offline(until: Option<Instant>) -> Result<(), Error> {
    // The other takes of `LEADER` come after this one.
    register_for_fork();
    let called = Instant::now();
    let mut leader = lock(&LEADER);
    // A grace period already running may have started before this call, so
    // it does not count: wait for the one after it.
    let target = leader.completed + if leader.running { 2 } else { 1 };
    loop {
        if leader.completed >= target {
            return Ok(());
        }
        if !leader.running {
            leader.running = true;
            drop(leader);
            let (slot, attempt) = LeaderSlot::take();
            let result = run_grace_period(until);
            if result.is_ok() {
                // Release pairs with the Acquire load in `done`; after the
                // attempt's Acquire fence in `run_grace_period`.
                DONE.store(attempt, Ordering::Release);
            }
            leader = slot.release(result.is_ok());
            result?;
            continue;
        }
        let timeout = match until {
            None => None,
            Some(until) => {
                let now = Instant::now();
                if now >= until {
                    drop(leader);
                    return Err(Error::Timeout(detect::stall_report(
                        &mut registry(),
                        gp_counter(),
                        now - called,
                        Waiter::GracePeriod,
                    )));
                }
                Some(until - now)
            }
        };
        // Counted under the lock that the wait releases: a leader that
        // finishes after this sees the count and notifies.
        leader.waiting += 1;
        leader = match timeout {
            None => LEADER_DONE.wait(leader).unwrap_or_else(|p| p.into_inner()),
            Some(timeout) => {
                LEADER_DONE
                    .wait_timeout(leader, timeout)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
        leader.waiting -= 1;
    }
}

/// The right to run the current grace period. However the attempt ends, the
/// slot is given back and the callers waiting for it are woken: by
/// `release` when it returns, by `drop` when it unwinds.
struct LeaderSlot;

impl LeaderSlot {
    /// The slot, for the thread that has just set `running`, and the
    /// attempt's number.
    fn take() -> (Self, u64) {
        IS_LEADER.with(|is| is.set(true));
        // AcqRel: Acquire pairs with the Release half of `next_attempt` (a
        // cookie taken before this attempt began is ordered before its
        // first fence); Release keeps the chain of read-modify-writes one
        // release sequence.
        let attempt = STARTED.fetch_add(1, Ordering::AcqRel) + 1;
        (LeaderSlot, attempt)
    }

    /// Gives the slot back after an attempt that returned; counts it if it
    /// `completed`.
    fn release(self, completed: bool) -> MutexGuard<'static, Leader> {
        std::mem::forget(self);
        IS_LEADER.with(|is| is.set(false));
        let mut leader = lock(&LEADER);
        leader.running = false;
        if completed {
            leader.completed += 1;
        }
        if leader.waiting > 0 {
            LEADER_DONE.notify_all();
        }
        leader
    }
}

impl Drop for LeaderSlot {
    /// The attempt unwound: not counted, but no longer running either, so a
    /// waiting caller takes over instead of waiting forever.
    fn drop(&mut self) {
        IS_LEADER.with(|is| is.set(false));
        let mut leader = lock(&LEADER);
        leader.running = false;
        if leader.waiting > 0 {
            LEADER_DONE.notify_all();
        }
    }
}

// Leader election's lock across a `fork()` (see `fork`), and its repair
// in the child.
#[cfg(not(loom))]
fork::lock_hook!(Leader, LEADER, Leader, repair: after_fork_child);

/// Registers leader election's fork hook: before its lock is taken.
#[inline]
fn register_for_fork() {
    #[cfg(not(loom))]
    fork::register(&FORK_HOOK).unwrap_or_else(report::fork_handlers_failed);
}

/// In the child of a fork, before the lock is released: a grace period
/// that another thread was running has no leader here, so none is running
/// (the next caller leads one; the completed count stays). Nobody waits on
/// `LEADER_DONE` (the count goes to 0): those waiters were other threads.
/// If the forking thread is the leader (it forked from the stall handler),
/// its grace period goes on when the handler returns.
#[cfg(not(loom))]
fn after_fork_child(leader: &mut MutexGuard<'static, Leader>) {
    if !IS_LEADER.with(Cell::get) {
        leader.running = false;
    }
    leader.waiting = 0;
}

/// The writer's side of a store→load ordering point (`flavor::writer_fence`),
/// told whether ordinary readers may exist.
///
/// # Errors
///
/// [`Error::MembarrierFailed`] if the kernel refuses the membarrier after
/// having accepted the registration (a seccomp filter installed since). The
/// readers' side of the protocol is then missing, so the caller must not
/// treat the grace period as over.
fn writer_fence() -> Result<(), Error> {
    flavor::writer_fence(ordinary_readers).map_err(|errno| Error::MembarrierFailed { errno })
}

/// The leader's work: one grace period.
fn run_grace_period(until: Option<Instant>) -> Result<(), Error> {
    // Pairs with the reader's fence after it publishes `ctr` on entry:
    // either this scan sees the reader's ctr, or the reader sees every store
    // made before this grace period (the writer's unpublishing). If it
    // fails, nothing has changed yet.
    writer_fence()?;
    let gp = gp_counter() + GP_STEP;
    set_gp_counter(gp);
    let result = wait_for_readers(gp, until);
    // Acquire pairs with the reader's Release store of ctr = 0: the ended
    // sections happen before whatever the caller does next (freeing).
    fence(Ordering::Acquire);
    result
}

/// Waits until no record holds a section that began before `gp`.
fn wait_for_readers(gp: u64, until: Option<Instant>) -> Result<(), Error> {
    #[cfg(loom)]
    if crate::fault::active(crate::fault::LoomFault::SkipReaderWait) {
        return Ok(());
    }
    let started = Instant::now();
    let mut spins = 0;
    let mut stall_reported = false;
    loop {
        if !registry().any_blocks(gp) {
            return Ok(());
        }
        if MAY_SPIN && spins < SPIN_SCANS {
            spins += 1;
            spin_loop();
            continue;
        }
        reset_event();
        registry().mark_waiting(gp);
        // Pairs with the reader's fence between its ctr = 0 store and its
        // `waiting` load: either the rescan sees the reader gone, or the
        // reader sees `waiting` and sets the event (after the reset above).
        writer_fence()?;
        if !registry().unmark_quiescent(gp) {
            return Ok(());
        }
        let stall_at = match detect::stall_timeout() {
            Some(t) if !stall_reported => started.checked_add(t),
            _ => None,
        };
        let wake_at = match (stall_at, until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if wait_event(wake_at) {
            continue;
        }
        let now = Instant::now();
        let report =
            || detect::stall_report(&mut registry(), gp, now - started, Waiter::GracePeriod);
        if until.is_some_and(|u| now >= u) {
            return Err(Error::Timeout(report()));
        }
        if stall_at.is_some_and(|s| now >= s) {
            stall_reported = true;
            // Build the report first: the registry lock must be released
            // before the user's handler runs (it may register a reader).
            let report = report();
            detect::report_stall(&report);
        }
    }
}
