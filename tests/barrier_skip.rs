//! Claims about the membarrier flavor's expedited barrier (`membarrier(2)`,
//! an interrupt to every CPU that runs a thread of the process): a grace
//! period sends it only while some thread is an *ordinary* reader, one that
//! has entered a read section while not online and has not exited since, or
//! an online thread that is offline or waiting for a grace period. With
//! online readers only, and a writer that never enters a read section,
//! grace periods send none, as liburcu's urcu-qsbr.
//!
//! `rcu_defer::barrier_stats()` counts what grace periods did. It is global
//! to the process, and any ordinary reader of another test would move it,
//! so each test runs in a child process of its own, with the library's
//! defaults (no `RCU_DEFER_FLAVOR`): the membarrier flavor where the kernel
//! offers `membarrier(2)`, which the tests check. Elsewhere the default is
//! the fence flavor, which has no barrier to skip: the tests say so and
//! pass.

mod common;

use common::{child_command, markers, passing_child, recv, within, MARKER};
use rcu_defer::{barrier_stats, flavor, online, read_lock, synchronize_rcu, BarrierStats, Flavor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

/// Grace periods per step.
const GRACE_PERIODS: u64 = 50;

/// How long a child may take before it is taken for a hang.
const CHILD_LIMIT: Duration = Duration::from_secs(60);

/// Runs `body` as `test`'s part in a child process with the library's
/// default flavor; in the parent, checks that the child passed and says
/// when it skipped (no membarrier on this kernel).
fn in_child_with_the_defaults(test: &str, body: impl FnOnce() + Send + 'static) {
    if common::is_child(test) {
        if !common::kernel_offers_membarrier() {
            assert_eq!(flavor(), Flavor::Fence);
            println!("{MARKER}skip: this kernel offers no membarrier(2), so grace periods have no barrier to skip");
            return;
        }
        // The default where the kernel offers it.
        assert_eq!(flavor(), Flavor::Membarrier);
        within(test, body);
        println!("{MARKER}done");
        return;
    }
    let mut command = child_command(test);
    command.env_remove("RCU_DEFER_FLAVOR");
    let output = passing_child(command, CHILD_LIMIT);
    let markers = markers(&output);
    if let Some(skip) = markers.iter().find(|m| m.starts_with("skip:")) {
        eprintln!("{test}: {skip}");
        return;
    }
    assert!(
        markers.iter().any(|m| m == "done"),
        "the child did not finish its checks: {markers:?}"
    );
}

/// Online reader threads, each entering read sections and reporting a
/// quiescent state after each, until dropped.
struct OnlineReaders {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl OnlineReaders {
    /// Starts `n` of them; returns once each is online.
    fn start(n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (online_tx, online_rx) = mpsc::channel();
        let threads = (0..n)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let online_tx = online_tx.clone();
                thread::spawn(move || {
                    let online = online();
                    online_tx.send(()).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        drop(read_lock());
                        online.quiescent();
                        thread::yield_now();
                    }
                    // An ordinary reader from here until it exits: only
                    // once the measurements are over.
                    drop(online);
                })
            })
            .collect();
        for _ in 0..n {
            recv(&online_rx, "an online reader to go online");
        }
        OnlineReaders { stop, threads }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
    }
}

/// An ordinary reader: a thread that entered one read section, left it,
/// and stays alive (registered, outside any section) until dropped.
struct OrdinaryReader {
    exit: mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl OrdinaryReader {
    fn start() -> Self {
        let (registered_tx, registered_rx) = mpsc::channel();
        let (exit, exit_rx) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            drop(read_lock());
            registered_tx.send(()).unwrap();
            let _ = exit_rx.recv();
        });
        recv(&registered_rx, "the ordinary reader to register");
        OrdinaryReader { exit, thread }
    }

    /// Lets the thread exit and waits until it has (its registration goes
    /// with it).
    fn exit(self) {
        self.exit.send(()).unwrap();
        self.thread.join().unwrap();
    }
}

/// `GRACE_PERIODS` grace periods from the calling thread; what they did.
fn grace_periods() -> BarrierStats {
    let before = barrier_stats();
    for _ in 0..GRACE_PERIODS {
        synchronize_rcu();
    }
    let after = barrier_stats();
    BarrierStats {
        expedited: after.expedited - before.expedited,
        skipped: after.skipped - before.skipped,
    }
}

#[test]
fn with_only_online_readers_grace_periods_send_no_barrier_and_while_an_ordinary_reader_is_registered_they_do(
) {
    in_child_with_the_defaults(
        "with_only_online_readers_grace_periods_send_no_barrier_and_while_an_ordinary_reader_is_registered_they_do",
        || {
            // This thread waits for the grace periods and never enters a
            // read section: it is no reader at all, so its waits make no
            // thread ordinary (an online thread would be, for each wait).
            let readers = OnlineReaders::start(2);

            let online_only = grace_periods();
            assert_eq!(
                online_only.expedited, 0,
                "grace periods with online readers only sent the expedited barrier: \
                 {online_only:?}"
            );
            assert!(
                online_only.skipped >= GRACE_PERIODS,
                "each grace period skips the barrier at least once: {online_only:?}"
            );

            let ordinary = OrdinaryReader::start();
            let mixed = grace_periods();
            assert!(
                mixed.expedited >= GRACE_PERIODS,
                "grace periods with an ordinary reader registered must each send the \
                 barrier: {mixed:?}"
            );
            assert_eq!(mixed.skipped, 0, "{mixed:?}");

            // Its registration goes when it exits: online readers only again.
            ordinary.exit();
            let online_again = grace_periods();
            assert_eq!(
                online_again.expedited, 0,
                "grace periods sent the barrier after the only ordinary reader exited: \
                 {online_again:?}"
            );
            assert!(online_again.skipped >= GRACE_PERIODS, "{online_again:?}");

            readers.stop();
        },
    );
}

#[test]
fn a_grace_period_waited_for_from_an_online_thread_sends_the_barrier_as_the_thread_is_offline_for_the_wait(
) {
    in_child_with_the_defaults(
        "a_grace_period_waited_for_from_an_online_thread_sends_the_barrier_as_the_thread_is_offline_for_the_wait",
        || {
            let readers = OnlineReaders::start(1);
            let writer = thread::spawn(|| {
                let _online = online();
                let from_online = grace_periods();
                // An ordinary reader while it waits: offline, its sections
                // would fence with a compiler fence only.
                assert!(
                    from_online.expedited >= GRACE_PERIODS,
                    "grace periods waited for from an online thread: {from_online:?}"
                );
            });
            writer.join().unwrap();
            readers.stop();
        },
    );
}
