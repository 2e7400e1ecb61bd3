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
//!
//! While its grace period runs, the batch stays in the queue's state (as
//! `in_flight`, under the queue's lock), and the worker takes it out only to
//! run it. So a `fork()` child, where the worker thread does not exist, gets
//! back every callback whose grace period had not ended at the fork (see
//! `after_fork_child`): only the callbacks of a batch that the worker was
//! running are not run there.
//!
//! A batch whose grace period fails (a `membarrier` refused by a seccomp
//! filter) or panics goes back to the head of the queue, uncalled: its
//! callbacks typically free values that readers may still hold, so they run
//! after a later grace period that succeeds, or never. The drains waiting
//! for that batch get the error; the worker retries with a growing delay
//! (up to a second), at once when a new drain arrives. If the worker itself
//! unwinds (a bug: user callbacks are caught), its batch goes back the same
//! way and a new worker is started.

use crate::detect::{self, Error, Waiter};
use crate::fork;
use crate::grace;
use crate::reader::{gp_counter, offline_while, read_depth, registry, with_local, Local};
pub(crate) use crate::report::panic_message;
use crate::report::report;
use crate::sync::{
    global, lock, thread, thread_local_const, Arc, AtomicU64, Condvar, Mutex, MutexGuard, Ordering,
};
#[cfg(not(loom))]
use crate::sys;
use std::cell::Cell;
use std::io;
use std::mem;
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
    /// Not spawned yet, or its thread has died: the next `call_rcu` spawns
    /// one.
    NotStarted,
    /// Taking or running a batch; it looks at the queue again when done.
    Busy,
    /// Sleeping on `WORK` until a producer wakes it.
    Sleeping,
    /// Waiting on `WORK`, with a small batch queued, for more callbacks or
    /// the end of the batch window; woken early by `BATCH_MIN` callbacks or
    /// a drain.
    Gathering,
    /// Waiting on `WORK` before it retries a batch whose grace period
    /// failed; woken early by a drain.
    Retrying,
}

struct Queue {
    /// Queued callbacks, oldest first.
    chunks: Vec<Vec<Callback>>,
    /// How many callbacks `chunks` holds.
    backlog: usize,
    /// Empty chunks (with capacity `CHUNK`) for producers to reuse.
    spare: Vec<Vec<Callback>>,
    worker: Worker,
    /// A `drain_call_rcu` marker is queued: the batch that holds it starts
    /// its grace period without waiting for the window.
    urgent: bool,
    /// The drains whose markers are in `chunks`: the worker takes them with
    /// its batch, to tell them if the batch's grace period fails.
    drains: Vec<Arc<Drain>>,
    /// The batch the worker has taken, oldest first, while its grace period
    /// runs; empty otherwise. The worker takes it out to run it once the
    /// grace period is over, and gives it back to the head of `chunks` if
    /// the grace period fails.
    in_flight: Vec<Vec<Callback>>,
    /// The drains whose markers are in `in_flight`.
    in_flight_drains: Vec<Arc<Drain>>,
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
        drains: Vec::new(),
        in_flight: Vec::new(),
        in_flight_drains: Vec::new(),
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
/// panics is reported with its message (see
/// [`set_report_handler`](crate::set_report_handler); stderr by default);
/// the thread goes on with the next one.
///
/// If grace periods cannot end (see
/// [`Error::MembarrierFailed`](crate::Error::MembarrierFailed)), callbacks
/// stay queued and are never called early.
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
    if let Err(e) = enqueue(Box::new(f)) {
        panic!(
            "rcu-defer: cannot start the rcu-call thread: {e}; the callback stays queued and \
             the next call_rcu tries again"
        );
    }
}

/// `call_rcu` for a value retired on a path that must not panic (one that
/// is already unwinding): a callback thread that cannot be spawned is
/// reported, and the callback stays queued for the next `call_rcu`.
pub(crate) fn call_rcu_or_report<F: FnOnce() + Send + 'static>(f: F) {
    if let Err(e) = enqueue(Box::new(f)) {
        report!(
            CallRcuThread,
            "cannot start the rcu-call thread: {e}; a retired value stays queued until the \
             next call_rcu starts it"
        );
    }
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

