//! Deadlock detection and stall reports: waiting for a grace period inside
//! one's own read section is refused, never a hang; a reader that holds a
//! grace period up for too long is named.
//!
//! All tests in this binary share one process. The stall tests change the
//! process-wide stall timeout and handler; they are serialized with each
//! other by `STALL_TESTS`, and the handler records every report so that each
//! test only looks at reports that name its own reader thread.

mod common;

use common::{hold_a_section, panic_text, recv, within, HANG_LIMIT};
use rcu_defer::{
    assert_may_block, drain_call_rcu, read_lock, set_stall_handler, set_stall_timeout,
    synchronize_rcu, synchronize_rcu_timeout, try_drain_call_rcu, try_synchronize_rcu, Error,
    RcuCell, ReadGuard, StallReport,
};
use std::panic::{catch_unwind, AssertUnwindSafe, Location};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Enters a section and returns its guard with the line of the `read_lock`
/// call (the location the library must report).
macro_rules! read_lock_here {
    () => {
        (read_lock(), line!())
    };
}

/// Checks `result` is `InReadSection` for `op`, at `depth`, entered at
/// `line` of this file.
#[track_caller]
fn assert_in_read_section(result: Result<(), Error>, op: &str, depth: usize, line: u32) {
    match result {
        Err(Error::InReadSection {
            op: got_op,
            depth: got_depth,
            entered_at,
        }) => {
            assert_eq!(got_op, op);
            assert_eq!(got_depth, depth);
            assert_eq!(
                (entered_at.file(), entered_at.line()),
                (file!(), line),
                "the error must name where the outermost section was entered"
            );
        }
        other => panic!("expected InReadSection for {op} at depth {depth}, got {other:?}"),
    }
}

/// Runs `f`, which must panic; returns the panic message.
fn panic_message_of(f: impl FnOnce()) -> String {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => panic!("expected a panic"),
        Err(payload) => panic_text(&*payload),
    }
}

/// Checks a deadlock panic message names the operation, the depth and the
/// location of the outermost section.
#[track_caller]
fn assert_names(message: &str, op: &str, depth: usize, line: u32) {
    let at = format!("{}:{line}:", file!());
    assert!(
        message.contains(op),
        "the message must name {op}: {message}"
    );
    assert!(
        message.contains(&at),
        "the message must name {at}: {message}"
    );
    assert!(
        message.contains(&format!("depth {depth}")),
        "the message must give depth {depth}: {message}"
    );
}

// ---------------------------------------------------------------------------
// try_ forms: an error at once.

#[test]
fn try_synchronize_rcu_at_depth_1_returns_in_read_section_with_the_entry_location() {
    within("try_synchronize depth 1", || {
        let (guard, line) = read_lock_here!();
        assert_in_read_section(try_synchronize_rcu(), "synchronize_rcu", 1, line);
        drop(guard);
        try_synchronize_rcu().expect("outside any section");
    });
}

#[test]
fn try_synchronize_rcu_at_depth_3_reports_depth_3_and_the_outermost_location() {
    within("try_synchronize depth 3", || {
        let (outer, line) = read_lock_here!();
        let middle = read_lock();
        let inner = read_lock();
        assert_in_read_section(try_synchronize_rcu(), "synchronize_rcu", 3, line);
        drop(inner);
        assert_in_read_section(try_synchronize_rcu(), "synchronize_rcu", 2, line);
        drop(middle);
        drop(outer);
        try_synchronize_rcu().expect("outside any section");
    });
}

#[test]
fn try_drain_call_rcu_at_depth_1_returns_in_read_section_with_the_entry_location() {
    within("try_drain depth 1", || {
        let (guard, line) = read_lock_here!();
        assert_in_read_section(try_drain_call_rcu(), "drain_call_rcu", 1, line);
        drop(guard);
        try_drain_call_rcu().expect("outside any section");
    });
}

#[test]
fn try_drain_call_rcu_at_depth_3_reports_depth_3_and_the_outermost_location() {
    within("try_drain depth 3", || {
        let (outer, line) = read_lock_here!();
        let _middle = read_lock();
        let _inner = read_lock();
        assert_in_read_section(try_drain_call_rcu(), "drain_call_rcu", 3, line);
        drop((_inner, _middle, outer));
        try_drain_call_rcu().expect("outside any section");
    });
}

