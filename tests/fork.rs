//! Claims about `fork()`: a child process, which has only the forking
//! thread, gets working grace periods, a working `call_rcu` and the forking
//! thread's own reader state, whatever the parent's other threads were doing
//! at the fork; the parent is unaffected.
//!
//! Each test forks a real child with `libc::fork()`. The child runs its
//! checks and reports through a pipe, then leaves with `_exit` (it never
//! returns into the test harness, whose other threads it does not have);
//! the parent waits for it, bounded by `CHILD_LIMIT` (a child that hangs is
//! killed and fails the test), and checks its exit status and report.
//!
//! The tests of this file run one at a time (`serial`): they change
//! process-wide settings (the stall timeout and handler) and count the
//! registry's records. A child's own threads are `common::raw_thread`s,
//! not `std::thread`s: the harness starts and ends a thread per test, and
//! a child forked meanwhile could never start a `std::thread` (see there).
#![cfg(target_os = "linux")]

mod common;

use common::raw_thread::{self, RawThread};
use common::{panic_text, recv, wait_child};
use rcu_defer::{
    call_local, call_local_fn, call_rcu, drain_call_rcu, drain_call_rcu_timeout, in_read_section,
    read_lock, registry_stats, set_stall_handler, set_stall_timeout, synchronize_rcu,
    synchronize_rcu_timeout, try_synchronize_rcu, Error, RcuCell, ReadGuard, StallReport,
};
use std::cell::RefCell;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// How long a child may take for all its checks before it is taken for a
/// hang (each of its waits is bounded by `FEW_SECONDS` on its own).
const CHILD_LIMIT: Duration = Duration::from_secs(20);
/// What a child's grace period, drain or cell update may take.
const FEW_SECONDS: Duration = Duration::from_secs(5);
/// How long a grace period that a reader holds up is given before it must
/// report that reader.
const SHORT: Duration = Duration::from_millis(300);

/// The name of a parent thread that holds a read section at the fork.
const PARENT_READER: &str = "parent-reader";
/// The name of a parent thread blocked in `synchronize_rcu` at the fork.
const PARENT_WRITER: &str = "parent-writer";

/// Runs the tests of this file one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    static QUIET: std::sync::Once = std::sync::Once::new();
    // Threads that exit inside a section held by a thread-local are part of
    // the exit-churn test: their reports are expected, and only noise here.
    QUIET.call_once(|| {
        rcu_defer::set_report_handler(|report: &rcu_defer::Report| {
            if report.kind() != rcu_defer::ReportKind::ExitInSection {
                eprintln!("rcu-defer: {report}");
            }
        })
    });
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a child sent back.
#[derive(Debug)]
struct ChildReport {
    /// Its exit code (0: its checks passed).
    code: i32,
    /// What it wrote to the pipe: its result or the failure.
    text: String,
}

/// Forks; the child runs `body`, writes its outcome to a pipe and calls
/// `_exit` (0 if `body` returned `Ok`, 1 if it returned `Err` or panicked).
/// The parent waits for the child (killing it and panicking after
/// `CHILD_LIMIT`) and returns its report. `body` is dropped unrun in the
/// parent.
fn fork_child(body: impl FnOnce() -> Result<String, String>) -> ChildReport {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `pipe` writes two new descriptors into the two-element array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: both descriptors were just created and are owned here only.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: `fork` has no memory-safety preconditions. In the child only
    // this thread exists; it runs `body` and leaves with `_exit` below,
    // never returning into the test harness (whose threads are gone there).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        drop(read_end);
        let outcome = catch_unwind(AssertUnwindSafe(body))
            .unwrap_or_else(|payload| Err(format!("panicked: {}", panic_text(&*payload))));
        let (code, text) = match outcome {
            Ok(text) => (0, text),
            Err(text) => (1, text),
        };
        write_all(&write_end, text.as_bytes());
        // SAFETY: `_exit` ends the child at once, without running the
        // parent's atexit handlers or destructors; nothing is owed to anyone.
        unsafe { libc::_exit(code) };
    }
    drop(write_end);
    let status = wait_child(pid, CHILD_LIMIT);
    assert!(
        libc::WIFEXITED(status),
        "the child {pid} did not exit normally (wait status {status:#x}): {}",
        read_available(&read_end)
    );
    ChildReport {
        code: libc::WEXITSTATUS(status),
        text: read_available(&read_end),
    }
}