/// Queues `callback`. An error means the worker could not be spawned; the
/// callback stays queued.
fn enqueue(callback: Callback) -> io::Result<()> {
    // The worker's takes of the queue's lock come after this one (it is
    // started under it).
    register_for_fork();
    let mut queue = lock(&QUEUE);
    queue.push(callback);
    let backlog = queue.backlog;
    let woken = queue.wake_worker();
    drop(queue);
    if backlog > YIELD_ABOVE {
        thread::yield_now();
    }
    woken
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

    /// Puts the in-flight batch back at the head of the queue, ahead of the
    /// callbacks queued since, so that queue order is kept; `in_flight`
    /// keeps its allocation for the next batch.
    fn give_back_in_flight(&mut self) {
        if self.in_flight.is_empty() {
            return;
        }
        self.backlog += self.in_flight.iter().map(Vec::len).sum::<usize>();
        let mut queued_since = mem::replace(&mut self.chunks, mem::take(&mut self.in_flight));
        self.chunks.append(&mut queued_since);
        self.in_flight = queued_since;
    }

    /// Tells the drains waiting for the in-flight batch that its grace period
    /// failed (their markers are back in the queue and run later, unheard).
    fn fail_in_flight_drains(&mut self, error: &Error) {
        for drain in self.in_flight_drains.drain(..) {
            drain.finish(Err(error.clone()));
        }
    }

    /// Takes back an emptied chunk, for reuse or to free.
    fn recycle(&mut self, chunk: Vec<Callback>) {
        if self.spare.len() < SPARE_CHUNKS {
            self.spare.push(chunk);
        }
    }

    /// Makes sure the worker runs (or will look at the queue again). An
    /// error means no worker runs and none could be spawned.
    fn wake_worker(&mut self) -> io::Result<()> {
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
            Worker::Retrying => {
                if self.urgent {
                    self.worker = Worker::Busy;
                    WORK.notify_one();
                }
            }
            Worker::NotStarted => {
                self.start_worker()?;
                self.worker = Worker::Busy;
            }
        }
        Ok(())
    }

    /// Starts a worker thread.
    #[cfg(loom)]
    fn start_worker(&mut self) -> io::Result<()> {
        self.handle = Some(thread::Builder::new().spawn(worker_loop)?);
        Ok(())
    }

    /// Starts a worker thread: with `std::thread`, except in a forked
    /// child, where a `std::thread` may never get to run (see
    /// `sys::spawn_after_fork`).
    #[cfg(not(loom))]
    fn start_worker(&mut self) -> io::Result<()> {
        if fork::generation() > 0 {
            return sys::spawn_after_fork(c"rcu-call", worker_loop);
        }
        thread::Builder::new()
            .name("rcu-call".to_owned())
            .spawn(worker_loop)
            .map(drop)
    }
}

/// The batch the worker runs, its grace period over.
///
/// Until its callbacks have run, it is the only owner of values that
/// readers may still hold: if the worker unwinds, dropping it gives every
/// callback that has not run back to the queue (never drops one).
struct Batch {
    /// Oldest first. A callback that has run is replaced by a no-op, and a
    /// chunk that has run is left empty.
    chunks: Vec<Vec<Callback>>,
}

impl Batch {
    /// Runs every callback, in order, handing emptied chunks to `spare`
    /// (up to `SPARE_CHUNKS`; the rest are freed as they empty).
    fn run(&mut self, spare: &mut Vec<Vec<Callback>>) {
        for i in 0..self.chunks.len() {
            for j in 0..self.chunks[i].len() {
                // A zero-sized closure: replacing allocates nothing.
                let callback = mem::replace(&mut self.chunks[i][j], Box::new(|| {}));
                run_callback(callback);
            }
            let mut chunk = mem::take(&mut self.chunks[i]);
            if spare.len() < SPARE_CHUNKS {
                chunk.clear();
                spare.push(chunk);
            }
        }
        self.chunks.clear();
    }

