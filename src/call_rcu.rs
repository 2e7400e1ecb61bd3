//! `call_rcu`: callbacks that run after a grace period, on one background
//! thread named `rcu-call`, in batches that share one grace period.
//!
//! A small batch waits a moment for company: when the worker finds fewer
//! than `BATCH_MIN` callbacks queued, it gives producers up to the batch
//! window (default 5 ms) to add more before it starts the grace period,
//! unless a `drain_call_rcu` is waiting. One grace period costs every
//! running reader thread an interrupt (`membarrier`), so a writer that
//! replaces a value 10,000 times a second must not cause 10,000 grace
//! periods a second. QEMU's `call_rcu` thread waits the same way.
//!
//! The queue is a list of fixed-size chunks. Producers append to the last
//! chunk; the worker takes the whole list as its batch and frees (or keeps
//! for reuse) each chunk as soon as its callbacks have run. So queue memory
//! follows the backlog, a producer never copies the queue while it holds the
//! lock, and after a flood the memory goes back as the flood drains.

use crate::detect::{self, Error};
use crate::grace;
use crate::reader::read_depth;
use crate::sync::{
    global, lock, thread, thread_local_const, Arc, AtomicU64, Condvar, Mutex, MutexGuard, Ordering,
};
use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

type Callback = Box<dyn FnOnce() + Send + 'static>;

/// Callbacks per chunk of the queue (16 KiB of boxed-closure pointers).
const CHUNK: usize = 1024;

/// Emptied chunks kept for reuse, so that a steady trickle of callbacks does
/// not allocate; the rest are freed.
const SPARE_CHUNKS: usize = 2;

/// A backlog (callbacks queued and not yet taken by the worker) above which
/// `call_rcu` yields its time slice after queueing, so that on a machine
/// with fewer cores than busy threads the worker gets to run. It never
/// waits: this slows a flood, it does not stop it.
const YIELD_ABOVE: usize = 1 << 16;

/// A batch this large starts its grace period at once; a smaller one waits
/// up to the batch window for more callbacks.
const BATCH_MIN: usize = 64;

/// The default batch window, in nanoseconds.
const BATCH_WINDOW_DEFAULT_NS: u64 = 5_000_000;

/// The longest batch window `set_call_rcu_batch_window` accepts (so that
/// a deadline computed from it never overflows `Instant`).
const BATCH_WINDOW_MAX: Duration = Duration::from_secs(60);

global! {
    /// The batch window in nanoseconds; see `set_call_rcu_batch_window`.
    static BATCH_WINDOW_NS: AtomicU64 = AtomicU64::new(BATCH_WINDOW_DEFAULT_NS);
}

/// What the callback thread is doing, as producers need to know it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Worker {
    /// Not spawned yet: the first `call_rcu` spawns it.
    NotStarted,
    /// Taking or running a batch; it looks at the queue again when done.
    Busy,
    /// Sleeping on `WORK` until a producer wakes it.
    Sleeping,
    /// Waiting on `WORK`, with a small batch queued, for more callbacks or
    /// the end of the batch window; woken early by `BATCH_MIN` callbacks or
    /// a drain.
    Gathering,
}

struct Queue {
    /// Queued callbacks, oldest first; only the last chunk has room.
    chunks: Vec<Vec<Callback>>,
    /// How many callbacks `chunks` holds.
    backlog: usize,
    /// Empty chunks (with capacity `CHUNK`) for producers to reuse.
    spare: Vec<Vec<Callback>>,
    worker: Worker,
    /// A `drain_call_rcu` marker is queued: the batch that holds it starts
    /// its grace period without waiting for the window.
    urgent: bool,
    /// Under loom the model must be able to end the worker.
    #[cfg(loom)]
    shutdown: bool,
    #[cfg(loom)]
    handle: Option<thread::JoinHandle<()>>,
}

global! {
    static QUEUE: Mutex<Queue> = Mutex::new(Queue {
        chunks: Vec::new(),
        backlog: 0,
        spare: Vec::new(),
        worker: Worker::NotStarted,
        urgent: false,
        #[cfg(loom)]
        shutdown: false,
        #[cfg(loom)]
        handle: None,
    });
}
global! {
    /// The callback thread sleeps here while the queue is empty.
    static WORK: Condvar = Condvar::new();
}

thread_local_const! {
    /// True on the callback thread.
    static ON_CALLBACK_THREAD: Cell<bool> = Cell::new(false);
}

