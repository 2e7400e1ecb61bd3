//! Batched virtio guest notifications.
//!
//! A virtio device running in an I/O thread completes requests in passes
//! (one io_uring or Linux AIO completion pass can complete dozens) and
//! notifies the guest after each: a write(2) to an eventfd (the irqfd) that
//! the hypervisor turns into an interrupt. [`IrqNotifier::notify`] sets the
//! interrupt status bit at once, as a device must, but defers the signal
//! with [`call_local`]: inside a read section (or a
//! [`DeferScope`](crate::DeferScope)) each distinct notifier is signalled
//! once, when the outermost section ends. Outside any section it signals at
//! once, so code that does not batch behaves as before.
//!
//! ```
//! # #[cfg(target_os = "linux")] {
//! use rcu_defer::read_lock;
//! use rcu_defer::virtio::{EventFd, IrqNotifier};
//!
//! let irq = IrqNotifier::new(EventFd::new()?);
//! {
//!     let _pass = read_lock(); // one completion pass
//!     for _request in 0..64 {
//!         // ... put the request on the used ring ...
//!         irq.notify();
//!     }
//! } // one eventfd write here
//! assert_eq!(irq.notifier().consume()?, 1);
//! assert_eq!(irq.stats().requested, 64);
//! assert_eq!(irq.stats().signalled, 1);
//! # }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Batching is not free: the pass's first completions wait for its last.
//! A driver with a CPU of its own that would have reaped them meanwhile
//! loses that overlap, while drivers that share CPUs with the device, or
//! guests for which each signal is an interrupt injection, gain from every
//! signal saved. [`Moderation`] measures both ways on the running load and
//! batches only where batching completes more.
//!
//! # A virtio-queue device loop
//!
//! With rust-vmm's `virtio-queue` and guest memory in a
//! `vm::GuestMemoryRcu` (feature `vm-memory`),
//! one handle is the pass's read section: every completion of the pass
//! goes on the used ring through it, and the guest is signalled once, when
//! the handle (and any chain holding a clone of it) is dropped.
//!
//! ```
//! # #[cfg(all(target_os = "linux", feature = "vm-memory"))] {
//! use rcu_defer::virtio::{EventFd, IrqNotifier};
//! use rcu_defer::vm::GuestMemoryRcu;
//! use virtio_queue::{Queue, QueueT};
//! use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryMmap};
//! # use virtio_queue::desc::{split::Descriptor, RawDescriptor};
//!
//! let memory = GuestMemoryRcu::new(
//!     GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap(),
//! );
//! let irq = IrqNotifier::new(EventFd::new()?); // the queue's irqfd
//! # let ram = memory.snapshot();
//! # let driver = virtio_queue::mock::MockSplitQueue::create(&*ram, GuestAddress(0), 16);
//! # let chains: Vec<_> = (0..4u16).map(|i| RawDescriptor::from(Descriptor::new(0x8000 + 0x100 * u64::from(i), 0x100, 2, 0))).collect();
//! # driver.add_desc_chains(&chains, 0).unwrap();
//! let mut queue: Queue = // ... set up by the driver's configuration
//! #     driver.create_queue().unwrap();
//!
//! // One pass, after a kick: a single handle is the pass's read section.
//! {
//!     let mem = memory.memory();
//!     while let Some(chain) = queue.pop_descriptor_chain(mem.clone()) {
//!         // ... serve the request in `chain` ...
//!         queue.add_used(&*mem, chain.head_index(), 0).unwrap();
//!         if queue.needs_notification(&*mem).unwrap() {
//!             irq.notify(); // queued: no syscall yet
//!         }
//!     }
//! } // the pass's section ends: one eventfd write for all its requests
//! assert_eq!(irq.notifier().consume()?, 1);
//! # assert_eq!(irq.stats().signalled, 1);
//! # }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Sections that block
//!
//! A queued signal is sent when the section ends, so a section that does
//! not end holds it back. A guest-memory handle taken once and kept across
//! a blocking wait (`let mem = memory.memory();`, then a blocking read of
//! the kick eventfd in a loop) holds back the very interrupt the guest
//! waits for before it kicks again: device and driver wait for each other.
//! Take the handle per pass, after the wait, as above. rcu-defer's own
//! [`EventFd::wait`] panics inside a read section; other blocking calls
//! (vmm-sys-util's `EventFd::read`, `epoll_wait`) cannot be checked, so put
//! [`assert_may_block`](crate::assert_may_block) before them.
//!
//! Where a section holds queued notifications for longer than the stall
//! timeout ([`set_stall_timeout`](crate::set_stall_timeout), 21 s by
//! default), the `rcu-watchdog` thread, started with the first
//! [`IrqNotifier`], makes a
//! [`ReportKind::HeldNotification`](crate::ReportKind::HeldNotification)
//! report naming the thread, where the section began and how many
//! notifications it holds, even if no writer is waiting for a grace period.
//! It does the same for a queued signal that has not returned for that
//! long (see [`Notify`] for the lock trap that causes one). The watchdog
//! looks four times per stall timeout and takes no lock a reader takes;
//! `set_stall_timeout(None)` turns its reports off. It watches signals
//! queued in read sections, not those of a
//! [`DeferScope`](crate::DeferScope), which exists for code that blocks
//! while it batches.

