//! rust-vmm's vhost-user-backend with [`GuestMemoryRcu`] and
//! [`IrqNotifier`] (feature `vhost-user-backend`, Linux).
//!
//! vhost-user-backend 0.24 is written over
//! `GuestMemoryAtomic<GuestMemoryMmap<B>>` ([`AtomicMemory`]): the daemon
//! takes one, [`VhostUserBackend::update_memory`] receives one, and the
//! backend's vring type must be a [`VringT`] over it. It keeps each vring's
//! call eventfd inside the vring's lock, so a notification through the
//! vring (`VringRwLock::signal_used_queue`) takes that lock. This module
//! supplies the two pieces a backend needs to serve its queues through
//! [`GuestMemoryRcu`] handles and batch its notifications with
//! [`IrqNotifier`], with no lock trap:
//!
//! - [`RcuVring`], the backend's `Vring` type: vhost-user-backend's
//!   `VringRwLock` plus an `Arc<IrqNotifier<CallNotifier>>`
//!   ([`irq`](RcuVring::irq)). Its `set_call` hands the notifier its own
//!   duplicate of each call eventfd the frontend sets (SET_VRING_CALL,
//!   which QEMU sends again whenever the guest masks or unmasks the
//!   interrupt), so a signal reads the current eventfd without any vring
//!   lock. A signal queued while the vring's `get_mut()` guard is alive
//!   therefore cannot wait for that guard (the trap described at
//!   [`Notify`]), and its `signal_used_queue` is [`IrqNotifier::notify`]:
//!   batched inside a read section, at once outside.
//! - [`GuestMemoryRcu::follow`], for `update_memory`: the backend keeps a
//!   `GuestMemoryRcu` that mirrors the map vhost-user-backend hands over
//!   (the same mapped regions, shared), and serves requests from its
//!   handles.
//!
//! ```
//! use rcu_defer::vhost_user::{AtomicMemory, RcuVring};
//! use rcu_defer::vm::GuestMemoryRcu;
//! use std::io;
//! use vhost::vhost_user::message::VhostUserProtocolFeatures;
//! use vhost_user_backend::{VhostUserBackend, VringT};
//! use virtio_queue::QueueT;
//! use vm_memory::{GuestAddressSpace, GuestMemoryMmap};
//! use vmm_sys_util::epoll::EventSet;
//!
//! struct Backend {
//!     mem: GuestMemoryRcu<GuestMemoryMmap>,
//! }
//!
//! impl VhostUserBackend for Backend {
//!     type Bitmap = ();
//!     type Vring = RcuVring; // instead of VringRwLock
//!
//!     fn update_memory(&self, mem: AtomicMemory) -> io::Result<()> {
//!         self.mem.follow(&mem); // the old map goes after a grace period
//!         Ok(())
//!     }
//!
//!     fn handle_event(
//!         &self,
//!         _device_event: u16,
//!         _evset: EventSet,
//!         vrings: &[RcuVring],
//!         _thread_id: usize,
//!     ) -> io::Result<()> {
//!         let vring = &vrings[0];
//!         let mut state = vring.get_mut(); // the vring's write lock
//!         let queue = state.get_queue_mut();
//!         let mem = self.mem.memory(); // the pass's read section
//!         while let Some(chain) = queue.pop_descriptor_chain(mem.clone()) {
//!             // ... serve the request ...
//!             queue.add_used(&*mem, chain.head_index(), 0).ok();
//!             if queue.needs_notification(&*mem).unwrap_or(true) {
//!                 vring.irq().notify(); // queued: sent once, as `mem` drops
//!             }
//!         }
//!         Ok(())
//!     } // `mem` drops first: the signal runs while `state` is still held,
//!       // which is fine, as it takes no vring lock
//!
//!     fn num_queues(&self) -> usize { 1 }
//!     fn max_queue_size(&self) -> usize { 256 }
//!     fn features(&self) -> u64 { 1 << 32 /* VIRTIO_F_VERSION_1 */ }
//!     fn protocol_features(&self) -> VhostUserProtocolFeatures {
//!         VhostUserProtocolFeatures::empty()
//!     }
//!     fn set_event_idx(&self, _enabled: bool) {}
//! }
//!
//! let backend = Backend { mem: GuestMemoryRcu::new(GuestMemoryMmap::new()) };
//! # let _ = backend.num_queues();
//! ```

