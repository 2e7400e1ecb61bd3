//! Claims about deferred calls whose read section or defer scope is held by
//! a thread-local and so ends while the thread is exiting.
//!
//! Thread-local destructors run in the reverse order of first use. A
//! thread-local used before the thread's first `read_lock` and first
//! deferred call is destroyed after the library's own exit-time
//! thread-locals: its guard or scope ends the section after those have run,
//! and the calls recorded in it must still run then.

mod common;

use rcu_defer::virtio::{EventFd, IrqNotifier};
use rcu_defer::{call_local, call_local_fn, defer_scope, in_read_section, read_lock};
use rcu_defer::{DeferScope, ReadGuard, ReportKind};
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// The deferred function of the `call_local` calls: counts its runs.
fn bump(count: &AtomicUsize) {
    count.fetch_add(1, Ordering::SeqCst);
}

// `call_local` deduplicates by function address: one pointer value for
// every use (see its docs).
static BUMP: fn(&AtomicUsize) = bump;

/// What happened on the exiting thread, in order.
type Log = Arc<Mutex<Vec<String>>>;

/// Appends `entry` to `log`.
fn log(log: &Log, entry: impl Into<String>) {
    log.lock().unwrap().push(entry.into());
}

/// A read guard or defer scope held by a thread-local; when destroyed, it
/// logs that the section or scope is about to end, then ends it.
struct Held<G> {
    guard: Option<G>,
    log: Log,
}

impl<G> Drop for Held<G> {
    fn drop(&mut self) {
        log(&self.log, "the thread-local's section or scope ends");
        drop(self.guard.take());
    }
}

/// A thread-local whose destructor defers more calls (in the section that
/// is still open, and in a nested one of its own).
struct DefersOnDrop {
    count: Arc<AtomicUsize>,
    log: Log,
}

impl Drop for DefersOnDrop {
    fn drop(&mut self) {
        let log = Arc::clone(&self.log);
        call_local_fn(move || {
            let inside = in_read_section();
            self::log(&log, format!("late closure (inside a section: {inside})"));
        });
        let _nested = read_lock();
        call_local(BUMP, &self.count);
    }
}

/// A thread-local whose destructor opens a read section of its own, defers
/// calls in it and ends it.
struct SectionOnDrop {
    count: Arc<AtomicUsize>,
    log: Log,
}

impl Drop for SectionOnDrop {
    fn drop(&mut self) {
        let section = read_lock();
        record_calls(&self.count, &self.log);
        log(&self.log, "the destructor's section ends");
        drop(section);
    }
}

thread_local! {
    static SECTION_ON_DROP: RefCell<Option<SectionOnDrop>> = const { RefCell::new(None) };
    static HELD_GUARD: RefCell<Option<Held<ReadGuard>>> = const { RefCell::new(None) };
    static HELD_SCOPE: RefCell<Option<Held<DeferScope>>> = const { RefCell::new(None) };
    static DEFERS_ON_DROP: RefCell<Option<DefersOnDrop>> = const { RefCell::new(None) };
}

/// Records a `call_local` on `count` (plus a duplicate) and a
/// `call_local_fn` that logs whether it runs inside a read section. Logs
/// what `call_local` returned rather than asserting it: a panic in a
/// thread-local's destructor aborts the process.
fn record_calls(count: &Arc<AtomicUsize>, log: &Log) {
    let first = call_local(BUMP, count);
    let duplicate = call_local(BUMP, count);
    self::log(
        log,
        format!("recorded: {first}, duplicate recorded: {duplicate}"),
    );
    let log = Arc::clone(log);
    call_local_fn(move || {
        let inside = in_read_section();
        self::log(&log, format!("closure (inside a section: {inside})"));
    });
}

/// Runs `f` on a thread of its own named `name` and waits until the
/// thread has exited, its thread-local destructors included.
fn on_an_exiting_thread(name: &str, f: impl FnOnce() + Send + 'static) {
    let name = name.to_owned();
    common::within("a thread that exits with a held section", move || {
        thread::Builder::new()
            .name(name)
            .spawn(f)
            .expect("spawning a thread")
            .join()
            .expect("the exiting thread panicked");
    });
}

/// Expects the report that the thread named `name` exits inside a read
/// section (its guard is held by a thread-local destroyed later).
fn exit_in_section_report(name: &'static str) -> common::reports::Expected {
    common::reports::expect("a thread's exit inside a read section", move |report| {
        report.kind() == ReportKind::ExitInSection
            && report.message().contains(&format!("thread '{name}'"))
    })
}

/// Checks an [`exit_in_section_report`]: it names the section's depth and
/// where in this file it was entered.
fn check_exit_in_section_report(expected: &common::reports::Expected) {
    let report = expected.next();
    assert!(
        report.message().contains(concat!(
            "is exiting inside a read section (depth 1, entered at ",
            file!(),
            ":"
        )),
        "{report}"
    );
    assert!(expected.taken().is_empty(), "reported once");
}

#[test]
fn calls_deferred_in_a_section_held_by_a_thread_local_run_when_it_is_destroyed() {
    const NAME: &str = "held-section";
    let report = exit_in_section_report(NAME);
    let count = Arc::new(AtomicUsize::new(0));
    let log: Log = Arc::default();
    {
        let (count, log) = (Arc::clone(&count), Arc::clone(&log));
        on_an_exiting_thread(NAME, move || {
            // First use before the thread's first read_lock and deferred
            // call: destroyed after the library's exit-time thread-locals.
            HELD_GUARD.with(|held| assert!(held.borrow().is_none()));
            let guard = read_lock();
            HELD_GUARD.with(|held| {
                *held.borrow_mut() = Some(Held {
                    guard: Some(guard),
                    log: Arc::clone(&log),
                });
            });
            record_calls(&count, &log);
        });
    }
    assert_eq!(count.load(Ordering::SeqCst), 1, "the call_local ran once");
    assert_eq!(
        *log.lock().unwrap(),
        [
            "recorded: true, duplicate recorded: false",
            "the thread-local's section or scope ends",
            "closure (inside a section: false)",
        ]
    );
    check_exit_in_section_report(&report);
}

