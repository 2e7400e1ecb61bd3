//! `RcuCell<T>`: a value that readers load inside a read section without
//! blocking or writing shared memory, and that writers replace, retiring the
//! old value after a grace period.

use crate::call_rcu::{call_rcu, call_rcu_or_report};
use crate::detect;
use crate::fork;
use crate::grace;
use crate::poll::{self, PollState};
use crate::reader::{read_lock, ReadGuard};
#[cfg(not(loom))]
use crate::sync::MutexGuard;
use crate::sync::{
    global, lock, thread_local_const, AtomicPtr, AtomicU64, Condvar, Mutex, Ordering, MAY_SPIN,
};
use std::cell::Cell;
use std::convert::Infallible;
use std::fmt;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ptr;
use std::sync::Arc;

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
///
/// # Choosing a writer
///
/// | writer | when |
/// | --- | --- |
/// | [`replace`](RcuCell::replace) | publish a new value; the old one is dropped later on the `rcu-call` thread |
/// | [`update`](RcuCell::update) | compute the new value from the current one (read-copy-update) |
/// | [`try_update`](RcuCell::try_update) | the same, where the closure may decline or fail with an error |
/// | [`compare_exchange`](RcuCell::compare_exchange) | publish only if the value is still the one a read returned |
/// | [`replace_retired`](RcuCell::replace_retired) | publish now, and get the old value back after a grace period ([`Retired::wait`]) or let it go |
/// | [`replace_sync`](RcuCell::replace_sync) | publish, wait for a grace period, and get the old value back |
///
/// A value that must outlive the read section (kept across blocking I/O
/// or an `.await`) is copied out: [`get_cloned`](RcuCell::get_cloned), or
/// for an `RcuCell<Arc<U>>`, [`load_full`](RcuCell::load_full), which
/// clones the `Arc`.
///
/// # In a `static`
///
/// [`new`](RcuCell::new) is not a `const fn`: the value lives in its own
/// heap allocation from the start, so that a reader always follows one
/// pointer and every value, the first one included, is retired the same
/// way; a `const fn` cannot allocate. A `static` cell is built on first
/// use with [`LazyLock`](std::sync::LazyLock) (or
/// [`OnceLock`](std::sync::OnceLock)), which costs readers one more load
/// and a predictable branch:
///
/// ```
/// use rcu_defer::{read_lock, RcuCell};
/// use std::sync::LazyLock;
///
/// static LOG_LEVEL: LazyLock<RcuCell<String>> =
///     LazyLock::new(|| RcuCell::new(String::from("info")));
///
/// LOG_LEVEL.replace(String::from("debug"));
/// let guard = read_lock();
/// assert_eq!(LOG_LEVEL.read(&guard), "debug");
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
    /// Creates a cell holding `value` (moved to the heap; see "In a
    /// `static`" above for a `static` cell).
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
    ///
    /// To get the old value back, use
    /// [`replace_retired`](RcuCell::replace_retired) (without waiting) or
    /// [`replace_sync`](RcuCell::replace_sync) (waiting).
    ///
    /// # Panics
    ///
    /// As [`call_rcu`](crate::call_rcu), if the `rcu-call` thread cannot be
    /// started (the new value is published then, and the old one stays
    /// queued); and if called from inside the closure of an
    /// [`update`](RcuCell::update) of the same cell.
    pub fn replace(&self, value: T) {
        let old = self.swap(value);
        call_rcu(move || drop(old));
    }

    /// Publishes `value` and returns the old value as a [`Retired`]: a
    /// handle that gives the value back after a grace period
    /// ([`Retired::wait`]), or, dropped, retires it like
    /// [`replace`](RcuCell::replace). Never waits for readers; a writer
    /// that polls from an event loop instead checks it with
    /// [`Retired::try_wait`].
    ///
    /// This splits [`replace_sync`](RcuCell::replace_sync) in two: the
    /// writer publishes at once (inside a read section too) and waits, if it
    /// must, later and elsewhere, for instance to close a file the old value
    /// owns once no reader can use it.
    ///
    /// ```
    /// use rcu_defer::{read_lock, RcuCell};
    ///
    /// let backing = RcuCell::new(String::from("disk-a.img"));
    /// let old = {
    ///     let guard = read_lock();
    ///     let old = backing.replace_retired(String::from("disk-b.img"));
    ///     // Readers see the new value at once; a section that read the
    ///     // old one keeps it until the section ends.
    ///     assert_eq!(backing.read(&guard), "disk-b.img");
    ///     old
    /// };
    /// // Outside the section: wait for the grace period, then own the value.
    /// assert_eq!(old.wait(), "disk-a.img");
    /// ```
    ///
    /// # Panics
    ///
    /// If called from inside the closure of an
    /// [`update`](RcuCell::update) of the same cell.
    pub fn replace_retired(&self, value: T) -> Retired<T> {
        let value = Some(self.swap(value));
        // After the swap: the cookie covers every section that could have
        // loaded the old pointer.
        Retired {
            value,
            state: poll::get_state_synchronize_rcu(),
        }
    }

    /// Publishes `value`, waits for a grace period, and returns the old
    /// value, which no reader can still see.
    ///
    /// Only the value this call replaced is returned: versions retired
    /// earlier with [`replace`](RcuCell::replace),
    /// [`update`](RcuCell::update) or a dropped [`Retired`] may still be
    /// queued for their own grace periods, holding whatever they hold (a
    /// file, a mapping). To know that every retired version is gone, call
    /// [`drain_call_rcu`](crate::drain_call_rcu) afterwards.
    ///
    /// ```
    /// use rcu_defer::RcuCell;
    ///
    /// let backing = RcuCell::new(String::from("disk-a.img"));
    /// let old = backing.replace_sync(String::from("disk-b.img"));
    /// assert_eq!(old, "disk-a.img"); // no reader can see it any more
    /// ```
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
        self.replace_retired(value).wait_as("RcuCell::replace_sync")
    }

    /// Read-copy-update: computes a new value from the current one and
    /// publishes it; the old value is dropped after a grace period, like
    /// [`replace`](RcuCell::replace).
    ///
    /// Writers are serialized, so concurrent updates never lose each other's
    /// changes; readers are never blocked. If `f` panics, nothing changes.
    /// [`try_update`](RcuCell::try_update) lets `f` decline.
    ///
    /// # Panics
    ///
    /// If `f` writes to this same cell (any of its writers called from
    /// inside the closure), which would otherwise wait for itself; and
    /// whatever `f` panics with.
    pub fn update(&self, f: impl FnOnce(&T) -> T) {
        let updated = self.update_as("RcuCell::update", |value| Ok::<T, Infallible>(f(value)));
        match updated {
            Ok(()) => {}
            Err(never) => match never {},
        }
    }

    /// Read-copy-update that may decline: `f` computes the new value from
    /// the current one, or returns an error, which leaves the cell as it is
    /// and is returned. Like [`update`](RcuCell::update) otherwise: writers
    /// are serialized, and the old value is dropped after a grace period.
    ///
    /// ```
    /// use rcu_defer::{read_lock, RcuCell};
    ///
    /// #[derive(Clone, Debug)]
    /// struct Queue { size: u16 }
    ///
    /// let queue = RcuCell::new(Queue { size: 128 });
    /// let resize = |size: u16| {
    ///     queue.try_update(|old| {
    ///         if !size.is_power_of_two() {
    ///             return Err(format!("queue size {size} is not a power of two"));
    ///         }
    ///         Ok(Queue { size, ..old.clone() })
    ///     })
    /// };
    /// assert!(resize(100).is_err());
    /// assert_eq!(queue.read(&read_lock()).size, 128); // unchanged
    /// resize(256).unwrap();
    /// assert_eq!(queue.read(&read_lock()).size, 256);
    /// ```
    ///
    /// # Errors
    ///
    /// Whatever `f` returns as an error; nothing changed then.
    ///
    /// # Panics
    ///
    /// As [`update`](RcuCell::update): if `f` writes to this same cell, and
    /// whatever `f` panics with (nothing changes then either).
    pub fn try_update<E>(&self, f: impl FnOnce(&T) -> Result<T, E>) -> Result<(), E> {
        self.update_as("RcuCell::try_update", f)
    }

    /// Publishes `new` if the cell still holds the value `current` refers
    /// to, and retires that value like [`replace`](RcuCell::replace);
    /// otherwise changes nothing and gives `new` back.
    ///
    /// `current` is a reference that [`read`](RcuCell::read) returned, and
    /// the comparison is by identity (address), not by `==`: it succeeds
    /// only if no writer has published since that read. The reference
    /// borrows the read guard, so its section is still open, and a value
    /// read in an open section is not freed before the section ends: no
    /// newer value can have been given the same address meanwhile (no ABA). For a zero-sized `T` every value
    /// has the same address, so any `current` read from the cell matches.
    ///
    /// Unlike with [`update`](RcuCell::update), the new value is computed
    /// without the writer lock held: a writer that loses the race reads
    /// again and retries (or gives up).
    ///
    /// ```
    /// use rcu_defer::{read_lock, RcuCell};
    ///
    /// let counter = RcuCell::new(0u64);
    /// let guard = read_lock();
    /// let seen = counter.read(&guard);
    /// counter.replace(10); // another writer gets in first
    /// assert_eq!(counter.compare_exchange(seen, *seen + 1), Err(1));
    ///
    /// // The retry loop of a lock-free writer:
    /// let mut seen = counter.read(&guard);
    /// while counter.compare_exchange(seen, *seen + 1).is_err() {
    ///     seen = counter.read(&guard);
    /// }
    /// assert_eq!(*counter.read(&guard), 11);
    /// ```
    ///
    /// A reference cannot outlive its section, so it cannot be compared
    /// after the value it points to may have been freed:
    ///
    /// ```compile_fail,E0597
    /// use rcu_defer::{read_lock, RcuCell};
    ///
    /// let counter = RcuCell::new(0u64);
    /// let seen = {
    ///     let guard = read_lock();
    ///     counter.read(&guard)
    /// }; // error: `guard` does not live long enough
    /// counter.compare_exchange(seen, 1);
    /// ```
    ///
    /// # Errors
    ///
    /// `Err(new)` if the cell holds another value than `current`.
    ///
    /// # Panics
    ///
    /// As [`replace`](RcuCell::replace).
    pub fn compare_exchange(&self, current: &T, new: T) -> Result<(), T> {
        let writer = self.lock_writer("RcuCell::compare_exchange");
        // Relaxed: only the address is compared, and writers are serialized
        // by the lock, whose Acquire orders the last writer's store before
        // this load.
        let ptr = self.current.load(Ordering::Relaxed);
        if !ptr::eq(ptr, current) {
            return Err(new);
        }
        // Release publishes the new value's contents with the pointer.
        self.current
            .store(Box::into_raw(Box::new(new)), Ordering::Release);
        drop(writer);
        let old = Unpublished::new(ptr);
        call_rcu(move || drop(old));
        Ok(())
    }

    /// A clone of the current value, for code that must keep it after the
    /// read section (blocking I/O, an `.await`): it takes a read section for
    /// the clone.
    ///
    /// For a large value, hold it as an `RcuCell<Arc<U>>` and use
    /// [`load_full`](RcuCell::load_full), which clones only the `Arc`.
    ///
    /// ```
    /// use rcu_defer::RcuCell;
    ///
    /// let path = RcuCell::new(String::from("/var/lib/disk.img"));
    /// let owned: String = path.get_cloned();
    /// path.replace(String::from("/srv/disk.img"));
    /// assert_eq!(owned, "/var/lib/disk.img"); // a copy: unaffected
    /// ```
    #[track_caller]
    pub fn get_cloned(&self) -> T
    where
        T: Clone,
    {
        let guard = read_lock();
        self.read(&guard).clone()
    }

    /// A mutable reference to the current value. The `&mut self` borrow
    /// proves that no reader holds a reference into this cell, so no read
    /// section and no grace period is involved.
    ///
    /// ```
    /// use rcu_defer::{read_lock, RcuCell};
    ///
    /// let mut config = RcuCell::new(vec![128_u16]);
    /// config.get_mut().push(256); // set-up, before the cell is shared
    /// assert_eq!(config.read(&read_lock()), &[128, 256]);
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        // Relaxed: `&mut self` is exclusive; whatever gave us the exclusive
        // borrow ordered the last store before it.
        let ptr = self.current.load(Ordering::Relaxed);
        // SAFETY: the current value is owned by the cell (from
        // `Box::into_raw`), and `&mut self` means no `read` borrow (they
        // borrow the cell) and no writer is alive: the reference is
        // exclusive for as long as it borrows `self`.
        unsafe { &mut *ptr }
    }

    /// Consumes the cell and returns its current value. Values replaced
    /// earlier are not affected: they are retired as before.
    ///
    /// ```
    /// use rcu_defer::RcuCell;
    ///
    /// let cell = RcuCell::new(String::from("last"));
    /// cell.replace(String::from("final"));
    /// assert_eq!(cell.into_inner(), "final");
    /// ```
    pub fn into_inner(self) -> T {
        // The cell's `Drop` must not free the value handed out here; its
        // other fields have nothing to drop.
        let this = ManuallyDrop::new(self);
        // Relaxed: as in `get_mut`.
        Unpublished::new(this.current.load(Ordering::Relaxed)).into_inner()
    }

    /// Runs `f` on the current value under the writer lock, and publishes
    /// its `Ok` value; `op` names the write for the re-entrancy panic.
    fn update_as<E>(&self, op: &str, f: impl FnOnce(&T) -> Result<T, E>) -> Result<(), E> {
        let writer = self.lock_writer(op);
        // Acquire is enough: writers are serialized by the lock, and the
        // value was published with Release.
        let ptr = self.current.load(Ordering::Acquire);
        // SAFETY: only writers retire the current value, and they are
        // serialized by `self.writer`, which we hold: `ptr` stays valid
        // until we replace it below.
        let next = f(unsafe { &*ptr })?;
        let new = Box::into_raw(Box::new(next));
        // Release publishes the new value's contents with the pointer.
        self.current.store(new, Ordering::Release);
        drop(writer);
        let old = Unpublished::new(ptr);
        call_rcu(move || drop(old));
        Ok(())
    }

    /// Swaps in `value` under the writer lock and takes ownership of the
    /// old value.
    fn swap(&self, value: T) -> Unpublished<T> {
        let new = Box::new(value);
        // If this panics (a write from inside `update`'s closure), `new`
        // was never published and is dropped with the unwind.
        let _writer = self.lock_writer("a write to an RcuCell");
        // AcqRel: Release publishes `value`; Acquire takes ownership of the
        // old value's contents.
        Unpublished::new(self.current.swap(Box::into_raw(new), Ordering::AcqRel))
    }
}

