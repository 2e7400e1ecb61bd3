//! Reports reach the report handler (`set_report_handler`), the handler can
//! use rcu-defer and can neither recurse without end nor unwind into the
//! library, and the stall handler takes closures.
//!
//! Handlers are process-wide and some reports are made once per process, so
//! each test plays its scenario in a child process of its own and checks
//! what the child printed: its handler's findings as marker lines on stdout,
//! the library's reports on stderr.

mod common;

use common::{child_command, fail_a_notification, is_child, markers, HANG_LIMIT, MARKER};
use rcu_defer::virtio::{IrqNotifier, Notify};
use rcu_defer::{
    call_local_fn, call_rcu, defer_scope, drain_call_rcu, read_lock, set_report_handler,
    set_stall_handler, set_stall_timeout, synchronize_rcu, Report, ReportKind, Severity,
    StallReport,
};
use std::io;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Runs `test`'s child with `env` and returns its output, once it has
/// passed.
fn run_child(test: &str, env: &[(&str, &str)]) -> Output {
    let mut command: Command = child_command(test);
    for (key, value) in env {
        command.env(key, value);
    }
    common::passing_child(command, HANG_LIMIT)
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The library's report lines on stderr.
fn report_lines(output: &Output) -> Vec<String> {
    stderr_of(output)
        .lines()
        .filter(|line| line.starts_with("rcu-defer: "))
        .map(str::to_owned)
        .collect()
}

/// Prints a marker line with a report's kind, severity and first line.
fn mark(report: &Report) {
    let first_line = report.message().lines().next().unwrap_or("");
    println!(
        "{MARKER}{:?}|{:?}|{first_line}",
        report.kind(),
        report.severity()
    );
}

#[test]
fn every_kind_of_report_reaches_the_handler_and_none_is_printed() {
    const TEST: &str = "every_kind_of_report_reaches_the_handler_and_none_is_printed";
    if is_child(TEST) {
        std::panic::set_hook(Box::new(|_| {}));
        set_report_handler(mark);
        // Config: RCU_DEFER_FLAVOR is unusable (the parent set it); the
        // flavor is decided by the first read section.
        drop(read_lock());
        // CallbackPanicked
        call_rcu(|| panic!("a callback that fails"));
        drain_call_rcu();
        // NotifyFailed
        fail_a_notification();
        // Stall, through the default stall handler.
        set_stall_timeout(Some(Duration::from_millis(50)));
        let reader = common::hold_a_section(Duration::from_millis(400));
        synchronize_rcu();
        reader.join();
        // ExitInSection: a thread exits inside a defer scope with a call
        // pending, then one inside a read section (whose section never ends:
        // last).
        thread::spawn(|| {
            std::mem::forget(defer_scope());
            call_local_fn(|| {});
        })
        .join()
        .unwrap();
        thread::spawn(|| std::mem::forget(read_lock()))
            .join()
            .unwrap();
        return;
    }
    let output = run_child(TEST, &[("RCU_DEFER_FLAVOR", "bogus")]);
    let seen = markers(&output);
    for (kind, severity, text) in [
        ("Config", "Warning", "RCU_DEFER_FLAVOR must be"),
        ("CallbackPanicked", "Error", "a callback that fails"),
        ("NotifyFailed", "Error", "the irqfd is gone"),
        ("Stall", "Warning", "stall: a grace period has waited"),
        ("ExitInSection", "Warning", "exiting inside a defer scope"),
        ("ExitInSection", "Warning", "exiting inside a read section"),
    ] {
        assert!(
            seen.iter()
                .any(|m| { m.starts_with(&format!("{kind}|{severity}|")) && m.contains(text) }),
            "no {kind} report ({severity}) containing {text:?} reached the handler: {seen:#?}"
        );
    }
    assert_eq!(
        report_lines(&output),
        Vec::<String>::new(),
        "with a handler set, nothing goes to stderr"
    );
}

#[test]
fn without_a_handler_reports_are_printed_on_stderr() {
    const TEST: &str = "without_a_handler_reports_are_printed_on_stderr";
    if is_child(TEST) {
        fail_a_notification();
        return;
    }
    let output = run_child(TEST, &[]);
    let lines = report_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with("rcu-defer: a guest notification failed: the irqfd is gone"),
        "{lines:#?}"
    );
}