#[test]
fn calls_deferred_in_a_defer_scope_held_by_a_thread_local_run_when_it_is_destroyed() {
    let report = common::reports::expect("a thread's exit inside a defer scope", |report| {
        report.kind() == ReportKind::ExitInSection
            && report.message().contains("exiting inside a defer scope")
    });
    let count = Arc::new(AtomicUsize::new(0));
    let log: Log = Arc::default();
    {
        let (count, log) = (Arc::clone(&count), Arc::clone(&log));
        on_an_exiting_thread("held-scope", move || {
            HELD_SCOPE.with(|held| assert!(held.borrow().is_none()));
            let scope = defer_scope();
            HELD_SCOPE.with(|held| {
                *held.borrow_mut() = Some(Held {
                    guard: Some(scope),
                    log: Arc::clone(&log),
                });
            });
            record_calls(&count, &log);
        });
    }
    assert_eq!(count.load(Ordering::SeqCst), 1, "the call_local ran once");
    assert_eq!(
        *log.lock().unwrap(),
        [
            "recorded: true, duplicate recorded: false",
            "the thread-local's section or scope ends",
            "closure (inside a section: false)",
        ]
    );
    let report = report.next();
    assert!(
        report.message().starts_with(
            "a thread is exiting inside a defer scope (1 open) with 2 deferred call(s)"
        ),
        "{report}"
    );
}

#[test]
fn calls_deferred_by_a_later_destructor_inside_the_held_section_run_at_its_end() {
    const NAME: &str = "held-section-late-call";
    let report = exit_in_section_report(NAME);
    let count = Arc::new(AtomicUsize::new(0));
    let late_count = Arc::new(AtomicUsize::new(0));
    let log: Log = Arc::default();
    {
        let (count, late_count, log) = (
            Arc::clone(&count),
            Arc::clone(&late_count),
            Arc::clone(&log),
        );
        on_an_exiting_thread(NAME, move || {
            HELD_GUARD.with(|held| assert!(held.borrow().is_none()));
            let guard = read_lock();
            // First used after the guard's thread-local (destroyed before
            // it, inside its section) and before the first deferred call
            // (destroyed after the library's exit-time cleanup).
            DEFERS_ON_DROP.with(|d| {
                *d.borrow_mut() = Some(DefersOnDrop {
                    count: late_count,
                    log: Arc::clone(&log),
                });
            });
            HELD_GUARD.with(|held| {
                *held.borrow_mut() = Some(Held {
                    guard: Some(guard),
                    log: Arc::clone(&log),
                });
            });
            record_calls(&count, &log);
        });
    }
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(
        late_count.load(Ordering::SeqCst),
        1,
        "the late call ran once"
    );
    assert_eq!(
        *log.lock().unwrap(),
        [
            "recorded: true, duplicate recorded: false",
            "the thread-local's section or scope ends",
            "closure (inside a section: false)",
            "late closure (inside a section: false)",
        ]
    );
    check_exit_in_section_report(&report);
}

#[test]
fn an_irq_notification_in_a_section_held_by_a_thread_local_signals_the_guest_at_thread_exit() {
    const NAME: &str = "held-section-irq";
    let report = exit_in_section_report(NAME);
    let irq = IrqNotifier::new(EventFd::new().expect("an eventfd"));
    {
        let irq = Arc::clone(&irq);
        on_an_exiting_thread(NAME, move || {
            HELD_GUARD.with(|held| assert!(held.borrow().is_none()));
            let guard = read_lock();
            HELD_GUARD.with(|held| {
                *held.borrow_mut() = Some(Held {
                    guard: Some(guard),
                    log: Arc::default(),
                });
            });
            irq.notify();
            irq.notify();
        });
    }
    assert_eq!(irq.take_isr(), rcu_defer::virtio::ISR_QUEUE);
    let signals = irq.notifier().consume();
    assert_eq!(
        signals.as_ref().ok(),
        Some(&1),
        "the guest is signalled once (consume: {signals:?})"
    );
    let stats = irq.stats();
    assert_eq!(stats.requested, 2);
    assert_eq!(stats.signalled, 1, "one signal for the section");
    check_exit_in_section_report(&report);
}

#[test]
fn calls_deferred_in_a_section_opened_by_a_destructor_after_the_cleanup_run_at_its_end() {
    let count = Arc::new(AtomicUsize::new(0));
    let log: Log = Arc::default();
    {
        let (count, log) = (Arc::clone(&count), Arc::clone(&log));
        on_an_exiting_thread("section-after-cleanup", move || {
            // First used before the first deferred call: destroyed after
            // the library's exit-time cleanup, with no section open then.
            SECTION_ON_DROP.with(|d| {
                *d.borrow_mut() = Some(SectionOnDrop {
                    count: Arc::clone(&count),
                    log: Arc::clone(&log),
                });
            });
            let section = read_lock();
            call_local_fn(|| {});
            drop(section);
        });
    }
    assert_eq!(count.load(Ordering::SeqCst), 1, "the call_local ran once");
    assert_eq!(
        *log.lock().unwrap(),
        [
            "recorded: true, duplicate recorded: false",
            "the destructor's section ends",
            "closure (inside a section: false)",
        ]
    );
}
