//! Threads for forked children: started with `pthread_create(3)` directly.
//!
//! Rust's standard library takes one process-wide lock in every thread it
//! starts or ends (its stack-overflow bookkeeping). The test harness starts
//! a thread per test and ends it after, so a test that forks can do so
//! while another thread holds that lock; in the child it then stays held,
//! and a `std::thread` the child starts never runs. A child's extra
//! threads are these instead. They have no name in `std::thread::current()`
//! (the standard library did not start them); their `ThreadId` is there.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::{Arc, Mutex};
use std::thread;

/// What a [`RawThread`] leaves for its joiner.
type Slot<T> = Arc<Mutex<Option<thread::Result<T>>>>;

/// A thread started by [`spawn`]; join it to get `f`'s result. Dropped
/// unjoined, it is detached (it runs on; its resources are freed when it
/// ends).
pub struct RawThread<T> {
    /// `None` once joined.
    thread: Option<libc::pthread_t>,
    result: Slot<T>,
}

/// Starts a thread that runs `f`, with `pthread_create` (see the module
/// documentation). `f`'s panic is caught on the thread and handed to
/// [`RawThread::join`].
///
/// # Panics
///
/// If the thread cannot be started.
pub fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> RawThread<T> {
    let result: Slot<T> = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&result);
    let body: Box<dyn FnOnce() + Send> = Box::new(move || {
        let outcome = catch_unwind(AssertUnwindSafe(f));
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
    });
    let start = Box::into_raw(Box::new(body));
    let mut thread: libc::pthread_t = 0;
    // SAFETY: `thread` is a valid out-pointer, null attributes mean the
    // defaults, `run` has the start-routine signature and never unwinds
    // (`body` catches `f`'s panics), and `start` comes from `Box::into_raw`
    // and is taken back only by `run`, on the new thread.
    let rc = unsafe { libc::pthread_create(&mut thread, ptr::null(), run, start.cast()) };
    if rc != 0 {
        // SAFETY: no thread started, so `run` never took `start`: this is
        // its only owner.
        drop(unsafe { Box::from_raw(start) });
        panic!("pthread_create: {}", std::io::Error::from_raw_os_error(rc));
    }
    RawThread {
        thread: Some(thread),
        result,
    }
}

/// The start routine of [`spawn`]'s threads.
extern "C" fn run(start: *mut c_void) -> *mut c_void {
    // SAFETY: `start` is the boxed body that `spawn` gave up with
    // `Box::into_raw` for this thread alone.
    let body = unsafe { Box::from_raw(start.cast::<Box<dyn FnOnce() + Send>>()) };
    body();
    ptr::null_mut()
}

impl<T> RawThread<T> {
    /// Whether the thread's body has returned (or panicked).
    pub fn is_finished(&self) -> bool {
        self.result
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Waits for the thread to end; returns `f`'s result, or its panic.
    pub fn join(mut self) -> thread::Result<T> {
        let thread = self.thread.take().expect("joined once");
        // SAFETY: `thread` was started by `spawn`, is joinable, and is
        // neither joined nor detached elsewhere (it was just taken out of
        // `self`, so `drop` will not detach it); no result pointer is asked
        // for.
        let rc = unsafe { libc::pthread_join(thread, ptr::null_mut()) };
        assert_eq!(rc, 0, "pthread_join");
        self.result
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("the thread ended without leaving its result")
    }
}

impl<T> Drop for RawThread<T> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // SAFETY: `thread` was started by `spawn` and has been neither
            // joined nor detached (`join` takes it out of `self` first).
            unsafe { libc::pthread_detach(thread) };
        }
    }
}