/// Forks a child that runs `body` and returns what it reported; panics
/// (with the child's report) unless the child's checks passed.
fn child_passes(what: &str, body: impl FnOnce() -> Result<String, String>) -> String {
    let report = fork_child(body);
    assert_eq!(
        report.code, 0,
        "{what}: the child's checks failed: {}",
        report.text
    );
    report.text
}

/// Writes all of `bytes` to `fd` (in the child: failures are ignored, the
/// exit code still tells).
fn write_all(fd: &OwnedFd, mut bytes: &[u8]) {
    use std::os::fd::AsRawFd;
    while !bytes.is_empty() {
        // SAFETY: `fd` is open; the pointer and length describe `bytes`.
        let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Reads what the pipe holds now, without waiting (the child has exited;
/// a grandchild may still hold the write end open).
fn read_available(fd: &OwnedFd) -> String {
    use std::os::fd::AsRawFd;
    let fd = fd.as_raw_fd();
    // SAFETY: `fd` is open; F_SETFL with O_NONBLOCK changes only its flags.
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `fd` is open; the pointer and length describe `buf`.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `Err(message)` unless `ok`.
fn ensure(ok: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(message())
    }
}

/// A parent's thread named `name` that enters a read section and holds it
/// until released.
struct NamedReader {
    release: mpsc::Sender<()>,
    handle: thread::JoinHandle<()>,
}

impl NamedReader {
    /// Starts the thread; returns once its section has begun.
    fn start(name: &str) -> NamedReader {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let handle = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let guard = read_lock();
                entered_tx.send(()).unwrap();
                let _ = release_rx.recv();
                drop(guard);
            })
            .expect("spawning a reader");
        recv(&entered_rx, "the reader to enter its section");
        NamedReader { release, handle }
    }

    /// Ends the section and the thread.
    fn finish(self) {
        self.release.send(()).unwrap();
        self.handle.join().unwrap();
    }
}

/// A child's thread that enters a read section and holds it until
/// released. It has no name (it is a `raw_thread`): reports name it by its
/// id.
struct ChildReader {
    release: mpsc::Sender<()>,
    thread: RawThread<()>,
    /// Its `ThreadId`, as reports print it (`ThreadId(N)`).
    id: String,
}

impl ChildReader {
    /// Starts the thread; returns once its section has begun.
    fn start() -> ChildReader {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let thread = raw_thread::spawn(move || {
            let guard = read_lock();
            entered_tx
                .send(format!("{:?}", thread::current().id()))
                .unwrap();
            let _ = release_rx.recv();
            drop(guard);
        });
        let id = recv(&entered_rx, "the child's reader to enter its section");
        ChildReader {
            release,
            thread,
            id,
        }
    }

    /// Ends the section and the thread.
    fn finish(self) {
        self.release.send(()).unwrap();
        self.thread.join().unwrap();
    }
}

/// The registry holds no record for a thread that is not this one: every
/// entry is this thread's own record, or a free stand-in.
fn only_own_records() -> Result<(), String> {
    let stats = registry_stats();
    let owned = stats.entries - stats.free_stand_ins;
    ensure(owned <= 1, || {
        format!("the registry holds records of threads that do not exist here: {stats:?}")
    })
}

/// A `call_rcu` callback queued now has run when `drain_call_rcu` returns,
/// within `FEW_SECONDS`.
fn a_callback_runs_by_the_drain() -> Result<(), String> {
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    call_rcu(move || flag.store(true, Ordering::SeqCst));
    drain_call_rcu_timeout(FEW_SECONDS).map_err(|e| format!("drain_call_rcu: {e}"))?;
    ensure(ran.load(Ordering::SeqCst), || {
        "a call_rcu callback had not run when drain_call_rcu returned".to_owned()
    })
}

/// The child's checks, run by every child: only its own records are
/// registered; `synchronize_rcu`, `call_rcu` + `drain_call_rcu` and
/// `RcuCell::replace_sync` finish within `FEW_SECONDS`; and a stall report
/// names the child's own stuck reader and none of `parent_threads` (their
/// names, or ids for unnamed threads). Returns a summary.
fn child_works(parent_threads: &[&str]) -> Result<String, String> {
    only_own_records()?;
    let started = Instant::now();
    synchronize_rcu_timeout(FEW_SECONDS).map_err(|e| format!("synchronize_rcu: {e}"))?;
    a_callback_runs_by_the_drain()?;
    let cell = RcuCell::new(1u32);
    let old = within(FEW_SECONDS, "RcuCell::replace_sync", move || {
        cell.replace_sync(2)
    })?;
    ensure(old == 1, || format!("replace_sync returned {old}"))?;
    let took = started.elapsed();

    let reader = ChildReader::start();
    let reader_id = reader.id.clone();
    let stalled = synchronize_rcu_timeout(SHORT);
    reader.finish();
    let report = match stalled {
        Err(Error::Timeout(report)) => report,
        other => {
            return Err(format!(
                "a child's reader did not hold up its grace period: {other:?}"
            ))
        }
    };
    let ids: Vec<_> = report.readers().iter().map(|r| r.thread_id()).collect();
    ensure(ids == [reader_id.as_str()], || {
        format!("the stall report names {ids:?}, not only the child's reader {reader_id}: {report}")
    })?;
    let text = report.to_string();
    for name in parent_threads {
        ensure(!text.contains(name), || {
            format!("the stall report names the parent's thread {name}: {text}")
        })?;
    }
    synchronize_rcu_timeout(FEW_SECONDS).map_err(|e| format!("after the reader left: {e}"))?;
    Ok(format!(
        "grace period, drain and replace_sync took {took:?}"
    ))
}

/// In a child: runs `f` on a thread of its own (a `raw_thread`) and returns
/// its result, or an error if it panicked or has not finished within
/// `limit` (the thread is then left behind).
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = mpsc::channel();
    let _detached = raw_thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).map_err(|e| match e {
        mpsc::RecvTimeoutError::Timeout => format!("{what} did not finish within {limit:?}"),
        mpsc::RecvTimeoutError::Disconnected => format!("{what} panicked"),
    })
}

