//! `RcuCell<T>`: a value that readers load inside a read section without
//! blocking or writing shared memory, and that writers replace, retiring the
//! old value after a grace period.

use crate::call_rcu::{call_rcu, call_rcu_or_report};
use crate::detect;
use crate::grace;
use crate::reader::ReadGuard;
use crate::sync::{lock, thread_local_const, AtomicPtr, AtomicUsize, Mutex, MutexGuard, Ordering};
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
    /// Serializes writers, so that `update` reads a value no other writer
    /// can retire under it and no update is lost.
    writer: Mutex<()>,
    /// The thread holding `writer` (see `thread_token`), 0 if none: lets a
    /// write from inside `update`'s own closure panic instead of hanging.
    writer_thread: AtomicUsize,
    /// The cell owns a `T` (for drop check and auto traits).
    _owns: PhantomData<Box<T>>,
}

impl<T: Send + Sync + 'static> RcuCell<T> {
    /// Creates a cell holding `value`.
    pub fn new(value: T) -> Self {
        RcuCell {
            current: AtomicPtr::new(Box::into_raw(Box::new(value))),
            writer: Mutex::new(()),
            writer_thread: AtomicUsize::new(0),
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

thread_local_const! {
    /// Its address identifies the current thread among live threads.
    static THREAD_TOKEN: u8 = 0;
}

fn thread_token() -> usize {
    THREAD_TOKEN.with(|t| t as *const u8 as usize)
}

/// The cell's writer lock, held by one thread.
struct WriterGuard<'a> {
    owner: &'a AtomicUsize,
    _lock: MutexGuard<'a, ()>,
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        // Relaxed: only compared with the current thread's own token.
        self.owner.store(0, Ordering::Relaxed);
    }
}

impl<T: Send + Sync + 'static> RcuCell<T> {
    fn lock_writer(&self, op: &str) -> WriterGuard<'_> {
        let me = thread_token();
        let guard = match self.writer.try_lock() {
            Ok(guard) => guard,
            // A panicking `update` closure poisons the lock but changes
            // nothing: the value is consistent.
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                // Relaxed: a thread only ever finds its own token here if it
                // stored it itself (program order).
                if self.writer_thread.load(Ordering::Relaxed) == me {
                    panic!(
                        "rcu-defer: {op} from inside RcuCell::update's closure on the same \
                         cell would wait for itself; compute the new value in the closure \
                         instead"
                    );
                }
                lock(&self.writer)
            }
        };
        // Relaxed: see above.
        self.writer_thread.store(me, Ordering::Relaxed);
        WriterGuard {
            owner: &self.writer_thread,
            _lock: guard,
        }
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