mod moderation;

pub use moderation::{Delivery, Moderation, ModerationStats};

use crate::call_rcu::call_rcu_or_report;
use crate::local::{call_at_section_end, call_local, call_local_fn};
use crate::reader::thread_token;
use crate::report::report;
use crate::sync::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;

/// Something that can interrupt the guest: an irqfd, an eventfd, or a test
/// double.
///
/// Implemented here for [`EventFd`], for `Arc<N>`, and, with Cargo
/// features, for `vmm_sys_util::eventfd::EventFd` (feature `vmm-sys-util`)
/// and `vmm_sys_util::event::EventNotifier` (feature `vhost-user-backend`).
///
/// # When a queued signal runs, and what it must not take
///
/// [`IrqNotifier::notify`] inside a read section does not call
/// [`signal`](Notify::signal): it queues it, and the signal runs when the
/// thread's *outermost* section ends, on that thread, inside the drop of
/// whichever guard ends it: a [`ReadGuard`](crate::ReadGuard), a
/// `vm::GuestMemoryRcuHandle`, a
/// `DescriptorChain` holding one. Whatever the code around that drop still
/// holds (a lock guard taken before the section, or in the same scope and
/// dropped after it) is held while `signal` runs. So `signal` must not
/// block, and must not take a lock that such code may hold; it should do
/// one non-blocking write and return.
///
/// The trap, from vhost-user-backend: a `Notify` that calls
/// `VringRwLock::signal_used_queue` (which takes the vring's read lock),
/// queued while the vring's `get_mut()` write guard is alive and a guest
/// memory handle taken after it is dropped first, hangs at that drop, on
/// the thread's own lock:
///
/// ```text
/// let mut state = vring.get_mut();   // the vring's write lock
/// let mem = memory.memory();         // the read section
/// /* ... add_used ... */ irq.notify(); // queues VringCall::signal
/// // end of scope: `mem` drops first and runs signal_used_queue(),
/// // which waits for the read lock that `state` holds: a hang
/// ```
///
/// `vhost_user` (feature `vhost-user-backend`) ships a
/// vring whose notifier keeps the call eventfd itself and takes no vring
/// lock, so this cannot happen with it. If it happens with a notifier of
/// your own, the `rcu-watchdog` thread reports it (a
/// [`ReportKind::HeldNotification`](crate::ReportKind::HeldNotification)
/// report naming the thread and where the section began) once the signal
/// has not returned for the stall timeout: the thread stays stuck, but
/// not silently.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a guest notifier: it does not implement `rcu_defer::virtio::Notify`",
    label = "not a `Notify`",
    note = "rcu-defer implements `Notify` for its own `virtio::EventFd`, for \
            `vmm_sys_util::eventfd::EventFd` with its `vmm-sys-util` feature, and for \
            `vmm_sys_util::event::EventNotifier` with its `vhost-user-backend` feature; for \
            another type, implement `Notify` (its `signal` must not block)"
)]
///
/// Without the feature that implements it, the compiler's error says
/// which one to turn on:
///
/// ```compile_fail,E0277
/// # fn call_fd() -> std::fs::File { unimplemented!() }
/// // A `File` is not a `Notify`: wrap it in a type that implements it.
/// let irq = rcu_defer::virtio::IrqNotifier::new(call_fd());
/// ```
pub trait Notify {
    /// Sends one notification. Must not block, nor take a lock that the
    /// code around a read section may hold (see the [trait's
    /// documentation](Notify)): a batched notification's signal runs as
    /// the outermost section ends.
    ///
    /// # Errors
    ///
    /// Whatever sending failed with; [`IrqNotifier`] counts it in
    /// [`NotifyStats::failed`] and reports the first.
    fn signal(&self) -> io::Result<()>;
}