/// The parent's own grace periods and callbacks work.
fn parent_works() {
    synchronize_rcu_timeout(FEW_SECONDS).expect("the parent's grace period");
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    call_rcu(move || flag.store(true, Ordering::SeqCst));
    drain_call_rcu_timeout(FEW_SECONDS).expect("the parent's drain");
    assert!(ran.load(Ordering::SeqCst));
}

#[test]
fn a_child_forked_while_another_thread_is_inside_a_read_section_does_not_wait_for_it() {
    let _serial = serial();
    let reader = NamedReader::start(PARENT_READER);
    child_passes("fork beside a reader", || child_works(&[PARENT_READER]));
    // The parent still waits for its reader, and names it.
    match synchronize_rcu_timeout(Duration::from_millis(100)) {
        Err(Error::Timeout(report)) => assert!(
            report
                .readers()
                .iter()
                .any(|r| r.thread_name() == Some(PARENT_READER)),
            "the parent's report names its reader: {report}"
        ),
        other => panic!("the parent's grace period must wait for its reader: {other:?}"),
    }
    reader.finish();
    parent_works();
}

#[test]
fn a_child_forked_while_another_thread_waits_in_synchronize_rcu_runs_its_own_grace_periods() {
    let _serial = serial();
    let reader = NamedReader::start(PARENT_READER);
    let (done_tx, done_rx) = mpsc::channel();
    let writer = thread::Builder::new()
        .name(PARENT_WRITER.to_owned())
        .spawn(move || {
            synchronize_rcu();
            done_tx.send(()).unwrap();
        })
        .unwrap();
    // Long enough for the writer to lead the grace period, spin and sleep
    // on the reader.
    thread::sleep(Duration::from_millis(100));
    assert!(
        done_rx.try_recv().is_err(),
        "the writer waits for the reader"
    );
    child_passes("fork beside a waiting writer", || {
        child_works(&[PARENT_READER, PARENT_WRITER])
    });
    assert!(
        done_rx.try_recv().is_err(),
        "the parent's writer still waits for the parent's reader"
    );
    reader.finish();
    recv(&done_rx, "the parent's writer");
    writer.join().unwrap();
    parent_works();
}

