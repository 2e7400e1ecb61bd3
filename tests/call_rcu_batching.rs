//! Claims about the `rcu-call` thread's batch window: a small batch waits
//! for company, a full batch or a drain does not.
//!
//! Its own test binary (so its own process): the window is process-wide,
//! and the tests set it, one at a time (`SERIAL`).

use rcu_defer::{call_rcu, drain_call_rcu, set_call_rcu_batch_window};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// A window far longer than any bound below: a test that waited for it
/// fails its bound instead of passing slowly.
const LONG_WINDOW: Duration = Duration::from_secs(60);

/// What a test allows for work that should not wait for the window (loose:
/// the machine may be loaded; it only has to be well below `LONG_WINDOW`).
const PROMPT: Duration = Duration::from_secs(20);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Queues one callback; the receiver hears from it when it runs.
fn queue_signalling_callback() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    call_rcu(move || tx.send(()).expect("the test is listening"));
    rx
}

#[test]
fn a_drain_does_not_wait_for_the_batch_window() {
    let _serial = serial();
    set_call_rcu_batch_window(LONG_WINDOW);
    let ran = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let r = Arc::clone(&ran);
    call_rcu(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    drain_call_rcu();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
}

#[test]
fn a_drain_wakes_a_worker_that_is_already_waiting_for_company() {
    let _serial = serial();
    set_call_rcu_batch_window(LONG_WINDOW);
    let rx = queue_signalling_callback();
    // Give the worker time to take up the small batch and start waiting.
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "a lone callback waits for the window"
    );
    let start = Instant::now();
    drain_call_rcu();
    assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
    rx.try_recv()
        .expect("the callback ran before the drain returned");
}

#[test]
fn a_batch_of_sixty_four_callbacks_does_not_wait_for_the_window() {
    let _serial = serial();
    set_call_rcu_batch_window(LONG_WINDOW);
    let ran = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    for _ in 0..64 {
        let r = Arc::clone(&ran);
        call_rcu(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
    }
    while ran.load(Ordering::SeqCst) < 64 {
        assert!(
            start.elapsed() < PROMPT,
            "{} of 64 callbacks ran in {PROMPT:?}",
            ran.load(Ordering::SeqCst)
        );
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_lone_callback_runs_once_the_window_has_passed() {
    let _serial = serial();
    set_call_rcu_batch_window(Duration::from_millis(20));
    let rx = queue_signalling_callback();
    rx.recv_timeout(PROMPT)
        .expect("the callback runs without a drain or more callbacks");
}

#[test]
fn a_zero_window_starts_every_batch_at_once() {
    let _serial = serial();
    set_call_rcu_batch_window(LONG_WINDOW);
    set_call_rcu_batch_window(Duration::ZERO);
    let rx = queue_signalling_callback();
    rx.recv_timeout(PROMPT)
        .expect("the callback runs without waiting for the earlier, long window");
}

#[test]
fn a_window_longer_than_a_minute_is_refused_with_a_message() {
    let _serial = serial();
    let refused = std::panic::catch_unwind(|| {
        set_call_rcu_batch_window(Duration::from_secs(61));
    })
    .expect_err("a 61 s window is refused");
    let message = refused
        .downcast_ref::<String>()
        .expect("a formatted message");
    assert!(
        message.contains("batch window of 61s is longer than the maximum of 60s"),
        "{message}"
    );
    // The maximum itself is accepted.
    set_call_rcu_batch_window(LONG_WINDOW);
}
