//! Claims about many threads: a thousand registered at once, and tens of
//! thousands created and destroyed over a run. Grace periods stay correct,
//! stall reports stay readable, and the registry's memory goes back to
//! where it was once the threads have exited.
//!
//! The churn test runs 10,000 threads by default (one to two seconds in a
//! debug build); `many_threads_created_and_destroyed_full_size` (ignored by
//! default) runs `RCU_DEFER_SCALE_THREADS` of them (100,000 if unset; about
//! 7 s in a debug build on two cores, one of them busy with other work):
//!
//! ```text
//! cargo test --release --test scale -- --ignored --nocapture
//! ```
//!
//! Every eighth churned thread exits inside a read section, which
//! rcu-defer reports on stderr: the churn runs in a child process whose
//! output the test keeps, and prints only its summary.

mod common;

use common::{child_command, is_child, markers, output_within, recv, MARKER};
use rcu_defer::{
    read_lock, registry_stats, synchronize_rcu, synchronize_rcu_timeout, Error, RcuCell, ReadGuard,
    RegistryStats,
};
use std::cell::RefCell;
use std::env;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Stack size of the test's many threads: they need little, and a
/// thousand default stacks would reserve 2 GiB of address space.
const STACK: usize = 256 << 10;

/// The registry's capacity that it keeps however few threads are
/// registered (the library's `REGISTRY_KEEP`).
const REGISTRY_KEEP: usize = 64;