/// Polls `flag` until it is set; panics after `common::HANG_LIMIT`.
fn wait_for(flag: &AtomicBool, what: &str) {
    let deadline = Instant::now() + common::HANG_LIMIT;
    while !flag.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "waiting for {what}: hang");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_child_forked_while_the_rcu_call_thread_runs_a_batch_runs_the_queued_callbacks_but_not_that_batch(
) {
    let _serial = serial();
    drain_call_rcu();
    let flag = || Arc::new(AtomicBool::new(false));
    let (x_started, x_release) = (flag(), flag());
    let (a_started, a_release, a_finished) = (flag(), flag(), flag());
    let batch_ran = Arc::new(AtomicUsize::new(0));
    let queued_ran = Arc::new(AtomicUsize::new(0));
    // X occupies the worker while A and its batch-mates are queued, so that
    // the worker takes them as one batch once X returns.
    {
        let (started, release) = (Arc::clone(&x_started), Arc::clone(&x_release));
        call_rcu(move || {
            started.store(true, Ordering::SeqCst);
            wait_for(&release, "the test to release X");
        });
    }
    wait_for(&x_started, "the worker to run X");
    {
        let (started, release, finished) = (
            Arc::clone(&a_started),
            Arc::clone(&a_release),
            Arc::clone(&a_finished),
        );
        call_rcu(move || {
            started.store(true, Ordering::SeqCst);
            wait_for(&release, "the test to release A");
            finished.store(true, Ordering::SeqCst);
        });
    }
    for _ in 0..3 {
        let ran = Arc::clone(&batch_ran);
        call_rcu(move || {
            ran.fetch_add(1, Ordering::SeqCst);
        });
    }
    x_release.store(true, Ordering::SeqCst);
    wait_for(&a_started, "the worker to run A");
    // Queued while the worker runs A's batch: not taken yet.
    for _ in 0..3 {
        let ran = Arc::clone(&queued_ran);
        call_rcu(move || {
            ran.fetch_add(1, Ordering::SeqCst);
        });
    }
    let summary = {
        let (a_finished, batch_ran, queued_ran) = (
            Arc::clone(&a_finished),
            Arc::clone(&batch_ran),
            Arc::clone(&queued_ran),
        );
        child_passes("fork while the rcu-call thread runs a batch", move || {
            drain_call_rcu_timeout(FEW_SECONDS)
                .map_err(|e| format!("drain of the callbacks queued before the fork: {e}"))?;
            let queued = queued_ran.load(Ordering::SeqCst);
            ensure(queued == 3, || {
                format!("{queued} of the 3 callbacks queued (not taken) at the fork ran")
            })?;
            // Documented: the batch the worker was running at the fork is
            // not run in the child, neither the callback being run nor the
            // ones after it.
            let batch = batch_ran.load(Ordering::SeqCst);
            ensure(batch == 0 && !a_finished.load(Ordering::SeqCst), || {
                format!("{batch} callbacks of the batch being run at the fork ran in the child")
            })?;
            child_works(&[])
        })
    };
    assert!(!summary.is_empty());
    // The parent runs everything, the batch in progress included.
    a_release.store(true, Ordering::SeqCst);
    drain_call_rcu_timeout(FEW_SECONDS).expect("the parent's drain");
    assert!(a_finished.load(Ordering::SeqCst));
    assert_eq!(batch_ran.load(Ordering::SeqCst), 3);
    assert_eq!(queued_ran.load(Ordering::SeqCst), 3);
    parent_works();
}

