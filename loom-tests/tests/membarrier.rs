//! loom models of the membarrier flavor's grace periods, which issue the
//! expedited barrier only while some thread is an ordinary reader (see
//! `flavor::writer_fence`): a program whose readers are all online waits
//! for grace periods with plain fences, as liburcu's urcu-qsbr does.
//!
//! loom has no `membarrier(2)`: rcu-defer emulates it under loom when a
//! model selects the flavor (`set_flavor(Flavor::Membarrier)`; see
//! `flavor::emulated`). The readers' compiler fences order nothing unless a
//! barrier came, so a grace period that skips the barrier while a thread
//! can be inside an ordinary section lets that section's use overlap the
//! free, and loom reports it (`loom_tests::Retirable`).
//!
//! The emulation's switch and the fault switch are process-wide statics,
//! and the harness runs a file's tests on parallel threads: every model
//! here selects the membarrier flavor, the models are serialized by
//! `SERIAL`, and each sets its fault at the start of every execution. Run
//! alone with `--exact` after a failure (see `loom_tests`).
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::Retirable;
use rcu_defer::{loom_inject_fault, online, read_lock, set_flavor, synchronize_rcu};
use rcu_defer::{Flavor, LoomFault};
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

/// Runs `body` with at most `preemptions` preemptions, in the membarrier
/// flavor, with `fault` on in every execution.
fn check_with(preemptions: usize, fault: LoomFault, body: fn()) {
    // A model that failed poisons the lock; the data it guards is `()`.
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let _off = FaultOff;
    loom_tests::bounded(preemptions).check(move || {
        loom_inject_fault(fault);
        set_flavor(Flavor::Membarrier).expect("the membarrier flavor under loom");
        body();
    });
}

/// An ordinary reader (its first section registers it) and a writer that
/// unpublishes, waits and frees: `loom_tests::reader_and_retiring_writer`.
fn ordinary_reader() {
    loom_tests::reader_and_retiring_writer();
}

/// An online reader that leaves the online state while the writer's grace
/// period runs, and reads in ordinary sections from then on: first inside
/// `Online::offline`, then after dropping its handle. The grace period may
/// begin while the thread is online (no ordinary reader: it skips the
/// barrier) and scan it after it has left.
fn online_reader_that_goes_offline() {
    let obj = Arc::new(Retirable::new());
    let reader = {
        let obj = Arc::clone(&obj);
        thread::spawn(move || {
            let online = online();
            online.offline(|| {
                let guard = read_lock();
                obj.read();
                drop(guard);
            });
            drop(online);
            let guard = read_lock();
            obj.read();
            drop(guard);
        })
    };
    obj.unpublish();
    synchronize_rcu();
    obj.free();
    loom_tests::join([reader]);
}

/// As `online_reader_that_goes_offline`, with a writer that never sleeps:
/// one grace-period attempt (`synchronize_rcu_timeout(Duration::ZERO)`),
/// and the free only if it succeeded. No wake-up is involved, so a missed
/// section shows as a use that overlaps the free, not as a lost wake-up.
fn online_reader_that_goes_offline_and_a_writer_that_never_sleeps() {
    let obj = Arc::new(Retirable::new());
    let reader = {
        let obj = Arc::clone(&obj);
        thread::spawn(move || {
            let online = online();
            drop(online);
            let guard = read_lock();
            obj.read();
            drop(guard);
        })
    };
    obj.unpublish();
    match rcu_defer::synchronize_rcu_timeout(std::time::Duration::ZERO) {
        Ok(()) => obj.free(),
        Err(rcu_defer::Error::Timeout(_)) => {}
        Err(e) => panic!("synchronize_rcu_timeout failed: {e}"),
    }
    loom_tests::join([reader]);
}

/// A thread that registers (its first read section) while the writer's
/// grace period runs, then reads in a second section, whose fence is a
/// compiler fence only. With no other reader, the grace period skips the
/// barrier unless it sees the new thread counted.
fn reader_that_registers_during_a_skipping_grace_period() {
    let obj = Arc::new(Retirable::new());
    let reader = {
        let obj = Arc::clone(&obj);
        thread::spawn(move || {
            let guard = read_lock();
            obj.read();
            drop(guard);
            let guard = read_lock();
            obj.read();
            drop(guard);
        })
    };
    obj.unpublish();
    synchronize_rcu();
    obj.free();
    loom_tests::join([reader]);
}