impl<U: Send + Sync + 'static> RcuCell<Arc<U>> {
    /// The current `Arc`, cloned: an owned snapshot that stays valid after
    /// the read section, across blocking calls or `.await`s, for as long as
    /// it is held (arc-swap's `load_full`). It costs a reference-count
    /// increment; inside a read section, [`read`](RcuCell::read) costs none.
    ///
    /// ```
    /// use rcu_defer::RcuCell;
    /// use std::sync::Arc;
    ///
    /// struct Backend { path: String }
    ///
    /// let backend = RcuCell::new(Arc::new(Backend { path: "/srv/a.img".into() }));
    /// let snapshot: Arc<Backend> = backend.load_full(); // no guard held from here
    /// backend.replace(Arc::new(Backend { path: "/srv/b.img".into() }));
    /// // ... blocking I/O, or an .await, with `snapshot` ...
    /// assert_eq!(snapshot.path, "/srv/a.img");
    /// ```
    #[track_caller]
    pub fn load_full(&self) -> Arc<U> {
        let guard = read_lock();
        Arc::clone(self.read(&guard))
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
        // count the generations, and registering the hook of `WAIT` (which
        // the release takes) registers them.
        #[cfg(not(loom))]
        fork::register(&FORK_HOOK).unwrap_or_else(crate::report::fork_handlers_failed);
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
                    "rcu-defer: {op} from inside RcuCell::update's (or try_update's) closure \
                     on the same cell would wait for itself; compute the new value in the \
                     closure instead"
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

// The writers' wait lock across a `fork()` (see `fork`), and its repair in
// the child.
#[cfg(not(loom))]
fork::lock_hook!(CellWait, WAIT.sleepers, usize, repair: after_fork_child);

/// In the child of a fork, before the lock is released: nobody sleeps (the
/// sleepers were other threads), and the forking thread is the one thread
/// whose cell locks taken before the fork still have a holder.
#[cfg(not(loom))]
fn after_fork_child(sleepers: &mut MutexGuard<'static, usize>) {
    **sleepers = 0;
    // Relaxed: the child runs this one thread until it spawns another.
    FORKER_ID.store(WRITER_ID.with(Cell::get), Ordering::Relaxed);
}

/// A value taken out of a cell (unpublished by a writer, or the cell's own
/// at its end), owned by whoever holds this: dropping it frees the value.
/// The pointer comes from `Box::into_raw` and has no other owner. Whoever
/// drops it or calls `into_inner` makes sure first that no reader can still
/// hold a reference to the value: a grace period has passed since it was
/// unpublished, or the cell is exclusively borrowed.
struct Unpublished<T>(*mut T);

// SAFETY: `Unpublished<T>` owns a `Box<T>` (see `into_inner` and `Drop`), so
// it may move to another thread exactly when `Box<T>` may: `T: Send`.
unsafe impl<T: Send> Send for Unpublished<T> {}

impl<T> Unpublished<T> {
    fn new(ptr: *mut T) -> Self {
        Unpublished(ptr)
    }

    fn into_inner(self) -> T {
        let ptr = self.0;
        std::mem::forget(self);
        // SAFETY: `ptr` came from `Box::into_raw` and `self` was its only
        // owner (now forgotten); the caller has made sure that no reader
        // holds a reference (see the type).
        *unsafe { Box::from_raw(ptr) }
    }
}

impl<T> Drop for Unpublished<T> {
    fn drop(&mut self) {
        // SAFETY: as in `into_inner`.
        drop(unsafe { Box::from_raw(self.0) });
    }
}

/// An old value of an [`RcuCell`], unpublished by
/// [`replace_retired`](RcuCell::replace_retired): readers that entered their
/// sections before may still be using it, so it is not the caller's until a
/// grace period has passed.
///
/// [`wait`](Retired::wait) waits for one and gives the value back. Dropped
/// without waiting, a `Retired` hands its value to
/// [`call_rcu`](crate::call_rcu), which drops it after a grace period, as
/// [`RcuCell::replace`] does. That holds on every path, a panic's unwinding
/// included: the value is never dropped while a reader may hold it.
///
/// It can be sent to another thread and waited for there (a grace period
/// that starts after the value was unpublished covers every reader that
/// could have seen it, whichever thread waits).
///
/// ```
/// use rcu_defer::RcuCell;
/// use std::thread;
///
/// let table = RcuCell::new(vec![1, 2, 3]);
/// let old = table.replace_retired(vec![4, 5, 6]);
/// // Free it off the writer's thread, once no reader can see it.
/// let freer = thread::spawn(move || drop(old.wait()));
/// freer.join().unwrap();
/// ```
pub struct Retired<T: Send + 'static> {
    /// The value; `None` only once `wait` or `try_wait` has taken it.
    value: Option<Unpublished<T>>,
    /// The grace period after which no reader can hold the value, taken
    /// after it was unpublished.
    state: PollState,
}

