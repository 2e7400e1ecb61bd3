//! Deliberate faults for the loom models, compiled only under `cfg(loom)`.
//!
//! A model that cannot fail checks nothing. `loom-tests` turns one of these
//! faults on in a `#[should_panic]` model to prove that loom catches the
//! broken protocol; every other model runs with [`LoomFault::None`].

use crate::sync::{Ordering, UnmodeledAtomicU8};

/// A way to break the grace-period protocol on purpose.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum LoomFault {
    /// The protocol as shipped.
    None = 0,
    /// The reader skips its fences (after publishing its section and after
    /// ending it), so a writer's scan may miss a reader that already loaded
    /// the old pointer.
    DropReaderFence = 1,
    /// The grace period does not wait for readers at all.
    SkipReaderWait = 2,
    /// Every writer-side fence fails as a membarrier refused by a seccomp
    /// filter does. Not a broken protocol: the models check that the
    /// library fails safe (nothing retired is freed, nothing hangs).
    WriterFenceFails = 3,
    /// The writer's scan treats every online record as quiescent: grace
    /// periods wait for ordinary read sections only.
    WriterIgnoresOnline = 4,
    /// The membarrier flavor's grace periods never issue the expedited
    /// barrier, ordinary readers or not.
    SkipExpeditedBarrier = 5,
    /// A thread that leaves the online state (goes offline, or drops its
    /// handle) does not count itself as an ordinary reader.
    OfflineUncounted = 6,
    /// A thread that registers on its first read section does not count
    /// itself as an ordinary reader.
    RegisterUncounted = 7,
}

/// The active fault. A plain `std` atomic on purpose: it is a test switch,
/// not part of the protocol, and modelling it would only add interleavings.
/// It outlives loom's executions, so models set it at the start of each.
static FAULT: UnmodeledAtomicU8 = UnmodeledAtomicU8::new(LoomFault::None as u8);

/// Turns `fault` on for every thread until it is changed again.
#[doc(hidden)]
pub fn loom_inject_fault(fault: LoomFault) {
    FAULT.store(fault as u8, Ordering::SeqCst);
}

/// Whether `fault` is on.
pub(crate) fn active(fault: LoomFault) -> bool {
    FAULT.load(Ordering::SeqCst) == fault as u8
}
