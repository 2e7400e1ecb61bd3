//! loom models of the deadlock detector: it refuses only real deadlocks.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use rcu_defer::{defer_scope, read_lock, try_drain_call_rcu, try_synchronize_rcu, Error};

/// Property: a read section held by *another* thread is not a deadlock:
/// `try_synchronize_rcu` on this thread (which holds no section, only a
/// defer scope) must not return `InReadSection`; it waits for the other
/// thread's section and returns `Ok`. Meanwhile the reader's own
/// `try_synchronize_rcu` inside its section is refused at once.
#[test]
fn a_reader_on_another_thread_is_not_reported_as_a_deadlock() {
    loom::model(|| {
        let left = Arc::new(AtomicBool::new(false));
        let reader = {
            let left = Arc::clone(&left);
            thread::spawn(move || {
                let guard = read_lock();
                match try_synchronize_rcu() {
                    Err(Error::InReadSection { depth: 1, .. }) => {}
                    other => panic!("own section must be refused, got {other:?}"),
                }
                left.store(true, Ordering::Release);
                drop(guard);
            })
        };
        let scope = defer_scope();
        let result = try_synchronize_rcu();
        assert!(result.is_ok(), "falsely refused: {result:?}");
        drop(scope);
        loom_tests::join([reader]);
        assert!(left.load(Ordering::Acquire));
    });
}

/// Property: `try_drain_call_rcu` from a thread outside any section is not
/// refused, and returns only once the callback queued before it has run
/// (on the `rcu-call` worker, after a grace period). With a reader thread
/// added the state space took more than 15 minutes on 2 cores; the "reader
/// on another thread" half of the claim is the model above.
#[test]
fn draining_from_a_thread_outside_any_section_is_not_refused() {
    loom::model(|| {
        let ran = Arc::new(AtomicBool::new(false));
        {
            let ran = Arc::clone(&ran);
            rcu_defer::call_rcu(move || ran.store(true, Ordering::Release));
        }
        let result = try_drain_call_rcu();
        assert!(result.is_ok(), "falsely refused: {result:?}");
        assert!(
            ran.load(Ordering::Acquire),
            "drain returned before the callback ran"
        );
        rcu_defer::loom_stop_call_rcu_thread();
    });
}
