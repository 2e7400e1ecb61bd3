//! Polled grace periods: a cookie that says which grace period a writer
//! needs, polled without blocking (liburcu's and the kernel's
//! `start_poll_synchronize_rcu` / `poll_state_synchronize_rcu`).
//!
//! Grace-period attempts are numbered (`grace::STARTED`, raised by each
//! leader as it begins one) and the number of the last one that completed
//! is published (`grace::DONE`). A cookie is the number the next attempt
//! will get: that attempt begins after the cookie was taken, so once it
//! (or a later one) has completed, every read section that was running
//! when the cookie was taken has ended. Taking a cookie is one
//! read-modify-write of `STARTED`, polling it one load of `DONE`.
//!
//! `start_poll_synchronize_rcu` also makes sure that such an attempt
//! happens: it queues a `call_rcu` callback (as liburcu does) that runs
//! after a grace period and queues itself again until the cookie is
//! complete (an attempt can fail, see `Error::MembarrierFailed`). A cookie
//! no newer than one already requested queues nothing, so a writer that
//! takes cookies in a loop queues one callback per grace period, not one
//! per cookie.

use crate::call_rcu::{call_rcu, call_rcu_or_report};
use crate::detect;
#[cfg(not(loom))]
use crate::fork;
use crate::grace;
#[cfg(not(loom))]
use crate::report;
use crate::sync::{global, AtomicU64, Ordering};

/// A grace-period cookie: which grace period must complete before what was
/// unpublished before the cookie was taken may be freed.
///
/// Taken with [`start_poll_synchronize_rcu`] (or
/// [`get_state_synchronize_rcu`]), checked without blocking with
/// [`poll_state_synchronize_rcu`], waited for with
/// [`cond_synchronize_rcu`]. A cookie taken earlier is complete whenever a
/// later one is. It is plain data: it can be stored, copied and sent to
/// other threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollState {
    /// The number of the first grace-period attempt that began after the
    /// cookie was taken.
    attempt: u64,
}

global! {
    /// The newest cookie for which a completion callback is queued (see
    /// the module documentation).
    static REQUESTED: AtomicU64 = AtomicU64::new(0);
}

/// Takes a cookie for the grace periods that begin from now on, without
/// making one begin (the kernel's `get_state_synchronize_rcu`): it is
/// complete once some other caller's grace period (a
/// [`synchronize_rcu`](crate::synchronize_rcu), the `rcu-call` thread's)
/// has run. Use [`start_poll_synchronize_rcu`] to make sure one will.
///
/// Never blocks, never makes a system call.
///
/// ```
/// let cookie = rcu_defer::get_state_synchronize_rcu();
/// rcu_defer::synchronize_rcu();
/// assert!(rcu_defer::poll_state_synchronize_rcu(cookie));
/// ```
pub fn get_state_synchronize_rcu() -> PollState {
    PollState {
        attempt: grace::next_attempt(),
    }
}

/// Takes a cookie for the grace periods that begin from now on and makes
/// sure that one will: poll it with [`poll_state_synchronize_rcu`], wait
/// for it with [`cond_synchronize_rcu`].
///
/// Never blocks. Costs one atomic read-modify-write and one load when a
/// grace period that completes the cookie has already been asked for;
/// otherwise it also queues a callback with [`call_rcu`](crate::call_rcu)
/// (which may wake the `rcu-call` thread). Unpublish what you mean to free
/// before taking the cookie.
///
/// ```
/// use rcu_defer::{poll_state_synchronize_rcu, start_poll_synchronize_rcu};
/// let cookie = start_poll_synchronize_rcu();
/// // ... other work; then, from an event loop:
/// while !poll_state_synchronize_rcu(cookie) {
///     std::thread::sleep(std::time::Duration::from_millis(1));
/// }
/// ```
///
/// # Panics
///
/// If the `rcu-call` thread cannot be spawned (as
/// [`call_rcu`](crate::call_rcu)).
pub fn start_poll_synchronize_rcu() -> PollState {
    let state = get_state_synchronize_rcu();
    if needs_request(state) {
        complete_eventually(state.attempt);
    }
    state
}