/// Enters a nested section somewhere else: the report must still name the
/// outermost entry, not this one.
fn nested_elsewhere() -> (ReadGuard, &'static Location<'static>) {
    (read_lock(), Location::caller())
}

#[test]
fn the_reported_location_is_the_outermost_entry_not_a_nested_one() {
    within("outermost location", || {
        let (outer, line) = read_lock_here!();
        let (inner, inner_at) = nested_elsewhere();
        match try_synchronize_rcu() {
            Err(Error::InReadSection { entered_at, .. }) => {
                assert_eq!(entered_at.line(), line);
                assert_ne!(entered_at.line(), inner_at.line());
            }
            other => panic!("{other:?}"),
        }
        drop(inner);
        drop(outer);
        // A new outermost section reports its own location.
        let (again, line2) = read_lock_here!();
        assert_in_read_section(try_synchronize_rcu(), "synchronize_rcu", 1, line2);
        drop(again);
    });
}

#[test]
fn synchronize_rcu_timeout_inside_a_section_returns_in_read_section_at_once() {
    within("timeout in section", || {
        let (guard, line) = read_lock_here!();
        // A long limit: if the check were missing, this would wait it out.
        let result = synchronize_rcu_timeout(Duration::from_secs(3600));
        assert_in_read_section(result, "synchronize_rcu_timeout", 1, line);
        drop(guard);
    });
}

// ---------------------------------------------------------------------------
// Plain forms: a panic naming the operation and the location.

#[test]
fn synchronize_rcu_inside_a_section_panics_naming_the_operation_and_location() {
    within("synchronize panics", || {
        let (outer, line) = read_lock_here!();
        let inner = read_lock();
        let message = panic_message_of(synchronize_rcu);
        assert_names(&message, "synchronize_rcu", 2, line);
        // The guards survived the caught panic; the section is still open.
        assert_eq!(rcu_defer::read_depth(), 2);
        drop(inner);
        drop(outer);
        synchronize_rcu();
    });
}

#[test]
fn drain_call_rcu_inside_a_section_panics_naming_the_operation_and_location() {
    within("drain panics", || {
        let (guard, line) = read_lock_here!();
        let message = panic_message_of(drain_call_rcu);
        assert_names(&message, "drain_call_rcu", 1, line);
        drop(guard);
        drain_call_rcu();
    });
}

#[test]
fn assert_may_block_inside_a_section_panics_naming_the_operation_and_location() {
    within("assert_may_block panics", || {
        let (outer, line) = read_lock_here!();
        let _a = read_lock();
        let _b = read_lock();
        let message = panic_message_of(|| assert_may_block("flush_to_disk"));
        assert_names(&message, "flush_to_disk", 3, line);
        drop((_b, _a, outer));
        assert_may_block("flush_to_disk");
    });
}

#[test]
fn replace_sync_inside_a_section_panics_and_changes_nothing() {
    within("replace_sync panics", || {
        let cell = RcuCell::new(1u32);
        let (guard, line) = read_lock_here!();
        let message = panic_message_of(|| {
            cell.replace_sync(2);
        });
        assert_names(&message, "replace_sync", 1, line);
        assert_eq!(
            *cell.read(&guard),
            1,
            "replace_sync changed the value before panicking"
        );
        drop(guard);
        assert_eq!(cell.replace_sync(3), 1);
    });
}

#[test]
fn outside_a_section_every_waiting_operation_is_ok() {
    within("outside", || {
        assert_may_block("anything");
        try_synchronize_rcu().unwrap();
        try_drain_call_rcu().unwrap();
        synchronize_rcu_timeout(HANG_LIMIT).unwrap();
        synchronize_rcu();
        drain_call_rcu();
        // Also after having been in and out of a section.
        drop(read_lock());
        assert_may_block("anything");
        try_synchronize_rcu().unwrap();
        try_drain_call_rcu().unwrap();
    });
}

#[test]
fn a_section_on_another_thread_is_no_deadlock_for_this_one() {
    within("other thread's section", || {
        let reader = hold_a_section(Duration::from_millis(100));
        assert_may_block("not in a section here");
        try_synchronize_rcu().expect("another thread's section only delays this call");
        assert!(reader.has_left());
        reader.join();
    });
}