use crate::reader::read_lock;
use crate::report::report;
use crate::virtio::{full_counter_is_delivered, IrqNotifier, Notify};
use crate::vm::GuestMemoryRcu;
use crate::RcuCell;
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::ops::Deref;
use std::sync::{Arc, PoisonError, RwLockReadGuard, RwLockWriteGuard};
use vhost_user_backend::{VringRwLock, VringState, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::Error as QueueError;
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

// Docs only.
#[allow(unused_imports)]
use vhost_user_backend::VhostUserBackend;

/// Guest memory as vhost-user-backend hands it over (its private `GM<B>`).
pub type AtomicMemory<B = ()> = GuestMemoryAtomic<GuestMemoryMmap<B>>;

/// A vring's call eventfd, as the frontend last set it (SET_VRING_CALL):
/// the [`Notify`] of an [`RcuVring`]'s [`IrqNotifier`].
///
/// The eventfd is kept in an [`RcuCell`]: a signal reads it inside a
/// (nested) read section, with no lock, and a replaced one is closed after
/// a grace period, never under a signal that uses it. A signal goes to the
/// eventfd current then; with none set (before the frontend's first
/// SET_VRING_CALL, or after it withdrew it) it fails with `NotConnected`,
/// which the `IrqNotifier` counts and reports once.
pub struct CallNotifier {
    fd: RcuCell<Option<File>>,
}

impl CallNotifier {
    /// No eventfd yet.
    pub fn new() -> CallNotifier {
        CallNotifier {
            fd: RcuCell::new(None),
        }
    }

    /// Makes `fd` the eventfd that signals go to (`None`: none). Never
    /// waits: the old one is closed after a grace period.
    pub fn replace(&self, fd: Option<File>) {
        self.fd.replace(fd);
    }

    /// Whether an eventfd is set.
    pub fn is_set(&self) -> bool {
        let guard = read_lock();
        self.fd.read(&guard).is_some()
    }
}

impl Default for CallNotifier {
    fn default() -> Self {
        CallNotifier::new()
    }
}

impl fmt::Debug for CallNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallNotifier")
            .field("set", &self.is_set())
            .finish()
    }
}

impl Notify for CallNotifier {
    /// One eventfd write (adds 1 to its counter); takes no lock. A full
    /// counter (`EAGAIN`: a signal is pending already, the frontend's
    /// eventfd is non-blocking) counts as delivered.
    fn signal(&self) -> io::Result<()> {
        let guard = read_lock();
        let Some(file) = self.fd.read(&guard).as_ref() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the frontend has set no call eventfd for the queue",
            ));
        };
        match (&*file).write(&1u64.to_ne_bytes()) {
            Ok(8) => Ok(()),
            Ok(n) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("a write to the call eventfd took {n} bytes, not 8"),
            )),
            Err(e) => full_counter_is_delivered(Err(e)),
        }
    }
}

/// vhost-user-backend's `VringRwLock`, plus an [`IrqNotifier`] over the
/// vring's call eventfd that takes no vring lock; see the [module
/// documentation](self).
pub struct RcuVring<B: Bitmap + 'static = ()> {
    inner: VringRwLock<AtomicMemory<B>>,
    irq: Arc<IrqNotifier<CallNotifier>>,
}

impl<B: Bitmap + 'static> RcuVring<B> {
    /// The vring's notifier: [`IrqNotifier::notify`] on it signals the
    /// frontend's current call eventfd, batched to the end of the
    /// outermost read section (a [`GuestMemoryRcu`] handle is one).
    pub fn irq(&self) -> &Arc<IrqNotifier<CallNotifier>> {
        &self.irq
    }

    /// The wrapped `VringRwLock` (what vhost-user-backend's own vring type
    /// would have been).
    pub fn vring(&self) -> &VringRwLock<AtomicMemory<B>> {
        &self.inner
    }
}

impl<B: Bitmap + 'static> Clone for RcuVring<B> {
    fn clone(&self) -> Self {
        RcuVring {
            inner: self.inner.clone(),
            irq: Arc::clone(&self.irq),
        }
    }
}

impl<B: Bitmap + 'static> fmt::Debug for RcuVring<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RcuVring")
            .field("irq", &self.irq)
            .finish_non_exhaustive()
    }
}

impl<'a, B: Bitmap + 'static> VringStateGuard<'a, AtomicMemory<B>> for RcuVring<B> {
    type G = RwLockReadGuard<'a, VringState<AtomicMemory<B>>>;
}