impl<T: Send + 'static> Retired<T> {
    /// Waits for a grace period, then returns the value, which no reader
    /// can still see.
    ///
    /// # Panics
    ///
    /// Inside a read section of the calling thread (it would wait for
    /// itself) or from the stall handler, as
    /// [`synchronize_rcu`](crate::synchronize_rcu) does; and if the grace
    /// period fails ([`Error::MembarrierFailed`](crate::Error::MembarrierFailed)).
    /// The value is then handed to [`call_rcu`](crate::call_rcu), as if the
    /// `Retired` had been dropped, never dropped while a reader may hold it.
    #[track_caller]
    pub fn wait(self) -> T {
        self.wait_as("Retired::wait")
    }

    /// `wait`, with `op` naming the operation in a panic's message.
    #[track_caller]
    fn wait_as(mut self, op: &'static str) -> T {
        // A panic here or in the grace period drops `self`, which retires
        // the value through `call_rcu`.
        detect::assert_may_block(op);
        while !poll::poll_state_synchronize_rcu(self.state) {
            if let Err(e) = grace::grace_period(None) {
                panic!("rcu-defer: {op}: {e}");
            }
        }
        self.take()
    }

    /// Returns the value if the grace period it needs has already passed,
    /// else gives the handle back: never blocks, never makes a system call.
    /// For a writer that polls from its event loop instead of waiting (see
    /// [`poll_state_synchronize_rcu`](crate::poll_state_synchronize_rcu)).
    ///
    /// A first call that finds the grace period still needed asks for it
    /// (as [`start_poll_synchronize_rcu`](crate::start_poll_synchronize_rcu)
    /// does, queueing one callback), so polling succeeds eventually with
    /// nothing else running grace periods.
    ///
    /// ```
    /// use rcu_defer::{read_lock, RcuCell};
    ///
    /// let table = RcuCell::new(vec![1, 2, 3]);
    /// let guard = read_lock();
    /// let seen = table.read(&guard);
    /// let old = table.replace_retired(vec![4, 5, 6]);
    /// // A section that began before the replace still runs: not yet.
    /// let old = old.try_wait().unwrap_err();
    /// assert_eq!(seen, &[1, 2, 3]);
    /// drop(guard);
    ///
    /// let mut old = old;
    /// let value = loop {
    ///     match old.try_wait() {
    ///         Ok(value) => break value,
    ///         Err(pending) => {
    ///             old = pending;
    ///             std::thread::yield_now(); // ... other work ...
    ///         }
    ///     }
    /// };
    /// assert_eq!(value, [1, 2, 3]);
    /// ```
    pub fn try_wait(mut self) -> Result<T, Self> {
        if poll::poll_state_synchronize_rcu(self.state) {
            Ok(self.take())
        } else {
            poll::request_or_report(self.state);
            Err(self)
        }
    }

    /// The cookie of the grace period the value waits for: complete (see
    /// [`poll_state_synchronize_rcu`](crate::poll_state_synchronize_rcu))
    /// exactly when [`try_wait`](Retired::try_wait) would succeed.
    pub fn state(&self) -> PollState {
        self.state
    }

    /// Takes the value out; only once its grace period has passed.
    fn take(&mut self) -> T {
        self.value
            .take()
            .expect("a Retired holds its value until it is taken")
            .into_inner()
    }
}

impl<T: Send + 'static> Drop for Retired<T> {
    fn drop(&mut self) {
        if let Some(old) = self.value.take() {
            // Never panics (a drop may run during an unwind): a callback
            // thread that cannot be started is reported, and the value
            // stays queued.
            call_rcu_or_report(move || drop(old));
        }
    }
}

impl<T: Send + 'static> fmt::Debug for Retired<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retired").finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Drop for RcuCell<T> {
    fn drop(&mut self) {
        // Relaxed: `&mut self` is exclusive; whatever gave us ownership
        // already ordered the last store before this. `&mut self` also means
        // no `read` borrow is alive (they borrow the cell), so the current
        // value is ours to free now.
        drop(Unpublished::new(self.current.load(Ordering::Relaxed)));
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
