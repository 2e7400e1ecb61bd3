//! Read side: nesting, lazy registration, thread exit, flavors.
//!
//! All tests in this binary share one process and so one RCU state; none of
//! them leaves a read section open or changes global settings.

mod common;

use common::{
    child_command, hold_a_section, is_child, markers, output_within, panic_text, recv, within,
    HANG_LIMIT, MARKER,
};
use rcu_defer::{
    flavor, in_read_section, read_depth, read_lock, synchronize_rcu, synchronize_rcu_timeout,
    try_synchronize_rcu, Error, Flavor, ReadGuard,
};
use std::cell::RefCell;
use std::panic::catch_unwind;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

// ---------------------------------------------------------------------------
// Child processes: a test re-runs this binary with a different environment
// (the flavor is chosen once per process) and checks a marker it prints.

/// Runs only `test` of this binary in a child process with `envs` set.
fn run_child(test: &str, envs: &[(&str, &str)]) -> Output {
    let mut command = child_command(test);
    command.env_remove("RCU_DEFER_FLAVOR");
    for (key, value) in envs {
        command.env(key, value);
    }
    let output = output_within(command, HANG_LIMIT + HANG_LIMIT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.contains("1 passed"),
        "the child did not run exactly one passing test\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}"
    );
    output
}

// ---------------------------------------------------------------------------
// Nesting and depth.

#[test]
fn a_thread_that_never_entered_a_section_has_depth_zero() {
    within("fresh thread", || {
        assert_eq!(read_depth(), 0);
        assert!(!in_read_section());
    });
}

#[test]
fn read_lock_nests_and_read_depth_counts_the_guards_held() {
    within("nesting", || {
        assert_eq!(read_depth(), 0);
        let a = read_lock();
        assert_eq!(read_depth(), 1);
        assert!(in_read_section());
        let b = read_lock();
        let c = read_lock();
        assert_eq!(read_depth(), 3);
        drop(c);
        assert_eq!(read_depth(), 2);
        drop(b);
        assert_eq!(read_depth(), 1);
        assert!(in_read_section());
        drop(a);
        assert_eq!(read_depth(), 0);
        assert!(!in_read_section());
        // And again, after the thread has been in and out once.
        let d = read_lock();
        assert_eq!(read_depth(), 1);
        drop(d);
        assert!(!in_read_section());
    });
}

#[test]
fn guards_dropped_out_of_order_end_the_section_with_the_last_one() {
    within("out of order", || {
        let outer = read_lock();
        let inner = read_lock();
        drop(outer);
        assert_eq!(read_depth(), 1);
        assert!(in_read_section());
        assert!(matches!(
            try_synchronize_rcu(),
            Err(Error::InReadSection { depth: 1, .. })
        ));
        drop(inner);
        assert!(!in_read_section());
        try_synchronize_rcu().expect("outside any section");
    });
}

#[test]
fn deep_nesting_counts_every_level() {
    within("deep nesting", || {
        let guards: Vec<ReadGuard> = (0..1000).map(|_| read_lock()).collect();
        assert_eq!(read_depth(), 1000);
        drop(guards);
        assert_eq!(read_depth(), 0);
    });
}

#[test]
fn a_panic_inside_a_section_ends_the_section_while_unwinding() {
    within("panic in section", || {
        let result = catch_unwind(|| {
            let _outer = read_lock();
            let _inner = read_lock();
            assert_eq!(read_depth(), 2);
            panic!("deliberate panic inside a read section");
        });
        assert!(result.is_err());
        assert_eq!(read_depth(), 0);
        synchronize_rcu();
    });
}

#[test]
fn depth_is_per_thread() {
    within("per thread", || {
        let _guard = read_lock();
        let _guard2 = read_lock();
        let other = thread::spawn(|| {
            let before = read_depth();
            let g = read_lock();
            let inside = read_depth();
            drop(g);
            (before, inside)
        })
        .join()
        .unwrap();
        assert_eq!(other, (0, 1));
        assert_eq!(read_depth(), 2);
    });
}

