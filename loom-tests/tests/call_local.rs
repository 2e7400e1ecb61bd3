//! loom models of deferred local calls with a concurrent writer.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;
use rcu_defer::{call_local, in_read_section, read_lock, synchronize_rcu};
use std::sync::Arc;

/// The deferred call: counts its runs, checks it runs outside the section,
/// then waits until the writer's `synchronize_rcu` has returned.
fn deferred(state: &State) {
    assert!(
        !in_read_section(),
        "a deferred call ran inside the section that recorded it"
    );
    state.runs.fetch_add(1, Ordering::SeqCst);
    while !state.writer_done.load(Ordering::Acquire) {
        thread::yield_now();
    }
}

struct State {
    runs: AtomicUsize,
    writer_done: AtomicBool,
}

/// Property: calls recorded in a read section while another thread runs
/// `synchronize_rcu` run exactly once (the duplicate records nothing), only
/// after the outermost guard is dropped, and the writer's grace period is
/// not held up by them. The deferred call blocks until the writer has
/// returned from `synchronize_rcu`: if calls ran before the section was
/// left, or if leaving the section waited for them before waking the
/// writer, the model would deadlock, which loom reports.
///
/// Bounded to 5 preemptions (11 s; 6 takes 34 s): the deferred call's wait
/// loop and the writer's sleep make the exhaustive search longer than the
/// whole suite's budget (9.4 minutes on 2 cores once compiler fences
/// stopped counting as fences under loom), and the orderings it checks need
/// at most two preemptions (the writer between the reader's publication and
/// its exit, and the reader between the writer's flagging and its rescan).
#[test]
fn deferred_calls_run_once_after_the_section_and_do_not_hold_up_the_writer() {
    loom_tests::bounded(5).check(|| {
        let state = Arc::new(State {
            runs: AtomicUsize::new(0),
            writer_done: AtomicBool::new(false),
        });
        // The section runs on a spawned thread: loom drops its per-model
        // statics before the main thread's thread-local destructors run, so
        // the main thread must not register as a reader.
        let reader = {
            let state = Arc::clone(&state);
            thread::spawn(move || {
                let guard = read_lock();
                assert!(call_local(deferred, &state));
                {
                    let _nested = read_lock();
                    assert!(!call_local(deferred, &state), "a duplicate records nothing");
                }
                assert_eq!(
                    state.runs.load(Ordering::SeqCst),
                    0,
                    "nothing runs in the section"
                );
                drop(guard);
                assert_eq!(
                    state.runs.load(Ordering::SeqCst),
                    1,
                    "exactly once, at the end"
                );
            })
        };
        synchronize_rcu();
        state.writer_done.store(true, Ordering::Release);
        loom_tests::join([reader]);
    });
}
