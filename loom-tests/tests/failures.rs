//! loom models of grace periods that fail: writer fences that fail as a
//! `membarrier` refused by a seccomp filter does
//! (`LoomFault::WriterFenceFails`), and a stall handler that panics.
//! Whatever happens to the grace period,
//! nothing retired is freed while a reader that reached it may still use
//! it, and nothing is left stuck: callers get the error, the leader slot
//! goes to the next writer, the `rcu-call` worker keeps its batch.
//!
//! The fault switch is one process-wide static that outlives loom's
//! executions, and the test harness runs a file's tests on parallel
//! threads: every model here (also those that inject no fault) is
//! serialized by `SERIAL`, sets the fault at the start of every execution,
//! and switches it off when it ends, however it ends, as in broken.rs.
#![cfg(loom)]

use loom::model::Builder;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use loom_tests::{Caught, Retirable};
use rcu_defer::{
    call_rcu, loom_inject_fault, read_lock, synchronize_rcu, try_drain_call_rcu,
    try_synchronize_rcu, Error, LoomFault, StallReport,
};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Held by each model of this file for the whole of its run.
static SERIAL: Mutex<()> = Mutex::new(());

/// Switches the fault off when dropped, also when the model panics.
struct FaultOff;

impl Drop for FaultOff {
    fn drop(&mut self) {
        loom_inject_fault(LoomFault::None);
    }
}

/// Runs `body` as a loom model built by `builder`, with `fault` on in every
/// execution.
fn check_with(builder: Builder, fault: LoomFault, body: fn()) {
    // A model that failed poisons the lock; the data it guards is `()`.
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let _off = FaultOff;
    builder.check(move || {
        loom_inject_fault(fault);
        body();
    });
}

/// Whether `result` is the error a refused writer fence gives.
fn is_membarrier_failure(result: &Result<(), Error>) -> bool {
    matches!(result, Err(Error::MembarrierFailed { .. }))
}

/// Property: with every writer fence refused (`WriterFenceFails`),
/// `try_synchronize_rcu` returns `Err(MembarrierFailed)` to each of two
/// concurrent writers, and neither hangs: the writer whose attempt failed
/// gives the leader slot back and wakes a writer waiting for it, which then
/// runs (and fails) its own attempt. The retiring writer frees
/// the object only if its call returned `Ok`, as a caller would, so a
/// failure reported as success would free the object under the reader
/// that reached it (loom's causality check, or the assertion on the
/// result). loom reports a writer left waiting as a deadlock.
///
/// Threads: a reader that uses the object in its section if it can still
/// reach it; the retiring writer (the model's thread), which unpublishes
/// the object and calls `try_synchronize_rcu`; a second writer that calls
/// `try_synchronize_rcu`. Exhaustive (no preemption bound; ~0.1 s): every
/// attempt fails at its first fence, so the writers never wait for the
/// reader. The flavor is not decided beforehand.
///
/// Checked: fails (a deadlock) when `LeaderSlot::release` leaves
/// `running` set after a failed attempt, and fails (the writer frees,
/// assertion on the result) when `run_grace_period` ignores the error of
/// its first writer fence.
#[test]
fn refused_writer_fence_fails_both_writers_and_frees_nothing() {
    check_with(Builder::new(), LoomFault::WriterFenceFails, || {
        let obj = Arc::new(Retirable::new());
        let reader = {
            let obj = Arc::clone(&obj);
            thread::spawn(move || {
                let guard = read_lock();
                obj.read();
                drop(guard);
            })
        };
        let other_writer = thread::spawn(try_synchronize_rcu);
        obj.unpublish();
        let result = try_synchronize_rcu();
        if result.is_ok() {
            obj.free();
        }
        assert!(
            is_membarrier_failure(&result),
            "try_synchronize_rcu with every writer fence refused returned {result:?}"
        );
        let other = other_writer.join().expect("the second writer panicked");
        assert!(
            is_membarrier_failure(&other),
            "a concurrent try_synchronize_rcu with every writer fence refused returned {other:?}"
        );
        loom_tests::join([reader]);
    });
}

/// What the threads of
/// `refused_writer_fence_keeps_call_rcu_callback_queued` share.
struct Queued {
    obj: Retirable,
    /// Set by the callback when it has freed the object.
    ran: AtomicBool,
    /// A failed check inside the callback (which the worker would swallow).
    caught: Caught,
}

// SAFETY: the object's memory is loom's `UnsafeCell`, which loom checks for
// races on every access: that is what this model is about. (`call_rcu`
// needs a `Send` callback, so the shared state must be `Sync`.)
unsafe impl Sync for Queued {}

