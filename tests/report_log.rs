//! With the `log` feature and no report handler set, reports go to the
//! `log` facade when the logger takes their level, and to stderr when it
//! does not. Each test plays its scenario in a child process, which installs
//! its own logger (a process has one).
#![cfg(feature = "log")]

mod common;

use common::{fail_a_notification, is_child, markers, run_child, HANG_LIMIT, MARKER};
use rcu_defer::virtio::{IrqNotifier, Notify};
use std::io;
use std::process::Output;

/// Prints each record as a marker line; a record whose message contains
/// "again" makes another report while the logger runs.
struct MarkingLogger;

impl log::Log for MarkingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        println!(
            "{MARKER}{} {} {}",
            record.target(),
            record.level(),
            record.args()
        );
        let message = record.args().to_string();
        if message.contains("again") {
            fail_a_notification();
        }
        if message.contains("boom") {
            panic!("a logger that fails");
        }
    }

    fn flush(&self) {}
}

static LOGGER: MarkingLogger = MarkingLogger;

fn report_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| line.starts_with("rcu-defer: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_report_goes_to_the_logger_at_its_level_and_not_to_stderr() {
    const TEST: &str = "a_report_goes_to_the_logger_at_its_level_and_not_to_stderr";
    if is_child(TEST) {
        log::set_logger(&LOGGER).unwrap();
        log::set_max_level(log::LevelFilter::Info);
        fail_a_notification();
        return;
    }
    let output = run_child(TEST, HANG_LIMIT);
    let seen = markers(&output);
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert!(
        seen[0].starts_with("rcu_defer ERROR a guest notification failed: the irqfd is gone"),
        "{seen:#?}"
    );
    assert_eq!(report_lines(&output), Vec::<String>::new());
}

#[test]
fn a_report_the_logger_filters_out_goes_to_stderr() {
    const TEST: &str = "a_report_the_logger_filters_out_goes_to_stderr";
    if is_child(TEST) {
        log::set_logger(&LOGGER).unwrap();
        log::set_max_level(log::LevelFilter::Off);
        fail_a_notification();
        return;
    }
    let output = run_child(TEST, HANG_LIMIT);
    assert_eq!(markers(&output), Vec::<String>::new());
    let lines = report_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("a guest notification failed"));
}

#[test]
fn a_report_made_while_the_logger_runs_goes_to_stderr() {
    const TEST: &str = "a_report_made_while_the_logger_runs_goes_to_stderr";
    if is_child(TEST) {
        log::set_logger(&LOGGER).unwrap();
        log::set_max_level(log::LevelFilter::Info);
        // The record's message contains the error "... try again ...": the
        // logger makes a report while it runs.
        struct TryAgain;
        impl Notify for TryAgain {
            fn signal(&self) -> io::Result<()> {
                Err(io::Error::new(io::ErrorKind::WouldBlock, "try again"))
            }
        }
        IrqNotifier::new(TryAgain).notify_now();
        return;
    }
    let output = run_child(TEST, HANG_LIMIT);
    let seen = markers(&output);
    assert_eq!(
        seen.len(),
        1,
        "the logger got the first report only: {seen:#?}"
    );
    assert!(seen[0].contains("try again"), "{seen:#?}");
    let lines = report_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("the irqfd is gone"), "{lines:#?}");
}

#[test]
fn a_logger_that_panics_is_caught_and_the_report_printed_on_stderr() {
    const TEST: &str = "a_logger_that_panics_is_caught_and_the_report_printed_on_stderr";
    if is_child(TEST) {
        std::panic::set_hook(Box::new(|_| {}));
        log::set_logger(&LOGGER).unwrap();
        log::set_max_level(log::LevelFilter::Info);
        struct Boom;
        impl Notify for Boom {
            fn signal(&self) -> io::Result<()> {
                Err(io::Error::other("boom"))
            }
        }
        IrqNotifier::new(Boom).notify_now(); // returns: nothing unwinds
        println!("{MARKER}survived");
        return;
    }
    let output = run_child(TEST, HANG_LIMIT);
    assert_eq!(
        markers(&output).last().map(String::as_str),
        Some("survived")
    );
    let lines = report_lines(&output);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].contains("a guest notification failed: boom"),
        "{lines:#?}"
    );
    assert!(
        lines[1].contains("the logger or subscriber panicked: a logger that fails"),
        "{lines:#?}"
    );
}
