//! loom models of online (quiescent-state-based) readers and of polled
//! grace-period cookies.
//!
//! Same shape as tests/grace_period.rs: a reader uses the object while it
//! can reach it through the published pointer; a writer unpublishes it,
//! waits, and frees it (`loom_tests::Retirable`), so an early free shows as
//! a failed assertion or a causality violation, and a writer left asleep
//! with nobody to wake it as a deadlock.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::Retirable;
use rcu_defer::{online, read_lock, synchronize_rcu};

/// Property: a value retired after a grace period is never freed while an
/// online thread could still use it (its section before its quiescent
/// state), and the online thread never reaches it after the quiescent state
/// that let the grace period end (its second section). One online reader,
/// one writer (`loom_tests::online_reader_and_retiring_writer`).
///
/// Bounded to 4 preemptions (15 s on the 2-core machine; 5 took 27 s, 3
/// takes 0.4 s). Mutation-checked: with the writer ignoring online records
/// (`LoomFault::WriterIgnoresOnline`) it fails with a causality violation,
/// kept as `writer_that_ignores_online_records_is_caught` in
/// tests/broken.rs. Making the quiescent state's load of the counter
/// Relaxed is *not* caught, and cannot be here: loom runs the fence flavor,
/// whose wake-up fence after the quiescent store also orders that load
/// before the second section; the Acquire is for the membarrier flavor,
/// which has no such fence and which loom cannot model.
#[test]
fn online_reader_never_uses_a_value_freed_after_its_quiescent_state() {
    loom_tests::bounded(4).check(loom_tests::online_reader_and_retiring_writer);
}

/// Property: going offline and online again keeps the guarantee: the
/// online thread reads in a section, goes offline and reads in an ordinary
/// section there (which the grace period waits for as any other), comes
/// back online and reads again, then reports a quiescent state. None of
/// these uses may overlap the writer's free, and the writer must never be
/// left asleep (the offline transition wakes it).
///
/// Bounded to 3 preemptions (4 s on the 2-core machine; 5 took 300 s).
#[test]
fn offline_and_online_transitions_never_let_a_use_overlap_the_free() {
    loom_tests::bounded(3).check(|| {
        rcu_defer::flavor();
        let obj = Arc::new(Retirable::new());
        let reader = {
            let obj = Arc::clone(&obj);
            thread::spawn(move || {
                let online = online();
                let guard = read_lock();
                obj.read();
                drop(guard);
                online.offline(|| {
                    let guard = read_lock();
                    obj.read();
                    drop(guard);
                });
                let guard = read_lock();
                obj.read();
                drop(guard);
                online.quiescent();
                drop(online);
            })
        };
        obj.unpublish();
        synchronize_rcu();
        obj.free();
        loom_tests::join([reader]);
    });
}

/// Property: a read section that the thread opened while offline and that
/// is still open when `Online::offline` returns (its guard returned out of
/// the closure) keeps its protection: the thread comes back online no
/// newer than the section, and what it reached in the section stays
/// protected after the section ends, until its next quiescent state.
///
/// Bounded to 3 preemptions (3 s on the 2-core machine). Mutation-checked:
/// it fails when coming back online publishes the current grace-period
/// value over the open section (the guard's drop then underflows the depth,
/// and `quiescent` panics), and with a causality violation when a quiescent
/// state stores `ctr` with Relaxed instead of Release (a scan that reads
/// the stale offline 0 in the online state judges the thread by `ctr`).
#[test]
fn a_section_returned_from_offline_keeps_its_protection_until_a_quiescent_state_after_it() {
    loom_tests::bounded(3).check(|| {
        rcu_defer::flavor();
        let obj = Arc::new(Retirable::new());
        let reader = {
            let obj = Arc::clone(&obj);
            thread::spawn(move || {
                let online = online();
                let (guard, reached) = online.offline(|| {
                    let guard = read_lock();
                    let reached = obj.read();
                    (guard, reached)
                });
                if reached {
                    obj.check_live();
                }
                drop(guard);
                if reached {
                    obj.check_live();
                }
                online.quiescent();
                drop(online);
            })
        };
        obj.unpublish();
        synchronize_rcu();
        obj.free();
        loom_tests::join([reader]);
    });
}

/// Property: a cookie taken after the object was unpublished is complete
/// only once every read section that could reach the object has ended: the
/// writer frees the object as soon as it polls the cookie complete, while a
/// second writer's `synchronize_rcu` (begun after the cookie) completes it.
/// After that writer has returned, the cookie must poll complete.
///
/// Bounded to 4 preemptions (three threads; 2.3 s on the 2-core machine,
/// 5 took 7 s). Mutation-checked by hand: numbering a cookie with the
/// attempt that may already be running (`next_attempt` without its `+ 1`)
/// fails at once with a causality violation.
#[test]
fn a_cookie_polled_complete_means_earlier_readers_are_done() {
    loom_tests::bounded(4).check(|| {
        rcu_defer::flavor();
        let obj = Arc::new(Retirable::new());
        let reader = {
            let obj = Arc::clone(&obj);
            thread::spawn(move || {
                let guard = read_lock();
                obj.read();
                drop(guard);
            })
        };
        obj.unpublish();
        let cookie = rcu_defer::get_state_synchronize_rcu();
        let other = thread::spawn(synchronize_rcu);
        if rcu_defer::poll_state_synchronize_rcu(cookie) {
            obj.free();
        }
        loom_tests::join([reader, other]);
        assert!(
            rcu_defer::poll_state_synchronize_rcu(cookie),
            "a grace period that began after the cookie has completed, yet it polls incomplete"
        );
        if !obj.is_freed() {
            obj.free();
        }
    });
}