/// Set by `note_worker_stall` when the `rcu-call` thread's grace period
/// stalls.
static WORKER_STALLED: AtomicBool = AtomicBool::new(false);

/// A stall handler that notes stalls of the `rcu-call` thread's grace
/// periods.
fn note_worker_stall(_: &StallReport) {
    if thread::current().name() == Some("rcu-call") {
        WORKER_STALLED.store(true, Ordering::SeqCst);
    }
}

/// A stall handler that says nothing.
fn quiet(_: &StallReport) {}

#[test]
fn a_child_forked_while_the_rcu_call_thread_waits_for_a_grace_period_runs_that_batch() {
    let _serial = serial();
    drain_call_rcu();
    WORKER_STALLED.store(false, Ordering::SeqCst);
    set_stall_handler(note_worker_stall);
    set_stall_timeout(Some(Duration::from_millis(50)));
    let reader = NamedReader::start(PARENT_READER);
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let ran = Arc::clone(&ran);
        call_rcu(move || {
            ran.fetch_add(1, Ordering::SeqCst);
        });
    }
    // The worker has taken the batch and waits for its grace period, which
    // the parent's reader holds up.
    wait_for(
        &WORKER_STALLED,
        "the rcu-call thread's grace period to stall",
    );
    set_stall_timeout(Some(Duration::from_secs(21)));
    set_stall_handler(quiet);
    {
        let ran = Arc::clone(&ran);
        child_passes(
            "fork while the rcu-call thread waits for a grace period",
            move || {
                drain_call_rcu_timeout(FEW_SECONDS)
                    .map_err(|e| format!("drain of the in-flight batch: {e}"))?;
                let n = ran.load(Ordering::SeqCst);
                ensure(n == 3, || {
                    format!("{n} of the 3 callbacks waiting for their grace period at the fork ran")
                })?;
                child_works(&[PARENT_READER])
            },
        );
    }
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "in the parent, the batch still waits for the reader"
    );
    reader.finish();
    drain_call_rcu_timeout(FEW_SECONDS).expect("the parent's drain");
    assert_eq!(ran.load(Ordering::SeqCst), 3, "each ran once in the parent");
    parent_works();
}

/// The deferred function of the `call_local` test: counts its runs.
fn bump(count: &AtomicUsize) {
    count.fetch_add(1, Ordering::SeqCst);
}

/// One pointer value for `bump`, as `call_local` asks.
static BUMP: fn(&AtomicUsize) = bump;

#[test]
fn a_child_forked_inside_a_read_section_keeps_it_and_its_pending_calls() {
    let _serial = serial();
    let bumps = Arc::new(AtomicUsize::new(0));
    let closures = Arc::new(AtomicUsize::new(0));
    let guard = read_lock();
    assert!(call_local(BUMP, &bumps));
    {
        let closures = Arc::clone(&closures);
        call_local_fn(move || {
            closures.fetch_add(1, Ordering::SeqCst);
        });
    }
    let child_bumps = Arc::clone(&bumps);
    let child_closures = Arc::clone(&closures);
    // The guard moves into the child's part: the parent's section ends when
    // `fork_child` drops it unrun.
    child_passes("fork inside a read section", move || {
        let guard: ReadGuard = guard;
        ensure(in_read_section(), || {
            "the child is not in the read section".to_owned()
        })?;
        match try_synchronize_rcu() {
            Err(Error::InReadSection { depth: 1, .. }) => {}
            other => return Err(format!("synchronize_rcu inside the section: {other:?}")),
        }
        let pending = (
            child_bumps.load(Ordering::SeqCst),
            child_closures.load(Ordering::SeqCst),
        );
        ensure(pending == (0, 0), || {
            format!("pending calls ran early: {pending:?}")
        })?;
        // The section's record is the only one, and writers see it.
        let held = synchronize_within_another_thread(SHORT);
        ensure(held.is_err(), || {
            "another thread's grace period did not wait for the child's section".to_owned()
        })?;
        drop(guard);
        let ran = (
            child_bumps.load(Ordering::SeqCst),
            child_closures.load(Ordering::SeqCst),
        );
        ensure(ran == (1, 1), || {
            format!("the pending call_local and call_local_fn calls ran {ran:?} times")
        })?;
        child_works(&[])
    });
    assert_eq!(bumps.load(Ordering::SeqCst), 1, "the parent's call ran");
    assert_eq!(
        closures.load(Ordering::SeqCst),
        1,
        "the parent's closure ran"
    );
    parent_works();
}

