//! A process whose readers rely on `membarrier(2)` and that then installs a
//! seccomp filter refusing it (a VMM sandboxing itself after start-up).
//!
//! No grace period can end any more, and the library must say so instead
//! of hanging or freeing early: `try_synchronize_rcu` and the drains return
//! `Error::MembarrierFailed`, the plain forms panic with a message that
//! names seccomp and the way out, nothing retired is dropped, and nothing
//! hangs. Each test runs in a child process of its own: a seccomp filter
//! cannot be removed.
#![cfg(target_os = "linux")]

mod common;

use common::{child_command, is_child, markers, output_within, panic_text, MARKER};
use rcu_defer::{
    call_rcu, drain_call_rcu_timeout, flavor, read_lock, synchronize_rcu, try_drain_call_rcu,
    try_synchronize_rcu, Error, Flavor, RcuCell,
};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

/// Installs, for every thread of the process, a seccomp filter that makes
/// `membarrier(2)` fail with `EPERM` and allows everything else.
fn refuse_membarrier() -> std::io::Result<()> {
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    common::seccomp::install(
        &[(libc::SYS_membarrier, eperm)],
        libc::SECCOMP_RET_ALLOW,
        common::seccomp::Threads::All,
    )
}

/// Counts drops of the values the child retires: none may be dropped.
static DROPPED: AtomicUsize = AtomicUsize::new(0);

struct Retired(#[allow(dead_code)] u32);

impl Drop for Retired {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

fn outcome<T: std::fmt::Debug>(f: impl FnOnce() -> T) -> String {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => format!("returned {value:?}"),
        Err(payload) => format!("panicked: {}", panic_text(&*payload)),
    }
}

#[test]
fn after_seccomp_refuses_membarrier_grace_periods_fail_with_an_explanation_and_free_nothing() {
    const TEST: &str =
        "after_seccomp_refuses_membarrier_grace_periods_fail_with_an_explanation_and_free_nothing";
    if is_child(TEST) {
        if flavor() != Flavor::Membarrier {
            println!("{MARKER}skip: this kernel has no membarrier, so nothing relies on it");
            return;
        }
        // Readers rely on membarrier: the process registered, and a reader
        // holds the cell's first value.
        let cell = Arc::new(RcuCell::new(Retired(1)));
        call_rcu(|| ());
        rcu_defer::drain_call_rcu();
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let reader = {
            let cell = Arc::clone(&cell);
            thread::spawn(move || {
                let guard = read_lock();
                let _held = cell.read(&guard);
                entered_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                DROPPED.load(Ordering::SeqCst)
            })
        };
        entered_rx.recv().unwrap();

        refuse_membarrier().expect("installing the seccomp filter");

        match try_synchronize_rcu() {
            Err(Error::MembarrierFailed { errno }) => println!("{MARKER}try: errno {errno}"),
            other => println!("{MARKER}try: {other:?}"),
        }
        println!("{MARKER}plain: {}", outcome(synchronize_rcu));
        println!(
            "{MARKER}replace_sync: {}",
            outcome(|| cell.replace_sync(Retired(2)).0)
        );
        cell.replace(Retired(3));
        println!(
            "{MARKER}drain: {:?}",
            try_drain_call_rcu().map_err(|e| e.to_string())
        );
        println!(
            "{MARKER}drain timeout: {}",
            match drain_call_rcu_timeout(Duration::from_secs(10)) {
                Err(Error::MembarrierFailed { .. }) => "membarrier failed".to_owned(),
                other => format!("{other:?}"),
            }
        );
        println!("{MARKER}again: {:?}", try_synchronize_rcu().is_err());
        release_tx.send(()).unwrap();
        let dropped_while_held = reader.join().unwrap();
        println!(
            "{MARKER}dropped while held {dropped_while_held}, dropped at the end {}",
            DROPPED.load(Ordering::SeqCst)
        );
        return;
    }
    let output = output_within(child_command(TEST), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let markers = markers(&output);
    if markers.first().is_some_and(|m| m.starts_with("skip:")) {
        println!("{}", markers[0]);
        return;
    }
    assert_eq!(markers.len(), 7, "{markers:?}\n--- stderr:\n{stderr}");
    assert_eq!(markers[0], "try: errno 1");
    for (what, marker) in [("plain", &markers[1]), ("replace_sync", &markers[2])] {
        assert!(
            marker.starts_with(&format!("{what}: panicked: "))
                && marker.contains("seccomp")
                && marker.contains("set_flavor(Flavor::Fence)")
                && marker.contains("RCU_DEFER_FLAVOR=fence"),
            "{marker}"
        );
    }
    assert!(
        markers[3].starts_with("drain: Err(") && markers[3].contains("membarrier"),
        "{}",
        markers[3]
    );
    assert_eq!(markers[4], "drain timeout: membarrier failed");
    assert_eq!(markers[5], "again: true");
    // The first value (held by the reader, then retired by replace_sync)
    // and the second (retired by replace) are never dropped: no grace
    // period has ended since they were retired.
    assert_eq!(markers[6], "dropped while held 0, dropped at the end 0");
    let worker_reports = stderr
        .matches("rcu-defer: the rcu-call thread's grace period failed")
        .count();
    assert_eq!(worker_reports, 1, "the worker reports once: {stderr}");
}