    /// Puts the callbacks that have not run back at the head of the queue,
    /// ahead of those queued since, so that queue order is kept.
    fn give_back(&mut self, queue: &mut Queue) {
        let mut chunks: Vec<Vec<Callback>> = mem::take(&mut self.chunks)
            .into_iter()
            .filter(|chunk| !chunk.is_empty())
            .collect();
        queue.backlog += chunks.iter().map(Vec::len).sum::<usize>();
        chunks.append(&mut queue.chunks);
        queue.chunks = chunks;
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if self.chunks.is_empty() {
            return;
        }
        // The worker is unwinding.
        let mut queue = lock(&QUEUE);
        self.give_back(&mut queue);
    }
}

/// The worker's hold on the in-flight batch (`Queue::in_flight`) while its
/// grace period runs: if the worker unwinds meanwhile, dropping it gives
/// the batch back to the queue and fails its drains. The worker forgets it
/// once it has taken the batch out.
struct InFlight;

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut queue = lock(&QUEUE);
        queue.give_back_in_flight();
        queue.fail_in_flight_drains(&Error::GracePeriodPanicked {
            message: "the rcu-call thread panicked".to_owned(),
        });
    }
}

/// The worker thread's life: if it unwinds (a bug: user callbacks are
/// caught), dropping this, after the batch guards have given their
/// callbacks back, lets a new worker start, and starts one at once if
/// callbacks are queued. One guard per worker, so one restart.
struct WorkerLife;

impl Drop for WorkerLife {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            // Only a loom model ends the worker without unwinding.
            return;
        }
        let mut queue = lock(&QUEUE);
        queue.worker = Worker::NotStarted;
        if !queue.chunks.is_empty() {
            if let Err(e) = queue.wake_worker() {
                // Reports are made with no lock held.
                drop(queue);
                report!(
                    CallRcuThread,
                    "cannot restart the rcu-call thread: {e}; its callbacks stay queued until \
                     the next call_rcu starts it"
                );
            }
        }
    }
}