impl<N: Notify + ?Sized> Notify for Arc<N> {
    fn signal(&self) -> io::Result<()> {
        (**self).signal()
    }
}

#[cfg(target_os = "linux")]
pub use self::eventfd::EventFd;

#[cfg(target_os = "linux")]
mod eventfd {
    use super::Notify;
    use crate::sys::eventfd::{eventfd_add, eventfd_new, eventfd_take, wait_readable};
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
    use std::time::Duration;

    /// A Linux eventfd (close-on-exec, non-blocking): the device side
    /// [`signal`](EventFd::signal)s, the guest side (or a test)
    /// [`consume`](EventFd::consume)s or [`wait`](EventFd::wait)s.
    #[derive(Debug)]
    pub struct EventFd {
        fd: OwnedFd,
    }

    impl EventFd {
        /// Creates an eventfd with its counter at 0.
        ///
        /// # Errors
        ///
        /// The `io::Error` of eventfd(2), e.g. when the process is out of
        /// file descriptors (`EMFILE`).
        pub fn new() -> io::Result<EventFd> {
            match eventfd_new() {
                Ok(fd) => Ok(EventFd { fd }),
                Err(e) => Err(io::Error::new(
                    e.kind(),
                    format!("cannot create an eventfd: {e}"),
                )),
            }
        }

        /// Adds 1 to the counter, waking a reader: one write(2).
        ///
        /// # Errors
        ///
        /// `WouldBlock` if the counter is full (it never blocks), or the
        /// error of write(2). A full counter means a signal is pending
        /// already, so the reader wakes anyway: the [`Notify`] impl, which
        /// [`IrqNotifier`](super::IrqNotifier) calls, counts it as
        /// delivered.
        pub fn signal(&self) -> io::Result<()> {
            eventfd_add(self.fd.as_fd(), 1)
        }

        /// Returns the counter (how many signals since the last consume) and
        /// resets it to 0: one read(2).
        ///
        /// # Errors
        ///
        /// `WouldBlock` if the counter is 0, or the error of read(2).
        pub fn consume(&self) -> io::Result<u64> {
            eventfd_take(self.fd.as_fd())
        }

