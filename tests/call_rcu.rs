//! `call_rcu` and `drain_call_rcu`: when, where and in what order
//! callbacks run.
//!
//! All tests in this binary share one process, one callback thread and one
//! queue; each test only looks at its own callbacks.

mod common;

use common::{hold_a_section, is_child, panic_text, recv, run_child, within, HANG_LIMIT};
use rcu_defer::{call_rcu, drain_call_rcu, read_lock, synchronize_rcu, try_drain_call_rcu, Error};
use std::panic::catch_unwind;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[test]
fn a_callback_does_not_run_until_a_section_that_began_before_it_was_queued_ends() {
    within("callback after grace period", || {
        let left = Arc::new(AtomicBool::new(false));
        let (entered_tx, entered_rx) = mpsc::channel();
        let (leave_tx, leave_rx) = mpsc::channel::<()>();
        let reader = {
            let left = Arc::clone(&left);
            thread::spawn(move || {
                let guard = read_lock();
                entered_tx.send(()).unwrap();
                leave_rx.recv().unwrap();
                left.store(true, Ordering::Relaxed);
                drop(guard);
            })
        };
        recv(&entered_rx, "the reader to enter");
        let (ran_tx, ran_rx) = mpsc::channel();
        let seen = Arc::clone(&left);
        // Relaxed: the grace period must order the reader's store before the
        // callback.
        call_rcu(move || ran_tx.send(seen.load(Ordering::Relaxed)).unwrap());
        // The section stays open until told: a callback that runs now runs
        // inside it. (A full second, so that the callback thread, which other
        // tests may keep busy for a while, gets every chance to misbehave.)
        match ran_rx.recv_timeout(Duration::from_secs(1)) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(_) => {
                panic!("the callback ran while a section that began before it was queued was open")
            }
            Err(RecvTimeoutError::Disconnected) => panic!("the callback was dropped"),
        }
        leave_tx.send(()).unwrap();
        assert!(
            recv(&ran_rx, "the callback"),
            "the callback ran before the reader's section ended"
        );
        reader.join().unwrap();
    });
}

#[test]
fn call_rcu_does_not_block_while_a_reader_holds_a_section() {
    within("call_rcu never blocks", || {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (leave_tx, leave_rx) = mpsc::channel::<()>();
        let reader = thread::spawn(move || {
            let _guard = read_lock();
            entered_tx.send(()).unwrap();
            leave_rx.recv().unwrap();
        });
        recv(&entered_rx, "the reader to enter");
        let ran = Arc::new(AtomicBool::new(false));
        // The reader leaves only after these calls return: if call_rcu waited
        // for a grace period, this would hang.
        for _ in 0..100 {
            let ran = Arc::clone(&ran);
            call_rcu(move || ran.store(true, Ordering::Relaxed));
        }
        thread::sleep(Duration::from_millis(50));
        assert!(
            !ran.load(Ordering::Relaxed),
            "a callback ran while a section that began before it was queued was running"
        );
        leave_tx.send(()).unwrap();
        reader.join().unwrap();
        drain_call_rcu();
        assert!(ran.load(Ordering::Relaxed));
    });
}

#[test]
fn callbacks_run_on_a_thread_named_rcu_call() {
    within("callback thread name", || {
        let (tx, rx) = mpsc::channel();
        call_rcu(move || {
            let current = thread::current();
            tx.send((current.name().map(str::to_owned), current.id()))
                .unwrap();
        });
        let (name, id) = recv(&rx, "the callback");
        assert_eq!(name.as_deref(), Some("rcu-call"));
        assert_ne!(id, thread::current().id());
    });
}

#[test]
fn all_callbacks_run_on_the_same_thread() {
    within("one callback thread", || {
        let (tx, rx) = mpsc::channel();
        for _ in 0..50 {
            let tx = tx.clone();
            call_rcu(move || tx.send(thread::current().id()).unwrap());
            if rand_bit() {
                thread::yield_now();
            }
        }
        drop(tx);
        drain_call_rcu();
        let ids: Vec<_> = rx.iter().collect();
        assert_eq!(ids.len(), 50);
        assert!(ids.iter().all(|&id| id == ids[0]), "{ids:?}");
    });
}

