//! loom models of `RcuCell`: a value that a reader obtained inside its read
//! section is not dropped before the section ends, whether the writer waits
//! for the grace period itself (`replace_sync`) or retires the old value
//! through `call_rcu` (`replace`, `update`), and concurrent `update`s do not
//! lose each other's changes.
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use rcu_defer::{read_lock, RcuCell};

/// How many distinct values a model creates (ids `0..VALUES`).
const VALUES: usize = 3;

/// Which values have been dropped, kept outside the values themselves so
/// that a reader can check a value without touching more of its memory than
/// its id.
struct DropLog {
    /// Set by `Tracked::drop`.
    dropped: [AtomicBool; VALUES],
    /// Written by `Tracked::drop`, read by readers: loom reports a
    /// causality violation if a reader's check is not ordered before the
    /// drop (and detects a double drop).
    drop_cell: [UnsafeCell<bool>; VALUES],
    /// A failed check in `Tracked::drop`: when the value is retired with
    /// `call_rcu`, the drop runs in a callback, whose panics the `rcu-call`
    /// worker would swallow. Models rethrow it at the end.
    caught: loom_tests::Caught,
}

// SAFETY: the `UnsafeCell`s are loom's: loom checks every access to them
// for races and fails the model on one, which is the point of this model.
// (`RcuCell<T>` requires `T: Send + Sync`.)
unsafe impl Sync for DropLog {}

impl DropLog {
    fn new() -> Arc<Self> {
        Arc::new(DropLog {
            dropped: std::array::from_fn(|_| AtomicBool::new(false)),
            drop_cell: std::array::from_fn(|_| UnsafeCell::new(false)),
            caught: loom_tests::Caught::new(),
        })
    }

    /// Reader side, inside the read section in which it got the value.
    fn assert_alive(&self, id: usize) {
        assert!(
            id < VALUES,
            "a reader read id {id:#x} from a value in its read section: the value's memory \
             was freed (and reused) under the reader"
        );
        // SAFETY: loom checks this access against `Tracked::drop`'s.
        let dropped = self.drop_cell[id].with(|p| unsafe { *p });
        assert!(
            !dropped && !self.dropped[id].load(Ordering::Relaxed),
            "value {id}, read from the cell inside a read section, was dropped before the \
             section ended"
        );
    }

    fn is_dropped(&self, id: usize) -> bool {
        self.dropped[id].load(Ordering::Relaxed)
    }

    /// Which values have been dropped.
    fn dropped(&self) -> [bool; VALUES] {
        std::array::from_fn(|id| self.is_dropped(id))
    }
}

/// The cell's value: an id, and the log its `Drop` writes to.
///
/// `repr(C)` with the id after the `Arc` keeps the id clear of the words a
/// malloc free list writes into a freed block, so that a run against a
/// broken protocol (a use after free) reports a dropped value rather than a
/// garbage id; either way the model fails.
#[repr(C)]
struct Tracked {
    log: Arc<DropLog>,
    id: usize,
}

