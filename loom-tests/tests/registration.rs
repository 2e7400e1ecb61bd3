//! loom models of reader registration: a thread registers on its first
//! `read_lock` and its thread-local destructor releases its record when it
//! exits, for reuse by the next thread that registers. Both may happen in
//! the middle of a grace period; the grace period must neither hang nor
//! miss a section that began before it.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::Retirable;
use rcu_defer::{read_lock, synchronize_rcu};

/// A thread whose first and only read section uses `obj` if it can still
/// reach it; the thread then exits, releasing its reader record.
fn spawn_short_lived_reader(obj: &Arc<Retirable>) -> thread::JoinHandle<()> {
    let obj = Arc::clone(obj);
    thread::spawn(move || {
        let guard = read_lock(); // registers this thread
        obj.read();
        drop(guard);
        // Returning runs the thread-local destructor that releases the
        // record (under loom, possibly after `join` has returned).
    })
}

/// Property: a thread that registers, runs one section and exits while the
/// writer's grace period is in progress (before it, during its scans or its
/// sleep, or after it) does not make the grace period hang, and the grace
/// period does not miss its section if the section began before it. A
/// second grace period then runs while the thread's exit (the release of
/// its record) is still in progress, and must complete too: loom reports a
/// deadlock if any interleaving leaves the writer waiting for nobody.
///
/// Exhaustive (no preemption bound); the flavor is decided beforehand.
#[test]
fn thread_registers_and_exits_during_grace_period() {
    loom::model(|| {
        rcu_defer::flavor();
        let obj = Arc::new(Retirable::new());
        let reader = spawn_short_lived_reader(&obj);
        obj.unpublish();
        synchronize_rcu();
        obj.free();
        // Under loom, `join` returns before the reader's thread-local
        // destructor has run: this grace period races with the release.
        reader.join().unwrap();
        synchronize_rcu();
        loom_tests::settle(1);
    });
}

/// Property: as above with two short-lived readers, so that the second may
/// register while the first exits, and may take over the record the first
/// one released, in the middle of the grace period. The grace period must
/// wait for whichever of them reached the object, whatever record it holds.
///
/// Bounded to 4 preemptions (three threads: ~11 s; exhaustive does not
/// finish in minutes); the flavor is decided beforehand.
#[test]
fn released_record_reused_during_grace_period() {
    loom_tests::bounded(4).check(|| {
        rcu_defer::flavor();
        let obj = Arc::new(Retirable::new());
        let first = spawn_short_lived_reader(&obj);
        let second = spawn_short_lived_reader(&obj);
        obj.unpublish();
        synchronize_rcu();
        obj.free();
        loom_tests::join([first, second]);
    });
}