/// Runs `f` on the `rcu-call` thread after a grace period: after every read
/// section that is running now has ended.
///
/// Never blocks and never runs `f` on the calling thread. The callback
/// thread is started by the first call. Callbacks queued together share one
/// grace period and run in the order they were queued. A callback that
/// panics is reported on stderr with its message; the thread goes on with
/// the next one.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
///
/// let ran = Arc::new(AtomicBool::new(false));
/// let flag = ran.clone();
/// rcu_defer::call_rcu(move || flag.store(true, Ordering::SeqCst));
/// rcu_defer::drain_call_rcu();
/// assert!(ran.load(Ordering::SeqCst));
/// ```
///
/// # Panics
///
/// If the callback thread cannot be spawned (the callback stays queued and
/// the next call tries again).
pub fn call_rcu<F: FnOnce() + Send + 'static>(f: F) {
    enqueue(Box::new(f), false);
}

/// Sets how long the `rcu-call` thread waits for more callbacks before it
/// starts a grace period for a batch of fewer than 64 (default 5 ms;
/// `Duration::ZERO` starts one at once for every batch).
///
/// Every grace period costs each thread that is running at that moment an
/// interrupt in the membarrier flavor, so a longer window means fewer
/// interruptions under a steady trickle of `call_rcu` (an
/// [`RcuCell`](crate::RcuCell) writer, say), and memory freed that much
/// later. [`drain_call_rcu`] never waits for the window. Takes effect from
/// the next batch.
///
/// ```
/// use std::time::Duration;
/// rcu_defer::set_call_rcu_batch_window(Duration::from_millis(1));
/// ```
///
/// # Panics
///
/// If `window` is longer than a minute (`BATCH_WINDOW_MAX`): callbacks
/// that wait that long for company are memory that is never freed in
/// practice, which is not what a batch window is for.
pub fn set_call_rcu_batch_window(window: Duration) {
    assert!(
        window <= BATCH_WINDOW_MAX,
        "rcu-defer: a call_rcu batch window of {window:?} is longer than the maximum of \
         {BATCH_WINDOW_MAX:?}"
    );
    // At most a minute of nanoseconds: it fits.
    let ns = window.as_nanos() as u64;
    // Relaxed: a configuration value with no data attached.
    BATCH_WINDOW_NS.store(ns, Ordering::Relaxed);
}

/// The batch window in effect. Zero under loom, which has no clock: a
/// timed wait there would be a wait that only a notification ends.
fn batch_window() -> Duration {
    if cfg!(loom) {
        return Duration::ZERO;
    }
    // Relaxed: see `set_call_rcu_batch_window`.
    Duration::from_nanos(BATCH_WINDOW_NS.load(Ordering::Relaxed))
}

/// Queues `callback`; `urgent` for a drain's marker.
fn enqueue(callback: Callback, urgent: bool) {
    let mut queue = lock(&QUEUE);
    queue.push(callback);
    queue.urgent |= urgent;
    let backlog = queue.backlog;
    queue.wake_worker();
    drop(queue);
    if backlog > YIELD_ABOVE {
        thread::yield_now();
    }
}

impl Queue {
    fn push(&mut self, callback: Callback) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push(callback),
            _ => {
                let mut chunk = self
                    .spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(CHUNK));
                chunk.push(callback);
                self.chunks.push(chunk);
            }
        }
        self.backlog += 1;
    }

    /// Takes back an emptied chunk, for reuse or to free.
    fn recycle(&mut self, chunk: Vec<Callback>) {
        if self.spare.len() < SPARE_CHUNKS {
            self.spare.push(chunk);
        }
    }

    /// Makes sure the worker runs (or will look at the queue again).
    fn wake_worker(&mut self) {
        match self.worker {
            Worker::Busy => {}
            Worker::Sleeping => {
                self.worker = Worker::Busy;
                WORK.notify_one();
            }
            Worker::Gathering => {
                if self.urgent || self.backlog >= BATCH_MIN {
                    self.worker = Worker::Busy;
                    WORK.notify_one();
                }
            }
            Worker::NotStarted => {
                let spawned = thread::Builder::new()
                    .name("rcu-call".to_owned())
                    .spawn(worker_loop);
                match spawned {
                    Ok(_handle) => {
                        #[cfg(loom)]
                        {
                            self.handle = Some(_handle);
                        }
                        self.worker = Worker::Busy;
                    }
                    Err(e) => panic!("rcu-defer: cannot start the rcu-call thread: {e}"),
                }
            }
        }
    }
}