impl Tracked {
    fn new(log: &Arc<DropLog>, id: usize) -> Self {
        Tracked {
            log: Arc::clone(log),
            id,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let id = self.id;
        let log = &self.log;
        log.dropped[id].store(true, Ordering::Relaxed);
        log.caught.run(|| {
            // SAFETY: loom checks this access against every reader's.
            log.drop_cell[id].with_mut(|p| {
                assert!(!unsafe { *p }, "value {id} dropped twice");
                unsafe { *p = true };
            });
        });
    }
}

/// A reader thread: one read section in which it reads the cell and checks
/// that the value it got is alive.
fn spawn_reader(cell: &Arc<RcuCell<Tracked>>, log: &Arc<DropLog>) -> thread::JoinHandle<()> {
    let cell = Arc::clone(cell);
    let log = Arc::clone(log);
    thread::spawn(move || {
        let guard = read_lock();
        let id = cell.read(&guard).id;
        log.assert_alive(id);
        drop(guard);
    })
}

/// Property: `RcuCell::replace_sync` with one concurrent reader never drops
/// (nor lets the caller drop) a value while a reader that read it from the
/// cell is still inside its read section; it returns the old value, and the
/// writer drops that value right away.
///
/// Bounded to 7 preemptions (11 s): exhaustive took 109 s once compiler
/// fences stopped counting as fences under loom. The flavor is decided
/// concurrently by the reader and the writer's grace period.
#[test]
fn replace_sync_never_drops_value_under_reader() {
    loom_tests::bounded(7).check(|| {
        let log = DropLog::new();
        let cell = Arc::new(RcuCell::new(Tracked::new(&log, 0)));
        let reader = spawn_reader(&cell, &log);
        let old = cell.replace_sync(Tracked::new(&log, 1));
        assert_eq!(old.id, 0, "replace_sync returned the wrong value");
        drop(old);
        assert!(log.is_dropped(0));
        loom_tests::join([reader]);
        log.caught.rethrow();
        assert!(!log.is_dropped(1), "the cell's current value was dropped");
    });
}

/// Property: `RcuCell::replace` (which retires the old value with
/// `call_rcu`) never drops a value while a reader that read it is inside its
/// read section, and the old value is dropped once the `rcu-call` thread has
/// run its callbacks.
///
/// Four threads (writer, reader, the `rcu-call` worker, which the model
/// stops with `loom_stop_call_rcu_thread`): bounded to 6 preemptions
/// (~9 s; exhaustive does not finish in minutes). The flavor is decided
/// before the threads start.
#[test]
fn replace_retires_old_value_after_reader() {
    loom_tests::bounded(6).check(|| {
        rcu_defer::flavor();
        let log = DropLog::new();
        let cell = Arc::new(RcuCell::new(Tracked::new(&log, 0)));
        let reader = spawn_reader(&cell, &log);
        cell.replace(Tracked::new(&log, 1));
        // Runs the queued callback (after its grace period), then stops
        // and joins the worker.
        rcu_defer::loom_stop_call_rcu_thread();
        log.caught.rethrow();
        assert!(
            log.is_dropped(0),
            "the rcu-call thread stopped without dropping the replaced value"
        );
        loom_tests::join([reader]);
        assert!(!log.is_dropped(1), "the cell's current value was dropped");
    });
}

/// Property: two concurrent `RcuCell::update`s, each adding one to the
/// value's id, with one concurrent reader: no update is lost (no two
/// updates compute their values from the same value, and the cell ends up
/// holding the value with id 2, built from 1, built from 0), each
/// updater's closure gets a live value, and no value is dropped while a
/// reader that read it is inside its read section, nor while it is the
/// cell's current value. Both old values are dropped once the `rcu-call`
/// thread has run its callbacks.
///
/// Four threads (two updaters, the reader, the `rcu-call` worker, which the
/// model stops with `loom_stop_call_rcu_thread`): bounded to 3 preemptions
/// (see the comment at the bound). The flavor is decided before the
/// threads start.
#[test]
fn concurrent_updates_are_not_lost_and_not_dropped_under_reader() {
    // Four threads, two writer-lock handoffs, two call_rcu callbacks and
    // their grace periods: 3 takes ~20 s on 2 cores and 2 (~2 s) already
    // catches a grace period that does not wait for the reader
    // (`SkipReaderWait`); exhaustive does not finish in minutes.
    loom_tests::bounded(3).check(|| {
        rcu_defer::flavor();
        let log = DropLog::new();
        let cell = Arc::new(RcuCell::new(Tracked::new(&log, 0)));
        // Which values an update has computed its value from. Checked in
        // the closure, so that a lost update fails the model there: left to
        // go on, both updates would retire the same value, a double free.
        let updated_from: Arc<[AtomicBool; VALUES]> =
            Arc::new(std::array::from_fn(|_| AtomicBool::new(false)));
        let increment = {
            let log = Arc::clone(&log);
            move |value: &Tracked| {
                log.assert_alive(value.id);
                assert!(
                    !updated_from[value.id].swap(true, Ordering::Relaxed),
                    "two updates computed their values from the same value (id {}): one of \
                     them is lost",
                    value.id
                );
                Tracked::new(&log, value.id + 1)
            }
        };
        let reader = spawn_reader(&cell, &log);
        let updater = {
            let cell = Arc::clone(&cell);
            let increment = increment.clone();
            thread::spawn(move || cell.update(increment))
        };
        cell.update(increment);
        loom_tests::join([reader, updater]);
        // Runs the queued callbacks (each after its grace period), then
        // stops and joins the worker.
        rcu_defer::loom_stop_call_rcu_thread();
        log.caught.rethrow();
        assert_eq!(
            log.dropped(),
            [true, true, false],
            "after both updates only the value with id 2 is left (dropped: [id 0, id 1, id 2])"
        );
        let cell = Arc::try_unwrap(cell)
            .ok()
            .expect("the model's threads have dropped their references");
        drop(cell);
        log.caught.rethrow();
        assert!(
            log.is_dropped(2),
            "the cell's last value was not the one with id 2: an update was lost"
        );
    });
}

/// Property: `RcuCell::compare_exchange` racing an `update`, each adding
/// one to the value's id: neither is lost (the exchange that finds another
/// value reads again and retries, and the cell ends up with id 2), the
/// exchanger's value stays alive for its whole read section, the exchanged
/// one included (retired through `call_rcu`, it waits for that section),
/// and no value is dropped twice or while it is current. Both old values
/// are dropped once the `rcu-call` thread has run its callbacks.
///
/// Three threads (the updater, the exchanger, the `rcu-call` worker, which
/// the model stops with `loom_stop_call_rcu_thread`): bounded to 3
/// preemptions, as the concurrent-updates model. The flavor is decided
/// before the threads start.
#[test]
fn compare_exchange_racing_an_update_loses_neither_and_frees_nothing_early() {
    loom_tests::bounded(3).check(|| {
        rcu_defer::flavor();
        let log = DropLog::new();
        let cell = Arc::new(RcuCell::new(Tracked::new(&log, 0)));
        let exchanger = {
            let cell = Arc::clone(&cell);
            let log = Arc::clone(&log);
            thread::spawn(move || {
                let guard = read_lock();
                let mut seen = cell.read(&guard);
                let mut next = Tracked::new(&log, seen.id + 1);
                loop {
                    log.assert_alive(seen.id);
                    match cell.compare_exchange(seen, next) {
                        Ok(()) => break,
                        Err(back) => {
                            // Reused rather than dropped: a dropped value
                            // with the next id would mark that id dropped.
                            next = back;
                            seen = cell.read(&guard);
                            next.id = seen.id + 1;
                        }
                    }
                }
                // The exchanged value is retired, but not before this
                // section ends.
                log.assert_alive(seen.id);
                drop(guard);
            })
        };
        cell.update(|value| {
            log.assert_alive(value.id);
            Tracked::new(&log, value.id + 1)
        });
        loom_tests::join([exchanger]);
        rcu_defer::loom_stop_call_rcu_thread();
        log.caught.rethrow();
        assert_eq!(
            log.dropped(),
            [true, true, false],
            "after both writes only the value with id 2 is left (dropped: [id 0, id 1, id 2])"
        );
        let cell = Arc::try_unwrap(cell)
            .ok()
            .expect("the model's threads have dropped their references");
        let last = cell.into_inner();
        assert_eq!(last.id, 2, "a write was lost");
        drop(last);
        log.caught.rethrow();
    });
}
