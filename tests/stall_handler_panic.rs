//! A stall handler that panics (a failing logger, a test harness's
//! handler) must not end a grace period early: the panic is caught and
//! reported, the grace period goes on waiting, and values retired under a
//! stalled reader are dropped only after that reader has left.
//!
//! The stall handler and timeout are process-wide, so these tests take a
//! lock; every test in this binary uses the same panicking handler.

mod common;

use common::{child_command, hold_a_section, is_child, output_within, within, HeldSection};
use rcu_defer::{
    call_rcu, drain_call_rcu, read_lock, set_stall_handler, set_stall_timeout, synchronize_rcu,
    synchronize_rcu_timeout, RcuCell, StallReport,
};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

static SERIAL: Mutex<()> = Mutex::new(());

/// How many times the handler has been called.
static HANDLER_CALLS: AtomicUsize = AtomicUsize::new(0);

fn panicking_handler(report: &StallReport) {
    HANDLER_CALLS.fetch_add(1, Ordering::SeqCst);
    panic!("a stall handler that fails: {report}");
}

/// How long a stalled reader holds its section, against the stall timeout:
/// the handler runs (and panics) well before the reader leaves.
const HOLD: Duration = Duration::from_millis(500);
const STALL_TIMEOUT: Duration = Duration::from_millis(100);

/// Serializes the tests, installs the panicking handler with a short stall
/// timeout, and counts the handler's calls from zero.
fn panicking_handler_installed_raw() -> MutexGuard<'static, ()> {
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    set_stall_handler(panicking_handler);
    set_stall_timeout(Some(STALL_TIMEOUT));
    HANDLER_CALLS.store(0, Ordering::SeqCst);
    serial
}

/// The test's part of the binary: the handler is installed as by
/// `panicking_handler_installed_raw`, and the reports of its panics
/// (rcu-defer catches each and reports it) come to the returned
/// `PanicReports` instead of stderr.
fn panicking_handler_installed() -> (MutexGuard<'static, ()>, PanicReports) {
    let serial = panicking_handler_installed_raw();
    let reports = common::reports::expect("the stall handler's panics", |report| {
        report.kind() == rcu_defer::ReportKind::CallbackPanicked
            && report.message().contains("a stall handler that fails")
    });
    (serial, PanicReports(reports))
}

/// The reports of the panicking handler's panics.
struct PanicReports(common::reports::Expected);

impl PanicReports {
    /// Checks that the handler's panics were reported, as caught panics of
    /// the stall handler that leave the grace period waiting (no more than
    /// it was called: a panic is counted before it is reported).
    fn check(&self) {
        let reports = self.0.taken();
        let calls = HANDLER_CALLS.load(Ordering::SeqCst);
        assert!(
            !reports.is_empty() && reports.len() <= calls,
            "{} report(s) of {calls} panic(s): {reports:?}",
            reports.len()
        );
        for report in &reports {
            assert!(
                report
                    .message()
                    .starts_with("the stall handler panicked: a stall handler that fails")
                    && report
                        .message()
                        .contains("the grace period goes on waiting"),
                "{report}"
            );
        }
    }
}