/// An online reader, as `loom_tests::online_reader_and_retiring_writer`
/// (sections, a quiescent state, the handle dropped), in the membarrier
/// flavor: every grace period that finds it online skips the barrier.
fn online_reader() {
    loom_tests::online_reader_and_retiring_writer();
}

/// Property (control of the emulation): an ordinary reader in the
/// membarrier flavor is safe with the barrier, and not without it
/// (`the_barrier_is_what_protects_ordinary_readers`): the emulated
/// barrier is what orders its sections, as `membarrier(2)` is.
///
/// Bounded to 3 preemptions.
#[test]
fn ordinary_reader_is_protected_by_the_barrier() {
    check_with(3, LoomFault::None, ordinary_reader);
}

/// Property: the membarrier flavor's ordinary readers need the barrier:
/// with it never issued, a use overlaps the free. (A model that cannot
/// fail checks nothing: this shows that the emulation gives the readers'
/// compiler fences no ordering of their own.)
#[test]
#[should_panic]
fn the_barrier_is_what_protects_ordinary_readers() {
    check_with(3, LoomFault::SkipExpeditedBarrier, ordinary_reader);
}

/// Property: an online reader's uses never overlap the free although the
/// grace periods that find it online issue no barrier.
///
/// Bounded to 3 preemptions.
#[test]
fn online_reader_needs_no_barrier() {
    check_with(3, LoomFault::None, online_reader);
}

/// Property: a thread that leaves the online state (`Online::offline`, then
/// dropping its handle) while a grace period runs, and then reads in
/// ordinary sections, is never missed: the grace period either sees it
/// counted as an ordinary reader and issues the barrier, or its fence comes
/// before the thread's and the thread's loads see the object unpublished.
/// Mutation-checked by `a_thread_that_goes_offline_uncounted_is_missed`.
///
/// Bounded to 3 preemptions.
#[test]
fn a_thread_that_goes_offline_during_a_skipping_grace_period_is_not_missed() {
    check_with(3, LoomFault::None, online_reader_that_goes_offline);
}

/// Property: as above with the thread not counting itself when it goes
/// offline: the grace period skips the barrier, and the thread's exit
/// misses the wake-up of a writer that sleeps on its section (loom reports
/// a deadlock).
#[test]
#[should_panic]
fn a_thread_that_goes_offline_uncounted_is_missed() {
    check_with(
        3,
        LoomFault::OfflineUncounted,
        online_reader_that_goes_offline,
    );
}

/// Property: with a writer that never sleeps, a thread that leaves the
/// online state is never missed; with the thread not counting itself, its
/// section's use overlaps the free (a causality violation): the count is
/// what keeps the skipped barrier safe, not only what wakes the writer.
#[test]
fn a_thread_that_drops_its_handle_is_not_missed_by_a_writer_that_never_sleeps() {
    check_with(
        3,
        LoomFault::None,
        online_reader_that_goes_offline_and_a_writer_that_never_sleeps,
    );
}

/// The mutation of the model above.
#[test]
#[should_panic(expected = "Causality violation")]
fn a_thread_that_drops_its_handle_uncounted_is_missed_by_a_writer_that_never_sleeps() {
    check_with(
        3,
        LoomFault::OfflineUncounted,
        online_reader_that_goes_offline_and_a_writer_that_never_sleeps,
    );
}

/// Property: a thread that registers while a grace period runs with no
/// ordinary reader (so that it may skip the barrier) is never missed, in
/// its first section (a real fence) nor in its second (a compiler fence).
/// Mutation-checked by `a_thread_that_registers_uncounted_is_missed`.
///
/// Bounded to 3 preemptions.
#[test]
fn a_thread_that_registers_during_a_skipping_grace_period_is_not_missed() {
    check_with(
        3,
        LoomFault::None,
        reader_that_registers_during_a_skipping_grace_period,
    );
}

/// Property: as above with the thread not counting itself when it
/// registers: its second section is missed.
#[test]
#[should_panic]
fn a_thread_that_registers_uncounted_is_missed() {
    check_with(
        3,
        LoomFault::RegisterUncounted,
        reader_that_registers_during_a_skipping_grace_period,
    );
}