#[test]
fn the_handler_runs_under_no_lock_of_the_library_and_may_use_it() {
    // The flavor is decided under a lock, and an unusable RCU_DEFER_FLAVOR
    // is reported: a handler that runs under that lock and asks for the
    // flavor waits for itself. The child hangs then, and the parent kills
    // it.
    const TEST: &str = "the_handler_runs_under_no_lock_of_the_library_and_may_use_it";
    if is_child(TEST) {
        std::panic::set_hook(Box::new(|_| {}));
        set_report_handler(|report| {
            let flavor = rcu_defer::flavor();
            // Takes the lock under which the flavor is decided.
            rcu_defer::set_flavor(flavor).unwrap();
            drop(read_lock());
            call_rcu(|| {});
            if !rcu_defer::in_read_section() {
                // Refused with an error if this is the stall handler's
                // thread in the middle of a grace period; never a hang.
                let _ = rcu_defer::try_synchronize_rcu();
            }
            println!("{MARKER}{:?} under {flavor}", report.kind());
        });
        drop(read_lock()); // decides the flavor: a Config report
        call_rcu(|| panic!("a callback that fails")); // reported on rcu-call
        drain_call_rcu();
        fail_a_notification();
        return;
    }
    let output = run_child(TEST, &[("RCU_DEFER_FLAVOR", "bogus")]);
    let seen = markers(&output);
    for kind in ["Config", "CallbackPanicked", "NotifyFailed"] {
        assert!(
            seen.iter()
                .any(|m| m.starts_with(&format!("{kind} under "))),
            "{kind} did not reach the handler: {seen:#?}"
        );
    }
}

#[test]
fn a_report_made_while_the_handler_runs_goes_to_stderr_not_back_to_the_handler() {
    // The handler makes a report of its own (a logger that fails, say):
    // delivered to the handler again, it would make another one, and so on
    // until the stack overflows.
    const TEST: &str =
        "a_report_made_while_the_handler_runs_goes_to_stderr_not_back_to_the_handler";
    if is_child(TEST) {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        set_report_handler(|report| {
            CALLS.fetch_add(1, Ordering::SeqCst);
            println!("{MARKER}handled: {report}");
            fail_a_notification();
        });
        fail_a_notification();
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
        // The handler is still in place for the next report.
        fail_a_notification();
        assert_eq!(CALLS.load(Ordering::SeqCst), 2);
        return;
    }
    let output = run_child(TEST, &[]);
    assert_eq!(markers(&output).len(), 2, "{:#?}", markers(&output));
    let lines = report_lines(&output);
    assert_eq!(
        lines.len(),
        2,
        "each report made by the handler is printed: {lines:#?}"
    );
    assert!(lines
        .iter()
        .all(|l| l.contains("a guest notification failed")));
}

#[test]
fn a_panicking_handler_is_caught_and_its_report_printed_on_stderr() {
    const TEST: &str = "a_panicking_handler_is_caught_and_its_report_printed_on_stderr";
    if is_child(TEST) {
        std::panic::set_hook(Box::new(|_| {}));
        set_report_handler(|report| panic!("a handler that fails on: {report}"));
        fail_a_notification(); // returns: the panic does not reach the caller
                               // On the rcu-call thread: it survives and runs later callbacks.
        call_rcu(|| panic!("a callback that fails"));
        drain_call_rcu();
        let (tx, rx) = std::sync::mpsc::channel();
        call_rcu(move || tx.send(()).unwrap());
        drain_call_rcu();
        rx.try_recv()
            .expect("a callback after the handler's panic ran");
        println!("{MARKER}survived");
        return;
    }
    let output = run_child(TEST, &[]);
    assert_eq!(markers(&output), ["survived"]);
    let stderr = stderr_of(&output);
    for text in [
        "rcu-defer: a guest notification failed: the irqfd is gone",
        "rcu-defer: a call_rcu callback panicked: a callback that fails",
        "rcu-defer: the report handler panicked: a handler that fails on: a guest",
        "rcu-defer: the report handler panicked: a handler that fails on: a call_rcu",
    ] {
        assert!(
            stderr.contains(text),
            "{text:?} is not on stderr:\n{stderr}"
        );
    }
}

