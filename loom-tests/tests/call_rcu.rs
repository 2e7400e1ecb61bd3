//! loom models of `call_rcu` and `drain_call_rcu`: a callback runs exactly
//! once, on the `rcu-call` worker (a loom thread here, which the model stops
//! with `loom_stop_call_rcu_thread`), only after a grace period that began
//! after it was queued, and a drain returns only once every callback queued
//! before it has run.
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use rcu_defer::{call_rcu, drain_call_rcu, read_lock};

/// What the threads of `drain_runs_callbacks_queued_before_it_once_after_a_grace_period`
/// share.
struct State {
    /// How many times each callback ran: `[0]` the one the reader queues
    /// inside its section, `[1]` the one the draining thread queues.
    runs: [AtomicUsize; 2],
    /// Set by the reader, still inside its section, once its callback is
    /// queued.
    queued_in_section: AtomicBool,
    /// Written by the reader inside its section *after* queueing its
    /// callback; read by that callback. loom reports a causality violation
    /// if the callback's read is not ordered after the reader's write,
    /// i.e. if the callback does not wait for the section to end.
    section_data: UnsafeCell<usize>,
    /// A failed check inside a callback (which the worker would swallow).
    caught: loom_tests::Caught,
}

// SAFETY: `section_data` is loom's `UnsafeCell`, which loom checks for
// races on every access: that is what this model is about. (`call_rcu`
// needs a `Send` callback, so the shared state must be `Sync`.)
unsafe impl Sync for State {}

/// What the reader writes into `section_data` before leaving its section.
const WRITTEN_IN_SECTION: usize = 1;

/// Property: `drain_call_rcu` returns only once every callback queued before
/// it (by any thread) has run; each callback runs exactly once; and a
/// callback never runs before a grace period that began after it was
/// queued: the callback that a reader queues inside its read section runs
/// only after that section has ended (loom checks that its access to the
/// data the reader writes later in the section is ordered after the write).
///
/// Threads: the reader, which queues a callback inside its section; the
/// model's thread, which queues one and drains (the reader's callback must
/// have run by then if the drain began after it was queued); and the
/// `rcu-call` worker. Bounded to 4 preemptions (see the comment at the
/// bound). The flavor is decided before the threads start.
#[test]
fn drain_runs_callbacks_queued_before_it_once_after_a_grace_period() {
    // Three threads sharing the queue's lock, the grace-period locks and the
    // drain's condition variable: exhaustive does not finish in minutes (a
    // smaller model with a reader took over 15, see detect.rs). 4 takes
    // ~25 s on 2 cores, 5 over 3 minutes; 3 (~2 s) already catches a grace
    // period that does not wait for the reader (`SkipReaderWait`).
    loom_tests::bounded(4).check(|| {
        rcu_defer::flavor();
        let state = Arc::new(State {
            runs: [AtomicUsize::new(0), AtomicUsize::new(0)],
            queued_in_section: AtomicBool::new(false),
            section_data: UnsafeCell::new(0),
            caught: loom_tests::Caught::new(),
        });
        let reader = {
            let state = Arc::clone(&state);
            thread::spawn(move || {
                let guard = read_lock();
                {
                    let state = Arc::clone(&state);
                    call_rcu(move || {
                        state.caught.run(|| {
                            // SAFETY: loom checks this access against the
                            // reader's write.
                            let data = state.section_data.with(|p| unsafe { *p });
                            assert_eq!(
                                data, WRITTEN_IN_SECTION,
                                "a call_rcu callback ran before the read section that was \
                                 open when it was queued had ended"
                            );
                        });
                        state.runs[0].fetch_add(1, Ordering::Relaxed);
                    });
                }
                state.queued_in_section.store(true, Ordering::Release);
                // SAFETY: loom checks this access against the callback's.
                state
                    .section_data
                    .with_mut(|p| unsafe { *p = WRITTEN_IN_SECTION });
                drop(guard);
            })
        };
        {
            let state = Arc::clone(&state);
            call_rcu(move || {
                state.runs[1].fetch_add(1, Ordering::Relaxed);
            });
        }
        let reader_queued = state.queued_in_section.load(Ordering::Acquire);
        drain_call_rcu();
        assert_eq!(
            state.runs[1].load(Ordering::Relaxed),
            1,
            "drain_call_rcu returned before the callback this thread queued had run"
        );
        if reader_queued {
            assert_eq!(
                state.runs[0].load(Ordering::Relaxed),
                1,
                "drain_call_rcu returned before a callback another thread queued before it \
                 had run"
            );
        }
        // The reader first: a callback queued after the worker stopped
        // would never run.
        loom_tests::join([reader]);
        // Runs whatever is still queued, then stops and joins the worker.
        rcu_defer::loom_stop_call_rcu_thread();
        state.caught.rethrow();
        let runs = state.runs.each_ref().map(|r| r.load(Ordering::Relaxed));
        assert_eq!(runs, [1, 1], "a callback did not run exactly once");
    });
}