// ---------------------------------------------------------------------------
// Stall reports.

/// Serializes the tests that change the stall timeout and handler.
static STALL_TESTS: Mutex<()> = Mutex::new(());
/// Every report the handler received.
static REPORTS: Mutex<Vec<StallReport>> = Mutex::new(Vec::new());

fn record_report(report: &StallReport) {
    REPORTS.lock().unwrap().push(report.clone());
}

/// The recorded reports that name the thread `name`.
fn reports_naming(name: &str) -> Vec<StallReport> {
    REPORTS
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.readers().iter().any(|x| x.thread_name() == Some(name)))
        .cloned()
        .collect()
}

/// A named reader that enters a section at depth 2, holds it `hold`, sets
/// `left`, and leaves. Returns its handle and the line of its outermost
/// `read_lock`.
fn named_reader(
    name: &str,
    hold: Duration,
    left: &Arc<AtomicBool>,
) -> (thread::JoinHandle<()>, u32) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let left = Arc::clone(left);
    let handle = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let (outer, line) = read_lock_here!();
            let inner = read_lock();
            entered_tx.send(line).unwrap();
            thread::sleep(hold);
            left.store(true, Ordering::Relaxed);
            drop(inner);
            drop(outer);
        })
        .unwrap();
    let line = recv(&entered_rx, "the named reader to enter");
    (handle, line)
}

#[test]
fn a_stalled_grace_period_calls_the_stall_handler_once_naming_the_reader_and_keeps_waiting() {
    let _serial = STALL_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    within("stall report", || {
        const NAME: &str = "stall-test-reader";
        let timeout = Duration::from_millis(300);
        set_stall_handler(record_report);
        set_stall_timeout(Some(timeout));
        let left = Arc::new(AtomicBool::new(false));
        let (reader, line) = named_reader(NAME, Duration::from_millis(1500), &left);
        synchronize_rcu();
        // The grace period kept waiting after the report.
        assert!(
            left.load(Ordering::Relaxed),
            "synchronize_rcu gave up on a stalled reader"
        );
        reader.join().unwrap();
        set_stall_timeout(Some(Duration::from_secs(21)));

        // Only one grace period at a time can wait for this section, and it
        // reports once.
        let reports = reports_naming(NAME);
        assert_eq!(
            reports.len(),
            1,
            "expected one report naming {NAME}: {reports:#?}"
        );
        let report = &reports[0];
        assert!(report.waited() >= timeout, "{report}");
        let stalled = report
            .readers()
            .iter()
            .find(|r| r.thread_name() == Some(NAME))
            .unwrap();
        assert_eq!(stalled.depth(), 2);
        let at = stalled.entered_at().expect("the entry location");
        assert_eq!((at.file(), at.line()), (file!(), line));
        assert!(stalled.in_section() >= timeout, "{stalled}");
        assert!(
            stalled.thread_id().contains("ThreadId"),
            "{}",
            stalled.thread_id()
        );
        let text = report.to_string();
        assert!(
            text.contains(NAME) && text.contains(&format!("{}:{line}:", file!())),
            "the report's text names the thread and the location: {text}"
        );
    });
}

#[test]
fn no_stall_report_is_made_when_stall_reports_are_disabled() {
    let _serial = STALL_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    within("stall reports disabled", || {
        const NAME: &str = "no-stall-reader";
        set_stall_handler(record_report);
        set_stall_timeout(None);
        let left = Arc::new(AtomicBool::new(false));
        let (reader, _) = named_reader(NAME, Duration::from_millis(800), &left);
        synchronize_rcu();
        assert!(left.load(Ordering::Relaxed));
        reader.join().unwrap();
        set_stall_timeout(Some(Duration::from_secs(21)));
        let reports = reports_naming(NAME);
        assert!(
            reports.is_empty(),
            "stall reports were disabled: {reports:#?}"
        );
    });
}

