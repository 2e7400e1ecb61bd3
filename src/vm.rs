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
//! A handle is a read section, so it is not `Send`, and a thread that holds
//! one must not wait for a grace period (that is reported as a deadlock,
//! see [`Error::InReadSection`](crate::Error::InReadSection)). Code that
//! must keep a map across a blocking call should take what it needs out of
//! guest memory first, or drop the handle and take a new one after.

use crate::call_rcu::call_rcu;
use crate::reader::{read_lock, ReadGuard};
use crate::sync::{Arc, AtomicPtr, Mutex, MutexGuard, Ordering};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::{LockResult, PoisonError};
use vm_memory::{GuestAddressSpace, GuestMemory};

/// A guest memory map that device threads read through RCU handles and a
/// hot-plug writer replaces; see the [module documentation](self).
///
/// Cloning is cheap (an `Arc`): clones share the map.
pub struct GuestMemoryRcu<M: GuestMemory> {
    inner: Arc<Inner<M>>,
}

struct Inner<M: GuestMemory> {
    /// The current map: a pointer from `Box::into_raw`, owned here.
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

/// Drops the map at `map` after a grace period, on the `rcu-call` thread.
fn retire_after_grace_period<M: Send + 'static>(map: *mut M) {
    /// A map unpublished from its `GuestMemoryRcu`, owned by this.
    struct Unpublished<M>(*mut M);
    // SAFETY: it owns a `Box<M>` (see `Drop`), so it may move to another
    // thread exactly when `Box<M>` may: `M: Send`.
    unsafe impl<M: Send> Send for Unpublished<M> {}
    impl<M> Drop for Unpublished<M> {
        fn drop(&mut self) {
            // SAFETY: the pointer came from `Box::into_raw` in `new` or
            // `replace`, was unpublished, and is dropped once, after the
            // grace period that `call_rcu` waits for: no handle taken
            // before it was unpublished is still alive.
            drop(unsafe { Box::from_raw(self.0) });
        }
    }
    let old = Unpublished(map);
    call_rcu(move || drop(old));
}

impl<M: GuestMemory + Send + Sync + 'static> GuestMemoryRcu<M> {
    /// Wraps `map` (the equivalent of `GuestMemoryAtomic::new`).
    pub fn new(map: M) -> Self {
        GuestMemoryRcu {
            inner: Arc::new(Inner {
                current: AtomicPtr::new(Box::into_raw(Box::new(map))),
                writer: Mutex::new(()),
                retire: retire_after_grace_period::<M>,
                _map: PhantomData,
            }),
        }
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

impl<M: GuestMemory> Clone for GuestMemoryRcu<M> {
    fn clone(&self) -> Self {
        GuestMemoryRcu {
            inner: Arc::clone(&self.inner),
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
    fn memory(&self) -> GuestMemoryRcuHandle<M> {
        let guard = read_lock();
        // Acquire pairs with the Release of the `swap` that published the
        // map: its contents are visible before the pointer is.
        let map = self.inner.current.load(Ordering::Acquire);
        GuestMemoryRcuHandle {
            map,
            guard,
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
/// its thread.
///
/// ```compile_fail,E0277
/// use rcu_defer::vm::GuestMemoryRcu;
/// use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryMmap};
/// let map = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
/// let handle = GuestMemoryRcu::new(map).memory();
/// std::thread::spawn(move || drop(handle));
/// ```
pub struct GuestMemoryRcuHandle<M: GuestMemory> {
    /// The map, valid while `guard`'s section lasts.
    map: *const M,
    guard: ReadGuard,
    _map: PhantomData<M>,
}

impl<M: GuestMemory> Deref for GuestMemoryRcuHandle<M> {
    type Target = M;

    fn deref(&self) -> &M {
        // SAFETY: `map` was loaded from `current` inside the read section
        // that `guard` holds, so it was a published map then. A map is
        // freed only by `retire_after_grace_period`, after it has been
        // unpublished and a grace period has passed, and that grace period
        // waits for this section, which lasts as long as `self` (the
        // returned reference borrows `self`).
        unsafe { &*self.map }
    }
}

impl<M: GuestMemory> Clone for GuestMemoryRcuHandle<M> {
    fn clone(&self) -> Self {
        // A nested section: the map stays valid for the clone however the
        // two are dropped.
        let guard = read_lock();
        GuestMemoryRcuHandle {
            map: self.map,
            guard,
            _map: PhantomData,
        }
    }
}

impl<M: GuestMemory> fmt::Debug for GuestMemoryRcuHandle<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestMemoryRcuHandle")
            .field("section", &self.guard)
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
        let new = Box::into_raw(Box::new(map));
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
