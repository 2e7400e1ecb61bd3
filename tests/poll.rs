//! Claims about polled grace periods: a cookie is complete only once a
//! grace period that began after it has completed, a started cookie
//! completes with nobody waiting, an earlier cookie is complete whenever a
//! later one is, and taking and polling a cookie that is already asked for
//! makes no system call.

mod common;

use common::within;
use rcu_defer::{
    cond_synchronize_rcu, get_state_synchronize_rcu, poll_state_synchronize_rcu, read_lock,
    start_poll_synchronize_rcu, synchronize_rcu, PollState,
};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// A reader in a section holds up every grace period: one test at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A thread inside a read section until the sender is dropped or sent to.
fn reader_in_section() -> (mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let handle = thread::spawn(move || {
        let guard = read_lock();
        entered_tx.send(()).unwrap();
        let _ = release_rx.recv();
        drop(guard);
    });
    common::recv(&entered_rx, "the reader to enter");
    (release, handle)
}

#[test]
fn a_cookie_is_complete_only_after_a_grace_period_that_began_after_it() {
    let _serial = serial();
    within("the grace periods", || {
        let cookie = get_state_synchronize_rcu();
        assert!(!poll_state_synchronize_rcu(cookie), "complete when taken");
        synchronize_rcu();
        assert!(poll_state_synchronize_rcu(cookie));
        let next = get_state_synchronize_rcu();
        assert_ne!(cookie, next);
        assert!(!poll_state_synchronize_rcu(next));
    });
}

#[test]
fn a_cookie_taken_while_a_reader_is_in_its_section_stays_incomplete_until_the_section_ends() {
    let _serial = serial();
    let (release, reader) = reader_in_section();
    let cookie = start_poll_synchronize_rcu();
    thread::sleep(Duration::from_millis(200));
    assert!(
        !poll_state_synchronize_rcu(cookie),
        "complete while a section that began before it is still open"
    );
    release.send(()).unwrap();
    reader.join().unwrap();
    within("cond_synchronize_rcu", move || {
        cond_synchronize_rcu(cookie);
        assert!(poll_state_synchronize_rcu(cookie));
    });
}

#[test]
fn a_started_cookie_completes_with_nobody_waiting_for_it() {
    let _serial = serial();
    let cookie = start_poll_synchronize_rcu();
    let deadline = Instant::now() + common::HANG_LIMIT;
    while !poll_state_synchronize_rcu(cookie) {
        assert!(
            Instant::now() < deadline,
            "the started cookie never completed"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn an_earlier_cookie_is_complete_whenever_a_later_one_is() {
    let _serial = serial();
    // Grace periods run on other threads while cookies are taken.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    synchronize_rcu();
                }
            })
        })
        .collect();
    let mut cookies: Vec<PollState> = Vec::new();
    for i in 0..2000 {
        cookies.push(if i % 2 == 0 {
            start_poll_synchronize_rcu()
        } else {
            get_state_synchronize_rcu()
        });
        let complete: Vec<bool> = cookies
            .iter()
            .map(|&c| poll_state_synchronize_rcu(c))
            .collect();
        // Polled from the newest to the oldest, completion can only grow.
        let newest_complete = complete.iter().rposition(|&c| c);
        if let Some(n) = newest_complete {
            for (j, &c) in cookies[..n].iter().enumerate() {
                assert!(
                    poll_state_synchronize_rcu(c),
                    "cookie {j} is incomplete but the later cookie {n} is complete"
                );
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    cond_synchronize_rcu(*cookies.last().unwrap());
    assert!(cookies.iter().all(|&c| poll_state_synchronize_rcu(c)));
}

#[test]
fn cond_synchronize_rcu_on_a_complete_cookie_returns_at_once_and_inside_a_section_panics() {
    let _serial = serial();
    within("cond_synchronize_rcu", || {
        let cookie = get_state_synchronize_rcu();
        synchronize_rcu();
        let started = Instant::now();
        cond_synchronize_rcu(cookie);
        assert!(started.elapsed() < Duration::from_millis(50));
        let guard = read_lock();
        let refused = std::panic::catch_unwind(|| cond_synchronize_rcu(cookie));
        let text = common::panic_text(&*refused.expect_err("inside a section it must panic"));
        assert!(text.contains("cond_synchronize_rcu"), "{text}");
        drop(guard);
    });
}

/// In a forked child whose grace periods are held up by a reader, one
/// cookie is started (asking for the next grace period) and then the
/// calling thread installs a seccomp filter that kills the process on any
/// system call but `write` and `exit_group`; it then takes and polls a
/// thousand cookies, which the reader keeps incomplete and which the first
/// one already asked for, writes "ok" and exits. A system call among them
/// would kill the child with SIGSYS.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
#[test]
fn taking_and_polling_a_cookie_already_asked_for_makes_no_system_call() {
    let _serial = serial();
    let mut fds = [0; 2];
    // SAFETY: `pipe` writes two new descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: in the child only this thread exists; it leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // Not a `std::thread`: the harness starts and ends threads, and a
        // child forked meanwhile could not start one (see
        // `common::raw_thread`).
        let (entered_tx, entered_rx) = mpsc::channel();
        let _reader = common::raw_thread::spawn(move || {
            let _guard = read_lock();
            entered_tx.send(()).unwrap();
            // Held until the child exits.
            loop {
                thread::park();
            }
        });
        common::recv(&entered_rx, "the child's reader to enter");
        // The first cookie asks for the next grace period (the rcu-call
        // thread starts it; the reader holds it up); the second asks for
        // the one after it; from the third on, cookies are for that one.
        let _ = start_poll_synchronize_rcu();
        let _ = start_poll_synchronize_rcu();
        thread::sleep(Duration::from_millis(100));
        kill_on_any_syscall_but_write_and_exit();
        let mut complete = 0;
        for _ in 0..1000 {
            let cookie = start_poll_synchronize_rcu();
            complete += usize::from(poll_state_synchronize_rcu(cookie));
            let cookie = get_state_synchronize_rcu();
            complete += usize::from(poll_state_synchronize_rcu(cookie));
        }
        let msg: &[u8] = if complete == 0 { b"ok" } else { b"complete" };
        // SAFETY: `fds[1]` is open; the slice is valid.
        unsafe {
            libc::write(fds[1], msg.as_ptr().cast(), msg.len());
            libc::_exit(0);
        }
    }
    // SAFETY: the parent closes its copy of the write end.
    unsafe { libc::close(fds[1]) };
    let status = common::wait_child(pid, common::HANG_LIMIT);
    let mut buf = [0u8; 16];
    // SAFETY: `fds[0]` is open; the buffer is valid.
    let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: closes the read end, owned here.
    unsafe { libc::close(fds[0]) };
    assert!(
        libc::WIFEXITED(status),
        "the child was killed (signal {}): a cookie made a system call",
        libc::WTERMSIG(status)
    );
    assert_eq!(&buf[..n.max(0) as usize], b"ok");
}

/// Installs, for the calling thread only, a seccomp filter that kills the
/// process on any system call other than `write` and `exit_group`.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn kill_on_any_syscall_but_write_and_exit() {
    let allow = libc::SECCOMP_RET_ALLOW;
    common::seccomp::install(
        &[(libc::SYS_write, allow), (libc::SYS_exit_group, allow)],
        libc::SECCOMP_RET_KILL_PROCESS,
        common::seccomp::Threads::Calling,
    )
    .expect("installing the seccomp filter");
}
