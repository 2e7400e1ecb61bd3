//! The grace-period event (QEMU's `rcu_gp_event`): the leader of a grace
//! period (`grace.rs`) sleeps on it, and a reader leaving its section sets
//! it when the leader has asked it to. Here, below the read side, so that
//! readers wake the writer without importing the grace-period module above
//! them.

#[cfg(not(loom))]
use crate::sync::MutexGuard;
use crate::sync::{global, lock, Condvar, Mutex};
use std::time::Instant;

/// A resettable event: the leader sleeps on it, readers set it.
struct Event {
    state: Mutex<EventState>,
    cv: Condvar,
}

/// What `Event::state` guards.
pub(crate) struct EventState {
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

/// Wakes a leader sleeping in `wait_for_readers`. Called by a reader leaving
/// its section after a leader set its `waiting` flag.
pub(crate) fn wake_writer() {
    let sleeping = {
        let mut state = lock(&EVENT.state);
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
    lock(&EVENT.state).set = false;
}

/// Sleeps until the event is set (true) or `until` passes (false).
pub(crate) fn wait_event(until: Option<Instant>) -> bool {
    let mut state = lock(&EVENT.state);
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

/// The event's lock, held across a `fork()` after every other lock (see
/// `fork`).
#[cfg(not(loom))]
pub(crate) struct EventHeld(MutexGuard<'static, EventState>);

/// Locks the event for a fork.
#[cfg(not(loom))]
pub(crate) fn hold_event_for_fork() -> EventHeld {
    EventHeld(lock(&EVENT.state))
}

#[cfg(not(loom))]
impl EventHeld {
    /// In the child of a fork: no leader sleeps on the event there (a
    /// sleeping one was another thread), so a reader's wake-up makes no
    /// system call until the child's own leader sleeps.
    pub(crate) fn after_fork_child(&mut self) {
        self.0.sleeping = false;
    }
}
