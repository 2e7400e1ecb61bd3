//! Claims about stall reports and `synchronize_rcu_timeout`.
//!
//! The stall handler and timeout are process-wide, so these tests take a
//! lock and restore the defaults when done.

use rcu_defer::{
    read_lock, set_stall_handler, set_stall_timeout, synchronize_rcu, synchronize_rcu_timeout,
    Error, StallReport,
};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());
static REPORTS: Mutex<Vec<StallReport>> = Mutex::new(Vec::new());

fn collect(report: &StallReport) {
    REPORTS.lock().unwrap().push(report.clone());
}

/// Serializes the tests and resets the stall settings around each.
struct Settings(#[allow(dead_code)] MutexGuard<'static, ()>);

impl Settings {
    fn new(timeout: Option<Duration>) -> Settings {
        let lock = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        REPORTS.lock().unwrap().clear();
        set_stall_handler(collect);
        set_stall_timeout(timeout);
        Settings(lock)
    }
}

impl Drop for Settings {
    fn drop(&mut self) {
        set_stall_timeout(Some(Duration::from_secs(21)));
        set_stall_handler(|r| eprintln!("rcu-defer: stall: {r}"));
    }
}

/// Spawns a thread named `name` that holds a read section at depth 2 for
/// `hold`; returns once the section is entered, with the line of the outer
/// `read_lock` and the thread's handle.
fn stuck_reader(name: &str, hold: Duration) -> (u32, thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let handle = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let line = line!() + 1;
            let outer = read_lock();
            let inner = read_lock();
            tx.send(line).unwrap();
            thread::sleep(hold);
            drop(inner);
            drop(outer);
        })
        .unwrap();
    (rx.recv().unwrap(), handle)
}

#[test]
fn a_stalled_grace_period_reports_the_stuck_reader_once_and_keeps_waiting() {
    let _settings = Settings::new(Some(Duration::from_millis(200)));
    let (line, reader) = stuck_reader("stuck-reader", Duration::from_millis(1200));
    let start = Instant::now();
    synchronize_rcu();
    let waited = start.elapsed();
    reader.join().unwrap();
    assert!(
        waited >= Duration::from_millis(1000),
        "returned after {waited:?}"
    );

    let reports = REPORTS.lock().unwrap();
    assert_eq!(reports.len(), 1, "one report per stall: {reports:?}");
    let report = &reports[0];
    assert!(report.waited() >= Duration::from_millis(200));
    let stuck: Vec<_> = report
        .readers()
        .iter()
        .filter(|r| r.thread_name() == Some("stuck-reader"))
        .collect();
    assert_eq!(stuck.len(), 1, "the report names the reader: {report}");
    let r = stuck[0];
    assert_eq!(r.depth(), 2);
    assert!(!r.thread_exited());
    let at = r.entered_at().expect("entry location");
    assert_eq!((at.file(), at.line()), (file!(), line));
    assert!(r.in_section() >= Duration::from_millis(200));
    assert!(r.thread_id().starts_with("ThreadId("));

    let text = report.to_string();
    assert!(text.contains("stuck-reader"), "{text}");
    assert!(text.contains(&format!("{}:{line}:", file!())), "{text}");
    assert!(text.contains("depth 2"), "{text}");
}

#[test]
fn no_report_when_readers_are_busy_but_leave_in_time() {
    let _settings = Settings::new(Some(Duration::from_millis(500)));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _g = read_lock();
                    thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        synchronize_rcu();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(REPORTS.lock().unwrap().is_empty());
}

#[test]
fn a_disabled_stall_timeout_reports_nothing() {
    let _settings = Settings::new(None);
    let (_, reader) = stuck_reader("quiet-reader", Duration::from_millis(400));
    synchronize_rcu();
    reader.join().unwrap();
    assert!(REPORTS.lock().unwrap().is_empty());
}

