//! Claims about `call_local`, `call_local_fn` and defer scopes.

mod common;

use rcu_defer::{
    call_local, call_local_fn, defer_scope, drain_call_rcu, in_read_section, read_lock,
    synchronize_rcu,
};
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn bump(count: &AtomicUsize) {
    count.fetch_add(1, Ordering::SeqCst);
}

fn bump_twice(count: &AtomicUsize) {
    count.fetch_add(2, Ordering::SeqCst);
}

// `call_local` deduplicates by function address, and a function may have
// more than one (one per codegen unit; Miri gives each use its own): as its
// docs say, take each pointer once and pass that value everywhere.
static BUMP: fn(&AtomicUsize) = bump;
static BUMP_TWICE: fn(&AtomicUsize) = bump_twice;
static LOG_NAME: fn(&str) = log_name;
static RECORD_AGAIN_ONCE: fn(&AtomicUsize) = record_again_once;
static CHECK_OUTSIDE_SECTION: fn(&Mutex<Vec<bool>>) = check_outside_section;

thread_local! {
    static LOG: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn log(entry: impl Into<String>) {
    LOG.with(|l| l.borrow_mut().push(entry.into()));
}

fn take_log() -> Vec<String> {
    LOG.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

fn log_name(name: &str) {
    log(name);
}

#[test]
fn a_hundred_duplicates_record_one_call_that_runs_at_the_outermost_end() {
    let count = Arc::new(AtomicUsize::new(0));
    let guard = read_lock();
    assert!(call_local(BUMP, &count), "the first request records");
    for _ in 0..99 {
        assert!(!call_local(BUMP, &count), "a duplicate records nothing");
    }
    {
        let _inner = read_lock();
        assert!(!call_local(BUMP, &count));
    }
    assert_eq!(
        count.load(Ordering::SeqCst),
        0,
        "nothing runs before the outermost end"
    );
    drop(guard);
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[test]
fn outside_any_section_call_local_runs_at_once() {
    let count = Arc::new(AtomicUsize::new(0));
    assert!(call_local(BUMP, &count));
    assert!(
        call_local(BUMP, &count),
        "no dedup outside a section: both run"
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);
    let c = count.clone();
    call_local_fn(move || bump(&c));
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[test]
fn dedup_is_by_function_and_arc_identity() {
    let a = Arc::new(AtomicUsize::new(0));
    let b = Arc::new(AtomicUsize::new(0));
    let a_again = Arc::clone(&a);
    {
        let _g = read_lock();
        assert!(call_local(BUMP, &a));
        assert!(
            !call_local(BUMP, &a_again),
            "a clone of the same Arc is the same key"
        );
        assert!(call_local(BUMP, &b), "another Arc is another key");
        assert!(
            call_local(BUMP_TWICE, &a),
            "another function is another key"
        );
    }
    assert_eq!(a.load(Ordering::SeqCst), 3);
    assert_eq!(b.load(Ordering::SeqCst), 1);
}

#[test]
fn after_a_run_the_same_call_can_be_recorded_again() {
    let count = Arc::new(AtomicUsize::new(0));
    for round in 1..=3 {
        let _g = read_lock();
        assert!(call_local(BUMP, &count), "round {round} records afresh");
        assert!(!call_local(BUMP, &count));
        drop(_g);
        assert_eq!(count.load(Ordering::SeqCst), round);
    }
}

#[test]
fn pending_calls_run_in_first_recorded_order() {
    let first: Arc<str> = Arc::from("first");
    let second: Arc<str> = Arc::from("second");
    let third: Arc<str> = Arc::from("third");
    take_log();
    {
        let _g = read_lock();
        call_local(LOG_NAME, &first);
        call_local_fn(|| log("closure"));
        call_local(LOG_NAME, &second);
        call_local(LOG_NAME, &first); // duplicate: keeps its first position
        call_local(LOG_NAME, &third);
        call_local_fn(|| log("closure"));
    }
    assert_eq!(
        take_log(),
        ["first", "closure", "second", "third", "closure"]
    );
}

#[test]
fn a_pending_call_keeps_its_arc_alive_until_it_runs() {
    let count = Arc::new(AtomicUsize::new(0));
    let weak = Arc::downgrade(&count);
    let g = read_lock();
    call_local(BUMP, &count);
    drop(count);
    assert!(weak.upgrade().is_some(), "the pending call holds a clone");
    drop(g);
    assert!(
        weak.upgrade().is_none(),
        "the clone is released after the call ran"
    );
}

fn check_outside_section(seen: &Mutex<Vec<bool>>) {
    seen.lock().unwrap().push(in_read_section());
}

#[test]
fn a_callback_runs_after_the_thread_has_left_its_read_section() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    {
        let _outer = read_lock();
        let _inner = read_lock();
        call_local(CHECK_OUTSIDE_SECTION, &seen);
    }
    assert_eq!(*seen.lock().unwrap(), [false]);
}

#[test]
fn a_callback_may_wait_for_grace_periods_and_drain_callbacks() {
    let ok = Arc::new(AtomicUsize::new(0));
    {
        let _g = read_lock();
        let ok = ok.clone();
        call_local_fn(move || {
            synchronize_rcu();
            drain_call_rcu();
            ok.store(1, Ordering::SeqCst);
        });
    }
    assert_eq!(ok.load(Ordering::SeqCst), 1);
}

#[test]
fn a_callback_that_defers_more_runs_them_at_the_end_of_the_section_it_opens_or_at_once() {
    take_log();
    {
        let _g = read_lock();
        call_local_fn(|| {
            log("outer callback");
            {
                let _own = read_lock();
                call_local_fn(|| log("deferred by the callback's own section"));
                log("callback section body");
            }
            call_local_fn(|| log("made at once, outside any section"));
            log("outer callback end");
        });
    }
    assert_eq!(
        take_log(),
        [
            "outer callback",
            "callback section body",
            "deferred by the callback's own section",
            "made at once, outside any section",
            "outer callback end",
        ]
    );
}

thread_local! {
    static AGAIN_ARG: RefCell<Option<Arc<AtomicUsize>>> = const { RefCell::new(None) };
}

fn record_again_once(count: &AtomicUsize) {
    if count.fetch_add(1, Ordering::SeqCst) == 0 {
        let arg = AGAIN_ARG.with(|a| a.borrow().clone()).unwrap();
        let _g = read_lock();
        assert!(
            call_local(RECORD_AGAIN_ONCE, &arg),
            "the running call's key is no longer pending"
        );
    }
}

#[test]
fn a_callback_may_record_the_call_that_is_running_again() {
    let count = Arc::new(AtomicUsize::new(0));
    AGAIN_ARG.with(|a| *a.borrow_mut() = Some(count.clone()));
    {
        let _g = read_lock();
        call_local(RECORD_AGAIN_ONCE, &count);
    }
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[test]
fn scopes_and_guards_interleave_and_only_the_last_end_runs_the_calls() {
    let count = Arc::new(AtomicUsize::new(0));
    let now = || count.load(Ordering::SeqCst);

    // scope, then guard; the guard ends first.
    let scope = defer_scope();
    let guard = read_lock();
    call_local(BUMP, &count);
    drop(guard);
    assert_eq!(now(), 0, "the scope is still open");
    drop(scope);
    assert_eq!(now(), 1);

    // guard, then scope; the guard ends first (out of order).
    let guard = read_lock();
    let scope = defer_scope();
    call_local(BUMP, &count);
    drop(guard);
    assert_eq!(now(), 1, "the scope is still open");
    drop(scope);
    assert_eq!(now(), 2);

    // guard, then scope; the scope ends first.
    let guard = read_lock();
    let scope = defer_scope();
    call_local(BUMP, &count);
    drop(scope);
    assert_eq!(now(), 2, "the read section is still open");
    drop(guard);
    assert_eq!(now(), 3);

    // nested scopes.
    let outer = defer_scope();
    let inner = defer_scope();
    call_local(BUMP, &count);
    assert!(!call_local(BUMP, &count));
    drop(inner);
    assert_eq!(now(), 3);
    drop(outer);
    assert_eq!(now(), 4);
}

#[test]
fn a_defer_scope_is_not_a_read_section() {
    let scope = defer_scope();
    assert!(!in_read_section());
    synchronize_rcu(); // would panic inside a read section
    drain_call_rcu();
    drop(scope);
}

#[test]
fn a_panicking_callback_does_not_stop_the_others_and_the_first_panic_resumes() {
    take_log();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let _g = read_lock();
        call_local_fn(|| log("a"));
        call_local_fn(|| panic!("first failure"));
        call_local_fn(|| log("b"));
        call_local_fn(|| panic!("second failure"));
        call_local_fn(|| log("c"));
    }));
    let payload = result.expect_err("the first panic resumes after all calls ran");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"first failure"));
    assert_eq!(take_log(), ["a", "b", "c"]);
    assert!(!in_read_section());
    // The thread's deferral state is usable afterwards.
    let count = Arc::new(AtomicUsize::new(0));
    {
        let _g = read_lock();
        call_local(BUMP, &count);
    }
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[test]
fn a_panicking_callback_while_unwinding_is_reported_and_dropped_without_aborting() {
    let report = common::reports::expect("the dropped panic", |report| {
        report.kind() == rcu_defer::ReportKind::CallbackPanicked
            && report
                .message()
                .contains("callback failure during unwinding")
    });
    take_log();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let _g = read_lock();
        call_local_fn(|| log("ran during unwinding"));
        call_local_fn(|| panic!("callback failure during unwinding"));
        call_local_fn(|| log("ran after the failing one"));
        panic!("the section's own panic");
    }));
    let payload = result.expect_err("the section's own panic propagates");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"the section's own panic")
    );
    assert_eq!(
        take_log(),
        ["ran during unwinding", "ran after the failing one"]
    );
    let report = report.next();
    assert_eq!(
        report.message(),
        "a deferred call panicked while the thread was already unwinding: callback failure \
         during unwinding; the panic is dropped"
    );
}

