//! A forked child's reports reach stderr even when another thread of the
//! parent held the standard library's stderr lock at the fork.
//!
//! That lock is held by whichever thread is writing to stderr; in a child
//! forked meanwhile it stays held forever, and any `eprintln!` there blocks.
//! rcu-defer's default report sink must not: a report is made by the
//! `rcu-call` thread (a callback that panicked), and a blocked report would
//! stop every callback after it.
//!
//! Its own test binary: the default sink is in use only while no report
//! handler is installed, which the other fork tests do.
#![cfg(target_os = "linux")]

mod common;

use common::wait_child;

use rcu_defer::{call_rcu, drain_call_rcu_timeout};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How long the child may take before it is taken for a hang.
const CHILD_LIMIT: Duration = Duration::from_secs(20);

#[test]
fn a_childs_report_does_not_wait_for_a_stderr_lock_held_at_the_fork() {
    // The process uses rcu-defer before it forks (its fork handlers are in
    // place from the first use on; a child of a process that never used it
    // starts afresh, as any program does).
    call_rcu(|| ());
    drain_call_rcu_timeout(Duration::from_secs(10)).expect("the parent's drain");
    let stop = Arc::new(AtomicBool::new(false));
    let holder = {
        let stop = Arc::clone(&stop);
        // Holds the lock most of the time, as a thread that logs a lot.
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let stderr = std::io::stderr();
                let mut held = stderr.lock();
                let _ = held.flush();
                let until = Instant::now() + Duration::from_micros(200);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
        })
    };
    for _ in 0..20 {
        // SAFETY: `fork` has no memory-safety preconditions. The child runs
        // the lines below (no return into the test harness, whose threads
        // it does not have) and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // The child's stderr goes nowhere: what matters is that writing
            // it does not block. Its panic message is silenced the same way.
            // SAFETY: plain descriptor calls on a path and descriptor 2.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                libc::dup2(null, 2);
            }
            call_rcu(|| panic!("a callback that fails, so that a report is made"));
            let ran = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&ran);
            call_rcu(move || flag.store(true, Ordering::SeqCst));
            let drained = drain_call_rcu_timeout(Duration::from_secs(10));
            let code = if drained.is_ok() && ran.load(Ordering::SeqCst) {
                0
            } else {
                1
            };
            // SAFETY: ends the child at once; nothing is owed to anyone.
            unsafe { libc::_exit(code) };
        }
        let status = wait_child(pid, CHILD_LIMIT);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child's report blocked its rcu-call thread (wait status {status:#x}): the \
             drain after it timed out"
        );
    }
    stop.store(true, Ordering::SeqCst);
    holder.join().unwrap();
}
