//! An RCU-backed guest memory map for rust-vmm's `vm-memory` (feature
//! `vm-memory`).
//!
//! [`GuestMemoryRcu<M>`] is a drop-in for `vm_memory::GuestMemoryAtomic<M>`:
//! the same `new`, `lock()` and `replace`, and the same
//! [`GuestAddressSpace`] implementation, so a monitor switches by changing
//! one type. What differs is the cost of [`memory()`](GuestAddressSpace::memory):
//! `GuestMemoryAtomic` loads an `arc_swap::ArcSwap` (a per-thread debt slot,
//! and a reference-count read-modify-write once a thread holds more than 8
//! guards); here the handle is a nested read section and one pointer load,
//! however many a thread holds.
//!
//! A hot-plug builds the new map and publishes it with
//! [`replace`](GuestMemoryRcuExclusiveGuard::replace); the old map, and any
//! region mapping only it holds, is dropped on the `rcu-call` thread after a
//! grace period: never while a handle taken before the replace is alive,
//! and never on a device thread.
//!
//! ```
//! use rcu_defer::vm::GuestMemoryRcu;
//! use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryMmap};
//!
//! let map = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
//! let memory = GuestMemoryRcu::new(map);
//!
//! // Device thread: a handle per request, as with GuestMemoryAtomic.
//! let mem = memory.memory();
//! mem.write_obj(0xabcd_u32, GuestAddress(0x10)).unwrap();
//! assert_eq!(mem.read_obj::<u32>(GuestAddress(0x10)).unwrap(), 0xabcd);
//! drop(mem);
//!
//! // Hot-plug: a second region.
//! let bigger = GuestMemoryMmap::<()>::from_ranges(&[
//!     (GuestAddress(0), 0x1000),
//!     (GuestAddress(0x10_0000), 0x1000),
//! ])
//! .unwrap();
//! memory.lock().unwrap().replace(bigger);
//! assert!(memory.memory().read_obj::<u8>(GuestAddress(0x10_0000)).is_ok());
//! ```
//!
//! # Differences from `GuestMemoryAtomic`
//!
//! The same names work: [`new`](GuestMemoryRcu::new),
//! `From<Arc<M>>`, [`lock`](GuestMemoryRcu::lock) and
//! [`replace`](GuestMemoryRcuExclusiveGuard::replace), `memory()`, and on
//! the handle `Deref`, `Clone` and [`into_inner`](GuestMemoryRcuHandle::into_inner)
//! (an owned `Arc<M>`). What differs:
//!
//! - `M` must be `Send + Sync + 'static` (the old map is dropped on the
//!   `rcu-call` thread).
//! - A handle is a read section, so it is not `Send`: a `DescriptorChain`
//!   popped with one cannot go to another thread. Pop it with an owned
//!   snapshot instead, [`GuestMemoryRcu::snapshot`] or
//!   [`into_inner`](GuestMemoryRcuHandle::into_inner): an `Arc<M>`, which
//!   is `Send` and is itself a [`GuestAddressSpace`]. A snapshot costs a
//!   reference count (what every `GuestMemoryAtomic` handle costs) and
//!   holds up no grace period.
//! - A thread that holds a handle must not wait for a grace period (that
//!   is reported as a deadlock, see
//!   [`Error::InReadSection`](crate::Error::InReadSection)), and should not
//!   block at all: the guest notifications batched inside the handle's
//!   section are sent only when it ends (see
//!   [`virtio`](crate::virtio#sections-that-block)). Take what is needed
//!   out of guest memory first, or drop the handle and take a new one
//!   after the wait.
//! - Reports about a section entered through [`memory()`](GuestAddressSpace::memory)
//!   or a handle's `clone` name the caller's line (`#[track_caller]`).
//!
//! ```
//! use rcu_defer::vm::GuestMemoryRcu;
//! use std::sync::Arc;
//! use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryMmap};
//!
//! let map = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap());
//! let memory = GuestMemoryRcu::from(map);
//! let snapshot = memory.snapshot(); // an Arc<GuestMemoryMmap>: Send
//! std::thread::spawn(move || snapshot.write_obj(7u8, GuestAddress(0)).unwrap())
//!     .join()
//!     .unwrap();
//! assert_eq!(memory.memory().read_obj::<u8>(GuestAddress(0)).unwrap(), 7);
//! ```

