//! Deferred local calls: `call_local`, `call_local_fn` and defer scopes.
//!
//! Inside a read section or a defer scope, a call is recorded instead of
//! made, and runs on the same thread when the outermost section or scope
//! ends; `call_local` records each (function, `Arc`) pair once. This is
//! QEMU's `defer_call` (formerly `blk_io_plug_call`): 64 completions that
//! each ask to notify the guest cost one notification.
//!
//! Storage: the thread's [`DeferState`] lives in the same thread-local as
//! its reader record (so `call_local` finds both with `%fs`-relative
//! accesses, without an initialization check).
//!
//! Layering: `local` and `reader` are the one pair of modules that import
//! each other (docs/architecture.md; checked by `tests/layers.rs`). They
//! share that per-thread state by design: `reader::Local` holds this
//! module's `DeferState`, and the end of the outermost section runs the
//! pending calls (`run_if_due`) in the same access. Splitting the
//! thread-local in two would cost the read side a second TLS access and an
//! initialization check. Pending calls are
//! type-erased ([`Erased`]). The first one has cells of its own, so the
//! usual pass (one notifier) records and runs its call with a few
//! word-sized stores and loads; later ones go to a vector in
//! first-recorded order, which a run swaps with a spare, so recording
//! allocates nothing in the steady state. Dedup compares (function
//! address, `Arc` address) keys: the first call's directly, the next
//! handful linearly, and beyond that through a hash set, so it stays O(1)
//! amortized. A run keeps its emptied batch vector as the next one's,
//! shrunk to `SLOTS_KEEP` slots, so that one huge pass does not pin its
//! memory for the thread's lifetime.
//!
//! The vectors have no destructor of their own (the thread-local must not
//! have one); a second thread-local, armed on the first recording, frees
//! them when the thread exits. A section or scope may still be open then:
//! its guard can live in a thread-local that is destroyed later. Its calls
//! stay pending, and its end runs them as usual and then frees the vectors.

use crate::erased::Erased;
use crate::reader::{with_local, Local};
use crate::report::{panic_message, report};
use crate::section_calls::RawFn;
use crate::sync::thread_local_lazy;
use crate::thread_bound::ThreadBound;
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::marker::PhantomData;
use std::mem::{self, ManuallyDrop};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// A multiply-rotate hasher for keys that are addresses: far cheaper than
/// SipHash, and these keys are not attacker-chosen.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type AddrBuild = BuildHasherDefault<AddrHasher>;

/// Dedup key of `call_local`: (function address, `Arc` data address).
/// `call_local_fn` calls have `NO_KEY`, which no `call_local` call has (a
/// function's address is never 0).
type Key = (usize, usize);

/// The key of a call that is never deduplicated.
const NO_KEY: Key = (0, 0);

/// Up to this many pending calls, dedup is a linear scan of their keys
/// (cheaper than hashing for the usual handful of notifiers); past it,
/// `index` holds every pending key, so dedup stays O(1) amortized.
const LINEAR_KEYS: usize = 8;

/// A run that finds the hash index larger than this frees it rather than
/// clearing it (clearing costs time proportional to its capacity).
const INDEX_KEEP: usize = 1024;

/// A run's emptied batch vector is shrunk to this many slots (48 bytes
/// each on 64-bit targets: 192 KiB) before it is kept for the next run, so
/// a thread keeps at most that much in `calls` and as much in `spare`
/// after a pass, however large the pass was. A pass records one call per
/// distinct notifier plus its `call_local_fn` closures: even a pass that
/// completes every descriptor of a few full 1024-entry virtqueues, one
/// closure each, stays under it and reuses its vectors without allocating
/// (so does the 4096-call benchmark pass, whose vector grows to exactly
/// 4096). A larger pass regrows its vector by doubling, which costs less
/// than running its calls.
const SLOTS_KEEP: usize = 4096;

/// `DeferState::cleanup`: nothing recorded yet on this thread.
const NOT_ARMED: u8 = 0;
/// `DeferState::cleanup`: the exit-time cleanup is armed.
const ARMED: u8 = 1;
/// `DeferState::cleanup`: the thread is destroying its thread-locals, and
/// its exit-time cleanup has run (or can no longer be armed). Calls are
/// still recorded inside a section or scope and run at its end, as usual;
/// each run then frees the vectors, since no cleanup is left to do it.
const EXITING: u8 = 2;