// ---------------------------------------------------------------------------
// Registration and thread exit.

#[test]
fn a_new_thread_registers_on_its_first_read_lock_without_a_registration_call() {
    within("lazy registration", || {
        let reader = hold_a_section(Duration::from_millis(200));
        // The grace period must know about the new thread's section.
        synchronize_rcu();
        assert!(
            reader.has_left(),
            "synchronize_rcu returned while a newly started thread was still in its first section"
        );
        reader.join();
    });
}

#[test]
fn a_thread_that_exited_does_not_block_later_grace_periods() {
    within("exited threads", || {
        for _ in 0..50 {
            thread::spawn(|| {
                for _ in 0..10 {
                    let _outer = read_lock();
                    let _inner = read_lock();
                }
            })
            .join()
            .unwrap();
        }
        synchronize_rcu();
        synchronize_rcu_timeout(HANG_LIMIT).expect("no reader is left in a section");
    });
}

thread_local! {
    static HELD_UNTIL_EXIT: RefCell<Option<ReadGuard>> = const { RefCell::new(None) };
}

#[test]
fn a_guard_kept_in_a_thread_local_ends_its_section_when_the_thread_exits() {
    // The library reports the exit inside a section before the guard's
    // thread-local ends it: expected, and checked below.
    let report = common::reports::expect("the exit with a guard in a thread-local", |report| {
        report.kind() == rcu_defer::ReportKind::ExitInSection
            && report.message().contains("'guard-in-thread-local'")
    });
    within("guard in thread-local", || {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (exit_tx, exit_rx) = mpsc::channel::<()>();
        let reader = thread::Builder::new()
            .name("guard-in-thread-local".into())
            .spawn(move || {
                HELD_UNTIL_EXIT.with(|held| *held.borrow_mut() = Some(read_lock()));
                entered_tx.send(()).unwrap();
                exit_rx.recv().unwrap();
                // The thread exits with its guard still in the thread-local; its
                // destructor (in either order with the library's own) drops it.
            })
            .unwrap();
        recv(&entered_rx, "the reader to enter");
        let writer = thread::spawn(synchronize_rcu);
        thread::sleep(Duration::from_millis(100));
        assert!(
            !writer.is_finished(),
            "synchronize_rcu returned while a guard held in a thread-local was alive"
        );
        exit_tx.send(()).unwrap();
        reader.join().unwrap();
        writer.join().unwrap();
        synchronize_rcu();
    });
    let report = report.next();
    assert!(
        report.message().contains(concat!(
            "is exiting inside a read section (depth 1, entered at ",
            file!()
        )),
        "{report}"
    );
}

struct ReadsOnDrop(mpsc::Sender<usize>);

impl Drop for ReadsOnDrop {
    fn drop(&mut self) {
        let guard = read_lock();
        let depth = read_depth();
        drop(guard);
        let _ = self.0.send(depth);
    }
}

thread_local! {
    static READS_AT_EXIT: RefCell<Option<ReadsOnDrop>> = const { RefCell::new(None) };
}

#[test]
fn read_lock_from_a_thread_local_destructor_works_and_does_not_block_grace_periods() {
    within("read_lock at thread exit", || {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            // Register first, so that the library's own thread-local exists
            // and may be destroyed before ours.
            drop(read_lock());
            READS_AT_EXIT.with(|r| *r.borrow_mut() = Some(ReadsOnDrop(tx)));
        })
        .join()
        .unwrap();
        assert_eq!(recv(&rx, "the destructor's depth"), 1);
        synchronize_rcu();
    });
}

/// From its destructor: enters a read section, says so, and holds it until
/// told to leave.
struct SectionOnDrop {
    entered: mpsc::Sender<()>,
    leave: mpsc::Receiver<()>,
}

impl Drop for SectionOnDrop {
    fn drop(&mut self) {
        let guard = read_lock();
        let _ = self.entered.send(());
        // A limit, so that a broken test cannot hang the thread forever.
        let _ = self.leave.recv_timeout(Duration::from_secs(30));
        drop(guard);
    }
}