/// Runs the tests of this file one at a time: each compares the registry
/// with its own baseline.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits until the registry is back to `baseline`'s entries (threads that
/// `join` has returned for may still be running their thread-local
/// destructors), and returns what it holds then.
fn settled_to(baseline: RegistryStats) -> RegistryStats {
    let deadline = Instant::now() + common::HANG_LIMIT;
    loop {
        let now = registry_stats();
        if now.entries - now.free_stand_ins <= baseline.entries - baseline.free_stand_ins
            || Instant::now() >= deadline
        {
            return now;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// The registry after many threads have come and gone holds what it held
/// before, and has given back the memory they needed.
fn assert_back_to_baseline(baseline: RegistryStats, after: RegistryStats, stand_in_bound: usize) {
    assert_eq!(
        after.entries - after.free_stand_ins,
        baseline.entries - baseline.free_stand_ins,
        "every exited thread's record left the registry: {baseline:?} -> {after:?}"
    );
    assert!(
        after.capacity <= baseline.capacity.max(REGISTRY_KEEP),
        "the registry gave back its memory: {baseline:?} -> {after:?}"
    );
    assert!(
        after.stand_ins <= baseline.stand_ins + stand_in_bound,
        "stand-ins are reused, not leaked one per exit: {baseline:?} -> {after:?}"
    );
    assert_eq!(
        after.stand_ins - after.free_stand_ins,
        baseline.stand_ins - baseline.free_stand_ins,
        "no stand-in is still in use: {after:?}"
    );
}

#[test]
fn a_thousand_registered_threads_with_twenty_stuck_give_a_ten_line_report_and_then_free_everything()
{
    let _serial = serial();
    const THREADS: usize = 1000;
    const STUCK: usize = 20;
    let baseline = registry_stats();
    let all_registered = Arc::new(Barrier::new(THREADS + 1));
    let (leave_tx, leave_rx) = mpsc::channel::<()>();
    let leave_rx = Arc::new(Mutex::new(leave_rx));
    let (unstick_tx, unstick_rx) = mpsc::channel::<()>();
    let unstick_rx = Arc::new(Mutex::new(unstick_rx));
    let threads: Vec<_> = (0..THREADS)
        .map(|i| {
            let all_registered = Arc::clone(&all_registered);
            let leave = Arc::clone(&leave_rx);
            let unstick = Arc::clone(&unstick_rx);
            // The stuck ones are spread over the registry, the last
            // registered thread among them.
            let stuck = i % (THREADS / STUCK) == THREADS / STUCK - 1;
            thread::Builder::new()
                .name(format!("{}-{i}", if stuck { "stuck" } else { "idle" }))
                .stack_size(STACK)
                .spawn(move || {
                    let guard = read_lock();
                    let guard = if stuck {
                        Some(guard)
                    } else {
                        drop(guard);
                        None
                    };
                    all_registered.wait();
                    if guard.is_some() {
                        let _ = unstick.lock().unwrap().recv();
                    }
                    drop(guard);
                    let _ = leave.lock().unwrap().recv();
                })
                .expect("spawning a reader thread")
        })
        .collect();
    all_registered.wait();
    let registered = registry_stats();
    assert!(
        registered.entries >= baseline.entries + THREADS,
        "every thread registered: {baseline:?} -> {registered:?}"
    );

    let report = match synchronize_rcu_timeout(Duration::from_millis(300)) {
        Err(Error::Timeout(report)) => report,
        other => panic!("the stuck readers must hold up the grace period: {other:?}"),
    };
    let mut names: Vec<_> = report
        .readers()
        .iter()
        .map(|r| r.thread_name().unwrap_or("?").to_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), STUCK, "exactly the stuck readers: {names:?}");
    assert!(names.iter().all(|n| n.starts_with("stuck-")), "{names:?}");
    assert!(names.contains(&format!("stuck-{}", THREADS - 1)));
    let text = report.to_string();
    let lines: Vec<&str> = text.lines().collect();
    println!("{text}");
    assert_eq!(
        lines.len(),
        10,
        "a summary, 8 readers in full and a count of the rest: {text}"
    );
    assert!(lines[0].contains(&format!("for {STUCK} readers")), "{text}");
    assert!(
        lines[9].contains(&format!("and {} more", STUCK - 8)),
        "{text}"
    );

    for _ in 0..STUCK {
        unstick_tx.send(()).unwrap();
    }
    // A thousand idle registered threads: grace periods complete, and they
    // still wait for a new section.
    let started = Instant::now();
    synchronize_rcu_timeout(common::HANG_LIMIT).expect("a grace period with idle readers only");
    println!(
        "synchronize_rcu with {THREADS} idle registered threads: {:?}",
        started.elapsed()
    );
    let held = common::hold_a_section(Duration::from_millis(50));
    synchronize_rcu();
    assert!(
        held.has_left(),
        "the grace period waited for the new section"
    );
    held.join();

    for _ in 0..THREADS {
        leave_tx.send(()).unwrap();
    }
    for thread in threads {
        thread.join().unwrap();
    }
    let after = settled_to(baseline);
    println!("registry: before {baseline:?}, with the threads {registered:?}, after {after:?}");
    assert_back_to_baseline(baseline, after, 0);
}

/// A value whose drop marks it dead: a reader that finds a dead one saw a
/// value freed under it (the grace period ended too early).
struct Probe {
    alive: AtomicBool,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::SeqCst);
    }
}

thread_local! {
    /// A read guard held by a thread-local that is first used before the
    /// thread's first `read_lock`: the thread exits inside that section,
    /// published by a stand-in until the thread-local is destroyed.
    static HELD_AT_EXIT: RefCell<Option<ReadGuard>> = const { RefCell::new(None) };
}

