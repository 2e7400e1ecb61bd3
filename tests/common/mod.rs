//! Helpers shared by the integration tests: hang guards and child processes.
//!
//! Each file under `tests/` is its own crate and says `mod common;` to
//! compile this module into itself.

// Each test binary uses only some of these helpers; the rest would be
// reported as dead code in that binary.
#![allow(dead_code)]

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub mod seccomp;

#[cfg(target_os = "linux")]
pub mod raw_thread;

pub mod reports;

use std::env;
use std::panic::resume_unwind;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

/// Anything that takes longer than this is taken for a hang.
pub const HANG_LIMIT: Duration = Duration::from_secs(30);

/// Runs `f` on its own thread and returns its result. Panics if `f` has not
/// finished within [`HANG_LIMIT`]; re-raises `f`'s panic.
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    within_limit(what, HANG_LIMIT, f)
}

/// Runs `f` on its own thread and returns its result. Panics if `f` has not
/// finished within `limit`; re-raises `f`'s panic.
pub fn within_limit<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => {
            handle
                .join()
                .expect("the watched thread panicked after sending");
            value
        }
        Err(RecvTimeoutError::Timeout) => panic!("{what} did not finish within {limit:?}: hang"),
        Err(RecvTimeoutError::Disconnected) => match handle.join() {
            Err(payload) => resume_unwind(payload),
            Ok(()) => unreachable!("the watched thread ended without sending"),
        },
    }
}

// ---------------------------------------------------------------------------
// Settings from the environment, for the long runs.

/// A duration given in seconds, as `value` of the environment variable
/// `name`: a positive number, whole or decimal (`600`, `1.5`, `0.25`).
/// Zero, a negative number, infinity or anything else is refused with a
/// message naming the variable and what it accepts.
pub fn parse_secs(name: &str, value: &str) -> Result<Duration, String> {
    let refuse = || {
        format!(
            "{name} must be a positive number of seconds, whole or decimal (e.g. 600 or 1.5), \
             not {value:?}"
        )
    };
    let secs: f64 = value.trim().parse().map_err(|_| refuse())?;
    // Refuses NaN too (`try_from_secs_f64` refuses infinity and negatives).
    if secs.is_nan() {
        return Err(refuse());
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(refuse()),
    }
}

/// A count, as `value` of the environment variable `name`: a positive
/// whole number, digits perhaps grouped with `_` (`50000000`,
/// `50_000_000`). Zero or anything else is refused with a message naming
/// the variable and what it accepts.
pub fn parse_count(name: &str, value: &str) -> Result<usize, String> {
    let refuse = || {
        format!(
            "{name} must be a positive whole number (digits, perhaps grouped with _, e.g. \
             50000000 or 50_000_000), not {value:?}"
        )
    };
    let digits: String = value.trim().chars().filter(|&c| c != '_').collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(refuse());
    }
    match digits.parse::<usize>() {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(refuse()),
    }
}

/// The environment variable `name` read with `parse` (see [`parse_secs`],
/// [`parse_count`]), or `default` if it is unset; panics with `parse`'s
/// message if it is set to something `parse` refuses (or to non-UTF-8).
#[track_caller]
pub fn from_env<T>(name: &str, default: T, parse: fn(&str, &str) -> Result<T, String>) -> T {
    match env::var(name) {
        Ok(value) => match parse(name, &value) {
            Ok(parsed) => parsed,
            Err(message) => panic!("{message}"),
        },
        Err(env::VarError::NotPresent) => default,
        Err(env::VarError::NotUnicode(value)) => {
            panic!("{name} must be text, not {value:?}")
        }
    }
}

/// Receives from `rx`, panicking instead of hanging.
pub fn recv<T>(rx: &mpsc::Receiver<T>, what: &str) -> T {
    rx.recv_timeout(HANG_LIMIT)
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
}

/// The text of a panic payload.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_owned()
    }
}

// ---------------------------------------------------------------------------
// Child processes: a test re-runs its own binary (for a process of its own,
// or a different environment) and checks what the child printed.

/// Set in a child's environment to the name of the test it must play the
/// child's part of.
pub const CHILD_ROLE: &str = "RCU_DEFER_TEST_CHILD_ROLE";
/// Prefix of the lines a child prints for its parent to check.
pub const MARKER: &str = "RCU-DEFER-CHILD-MARKER:";

/// Whether this process is the child started to play `test`'s part.
pub fn is_child(test: &str) -> bool {
    env::var(CHILD_ROLE).is_ok_and(|role| role == test)
}