thread_local! {
    static SECTION_AT_LATE_EXIT: RefCell<Option<SectionOnDrop>> = const { RefCell::new(None) };
}

#[test]
fn a_section_entered_after_the_librarys_thread_local_is_gone_still_holds_up_grace_periods() {
    // Thread-local destructors run in the reverse order of registration (on
    // Linux): ours is registered before the library's, so the library's
    // runs first and takes the thread's record out of the registry. The
    // section our destructor then enters must still be seen by writers.
    within("a section entered at late thread exit", || {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (leave_tx, leave_rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            SECTION_AT_LATE_EXIT.with(|s| {
                *s.borrow_mut() = Some(SectionOnDrop {
                    entered: entered_tx,
                    leave: leave_rx,
                })
            });
            drop(read_lock());
        });
        recv(&entered_rx, "the destructor to enter its section");
        let writer = thread::spawn(synchronize_rcu);
        thread::sleep(Duration::from_millis(100));
        assert!(
            !writer.is_finished(),
            "synchronize_rcu returned while a section entered in a late thread-local \
             destructor was open"
        );
        leave_tx.send(()).unwrap();
        reader.join().unwrap();
        writer.join().unwrap();
        // Sections at exit do not accumulate: later grace periods are free.
        synchronize_rcu_timeout(HANG_LIMIT).expect("the late section has ended");
    });
}

thread_local! {
    /// Holds a guard until this thread-local is destroyed.
    static GUARD_UNTIL_LATE_EXIT: RefCell<Option<ReadGuard>> = const { RefCell::new(None) };
    /// Reports, from its destructor, what the library says about this
    /// thread's section.
    static PROBE_AT_LATE_EXIT: RefCell<Option<ProbeOnDrop>> = const { RefCell::new(None) };
}

/// What a thread-local destructor sees: whether the guard is still alive,
/// its depth, and what a grace-period wait with a (short) limit returns.
type Probe = (bool, usize, Result<(), Error>);

struct ProbeOnDrop(mpsc::Sender<Probe>);

impl Drop for ProbeOnDrop {
    fn drop(&mut self) {
        // Never panic here (a panicking thread-local destructor aborts):
        // report to the test thread instead. A time limit, because the very
        // bug this looks for is a wait for this thread's own section.
        let guard_alive = GUARD_UNTIL_LATE_EXIT
            .try_with(|g| g.borrow().is_some())
            .unwrap_or(false);
        let depth = read_depth();
        let result = synchronize_rcu_timeout(Duration::from_secs(2));
        let _ = self.0.send((guard_alive, depth, result));
    }
}

#[test]
fn a_section_that_outlives_the_librarys_thread_local_is_still_seen_by_its_thread() {
    // A thread's thread-local destructors run in the reverse order of their
    // registration (on Linux). Registering ours before the first read_lock
    // makes the library's own destructor run first while the guard, held in
    // one of ours, keeps the section open; a destructor that runs in between
    // is still inside that section and must be told so, not hang.
    const TEST: &str =
        "a_section_that_outlives_the_librarys_thread_local_is_still_seen_by_its_thread";
    if is_child(TEST) {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            GUARD_UNTIL_LATE_EXIT.with(|_| {});
            PROBE_AT_LATE_EXIT.with(|p| *p.borrow_mut() = Some(ProbeOnDrop(tx)));
            let guard = read_lock();
            GUARD_UNTIL_LATE_EXIT.with(|g| *g.borrow_mut() = Some(guard));
        })
        .join()
        .unwrap();
        let (guard_alive, depth, result) = recv(&rx, "the destructor's report");
        if !guard_alive {
            // Destructors ran in another order here: the guard was gone
            // before the probe, so there is nothing to check.
            println!("{MARKER}guard already dropped");
            return;
        }
        println!("{MARKER}depth={depth}");
        match result {
            Err(Error::InReadSection { depth, .. }) => {
                println!("{MARKER}InReadSection depth={depth}")
            }
            Err(Error::Timeout(_)) => println!("{MARKER}Timeout"),
            other => println!("{MARKER}{other:?}"),
        }
        return;
    }
    let output = run_child(TEST, &[]);
    let markers = markers(&output);
    if markers == ["guard already dropped"] {
        println!("thread-local destructors did not run in the order this test needs");
        return;
    }
    assert_eq!(
        markers,
        ["depth=1", "InReadSection depth=1"],
        "a thread-local destructor that runs while the thread's guard is still alive \
         must see the section (depth 1) and be refused a grace-period wait, not time out"
    );
}