/// One recorded call after the first, and its dedup key.
struct Slot {
    key: Key,
    call: Erased,
}

/// The pending calls of one thread after the first (which `DeferState`
/// keeps apart, so that the usual single call never touches these).
struct Rest {
    /// Recorded calls, in first-recorded order.
    calls: Vec<Slot>,
    /// An empty vector with capacity that the next run swaps in for
    /// `calls`.
    spare: Vec<Slot>,
    /// Every key in `calls`, once it holds `LINEAR_KEYS` calls or more.
    index: Option<HashSet<Key, AddrBuild>>,
}

impl Rest {
    const fn new() -> Self {
        Rest {
            calls: Vec::new(),
            spare: Vec::new(),
            index: None,
        }
    }

    /// Whether `key` (a `call_local` key, not the first call's: `record`
    /// compares that one) is not pending in `calls` yet.
    fn is_new(&mut self, key: Key) -> bool {
        if self.calls.len() < LINEAR_KEYS {
            return !self.calls.iter().any(|slot| slot.key == key);
        }
        let index = self.index.get_or_insert_with(HashSet::default);
        if index.is_empty() {
            // The first use since a run: index every pending key.
            index.extend(
                self.calls
                    .iter()
                    .map(|slot| slot.key)
                    .filter(|&key| key != NO_KEY),
            );
        }
        index.insert(key)
    }

    /// Takes every call of `calls` as the batch of a new run, and forgets
    /// every pending key (a call recorded from now on is a new one).
    fn start_run(&mut self) -> Vec<Slot> {
        if let Some(index) = &mut self.index {
            if index.capacity() > INDEX_KEEP {
                self.index = None;
            } else {
                index.clear();
            }
        }
        let spare = mem::take(&mut self.spare);
        mem::replace(&mut self.calls, spare)
    }

    /// Keeps the emptied batch vector, shrunk to `SLOTS_KEEP` slots, as
    /// the next spare (a run nested in another's call may leave a smaller
    /// one there). Since `calls` is always a former spare or empty after a
    /// run, neither keeps more than `SLOTS_KEEP` slots once nothing is
    /// pending.
    fn end_run(&mut self, mut batch: Vec<Slot>) {
        batch.shrink_to(SLOTS_KEEP);
        if batch.capacity() > self.spare.capacity() {
            self.spare = batch;
        }
    }

    /// Frees every allocation that holds no pending call: the spare, the
    /// index (which `is_new` rebuilds from `calls` if it is needed again)
    /// and `calls` if it is empty.
    fn release(&mut self) {
        self.spare = Vec::new();
        self.index = None;
        if self.calls.is_empty() {
            self.calls = Vec::new();
        }
    }
}

/// A thread's defer state, kept beside its reader record.
///
/// The pending calls are `first`, then `rest.calls`, in first-recorded
/// order; `count` says how many. The first call lives in a `Cell` of its
/// own: a pass that records one call (one notifier) records and runs it
/// without a borrow flag, a vector or a capacity check.
///
/// Fields that own calls are `ManuallyDrop`: the thread-local that holds
/// this has no destructor. `Cleanup` frees the vectors at thread exit, or
/// leaves the calls pending for a section or scope still open then, whose
/// end runs them and frees the vectors. A call whose section never ends (a
/// leaked guard) is never run nor dropped.
pub(crate) struct DeferState {
    /// Open defer scopes.
    scopes: Cell<usize>,
    /// `NOT_ARMED`, `ARMED` or `EXITING`.
    cleanup: Cell<u8>,
    /// How many calls are pending: 0, or 1 + `rest.calls.len()`.
    count: Cell<usize>,
    /// The key of `first`, or `NO_KEY` (which no `call_local` key equals)
    /// when it is empty or holds a `call_local_fn` call.
    first_key: Cell<Key>,
    /// The first pending call: `Some` exactly while `count > 0`.
    first: Cell<ManuallyDrop<Option<Erased>>>,
    /// The calls recorded after `first`.
    rest: RefCell<ManuallyDrop<Rest>>,
}

