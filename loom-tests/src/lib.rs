//! loom models of rcu-defer live in `tests/`; this library holds the small
//! pieces they share. Everything here exists only under `--cfg loom`, so a
//! normal `cargo test --workspace` builds an empty library.
//!
//! Run the models with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p loom-tests --release --target-dir target/loom
//! ```
//!
//! Rules for models, forced by how loom runs threads:
//!
//! - Never call `read_lock` on the model's own (main) thread: loom runs its
//!   thread-local destructors after it has dropped the per-execution
//!   statics, and rcu-defer's registration destructor needs the registry
//!   (loom panics with "attempted to access lazy_static during shutdown").
//!   Read in spawned threads.
//! - End a model with [`join`] (or `join` + [`settle`]), not a bare
//!   `JoinHandle::join`: see [`settle`].
//! - When a model fails, loom unwinds and drops the remaining threads'
//!   thread-locals outside the model; rcu-defer's registration destructor
//!   then panics again and the test binary aborts ("panic in a destructor
//!   during cleanup"), taking the binary's other models with it. The first
//!   panic printed is the model's failure; rerun it alone with `--exact`.
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::model::Builder;
use loom::sync::atomic::{AtomicBool, Ordering};

/// A loom `Builder` for a model too large to explore exhaustively in the
/// suite's time budget: at most `preemptions` preemptive context switches
/// per execution (loom's `LOOM_MAX_PREEMPTIONS`; most concurrency bugs need
/// two or three). Setting `LOOM_MAX_PREEMPTIONS` in the environment
/// overrides the bound, so a long run can search deeper; the other
/// `LOOM_*` variables keep their usual meaning.
pub fn bounded(preemptions: usize) -> Builder {
    let mut builder = Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(preemptions);
    }
    builder
}

/// What the object's memory holds while it is alive.
const LIVE: usize = 0x11FE;
/// What the writer writes into the object's memory when it "frees" it.
const POISON: usize = 0xDEAD;

/// One RCU-protected object as a model sees it: the pointer that publishes
/// it, its memory, and a flag set when a writer frees it.
///
/// The memory is a `loom::cell::UnsafeCell`, so loom itself checks the
/// RCU guarantee at the level of happens-before: a reader's access to the
/// object must happen before the writer's free (the write of `POISON`),
/// or loom fails the model with a causality violation. The `freed` flag and
/// the `POISON` value turn an early free that *is* ordered before the read
/// into an assertion failure with a readable message.
pub struct Retirable {
    /// The published pointer: true while new readers can reach the object.
    published: AtomicBool,
    /// The object's memory.
    memory: UnsafeCell<usize>,
    /// Set by the writer just before it frees the memory.
    freed: AtomicBool,
}

impl Default for Retirable {
    fn default() -> Self {
        Self::new()
    }
}

impl Retirable {
    /// A published, live object.
    pub fn new() -> Self {
        Retirable {
            published: AtomicBool::new(true),
            memory: UnsafeCell::new(LIVE),
            freed: AtomicBool::new(false),
        }
    }

    /// Reader side, to be called inside a read section: loads the pointer
    /// and, if the object is still reachable, reads it and checks that it has
    /// not been freed. Returns whether the object was reachable.
    pub fn read(&self) -> bool {
        // Acquire, as `rcu_dereference` would be.
        if !self.published.load(Ordering::Acquire) {
            return false;
        }
        self.check_live();
        true
    }

    /// Reader side, to be called later in the *same* read section after
    /// `read` returned true: the object must still be live.
    pub fn check_live(&self) {
        // SAFETY: loom checks this access against the writer's `with_mut`.
        let value = self.memory.with(|p| unsafe { *p });
        assert_eq!(
            value, LIVE,
            "a reader inside its read section read the object after it was freed"
        );
        assert!(
            !self.freed.load(Ordering::Relaxed),
            "a reader inside its read section, having reached the object through the \
             published pointer, saw it freed: the grace period ended before the section"
        );
    }

    /// Writer side: unpublish the object (no new reader can reach it).
    pub fn unpublish(&self) {
        // Release, as `rcu_assign_pointer` would be.
        self.published.store(false, Ordering::Release);
    }

    /// Whether the writer has freed the object.
    pub fn is_freed(&self) -> bool {
        self.freed.load(Ordering::Relaxed)
    }

    /// Writer side, after a grace period: free the object.
    pub fn free(&self) {
        self.freed.store(true, Ordering::Relaxed);
        // SAFETY: loom checks this access against every reader's `with`.
        self.memory.with_mut(|p| unsafe { *p = POISON });
    }
}

/// Keeps a panic that rcu-defer would otherwise swallow, so that the model
/// can fail with it.
///
/// The `rcu-call` worker runs each `call_rcu` callback under
/// `catch_unwind`, reports a panic on stderr and goes on: an assertion that
/// fails inside a callback, or a causality violation that loom detects
/// there (say, in the destructor of a value that `RcuCell::replace`
/// retires), would not fail the model. Run the checks of a callback inside
/// [`Caught::run`] and call [`Caught::rethrow`] once the worker has stopped.
///
/// The slot is a `std` mutex, not a loom one: it is touched only when a
/// check fails and read after the worker has been joined, so modelling it
/// would only add interleavings.
#[derive(Default)]
pub struct Caught(std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>);

impl Caught {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `check`; if it panics, keeps the panic (the first one only) and
    /// returns normally.
    pub fn run(&self, check: impl FnOnce()) {
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)) {
            let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(payload);
        }
    }

    /// Resumes the kept panic, if any, on the calling thread.
    pub fn rethrow(&self) {
        let payload = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(payload) = payload {
            std::panic::resume_unwind(payload);
        }
    }
}