fn worker_loop() {
    ON_CALLBACK_THREAD.with(|on| on.set(true));
    // Declared first, dropped last.
    let _life = WorkerLife;
    let mut batch = Batch { chunks: Vec::new() };
    let mut spare: Vec<Vec<Callback>> = Vec::new();
    // Grace periods that have failed in a row.
    let mut failures: u32 = 0;
    loop {
        {
            let mut queue = lock(&QUEUE);
            for chunk in spare.drain(..) {
                queue.recycle(chunk);
            }
            if failures > 0 {
                queue = back_off(queue, failures);
                #[cfg(loom)]
                if queue.shutdown {
                    return;
                }
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
            // Take the whole queue as the in-flight batch; the emptied list
            // of chunks (the last batch's) goes back to producers so that its
            // allocation is reused.
            debug_assert!(queue.in_flight.is_empty() && queue.in_flight_drains.is_empty());
            let queue = &mut *queue;
            mem::swap(&mut queue.chunks, &mut queue.in_flight);
            queue.backlog = 0;
            mem::swap(&mut queue.drains, &mut queue.in_flight_drains);
        }
        let in_flight = InFlight;
        #[cfg(test)]
        tests::maybe_die();
        // One grace period for the whole batch. The callback thread holds
        // no read section unless a callback leaked a guard, which the check
        // after each callback reports; the stall detector then names it.
        let outcome = caught_grace_period();
        let mut queue = lock(&QUEUE);
        mem::forget(in_flight);
        match outcome {
            Ok(()) => {
                // Take the batch out to run it (leaving `in_flight` the
                // emptied list of the last run). A drain's marker callback
                // tells it; it needs nothing else.
                mem::swap(&mut queue.in_flight, &mut batch.chunks);
                queue.in_flight_drains.clear();
                drop(queue);
                if failures > 0 {
                    report!(
                        CallRcuThreadRecovered,
                        "grace periods work again after {failures} failed attempt(s); the \
                         rcu-call thread runs its queued callbacks"
                    );
                    failures = 0;
                }
                batch.run(&mut spare);
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let pending = queue.in_flight.iter().map(Vec::len).sum::<usize>() + queue.backlog;
                queue.give_back_in_flight();
                queue.fail_in_flight_drains(&error);
                drop(queue);
                if failures == 1 {
                    report!(
                        CallRcuThread,
                        "the rcu-call thread's grace period failed: {error}; its {pending} \
                         callback(s) stay queued, uncalled, and it retries at most a second \
                         apart"
                    );
                }
            }
        }
    }
}

/// One grace period for the worker, with a panic turned into an error (the
/// batch must survive it).
fn caught_grace_period() -> Result<(), Error> {
    match catch_unwind(|| grace::grace_period(None)) {
        Ok(result) => result,
        Err(payload) => Err(Error::GracePeriodPanicked {
            message: panic_message(&*payload).to_owned(),
        }),
    }
}

/// After `failures` failed grace periods in a row: waits before the next
/// attempt, 10 ms doubling up to a second, or until a drain arrives.
fn back_off(queue: MutexGuard<'static, Queue>, failures: u32) -> MutexGuard<'static, Queue> {
    let delay = Duration::from_millis(10)
        .saturating_mul(1 << (failures - 1).min(7))
        .min(Duration::from_secs(1));
    // No clock under loom: only a drain (or the shutdown) ends the wait.
    let deadline = (!cfg!(loom)).then(|| Instant::now() + delay);
    wait_for_work(queue, Worker::Retrying, deadline, |queue| queue.urgent)
}

/// Gives a small batch up to the batch window to grow before its grace
/// period starts; returns at once for a large or urgent batch.
fn gather(queue: MutexGuard<'static, Queue>) -> MutexGuard<'static, Queue> {
    let window = batch_window();
    if window.is_zero() {
        return queue;
    }
    let deadline = Instant::now() + window;
    wait_for_work(queue, Worker::Gathering, Some(deadline), |queue| {
        queue.backlog >= BATCH_MIN || queue.urgent
    })
}

/// Waits on `WORK`, showing producers `state`, until `enough` holds or
/// `deadline` passes; the worker is `Busy` again when it returns.
fn wait_for_work(
    mut queue: MutexGuard<'static, Queue>,
    state: Worker,
    deadline: Option<Instant>,
    enough: impl Fn(&Queue) -> bool,
) -> MutexGuard<'static, Queue> {
    while !enough(&queue) {
        #[cfg(loom)]
        if queue.shutdown {
            break;
        }
        queue.worker = state;
        queue = match deadline {
            None => WORK.wait(queue).unwrap_or_else(|p| p.into_inner()),
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                WORK.wait_timeout(queue, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
    }
    queue.worker = Worker::Busy;
    queue
}

fn run_callback(callback: Callback) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(callback)) {
        report!(
            CallbackPanicked,
            "a call_rcu callback panicked: {}; the rcu-call thread goes on",
            panic_message(&*payload)
        );
    }
    let depth = read_depth();
    if depth > 0 {
        report!(
            CallRcuThread,
            "a call_rcu callback returned inside a read section (depth {depth}); the rcu-call \
             thread cannot run grace periods until it ends"
        );
    }
    // A callback that went online and did not go offline again (its
    // `Online` handle leaked, or kept somewhere that outlives it) would
    // leave the worker online while it sleeps between batches, holding up
    // every grace period, its own included: take it offline, as dropping
    // the handle would have.
    if let Some(Some(made_at)) =
        with_local(|local| local.is_online().then(|| local.online_handle.get()))
    {
        let _ = with_local(Local::drop_online);
        let made_at = made_at.map_or_else(|| "an unknown location".to_owned(), |at| at.to_string());
        report!(
            CallRcuThread,
            "a call_rcu callback returned with the rcu-call thread online (its Online handle \
             was made at {made_at} and not dropped); the thread is taken offline, since an \
             online thread waiting for callbacks would hold up every grace period"
        );
    }
}

/// A `drain_call_rcu` waiting for its marker callback.
struct Drain {
    /// `None` until the marker has run (`Ok`) or its batch's grace period
    /// has failed (`Err`).
    outcome: Mutex<Option<Result<(), Error>>>,
    done: Condvar,
    /// `fork::generation()` when the drain began: in a fork's child, where
    /// its waiting thread does not exist, the drain is of an older
    /// generation.
    generation: u64,
}

impl Drain {
    /// Records the outcome (the first one counts) and wakes the waiter.
    ///
    /// In a fork's child, a drain of the parent has no waiter, and its lock
    /// may have been held by that waiter at the fork (and so stay locked
    /// forever): its marker, which the child's worker runs, does nothing.
    fn finish(&self, outcome: Result<(), Error>) {
        if self.generation != fork::generation() {
            return;
        }
        let mut slot = lock(&self.outcome);
        if slot.is_none() {
            *slot = Some(outcome);
        }
        self.done.notify_all();
    }

    /// Waits for the outcome until `until`; `None` if it passed first.
    fn wait(&self, until: Option<Instant>) -> Option<Result<(), Error>> {
        let mut slot = lock(&self.outcome);
        loop {
            if let Some(outcome) = slot.take() {
                return Some(outcome);
            }
            slot = match until {
                None => self.done.wait(slot).unwrap_or_else(|p| p.into_inner()),
                Some(until) => {
                    let now = Instant::now();
                    if now >= until {
                        return None;
                    }
                    self.done
                        .wait_timeout(slot, until - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }
}

/// Waits until every callback queued with [`call_rcu`] before this call,
/// by any thread, has run.
///
/// # Panics
///
/// With the message of the [`Error`] that [`try_drain_call_rcu`] would
/// return, located at the caller: inside a read section (the callbacks wait
/// for a grace period, which waits for that section), from a `call_rcu`
/// callback (it would wait for itself) or the stall handler, or when the
/// grace period of the callbacks fails
/// ([`Error::MembarrierFailed`](crate::Error::MembarrierFailed)).
/// Also if the callback thread cannot be spawned.
///
/// ```
/// rcu_defer::call_rcu(|| println!("after a grace period"));
/// rcu_defer::drain_call_rcu();
/// ```
#[track_caller]
pub fn drain_call_rcu() {
    if let Err(e) = try_drain_call_rcu() {
        panic!("{e}");
    }
}

/// Like [`drain_call_rcu`], but returns the error instead of panicking:
/// [`Error::InReadSection`], [`Error::InCallRcuCallback`] or
/// [`Error::InStallHandler`] at once, and
/// [`Error::MembarrierFailed`](crate::Error::MembarrierFailed) (or
/// [`Error::GracePeriodPanicked`]) when the grace period of the callbacks
/// fails; they stay queued then.
///
/// # Panics
///
/// If the callback thread cannot be spawned.
#[track_caller]
pub fn try_drain_call_rcu() -> Result<(), Error> {
    drain("drain_call_rcu", None)
}

/// Like [`try_drain_call_rcu`], but gives up once `limit` has passed and
/// returns [`Error::Timeout`] with a report of the readers that hold up
/// the callbacks' grace period, if any: for shutdown paths that must not
/// hang on a stuck reader.
///
/// Giving up cancels nothing: the callbacks still run after their grace
/// period.
///
/// ```
/// use std::time::Duration;
/// rcu_defer::call_rcu(|| ());
/// rcu_defer::drain_call_rcu_timeout(Duration::from_secs(5)).unwrap();
/// ```
///
/// # Panics
///
/// If the callback thread cannot be spawned.
#[track_caller]
pub fn drain_call_rcu_timeout(limit: Duration) -> Result<(), Error> {
    drain("drain_call_rcu_timeout", Instant::now().checked_add(limit))
}

#[track_caller]
fn drain(op: &'static str, until: Option<Instant>) -> Result<(), Error> {
    if ON_CALLBACK_THREAD.with(Cell::get) {
        return Err(Error::InCallRcuCallback { op });
    }
    detect::check_may_wait(op)?;
    register_for_fork();
    let called = Instant::now();
    let drain = Arc::new(Drain {
        outcome: Mutex::new(None),
        done: Condvar::new(),
        generation: fork::generation(),
    });
    {
        let marker = Arc::clone(&drain);
        let mut queue = lock(&QUEUE);
        // Callbacks run in queue order, so when this marker runs every
        // callback queued before it has run. Urgent: its batch does not
        // wait for the batch window (or for a retry's delay).
        queue.push(Box::new(move || marker.finish(Ok(()))));
        queue.drains.push(Arc::clone(&drain));
        queue.urgent = true;
        if let Err(e) = queue.wake_worker() {
            panic!("rcu-defer: {op} cannot start the rcu-call thread: {e}");
        }
    }
    // An online caller goes offline for the wait: the callbacks' grace
    // period would otherwise wait for this thread's quiescent state.
    match offline_while(|| drain.wait(until)) {
        Some(outcome) => outcome,
        None => Err(Error::Timeout(detect::stall_report(
            &mut registry(),
            gp_counter(),
            called.elapsed(),
            Waiter::Drain,
        ))),
    }
}

// The queue's lock across a `fork()` (see `fork`), and its repair in the
// child.
#[cfg(not(loom))]
fork::lock_hook!(Queue, QUEUE, Queue, repair: |queue| queue.after_fork_child());

/// Registers the queue's fork hook: before its lock is taken.
#[inline]
fn register_for_fork() {
    #[cfg(not(loom))]
    fork::register(&FORK_HOOK).unwrap_or_else(crate::report::fork_handlers_failed);
}

#[cfg(not(loom))]
impl Queue {
    /// In the child of a fork, before the lock is released: only the
    /// forking thread exists.
    ///
    /// Unless the forking thread is the worker itself (a callback or the
    /// stall handler on the `rcu-call` thread forked), the worker does not
    /// exist here: the next `call_rcu` or drain starts a new one (see
    /// `start_worker`), and the in-flight batch, whose grace period had not
    /// ended, goes back to the head of the queue for it. The batch that the
    /// worker had taken out to run is not run here: it stays in the old
    /// worker's stack, which no thread will run. No drain waits here (the
    /// forking thread was not in one), so the queued drains are forgotten,
    /// and their markers, which the new worker runs in their turn, do
    /// nothing (see `Drain::finish`).
    fn after_fork_child(&mut self) {
        if !ON_CALLBACK_THREAD.with(Cell::get) {
            self.give_back_in_flight();
            self.worker = Worker::NotStarted;
        }
        self.drains.clear();
        self.in_flight_drains.clear();
        self.urgent = false;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::AtomicBool;
    use std::sync::mpsc;

    /// Set by a test: the worker panics, once, right after taking a batch.
    static DIE_ONCE: AtomicBool = AtomicBool::new(false);

    pub(super) fn maybe_die() {
        if DIE_ONCE.swap(false, Ordering::SeqCst) {
            panic!("injected rcu-call worker failure");
        }
    }

    #[test]
    fn a_worker_that_dies_holding_a_batch_gives_it_back_and_a_new_worker_runs_it_once() {
        // A hang is the failure this guards against: fail instead.
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            worker_death_gives_the_batch_back();
            done_tx.send(()).unwrap();
        });
        done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the callbacks of a dead worker's batch never ran: hang");
    }

    fn worker_death_gives_the_batch_back() {
        let (ran_tx, ran_rx) = mpsc::channel();
        // Make sure a worker exists, then have it die on its next batch.
        call_rcu(|| ());
        drain_call_rcu();
        DIE_ONCE.store(true, Ordering::SeqCst);
        for i in 0..3 {
            let ran = ran_tx.clone();
            call_rcu(move || ran.send(i).unwrap());
        }
        // The drain's marker may be in the batch the worker dies with: the
        // drain then gets the error; the callbacks are never lost.
        let first = try_drain_call_rcu();
        if let Err(e) = &first {
            assert!(
                matches!(e, Error::GracePeriodPanicked { .. }),
                "a drain whose batch died gets that error: {e}"
            );
        }
        drain_call_rcu();
        let ran: Vec<i32> = ran_rx.try_iter().collect();
        assert_eq!(ran, [0, 1, 2], "each callback ran once, in queue order");
        assert!(
            !DIE_ONCE.load(Ordering::SeqCst),
            "the injected failure happened"
        );
    }
}