impl DeferState {
    /// The state of a thread that has deferred nothing.
    pub(crate) const fn new() -> Self {
        DeferState {
            scopes: Cell::new(0),
            cleanup: Cell::new(NOT_ARMED),
            count: Cell::new(0),
            first_key: Cell::new(NO_KEY),
            first: Cell::new(ManuallyDrop::new(None)),
            rest: RefCell::new(ManuallyDrop::new(Rest::new())),
        }
    }

    fn has_pending(&self) -> bool {
        self.count.get() != 0
    }

    /// Takes the first pending call out (and with it the right to run
    /// every pending call: `count` drops to 0); returns it and how many
    /// calls were pending.
    fn take_first(&self) -> (Option<Erased>, usize) {
        let count = self.count.replace(0);
        self.first_key.set(NO_KEY);
        let first = ManuallyDrop::into_inner(self.first.replace(ManuallyDrop::new(None)));
        (first, count)
    }

    /// Before a call is recorded: arms the exit-time cleanup on the
    /// thread's first recording.
    #[inline]
    fn prepare_to_record(&self) {
        if self.cleanup.get() != ARMED {
            self.arm();
        }
    }

    /// Arms the exit-time cleanup, or, if the thread is already destroying
    /// its thread-locals, marks it `EXITING` (its runs free the vectors).
    #[cold]
    #[inline(never)]
    fn arm(&self) {
        let armed = self.cleanup.get() == NOT_ARMED && CLEANUP.try_with(|_| ()).is_ok();
        self.cleanup.set(if armed { ARMED } else { EXITING });
    }

    /// Runs every pending call in first-recorded order; see [`DeferScope`]'s
    /// `# Panics`. The thread is outside any read section and scope.
    #[inline]
    fn run(&self, local: &Local) {
        let (first, count) = self.take_first();
        let Some(first) = first else { return };
        if count != 1 {
            return self.run_batch(first, local);
        }
        // One call, the common case (one notifier per pass): no batch to
        // swap out, and a panic needs catching only while unwinding.
        if std::thread::panicking() {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| first.run())) {
                report_dropped_panic(&*payload);
            }
        } else {
            first.run();
        }
        if self.has_pending() {
            // Recorded by the call inside a section it never closed: keep
            // them for that section's end.
            local.mark_deferred();
        }
    }

    /// `run` for more than one call: `first`, then the rest.
    #[inline(never)]
    fn run_batch(&self, first: Erased, local: &Local) {
        let mut batch = self.rest.borrow_mut().start_run();
        let unwinding = std::thread::panicking();
        let mut first_panic = None;
        // No borrow is held while a call runs: it may record more calls.
        let calls = std::iter::once(first).chain(batch.drain(..).map(|slot| slot.call));
        for call in calls {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| call.run())) {
                if unwinding {
                    report_dropped_panic(&*payload);
                } else if first_panic.is_none() {
                    first_panic = Some(payload);
                }
            }
        }
        {
            let mut rest = self.rest.borrow_mut();
            rest.end_run(batch);
            if self.cleanup.get() == EXITING {
                // No cleanup is left to free the vectors. (While `EXITING`,
                // they hold memory only while more than one call is
                // pending, so the single-call path of `run` never has any
                // to free.)
                rest.release();
            }
        }
        if self.has_pending() {
            // Recorded by a call inside a section it never closed: keep them
            // for that section's end.
            local.mark_deferred();
        }
        if let Some(payload) = first_panic {
            resume_unwind(payload);
        }
    }

    /// At thread exit: frees the vectors, except what holds pending calls.
    ///
    /// Calls are pending here only inside a read section or defer scope
    /// that is still open: the end of the outermost one runs them. Its
    /// guard may live in a thread-local that is destroyed later, whose
    /// destructor ends it: the calls stay pending for that end, which runs
    /// them (and any recorded until then) and frees the vectors. A leaked
    /// guard never ends its section, and the calls never run (`reader`
    /// reports a thread that exits inside a read section; a defer scope is
    /// reported here).
    fn tear_down(&self, local: &Local) {
        self.cleanup.set(EXITING);
        let count = self.count.get();
        let scopes = self.scopes.get();
        if count > 0 && scopes > 0 && !local.in_section() {
            report!(
                ExitInSection,
                "a thread is exiting inside a defer scope ({scopes} open) with {count} \
                 deferred call(s) pending; they run when the scope is dropped, which for a \
                 leaked scope is never"
            );
        }
        self.rest.borrow_mut().release();
    }
}

