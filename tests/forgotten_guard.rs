//! A thread that exits with a leaked (forgotten) read guard.
//!
//! Decision: this is *reported*, not repaired. Closing the section at thread
//! exit would be unsound when the guard lives in another thread-local that
//! is destroyed later (its destructor may still read through the guard), so
//! the section stays open: the library prints a report naming the thread and
//! where the section was entered, and every later grace period waits for it,
//! with stall reports and `synchronize_rcu_timeout` naming the exited
//! thread. This test is alone in its binary because the leaked section
//! blocks grace periods in this process forever.

mod common;

use rcu_defer::{synchronize_rcu_timeout, Error, ReportKind};
use std::thread;
use std::time::Duration;

#[test]
fn a_thread_that_exits_with_a_forgotten_guard_is_named_as_exited_in_the_report() {
    let exit_report = common::reports::expect("the leaky thread's exit", |report| {
        report.kind() == ReportKind::ExitInSection && report.message().contains("'leaky'")
    });
    let line = thread::Builder::new()
        .name("leaky".to_owned())
        .spawn(|| {
            let line = line!() + 1;
            std::mem::forget(rcu_defer::read_lock());
            line
        })
        .unwrap()
        .join()
        .unwrap();

    let result = synchronize_rcu_timeout(Duration::from_millis(200));
    let Err(Error::Timeout(report)) = result else {
        panic!("a leaked section must hold grace periods up, got {result:?}");
    };
    let reader = report
        .readers()
        .iter()
        .find(|r| r.thread_name() == Some("leaky"))
        .unwrap_or_else(|| panic!("the report names the exited thread: {report}"));
    assert!(reader.thread_exited());
    assert_eq!(reader.depth(), 1);
    let at = reader.entered_at().unwrap();
    assert_eq!((at.file(), at.line()), (file!(), line));
    assert!(report.to_string().contains("exited"), "{report}");
    // The exit itself was reported, naming the thread and the section's
    // entry, and saying that a leaked guard never ends it.
    let exit_report = exit_report.next();
    let message = exit_report.message();
    assert!(
        message.starts_with("thread 'leaky' (")
            && message.contains(&format!(
                "is exiting inside a read section (depth 1, entered at {}:{line}:",
                file!()
            ))
            && message.contains("a leaked guard never does"),
        "{message}"
    );
}