/// A value that records, when dropped, whether the reader holding it had
/// already left its section.
struct Watched {
    dropped: Arc<AtomicBool>,
    reader_left_first: Arc<AtomicBool>,
    reader: Arc<AtomicBool>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.reader_left_first
            .store(self.reader.load(Ordering::SeqCst), Ordering::SeqCst);
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// A cell whose first value is watched, and a reader thread that holds a
/// reference to that value for `HOLD`, checking that it is not dropped
/// under it.
struct Scenario {
    cell: Arc<RcuCell<Watched>>,
    dropped: Arc<AtomicBool>,
    reader_left_first: Arc<AtomicBool>,
    reader: thread::JoinHandle<bool>,
}

fn watched(reader: &Arc<AtomicBool>) -> (Watched, Arc<AtomicBool>, Arc<AtomicBool>) {
    let dropped = Arc::new(AtomicBool::new(false));
    let reader_left_first = Arc::new(AtomicBool::new(false));
    let value = Watched {
        dropped: Arc::clone(&dropped),
        reader_left_first: Arc::clone(&reader_left_first),
        reader: Arc::clone(reader),
    };
    (value, dropped, reader_left_first)
}

fn scenario() -> Scenario {
    let left = Arc::new(AtomicBool::new(false));
    let (value, dropped, reader_left_first) = watched(&left);
    let cell = Arc::new(RcuCell::new(value));
    let (entered_tx, entered_rx) = mpsc::channel();
    let reader = {
        let cell = Arc::clone(&cell);
        thread::spawn(move || {
            let guard = read_lock();
            let value = cell.read(&guard);
            entered_tx.send(()).unwrap();
            thread::sleep(HOLD);
            // Still inside the section: the value must still be alive.
            let intact = !value.dropped.load(Ordering::SeqCst);
            left.store(true, Ordering::SeqCst);
            drop(guard);
            intact
        })
    };
    entered_rx.recv().unwrap();
    Scenario {
        cell,
        dropped,
        reader_left_first,
        reader,
    }
}

impl Scenario {
    /// Joins the reader and checks that the watched value, if it has been
    /// dropped, was dropped only after the reader left.
    fn reader_saw_its_value_intact(self) {
        let intact = self.reader.join().unwrap();
        assert!(intact, "the value was dropped while the reader held it");
        if self.dropped.load(Ordering::SeqCst) {
            assert!(
                self.reader_left_first.load(Ordering::SeqCst),
                "the value was dropped before the reader left its section"
            );
        }
    }
}

#[test]
fn replace_sync_under_a_panicking_stall_handler_returns_the_old_value_after_the_reader_left() {
    let (_serial, reports) = panicking_handler_installed();
    within("replace_sync with a panicking stall handler", || {
        let s = scenario();
        let fresh = Arc::new(AtomicBool::new(true));
        let old = s.cell.replace_sync(watched(&fresh).0);
        assert!(!s.dropped.load(Ordering::SeqCst));
        drop(old);
        assert!(HANDLER_CALLS.load(Ordering::SeqCst) >= 1, "the handler ran");
        s.reader_saw_its_value_intact();
    });
    reports.check();
}

#[test]
fn replace_under_a_panicking_stall_handler_drops_the_old_value_only_after_the_reader_left() {
    let (_serial, reports) = panicking_handler_installed();
    within("replace with a panicking stall handler", || {
        let s = scenario();
        let fresh = Arc::new(AtomicBool::new(true));
        // The rcu-call thread runs the grace period, and the handler.
        s.cell.replace(watched(&fresh).0);
        drain_call_rcu();
        assert!(s.dropped.load(Ordering::SeqCst), "drained, so dropped");
        assert!(HANDLER_CALLS.load(Ordering::SeqCst) >= 1, "the handler ran");
        let reader_left_first = Arc::clone(&s.reader_left_first);
        s.reader_saw_its_value_intact();
        assert!(reader_left_first.load(Ordering::SeqCst));
        // The rcu-call thread survived: later callbacks run.
        let ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        call_rcu(move || flag.store(true, Ordering::SeqCst));
        drain_call_rcu();
        assert!(ran.load(Ordering::SeqCst));
    });
    reports.check();
}

#[test]
fn concurrent_synchronize_rcu_under_a_panicking_stall_handler_return_after_the_reader_and_later_ones_work(
) {
    let (_serial, reports) = panicking_handler_installed();
    within("synchronize_rcu with a panicking stall handler", || {
        let reader: HeldSection = hold_a_section(HOLD);
        let writers: Vec<_> = (0..3).map(|_| thread::spawn(synchronize_rcu)).collect();
        for writer in writers {
            writer.join().expect("synchronize_rcu must not panic");
        }
        assert!(
            reader.has_left(),
            "a grace period ended before the reader left"
        );
        reader.join();
        assert!(HANDLER_CALLS.load(Ordering::SeqCst) >= 1, "the handler ran");
        synchronize_rcu_timeout(Duration::from_secs(10)).expect("later grace periods complete");
    });
    reports.check();
}

#[test]
fn a_panicking_stall_handler_is_reported_on_stderr_once_per_stall() {
    const TEST: &str = "a_panicking_stall_handler_is_reported_on_stderr_once_per_stall";
    if is_child(TEST) {
        // The default report handler: the parent checks stderr.
        let _serial = panicking_handler_installed_raw();
        let reader = hold_a_section(HOLD);
        synchronize_rcu();
        reader.join();
        return;
    }
    let output = output_within(child_command(TEST), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let reports: Vec<&str> = stderr
        .split("rcu-defer: the stall handler panicked: ")
        .skip(1)
        .collect();
    assert_eq!(reports.len(), 1, "{stderr}");
    assert!(
        reports[0].starts_with("a stall handler that fails")
            && reports[0].contains("the grace period goes on waiting"),
        "the report carries the handler's message: {stderr}"
    );
}