        /// Blocks until the counter is non-zero (or `timeout` passes), then
        /// consumes it. `Ok(0)` means the timeout passed first.
        ///
        /// # Errors
        ///
        /// The error of poll(2) or read(2).
        ///
        /// # Panics
        ///
        /// Inside a read section, unless `timeout` is zero (a poll that
        /// never blocks): blocking there keeps the section open, which
        /// holds back the guest notifications the section has batched
        /// (so a peer that writes this eventfd only after one of them
        /// arrives never does) and holds up every grace period. The
        /// message names where the section was entered and how many
        /// notifications it holds. Also in the stall handler, as
        /// [`assert_may_block`](crate::assert_may_block) does.
        #[track_caller]
        pub fn wait(&self, timeout: Option<Duration>) -> io::Result<u64> {
            if timeout != Some(Duration::ZERO) {
                crate::detect::assert_may_wait_for_peer("EventFd::wait");
            }
            loop {
                if !wait_readable(self.fd.as_fd(), timeout)? {
                    return Ok(0);
                }
                match self.consume() {
                    // Another consumer took it first: wait again.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            }
        }
    }

    impl Notify for EventFd {
        /// One eventfd write of 1; a full counter (`EAGAIN`) counts as
        /// delivered, as a signal is pending already.
        fn signal(&self) -> io::Result<()> {
            super::full_counter_is_delivered(EventFd::signal(self))
        }
    }

    impl AsFd for EventFd {
        fn as_fd(&self) -> BorrowedFd<'_> {
            self.fd.as_fd()
        }
    }

    impl AsRawFd for EventFd {
        fn as_raw_fd(&self) -> RawFd {
            self.fd.as_raw_fd()
        }
    }

    impl From<OwnedFd> for EventFd {
        /// Wraps an existing eventfd, e.g. an irqfd handed over by a VMM.
        fn from(fd: OwnedFd) -> EventFd {
            EventFd { fd }
        }
    }
}

#[cfg(all(target_os = "linux", feature = "vmm-sys-util"))]
#[cfg_attr(docsrs, doc(cfg(all(target_os = "linux", feature = "vmm-sys-util"))))]
impl Notify for vmm_sys_util::eventfd::EventFd {
    /// One eventfd write of 1; a full counter (`EAGAIN`, on an eventfd made
    /// with `EFD_NONBLOCK`) counts as delivered, as a signal is pending
    /// already. (Made without it, the write would block on a full counter:
    /// give a notifier a non-blocking eventfd.)
    fn signal(&self) -> io::Result<()> {
        full_counter_is_delivered(self.write(1))
    }
}

/// What vhost-user-backend keeps a vring's call eventfd as. Only with the
/// `vhost-user-backend` feature, whose vhost-user-backend 0.24 needs
/// vmm-sys-util 0.15, the first release with `event::EventNotifier`.
#[cfg(all(target_os = "linux", feature = "vhost-user-backend"))]
#[cfg_attr(
    docsrs,
    doc(cfg(all(target_os = "linux", feature = "vhost-user-backend")))
)]
impl Notify for vmm_sys_util::event::EventNotifier {
    /// One eventfd write of 1 (`EventNotifier::notify`); a full counter
    /// (`EAGAIN`) counts as delivered, as a signal is pending already.
    fn signal(&self) -> io::Result<()> {
        full_counter_is_delivered(self.notify())
    }
}

/// The result of an eventfd write of 1 as a guest notification.
///
/// A non-blocking eventfd write fails with `EAGAIN` (`WouldBlock`) only
/// when the counter is at its maximum (2^64 - 2): a signal is pending
/// already, and the reader (the guest's interrupt, a driver's poll) wakes
/// for it just as it would for this one, so the notification is delivered,
/// not lost. Counting it as a failure would report a healthy device that
/// the guest is slow to acknowledge.
#[cfg(target_os = "linux")]
pub(crate) fn full_counter_is_delivered(written: io::Result<()>) -> io::Result<()> {
    match written {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        other => other,
    }
}

/// Counts kept by an [`IrqNotifier`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotifyStats {
    /// Notifications requested ([`IrqNotifier::notify`] and
    /// [`IrqNotifier::notify_now`] calls).
    pub requested: u64,
    /// Signals delivered: eventfd writes that succeeded, or that found the
    /// counter full (`EAGAIN`: a signal is pending already, and the reader
    /// wakes for it; the eventfd impls of [`Notify`] return `Ok` then).
    pub signalled: u64,
    /// Signals that failed; the first failure is also reported (see
    /// [`set_report_handler`](crate::set_report_handler)).
    pub failed: u64,
}

