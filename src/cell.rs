//! `RcuCell<T>`: a value that readers load inside a read section without
//! blocking or writing shared memory, and that writers replace, retiring the
//! old value after a grace period.

use crate::call_rcu::{call_rcu, call_rcu_or_report};
use crate::detect;
use crate::fork;
use crate::grace;
use crate::reader::ReadGuard;
#[cfg(not(loom))]
use crate::sync::MutexGuard;
use crate::sync::{
    global, lock, thread_local_const, AtomicPtr, AtomicU64, Condvar, Mutex, Ordering, MAY_SPIN,
};
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

/// An RCU-protected value: the replacement for an `RwLock<T>` whose readers
/// are hot and whose writers are rare.
///
/// Readers call [`read`](RcuCell::read) with a [`ReadGuard`] and get a
/// `&T` valid for as long as the guard: one atomic load, no lock, no write
/// to shared memory, never blocked by a writer. Writers publish a new value
/// ([`replace`](RcuCell::replace), [`update`](RcuCell::update)) and the old
/// one is dropped only after every read section that could still see it
/// has ended. Writers are serialized with each other.
///
/// ```
/// use rcu_defer::{read_lock, RcuCell};
///
/// let config = RcuCell::new(String::from("queue-size=128"));
/// {
///     let guard = read_lock();
///     assert_eq!(config.read(&guard), "queue-size=128");
/// }
/// config.update(|old| old.replace("128", "256"));
/// let guard = read_lock();
/// assert_eq!(config.read(&guard), "queue-size=256");
/// ```
pub struct RcuCell<T: Send + Sync + 'static> {
    /// Always a pointer from `Box::into_raw`, owned by the cell.
    current: AtomicPtr<T>,
    /// The writer lock, which serializes writers so that `update` reads a
    /// value no other writer can retire under it and no update is lost: 0
    /// when free, else the holder's `writer_word`. Knowing the holder lets
    /// a write from inside `update`'s own closure panic instead of hanging,
    /// and lets a fork's child take over a lock held by a thread that does
    /// not exist there (see `lock_writer`).
    writer: AtomicU64,
    /// The cell owns a `T` (for drop check and auto traits).
    _owns: PhantomData<Box<T>>,
}

impl<T: Send + Sync + 'static> RcuCell<T> {
    /// Creates a cell holding `value`.
    pub fn new(value: T) -> Self {
        RcuCell {
            current: AtomicPtr::new(Box::into_raw(Box::new(value))),
            writer: AtomicU64::new(0),
            _owns: PhantomData,
        }
    }

    /// The current value, valid while `guard`'s read section lasts.
    ///
    /// Never blocks. A writer that replaces the value meanwhile does not
    /// affect the reference: the old value is dropped only after the
    /// section ends.
    #[inline]
    pub fn read<'a>(&'a self, guard: &'a ReadGuard) -> &'a T {
        let _ = guard;
        // Acquire pairs with the Release swap that published the value: the
        // value's contents are visible before the pointer is.
        let ptr = self.current.load(Ordering::Acquire);
        // SAFETY: `ptr` came from `Box::into_raw` and is owned by the cell
        // or, once replaced, by a retirement that frees it only after a
        // grace period. `guard` proves this thread is inside a read section
        // (guards are !Send and only `read_lock` makes them) for all of 'a,
        // so any grace period that could end before 'a does waits for it;
        // and `&'a self` keeps the cell, which frees its current value on
        // drop, alive for 'a.
        unsafe { &*ptr }
    }

    /// Publishes `value`; the old value is dropped on the `rcu-call` thread
    /// after a grace period (see [`call_rcu`](crate::call_rcu)). Never waits
    /// for readers.
    pub fn replace(&self, value: T) {
        let old = self.swap(value);
        call_rcu(move || drop(old));
    }

    /// Publishes `value`, waits for a grace period, and returns the old
    /// value, which no reader can still see.
    ///
    /// Only the value this call replaced is returned: versions retired
    /// earlier with [`replace`](RcuCell::replace) or
    /// [`update`](RcuCell::update) may still be queued for their own grace
    /// periods, holding whatever they hold (a file, a mapping). To know that
    /// every retired version is gone, call
    /// [`drain_call_rcu`](crate::drain_call_rcu) afterwards.
    ///
    /// # Panics
    ///
    /// Inside a read section of the calling thread (it would wait for
    /// itself) or from the stall handler, before changing anything; and if
    /// the grace period fails ([`Error::MembarrierFailed`](crate::Error::MembarrierFailed)):
    /// the new value is published then, and the old one is handed to
    /// [`call_rcu`](crate::call_rcu), never dropped while a reader may
    /// hold it.
    #[track_caller]
    pub fn replace_sync(&self, value: T) -> T {
        detect::assert_may_block("RcuCell::replace_sync");
        let old = RetireOnUnwind(Some(self.swap(value)));
        if let Err(e) = grace::grace_period(None) {
            panic!("rcu-defer: RcuCell::replace_sync: {e}");
        }
        old.into_inner()
    }

    /// Read-copy-update: computes a new value from the current one and
    /// publishes it; the old value is dropped after a grace period, like
    /// [`replace`](RcuCell::replace).
    ///
    /// Writers are serialized, so concurrent updates never lose each other's
    /// changes; readers are never blocked. If `f` panics, nothing changes.
    ///
    /// # Panics
    ///
    /// If `f` writes to this same cell (`update`, `replace` or
    /// `replace_sync` from inside the closure), which would otherwise wait
    /// for itself; and whatever `f` panics with.
    pub fn update(&self, f: impl FnOnce(&T) -> T) {
        let _writer = self.lock_writer("RcuCell::update");
        // Acquire is enough: writers are serialized by the lock, and the
        // value was published with Release.
        let ptr = self.current.load(Ordering::Acquire);
        // SAFETY: only writers retire the current value, and they are
        // serialized by `self.writer`, which we hold: `ptr` stays valid
        // until we replace it below.
        let next = f(unsafe { &*ptr });
        let new = Box::into_raw(Box::new(next));
        // Release publishes the new value's contents with the pointer.
        self.current.store(new, Ordering::Release);
        let old = Retired(ptr);
        drop(_writer);
        call_rcu(move || drop(old));
    }

    /// Swaps in `value` under the writer lock and takes ownership of the
    /// old value.
    fn swap(&self, value: T) -> Retired<T> {
        let new = Box::new(value);
        // If this panics (a write from inside `update`'s closure), `new`
        // was never published and is dropped with the unwind.
        let _writer = self.lock_writer("a write to an RcuCell");
        // AcqRel: Release publishes `value`; Acquire takes ownership of the
        // old value's contents.
        Retired(self.current.swap(Box::into_raw(new), Ordering::AcqRel))
    }
}

