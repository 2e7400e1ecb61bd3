//! A thread's held-notification word, in its reader record, and the
//! snapshot of it the watchdog scans. The owner writes the word; the
//! watchdog (`watchdog.rs`, whose module documentation gives the protocol)
//! only reads it. Here, in the read side, because the record carries it:
//! the watchdog sits above the read side and imports it, not the other way.

#[cfg(not(loom))]
use super::Owner;
#[cfg(not(loom))]
use crate::sync::AtomicU64;
use crate::sync::Ordering;
#[cfg(not(loom))]
use std::panic::Location;

/// Bits of a held word below the sequence number: the count of queued
/// signals (bits 1..16) and the running flag (bit 0).
#[cfg(not(loom))]
const SEQ_SHIFT: u32 = 16;
/// The running flag: the queued signals are being sent.
#[cfg(not(loom))]
pub(crate) const RUNNING: u64 = 1;
/// The count of queued signals, shifted left by 1.
#[cfg(not(loom))]
pub(crate) const COUNT_MASK: u64 = ((1 << SEQ_SHIFT) - 1) & !RUNNING;

/// A thread's held-notification state, in its reader record; see the
/// module documentation. Written only by the owner, read by the watchdog.
#[cfg(not(loom))]
pub(crate) struct HeldWord(AtomicU64);

/// Under loom nothing watches: the word is not there.
#[cfg(loom)]
pub(crate) struct HeldWord;

impl HeldWord {
    /// No signal queued.
    pub(crate) const fn new() -> Self {
        #[cfg(not(loom))]
        return HeldWord(AtomicU64::new(0));
        #[cfg(loom)]
        return HeldWord;
    }

    /// The section numbered `seq` now has `count` distinct signals queued.
    #[inline(always)]
    pub(crate) fn queued(&self, seq: u64, count: usize) {
        let _ = (seq, count, Ordering::Relaxed);
        // Relaxed: read only by the watchdog, for reports.
        #[cfg(not(loom))]
        self.0.store(
            (seq << SEQ_SHIFT) | ((count as u64) << 1 & COUNT_MASK),
            Ordering::Relaxed,
        );
    }

    /// The queued signals start to run.
    #[inline(always)]
    pub(crate) fn running(&self) {
        // Relaxed: as in `queued` (and only the owner writes it).
        #[cfg(not(loom))]
        self.0
            .store(self.0.load(Ordering::Relaxed) | RUNNING, Ordering::Relaxed);
    }

    /// The queued signals have run (or been abandoned).
    #[inline(always)]
    pub(crate) fn clear(&self) {
        // Relaxed: as in `queued`.
        #[cfg(not(loom))]
        self.0.store(0, Ordering::Relaxed);
    }

    /// The word, for the watchdog's scan.
    #[cfg(not(loom))]
    pub(crate) fn load(&self) -> u64 {
        // Relaxed: as in `queued`.
        self.0.load(Ordering::Relaxed)
    }
}

/// A section with queued signals, as the watchdog saw it.
#[cfg(not(loom))]
pub(crate) struct HeldSection {
    /// Identifies the record (its address).
    pub(crate) key: usize,
    /// The record's held word.
    pub(crate) word: u64,
    pub(crate) owner: Option<Owner>,
    pub(crate) entered_at: Option<&'static Location<'static>>,
}