/// Makes sure that a grace period completing `state` will run, as
/// `start_poll_synchronize_rcu` does, on a path that must not panic: a
/// callback thread that cannot be spawned is reported, and the request
/// stays queued for the next `call_rcu` to start it.
pub(crate) fn request_or_report(state: PollState) {
    if needs_request(state) {
        let attempt = state.attempt;
        call_rcu_or_report(move || {
            if grace::done() < attempt {
                complete_eventually(attempt);
            }
        });
    }
}

/// Whether no callback that completes `state` is queued yet; if so, the
/// caller is now the one to queue it.
fn needs_request(state: PollState) -> bool {
    // Before `REQUESTED` is raised, which the hook repairs.
    #[cfg(not(loom))]
    fork::register(&FORK_HOOK).unwrap_or_else(report::fork_handlers_failed);
    // Relaxed: `REQUESTED` only says whether a callback is queued; the
    // callback's own check of `DONE` is what orders anything.
    REQUESTED.load(Ordering::Relaxed) < state.attempt
        && REQUESTED.fetch_max(state.attempt, Ordering::Relaxed) < state.attempt
}

/// Queues a callback that runs after a grace period and queues itself again
/// until attempt `attempt` (or a later one) has completed. The first grace
/// period it waits for began after it was queued, hence after `attempt`
/// was numbered, so it is normally that attempt or a later one; only a
/// failed attempt makes it go round again.
fn complete_eventually(attempt: u64) {
    call_rcu(move || {
        if grace::done() < attempt {
            complete_eventually(attempt);
        }
    });
}

/// Whether the grace period `state` asks for has completed: whether every
/// read section that was running when the cookie was taken has ended. Never
/// blocks: one atomic load.
///
/// ```
/// let cookie = rcu_defer::start_poll_synchronize_rcu();
/// rcu_defer::cond_synchronize_rcu(cookie);
/// assert!(rcu_defer::poll_state_synchronize_rcu(cookie));
/// ```
#[inline]
pub fn poll_state_synchronize_rcu(state: PollState) -> bool {
    grace::done() >= state.attempt
}

/// Waits until the grace period `state` asks for has completed, running
/// grace periods if needed; returns at once if it has.
///
/// As [`synchronize_rcu`](crate::synchronize_rcu), it takes an online
/// calling thread offline for the wait.
///
/// ```
/// let cookie = rcu_defer::get_state_synchronize_rcu();
/// rcu_defer::cond_synchronize_rcu(cookie); // runs a grace period
/// rcu_defer::cond_synchronize_rcu(cookie); // returns at once
/// ```
///
/// # Panics
///
/// Inside a read section, even if the cookie is already complete (so that
/// the mistake shows on the first call, not only when a grace period is
/// still needed), and from the stall handler, as
/// [`synchronize_rcu`](crate::synchronize_rcu); and if a grace period fails
/// ([`Error::MembarrierFailed`](crate::Error::MembarrierFailed)).
#[track_caller]
pub fn cond_synchronize_rcu(state: PollState) {
    if let Err(e) = detect::check_may_wait("cond_synchronize_rcu") {
        panic!("{e}");
    }
    while !poll_state_synchronize_rcu(state) {
        if let Err(e) = grace::grace_period(None) {
            panic!("{e}");
        }
    }
}

/// The repair of `REQUESTED` in the child of a fork (see `fork`; there is
/// no lock to hold): the callback that was to complete the newest requested
/// cookie may have been in the batch the `rcu-call` thread was running,
/// which the child never runs; the next cookie asks again.
#[cfg(not(loom))]
static FORK_HOOK: fork::Hook = fork::Hook {
    rank: fork::Rank::Poll,
    prepare: || {},
    // Relaxed: the child runs one thread.
    repair: || REQUESTED.store(0, Ordering::Relaxed),
    release: || {},
};