// The writer lock.
//
// A cell's lock word holds its holder's *writer word*: the fork generation
// (`fork::generation()`) in the top `GENERATION_BITS` bits, and below them
// the holder's *writer id*, a number no other thread of the process has had
// (ids are handed out by one counter, which a fork's child inherits, so a
// child's new threads never get the id of a thread of its parent). A thread
// that finds the lock taken spins briefly, then sleeps on `WAIT`, which
// every release wakes.
//
// In a fork's child, a lock word written before the fork (an older
// generation) belongs to a thread that does not exist there, unless it is
// the forking thread's own (the fork happened inside `update`'s closure):
// such a lock is taken over. The value the vanished holder was replacing is
// then never retired in the child (it is leaked, never freed under a
// reader), and its new value, if published, is the current one.

/// Bits of a writer word that hold the fork generation (which wraps).
const GENERATION_BITS: u32 = 16;
/// The writer id part of a writer word.
const ID_MASK: u64 = (1 << (64 - GENERATION_BITS)) - 1;

global! {
    /// The next writer id (ids start at 1: 0 is a free lock).
    static NEXT_WRITER_ID: AtomicU64 = AtomicU64::new(1);
}

global! {
    /// The writer id of the thread that forked this process (0 in a process
    /// that is not a fork's child): the one thread whose locks taken before
    /// the fork are still held here.
    static FORKER_ID: AtomicU64 = AtomicU64::new(0);
}

/// Where writers that find a lock taken sleep: the number of sleepers, and
/// the condition variable every release signals when there are any.
struct Wait {
    sleepers: Mutex<usize>,
    released: Condvar,
}

global! {
    static WAIT: Wait = Wait { sleepers: Mutex::new(0), released: Condvar::new() };
}

thread_local_const! {
    /// This thread's writer id, 0 until its first write.
    static WRITER_ID: Cell<u64> = Cell::new(0);
}

/// The calling thread's writer id.
fn writer_id() -> u64 {
    WRITER_ID.with(|id| {
        if id.get() == 0 {
            // Relaxed: only uniqueness matters, which the read-modify-write
            // gives.
            id.set(NEXT_WRITER_ID.fetch_add(1, Ordering::Relaxed) & ID_MASK);
        }
        id.get()
    })
}

/// The lock word of the calling thread: its generation and id.
fn writer_word() -> u64 {
    (fork::generation() << (64 - GENERATION_BITS)) | writer_id()
}

/// Whether a lock word `held` that is not the caller's belongs to a thread
/// that does not exist in this process: one of the parent's, taken before
/// the fork by a thread other than the one that forked.
fn held_by_a_vanished_thread(held: u64) -> bool {
    let this_generation = fork::generation() & ((1 << GENERATION_BITS) - 1);
    // Relaxed: set in the child before its first other thread exists.
    held >> (64 - GENERATION_BITS) != this_generation
        && held & ID_MASK != FORKER_ID.load(Ordering::Relaxed)
}

/// The cell's writer lock, held by one thread.
struct WriterGuard<'a> {
    word: &'a AtomicU64,
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        // Release pairs with the Acquire of the next holder's compare-exchange:
        // everything this writer did happens before what the next one does.
        self.word.store(0, Ordering::Release);
        // A sleeper checks the word under this lock before it sleeps, so
        // it either sees the store above or is woken here.
        let sleepers = lock(&WAIT.sleepers);
        if *sleepers > 0 {
            WAIT.released.notify_all();
        }
    }
}

