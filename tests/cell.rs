//! `RcuCell`: publication, retirement after a grace period, serialized
//! writers.

mod common;

use common::{recv, within};
use rcu_defer::{drain_call_rcu, read_lock, RcuCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// A value that records its own drop, and how many times it was dropped.
struct Tracked {
    value: u64,
    dropped: Arc<AtomicUsize>,
}

impl Tracked {
    fn new(value: u64) -> (Self, Arc<AtomicUsize>) {
        let dropped = Arc::new(AtomicUsize::new(0));
        let tracked = Tracked {
            value,
            dropped: Arc::clone(&dropped),
        };
        (tracked, dropped)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// A thread that reads `cell` (holding a `Tracked` of value 1) in a section
/// and stays in it until told to leave; it returns whether the value was
/// still alive (not dropped, still 1) when it left. Returns once the thread
/// is inside its section.
fn reader_holding_value_1(
    cell: &Arc<RcuCell<Tracked>>,
) -> (thread::JoinHandle<bool>, mpsc::Sender<()>) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (leave_tx, leave_rx) = mpsc::channel::<()>();
    let cell = Arc::clone(cell);
    let reader = thread::spawn(move || {
        let guard = read_lock();
        let seen = cell.read(&guard);
        entered_tx.send(()).unwrap();
        leave_rx.recv().unwrap();
        let alive = seen.dropped.load(Ordering::SeqCst) == 0 && seen.value == 1;
        drop(guard);
        alive
    });
    recv(&entered_rx, "the reader to read");
    (reader, leave_tx)
}

/// A thread that reads `cell` (holding "old") in a section it leaves after
/// 200 ms, setting the returned flag just before it does. Returns once the
/// thread has read "old" inside its section.
fn reader_in_a_200ms_section(
    cell: &Arc<RcuCell<String>>,
) -> (thread::JoinHandle<()>, Arc<AtomicBool>) {
    let left = Arc::new(AtomicBool::new(false));
    let (entered_tx, entered_rx) = mpsc::channel();
    let cell = Arc::clone(cell);
    let reader = {
        let left = Arc::clone(&left);
        thread::spawn(move || {
            let guard = read_lock();
            entered_tx.send(cell.read(&guard).clone()).unwrap();
            thread::sleep(Duration::from_millis(200));
            left.store(true, Ordering::SeqCst);
            drop(guard);
        })
    };
    assert_eq!(recv(&entered_rx, "the reader to read"), "old");
    (reader, left)
}

#[test]
fn read_sees_the_initial_value() {
    let cell = RcuCell::new(String::from("initial"));
    let guard = read_lock();
    assert_eq!(cell.read(&guard), "initial");
}

#[test]
fn read_sees_the_latest_value_after_replace() {
    within("read after replace", || {
        let cell = Arc::new(RcuCell::new(0u64));
        for i in 1..=100 {
            cell.replace(i);
            let guard = read_lock();
            assert_eq!(*cell.read(&guard), i);
        }
        // And on another thread, in a section that starts afterwards.
        let other = {
            let cell = Arc::clone(&cell);
            thread::spawn(move || *cell.read(&read_lock()))
        };
        assert_eq!(other.join().unwrap(), 100);
        drain_call_rcu();
    });
}

#[test]
fn a_reference_read_before_replace_keeps_showing_the_old_value() {
    within("old reference", || {
        let cell = RcuCell::new(String::from("old"));
        let guard = read_lock();
        let old = cell.read(&guard);
        // Another thread replaces the value while this section holds `old`
        // (replace never waits for readers, so this cannot deadlock).
        thread::scope(|s| {
            s.spawn(|| cell.replace(String::from("new")));
        });
        assert_eq!(old, "old");
        assert_eq!(cell.read(&guard), "new");
        drop(guard);
        drain_call_rcu();
    });
}

#[test]
fn replace_drops_the_old_value_only_after_a_grace_period() {
    within("replace retires after grace period", || {
        let (old, old_dropped) = Tracked::new(1);
        let cell = Arc::new(RcuCell::new(old));
        let (entered_tx, entered_rx) = mpsc::channel();
        let (check_tx, check_rx) = mpsc::channel::<()>();
        let (leave_tx, leave_rx) = mpsc::channel::<()>();
        let (checked_tx, checked_rx) = mpsc::channel();
        let reader = {
            let cell = Arc::clone(&cell);
            thread::spawn(move || {
                let guard = read_lock();
                let seen = cell.read(&guard);
                entered_tx.send(seen.value).unwrap();
                check_rx.recv().unwrap();
                // The value this section read is still there.
                checked_tx
                    .send((seen.value, seen.dropped.load(Ordering::SeqCst)))
                    .unwrap();
                leave_rx.recv().unwrap();
                drop(guard);
            })
        };
        assert_eq!(recv(&entered_rx, "the reader to read"), 1);
        let (new, new_dropped) = Tracked::new(2);
        cell.replace(new);
        // Give the callback thread every chance to drop it too early.
        thread::sleep(Duration::from_millis(200));
        check_tx.send(()).unwrap();
        assert_eq!(recv(&checked_rx, "the reader's check"), (1, 0));
        assert_eq!(
            old_dropped.load(Ordering::SeqCst),
            0,
            "the old value was dropped while a reader that read it was in its section"
        );
        leave_tx.send(()).unwrap();
        reader.join().unwrap();
        drain_call_rcu();
        assert_eq!(
            old_dropped.load(Ordering::SeqCst),
            1,
            "the old value was never dropped"
        );
        assert_eq!(
            new_dropped.load(Ordering::SeqCst),
            0,
            "the current value was dropped"
        );
    });
}

#[test]
fn every_replaced_value_is_dropped_exactly_once_and_the_current_one_not_at_all() {
    within("drops counted", || {
        let (first, first_dropped) = Tracked::new(0);
        let cell = RcuCell::new(first);
        let mut counters = vec![first_dropped];
        for i in 1..=500 {
            let (value, dropped) = Tracked::new(i);
            counters.push(dropped);
            match i % 3 {
                0 => cell.replace(value),
                1 => drop(cell.replace_sync(value)),
                _ => cell.update(move |_| value),
            }
        }
        drain_call_rcu();
        let (current, retired) = counters.split_last().unwrap();
        for (i, dropped) in retired.iter().enumerate() {
            assert_eq!(dropped.load(Ordering::SeqCst), 1, "value {i}");
        }
        assert_eq!(current.load(Ordering::SeqCst), 0);
        drop(cell);
        assert_eq!(current.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn replace_sync_returns_the_old_value_after_readers_that_started_before_have_left() {
    within("replace_sync", || {
        let cell = Arc::new(RcuCell::new(String::from("old")));
        let (reader, left) = reader_in_a_200ms_section(&cell);
        let old = cell.replace_sync(String::from("new"));
        assert_eq!(old, "old");
        assert!(
            left.load(Ordering::Relaxed),
            "replace_sync returned while a reader that could see the old value was in its section"
        );
        assert_eq!(cell.read(&read_lock()), "new");
        reader.join().unwrap();
    });
}

#[test]
fn replace_sync_hands_back_the_value_without_dropping_it() {
    within("replace_sync ownership", || {
        let (old, old_dropped) = Tracked::new(7);
        let (new, _new_dropped) = Tracked::new(8);
        let cell = RcuCell::new(old);
        let back = cell.replace_sync(new);
        drain_call_rcu();
        assert_eq!(back.value, 7);
        assert_eq!(old_dropped.load(Ordering::SeqCst), 0);
        drop(back);
        assert_eq!(old_dropped.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn update_passes_the_current_value_and_publishes_the_result() {
    within("update", || {
        let cell = RcuCell::new(vec![1, 2, 3]);
        cell.update(|v| {
            let mut next = v.clone();
            next.push(4);
            next
        });
        assert_eq!(cell.read(&read_lock()), &[1, 2, 3, 4]);
        drain_call_rcu();
    });
}

#[test]
fn update_drops_the_old_value_only_after_a_grace_period() {
    within("update retires after grace period", || {
        let (old, old_dropped) = Tracked::new(1);
        let cell = Arc::new(RcuCell::new(old));
        let left = Arc::new(AtomicBool::new(false));
        let (entered_tx, entered_rx) = mpsc::channel();
        let reader = {
            let cell = Arc::clone(&cell);
            let left = Arc::clone(&left);
            thread::spawn(move || {
                let guard = read_lock();
                let seen = cell.read(&guard);
                entered_tx.send(()).unwrap();
                thread::sleep(Duration::from_millis(200));
                let still_alive = seen.dropped.load(Ordering::SeqCst) == 0 && seen.value == 1;
                left.store(true, Ordering::SeqCst);
                drop(guard);
                still_alive
            })
        };
        recv(&entered_rx, "the reader to read");
        cell.update(|old| Tracked::new(old.value + 1).0);
        assert!(
            reader.join().unwrap(),
            "the value read in a section was dropped before the section ended"
        );
        drain_call_rcu();
        assert!(left.load(Ordering::SeqCst));
        assert_eq!(old_dropped.load(Ordering::SeqCst), 1);
        assert_eq!(cell.read(&read_lock()).value, 2);
    });
}

#[test]
fn concurrent_updates_are_serialized_and_none_is_lost() {
    within("serialized updaters", || {
        let cell = Arc::new(RcuCell::new(0u64));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let cell = Arc::clone(&cell);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    let guard = read_lock();
                    let now = *cell.read(&guard);
                    assert!(
                        now >= last,
                        "a reader saw the value go back from {last} to {now}"
                    );
                    last = now;
                }
            })
        };
        // Miri interprets every step: fewer updates there.
        let each: u64 = if cfg!(miri) { 200 } else { 10_000 };
        let updaters: Vec<_> = (0..2)
            .map(|_| {
                let cell = Arc::clone(&cell);
                thread::spawn(move || {
                    for _ in 0..each {
                        cell.update(|v| v + 1);
                    }
                })
            })
            .collect();
        for u in updaters {
            u.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        assert_eq!(*cell.read(&read_lock()), 2 * each);
        drain_call_rcu();
    });
}

#[test]
fn concurrent_replace_sync_calls_each_get_back_a_distinct_old_value() {
    // Every value published is handed back exactly once (by the replace_sync
    // that unpublished it) or is still current: none lost, none duplicated.
    within("concurrent replace_sync", || {
        const THREADS: u64 = 3;
        const EACH: u64 = 300;
        let cell = Arc::new(RcuCell::new(0u64));
        let writers: Vec<_> = (0..THREADS)
            .map(|t| {
                let cell = Arc::clone(&cell);
                thread::spawn(move || {
                    (1..=EACH)
                        .map(|i| cell.replace_sync(t * EACH + i))
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut seen: Vec<u64> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        seen.push(*cell.read(&read_lock()));
        seen.sort_unstable();
        assert!(
            seen.iter().copied().eq(0..=THREADS * EACH),
            "old values lost or handed back twice"
        );
    });
}

#[test]
fn a_panicking_update_closure_changes_nothing() {
    within("panicking update", || {
        let (value, dropped) = Tracked::new(41);
        let cell = RcuCell::new(value);
        let result = catch_unwind(AssertUnwindSafe(|| {
            cell.update(|_| panic!("deliberate panic in an update closure"));
        }));
        assert!(result.is_err());
        drain_call_rcu();
        assert_eq!(cell.read(&read_lock()).value, 41);
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            0,
            "the current value was dropped"
        );
        // The writer lock is usable again.
        cell.update(|v| Tracked::new(v.value + 1).0);
        assert_eq!(cell.read(&read_lock()).value, 42);
        drain_call_rcu();
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn dropping_the_cell_drops_the_current_value() {
    let (value, dropped) = Tracked::new(5);
    let cell = RcuCell::new(value);
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    drop(cell);
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
}

#[test]
fn default_and_from_build_a_cell_holding_the_value() {
    let cell: RcuCell<Vec<u8>> = RcuCell::default();
    assert!(cell.read(&read_lock()).is_empty());
    let cell = RcuCell::from(String::from("from"));
    assert_eq!(cell.read(&read_lock()), "from");
    assert!(format!("{cell:?}").contains("from"));
}

#[test]
fn into_inner_returns_the_current_value_and_leaves_replaced_ones_to_their_grace_periods() {
    within("into_inner", || {
        let (first, first_dropped) = Tracked::new(1);
        let (second, second_dropped) = Tracked::new(2);
        let cell = RcuCell::new(first);
        cell.replace(second);
        let inner = cell.into_inner();
        assert_eq!(inner.value, 2);
        assert_eq!(
            second_dropped.load(Ordering::SeqCst),
            0,
            "into_inner dropped its value"
        );
        drain_call_rcu();
        assert_eq!(
            first_dropped.load(Ordering::SeqCst),
            1,
            "the replaced value"
        );
        drop(inner);
        assert_eq!(
            second_dropped.load(Ordering::SeqCst),
            1,
            "dropped once, by its owner"
        );
    });
}

#[test]
fn get_mut_changes_the_current_value_in_place_and_retires_nothing() {
    within("get_mut", || {
        let (value, dropped) = Tracked::new(1);
        let mut cell = RcuCell::new(value);
        cell.get_mut().value = 2;
        assert_eq!(cell.read(&read_lock()).value, 2);
        drain_call_rcu();
        assert_eq!(dropped.load(Ordering::SeqCst), 0);
        drop(cell);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn try_update_that_fails_returns_the_error_and_changes_and_retires_nothing() {
    within("try_update declines", || {
        let (value, dropped) = Tracked::new(1);
        let cell = RcuCell::new(value);
        let result = cell.try_update(|old| Err::<Tracked, _>(format!("refused {}", old.value)));
        assert_eq!(result.unwrap_err(), "refused 1");
        drain_call_rcu();
        assert_eq!(cell.read(&read_lock()).value, 1);
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            0,
            "a declined update retired the value"
        );
        // The writer lock was released: the next write goes through.
        cell.try_update(|old| Ok::<_, String>(Tracked::new(old.value + 1).0))
            .unwrap();
        assert_eq!(cell.read(&read_lock()).value, 2);
        drain_call_rcu();
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "the updated value is retired once"
        );
    });
}

#[test]
fn try_update_from_inside_its_own_closure_panics_instead_of_hanging() {
    within("try_update re-entrant", || {
        let cell = RcuCell::new(1u32);
        let result = catch_unwind(AssertUnwindSafe(|| {
            cell.try_update(|v| {
                cell.try_update(|w| Ok::<_, ()>(w + 1)).unwrap();
                Ok::<_, ()>(v + 1)
            })
        }));
        let message = common::panic_text(&*result.unwrap_err());
        assert!(
            message.contains("RcuCell::try_update from inside"),
            "{message}"
        );
        assert_eq!(*cell.read(&read_lock()), 1);
    });
}

#[test]
fn compare_exchange_publishes_only_against_the_value_it_was_given() {
    within("compare_exchange", || {
        let (first, first_dropped) = Tracked::new(1);
        let cell = RcuCell::new(first);
        let guard = read_lock();
        let seen = cell.read(&guard);
        let (second, second_dropped) = Tracked::new(2);
        assert!(cell.compare_exchange(seen, second).is_ok());
        assert_eq!(cell.read(&guard).value, 2);

        // `seen` is stale now: the exchange fails and hands `new` back.
        let (third, third_dropped) = Tracked::new(3);
        let back = cell.compare_exchange(seen, third).unwrap_err();
        assert_eq!(back.value, 3);
        assert_eq!(
            third_dropped.load(Ordering::SeqCst),
            0,
            "the refused value was dropped"
        );
        drop(back);
        assert_eq!(cell.read(&guard).value, 2);
        // The replaced value is retired after a grace period, which waits for
        // this section.
        assert_eq!(first_dropped.load(Ordering::SeqCst), 0);
        drop(guard);
        drain_call_rcu();
        assert_eq!(first_dropped.load(Ordering::SeqCst), 1);
        assert_eq!(second_dropped.load(Ordering::SeqCst), 0);
    });
}

#[test]
fn a_value_read_in_an_open_section_never_compares_equal_to_a_later_value() {
    // ABA: a later value allocated at the address of the one this section
    // read would make a stale `compare_exchange` succeed. The section keeps
    // that value allocated, so no later one can have its address, however
    // many values are published and retired meanwhile.
    within("no ABA", || {
        let cell = Arc::new(RcuCell::new(0u64));
        let guard = read_lock();
        let seen = cell.read(&guard);
        let writer = {
            let cell = Arc::clone(&cell);
            thread::spawn(move || {
                for i in 1..=1000 {
                    cell.replace(i);
                }
            })
        };
        writer.join().unwrap();
        let current: *const u64 = cell.read(&guard);
        assert!(!std::ptr::eq(current, seen));
        assert_eq!(cell.compare_exchange(seen, 7), Err(7));
        assert_eq!((*seen, *cell.read(&guard)), (0, 1000));
        drop(guard);
        drain_call_rcu();
    });
}

#[test]
fn concurrent_compare_exchange_loops_lose_no_increment() {
    within("compare_exchange loops", || {
        // Miri interprets every step: fewer increments there.
        const EACH: u64 = if cfg!(miri) { 200 } else { 5_000 };
        let cell = Arc::new(RcuCell::new(0u64));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let cell = Arc::clone(&cell);
                thread::spawn(move || {
                    for _ in 0..EACH {
                        let guard = read_lock();
                        let mut seen = cell.read(&guard);
                        while cell.compare_exchange(seen, *seen + 1).is_err() {
                            seen = cell.read(&guard);
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(*cell.read(&read_lock()), 2 * EACH);
        drain_call_rcu();
    });
}

#[test]
fn replace_retired_publishes_at_once_and_wait_returns_the_old_value_after_readers_left() {
    within("replace_retired", || {
        let cell = Arc::new(RcuCell::new(String::from("old")));
        let (reader, left) = reader_in_a_200ms_section(&cell);
        let retired = cell.replace_retired(String::from("new"));
        assert_eq!(cell.read(&read_lock()), "new", "published before any wait");
        assert!(
            !left.load(Ordering::SeqCst),
            "replace_retired waited for the reader"
        );
        assert_eq!(retired.wait(), "old");
        assert!(
            left.load(Ordering::SeqCst),
            "wait returned while a reader that could see the old value was in its section"
        );
        reader.join().unwrap();
    });
}

#[test]
fn a_dropped_retired_value_is_dropped_after_the_readers_that_saw_it_have_left() {
    within("dropped Retired", || {
        let (old, old_dropped) = Tracked::new(1);
        let cell = Arc::new(RcuCell::new(old));
        let (reader, leave_tx) = reader_holding_value_1(&cell);
        drop(cell.replace_retired(Tracked::new(2).0));
        // Give the callback thread every chance to drop it too early.
        thread::sleep(Duration::from_millis(200));
        assert_eq!(old_dropped.load(Ordering::SeqCst), 0);
        leave_tx.send(()).unwrap();
        assert!(
            reader.join().unwrap(),
            "the value was dropped under its reader"
        );
        drain_call_rcu();
        assert_eq!(old_dropped.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn retired_wait_inside_a_read_section_panics_and_the_value_is_retired_not_dropped() {
    within("Retired::wait in a section", || {
        let (old, old_dropped) = Tracked::new(1);
        let cell = RcuCell::new(old);
        let entered_at = format!("{}:{}", file!(), line!() + 1);
        let guard = read_lock();
        let seen = cell.read(&guard);
        let retired = cell.replace_retired(Tracked::new(2).0);
        let result = catch_unwind(AssertUnwindSafe(|| drop(retired.wait())));
        let message = common::panic_text(&*result.unwrap_err());
        assert!(
            message.contains("Retired::wait was called inside a read section"),
            "{message}"
        );
        assert!(message.contains(&entered_at), "{message}");
        // This section still reads the old value: the panic did not drop it.
        assert_eq!((seen.value, old_dropped.load(Ordering::SeqCst)), (1, 0));
        drop(guard);
        drain_call_rcu();
        assert_eq!(
            old_dropped.load(Ordering::SeqCst),
            1,
            "retired through call_rcu"
        );
    });
}

#[test]
fn a_retired_value_can_be_waited_for_on_another_thread() {
    within("Retired sent", || {
        let cell = RcuCell::new(vec![1, 2, 3]);
        let retired = cell.replace_retired(vec![4]);
        let old = thread::spawn(move || retired.wait()).join().unwrap();
        assert_eq!(old, [1, 2, 3]);
    });
}

#[test]
fn load_full_returns_an_arc_that_outlives_its_section_and_the_value_s_replacement() {
    within("load_full", || {
        let cell = RcuCell::new(Arc::new(String::from("first")));
        let snapshot = cell.load_full();
        assert!(
            !rcu_defer::in_read_section(),
            "load_full left a section open"
        );
        cell.replace(Arc::new(String::from("second")));
        drain_call_rcu(); // the cell's old Arc is gone
        assert_eq!(*snapshot, "first");
        assert_eq!(Arc::strong_count(&snapshot), 1);
        assert_eq!(*cell.load_full(), "second");
    });
}

#[test]
fn get_cloned_returns_a_copy_that_later_writes_do_not_change() {
    within("get_cloned", || {
        let cell = RcuCell::new(vec![1, 2]);
        let copy = cell.get_cloned();
        assert!(
            !rcu_defer::in_read_section(),
            "get_cloned left a section open"
        );
        cell.update(|v| v.iter().map(|x| x * 10).collect());
        assert_eq!(copy, [1, 2]);
        assert_eq!(cell.get_cloned(), [10, 20]);
        drain_call_rcu();
    });
}

#[test]
fn retired_try_wait_declines_while_a_reader_that_saw_the_value_is_in_its_section() {
    within("Retired::try_wait", || {
        let (old, old_dropped) = Tracked::new(1);
        let cell = Arc::new(RcuCell::new(old));
        let (reader, leave_tx) = reader_holding_value_1(&cell);
        let mut retired = cell.replace_retired(Tracked::new(2).0);
        // Other grace periods run meanwhile: none can complete the cookie.
        thread::spawn(|| {
            rcu_defer::synchronize_rcu_timeout(Duration::from_millis(100)).unwrap_err()
        })
        .join()
        .unwrap();
        for _ in 0..3 {
            retired = retired
                .try_wait()
                .map(|v| v.value)
                .expect_err("try_wait gave the value while its reader was in its section");
            assert!(!rcu_defer::poll_state_synchronize_rcu(retired.state()));
        }
        leave_tx.send(()).unwrap();
        assert!(
            reader.join().unwrap(),
            "the value was freed under its reader"
        );
        // Nothing else runs grace periods here: the request the first
        // declined try_wait queued is enough for polling to succeed.
        let value = loop {
            match retired.try_wait() {
                Ok(value) => break value,
                Err(pending) => {
                    retired = pending;
                    thread::sleep(Duration::from_millis(1));
                }
            }
        };
        assert_eq!(value.value, 1);
        assert_eq!(
            old_dropped.load(Ordering::SeqCst),
            0,
            "given back, not dropped"
        );
    });
}

#[test]
fn a_retired_value_declined_by_try_wait_and_then_dropped_is_retired_once() {
    within("Retired::try_wait then drop", || {
        let (old, old_dropped) = Tracked::new(1);
        let cell = RcuCell::new(old);
        let guard = read_lock();
        let seen = cell.read(&guard);
        let retired = cell.replace_retired(Tracked::new(2).0);
        let retired = retired.try_wait().map(|v| v.value).unwrap_err();
        drop(retired);
        assert_eq!((seen.value, old_dropped.load(Ordering::SeqCst)), (1, 0));
        drop(guard);
        drain_call_rcu();
        assert_eq!(old_dropped.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn retired_try_wait_succeeds_once_its_cookie_is_complete() {
    within("Retired::try_wait after its grace period", || {
        let cell = RcuCell::new(1u64);
        let retired = cell.replace_retired(2);
        rcu_defer::cond_synchronize_rcu(retired.state());
        assert_eq!(retired.try_wait().ok(), Some(1));
    });
}
