//! Checks that the liburcu shim gives real read-side critical sections on
//! registered threads, so that the bench measures liburcu's read side as a
//! C user has it and not something that merely compiles. Only built when
//! liburcu was found (`cfg(peers_liburcu)`, set by build.rs).

#![cfg(peers_liburcu)]

use peers::liburcu::{MbReader, MembReader};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// How long a grace period is given to (wrongly) complete while a reader
/// is known to be inside its section. A slow machine can only make the
/// check weaker, never make it fail spuriously.
const MUST_STILL_WAIT: Duration = Duration::from_millis(200);

/// How long a grace period may take once nothing holds it up.
const MUST_FINISH: Duration = Duration::from_secs(20);

/// The operations the tests need, for both flavors.
trait Flavor: Copy {
    fn current() -> Self;
    fn read_lock_unlock_n(self, n: u64);
    fn with_read_lock(self, f: impl FnOnce());
    fn read_ongoing(self) -> bool;
    fn synchronize_rcu(self);
}

macro_rules! impl_flavor {
    ($reader:ty) => {
        impl Flavor for $reader {
            fn current() -> Self {
                <$reader>::current()
            }
            fn read_lock_unlock_n(self, n: u64) {
                <$reader>::read_lock_unlock_n(self, n)
            }
            fn with_read_lock(self, f: impl FnOnce()) {
                <$reader>::with_read_lock(self, f)
            }
            fn read_ongoing(self) -> bool {
                <$reader>::read_ongoing(self)
            }
            fn synchronize_rcu(self) {
                <$reader>::synchronize_rcu(self)
            }
        }
    };
}
impl_flavor!(MembReader);
impl_flavor!(MbReader);

/// The measured loop leaves no section open; a section is visible as one.
fn loop_is_balanced<F: Flavor>() {
    let reader = F::current();
    assert!(!reader.read_ongoing());
    reader.read_lock_unlock_n(100_000);
    assert!(!reader.read_ongoing(), "the loop left a section open");
    let mut inside = false;
    reader.with_read_lock(|| inside = reader.read_ongoing());
    assert!(inside, "with_read_lock did not enter a section");
    assert!(!reader.read_ongoing());
}

/// A grace period started while another thread is inside a section waits
/// for that section: the shim's sections are real and the thread is
/// registered with liburcu.
fn grace_period_waits_for_reader<F: Flavor + 'static>() {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let reader = thread::spawn(move || {
        let r = F::current();
        r.with_read_lock(|| {
            entered_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        });
    });
    entered_rx.recv().unwrap();

    let (done_tx, done_rx) = mpsc::channel();
    let writer = thread::spawn(move || {
        F::current().synchronize_rcu();
        done_tx.send(()).unwrap();
    });
    assert_eq!(
        done_rx.recv_timeout(MUST_STILL_WAIT),
        Err(mpsc::RecvTimeoutError::Timeout),
        "synchronize_rcu returned while a registered reader was inside its section"
    );
    release_tx.send(()).unwrap();
    done_rx
        .recv_timeout(MUST_FINISH)
        .expect("synchronize_rcu did not return after the reader left its section");
    reader.join().unwrap();
    writer.join().unwrap();
}

/// Threads that register and exit are unregistered (by the thread-local
/// destructor): later grace periods and registrations still work. A thread
/// that exited registered would leave liburcu's reader list pointing at
/// reused memory, which typically hangs the next grace period.
fn exited_threads_are_unregistered<F: Flavor + 'static>() {
    for _ in 0..50 {
        thread::spawn(|| F::current().read_lock_unlock_n(10))
            .join()
            .unwrap();
    }
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        F::current().synchronize_rcu();
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(MUST_FINISH)
        .expect("synchronize_rcu hung after registered threads exited");
}

#[test]
fn memb_loop_is_balanced() {
    loop_is_balanced::<MembReader>();
}

#[test]
fn mb_loop_is_balanced() {
    loop_is_balanced::<MbReader>();
}

#[test]
fn memb_grace_period_waits_for_reader() {
    grace_period_waits_for_reader::<MembReader>();
}

#[test]
fn mb_grace_period_waits_for_reader() {
    grace_period_waits_for_reader::<MbReader>();
}

#[test]
fn memb_exited_threads_are_unregistered() {
    exited_threads_are_unregistered::<MembReader>();
}

#[test]
fn mb_exited_threads_are_unregistered() {
    exited_threads_are_unregistered::<MbReader>();
}

#[test]
#[should_panic(expected = "synchronize_rcu inside a liburcu urcu-memb read section")]
fn memb_synchronize_inside_section_is_refused() {
    let r = MembReader::current();
    r.with_read_lock(|| r.synchronize_rcu());
}

/// urcu-qsbr, the counterpart of rcu-defer's online threads: a registered
/// thread holds up grace periods (its sections are empty) until it reports
/// a quiescent state; the shim's loop and offline calls are real.
#[test]
fn urcu_qsbr_grace_period_waits_for_an_online_thread_until_its_quiescent_state() {
    use peers::liburcu::QsbrReader;
    let (online_tx, online_rx) = mpsc::channel();
    let (report_tx, report_rx) = mpsc::channel::<()>();
    let reader = thread::spawn(move || {
        let r = QsbrReader::current();
        r.read_lock_unlock_n(1000);
        online_tx.send(()).unwrap();
        report_rx.recv().unwrap();
        r.quiescent_state();
        // Offline until the writer is done.
        r.offline(|| report_rx.recv().unwrap());
    });
    online_rx.recv().unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let writer = thread::spawn(move || {
        QsbrReader::current().synchronize_rcu();
        done_tx.send(()).unwrap();
    });
    assert!(
        done_rx.recv_timeout(MUST_STILL_WAIT).is_err(),
        "urcu-qsbr's grace period did not wait for an online thread"
    );
    report_tx.send(()).unwrap();
    done_rx
        .recv_timeout(MUST_FINISH)
        .expect("the quiescent state did not end the grace period");
    report_tx.send(()).unwrap();
    writer.join().unwrap();
    reader.join().unwrap();
}
