//! Grace periods: what `synchronize_rcu` and its variants wait for.
//!
//! All tests in this binary share one process and so one RCU state: a test
//! that holds a reader in its section delays the others' grace periods,
//! which is harmless. None of them changes the stall timeout or handler.

mod common;

use common::{recv, within, HANG_LIMIT};
use rcu_defer::{read_lock, synchronize_rcu, synchronize_rcu_timeout, try_synchronize_rcu, Error};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A reader thread that enters a section, reports it, stays `hold`, sets
/// `left` (Relaxed: the grace period itself must order it before the
/// writer's return) and then leaves.
fn reader_holding(hold: Duration, left: &Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let left = Arc::clone(left);
    let (entered_tx, entered_rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let guard = read_lock();
        entered_tx.send(()).unwrap();
        thread::sleep(hold);
        left.store(true, Ordering::Relaxed);
        drop(guard);
    });
    recv(&entered_rx, "the reader to enter its section");
    handle
}

#[test]
fn synchronize_waits_for_a_reader_that_started_before_it() {
    within("synchronize vs one reader", || {
        let left = Arc::new(AtomicBool::new(false));
        let reader = reader_holding(Duration::from_millis(200), &left);
        synchronize_rcu();
        assert!(
            left.load(Ordering::Relaxed),
            "synchronize_rcu returned before a reader that started before it left its section"
        );
        reader.join().unwrap();
    });
}

#[test]
fn synchronize_waits_for_every_reader_that_started_before_it() {
    within("synchronize vs several readers", || {
        let flags: Vec<Arc<AtomicBool>> =
            (0..4).map(|_| Arc::new(AtomicBool::new(false))).collect();
        let readers: Vec<_> = flags
            .iter()
            .enumerate()
            .map(|(i, left)| reader_holding(Duration::from_millis(50 + 75 * i as u64), left))
            .collect();
        synchronize_rcu();
        for (i, left) in flags.iter().enumerate() {
            assert!(
                left.load(Ordering::Relaxed),
                "synchronize_rcu returned while reader {i} was still in its section"
            );
        }
        for reader in readers {
            reader.join().unwrap();
        }
    });
}

#[test]
fn synchronize_waits_until_the_outermost_guard_of_a_nested_section_is_dropped() {
    within("synchronize vs nested section", || {
        let left = Arc::new(AtomicBool::new(false));
        let (entered_tx, entered_rx) = mpsc::channel();
        let reader = {
            let left = Arc::clone(&left);
            thread::spawn(move || {
                let outer = read_lock();
                let inner = read_lock();
                entered_tx.send(()).unwrap();
                thread::sleep(Duration::from_millis(100));
                // Leaving the inner section does not end the outer one.
                drop(inner);
                thread::sleep(Duration::from_millis(150));
                left.store(true, Ordering::Relaxed);
                drop(outer);
            })
        };
        recv(&entered_rx, "the reader to enter");
        synchronize_rcu();
        assert!(
            left.load(Ordering::Relaxed),
            "synchronize_rcu returned when an inner guard was dropped, before the outer one"
        );
        reader.join().unwrap();
    });
}

#[test]
fn a_reader_looping_over_short_sections_never_prevents_synchronize_from_completing() {
    within("synchronize vs busy reader", || {
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    let mut sections = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let _outer = read_lock();
                        let _inner = read_lock();
                        sections += 1;
                    }
                    sections
                })
            })
            .collect();
        for _ in 0..200 {
            synchronize_rcu();
        }
        stop.store(true, Ordering::Relaxed);
        let sections: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        println!("200 grace periods against {sections} reader sections");
    });
}