/// Creates and destroys `total` threads, `at_once` alive at a time, each
/// reading an `RcuCell` that a writer replaces with `replace_sync` as fast
/// as it can (every eighth thread exits inside a section held by a
/// thread-local); checks that no reader sees a dropped value and that the
/// registry returns to its baseline.
fn churn(total: usize, at_once: usize) {
    let baseline = registry_stats();
    let cell = Arc::new(RcuCell::new(Probe {
        alive: AtomicBool::new(true),
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let grace_periods = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (cell, stop, grace_periods) = (
            Arc::clone(&cell),
            Arc::clone(&stop),
            Arc::clone(&grace_periods),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                drop(cell.replace_sync(Probe {
                    alive: AtomicBool::new(true),
                }));
                grace_periods.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let started = Instant::now();
    let mut spawned = 0;
    while spawned < total {
        let wave = at_once.min(total - spawned);
        let threads: Vec<_> = (0..wave)
            .map(|i| {
                let cell = Arc::clone(&cell);
                let exit_inside = (spawned + i) % 8 == 0;
                thread::Builder::new()
                    .stack_size(STACK)
                    .spawn(move || {
                        if exit_inside {
                            HELD_AT_EXIT.with(|held| *held.borrow_mut() = Some(read_lock()));
                        }
                        for _ in 0..3 {
                            let guard = read_lock();
                            let probe = cell.read(&guard);
                            assert!(
                                probe.alive.load(Ordering::SeqCst),
                                "a reader saw a value dropped under it"
                            );
                            drop(guard);
                        }
                    })
                    .expect("spawning a short-lived thread")
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        spawned += wave;
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let took = started.elapsed();
    let after = settled_to(baseline);
    println!(
        "{MARKER}{total} threads ({at_once} at a time) in {took:?}, {} grace periods meanwhile; \
         registry before {baseline:?}, after {after:?}",
        grace_periods.load(Ordering::Relaxed)
    );
    // At most one stand-in per thread of a wave that exits inside a section.
    assert_back_to_baseline(baseline, after, at_once.div_ceil(8));
}

/// Runs `churn(total, 100)` in a child process running only `test`, and
/// prints the child's summary; panics if the child failed.
fn churn_in_a_child(test: &str, total: usize, limit: Duration) {
    if is_child(test) {
        churn(total, 100);
        return;
    }
    let mut command = child_command(test);
    // The full-size test is ignored by default: the child must run it too.
    command.arg("--include-ignored");
    let output = output_within(command, limit);
    assert!(
        output.status.success(),
        "the churn failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
            .lines()
            .filter(|l| !l.contains("is exiting inside a read section"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for line in markers(&output) {
        println!("{line}");
    }
}

#[test]
fn ten_thousand_threads_created_and_destroyed_see_no_freed_value_and_leave_the_registry_as_it_was()
{
    let _serial = serial();
    churn_in_a_child(
        "ten_thousand_threads_created_and_destroyed_see_no_freed_value_and_leave_the_registry_as_it_was",
        10_000,
        common::HANG_LIMIT,
    );
}

#[test]
#[ignore = "full size: about 100,000 threads; run with --ignored"]
fn many_threads_created_and_destroyed_full_size() {
    let _serial = serial();
    let total = env::var("RCU_DEFER_SCALE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    churn_in_a_child(
        "many_threads_created_and_destroyed_full_size",
        total,
        Duration::from_secs(600),
    );
}

#[test]
fn a_thread_that_registers_and_exits_a_thousand_times_does_not_grow_the_registry() {
    let _serial = serial();
    let baseline = registry_stats();
    for _ in 0..1000 {
        thread::spawn(|| drop(read_lock())).join().unwrap();
    }
    // The exit inside a section is reported: expected, and checked.
    let report = common::reports::expect("the exit inside a section", |report| {
        report.kind() == rcu_defer::ReportKind::ExitInSection
            && report.message().contains("'exits-in-a-section'")
    });
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("exits-in-a-section".into())
        .spawn(move || {
            HELD_AT_EXIT.with(|held| *held.borrow_mut() = Some(read_lock()));
            tx.send(()).unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
    recv(&rx, "the thread that exits inside a section");
    let report = report.next();
    assert!(
        report.message().contains(concat!(
            "is exiting inside a read section (depth 1, entered at ",
            file!()
        )),
        "{report}"
    );
    let after = settled_to(baseline);
    assert_back_to_baseline(baseline, after, 1);
}