/// The ISR status bit a virtio device sets for a used-buffer notification.
pub const ISR_QUEUE: u8 = 0x1;

/// A value on cache lines of its own, so that writes to it do not slow down
/// readers of its neighbours (and the reverse).
#[repr(align(128))]
struct OwnLine<T>(T);

/// The device's counters.
struct Counters {
    requested: AtomicU64,
    signalled: AtomicU64,
    failed: AtomicU64,
}

/// A guest notifier that batches its signals to the end of the outermost
/// read section; see the [module documentation](self).
///
/// A batched [`notify`](Self::notify) inside a read section touches no
/// reference count: the signal it queues refers to the notifier's state by
/// address, and that state is freed only after a grace period (or, on the
/// one thread that used it, after that thread's queued signals have run),
/// so it outlives every section that could have queued a signal. The queued
/// signal runs as the section ends, before its end is published.
///
/// Since a queued signal runs on the thread that queued it, even after the
/// notifier itself has been taken out of its `Arc` and sent elsewhere, the
/// notifier may cross threads only if its `N` may be used from two threads
/// at once: `IrqNotifier<N>` is `Send` for `N: Send + Sync` (an eventfd
/// is), and `Sync` for `N: Sync`. A notifier with interior mutability that
/// is not thread-safe stays on its thread:
///
/// ```compile_fail,E0277
/// use rcu_defer::virtio::{IrqNotifier, Notify};
/// use std::cell::Cell;
///
/// /// Counts its signals: `Send`, not `Sync`.
/// struct Counter(Cell<u64>);
/// impl Notify for Counter {
///     fn signal(&self) -> std::io::Result<()> {
///         self.0.set(self.0.get() + 1);
///         Ok(())
///     }
/// }
///
/// let irq = IrqNotifier::new(Counter(Cell::new(0)));
/// let _pass = rcu_defer::read_lock();
/// irq.notify(); // queued on this thread, to run when `_pass` ends
/// let owned = std::sync::Arc::into_inner(irq).unwrap();
/// std::thread::spawn(move || owned.notify_now()); // would race with it
/// ```
pub struct IrqNotifier<N: Notify> {
    /// Owned; freed by `Drop` as described above.
    state: NonNull<State<N>>,
    _owns: PhantomData<State<N>>,
}

/// An `IrqNotifier`'s state, in an allocation of its own whose free can
/// wait for a grace period.
///
/// Laid out by who writes what: the notifier and what `notify` reads are on
/// read-mostly lines, which the guest side may read too; the ISR byte
/// (written by both sides) and the device's counters have lines of their
/// own, so that the guest's `take_isr` and the device's counter updates do
/// not bounce one line between their cores.
#[repr(align(128))]
struct State<N: Notify> {
    notifier: N,
    /// `deliver_arc`, as one function pointer taken once in `new`: the
    /// same function can have several addresses (one per codegen unit that
    /// uses it), and `call_local` deduplicates by address, so every
    /// `notify` that falls back to it must pass this same value.
    deliver_arc: fn(&IrqNotifier<N>),
    /// `retire::<N>`, taken in `new` where `N: 'static` is known (`Drop`
    /// cannot ask for it).
    retire: fn(Retiring<N>, bool),
    /// A token of the thread that created the notifier (see
    /// `reader::thread_token`).
    creator: usize,
    /// Set once `notify` has run on a thread other than the creator: the
    /// notifier has been shared between threads, which (through `Send` and
    /// `Sync`) proves `N: Send + Sync`. Relaxed: see `IrqNotifier::drop`.
    shared: AtomicBool,
    failure_reported: AtomicBool,
    isr: OwnLine<AtomicU8>,
    counters: OwnLine<Counters>,
}