#[test]
fn many_threads_coming_and_going_are_never_missed_by_a_concurrent_synchronize_loop() {
    /// Generations of a published object: `current` indexes `dead`; the
    /// writer publishes a new generation, waits for a grace period, and only
    /// then marks the old one dead. Nothing is freed, so a reader that sees a
    /// dead generation fails an assertion, never touches freed memory.
    struct Generations {
        current: AtomicUsize,
        dead: Vec<AtomicBool>,
    }
    const THREADS: usize = 300;
    const WAVE: usize = 6;

    within("thread churn", || {
        let gens = Arc::new(Generations {
            current: AtomicUsize::new(0),
            dead: (0..1 << 20).map(|_| AtomicBool::new(false)).collect(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (first_tx, first_rx) = mpsc::channel();
        let writer = {
            let gens = Arc::clone(&gens);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut grace_periods = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let old = gens.current.load(Ordering::Relaxed);
                    if old + 1 < gens.dead.len() {
                        gens.current.store(old + 1, Ordering::Release);
                        synchronize_rcu();
                        gens.dead[old].store(true, Ordering::Relaxed);
                    } else {
                        synchronize_rcu();
                    }
                    grace_periods += 1;
                    if grace_periods == 1 {
                        first_tx.send(()).unwrap();
                    }
                }
                grace_periods
            })
        };
        recv(&first_rx, "the writer's first grace period");
        let sections = Arc::new(AtomicUsize::new(0));
        for _ in 0..THREADS / WAVE {
            let wave: Vec<_> = (0..WAVE)
                .map(|_| {
                    let gens = Arc::clone(&gens);
                    let sections = Arc::clone(&sections);
                    thread::spawn(move || {
                        for _ in 0..20 {
                            let _guard = read_lock();
                            let seen = gens.current.load(Ordering::Acquire);
                            for _ in 0..5 {
                                assert!(
                                    !gens.dead[seen].load(Ordering::Relaxed),
                                    "generation {seen} was retired while a reader that saw it \
                                     was still in its section"
                                );
                                thread::yield_now();
                            }
                            sections.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for reader in wave {
                reader.join().expect("a reader thread failed");
            }
        }
        stop.store(true, Ordering::Relaxed);
        let grace_periods = writer.join().unwrap();
        println!(
            "{THREADS} threads, {} sections, {grace_periods} grace periods",
            sections.load(Ordering::Relaxed)
        );
        assert_eq!(sections.load(Ordering::Relaxed), THREADS * 20);
        synchronize_rcu();
    });
}

#[test]
fn read_lock_does_not_wait_for_a_grace_period_in_progress() {
    within("readers never wait", || {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (leave_tx, leave_rx) = mpsc::channel::<()>();
        let blocker = thread::spawn(move || {
            let _guard = read_lock();
            entered_tx.send(()).unwrap();
            leave_rx.recv().unwrap();
        });
        recv(&entered_rx, "the blocking reader to enter");
        let writer = thread::spawn(synchronize_rcu);
        thread::sleep(Duration::from_millis(50));
        // While the writer waits for `blocker`, another thread can still
        // enter and leave read sections: if read_lock waited for the grace
        // period this would hang (the blocker leaves only afterwards).
        let (done_tx, done_rx) = mpsc::channel();
        thread::spawn(move || {
            for _ in 0..10_000 {
                let _guard = read_lock();
            }
            done_tx.send(()).unwrap();
        });
        recv(&done_rx, "a reader while a grace period waits");
        assert!(
            !writer.is_finished(),
            "synchronize_rcu returned while a reader that started before it was in its section"
        );
        leave_tx.send(()).unwrap();
        blocker.join().unwrap();
        writer.join().unwrap();
    });
}

#[test]
fn a_thread_that_exits_inside_a_section_keeps_blocking_and_is_named_in_the_report() {
    const TEST: &str =
        "a_thread_that_exits_inside_a_section_keeps_blocking_and_is_named_in_the_report";
    if is_child(TEST) {
        // A leaked guard: the section can never end, so this must run in a
        // process of its own.
        let (line_tx, line_rx) = mpsc::channel();
        thread::Builder::new()
            .name("leaky-reader".to_owned())
            .spawn(move || {
                let (guard, line) = (read_lock(), line!());
                std::mem::forget(guard);
                line_tx.send(line).unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
        let line = line_rx.recv().unwrap();
        match synchronize_rcu_timeout(Duration::from_millis(300)) {
            Err(Error::Timeout(report)) => {
                let reader = report
                    .readers()
                    .iter()
                    .find(|r| r.thread_name() == Some("leaky-reader"))
                    .unwrap_or_else(|| panic!("the exited reader is not named: {report}"));
                assert_eq!(reader.depth(), 1);
                assert!(
                    reader.thread_exited(),
                    "the report must say the thread exited"
                );
                let at = reader.entered_at().expect("the entry location");
                assert_eq!((at.file(), at.line()), (file!(), line));
                println!("{MARKER}named");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        return;
    }
    let output = run_child(TEST, &[]);
    assert_eq!(markers(&output), ["named"]);
}

// ---------------------------------------------------------------------------
// Flavors.

#[test]
fn flavor_is_the_same_on_every_call_and_every_thread() {
    let first = flavor();
    let _guard = read_lock();
    assert_eq!(flavor(), first);
    let others: Vec<Flavor> = (0..4)
        .map(|_| thread::spawn(flavor))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert!(
        others.iter().all(|&f| f == first),
        "{first:?} vs {others:?}"
    );
    println!("this process uses the {first} flavor");
}

#[test]
fn flavor_is_the_same_when_first_asked_by_many_threads_at_once() {
    // In a fresh process, so that the first decision is raced.
    const TEST: &str = "flavor_is_the_same_when_first_asked_by_many_threads_at_once";
    if is_child(TEST) {
        let barrier = Arc::new(Barrier::new(8));
        let seen: Vec<Flavor> = (0..8)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || {
                    barrier.wait();
                    flavor()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert!(seen.iter().all(|&f| f == seen[0]), "{seen:?}");
        assert_eq!(flavor(), seen[0]);
        println!("{MARKER}agreed");
        return;
    }
    let output = run_child(TEST, &[]);
    assert_eq!(markers(&output), ["agreed"]);
}

#[test]
fn flavor_is_fence_when_rcu_defer_flavor_is_fence() {
    const TEST: &str = "flavor_is_fence_when_rcu_defer_flavor_is_fence";
    if is_child(TEST) {
        let guard = read_lock();
        drop(guard);
        synchronize_rcu();
        println!("{MARKER}{:?}", flavor());
        return;
    }
    let output = run_child(TEST, &[("RCU_DEFER_FLAVOR", "fence")]);
    assert_eq!(markers(&output), ["Fence"]);
}

#[test]
fn rcu_defer_flavor_membarrier_gives_membarrier_or_the_fence_flavor_with_a_report() {
    const TEST: &str =
        "rcu_defer_flavor_membarrier_gives_membarrier_or_the_fence_flavor_with_a_report";
    if is_child(TEST) {
        match catch_unwind(flavor) {
            Ok(f) => println!("{MARKER}{f:?}"),
            Err(payload) => println!("{MARKER}panic: {}", panic_text(&*payload)),
        }
        return;
    }
    let output = run_child(TEST, &[("RCU_DEFER_FLAVOR", "membarrier")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    match markers(&output).as_slice() {
        [m] if m == "Membarrier" => {}
        [m] if m == "Fence" => assert!(
            stderr.contains("RCU_DEFER_FLAVOR=membarrier") && stderr.contains("fence flavor"),
            "falling back to the fence flavor must say why: {stderr}"
        ),
        other => panic!("expected the membarrier flavor or a reported fallback: {other:?}"),
    }
}

/// Item 4 of the bug report: an invalid `RCU_DEFER_FLAVOR` (a capitalised
/// value, a typo) must not panic inside the first `read_lock`; it is
/// reported once, the default flavor is used, and that first section is a
/// real one that writers wait for.
#[test]
fn an_invalid_rcu_defer_flavor_is_reported_once_and_the_first_section_still_holds_up_writers() {
    const TEST: &str =
        "an_invalid_rcu_defer_flavor_is_reported_once_and_the_first_section_still_holds_up_writers";
    if is_child(TEST) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        // The first read_lock of the process decides the flavor.
        let reader = thread::spawn(move || {
            let entered = catch_unwind(|| {
                let guard = read_lock();
                entered_tx.send(read_depth()).unwrap();
                release_rx.recv().unwrap();
                drop(guard);
            });
            entered.is_ok()
        });
        let depth = entered_rx.recv_timeout(HANG_LIMIT);
        let held = synchronize_rcu_timeout(Duration::from_millis(100));
        release_tx.send(()).unwrap();
        let reader_ok = reader.join().unwrap();
        let _ = read_lock();
        println!(
            "{MARKER}depth {depth:?}, reader ok {reader_ok}, writer held {}, flavor {:?}",
            matches!(held, Err(Error::Timeout(_))),
            flavor()
        );
        return;
    }
    let output = run_child(TEST, &[("RCU_DEFER_FLAVOR", "Fence")]);
    let markers = markers(&output);
    assert_eq!(markers.len(), 1, "{markers:?}");
    assert!(
        markers[0].starts_with("depth Ok(1), reader ok true, writer held true, flavor "),
        "{}",
        markers[0]
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reports = stderr
        .lines()
        .filter(|l| l.contains("RCU_DEFER_FLAVOR") && l.contains("\"Fence\""))
        .count();
    assert_eq!(
        reports, 1,
        "one report naming the variable and value: {stderr}"
    );
}

#[test]
fn set_flavor_before_first_use_decides_the_flavor_and_overrides_the_environment() {
    const TEST: &str =
        "set_flavor_before_first_use_decides_the_flavor_and_overrides_the_environment";
    if is_child(TEST) {
        let set = rcu_defer::set_flavor(Flavor::Fence);
        let again = rcu_defer::set_flavor(Flavor::Fence);
        let other = rcu_defer::set_flavor(Flavor::Membarrier);
        drop(read_lock());
        synchronize_rcu();
        println!("{MARKER}{set:?} {again:?} {:?}", flavor());
        println!("{MARKER}{}", other.unwrap_err());
        return;
    }
    let output = run_child(TEST, &[("RCU_DEFER_FLAVOR", "membarrier")]);
    let markers = markers(&output);
    assert_eq!(markers.len(), 2, "{markers:?}");
    assert_eq!(markers[0], "Ok(()) Ok(()) Fence");
    assert!(
        markers[1].contains("already uses the fence flavor") && markers[1].contains("set_flavor"),
        "{}",
        markers[1]
    );
}

#[test]
fn set_flavor_after_first_use_is_refused_unless_it_names_the_flavor_in_use() {
    let in_use = flavor();
    assert_eq!(rcu_defer::set_flavor(in_use), Ok(()));
    let other = match in_use {
        Flavor::Fence => Flavor::Membarrier,
        Flavor::Membarrier => Flavor::Fence,
    };
    assert_eq!(
        rcu_defer::set_flavor(other),
        Err(rcu_defer::FlavorError::AlreadyDecided {
            requested: other,
            decided: in_use
        })
    );
    assert_eq!(flavor(), in_use);
}