/// `synchronize_rcu_timeout(limit)` on a new thread.
fn synchronize_within_another_thread(limit: Duration) -> Result<(), Error> {
    thread::spawn(move || synchronize_rcu_timeout(limit))
        .join()
        .expect("the writer thread")
}

#[test]
fn a_grandchild_works_like_a_child() {
    let _serial = serial();
    let reader = NamedReader::start(PARENT_READER);
    child_passes("fork, then fork again in the child", || {
        let first = child_works(&[PARENT_READER])?;
        // The grandchild must not wait for the child's reader either.
        let child_reader = ChildReader::start();
        let child_reader_id = child_reader.id.clone();
        let grandchild = fork_child(|| child_works(&[PARENT_READER, &child_reader_id]));
        child_reader.finish();
        ensure(grandchild.code == 0, || {
            format!("the grandchild's checks failed: {}", grandchild.text)
        })?;
        Ok(format!("child: {first}; grandchild: {}", grandchild.text))
    });
    reader.finish();
    parent_works();
}

#[test]
fn a_fork_after_threads_registered_and_went_idle_leaves_no_record_of_them_in_the_child() {
    let _serial = serial();
    // Threads that have registered (their first section is over) and wait.
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let (ready_tx, ready_rx) = mpsc::channel();
    let idle: Vec<_> = (0..8)
        .map(|_| {
            let ready = ready_tx.clone();
            let release = Arc::clone(&release_rx);
            thread::spawn(move || {
                drop(read_lock());
                ready.send(()).unwrap();
                let _ = release.lock().unwrap().recv();
            })
        })
        .collect();
    for _ in &idle {
        recv(&ready_rx, "an idle thread to register");
    }
    assert!(
        registry_stats().entries >= 8,
        "the idle threads are registered"
    );
    child_passes("fork beside idle registered threads", || child_works(&[]));
    for _ in &idle {
        release_tx.send(()).unwrap();
    }
    for thread in idle {
        thread.join().unwrap();
    }
    parent_works();
}

thread_local! {
    /// A read guard held by a thread-local that is first used before the
    /// thread's first `read_lock`: it is destroyed after the thread's
    /// registration, so the thread exits inside a section published by a
    /// stand-in, which the guard's drop then releases.
    static HELD_AT_EXIT: RefCell<Option<ReadGuard>> = const { RefCell::new(None) };
}