/// Reports a deferred call's panic that cannot be resumed: the thread was
/// already unwinding.
#[cold]
fn report_dropped_panic(payload: &(dyn std::any::Any + Send)) {
    report!(
        CallbackPanicked,
        "a deferred call panicked while the thread was already unwinding: {}; the \
         panic is dropped",
        panic_message(payload)
    );
}

/// Frees the thread's pending-call vectors when it exits (see
/// `DeferState::tear_down`).
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = with_local(|local| local.defer.tear_down(local));
    }
}

thread_local_lazy! {
    /// Armed by a thread's first recording; see `Cleanup`.
    static CLEANUP: Cleanup = Cleanup;
}

/// Records `call` if the thread is batching; `None` if it must be made now.
/// `key` deduplicates `call_local` calls.
#[inline]
fn record(local: &Local, key: Key, call: impl FnOnce() -> Erased) -> Option<bool> {
    let defer = &local.defer;
    let in_section = local.in_section();
    if !(in_section || defer.scopes.get() > 0) {
        return None;
    }
    defer.prepare_to_record();
    // `NO_KEY` never matches: an empty first slot, or `call_local_fn`.
    if key != NO_KEY && key == defer.first_key.get() {
        return Some(false);
    }
    if defer.count.get() == 0 {
        defer.first.set(ManuallyDrop::new(Some(call())));
        defer.first_key.set(key);
        defer.count.set(1);
        if in_section {
            local.mark_deferred();
        }
        return Some(true);
    }
    // The first slot is taken (and `mark_deferred` done, if in a section).
    Some(record_more(defer, key, call))
}

/// `record` past the first call: dedup against the rest and append.
#[inline(never)]
fn record_more(defer: &DeferState, key: Key, call: impl FnOnce() -> Erased) -> bool {
    let mut rest = defer.rest.borrow_mut();
    if key != NO_KEY && !rest.is_new(key) {
        return false;
    }
    rest.calls.push(Slot { key, call: call() });
    defer.count.set(defer.count.get() + 1);
    true
}

/// Calls `f(arg)` when this thread's outermost read section or defer scope
/// ends; outside both, calls it now.
///
/// Returns `true` if the call was recorded (or made at once), `false` if the
/// same `f` with the same `Arc` (pointer identity) is already pending on
/// this thread, in which case nothing is recorded: the pending call will
/// serve both requests. The pending call holds a clone of `arg`, keeping it
/// alive until it runs.
///
/// Pending calls run in the order they were first recorded, on this
/// thread, after it has left its read section: a call may take read locks,
/// wait for grace periods and record further calls (which run at the end of
/// the section it opens, or at once).
///
/// The section must be held by a named guard (`let _pass = read_lock();`):
/// `let _ = read_lock();` drops the guard at once, so nothing after it is
/// batched.
///
/// `f` is identified by its address, and Rust does not promise one address
/// per function: in optimised builds a small function often gets a copy in
/// each codegen unit that names it, so `call_local(f, &a)` written in two
/// places may pass two different pointers and record two calls. Take the
/// pointer once and pass that value everywhere (a `static F: fn(&T) = f;`
/// or a field set once, as [`IrqNotifier`](crate::virtio::IrqNotifier)
/// does). Conversely, two distinct functions with identical code may be
/// merged into one address and then deduplicate against each other.
///
/// ```
/// use rcu_defer::{call_local, read_lock};
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
///
/// fn notify(count: &AtomicUsize) {
///     count.fetch_add(1, Ordering::Relaxed);
/// }
///
/// let irqs = Arc::new(AtomicUsize::new(0));
/// {
///     let _pass = read_lock();
///     for _ in 0..64 {
///         call_local(notify, &irqs); // the first records, the rest are duplicates
///     }
///     assert_eq!(irqs.load(Ordering::Relaxed), 0);
/// } // the outermost section ends here: `notify` runs once
/// assert_eq!(irqs.load(Ordering::Relaxed), 1);
///
/// assert!(call_local(notify, &irqs)); // outside any section: runs at once
/// assert_eq!(irqs.load(Ordering::Relaxed), 2);
/// ```
#[inline]
pub fn call_local<T: ?Sized + 'static>(f: fn(&T), arg: &Arc<T>) -> bool {
    let key = (f as usize, Arc::as_ptr(arg) as *const () as usize);
    let recorded = with_local(|local| {
        record(local, key, || {
            let arg = Arc::clone(arg);
            Erased::new(move || f(&arg))
        })
    });
    match recorded {
        Some(Some(recorded)) => recorded,
        // Not batching (or, under loom, the thread's state is gone): call
        // now.
        _ => {
            f(arg);
            true
        }
    }
}