#[test]
fn concurrent_synchronize_callers_all_return_only_after_the_reader_leaves() {
    const CALLERS: usize = 8;
    within("shared grace periods", || {
        let left = Arc::new(AtomicBool::new(false));
        let (entered_tx, entered_rx) = mpsc::channel();
        let (calling_tx, calling_rx) = mpsc::channel();
        let reader = {
            let left = Arc::clone(&left);
            thread::spawn(move || {
                let guard = read_lock();
                entered_tx.send(()).unwrap();
                // Every caller is about to call synchronize_rcu while this
                // section runs.
                for _ in 0..CALLERS {
                    recv(&calling_rx, "a caller");
                }
                thread::sleep(Duration::from_millis(150));
                left.store(true, Ordering::Relaxed);
                drop(guard);
            })
        };
        recv(&entered_rx, "the reader to enter");
        let returned = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                let calling_tx = calling_tx.clone();
                let left = Arc::clone(&left);
                let returned = Arc::clone(&returned);
                thread::spawn(move || {
                    calling_tx.send(()).unwrap();
                    synchronize_rcu();
                    returned.fetch_add(1, Ordering::Relaxed);
                    left.load(Ordering::Relaxed)
                })
            })
            .collect();
        let saw_left: Vec<bool> = callers.into_iter().map(|c| c.join().unwrap()).collect();
        reader.join().unwrap();
        assert_eq!(returned.load(Ordering::Relaxed), CALLERS);
        assert!(
            saw_left.iter().all(|&l| l),
            "a concurrent caller returned before the reader left: {saw_left:?}"
        );
    });
}