/// A command that runs only `test` of this binary, as its child.
pub fn child_command(test: &str) -> Command {
    let exe = env::current_exe().expect("the test binary's path");
    let mut command = Command::new(exe);
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, test);
    command
}

/// Runs `command` to completion and returns its output; kills it (by its
/// process id) and panics if it has not finished within `limit`.
pub fn output_within(mut command: Command, limit: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the test binary as a child");
    let id = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("waiting for the child"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &id.to_string()]).status();
            panic!("the child process {id} did not finish within {limit:?}: hang");
        }
    }
}

/// Runs `command` (a [`child_command`], perhaps with more environment) to
/// completion within `limit`, checks that its one test passed, and returns
/// its output.
pub fn passing_child(command: Command, limit: Duration) -> Output {
    let output = output_within(command, limit);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the child failed:\n{stdout}\n{stderr}"
    );
    output
}

/// Runs only `test` of this binary in a child process (see
/// [`passing_child`]).
pub fn run_child(test: &str, limit: Duration) -> Output {
    passing_child(child_command(test), limit)
}

/// The marker lines a child printed, without the marker prefix.
pub fn markers(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        // libtest prints "test <name> ... " before the test's own output.
        .filter_map(|line| {
            line.find(MARKER)
                .map(|at| line[at + MARKER.len()..].to_owned())
        })
        .collect()
}

/// A read section held by a thread of its own; see [`hold_a_section`].
pub struct HeldSection {
    left: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: thread::JoinHandle<()>,
}

impl HeldSection {
    /// Whether the thread has left its section (set just before it does).
    pub fn has_left(&self) -> bool {
        self.left.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits for the thread to end, re-raising its panic.
    pub fn join(self) {
        if let Err(payload) = self.handle.join() {
            resume_unwind(payload);
        }
    }
}

/// Starts a thread that enters a read section, holds it for `hold`, marks
/// that it is leaving and leaves; returns once the section has begun.
pub fn hold_a_section(hold: Duration) -> HeldSection {
    let (entered_tx, entered_rx) = mpsc::channel();
    let left = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handle = {
        let left = std::sync::Arc::clone(&left);
        thread::spawn(move || {
            let guard = rcu_defer::read_lock();
            entered_tx.send(()).unwrap();
            thread::sleep(hold);
            left.store(true, std::sync::atomic::Ordering::Relaxed);
            drop(guard);
        })
    };
    recv(&entered_rx, "the reader to enter its section");
    HeldSection { left, handle }
}

/// A guest notifier whose every signal fails.
pub struct FailingNotifier;

impl rcu_defer::virtio::Notify for FailingNotifier {
    fn signal(&self) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "the irqfd is gone",
        ))
    }
}

/// Makes one `NotifyFailed` report, an error (each notifier reports its
/// first failure only, so this uses a new one).
pub fn fail_a_notification() {
    rcu_defer::virtio::IrqNotifier::new(FailingNotifier).notify_now();
}

/// Waits for the forked child `pid` and returns its wait status. If it has
/// not finished within `limit`, kills it and panics: a hang.
#[cfg(target_os = "linux")]
pub fn wait_child(pid: libc::pid_t, limit: Duration) -> libc::c_int {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: `pid` is the caller's child; `status` is a valid
        // out-pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if waited == pid {
            return status;
        }
        assert_eq!(waited, 0, "waitpid: {}", std::io::Error::last_os_error());
        if std::time::Instant::now() >= deadline {
            // SAFETY: `pid` is the caller's unreaped child: the signal goes
            // to it, and waiting reaps it.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("the forked child {pid} did not finish within {limit:?}: hang");
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Whether the kernel offers `membarrier(2)`'s private expedited command,
/// which the membarrier flavor needs (asked with `MEMBARRIER_CMD_QUERY`).
#[cfg(target_os = "linux")]
pub fn kernel_offers_membarrier() -> bool {
    const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
    const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    // SAFETY: the query command takes no pointer and changes nothing; it
    // returns the supported commands as a bit mask, or -1.
    let commands = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0) };
    commands > 0 && commands & MEMBARRIER_CMD_PRIVATE_EXPEDITED != 0
}

/// Whether the kernel offers `membarrier(2)`'s private expedited command:
/// not on this system.
#[cfg(not(target_os = "linux"))]
pub fn kernel_offers_membarrier() -> bool {
    false
}