/// Property: with every writer fence refused (`WriterFenceFails`), a
/// `call_rcu` callback that frees an object a reader may hold is never
/// called, and `try_drain_call_rcu` returns `Err(MembarrierFailed)` instead
/// of hanging: the `rcu-call` worker puts its batch back in the queue,
/// uncalled, and fails the drain waiting for it. The callback has not run
/// when the model ends (after the worker has been stopped); had it run, its
/// free could also overlap the reader's use (loom's causality check, kept
/// by `Caught`).
///
/// Threads: a reader that uses the object in its section if it can still
/// reach it; the model's thread, which unpublishes the object, queues the
/// callback and drains; the `rcu-call` worker, stopped with
/// `loom_stop_call_rcu_thread` at the end. Exhaustive (no preemption bound;
/// ~1 s): every grace period fails at its first fence. The flavor is not
/// decided beforehand.
///
/// Checked: fails (the drain returns `Ok`) when the worker runs the batch's
/// callbacks after a failed grace period instead of giving them back, and
/// fails (the callback's free overlaps the reader's use: a causality
/// violation kept by `Caught`) when it fails the drains and then runs the
/// callbacks.
#[test]
fn refused_writer_fence_keeps_call_rcu_callback_queued() {
    check_with(Builder::new(), LoomFault::WriterFenceFails, || {
        let state = Arc::new(Queued {
            obj: Retirable::new(),
            ran: AtomicBool::new(false),
            caught: Caught::new(),
        });
        let reader = {
            let state = Arc::clone(&state);
            thread::spawn(move || {
                let guard = read_lock();
                state.obj.read();
                drop(guard);
            })
        };
        state.obj.unpublish();
        {
            let state = Arc::clone(&state);
            call_rcu(move || {
                state.caught.run(|| state.obj.free());
                state.ran.store(true, Ordering::Relaxed);
            });
        }
        let drained = try_drain_call_rcu();
        assert!(
            is_membarrier_failure(&drained),
            "try_drain_call_rcu with every writer fence refused returned {drained:?}"
        );
        loom_tests::join([reader]);
        rcu_defer::loom_stop_call_rcu_thread();
        state.caught.rethrow();
        assert!(
            !state.ran.load(Ordering::Relaxed),
            "a call_rcu callback ran although no grace period could end"
        );
    });
}

loom::lazy_static! {
    /// Set by [`panicking_stall_handler`] just before it panics: the
    /// writer's grace period is under way and waiting for the reader.
    static ref STALLED: AtomicBool = AtomicBool::new(false);
}

/// The panic message of [`panicking_stall_handler`].
const HANDLER_PANIC: &str = "the stall handler of the failures model panics";

/// A stall handler that panics. It runs on the writer's thread, inside the
/// grace period.
fn panicking_stall_handler(_: &StallReport) {
    STALLED.store(true, Ordering::Release);
    std::panic::panic_any(HANDLER_PANIC);
}

/// The text of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "a payload that is not a string"
    }
}

/// Keeps the panic hook quiet about [`panicking_stall_handler`]'s panic,
/// which every execution of the model makes (rcu-defer reports it on stderr
/// anyway); any other panic goes to the hook that was in place.
fn hush_handler_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&HANDLER_PANIC) {
                previous(info);
            }
        }));
    });
}

/// The preemption bound of `panicking_stall_handler_neither_ends_nor_breaks_grace_period`.
/// 6 takes ~4 s on 2 cores; without a bound the search takes ~50 s and
/// over a gigabyte. Each mutation listed on the model fails in the first
/// execution loom tries.
const BOUND_PANICKING_HANDLER: usize = 6;

/// Property: a stall handler that panics neither ends the grace period
/// early nor unwinds through it: `synchronize_rcu` returns normally, and
/// only once the section that held it up has ended, so the writer's free
/// comes after the reader's last use of the object.
///
/// The stall timeout is zero, so the grace period calls the handler at its
/// first sleep; the reader, inside the section in which it reached the
/// object, waits until the handler has run before it uses the object again
/// and leaves, so that every execution has the handler panic while the
/// section holds the grace period up.
///
/// Threads: the reader; the writer (the model's thread), which waits for
/// the reader to be inside, unpublishes the object, calls `synchronize_rcu`
/// and frees it, then runs a second grace period: the handler's panic left
/// nothing behind on the writer's thread (had it left the thread marked as
/// running the handler, that call would be refused). Bounded to 6
/// preemptions (~4 s; see `BOUND_PANICKING_HANDLER`). The flavor is decided
/// beforehand.
///
/// Checked: fails (the handler's panic comes out of `synchronize_rcu`) when
/// `report_stall` calls the handler without `catch_unwind`; fails (a
/// causality violation: the free overlaps the reader's use) when the grace
/// period ends once the handler has panicked; fails (the second
/// `synchronize_rcu` is refused with `InStallHandler`) when the handler's
/// flag is cleared only after a handler that returned.
#[test]
fn panicking_stall_handler_neither_ends_nor_breaks_grace_period() {
    hush_handler_panics();
    check_with(
        loom_tests::bounded(BOUND_PANICKING_HANDLER),
        LoomFault::None,
        || {
            rcu_defer::flavor();
            rcu_defer::set_stall_timeout(Some(Duration::ZERO));
            rcu_defer::set_stall_handler(panicking_stall_handler);
            let obj = Arc::new(Retirable::new());
            let entered = Arc::new(AtomicBool::new(false));
            let reader = {
                let obj = Arc::clone(&obj);
                let entered = Arc::clone(&entered);
                thread::spawn(move || {
                    let guard = read_lock();
                    assert!(
                        obj.read(),
                        "the writer unpublished before the reader entered"
                    );
                    entered.store(true, Ordering::Release);
                    while !STALLED.load(Ordering::Acquire) {
                        thread::yield_now();
                    }
                    obj.check_live();
                    drop(guard);
                })
            };
            while !entered.load(Ordering::Acquire) {
                thread::yield_now();
            }
            obj.unpublish();
            // The handler's panic is hushed (see `hush_handler_panics`):
            // name it if it comes out of `synchronize_rcu`.
            if let Err(payload) = std::panic::catch_unwind(synchronize_rcu) {
                panic!(
                    "synchronize_rcu did not return normally: it panicked with {:?}",
                    panic_text(&*payload)
                );
            }
            obj.free();
            synchronize_rcu();
            loom_tests::join([reader]);
        },
    );
}