#[test]
fn no_stall_report_is_made_for_a_reader_that_leaves_before_the_stall_timeout() {
    let _serial = STALL_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    within("no stall", || {
        const NAME: &str = "quick-reader";
        set_stall_handler(record_report);
        set_stall_timeout(Some(Duration::from_secs(20)));
        let left = Arc::new(AtomicBool::new(false));
        let (reader, _) = named_reader(NAME, Duration::from_millis(300), &left);
        synchronize_rcu();
        reader.join().unwrap();
        set_stall_timeout(Some(Duration::from_secs(21)));
        let reports = reports_naming(NAME);
        assert!(
            reports.is_empty(),
            "no grace period waited 20 s: {reports:#?}"
        );
    });
}

// ---------------------------------------------------------------------------
// Deadlock panics point at the caller's line.

std::thread_local! {
    /// Where the last panic on this thread was located, as the panic hook
    /// saw it.
    static PANICKED_AT: std::cell::RefCell<Option<(String, u32)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f`, which must panic; returns the file and line the panic was
/// located at (the `Location` a panic hook receives, which is what a user
/// sees in "panicked at ...").
fn panic_location_of(f: impl FnOnce()) -> (String, u32) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(at) = info.location() {
                let seen = (at.file().to_owned(), at.line());
                PANICKED_AT.with(|p| *p.borrow_mut() = Some(seen));
            }
            default(info);
        }));
    });
    PANICKED_AT.with(|p| p.borrow_mut().take());
    panic_message_of(f);
    PANICKED_AT
        .with(|p| p.borrow_mut().take())
        .expect("the hook saw the panic")
}

#[test]
fn deadlock_panics_are_located_at_the_callers_line_not_inside_the_library() {
    within("caller locations", || {
        let cell = RcuCell::new(1u32);
        let guard = read_lock();
        let here = |line| (file!().to_owned(), line);
        let line = line!() + 1;
        assert_eq!(panic_location_of(|| synchronize_rcu()), here(line));
        let line = line!() + 1;
        assert_eq!(panic_location_of(|| drain_call_rcu()), here(line));
        let replace_sync = || drop(cell.replace_sync(2).to_string());
        let line = line!() - 1;
        assert_eq!(panic_location_of(replace_sync), here(line));
        let retired = cell.replace_retired(3);
        let line = line!() + 1;
        assert_eq!(panic_location_of(|| _ = retired.wait()), here(line));
        let line = line!() + 1;
        assert_eq!(panic_location_of(|| assert_may_block("io")), here(line));
        #[cfg(target_os = "linux")]
        {
            let eventfd = rcu_defer::virtio::EventFd::new().unwrap();
            let line = line!() + 1;
            let at = panic_location_of(|| drop(eventfd.wait(Some(Duration::from_secs(5)))));
            assert_eq!(at, here(line));
        }
        drop(guard);
    });
}

#[cfg(target_os = "linux")]
#[test]
fn eventfd_wait_inside_a_section_panics_naming_it_unless_it_cannot_block() {
    within("EventFd::wait in a section", || {
        let eventfd = rcu_defer::virtio::EventFd::new().unwrap();
        let (guard, line) = read_lock_here!();
        let message = panic_message_of(|| drop(eventfd.wait(None)));
        assert_names(&message, "EventFd::wait", 1, line);
        // What goes wrong is not a wait for the section's end (as for a
        // grace period) but what the open section holds back.
        assert!(
            !message.contains("wait for that section to end"),
            "{message}"
        );
        assert!(
            message.contains("holds 0 queued guest notification(s)"),
            "{message}"
        );
        assert!(message.contains("never writes it"), "{message}");
        assert!(message.contains("every grace period"), "{message}");
        // With a notification queued, the message counts it.
        let irq = rcu_defer::virtio::IrqNotifier::new(rcu_defer::virtio::EventFd::new().unwrap());
        irq.notify();
        let message = panic_message_of(|| drop(eventfd.wait(Some(Duration::from_secs(5)))));
        assert_names(&message, "EventFd::wait", 1, line);
        assert!(
            message.contains("holds 1 queued guest notification(s)"),
            "{message}"
        );
        // A zero timeout is a poll: it never blocks, so it is allowed.
        assert_eq!(eventfd.wait(Some(Duration::ZERO)).unwrap(), 0);
        drop(guard);
        assert_eq!(
            irq.notifier().consume().unwrap(),
            1,
            "sent as the section ended"
        );
        eventfd.signal().unwrap();
        assert_eq!(eventfd.wait(None).unwrap(), 1);
    });
}