#[test]
fn a_stall_handler_closure_gets_the_stall_reports() {
    const TEST: &str = "a_stall_handler_closure_gets_the_stall_reports";
    if is_child(TEST) {
        let reports: Arc<Mutex<Vec<StallReport>>> = Arc::default();
        let into = Arc::clone(&reports);
        set_stall_handler(move |report| into.lock().unwrap().push(report.clone()));
        set_stall_timeout(Some(Duration::from_millis(50)));
        let reader = thread::Builder::new()
            .name("slow-reader".to_owned())
            .spawn(|| {
                let _guard = read_lock();
                thread::sleep(Duration::from_millis(400));
            })
            .unwrap();
        thread::sleep(Duration::from_millis(50));
        synchronize_rcu();
        reader.join().unwrap();
        let reports = reports.lock().unwrap();
        assert!(!reports.is_empty(), "the closure got no report");
        assert!(reports[0]
            .readers()
            .iter()
            .any(|r| r.thread_name() == Some("slow-reader")));
        return;
    }
    let output = run_child(TEST, &[]);
    assert_eq!(
        report_lines(&output),
        Vec::<String>::new(),
        "the stall went to the closure, not to the default"
    );
}

/// A value whose drop sets both handlers again: dropped while either
/// handler's lock is held, it would wait for that lock forever.
struct SetsHandlersOnDrop;

impl Drop for SetsHandlersOnDrop {
    fn drop(&mut self) {
        set_report_handler(|_| {});
        set_stall_handler(|_| {});
        println!("{MARKER}dropped");
    }
}

#[test]
fn a_replaced_handler_is_dropped_with_no_lock_held() {
    const TEST: &str = "a_replaced_handler_is_dropped_with_no_lock_held";
    if is_child(TEST) {
        let owned = SetsHandlersOnDrop;
        set_report_handler(move |_| {
            let _ = &owned;
        });
        set_report_handler(|_| {});
        let owned = SetsHandlersOnDrop;
        set_stall_handler(move |_| {
            let _ = &owned;
        });
        set_stall_handler(|_| {});
        return;
    }
    let output = run_child(TEST, &[]);
    assert_eq!(markers(&output), ["dropped", "dropped"]);
}

#[test]
fn a_report_displays_as_its_message() {
    let seen: Arc<Mutex<Option<(String, String)>>> = Arc::default();
    const TEST: &str = "a_report_displays_as_its_message";
    if is_child(TEST) {
        let into = Arc::clone(&seen);
        set_report_handler(move |report| {
            *into.lock().unwrap() = Some((report.to_string(), report.message().to_owned()));
        });
        fail_a_notification();
        let (shown, message) = seen.lock().unwrap().clone().expect("a report");
        assert_eq!(shown, message);
        assert!(
            message.starts_with("a guest notification failed"),
            "{message}"
        );
        assert!(Severity::Error > Severity::Warning && Severity::Warning > Severity::Info);
        assert_ne!(ReportKind::Stall, ReportKind::NotifyFailed);
        return;
    }
    run_child(TEST, &[]);
}

/// An error whose `Display` fails.
#[derive(Debug)]
struct BadDisplay;

impl std::fmt::Display for BadDisplay {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Err(std::fmt::Error)
    }
}

impl std::error::Error for BadDisplay {}

#[test]
fn a_report_whose_message_fails_to_format_is_made_with_what_was_formatted() {
    const TEST: &str = "a_report_whose_message_fails_to_format_is_made_with_what_was_formatted";
    if is_child(TEST) {
        struct FailsBadly;
        impl Notify for FailsBadly {
            fn signal(&self) -> io::Result<()> {
                Err(io::Error::other(BadDisplay))
            }
        }
        set_report_handler(mark);
        IrqNotifier::new(FailsBadly).notify_now(); // returns: nothing panics
        return;
    }
    let output = run_child(TEST, &[]);
    assert_eq!(
        markers(&output),
        ["NotifyFailed|Error|a guest notification failed: "]
    );
}