use crate::call_rcu::call_rcu;
use crate::reader::{read_lock, ReadGuard};
use crate::sync::{AtomicPtr, Mutex, MutexGuard, Ordering};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::{Arc, LockResult, PoisonError};
use vm_memory::{GuestAddressSpace, GuestMemory};

/// A guest memory map that device threads read through RCU handles and a
/// hot-plug writer replaces; see the [module documentation](self).
///
/// Cloning is cheap (an `Arc`): clones share the map.
pub struct GuestMemoryRcu<M: GuestMemory> {
    inner: Arc<Inner<M>>,
}

struct Inner<M: GuestMemory> {
    /// The current map: a pointer from `Arc::into_raw`, owning one strong
    /// count.
    current: AtomicPtr<M>,
    /// Serializes writers (`lock`).
    writer: Mutex<()>,
    /// Retires a map unpublished from `current`: `retire_after_grace_period::<M>`,
    /// taken in `new`, where `M: Send + 'static` is known (the struct and
    /// its `Drop` cannot ask for it).
    retire: fn(*mut M),
    /// Owns an `M`, and hands out `&M` on any thread: `Inner<M>` (and so
    /// `GuestMemoryRcu<M>`) is `Send`/`Sync` only as `M` is (the
    /// `AtomicPtr` alone would make it both, whatever `M`).
    _map: PhantomData<M>,
}

/// Drops the strong count that `current` held on the map at `map` after a
/// grace period, on the `rcu-call` thread.
fn retire_after_grace_period<M: Send + Sync + 'static>(map: *mut M) {
    /// A map unpublished from its `GuestMemoryRcu`, owned by this.
    struct Unpublished<M>(*mut M);
    // SAFETY: it owns a strong count of an `Arc<M>` (see `Drop`), so it
    // may move to another thread exactly when `Arc<M>` may:
    // `M: Send + Sync`.
    unsafe impl<M: Send + Sync> Send for Unpublished<M> {}
    impl<M> Drop for Unpublished<M> {
        fn drop(&mut self) {
            // SAFETY: the pointer came from `Arc::into_raw` in `from_arc`
            // or `replace` and owns the strong count that `current` held;
            // it was unpublished, and is dropped once, after the grace
            // period that `call_rcu` waits for: no handle taken before it
            // was unpublished is still alive (snapshots hold counts of
            // their own).
            drop(unsafe { Arc::from_raw(self.0) });
        }
    }
    let old = Unpublished(map);
    call_rcu(move || drop(old));
}

impl<M: GuestMemory + Send + Sync + 'static> GuestMemoryRcu<M> {
    /// Wraps `map` (the equivalent of `GuestMemoryAtomic::new`).
    pub fn new(map: M) -> Self {
        Self::from_arc(Arc::new(map))
    }

    fn from_arc(map: Arc<M>) -> Self {
        GuestMemoryRcu {
            inner: crate::sync::Arc::new(Inner {
                current: AtomicPtr::new(Arc::into_raw(map).cast_mut()),
                writer: Mutex::new(()),
                retire: retire_after_grace_period::<M>,
                _map: PhantomData,
            }),
        }
    }

    /// An owned snapshot of the current map: an `Arc<M>` that keeps the
    /// map alive for as long as it is held, on any thread, and holds up no
    /// grace period. It is `Send` (a handle is not) and is a
    /// [`GuestAddressSpace`] itself, so a `DescriptorChain` popped with it
    /// can be sent to a worker thread; it costs a reference count, as a
    /// `GuestMemoryAtomic` handle does. The same as
    /// `self.memory().into_inner()`.
    ///
    /// ```
    /// use rcu_defer::vm::GuestMemoryRcu;
    /// use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
    ///
    /// let memory = GuestMemoryRcu::new(
    ///     GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap(),
    /// );
    /// let snapshot = memory.snapshot();
    /// let worker = std::thread::spawn(move || snapshot.num_regions());
    /// assert_eq!(worker.join().unwrap(), 1);
    /// ```
    pub fn snapshot(&self) -> Arc<M> {
        self.memory().into_inner()
    }

    /// Takes the writers' lock, to [`replace`](GuestMemoryRcuExclusiveGuard::replace)
    /// the map; blocks while another writer holds it. Readers are never
    /// blocked.
    ///
    /// # Errors
    ///
    /// A `PoisonError` (still holding the guard) if a writer panicked while
    /// holding the lock, as `GuestMemoryAtomic::lock` does; the map itself
    /// is always consistent.
    pub fn lock(&self) -> LockResult<GuestMemoryRcuExclusiveGuard<'_, M>> {
        match self.inner.writer.lock() {
            Ok(guard) => Ok(GuestMemoryRcuExclusiveGuard {
                parent: self,
                _lock: guard,
            }),
            Err(poisoned) => Err(PoisonError::new(GuestMemoryRcuExclusiveGuard {
                parent: self,
                _lock: poisoned.into_inner(),
            })),
        }
    }
}

