//! The grace-period event (QEMU's `rcu_gp_event`): the leader of a grace
//! period (`grace.rs`) sleeps on it, and a reader leaving its section sets
//! it when the leader has asked it to. Here, below the read side, so that
//! readers wake the writer without importing the grace-period module above
//! them.

use crate::sync::{global, lock, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
use crate::{fork, report};
use std::time::Instant;

/// A resettable event: the leader sleeps on it, readers set it.
struct Event {
    state: Mutex<EventState>,
    cv: Condvar,
}

/// What `Event::state` guards.
struct EventState {
    /// Set by a reader; the leader resets it before it asks readers to
    /// set it.
    set: bool,
    /// Whether the leader is asleep on `cv`: a reader that sets the event
    /// while the leader is still scanning makes no system call.
    sleeping: bool,
}

global! {
    static EVENT: Event = Event {
        state: Mutex::new(EventState { set: false, sleeping: false }),
        cv: Condvar::new(),
    };
}

/// Locks the event's state, its fork hook registered first.
fn state() -> MutexGuard<'static, EventState> {
    #[cfg(not(loom))]
    fork::register(&FORK_HOOK).unwrap_or_else(report::fork_handlers_failed);
    lock(&EVENT.state)
}

/// Wakes a leader sleeping in `wait_for_readers`. Called by a reader leaving
/// its section after a leader set its `waiting` flag.
pub(crate) fn wake_writer() {
    let sleeping = {
        let mut state = state();
        state.set = true;
        state.sleeping
    };
    // A leader that is not asleep sees `set` before it sleeps (it tests
    // it under the lock): only a sleeping one needs the notification, a
    // system call. Made after the lock is released, so that the leader it
    // wakes does not block at once on the lock this thread holds; the
    // leader was asleep in the wait when `sleeping` was read, so it cannot
    // miss it.
    if sleeping {
        EVENT.cv.notify_all();
    }
}

/// Clears the event, before the leader asks readers to set it.
pub(crate) fn reset_event() {
    state().set = false;
}

/// Sleeps until the event is set (true) or `until` passes (false).
pub(crate) fn wait_event(until: Option<Instant>) -> bool {
    let mut state = state();
    while !state.set {
        state.sleeping = true;
        state = match until {
            None => EVENT.cv.wait(state).unwrap_or_else(|p| p.into_inner()),
            Some(until) => {
                let now = Instant::now();
                if now >= until {
                    state.sleeping = false;
                    return false;
                }
                EVENT
                    .cv
                    .wait_timeout(state, until - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
        state.sleeping = false;
    }
    true
}

// The event's lock across a `fork()` (see `fork`), and its repair in the
// child: no leader sleeps on the event there (a sleeping one was another
// thread), so a reader's wake-up makes no system call until the child's
// own leader sleeps.
#[cfg(not(loom))]
fork::lock_hook!(Event, EVENT.state, EventState, repair: |state| state.sleeping = false);