/// A cheap pseudo-random bit, to vary interleavings a little.
fn rand_bit() -> bool {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0u8) & 1 == 1
}

#[test]
fn callbacks_queued_by_one_thread_run_in_queue_order() {
    within("queue order", || {
        let order = Arc::new(Mutex::new(Vec::new()));
        for i in 0..2000 {
            let order = Arc::clone(&order);
            call_rcu(move || order.lock().unwrap().push(i));
            if i % 100 == 0 {
                // Let some batches start in between.
                thread::sleep(Duration::from_millis(1));
            }
        }
        drain_call_rcu();
        let order = order.lock().unwrap();
        assert_eq!(order.len(), 2000);
        assert!(
            order.iter().copied().eq(0..2000),
            "callbacks ran out of queue order"
        );
    });
}

#[test]
fn drain_call_rcu_waits_for_every_callback_queued_before_it_by_any_thread() {
    within("drain", || {
        const THREADS: usize = 4;
        const EACH: usize = 250;
        let ran = Arc::new(AtomicUsize::new(0));
        let producers: Vec<_> = (0..THREADS)
            .map(|_| {
                let ran = Arc::clone(&ran);
                thread::spawn(move || {
                    for _ in 0..EACH {
                        let ran = Arc::clone(&ran);
                        call_rcu(move || {
                            ran.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        // Every callback above was queued before this call.
        drain_call_rcu();
        assert_eq!(ran.load(Ordering::Relaxed), THREADS * EACH);
    });
}

#[test]
fn drain_call_rcu_waits_for_a_callback_held_back_by_a_reader() {
    within("drain waits for grace period", || {
        let reader = hold_a_section(Duration::from_millis(200));
        let ran = Arc::new(AtomicBool::new(false));
        {
            let ran = Arc::clone(&ran);
            call_rcu(move || ran.store(true, Ordering::Relaxed));
        }
        drain_call_rcu();
        assert!(
            ran.load(Ordering::Relaxed),
            "drain returned before the callback ran"
        );
        assert!(reader.has_left());
        reader.join();
    });
}

#[test]
fn concurrent_drains_from_many_threads_all_complete() {
    within("concurrent drains", || {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                thread::spawn(|| {
                    for _ in 0..50 {
                        let ran = Arc::new(AtomicBool::new(false));
                        let flag = Arc::clone(&ran);
                        call_rcu(move || flag.store(true, Ordering::Relaxed));
                        drain_call_rcu();
                        assert!(ran.load(Ordering::Relaxed));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    });
}

#[test]
fn a_panicking_callback_is_caught_and_later_callbacks_and_drain_still_work() {
    // Each caught panic is reported: expected, and checked below.
    let reports = common::reports::expect("the callbacks' panics", |report| {
        report.kind() == rcu_defer::ReportKind::CallbackPanicked
            && report.message().contains("deliberate panic")
    });
    within("panicking callback", || {
        let ran = Arc::new(AtomicUsize::new(0));
        call_rcu(|| panic!("deliberate panic in a call_rcu callback"));
        {
            let ran = Arc::clone(&ran);
            call_rcu(move || {
                ran.fetch_add(1, Ordering::Relaxed);
            });
        }
        drain_call_rcu();
        assert_eq!(ran.load(Ordering::Relaxed), 1);
        // The worker goes on: a second round after the panic.
        call_rcu(|| panic!("another deliberate panic"));
        {
            let ran = Arc::clone(&ran);
            call_rcu(move || {
                ran.fetch_add(1, Ordering::Relaxed);
            });
        }
        drain_call_rcu();
        assert_eq!(ran.load(Ordering::Relaxed), 2);
        let (tx, rx) = mpsc::channel();
        call_rcu(move || {
            tx.send(thread::current().name().map(str::to_owned))
                .unwrap()
        });
        assert_eq!(recv(&rx, "a callback").as_deref(), Some("rcu-call"));
    });
    let messages: Vec<String> = [reports.next(), reports.next()]
        .iter()
        .map(|r| r.message().to_owned())
        .collect();
    assert_eq!(
        messages,
        [
            "a call_rcu callback panicked: deliberate panic in a call_rcu callback; the rcu-call \
             thread goes on",
            "a call_rcu callback panicked: another deliberate panic; the rcu-call thread goes on",
        ]
    );
    assert!(reports.taken().is_empty(), "each panic is reported once");
}

#[test]
fn a_panicking_callback_is_reported_once_on_stderr_with_its_message() {
    const TEST: &str = "a_panicking_callback_is_reported_once_on_stderr_with_its_message";
    const MESSAGE: &str = "boom-7d41e9 from a callback";
    if is_child(TEST) {
        // A process of its own, so that silencing the panic hook leaves only
        // the library's report on stderr.
        std::panic::set_hook(Box::new(|_| {}));
        call_rcu(|| panic!("{MESSAGE}"));
        within("drain after a panicking callback", drain_call_rcu);
        return;
    }
    let output = run_child(TEST, HANG_LIMIT + HANG_LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reports = stderr.lines().filter(|l| l.contains(MESSAGE)).count();
    assert_eq!(reports, 1, "the panic should be reported once:\n{stderr}");
}

#[test]
fn drain_call_rcu_inside_a_callback_returns_in_call_rcu_callback() {
    within("drain from callback", || {
        let (tx, rx) = mpsc::channel();
        call_rcu(move || tx.send(try_drain_call_rcu()).unwrap());
        match recv(&rx, "the callback's result") {
            Err(Error::InCallRcuCallback { op }) => assert_eq!(op, "drain_call_rcu"),
            other => panic!("expected InCallRcuCallback, got {other:?}"),
        }
        // The callback thread is not wedged.
        drain_call_rcu();
    });
}

#[test]
fn plain_drain_call_rcu_inside_a_callback_panics_naming_the_operation() {
    within("plain drain from callback", || {
        let (tx, rx) = mpsc::channel();
        call_rcu(move || {
            let result = catch_unwind(drain_call_rcu).map_err(|p| panic_text(&*p));
            tx.send(result).unwrap();
        });
        match recv(&rx, "the callback's result") {
            Err(message) => assert!(
                message.contains("drain_call_rcu") && message.contains("call_rcu callback"),
                "{message}"
            ),
            Ok(()) => panic!("drain_call_rcu inside a callback returned instead of panicking"),
        }
        drain_call_rcu();
    });
}

#[test]
fn synchronize_rcu_inside_a_callback_waits_for_a_grace_period_and_returns() {
    within("synchronize from callback", || {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let left = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let seen = Arc::clone(&left);
        call_rcu(move || {
            // Runs once the callback starts: a reader enters now, after the
            // callback's own grace period, and synchronize must wait for it.
            go_tx.send(()).unwrap();
            recv(&entered_rx, "the reader to enter");
            synchronize_rcu();
            tx.send(seen.load(Ordering::Relaxed)).unwrap();
        });
        recv(&go_rx, "the callback to start");
        let reader = {
            let left = Arc::clone(&left);
            thread::spawn(move || {
                let guard = read_lock();
                entered_tx.send(()).unwrap();
                thread::sleep(Duration::from_millis(150));
                left.store(true, Ordering::Relaxed);
                drop(guard);
            })
        };
        assert!(
            recv(&rx, "the callback's synchronize_rcu"),
            "synchronize_rcu in a callback returned before a reader that started before it left"
        );
        reader.join().unwrap();
        drain_call_rcu();
    });
}

#[test]
fn a_callback_may_queue_another_callback() {
    within("nested call_rcu", || {
        let (tx, rx) = mpsc::channel();
        call_rcu(move || {
            call_rcu(move || {
                tx.send(thread::current().name().map(str::to_owned))
                    .unwrap()
            });
        });
        assert_eq!(recv(&rx, "the inner callback").as_deref(), Some("rcu-call"));
    });
}

#[test]
fn try_drain_call_rcu_outside_a_section_and_a_callback_is_ok() {
    within("try_drain", || {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        call_rcu(move || flag.store(true, Ordering::Relaxed));
        try_drain_call_rcu().expect("neither in a section nor in a callback");
        assert!(ran.load(Ordering::Relaxed));
    });
}

#[test]
fn drain_call_rcu_timeout_gives_up_naming_the_reader_and_the_callback_still_runs_once() {
    within("drain_call_rcu_timeout", || {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let reader = thread::Builder::new()
            .name("slow-device-thread".to_owned())
            .spawn(move || {
                let guard = read_lock();
                entered_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                drop(guard);
            })
            .unwrap();
        recv(&entered_rx, "the reader to enter");
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        call_rcu(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        // The report names the readers of the grace period in progress. If
        // the rcu-call thread is still in one that began before the reader
        // entered (held up by another test's reader), that one is named
        // instead: the next drain then finds the callback's own grace
        // period, which the reader holds up.
        let names_reader = |report: &rcu_defer::StallReport| {
            report
                .readers()
                .iter()
                .any(|r| r.thread_name() == Some("slow-device-thread"))
        };
        let mut attempts = 0;
        let report = loop {
            attempts += 1;
            let result = rcu_defer::drain_call_rcu_timeout(Duration::from_millis(150));
            let Err(Error::Timeout(report)) = result else {
                panic!("a drain held up by a reader must time out, got {result:?}");
            };
            if names_reader(&report) || attempts == 10 {
                break report;
            }
        };
        assert!(
            names_reader(&report),
            "the report names the reader: {report}"
        );
        assert!(report.waited() >= Duration::from_millis(150));
        let text = Error::Timeout(report).to_string();
        assert!(text.contains("drain_call_rcu has waited"), "{text}");
        assert_eq!(runs.load(Ordering::SeqCst), 0, "ran inside the section");
        release_tx.send(()).unwrap();
        reader.join().unwrap();
        rcu_defer::drain_call_rcu_timeout(HANG_LIMIT).expect("the reader has left");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn drain_call_rcu_timeout_is_refused_inside_a_section_and_from_a_callback() {
    within("drain_call_rcu_timeout refusals", || {
        let guard = read_lock();
        let refused = rcu_defer::drain_call_rcu_timeout(Duration::from_secs(1));
        assert!(
            matches!(
                refused,
                Err(Error::InReadSection {
                    op: "drain_call_rcu_timeout",
                    depth: 1,
                    ..
                })
            ),
            "{refused:?}"
        );
        drop(guard);
        let (tx, rx) = mpsc::channel();
        call_rcu(move || {
            let _ = tx.send(format!(
                "{:?}",
                rcu_defer::drain_call_rcu_timeout(Duration::from_secs(1))
            ));
        });
        drain_call_rcu();
        let seen = recv(&rx, "the callback's attempt");
        assert!(seen.contains("InCallRcuCallback"), "{seen}");
    });
}

#[test]
fn a_callback_that_leaves_the_rcu_call_thread_online_is_reported_and_the_thread_goes_offline() {
    const TEST: &str =
        "a_callback_that_leaves_the_rcu_call_thread_online_is_reported_and_the_thread_goes_offline";
    // Under Miri, which cannot start processes, the child's part runs here.
    if is_child(TEST) || cfg!(miri) {
        // A process of its own: before the worker checked for this, the
        // leaked handle stopped every later grace period of the process.
        call_rcu(|| std::mem::forget(rcu_defer::online()));
        within("the drain after the leaking callback", drain_call_rcu);
        rcu_defer::synchronize_rcu_timeout(Duration::from_secs(10))
            .expect("a grace period after the callback that left the worker online");
        // The thread has no live handle left: a later callback may go online
        // (and offline) again.
        let (tx, rx) = mpsc::channel();
        call_rcu(move || {
            let again = catch_unwind(|| drop(rcu_defer::online())).map_err(|p| panic_text(&*p));
            tx.send(again).unwrap();
        });
        within("the second drain", drain_call_rcu);
        if let Err(message) = recv(&rx, "the second callback") {
            panic!("going online again in a later callback failed: {message}");
        }
        rcu_defer::synchronize_rcu_timeout(Duration::from_secs(10))
            .expect("a grace period after the second callback");
        return;
    }
    let output = run_child(TEST, HANG_LIMIT + HANG_LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reports: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("returned with the rcu-call thread online"))
        .collect();
    assert_eq!(
        reports.len(),
        1,
        "one report, for the leaking callback:\n{stderr}"
    );
    assert!(
        reports[0].contains(file!()),
        "the report names where the handle was made: {}",
        reports[0]
    );
}
