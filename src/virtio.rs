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

use crate::local::call_local;
use crate::report::report;
use crate::sync::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::fmt;
use std::io;
use std::sync::Arc;

/// Something that can interrupt the guest: an irqfd, an eventfd, or a test
/// double.
pub trait Notify {
    /// Sends one notification. Must not block.
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
        /// error of write(2).
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
        /// never blocks): blocking there holds up every grace period, and on
        /// a device thread it also holds back the notifications that the
        /// section has batched, which may be what the wait is waiting for.
        /// The message names where the section was entered (see
        /// [`assert_may_block`](crate::assert_may_block)).
        #[track_caller]
        pub fn wait(&self, timeout: Option<Duration>) -> io::Result<u64> {
            if timeout != Some(Duration::ZERO) {
                crate::detect::assert_may_block("EventFd::wait");
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
        fn signal(&self) -> io::Result<()> {
            EventFd::signal(self)
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
impl Notify for vmm_sys_util::eventfd::EventFd {
    fn signal(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// Counts kept by an [`IrqNotifier`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotifyStats {
    /// Notifications requested ([`IrqNotifier::notify`] and
    /// [`IrqNotifier::notify_now`] calls).
    pub requested: u64,
    /// Signals actually sent (e.g. eventfd writes that succeeded).
    pub signalled: u64,
    /// Signals that failed; the first failure is also printed to stderr.
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
/// Laid out by who writes what: the `Arc`'s reference count (changed by
/// every batched `notify` that records a call) is on its own line ahead of
/// the notifier, which the guest side reads; the ISR byte (written by both
/// sides) and the device's counters have lines of their own. Without this,
/// the guest's reads and `take_isr` and the device's reference-count and
/// counter updates bounced one line between their cores.
#[repr(align(128))]
pub struct IrqNotifier<N: Notify> {
    notifier: N,
    /// `deliver`, as one function pointer taken once in `new`: the same
    /// function can have several addresses (one per codegen unit that uses
    /// it), and `call_local` deduplicates by address, so every `notify` must
    /// pass this same value.
    deliver: fn(&Self),
    failure_reported: AtomicBool,
    isr: OwnLine<AtomicU8>,
    counters: OwnLine<Counters>,
}

impl<N: Notify + 'static> IrqNotifier<N> {
    /// Wraps `notifier`. The `Arc` is what [`notify`](Self::notify) defers
    /// with, and what identifies the notifier for deduplication.
    pub fn new(notifier: N) -> Arc<Self> {
        Arc::new(IrqNotifier {
            notifier,
            deliver: Self::deliver,
            failure_reported: AtomicBool::new(false),
            isr: OwnLine(AtomicU8::new(0)),
            counters: OwnLine(Counters {
                requested: AtomicU64::new(0),
                signalled: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            }),
        })
    }

    /// Requests a used-buffer notification: sets [`ISR_QUEUE`] in the
    /// interrupt status now and signals at the end of the outermost read
    /// section or defer scope, once per notifier however many times it was
    /// requested. Outside any section it signals now.
    ///
    /// Batching needs a guard that stays alive for the whole pass:
    /// `let _pass = read_lock();`. Beware `let _ = read_lock();`, which
    /// drops the guard at once, so every `notify` after it signals
    /// immediately.
    pub fn notify(self: &Arc<Self>) {
        self.request();
        call_local(self.deliver, self);
    }

    /// Requests a notification and signals now, unbatched (for comparison,
    /// and for paths that must not wait for the section's end).
    pub fn notify_now(&self) {
        self.request();
        self.deliver();
    }

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

    /// Sends the signal; never panics (it runs as a deferred call).
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
                        "a guest notification failed: {e} (further failures of \
                         this notifier are counted in IrqNotifier::stats().failed)"
                    );
                }
            }
        }
    }

    /// The counts of requested, sent and failed signals so far.
    pub fn stats(&self) -> NotifyStats {
        // Relaxed: statistics; each counter is individually exact.
        NotifyStats {
            requested: self.counters.0.requested.load(Ordering::Relaxed),
            signalled: self.counters.0.signalled.load(Ordering::Relaxed),
            failed: self.counters.0.failed.load(Ordering::Relaxed),
        }
    }

    /// Reads and clears the interrupt status, as a guest's read of the
    /// virtio-pci ISR register does.
    pub fn take_isr(&self) -> u8 {
        // Relaxed: see `request`.
        self.isr.0.swap(0, Ordering::Relaxed)
    }

    /// The wrapped notifier.
    pub fn notifier(&self) -> &N {
        &self.notifier
    }
}

impl<N: Notify + fmt::Debug> fmt::Debug for IrqNotifier<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IrqNotifier")
            .field("notifier", &self.notifier)
            .field("isr", &self.isr.0.load(Ordering::Relaxed))
            .field(
                "requested",
                &self.counters.0.requested.load(Ordering::Relaxed),
            )
            .field(
                "signalled",
                &self.counters.0.signalled.load(Ordering::Relaxed),
            )
            .field("failed", &self.counters.0.failed.load(Ordering::Relaxed))
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