/// Calls `f` when this thread's outermost read section or defer scope ends;
/// outside both, calls it now. No deduplication: every call is made.
///
/// ```
/// use rcu_defer::{call_local_fn, defer_scope};
/// use std::cell::Cell;
/// use std::rc::Rc;
///
/// let log = Rc::new(Cell::new(0));
/// let scope = defer_scope();
/// let l = log.clone();
/// call_local_fn(move || l.set(l.get() + 1));
/// assert_eq!(log.get(), 0);
/// drop(scope);
/// assert_eq!(log.get(), 1);
/// ```
pub fn call_local_fn<F: FnOnce() + 'static>(f: F) {
    let mut f = Some(f);
    let recorded = with_local(|local| {
        record(local, NO_KEY, || {
            Erased::new(f.take().expect("the call is taken once"))
        })
    });
    if !matches!(recorded, Some(Some(true))) {
        if let Some(f) = f {
            f();
        }
    }
}

/// Opens a defer scope: [`call_local`] and [`call_local_fn`] calls are
/// batched until the scope (and any read section around it) ends, without
/// entering a read section.
///
/// Use it where the batched code must block or wait for grace periods,
/// which a read section forbids (QEMU's `defer_call_begin`/`defer_call_end`).
/// Scopes and read guards nest in any order; the calls run when the last of
/// them ends.
///
/// ```
/// use rcu_defer::{defer_scope, synchronize_rcu};
/// let scope = defer_scope();
/// synchronize_rcu(); // allowed: a defer scope is not a read section
/// drop(scope);
/// ```
///
/// The scope belongs to its thread:
///
/// ```compile_fail
/// fn needs_send<T: Send>(_: T) {}
/// needs_send(rcu_defer::defer_scope());
/// ```
///
/// ```compile_fail,E0277
/// let scope = rcu_defer::defer_scope();
/// std::thread::spawn(move || drop(scope));
/// ```
pub fn defer_scope() -> DeferScope {
    let _ = with_local(|local| {
        let scopes = &local.defer.scopes;
        scopes.set(scopes.get() + 1);
    });
    DeferScope {
        _not_send: PhantomData,
    }
}

/// An open defer scope; see [`defer_scope`]. Dropping the outermost scope
/// outside any read section runs the thread's pending calls.
///
/// # Panics
///
/// Dropping it resumes the first panic of a pending call, after all of them
/// have run (unless the thread is already unwinding; then such panics are
/// reported and dropped).
#[must_use = "calls are batched only while the scope is alive"]
#[derive(Debug)]
pub struct DeferScope {
    /// `!Send` and `!Sync`: the scope belongs to its thread (the error
    /// names `DeferScope`).
    _not_send: PhantomData<ThreadBound<DeferScope>>,
}

