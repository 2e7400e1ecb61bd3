//! Deliberately broken protocols: a model that cannot fail checks nothing.
//!
//! Each model here runs the body of a model from the suite (shared through
//! `loom_tests`) with one of rcu-defer's loom-only faults turned on (see
//! `rcu_defer::LoomFault`), and must fail; the control runs the same bodies
//! through the same code with the fault switch at `LoomFault::None`, and
//! must pass.
//!
//! The fault switch is one process-wide static that outlives loom's
//! executions, and the test harness runs a file's tests on parallel
//! threads: these models are serialized by `SERIAL`, set the fault at the
//! start of every execution, and switch it off when they end, however
//! they end. They live in their own file (their own test binary) so that
//! no other model can run while a fault is on.
#![cfg(loom)]

use rcu_defer::{loom_inject_fault, LoomFault};
use std::sync::{Mutex, PoisonError};

/// Held by each model of this file for the whole of its run.
static SERIAL: Mutex<()> = Mutex::new(());

/// Switches the fault off when dropped, also when the model panics.
struct FaultOff;

impl Drop for FaultOff {
    fn drop(&mut self) {
        loom_inject_fault(LoomFault::None);
    }
}

/// Runs `body` as an exhaustive loom model with `fault` on in every
/// execution.
fn check_with(fault: LoomFault, body: fn()) {
    // A model that failed (as most here do) poisons the lock; the data it
    // guards is `()`.
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let _off = FaultOff;
    loom::model(move || {
        loom_inject_fault(fault);
        body();
    });
}

/// Property (control): with the fault switch explicitly at `None`, the
/// bodies the broken models use pass, so the failures below come from the
/// faults. (The same bodies also run, without this harness, as
/// `synchronize_waits_for_reader` and
/// `synchronize_timeout_ok_means_earlier_readers_are_done` in
/// grace_period.rs.) Exhaustive.
#[test]
fn models_pass_without_a_fault() {
    check_with(LoomFault::None, loom_tests::reader_and_retiring_writer);
    check_with(
        LoomFault::None,
        loom_tests::reader_and_writer_that_frees_only_if_no_reader_blocks,
    );
}

/// Property: a grace period that does not wait for readers
/// (`SkipReaderWait`) is caught by the basic model: the writer frees the
/// object while the reader that reached it still uses it, a use that is not
/// ordered before the free (loom's causality check on the object's
/// memory). Exhaustive; loom finds it within the first executions.
#[test]
#[should_panic(expected = "Causality violation")]
fn grace_period_that_skips_waiting_for_readers_is_caught() {
    check_with(
        LoomFault::SkipReaderWait,
        loom_tests::reader_and_retiring_writer,
    );
}

/// Property: a reader that skips its fence after publishing its section
/// (`DropReaderFence`) is caught: with neither the reader's store of its
/// section and its load of the pointer, nor the writer's unpublishing and
/// its scan, ordered against each other, the reader can load the old
/// pointer while the writer's scan misses its section, and the writer then
/// frees the object under the reader. The body never sleeps, so the other
/// fence that the fault drops (the reader's, on leaving its section) plays
/// no part. Exhaustive.
#[test]
#[should_panic(expected = "Causality violation")]
fn reader_without_entry_fence_is_caught_as_an_early_free() {
    check_with(
        LoomFault::DropReaderFence,
        loom_tests::reader_and_writer_that_frees_only_if_no_reader_blocks,
    );
}

/// Property: the same fault is also caught by the basic model, through the
/// fence the reader skips on leaving its section: the reader's store of
/// "left" and its load of the writer's wake-up request, against the
/// writer's store of that request and its rescan, form the same store→load
/// pattern; without the fence both miss each other, and the writer sleeps
/// with nobody left to wake it, which loom reports as a deadlock (the first
/// failing execution loom finds for this body is this one). Exhaustive.
#[test]
#[should_panic(expected = "deadlock")]
fn reader_without_exit_fence_is_caught_as_a_lost_wake_up() {
    check_with(
        LoomFault::DropReaderFence,
        loom_tests::reader_and_retiring_writer,
    );
}

/// Property: a writer that ignores online records
/// (`LoomFault::WriterIgnoresOnline`) is caught by the online-reader model
/// (tests/online.rs): the writer frees the object while the online thread,
/// which has not reported a quiescent state, still uses it. Bounded to 3
/// preemptions (under a second; the failure needs none).
#[test]
#[should_panic(expected = "Causality violation")]
fn writer_that_ignores_online_records_is_caught() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let _off = FaultOff;
    loom_tests::bounded(3).check(|| {
        loom_inject_fault(LoomFault::WriterIgnoresOnline);
        loom_tests::online_reader_and_retiring_writer();
    });
}

/// Property (control): the same model passes with the fault switch at
/// `None`.
#[test]
fn online_model_passes_without_a_fault() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let _off = FaultOff;
    loom_tests::bounded(3).check(|| {
        loom_inject_fault(LoomFault::None);
        loom_tests::online_reader_and_retiring_writer();
    });
}