impl<M: GuestMemory + Send + Sync + 'static> From<Arc<M>> for GuestMemoryRcu<M> {
    /// Wraps a map that is already shared (as `GuestMemoryAtomic`'s
    /// `From<Arc<M>>` does): handles dereference to the same `M`.
    fn from(map: Arc<M>) -> Self {
        Self::from_arc(map)
    }
}

impl<M: GuestMemory> Clone for GuestMemoryRcu<M> {
    fn clone(&self) -> Self {
        GuestMemoryRcu {
            inner: crate::sync::Arc::clone(&self.inner),
        }
    }
}

impl<M: GuestMemory> Drop for Inner<M> {
    fn drop(&mut self) {
        // The last `GuestMemoryRcu` is gone, but handles taken from it may
        // still be alive (a handle does not borrow the address space): the
        // map goes after a grace period, like a replaced one.
        (self.retire)(*self.current.get_mut());
    }
}

impl<M: GuestMemory> GuestAddressSpace for GuestMemoryRcu<M> {
    type M = M;
    type T = GuestMemoryRcuHandle<M>;

    /// A handle on the current map: enters a (nested) read section and
    /// loads one pointer; no reference count is touched. Never blocks.
    ///
    /// The section's reports (deadlock errors, stall reports, a held
    /// notification) name the caller's location.
    #[track_caller]
    fn memory(&self) -> GuestMemoryRcuHandle<M> {
        let guard = read_lock();
        // Acquire pairs with the Release of the `swap` that published the
        // map: its contents are visible before the pointer is.
        let map = self.inner.current.load(Ordering::Acquire);
        GuestMemoryRcuHandle {
            section: HandleSection { map, guard },
            _map: PhantomData,
        }
    }
}

impl<M: GuestMemory> fmt::Debug for GuestMemoryRcu<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestMemoryRcu").finish_non_exhaustive()
    }
}

/// A snapshot of a [`GuestMemoryRcu`]'s map: a read section that
/// dereferences to the map that was current when it was taken.
///
/// Cloning it enters another nested section (a counter increment); handles
/// may be dropped in any order. It is not `Send`: the section belongs to
/// its thread. To hand guest memory (or a `DescriptorChain` popped with
/// it) to another thread, take an owned snapshot with
/// [`into_inner`](Self::into_inner) or [`GuestMemoryRcu::snapshot`]; the
/// compiler's error says so:
///
/// ```compile_fail,E0277
/// use rcu_defer::vm::GuestMemoryRcu;
/// use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryMmap};
/// let map = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
/// let handle = GuestMemoryRcu::new(map).memory();
/// std::thread::spawn(move || drop(handle));
/// ```
///
/// ```compile_fail,E0277
/// # use rcu_defer::vm::{GuestMemoryRcu, GuestMemoryRcuHandle};
/// # use vm_memory::GuestMemoryMmap;
/// fn shared<T: Sync>() {}
/// shared::<GuestMemoryRcuHandle<GuestMemoryMmap>>();
/// ```
pub struct GuestMemoryRcuHandle<M: GuestMemory> {
    section: HandleSection<M>,
    _map: PhantomData<M>,
}

/// A handle's read section and the map it protects. Neither `Send` nor
/// `Sync`, through impls whose bound no type meets (see
/// `thread_bound`), so that the compiler's error for a handle sent to
/// another thread is [`HandleStaysOnItsThread`]'s message, not one about a
/// raw pointer.
struct HandleSection<M> {
    /// The map, valid while `guard`'s section lasts.
    map: *const M,
    guard: ReadGuard,
}