// SAFETY: an `IrqNotifier<N>` owns a `State<N>`, which owns an `N`, and
// hands out `&N` (`notifier()`) and calls `N::signal(&self)` from whichever
// thread holds a reference. Sending it sends an `N` (needs `N: Send`), but
// not alone: a batched `notify` leaves a raw pointer to the state in the
// calling thread's section calls (no `Arc` count), so the `Arc` can be
// unwrapped and the owned notifier sent while that thread's queued signal
// is still to run there, and both threads then use `&N` at once (needs
// `N: Sync`). `Drop` on the receiving thread frees the state only after a
// grace period, which waits for the sending thread's section. Everything
// else in `State` is atomics and plain data.
unsafe impl<N: Notify + Send + Sync> Send for IrqNotifier<N> {}
// SAFETY: sharing it shares `&N` across threads (needs `N: Sync`); a thread
// that drops the last `Arc` drops the `N`, so an `Arc` shared between
// threads sends it too, which the `Arc`'s own bounds (`Send` needs the
// notifier `Send + Sync`) already require.
unsafe impl<N: Notify + Sync> Sync for IrqNotifier<N> {}

impl<N: Notify + 'static> IrqNotifier<N> {
    /// Wraps `notifier`. The `Arc` is what [`notify`](Self::notify) is
    /// called on; the notifier is dropped when the last clone is (its state
    /// after a grace period, see the [type's documentation](Self)).
    pub fn new(notifier: N) -> Arc<Self> {
        crate::watchdog::ensure_started();
        let state = Box::new(State {
            notifier,
            deliver_arc: Self::deliver_arc,
            retire: retire::<N>,
            creator: thread_token(),
            shared: AtomicBool::new(false),
            failure_reported: AtomicBool::new(false),
            isr: OwnLine(AtomicU8::new(0)),
            counters: OwnLine(Counters {
                requested: AtomicU64::new(0),
                signalled: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            }),
        });
        Arc::new(IrqNotifier {
            state: NonNull::from(Box::leak(state)),
            _owns: PhantomData,
        })
    }

    /// Requests a used-buffer notification: sets [`ISR_QUEUE`] in the
    /// interrupt status now and signals at the end of the outermost read
    /// section or defer scope, once per notifier however many times it was
    /// requested. Outside any section it signals now.
    ///
    /// Inside a read section (and no defer scope) the signal is sent as the
    /// outermost section ends, before its end is published and before the
    /// section's [`call_local`] calls run; this costs no
    /// atomic read-modify-write beyond the request counter. Inside a defer
    /// scope it is sent when the last scope or section ends.
    ///
    /// Batching needs a guard that stays alive for the whole pass:
    /// `let _pass = read_lock();`. Beware `let _ = read_lock();`, which
    /// drops the guard at once, so every `notify` after it signals
    /// immediately.
    pub fn notify(self: &Arc<Self>) {
        let state = self.state();
        state.request();
        if state.creator != thread_token() && !state.shared.load(Ordering::Relaxed) {
            // Relaxed: read by the last `drop`, which the synchronization
            // that ends this thread's use of the `Arc` orders after it.
            state.shared.store(true, Ordering::Relaxed);
        }
        // SAFETY: `State::deliver_raw` with this state's address may run
        // until the end of the current outermost section: `Drop` frees the
        // state only after a grace period that begins after the last `Arc`
        // is dropped (which is after this call, since `self` borrows one),
        // and such a grace period waits for this section; or, when the
        // notifier never left its creating thread, only after this thread's
        // section calls have run (see `Drop`).
        let recorded = unsafe {
            call_at_section_end(State::<N>::deliver_raw, self.state.as_ptr() as *const ())
        };
        if !recorded {
            self.notify_with_call_local();
        }
    }

    /// `notify`'s deferral outside a section, inside a defer scope, or when
    /// the thread's section calls are full: `call_local`, which keeps the
    /// notifier alive with an `Arc` clone.
    #[cold]
    #[inline(never)]
    fn notify_with_call_local(self: &Arc<Self>) {
        call_local(self.state().deliver_arc, self);
    }

    /// Requests a notification and signals now, unbatched (for comparison,
    /// and for paths that must not wait for the section's end).
    pub fn notify_now(&self) {
        let state = self.state();
        state.request();
        state.deliver();
    }

    /// `call_local`'s form of the deferred signal.
    fn deliver_arc(&self) {
        self.state().deliver();
    }
}