#[test]
fn forks_while_threads_exit_leave_no_record_of_them_in_the_children() {
    let _serial = serial();
    let stop = Arc::new(AtomicBool::new(false));
    let exited = Arc::new(AtomicUsize::new(0));
    let churn = {
        let (stop, exited) = (Arc::clone(&stop), Arc::clone(&exited));
        thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let batch: Vec<_> = (0..4)
                    .map(|_| {
                        i += 1;
                        let in_section_at_exit = i % 32 == 0;
                        thread::spawn(move || {
                            if in_section_at_exit {
                                HELD_AT_EXIT.with(|held| *held.borrow_mut() = Some(read_lock()));
                            } else {
                                drop(read_lock());
                            }
                        })
                    })
                    .collect();
                for thread in batch {
                    thread.join().unwrap();
                }
                exited.fetch_add(4, Ordering::SeqCst);
            }
        })
    };
    for _ in 0..10 {
        child_passes("fork while threads exit", || {
            only_own_records()?;
            synchronize_rcu_timeout(FEW_SECONDS).map_err(|e| format!("synchronize_rcu: {e}"))?;
            call_rcu(|| ());
            drain_call_rcu_timeout(FEW_SECONDS).map_err(|e| format!("drain_call_rcu: {e}"))?;
            only_own_records()?;
            Ok(String::new())
        });
        thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::SeqCst);
    churn.join().unwrap();
    assert!(exited.load(Ordering::SeqCst) > 0, "threads came and went");
    parent_works();
}

#[test]
fn a_child_forked_while_another_thread_writes_an_rcu_cell_takes_over_its_writer_lock() {
    let _serial = serial();
    let cell = Arc::new(RcuCell::new(0u64));
    let (inside_tx, inside_rx) = mpsc::channel();
    let release = Arc::new(AtomicBool::new(false));
    let writer = {
        let (cell, release) = (Arc::clone(&cell), Arc::clone(&release));
        thread::spawn(move || {
            // Holds the cell's writer lock while the closure runs.
            cell.update(|old| {
                inside_tx.send(()).unwrap();
                wait_for(&release, "the test to release the writer");
                old + 1
            });
        })
    };
    recv(&inside_rx, "the writer to hold the cell's lock");
    {
        let cell = Arc::clone(&cell);
        child_passes(
            "fork while another thread holds a cell's writer lock",
            move || {
                let old = within(FEW_SECONDS, "replace_sync on the cell", move || {
                    cell.replace_sync(10)
                })?;
                ensure(old == 0, || format!("replace_sync returned {old}"))?;
                child_works(&[])
            },
        );
    }
    release.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert_eq!(*cell.read(&read_lock()), 1, "the parent's update happened");
    assert_eq!(cell.replace_sync(2), 1);
    parent_works();
}

#[test]
fn a_child_forked_inside_an_rcu_cell_update_keeps_the_cell_locked_until_the_closure_ends() {
    let _serial = serial();
    let cell = Arc::new(RcuCell::new(0u64));
    let in_closure = Arc::clone(&cell);
    cell.update(move |old| {
        child_passes("fork inside RcuCell::update's closure", move || {
            // The forking thread holds the lock in the child too: another
            // writer must wait for the closure, not take the lock over.
            let (done_tx, done_rx) = mpsc::channel();
            let cell = Arc::clone(&in_closure);
            let _detached = raw_thread::spawn(move || {
                cell.replace(5);
                let _ = done_tx.send(());
            });
            ensure(done_rx.recv_timeout(SHORT).is_err(), || {
                "a writer took the cell's lock from the thread that forked inside update".to_owned()
            })?;
            Ok(String::new())
        });
        old + 1
    });
    assert_eq!(*cell.read(&read_lock()), 1);
    parent_works();
}

#[test]
fn a_child_forked_by_an_online_thread_keeps_it_online_and_not_the_parents_other_online_thread() {
    let _serial = serial();
    // Another online thread of the parent, which never reports a
    // quiescent state while the child runs.
    let (online_tx, online_rx) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let other = thread::Builder::new()
        .name("parent-online".to_owned())
        .spawn(move || {
            let online = rcu_defer::online();
            online_tx.send(()).unwrap();
            let _ = release_rx.recv();
            drop(online);
        })
        .unwrap();
    recv(&online_rx, "the parent's online thread");
    let online = rcu_defer::online();
    online.quiescent();
    let text = child_passes("fork from an online thread", || {
        only_own_records()?;
        // The forking thread is still online: a grace period waits for its
        // quiescent state (a writer on another thread of the child).
        let writer = raw_thread::spawn(|| synchronize_rcu_timeout(FEW_SECONDS));
        thread::sleep(SHORT);
        ensure(!writer.is_finished(), || {
            "a grace period of the child did not wait for the online forking thread".to_owned()
        })?;
        online.quiescent();
        writer
            .join()
            .unwrap()
            .map_err(|e| format!("after the quiescent state: {e}"))?;
        // Waits from it go offline; the parent's online thread is not here.
        synchronize_rcu_timeout(FEW_SECONDS).map_err(|e| format!("own wait: {e}"))?;
        drop(online);
        child_works(&["parent-online"])
    });
    release.send(()).unwrap();
    other.join().unwrap();
    parent_works();
    eprintln!("child: {text}");
}