#[test]
fn synchronize_from_many_threads_at_once_always_completes() {
    within("many concurrent synchronizers", || {
        let done = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let done = Arc::clone(&done);
                thread::spawn(move || {
                    for _ in 0..200 {
                        {
                            let _guard = read_lock();
                        }
                        synchronize_rcu();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(done.load(Ordering::Relaxed), 6 * 200);
    });
}

#[test]
fn synchronize_rcu_timeout_gives_up_on_a_stuck_reader_and_names_it() {
    within("timeout", || {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (leave_tx, leave_rx) = mpsc::channel::<()>();
        let left = Arc::new(AtomicBool::new(false));
        let reader = {
            let left = Arc::clone(&left);
            thread::Builder::new()
                .name("stuck-reader".to_owned())
                .spawn(move || {
                    let (outer, line) = (read_lock(), line!());
                    let inner = read_lock();
                    entered_tx.send(line).unwrap();
                    leave_rx.recv().unwrap();
                    left.store(true, Ordering::Relaxed);
                    drop(inner);
                    drop(outer);
                })
                .unwrap()
        };
        let line = recv(&entered_rx, "the reader to enter");
        let limit = Duration::from_millis(300);
        let started = Instant::now();
        let result = synchronize_rcu_timeout(limit);
        let elapsed = started.elapsed();
        let report = match result {
            Err(Error::Timeout(report)) => report,
            other => panic!("expected Error::Timeout with a stuck reader, got {other:?}"),
        };
        assert!(
            elapsed >= limit,
            "gave up after {elapsed:?}, before the limit"
        );
        assert!(report.waited() <= elapsed, "{report}");
        let stuck = report
            .readers()
            .iter()
            .find(|r| r.thread_name() == Some("stuck-reader"))
            .unwrap_or_else(|| panic!("the stuck reader is not named: {report}"));
        assert_eq!(stuck.depth(), 2);
        let at = stuck.entered_at().expect("the entry location is known");
        assert_eq!((at.file(), at.line()), (file!(), line));
        assert!(
            report.to_string().contains("stuck-reader"),
            "the report's text names the thread: {report}"
        );
        assert!(!left.load(Ordering::Relaxed));

        // Giving up left nothing half done: once the reader leaves, grace
        // periods complete again, with or without a limit.
        leave_tx.send(()).unwrap();
        synchronize_rcu();
        assert!(left.load(Ordering::Relaxed));
        synchronize_rcu_timeout(HANG_LIMIT).expect("no reader is stuck any more");
        reader.join().unwrap();
    });
}

#[test]
fn synchronize_rcu_timeout_waits_like_synchronize_when_the_reader_leaves_in_time() {
    within("timeout not reached", || {
        let left = Arc::new(AtomicBool::new(false));
        let reader = reader_holding(Duration::from_millis(150), &left);
        synchronize_rcu_timeout(HANG_LIMIT).expect("the reader leaves well within the limit");
        assert!(
            left.load(Ordering::Relaxed),
            "synchronize_rcu_timeout returned Ok before the reader left"
        );
        reader.join().unwrap();
    });
}

#[test]
fn synchronize_rcu_timeout_succeeds_with_no_reader_in_a_section() {
    within("timeout without readers", || {
        for _ in 0..10 {
            synchronize_rcu_timeout(Duration::from_secs(20)).expect("nothing blocks");
        }
    });
}

#[test]
fn try_synchronize_rcu_outside_a_section_waits_for_readers_like_synchronize() {
    within("try_synchronize", || {
        let left = Arc::new(AtomicBool::new(false));
        let reader = reader_holding(Duration::from_millis(150), &left);
        try_synchronize_rcu().expect("not inside a section");
        assert!(left.load(Ordering::Relaxed));
        reader.join().unwrap();
    });
}

#[test]
fn writes_made_inside_a_section_are_visible_to_the_writer_after_the_grace_period() {
    // The reader's section happens before whatever the writer does after the
    // grace period: Relaxed accesses on both sides, ordered only by RCU.
    within("section ordering", || {
        const ROUNDS: usize = 200;
        let cells: Arc<Vec<AtomicUsize>> =
            Arc::new((0..ROUNDS).map(|_| AtomicUsize::new(0)).collect());
        let (entered_tx, entered_rx) = mpsc::channel();
        let (next_tx, next_rx) = mpsc::channel::<()>();
        let reader = {
            let cells = Arc::clone(&cells);
            thread::spawn(move || {
                for (i, cell) in cells.iter().enumerate() {
                    // Wait outside any section: a grace period may wait for
                    // a section that began after it was requested, so a
                    // section must never wait for the writer.
                    next_rx.recv().unwrap();
                    let guard = read_lock();
                    entered_tx.send(()).unwrap();
                    for _ in 0..(i % 7) * 10 {
                        std::hint::spin_loop();
                    }
                    cell.store(i + 1, Ordering::Relaxed);
                    drop(guard);
                }
            })
        };
        for (i, cell) in cells.iter().enumerate() {
            next_tx.send(()).unwrap();
            recv(&entered_rx, "the reader to enter");
            synchronize_rcu();
            assert_eq!(
                cell.load(Ordering::Relaxed),
                i + 1,
                "the grace period ended before a write made in the section was visible"
            );
        }
        reader.join().unwrap();
    });
}

/// User plus system CPU time of the calling thread, in clock ticks.
#[cfg(target_os = "linux")]
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
    // The command name may contain spaces: fields are counted after its ')'.
    let after = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime) are 12 and 13 after ')'.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Runs only `test` of this binary in a child process and checks that it
/// passed; kills it (by its process id) if it has not finished in time.
#[cfg(target_os = "linux")]
fn run_child(test: &str) {
    let output = common::run_child(test, HANG_LIMIT + HANG_LIMIT);
    print!("{}", String::from_utf8_lossy(&output.stdout));
}

#[cfg(target_os = "linux")]
#[test]
fn a_writer_waiting_for_a_sleeping_reader_sleeps_instead_of_spinning() {
    // In a process of its own, so that this thread is the one that runs the
    // grace period (with other tests around, it could be sleeping while
    // another thread leads, and a spinning leader would go unnoticed).
    const TEST: &str = "a_writer_waiting_for_a_sleeping_reader_sleeps_instead_of_spinning";
    if !common::is_child(TEST) {
        run_child(TEST);
        return;
    }
    within("no busy wait", || {
        let left = Arc::new(AtomicBool::new(false));
        let hold = Duration::from_millis(1000);
        let reader = reader_holding(hold, &left);
        let before = thread_cpu_ticks();
        synchronize_rcu();
        let used = thread_cpu_ticks() - before;
        assert!(left.load(Ordering::Relaxed));
        // A clock tick is 10 ms (USER_HZ is 100 on Linux; a larger value
        // would only make a busy loop look worse). A correct writer uses
        // nearly nothing; a busy loop would use most of the second even on
        // a loaded machine. Half the wait is the generous line between.
        let used_ms = used * 10;
        println!("the writer used about {used_ms} ms of CPU while waiting {hold:?}");
        assert!(
            used_ms < 500,
            "the writer used about {used_ms} ms of CPU while waiting {hold:?} for a sleeping reader"
        );
        reader.join().unwrap();
    });
}