impl<N: Notify> IrqNotifier<N> {
    fn state(&self) -> &State<N> {
        // SAFETY: `state` is owned by `self` and freed only by its `Drop`.
        unsafe { self.state.as_ref() }
    }

    /// The counts of requested, sent and failed signals so far.
    pub fn stats(&self) -> NotifyStats {
        let counters = &self.state().counters.0;
        // Relaxed: statistics; each counter is individually exact.
        NotifyStats {
            requested: counters.requested.load(Ordering::Relaxed),
            signalled: counters.signalled.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
        }
    }

    /// Reads and clears the interrupt status, as a guest's read of the
    /// virtio-pci ISR register does.
    pub fn take_isr(&self) -> u8 {
        // Relaxed: see `State::request`.
        self.state().isr.0.swap(0, Ordering::Relaxed)
    }

    /// The wrapped notifier.
    pub fn notifier(&self) -> &N {
        &self.state().notifier
    }
}

impl<N: Notify> State<N> {
    fn request(&self) {
        // Like QEMU's virtio_set_isr: skip the read-modify-write when the
        // bit is already set. Relaxed: the guest reads ISR after the
        // interrupt, which the signal's syscall orders.
        if self.isr.0.load(Ordering::Relaxed) & ISR_QUEUE == 0 {
            self.isr.0.fetch_or(ISR_QUEUE, Ordering::Relaxed);
        }
        // Relaxed: a statistics counter.
        self.counters.0.requested.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "tracing")]
        tracing::trace!(
            target: "rcu_defer::virtio",
            notifier = ?(self as *const Self),
            batched = crate::reader::in_read_section(),
            "guest notification requested"
        );
    }

    /// The section call's form of the deferred signal.
    ///
    /// # Safety
    ///
    /// `state` must point to a live `State<N>` (see `IrqNotifier::notify`).
    unsafe fn deliver_raw(state: *const ()) {
        // SAFETY: the caller's promise.
        let state = unsafe { &*(state as *const State<N>) };
        state.deliver();
    }

    /// Sends the signal; never panics unless `N::signal` does.
    fn deliver(&self) {
        match self.notifier.signal() {
            Ok(()) => {
                // Relaxed: a statistics counter.
                self.counters.0.signalled.fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "tracing")]
                tracing::trace!(
                    target: "rcu_defer::virtio",
                    notifier = ?(self as *const Self),
                    "guest notified"
                );
            }
            Err(e) => {
                // Relaxed: a statistics counter and a report-once flag.
                self.counters.0.failed.fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "tracing")]
                tracing::warn!(
                    target: "rcu_defer::virtio",
                    notifier = ?(self as *const Self),
                    error = %e,
                    "guest notification failed"
                );
                if !self.failure_reported.swap(true, Ordering::Relaxed) {
                    report!(
                        NotifyFailed,
                        "a guest notification failed: {e} (further failures of this notifier \
                         are counted in IrqNotifier::stats().failed)"
                    );
                }
            }
        }
    }
}

/// A `State` whose `IrqNotifier` is gone, on its way to being freed.
struct Retiring<N: Notify>(NonNull<State<N>>);