/// The basic grace-period model, shared by `synchronize_waits_for_reader`
/// (tests/grace_period.rs) and the broken-protocol models
/// (tests/broken.rs), which run this same body with a fault injected.
///
/// A reader thread enters a read section and, if it can still reach the
/// object through the published pointer, uses it; the model's thread
/// unpublishes the object, calls `synchronize_rcu` and frees it (see
/// [`Retirable`]). Fails if `synchronize_rcu` returns while a reader that
/// reached the object is still inside its section. The flavor is not decided
/// beforehand, so the reader and the grace period also race to decide it.
pub fn reader_and_retiring_writer() {
    let obj = loom::sync::Arc::new(Retirable::new());
    let reader = {
        let obj = loom::sync::Arc::clone(&obj);
        loom::thread::spawn(move || {
            let guard = rcu_defer::read_lock();
            obj.read();
            drop(guard);
        })
    };
    obj.unpublish();
    rcu_defer::synchronize_rcu();
    obj.free();
    join([reader]);
}

/// Like [`reader_and_retiring_writer`], but the writer waits with
/// `synchronize_rcu_timeout(Duration::ZERO)`: one grace-period attempt that
/// scans the readers once (after its fence) and, if one blocks, gives up at
/// once instead of sleeping. The writer frees the object only if the
/// attempt succeeded. Fails if the attempt succeeds while a reader that
/// reached the object is still inside its section.
///
/// The writer never sleeps, so no wake-up is involved: what this checks is
/// the store→load pairing alone (the reader publishes its section, fences,
/// loads the pointer; the writer unpublishes, fences, scans the sections).
/// The flavor is decided beforehand.
pub fn reader_and_writer_that_frees_only_if_no_reader_blocks() {
    rcu_defer::flavor();
    let obj = loom::sync::Arc::new(Retirable::new());
    let reader = {
        let obj = loom::sync::Arc::clone(&obj);
        loom::thread::spawn(move || {
            let guard = rcu_defer::read_lock();
            obj.read();
            drop(guard);
        })
    };
    obj.unpublish();
    match rcu_defer::synchronize_rcu_timeout(std::time::Duration::ZERO) {
        Ok(()) => obj.free(),
        // The reader blocked the attempt: it may still use the object.
        Err(rcu_defer::Error::Timeout(_)) => {}
        Err(e) => panic!("synchronize_rcu_timeout failed: {e}"),
    }
    join([reader]);
}

/// The basic online-reader model, shared by tests/online.rs and
/// tests/broken.rs (which runs it with the writer ignoring online records).
///
/// An online reader thread reads the object in a read section (if it can
/// still reach it), reports a quiescent state, reads again in a second
/// section, and goes offline by dropping its handle. The model's thread
/// unpublishes the object, calls `synchronize_rcu` and frees it. Fails if
/// the free can overlap either section's use (`Retirable`): the first
/// section's use must happen before the free because the grace period
/// waits for the quiescent state after it; the second section may run
/// after the free only if it cannot reach the object, which is what the
/// quiescent state's load of the grace-period counter guarantees. The
/// flavor is decided beforehand.
pub fn online_reader_and_retiring_writer() {
    rcu_defer::flavor();
    let obj = loom::sync::Arc::new(Retirable::new());
    let reader = {
        let obj = loom::sync::Arc::clone(&obj);
        loom::thread::spawn(move || {
            let online = rcu_defer::online();
            let guard = rcu_defer::read_lock();
            obj.read();
            drop(guard);
            online.quiescent();
            let guard = rcu_defer::read_lock();
            obj.read();
            drop(guard);
            drop(online);
        })
    };
    obj.unpublish();
    rcu_defer::synchronize_rcu();
    obj.free();
    join([reader]);
}

/// How many times [`settle`] yields per thread: more than the loom
/// operations an exiting thread performs after its closure has returned
/// (rcu-defer's registration destructor does an atomic load and takes the
/// registry lock).
const SETTLE_YIELDS_PER_THREAD: usize = 4;

/// Joins every handle, then lets the joined threads finish *exiting* (see
/// [`settle`]). Returns the threads' results.
pub fn join<T>(handles: impl IntoIterator<Item = loom::thread::JoinHandle<T>>) -> Vec<T> {
    let results: Vec<T> = handles
        .into_iter()
        .map(|h| h.join().expect("a model thread panicked"))
        .collect();
    settle(results.len());
    results
}

/// Lets `threads` joined threads finish exiting before the model ends.
///
/// loom's `JoinHandle::join` returns as soon as the thread's closure has
/// returned, before loom runs the thread's thread-local destructors (std's
/// `join` waits for them). rcu-defer's registration destructor takes the
/// reader registry's lock, and under loom the registry is a per-execution
/// static that loom drops as soon as the model closure returns. A model that
/// returned right after `join` would therefore let an exiting reader lock a
/// dropped mutex (loom then panics with an out-of-bounds object index).
///
/// Each `yield_now` of the calling thread makes loom schedule another
/// runnable thread for at least one step, so a few yields per thread let
/// every destructor finish. If that ever stops being enough, the model fails
/// loudly (it never passes wrongly).
pub fn settle(threads: usize) {
    for _ in 0..SETTLE_YIELDS_PER_THREAD * threads.max(1) {
        loom::thread::yield_now();
    }
}