#[test]
fn a_child_forked_while_threads_start_and_exit_runs_its_call_rcu_callbacks() {
    // Rust's standard library keeps a process-wide lock that every thread
    // it starts or ends takes (its stack-overflow bookkeeping). A fork
    // while another thread holds it leaves it held in the child forever, so
    // no thread that the child starts with `std::thread` gets to run. The
    // child's `rcu-call` thread must not be one of them.
    let _serial = serial();
    let stop = Arc::new(AtomicBool::new(false));
    let churners: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    thread::spawn(|| ()).join().unwrap();
                }
            })
        })
        .collect();
    let forks = 200;
    for _ in 0..forks {
        child_passes("fork while threads start and exit", || {
            a_callback_runs_by_the_drain()?;
            // A thread the child starts (not a `std::thread`) reads, and
            // the child's grace periods wait for it.
            let reader = ChildReader::start();
            let held = synchronize_rcu_timeout(Duration::from_millis(1));
            reader.finish();
            ensure(matches!(held, Err(Error::Timeout(_))), || {
                format!("a child's grace period did not wait for its reader: {held:?}")
            })?;
            Ok(String::new())
        });
    }
    stop.store(true, Ordering::SeqCst);
    for churner in churners {
        churner.join().unwrap();
    }
    parent_works();
}

#[test]
fn a_childs_rcu_call_thread_survives_a_panicking_callback() {
    // The child's worker is not a `std::thread` (see the test above): a
    // callback's panic must still be caught and reported, and the callbacks
    // after it run.
    let _serial = serial();
    child_passes("a panicking callback in a child", || {
        // In the child only: the deliberate panic is not printed, and the
        // report of it comes here, to be checked, not to stderr.
        const PANIC: &str = "a callback that fails in the child";
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if common::panic_text(info.payload()) != PANIC {
                previous(info);
            }
        }));
        let (reports_tx, reports) = mpsc::channel();
        rcu_defer::set_report_handler(move |report| {
            let _ = reports_tx.send((report.kind(), report.message().to_owned()));
        });
        let ran = Arc::new(AtomicUsize::new(0));
        let (first, second) = (Arc::clone(&ran), Arc::clone(&ran));
        call_rcu(move || bump(&first));
        call_rcu(|| panic!("{PANIC}"));
        call_rcu(move || bump(&second));
        drain_call_rcu_timeout(FEW_SECONDS).map_err(|e| format!("drain_call_rcu: {e}"))?;
        let n = ran.load(Ordering::SeqCst);
        ensure(n == 2, || {
            format!("{n} of the 2 callbacks around the panicking one ran")
        })?;
        let reports: Vec<_> = reports.try_iter().collect();
        let want = (
            rcu_defer::ReportKind::CallbackPanicked,
            format!("a call_rcu callback panicked: {PANIC}; the rcu-call thread goes on"),
        );
        ensure(reports == [want], || {
            format!("the panic is not reported once as a callback's: {reports:?}")
        })?;
        // The worker is still there for a second batch.
        a_callback_runs_by_the_drain()
            .map_err(|e| format!("after the panicking callback's batch: {e}"))?;
        Ok(String::new())
    });
    parent_works();
}