#[test]
fn twenty_thousand_distinct_keys_record_and_run_in_linear_time() {
    let args: Vec<Arc<AtomicUsize>> = (0..20_000).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let start = Instant::now();
    for _round in 0..5 {
        let _g = read_lock();
        for arg in &args {
            assert!(call_local(BUMP, arg));
        }
        for arg in &args {
            assert!(!call_local(BUMP, arg));
        }
    }
    let elapsed = start.elapsed();
    assert!(args.iter().all(|a| a.load(Ordering::SeqCst) == 5));
    // A quadratic dedup would take minutes here (2 * 10^9 comparisons per
    // round); linear work takes milliseconds. The bound only catches that.
    assert!(
        elapsed < Duration::from_secs(20),
        "200,000 call_local calls took {elapsed:?}"
    );
}

#[test]
fn a_duplicate_is_found_wherever_its_call_sits_among_closures_and_past_the_hash_threshold() {
    // The first pending call, the next few and those past the point where
    // dedup switches to a hash set are stored differently; a closure
    // (never deduplicated) first and in between must not disturb any of it.
    let args: Vec<Arc<str>> = (0..40).map(|i| Arc::from(format!("k{i}"))).collect();
    take_log();
    {
        let _g = read_lock();
        call_local_fn(|| log("closure"));
        for (i, arg) in args.iter().enumerate() {
            assert!(call_local(LOG_NAME, arg), "k{i} is new");
            if i % 10 == 0 {
                call_local_fn(|| log("closure"));
            }
            // Every key recorded so far, whichever part holds it, is a
            // duplicate now.
            for (j, earlier) in args[..=i].iter().enumerate() {
                assert!(!call_local(LOG_NAME, earlier), "k{j} after k{i}");
            }
        }
    }
    let mut expected = vec!["closure".to_owned()];
    for i in 0..40 {
        expected.push(format!("k{i}"));
        if i % 10 == 0 {
            expected.push("closure".to_owned());
        }
    }
    assert_eq!(take_log(), expected);
}

#[test]
fn deferred_calls_are_per_thread() {
    let count = Arc::new(AtomicUsize::new(0));
    let _g = read_lock();
    call_local(BUMP, &count);
    let other = count.clone();
    std::thread::spawn(move || {
        // Another thread outside any section: its call runs at once, and the
        // first thread's pending call does not dedup it.
        assert!(call_local(BUMP, &other));
        assert_eq!(other.load(Ordering::SeqCst), 1);
    })
    .join()
    .unwrap();
    drop(_g);
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[inline(never)]
fn defer_bump_here(count: &Arc<AtomicUsize>) -> bool {
    call_local(BUMP, count)
}

#[inline(never)]
fn defer_bump_there(count: &Arc<AtomicUsize>) -> bool {
    call_local(BUMP, count)
}

#[test]
fn one_function_pointer_value_deduplicates_across_call_sites() {
    let count = Arc::new(AtomicUsize::new(0));
    {
        let _g = read_lock();
        assert!(defer_bump_here(&count));
        assert!(!defer_bump_there(&count));
        assert!(!call_local(BUMP, &count));
    }
    assert_eq!(count.load(Ordering::SeqCst), 1);
}