impl<'a, B: Bitmap + 'static> VringStateMutGuard<'a, AtomicMemory<B>> for RcuVring<B> {
    type G = RwLockWriteGuard<'a, VringState<AtomicMemory<B>>>;
}

impl<B: Bitmap + 'static> VringT<AtomicMemory<B>> for RcuVring<B> {
    fn new(mem: AtomicMemory<B>, max_queue_size: u16) -> Result<Self, QueueError> {
        Ok(RcuVring {
            inner: VringRwLock::new(mem, max_queue_size)?,
            irq: IrqNotifier::new(CallNotifier::new()),
        })
    }

    fn get_ref(&self) -> <Self as VringStateGuard<'_, AtomicMemory<B>>>::G {
        self.inner.get_ref()
    }

    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, AtomicMemory<B>>>::G {
        self.inner.get_mut()
    }

    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), QueueError> {
        self.inner.add_used(desc_index, len)
    }

    /// [`IrqNotifier::notify`] on the vring's notifier: inside a read
    /// section the signal is queued to its end; outside, sent now. Takes no
    /// vring lock either way. Never fails: a failed signal is counted in
    /// the notifier's stats and reported once.
    fn signal_used_queue(&self) -> io::Result<()> {
        self.irq.notify();
        Ok(())
    }

    fn enable_notification(&self) -> Result<bool, QueueError> {
        self.inner.enable_notification()
    }

    fn disable_notification(&self) -> Result<(), QueueError> {
        self.inner.disable_notification()
    }

    fn needs_notification(&self) -> Result<bool, QueueError> {
        self.inner.needs_notification()
    }

    fn set_enabled(&self, enabled: bool) {
        self.inner.set_enabled(enabled);
    }

    fn set_queue_info(
        &self,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) -> Result<(), QueueError> {
        self.inner.set_queue_info(desc_table, avail_ring, used_ring)
    }

    fn queue_next_avail(&self) -> u16 {
        self.inner.queue_next_avail()
    }

    fn set_queue_next_avail(&self, base: u16) {
        self.inner.set_queue_next_avail(base);
    }

    fn set_queue_next_used(&self, idx: u16) {
        self.inner.set_queue_next_used(idx);
    }

    fn queue_used_idx(&self) -> Result<u16, QueueError> {
        self.inner.queue_used_idx()
    }

    fn set_queue_size(&self, num: u16) {
        self.inner.set_queue_size(num);
    }

    fn set_queue_event_idx(&self, enabled: bool) {
        self.inner.set_queue_event_idx(enabled);
    }

    fn set_queue_ready(&self, ready: bool) {
        self.inner.set_queue_ready(ready);
    }

    fn set_kick(&self, file: Option<File>) {
        self.inner.set_kick(file);
    }

    fn read_kick(&self) -> io::Result<bool> {
        self.inner.read_kick()
    }

    /// Follows SET_VRING_CALL: the vring keeps `file`, and the notifier a
    /// duplicate of it. If it cannot be duplicated (the process is out of
    /// file descriptors), that is reported and the notifier has none until
    /// the frontend sets another.
    fn set_call(&self, file: Option<File>) {
        let dup = match file.as_ref().map(File::try_clone).transpose() {
            Ok(dup) => dup,
            Err(e) => {
                report!(
                    NotifyFailed,
                    "cannot duplicate a vring's call eventfd ({e}): the guest is not notified \
                     on that queue until the frontend sets another"
                );
                None
            }
        };
        self.inner.set_call(file);
        self.irq.notifier().replace(dup);
    }

    fn set_err(&self, file: Option<File>) {
        self.inner.set_err(file);
    }
}

impl<B> GuestMemoryRcu<GuestMemoryMmap<B>>
where
    B: Bitmap + Send + Sync + 'static,
{
    /// Publishes the map that `mem` holds now, in place of this one's
    /// (for [`VhostUserBackend::update_memory`], which vhost-user-backend
    /// calls with the whole new map after each SET_MEM_TABLE, ADD_MEM_REG
    /// and REM_MEM_REG). The regions are shared, not copied (a
    /// `GuestMemoryMmap` clone clones `Arc`s); the old map is dropped after
    /// a grace period, never under a handle. Never waits for readers.
    pub fn follow(&self, mem: &AtomicMemory<B>) {
        let map = mem.memory().deref().clone();
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(map);
    }
}