// SAFETY: `IrqNotifier::drop` makes one for every notifier, but hands it
// to another thread (the `rcu-call` thread, which drops it exactly once)
// only when the notifier was `foreign`: `notify` ran on, or the last drop
// came from, a thread other than its creator. Either needs the notifier or
// an `Arc` of it to have crossed threads, which its `Send` and `Sync`
// bounds allow only for `N: Send + Sync` (see there). Otherwise it is
// dropped on the creating thread.
unsafe impl<N: Notify> Send for Retiring<N> {}

impl<N: Notify> Drop for Retiring<N> {
    fn drop(&mut self) {
        // SAFETY: the state came from `Box::leak` in `new`, and its
        // `IrqNotifier` is gone (it handed the state over in `drop`).
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

impl<N: Notify> Drop for IrqNotifier<N> {
    /// Frees the state once no queued signal can still use it.
    ///
    /// Queued signals (section calls) exist only on threads that called
    /// `notify`, and only until their section ends. If this notifier has
    /// been used on or dropped from a thread other than its creator, it was
    /// shared or sent, so `N: Send + Sync` holds, and the state is freed on
    /// the `rcu-call` thread after a grace period: every section that could
    /// have queued a signal has ended by then. (Thread tokens are reused
    /// only by threads that do not overlap, so a thread other than the one
    /// dropping always shows up as a foreign token or as the `shared` flag,
    /// which its `notify` set before the `Arc` it used was released: the
    /// release-acquire of the `Arc`'s count orders that store before this
    /// load.) Otherwise every use was on this thread: the state goes now,
    /// or, inside a section or defer scope, when it ends, after the signals
    /// it queued.
    fn drop(&mut self) {
        let state = self.state;
        let foreign =
            self.state().creator != thread_token() || self.state().shared.load(Ordering::Relaxed);
        (self.state().retire)(Retiring(state), foreign);
    }
}

/// Frees a state as `IrqNotifier::drop` decided: after a grace period if
/// the notifier was `foreign`, else after this thread's current section or
/// scope, or now.
fn retire<N: Notify + 'static>(retiring: Retiring<N>, foreign: bool) {
    if foreign {
        call_rcu_or_report(move || drop(retiring));
    } else if crate::reader::in_read_section() || crate::local::in_defer_scope() {
        call_local_fn(move || drop(retiring));
    } else {
        drop(retiring);
    }
}

impl<N: Notify + fmt::Debug> fmt::Debug for IrqNotifier<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        let stats = self.stats();
        f.debug_struct("IrqNotifier")
            .field("notifier", &state.notifier)
            .field("isr", &state.isr.0.load(Ordering::Relaxed))
            .field("requested", &stats.requested)
            .field("signalled", &stats.signalled)
            .field("failed", &stats.failed)
            .finish()
    }
}

/// The virtio `EVENT_IDX` rule: whether a device that moved its used index
/// from `old_idx` to `new_idx` must notify a driver that asked to be
/// notified when the used index passes `event_idx` (the `used_event` field).
///
/// It must iff `event_idx` lies in `[old_idx, new_idx)` modulo 2^16, i.e.
/// `(new - event - 1) mod 2^16 < (new - old) mod 2^16`. When it returns
/// false the driver is not waiting for these entries (it has interrupts
/// suppressed, or asked for a later index), and the device should skip the
/// notification. Batching with [`IrqNotifier::notify`] and `EVENT_IDX`
/// combine: check once per pass with the pass's first and last index.
///
/// ```
/// use rcu_defer::virtio::vring_need_event;
/// assert!(vring_need_event(5, 6, 5)); // the driver waits for entry 5
/// assert!(!vring_need_event(9, 6, 5)); // it waits for a later entry
/// assert!(vring_need_event(65535, 1, 65534)); // across the 2^16 wrap
/// ```
pub fn vring_need_event(event_idx: u16, new_idx: u16, old_idx: u16) -> bool {
    new_idx.wrapping_sub(event_idx).wrapping_sub(1) < new_idx.wrapping_sub(old_idx)
}