#[test]
fn synchronize_rcu_timeout_gives_up_after_about_the_limit_with_a_report() {
    let _settings = Settings::new(Some(Duration::from_secs(60)));
    let (line, reader) = stuck_reader("slow-reader", Duration::from_millis(1500));
    let start = Instant::now();
    let result = synchronize_rcu_timeout(Duration::from_millis(300));
    let took = start.elapsed();
    let Err(Error::Timeout(report)) = result else {
        panic!("expected a timeout, got {result:?}");
    };
    assert!(took >= Duration::from_millis(300), "gave up after {took:?}");
    assert!(took < Duration::from_secs(10), "gave up after {took:?}");
    let r = report
        .readers()
        .iter()
        .find(|r| r.thread_name() == Some("slow-reader"))
        .unwrap_or_else(|| panic!("the report names the reader: {report}"));
    assert_eq!(r.entered_at().map(|l| l.line()), Some(line));
    let message = Error::Timeout(report.clone()).to_string();
    assert!(
        message.contains("time limit") && message.contains("slow-reader"),
        "{message}"
    );

    // Nothing is left half done: a later grace period completes once the
    // reader leaves, and readers are unaffected.
    synchronize_rcu();
    reader.join().unwrap();
    assert!(synchronize_rcu_timeout(Duration::from_secs(30)).is_ok());
    {
        let _g = read_lock();
    }
    synchronize_rcu();
}

#[test]
fn concurrent_timeouts_and_plain_waits_all_complete_once_the_reader_leaves() {
    let _settings = Settings::new(Some(Duration::from_secs(60)));
    let (_, reader) = stuck_reader("holder", Duration::from_millis(800));
    let waiters: Vec<_> = (0..4)
        .map(|i| {
            thread::spawn(move || {
                if i % 2 == 0 {
                    synchronize_rcu_timeout(Duration::from_millis(100)).is_err()
                } else {
                    synchronize_rcu();
                    false
                }
            })
        })
        .collect();
    let timed_out: Vec<bool> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
    reader.join().unwrap();
    assert_eq!(timed_out, [true, false, true, false]);
    synchronize_rcu();
}

static HANDLER_READ: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A handler that enters a read section on the writer's thread (its first,
/// which registers the thread): it must not find the library's locks held.
fn handler_that_reads(report: &StallReport) {
    let guard = read_lock();
    drop(guard);
    HANDLER_READ.store(true, std::sync::atomic::Ordering::SeqCst);
    collect(report);
}

#[test]
fn a_stall_handler_may_enter_a_read_section() {
    let _settings = Settings::new(Some(Duration::from_millis(100)));
    set_stall_handler(handler_that_reads);
    let (_, reader) = stuck_reader("held", Duration::from_millis(600));
    // A fresh thread, so that the handler's read_lock is its first.
    let writer = thread::spawn(synchronize_rcu);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(writer.join()).unwrap());
    rx.recv_timeout(Duration::from_secs(30))
        .expect("synchronize_rcu hung: the handler found a lock held")
        .unwrap();
    reader.join().unwrap();
    assert!(HANDLER_READ.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(REPORTS.lock().unwrap().len(), 1);
}

static FROM_HANDLER: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A handler that (wrongly) waits for a grace period itself.
fn handler_that_waits(_: &StallReport) {
    let outcome = match rcu_defer::try_synchronize_rcu() {
        Err(Error::InStallHandler { op }) => format!("refused {op}"),
        other => format!("{other:?}"),
    };
    let drain = match rcu_defer::try_drain_call_rcu() {
        Err(e) => e.to_string(),
        Ok(()) => "drained".to_owned(),
    };
    FROM_HANDLER.lock().unwrap().extend([outcome, drain]);
}

#[test]
fn waiting_for_a_grace_period_from_the_stall_handler_is_refused_not_a_hang() {
    let _settings = Settings::new(Some(Duration::from_millis(100)));
    set_stall_handler(handler_that_waits);
    let (_, reader) = stuck_reader("held-too", Duration::from_millis(500));
    let writer = thread::spawn(synchronize_rcu);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(writer.join()).unwrap());
    rx.recv_timeout(Duration::from_secs(30))
        .expect("synchronize_rcu hung: the handler waited for its own grace period")
        .unwrap();
    reader.join().unwrap();
    let seen = FROM_HANDLER.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], "refused synchronize_rcu");
    assert!(
        seen[1].contains("drain_call_rcu was called from the stall handler"),
        "{seen:?}"
    );
    // Outside the handler, waiting works again.
    synchronize_rcu();
}