/// Implemented by no type; see [`HandleSection`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be sent to or shared with another thread: a guest memory handle \
               is a read section of the thread that took it",
    label = "a `GuestMemoryRcuHandle` cannot leave the thread that took it",
    note = "send an owned snapshot instead: `GuestMemoryRcu::snapshot()` or \
            `handle.into_inner()` give an `Arc<M>`, which is `Send` and a `GuestAddressSpace` \
            (pop a `DescriptorChain` that must go to a worker thread with \
            `queue.pop_descriptor_chain(memory.snapshot())`)"
)]
pub(crate) trait HandleStaysOnItsThread {}

// SAFETY: no type implements `HandleStaysOnItsThread` (the trait is private
// to the crate and has no impl), so this impl never applies: it replaces
// the automatic one (which the raw pointer and the guard refuse anyway) so
// that the error names the handle and the way out.
unsafe impl<M: GuestMemory> Send for HandleSection<M> where
    GuestMemoryRcuHandle<M>: HandleStaysOnItsThread
{
}
// SAFETY: as for `Send`: this impl never applies.
unsafe impl<M: GuestMemory> Sync for HandleSection<M> where
    GuestMemoryRcuHandle<M>: HandleStaysOnItsThread
{
}

impl<M: GuestMemory> GuestMemoryRcuHandle<M> {
    /// An owned snapshot of the handle's map (`GuestMemoryLoadGuard::into_inner`'s
    /// equivalent): an `Arc<M>` that keeps the map alive on any thread and
    /// holds up no grace period. Costs one reference-count increment.
    pub fn into_inner(self) -> Arc<M> {
        let map = self.section.map;
        // SAFETY: `map` came from `Arc::into_raw` of a published map, and
        // the strong count that `current` held for it is dropped only after
        // a grace period that waits for this handle's section, which is
        // still open here (`self` is alive): the count is at least 1, so
        // adding one and taking it as an `Arc` is sound.
        unsafe {
            Arc::increment_strong_count(map);
            Arc::from_raw(map)
        }
    }
}

impl<M: GuestMemory> Deref for GuestMemoryRcuHandle<M> {
    type Target = M;

    fn deref(&self) -> &M {
        // SAFETY: `map` was loaded from `current` inside the read section
        // that `guard` holds, so it was a published map then. A map is
        // freed only by `retire_after_grace_period` (or by the last
        // snapshot's drop, which comes after that), after it has been
        // unpublished and a grace period has passed, and that grace period
        // waits for this section, which lasts as long as `self` (the
        // returned reference borrows `self`).
        unsafe { &*self.section.map }
    }
}

impl<M: GuestMemory> Clone for GuestMemoryRcuHandle<M> {
    /// A nested section (a counter increment); reports about it name the
    /// caller's location.
    #[track_caller]
    fn clone(&self) -> Self {
        // A nested section: the map stays valid for the clone however the
        // two are dropped.
        let guard = read_lock();
        GuestMemoryRcuHandle {
            section: HandleSection {
                map: self.section.map,
                guard,
            },
            _map: PhantomData,
        }
    }
}

impl<M: GuestMemory> fmt::Debug for GuestMemoryRcuHandle<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestMemoryRcuHandle")
            .field("section", &self.section.guard)
            .finish_non_exhaustive()
    }
}

/// The writers' lock of a [`GuestMemoryRcu`], from
/// [`lock`](GuestMemoryRcu::lock).
pub struct GuestMemoryRcuExclusiveGuard<'a, M: GuestMemory> {
    parent: &'a GuestMemoryRcu<M>,
    _lock: MutexGuard<'a, ()>,
}

impl<M: GuestMemory> GuestMemoryRcuExclusiveGuard<'_, M> {
    /// Publishes `map` and releases the lock. Handles taken from now on see
    /// `map`; the old map is dropped on the `rcu-call` thread after a grace
    /// period, once every handle that could see it is gone. Never waits for
    /// readers.
    pub fn replace(self, map: M) {
        let new = Arc::into_raw(Arc::new(map)).cast_mut();
        // AcqRel: Release publishes the new map's contents with the
        // pointer; Acquire takes ownership of the old map's.
        let old = self.parent.inner.current.swap(new, Ordering::AcqRel);
        (self.parent.inner.retire)(old);
    }
}

impl<M: GuestMemory> fmt::Debug for GuestMemoryRcuExclusiveGuard<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestMemoryRcuExclusiveGuard")
            .finish_non_exhaustive()
    }
}