impl<T: Send + Sync + 'static> RcuCell<T> {
    fn lock_writer(&self, op: &str) -> WriterGuard<'_> {
        // The takeover in a fork's child relies on the handlers, which
        // count the generations (and the release takes `WAIT`).
        fork::register_handlers();
        let me = writer_word();
        let mut spins = 0;
        loop {
            // Acquire pairs with the Release store of the last holder's
            // `WriterGuard::drop` (or, taking over a vanished holder's lock,
            // with whatever the fork copied, which is all this thread sees).
            let held =
                match self
                    .writer
                    .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                {
                    Ok(_) => return WriterGuard { word: &self.writer },
                    Err(held) => held,
                };
            if held & ID_MASK == me & ID_MASK {
                panic!(
                    "rcu-defer: {op} from inside RcuCell::update's closure on the same cell \
                     would wait for itself; compute the new value in the closure instead"
                );
            }
            if held_by_a_vanished_thread(held) {
                // Acquire: as above.
                if self
                    .writer
                    .compare_exchange(held, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return WriterGuard { word: &self.writer };
                }
                continue;
            }
            if MAY_SPIN && spins < 100 {
                spins += 1;
                crate::sync::spin_loop();
                continue;
            }
            let mut sleepers = lock(&WAIT.sleepers);
            *sleepers += 1;
            // Relaxed: ordered by the `WAIT` lock, which the releaser takes
            // after its store.
            while self.writer.load(Ordering::Relaxed) == held {
                sleepers = WAIT
                    .released
                    .wait(sleepers)
                    .unwrap_or_else(|p| p.into_inner());
            }
            *sleepers -= 1;
        }
    }
}

/// The writers' wait lock, held by the forking thread across a `fork()`
/// (see `fork`).
#[cfg(not(loom))]
pub(crate) struct WaitHeld(MutexGuard<'static, usize>);

/// Locks the writers' wait lock for a fork.
#[cfg(not(loom))]
pub(crate) fn hold_for_fork() -> WaitHeld {
    WaitHeld(lock(&WAIT.sleepers))
}

#[cfg(not(loom))]
impl WaitHeld {
    /// In the child of a fork, before the lock is released: nobody sleeps
    /// (the sleepers were other threads), and the forking thread is the
    /// one thread whose cell locks taken before the fork still have a
    /// holder.
    pub(crate) fn after_fork_child(&mut self) {
        *self.0 = 0;
        // Relaxed: the child runs this one thread until it spawns another.
        FORKER_ID.store(WRITER_ID.with(Cell::get), Ordering::Relaxed);
    }
}

/// A value unpublished from a cell, owned by whoever holds this.
struct Retired<T>(*mut T);

// SAFETY: `Retired<T>` owns a `Box<T>` (see `into_inner` and `Drop`), so it
// may move to another thread exactly when `Box<T>` may: `T: Send`.
unsafe impl<T: Send> Send for Retired<T> {}

impl<T> Retired<T> {
    fn into_inner(self) -> T {
        let ptr = self.0;
        std::mem::forget(self);
        // SAFETY: `ptr` came from `Box::into_raw`, was unpublished from its
        // cell, and `self` was its only owner (now forgotten).
        *unsafe { Box::from_raw(ptr) }
    }
}

/// A retired value on its way out of `replace_sync`: if the grace period
/// fails or unwinds, dropping this hands the value to `call_rcu` (freed
/// after a later grace period that succeeds, or never) rather than freeing
/// it under readers that may still hold it.
struct RetireOnUnwind<T: Send + 'static>(Option<Retired<T>>);

impl<T: Send + 'static> RetireOnUnwind<T> {
    fn into_inner(mut self) -> T {
        self.0
            .take()
            .expect("a retired value is taken once")
            .into_inner()
    }
}

impl<T: Send + 'static> Drop for RetireOnUnwind<T> {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            call_rcu_or_report(move || drop(old));
        }
    }
}

impl<T> Drop for Retired<T> {
    fn drop(&mut self) {
        // SAFETY: as in `into_inner`; the caller dropped it only after a
        // grace period, so no reader still holds a reference.
        drop(unsafe { Box::from_raw(self.0) });
    }
}

impl<T: Send + Sync + 'static> Drop for RcuCell<T> {
    fn drop(&mut self) {
        // Relaxed: `&mut self` is exclusive; whatever gave us ownership
        // already ordered the last store before this.
        let ptr = self.current.load(Ordering::Relaxed);
        // SAFETY: `&mut self` means no `read` borrow is alive (they borrow
        // the cell), so the current value is ours to free now.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

impl<T: Send + Sync + Default + 'static> Default for RcuCell<T> {
    fn default() -> Self {
        RcuCell::new(T::default())
    }
}

impl<T: Send + Sync + 'static> From<T> for RcuCell<T> {
    fn from(value: T) -> Self {
        RcuCell::new(value)
    }
}

impl<T: Send + Sync + fmt::Debug + 'static> fmt::Debug for RcuCell<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let guard = crate::reader::read_lock();
        f.debug_tuple("RcuCell").field(self.read(&guard)).finish()
    }
}