impl Drop for DeferScope {
    fn drop(&mut self) {
        let _ = with_local(|local| {
            let defer = &local.defer;
            let scopes = defer.scopes.get() - 1;
            defer.scopes.set(scopes);
            if scopes == 0 && defer.has_pending() {
                if local.in_section() {
                    // Calls recorded before the read section began: its
                    // outermost end runs them now.
                    local.mark_deferred();
                } else {
                    defer.run(local);
                }
            }
        });
    }
}

/// Called by the read side when the outermost section ends and the thread
/// has marked pending calls, after its section calls have run (`panicked`
/// carries the first panic of those): runs the pending calls unless a defer
/// scope is still open, then resumes the first panic.
#[inline]
pub(crate) fn run_if_due(local: &Local, panicked: Option<Box<dyn Any + Send>>) {
    let defer = &local.defer;
    let Some(payload) = panicked else {
        if defer.scopes.get() == 0 && defer.has_pending() {
            defer.run(local);
        }
        return;
    };
    if defer.scopes.get() == 0 {
        // The section call's panic came first: it is the one to resume.
        let _ = catch_unwind(AssertUnwindSafe(|| defer.run(local)));
    }
    resume_unwind(payload);
}

/// Whether the calling thread has a defer scope open.
pub(crate) fn in_defer_scope() -> bool {
    with_local(|local| local.defer.scopes.get() != 0).unwrap_or(false)
}

/// Records `f(data)` to run as the calling thread's current outermost read
/// section ends, before its end is published (see `section_calls`);
/// duplicates of a pending `data` are dropped. Returns `false`, recording
/// nothing, outside a read section, inside a defer scope (whose calls wait
/// for the scope's end, after the section's), or when the thread's section
/// calls are full: the caller then defers with `call_local` instead.
///
/// # Safety
///
/// `f(data)` must be safe to call at any point until the end of the
/// calling thread's current outermost read section, if it is in one.
#[inline]
pub(crate) unsafe fn call_at_section_end(f: RawFn, data: *const ()) -> bool {
    with_local(|local| {
        if local.defer.scopes.get() != 0 {
            return false;
        }
        // SAFETY: the caller's promise, passed on.
        unsafe { local.record_section_call(f, data) }
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` slots of calls that do nothing.
    fn slots(n: usize) -> Vec<Slot> {
        (0..n)
            .map(|_| Slot {
                key: NO_KEY,
                call: Erased::new(|| {}),
            })
            .collect()
    }

    #[test]
    fn slots_keep_bounds_each_kept_vector_to_192_kib_on_64_bit_targets() {
        if cfg!(target_pointer_width = "64") {
            assert_eq!(mem::size_of::<Slot>(), 48);
            assert_eq!(SLOTS_KEEP * mem::size_of::<Slot>(), 192 << 10);
        }
    }

    #[test]
    fn a_run_keeps_a_large_batch_vector_shrunk_to_slots_keep_and_a_small_one_whole() {
        let mut rest = Rest::new();
        rest.calls = slots(3 * SLOTS_KEEP);
        let mut batch = rest.start_run();
        assert!(batch.capacity() >= 3 * SLOTS_KEEP);
        batch.clear();
        rest.end_run(batch);
        assert_eq!(rest.spare.capacity(), SLOTS_KEEP);
        assert_eq!(rest.calls.capacity(), 0);

        let mut small = Rest::new();
        small.calls = slots(100);
        let mut batch = small.start_run();
        let capacity = batch.capacity();
        batch.clear();
        small.end_run(batch);
        assert_eq!(
            small.spare.capacity(),
            capacity,
            "reused without allocating"
        );
    }

    #[test]
    fn release_frees_everything_but_the_pending_calls() {
        let mut rest = Rest::new();
        rest.spare = Vec::with_capacity(16);
        rest.calls = Vec::with_capacity(16);
        rest.index = Some(HashSet::default());
        rest.release();
        assert_eq!(rest.spare.capacity(), 0);
        assert_eq!(rest.calls.capacity(), 0);
        assert!(rest.index.is_none());

        rest.calls = slots(LINEAR_KEYS + 1);
        rest.release();
        assert_eq!(rest.calls.len(), LINEAR_KEYS + 1, "pending calls are kept");
        for slot in mem::take(&mut rest.calls) {
            slot.call.run();
        }
    }
}