fn worker_loop() {
    ON_CALLBACK_THREAD.with(|on| on.set(true));
    let mut batch: Vec<Vec<Callback>> = Vec::new();
    let mut spare: Vec<Vec<Callback>> = Vec::new();
    loop {
        {
            let mut queue = lock(&QUEUE);
            for chunk in spare.drain(..) {
                queue.recycle(chunk);
            }
            while queue.chunks.is_empty() {
                #[cfg(loom)]
                if queue.shutdown {
                    return;
                }
                queue.worker = Worker::Sleeping;
                queue = WORK.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
            queue = gather(queue);
            queue.urgent = false;
            // Take the whole queue; the emptied list of chunks goes back to
            // producers so that its allocation is reused.
            std::mem::swap(&mut queue.chunks, &mut batch);
            queue.backlog = 0;
        }
        // One grace period for the whole batch. The callback thread holds
        // no read section unless a callback leaked a guard, which the check
        // after each callback reports; the stall detector then names it.
        if let Err(report) = grace::grace_period(None) {
            unreachable!("a grace period without a time limit returned {report}");
        }
        for mut chunk in batch.drain(..) {
            for callback in chunk.drain(..) {
                run_callback(callback);
            }
            // Keep a few emptied chunks for producers (handed over when the
            // worker next takes the lock, so none is taken here); free the
            // rest now.
            if spare.len() < SPARE_CHUNKS {
                spare.push(chunk);
            }
        }
    }
}

/// Gives a small batch up to the batch window to grow before its grace
/// period starts; returns at once for a large or urgent batch.
fn gather(mut queue: MutexGuard<'static, Queue>) -> MutexGuard<'static, Queue> {
    let window = batch_window();
    if window.is_zero() {
        return queue;
    }
    let deadline = Instant::now() + window;
    while queue.backlog < BATCH_MIN && !queue.urgent {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        queue.worker = Worker::Gathering;
        queue = WORK
            .wait_timeout(queue, deadline - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    queue.worker = Worker::Busy;
    queue
}

fn run_callback(callback: Callback) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(callback)) {
        eprintln!(
            "rcu-defer: a call_rcu callback panicked: {}; the rcu-call thread goes on",
            panic_message(&*payload)
        );
    }
    let depth = read_depth();
    if depth > 0 {
        eprintln!(
            "rcu-defer: a call_rcu callback returned inside a read section (depth {depth}); \
             the rcu-call thread cannot run grace periods until it ends"
        );
    }
}

/// The message of a panic payload, for reports.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(a panic payload that is not a string)"
    }
}

/// Waits until every callback queued with [`call_rcu`] before this call,
/// by any thread, has run.
///
/// # Panics
///
/// Inside a read section (the callbacks wait for a grace period, which
/// waits for that section), or from a `call_rcu` callback (it would wait for
/// itself). [`try_drain_call_rcu`] returns these as errors instead.
///
/// ```
/// rcu_defer::call_rcu(|| println!("after a grace period"));
/// rcu_defer::drain_call_rcu();
/// ```
pub fn drain_call_rcu() {
    if let Err(e) = try_drain_call_rcu() {
        panic!("{e}");
    }
}

/// Like [`drain_call_rcu`], but returns [`Error::InReadSection`] or
/// [`Error::InCallRcuCallback`] at once instead of panicking.
pub fn try_drain_call_rcu() -> Result<(), Error> {
    const OP: &str = "drain_call_rcu";
    if ON_CALLBACK_THREAD.with(Cell::get) {
        return Err(Error::InCallRcuCallback { op: OP });
    }
    detect::check_may_wait(OP)?;
    let done = Arc::new((Mutex::new(false), Condvar::new()));
    let signal = Arc::clone(&done);
    // Callbacks run in queue order, so when this marker runs every callback
    // queued before it has run. Urgent: its batch does not wait for the
    // batch window.
    enqueue(
        Box::new(move || {
            *lock(&signal.0) = true;
            signal.1.notify_all();
        }),
        true,
    );
    let mut finished = lock(&done.0);
    while !*finished {
        finished = done.1.wait(finished).unwrap_or_else(|p| p.into_inner());
    }
    Ok(())
}

/// Stops the callback thread once its queue is empty and joins it, so that
/// a loom model can end. Only under `cfg(loom)`.
#[cfg(loom)]
#[doc(hidden)]
pub fn loom_stop_call_rcu_thread() {
    let handle = {
        let mut queue = lock(&QUEUE);
        queue.shutdown = true;
        WORK.notify_one();
        queue.handle.take()
    };
    if let Some(handle) = handle {
        handle.join().expect("the rcu-call thread panicked");
    }
}
