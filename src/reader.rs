//! Read sections: per-thread reader records, lazy registration, and the
//! guard whose creation and drop are the read-side fast path.
//!
//! Each thread's reader state ([`Local`], holding its [`Record`]) is a
//! thread-local with a constant initializer and no destructor, so the fast
//! path addresses it directly (`%fs`-relative on x86-64): no pointer to load,
//! no "initialized?" test. The first `read_lock` of a thread finds its
//! record unregistered (a `signal` bit that the outermost entry tests anyway
//! for the fence flavor) and adds it to the registry; a second thread-local,
//! with a destructor, removes it when the thread exits, under the registry
//! lock, before the thread's thread-local memory is freed. A writer scans the
//! registry only under that lock, so it never touches a record after its
//! thread has gone.
//!
//! Read sections entered after that destructor has run (from another
//! thread-local's destructor), and a section still open when it runs (a
//! leaked guard), are published through a *stand-in*: a leaked heap record
//! that takes the thread's place in the registry. The thread's own record
//! then sends every outermost entry and exit to the slow path, which keeps
//! the stand-in up to date.
//!
//! The registry itself (entries, owners, stand-ins, and the writer's scans
//! over them) is the `registry` submodule.

use crate::event;
use crate::flavor::{flavor, reader_fence, real_reader_fence, Flavor};
use crate::local::{self, DeferState};
use crate::report::report;
use crate::section_calls::{RawFn, SectionCalls};
use crate::sync::{
    global, thread, thread_local_lazy, thread_local_pinned, AtomicPtr, AtomicU64, AtomicU8,
    Ordering,
};
use crate::thread_bound::ThreadBound;
use held::HeldWord;
pub(crate) use registry::{registry, Blocker, Owner, Registry};
#[doc(hidden)]
pub use registry::{registry_stats, RegistryStats};
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::panic::Location;

pub(crate) mod held;
mod registry;

/// A reader's `ctr` word: the nesting depth in its low `NEST_BITS` bits,
/// then the `DEFERRED` and `ONLINE` flags, and above them the grace-period
/// counter value read when the outermost section began (liburcu's layout),
/// or, on an online thread, at its last quiescent state. One word means the
/// outermost entry is one load of `GP_CTR` and one store, and the exit one
/// store of 0; on an online thread both are a store of the depth.
const NEST_BITS: u32 = 23;
/// The depth part of a `ctr` word.
const NEST_MASK: u64 = (1 << NEST_BITS) - 1;
/// Set in `ctr` by `call_local` inside a section: the outermost exit must
/// run deferred calls. Storing 0 at that exit clears it; nested entries and
/// exits carry it along.
const DEFERRED: u64 = 1 << NEST_BITS;
/// Set in `ctr` while the thread is online (a QSBR reader, see
/// `crate::online`): the grace-period value above it is the one the thread
/// last reported a quiescent state at, and it stays published between read
/// sections, which change only the depth. An online `ctr` is never 0.
pub(crate) const ONLINE: u64 = 1 << (NEST_BITS + 1);
/// Everything in `ctr` below the grace-period value.
const LOW_MASK: u64 = (1 << (NEST_BITS + 2)) - 1;
/// How far one grace period advances the counter: the low bits stay 0.
///
/// The counter can wrap only after 2^39 grace periods, and a reader is
/// mistaken for a new one only if the counter advanced by exactly that much
/// while it stayed in one section, which a section that blocks every grace
/// period cannot allow (only abandoned, timed-out grace periods advance it
/// without completing).
pub(crate) const GP_STEP: u64 = LOW_MASK + 1;
/// The first value of the grace-period counter (never 0).
const GP_FIRST: u64 = GP_STEP;

/// `signal` bit: a writer sleeps until this reader leaves its section.
/// The only bit that writers change.
const WAITING: u8 = 1;
/// `signal` bit: the fence flavor; readers issue real fences.
const REAL_FENCE: u8 = 2;
/// `signal` bit, thread-local records only: the registry holds a stand-in
/// for this thread; every outermost entry and exit takes the slow path.
const STAND_IN: u8 = 4;
/// `signal` bit, thread-local records only: the thread has not registered
/// yet; its first outermost entry takes the slow path.
const UNREGISTERED: u8 = 8;
/// The `signal` bits that send an outermost entry to the slow path.
const ENTER_SLOW: u8 = REAL_FENCE | STAND_IN | UNREGISTERED;

global! {
    /// How many registered threads are ordinary readers (registered, not
    /// online, their registration not gone): the threads whose read
    /// sections order themselves against a grace period with the flavor's
    /// reader fence alone, a compiler fence in the membarrier flavor. While
    /// it is 0, no thread can be inside such a section, and a grace period
    /// needs no expedited barrier (see `flavor::writer_fence`). Each thread
    /// counts itself (`Local::counted`) when it becomes an ordinary reader
    /// and uncounts itself when it goes online or exits.
    static ORDINARY: AtomicU64 = AtomicU64::new(0);
}

global! {
    /// The grace-period counter: readers copy it into their record on
    /// entering their outermost section; a grace period advances it and then
    /// waits for every record that holds an older value.
    static GP_CTR: AtomicU64 = AtomicU64::new(GP_FIRST);
}

thread_local_pinned! {
    /// This thread's reader state: the read-side fast path touches only
    /// this.
    static LOCAL: Local = Local {
        record: Record {
            ctr: AtomicU64::new(0),
            entered_at: AtomicPtr::new(std::ptr::null_mut()),
            signal: AtomicU8::new(UNREGISTERED),
            online_at: AtomicPtr::new(std::ptr::null_mut()),
            quiescent_at: AtomicPtr::new(std::ptr::null_mut()),
            online_state: OwnLine(AtomicU64::new(0)),
            held: HeldWord::new(),
        },
        stand_in: Cell::new(None),
        thread_id: Cell::new(None),
        online_handle: Cell::new(None),
        online: Cell::new(false),
        counted: Cell::new(false),
        defer: DeferState::new(),
        section_calls: SectionCalls::new(),
        held_sections: Cell::new(0),
    };
}

thread_local_lazy! {
    /// Its destructor takes this thread's record out of the registry when
    /// the thread exits.
    static REGISTRATION: Registration = Registration(Cell::new(None));
}

/// One reader's published state.
///
/// `ctr` and `entered_at` are written only by the owning thread, `signal`
/// by both sides (see its bits); writers read them under the registry lock.
/// Aligned to its own cache lines so that a writer's scan does not share a
/// line with the owner's other hot data.
#[repr(align(128))]
pub(crate) struct Record {
    /// 0 while the thread is outside any read section; otherwise the value of
    /// `GP_CTR` when it entered its outermost section plus its nesting depth
    /// and the `DEFERRED` flag. Written only by the owner, with plain loads
    /// and stores (no read-modify-write).
    ctr: AtomicU64,
    /// Where the outermost section was entered (a `&'static Location`), for
    /// deadlock and stall reports.
    entered_at: AtomicPtr<Location<'static>>,
    /// `WAITING | REAL_FENCE | STAND_IN | UNREGISTERED`: everything the
    /// outermost entry and exit must look at besides `ctr`, in one byte, so
    /// that each tests one byte with one branch.
    signal: AtomicU8,
    /// Where the thread last went online (`online()`), for stall reports.
    online_at: AtomicPtr<Location<'static>>,
    /// Where the thread last reported a quiescent state while online
    /// (null: none since it went online), for stall reports.
    quiescent_at: AtomicPtr<Location<'static>>,
    /// While the thread is online: the grace-period value of its last
    /// quiescent state with `ONLINE`, what writers judge it by; otherwise
    /// 0, and writers judge it by `ctr`. On a line of its own: an online
    /// thread's read sections store to `ctr` twice each, and a writer that
    /// scanned that line would take it away from the reader once per scan
    /// (liburcu's urcu-qsbr readers, whose sections store nothing, keep
    /// theirs). Written by the owner only at quiescent states and
    /// online/offline transitions. `ctr` keeps the same value for the
    /// owner's own use (`quiescent` compares with it).
    online_state: OwnLine<AtomicU64>,
    /// Whether the owner's section has guest notifications queued, for the
    /// watchdog (see `watchdog`).
    pub(crate) held: HeldWord,
}

/// A value alone on its cache line pair (128 bytes: adjacent-line
/// prefetching pairs lines on x86).
#[repr(align(128))]
struct OwnLine<T>(T);

/// A thread's reader state: its record and what the slow paths need, and
/// its deferred calls.
pub(crate) struct Local {
    record: Record,
    /// The heap record that stands in for `record` in the registry while
    /// `record.signal` has `STAND_IN` and a section is open.
    stand_in: Cell<Option<&'static Record>>,
    /// The thread's id, kept at registration to name a stand-in created
    /// while the thread is exiting.
    thread_id: Cell<Option<thread::ThreadId>>,
    /// Where the thread's live `Online` handle was made, if it has one
    /// (online, or offline inside `Online::offline`).
    pub(crate) online_handle: Cell<Option<&'static Location<'static>>>,
    /// Whether the thread is online: `ONLINE` is set in `ctr` outside read
    /// sections, and inside them unless the section deferred a call (see
    /// `mark_deferred`).
    online: Cell<bool>,
    /// Whether the thread is counted in `ORDINARY`: registered, not online,
    /// and its registration not gone.
    counted: Cell<bool>,
    /// `call_local`'s state (in the same thread-local, so that recording a
    /// call finds the read depth and the pending calls together).
    pub(crate) defer: DeferState,
    /// Calls that run at the outermost end before it is published.
    pub(crate) section_calls: SectionCalls,
    /// How many sections have queued section calls: numbers them in
    /// `record.held`.
    held_sections: Cell<u64>,
}

/// A section that published `ctr` blocks the grace period that set the
/// counter to `gp` unless it is quiescent (0) or began after (`gp`). The
/// same test serves an online record (`ONLINE` set, never 0): it blocks
/// unless its last quiescent state was reported at `gp`, that is, after the
/// grace period began; whether it is inside a read section does not matter.
fn blocks(ctr: u64, gp: u64) -> bool {
    #[cfg(loom)]
    if ctr & ONLINE != 0 && crate::fault::active(crate::fault::LoomFault::WriterIgnoresOnline) {
        return false;
    }
    ctr != 0 && ctr & !LOW_MASK != gp
}

/// The nesting depth in a `ctr` word.
fn depth_of(ctr: u64) -> usize {
    // The mask keeps the value below 2^23, so it fits any usize.
    (ctr & NEST_MASK) as usize
}

/// The `signal` bits that a registered thread-local record keeps whatever
/// writers do: `REAL_FENCE` in the fence flavor.
fn flavor_signal() -> u8 {
    if flavor() == Flavor::Fence {
        REAL_FENCE
    } else {
        0
    }
}

/// The current grace-period counter value.
#[inline(always)]
pub(crate) fn gp_counter() -> u64 {
    // Relaxed: only the grace-period leader writes it, under the leader
    // election lock; its ordering against readers comes from the fences.
    GP_CTR.load(Ordering::Relaxed)
}

/// The current grace-period counter value, for a quiescent state: the
/// thread's loads after it see everything the leader made visible before
/// it advanced the counter to this value.
#[inline(always)]
pub(crate) fn gp_counter_acquire() -> u64 {
    // Acquire pairs with the leader's fence (membarrier or SeqCst fence)
    // before its store in `set_gp_counter`: what the writer unpublished
    // before that grace period began is visible to the loads that follow.
    GP_CTR.load(Ordering::Acquire)
}

/// The grace-period counter value for an ordinary section's entry: see
/// `gp_counter`. Under loom's emulation of the membarrier flavor the load
/// is Acquire (see `flavor::emulated`).
#[inline(always)]
fn entry_gp_counter() -> u64 {
    #[cfg(loom)]
    if crate::flavor::emulated::on() {
        // Acquire pairs with the leader's fence before it advanced the
        // counter: the emulated barrier's fence came before this load.
        return GP_CTR.load(Ordering::Acquire);
    }
    gp_counter()
}

/// Publishes a new grace-period counter value (the leader only).
pub(crate) fn set_gp_counter(value: u64) {
    // Relaxed: readers that load the new value need no data from the writer
    // beyond what the writer's fence before this store already ordered.
    GP_CTR.store(value, Ordering::Relaxed);
}

/// Whether a thread may be inside an ordinary read section whose reader
/// fence is a compiler fence (see `ORDINARY`). The caller (a grace period's
/// writer) has issued a full fence since it last stored anything readers
/// must see, and issues the flavor's barrier if this says yes.
pub(crate) fn ordinary_readers() -> bool {
    // Acquire pairs with the Release decrement in `Local::uncount_ordinary`:
    // a writer that sees the count drop sees the online state published
    // before the drop. An increment missed here is ordered by the fences:
    // the caller's full fence before this load pairs with the real fence
    // after the increment in `Local::count_ordinary`.
    ORDINARY.load(Ordering::Acquire) != 0
}

/// In a forked child, where only the forking thread exists: the count is
/// that thread's own.
#[cfg(not(loom))]
pub(crate) fn reset_ordinary_after_fork(own_counted: bool) {
    // Relaxed: the child runs one thread, which holds the registry lock.
    ORDINARY.store(u64::from(own_counted), Ordering::Relaxed);
}

impl Record {
    /// A quiescent record for a stand-in (see the module documentation).
    fn stand_in() -> Record {
        Record {
            ctr: AtomicU64::new(0),
            entered_at: AtomicPtr::new(std::ptr::null_mut()),
            signal: AtomicU8::new(0),
            online_at: AtomicPtr::new(std::ptr::null_mut()),
            quiescent_at: AtomicPtr::new(std::ptr::null_mut()),
            online_state: OwnLine(AtomicU64::new(0)),
            held: HeldWord::new(),
        }
    }

    #[inline]
    fn ctr(&self) -> u64 {
        // Relaxed: the writer's fences around its scans order it.
        self.ctr.load(Ordering::Relaxed)
    }

    /// The value writers judge this record by (whether it holds up a grace
    /// period, see `blocks`): the online state while the owner is online,
    /// else `ctr`. For an online record only the line that online sections
    /// do not write is read.
    #[inline]
    fn published(&self) -> u64 {
        // Relaxed: as `ctr` (the writer's fences around its scans order it).
        // Each transition stores both words before its fence, and a `ctr`
        // read in between blocks the same grace periods as the online
        // state (both hold the same counter value, or `ctr` is 0 and the
        // online state about to become 0 too).
        let online = self.online_state.0.load(Ordering::Relaxed);
        if online & ONLINE != 0 {
            online
        } else {
            self.ctr()
        }
    }

    /// A writer sets or withdraws its wake-up request (`WAITING`), keeping
    /// the flavor bit.
    fn set_signal(&self, value: u8) {
        // Relaxed: ordered by the writer's fence that follows, which pairs
        // with the reader's fence between its `ctr = 0` store and its
        // `signal` load in `exit`.
        self.signal.store(value, Ordering::Relaxed);
    }

    /// Publishes an outermost section that began at `at` (entry of a stand-in
    /// or, inlined, of the thread's own record).
    #[inline(always)]
    fn publish(&self, at: &'static Location<'static>) {
        // Relaxed: read by writers only in reports; the ctr store below
        // is what the protocol orders.
        self.entered_at.store(as_ptr(at), Ordering::Relaxed);
        // The fence that follows (the caller's) orders this store before
        // the section's loads; it pairs with the writer's fence that
        // precedes its scan of `ctr`. Release pairs with the writer's
        // Acquire fence after a scan that reads this value as not blocking
        // (the section began after the grace period did): the thread's
        // earlier sections, whose end the scan skipped over, happen before
        // the free. (The fence flavor's fence at the previous exit did that
        // too; a compiler fence does not, and on x86-64 the store is the
        // same instruction either way.) The stored value does not depend on
        // a load of `ctr`, so no store-to-load chain links one section to
        // the next.
        self.ctr.store(entry_gp_counter() | 1, Ordering::Release);
    }

    /// Ends the section published in this (stand-in) record: the slow-path
    /// twin of `Local::exit`'s outermost branch, with a real fence.
    fn unpublish(&self) {
        // Release pairs with the writer's Acquire fence after it reads 0.
        self.ctr.store(0, Ordering::Release);
        // Pairs with the writer's fence after it sets `WAITING`: either the
        // writer sees ctr == 0 or this thread sees `WAITING`.
        real_reader_fence();
        // Relaxed: ordered by the fence above.
        if self.signal.load(Ordering::Relaxed) & WAITING != 0 {
            self.signal.store(0, Ordering::Relaxed);
            event::wake_writer();
        }
    }

    /// Where the owner's current (or last) outermost section was entered.
    pub(crate) fn entered_at(&self) -> Option<&'static Location<'static>> {
        location(&self.entered_at)
    }
}

/// The location a record's location field holds.
fn location(field: &AtomicPtr<Location<'static>>) -> Option<&'static Location<'static>> {
    // Relaxed: read for reports only.
    let at = field.load(Ordering::Relaxed);
    // SAFETY: the location fields of a record only ever hold null or a
    // pointer made from a `&'static Location<'static>` (`as_ptr`), so it
    // is valid forever.
    unsafe { at.as_ref() }
}

/// A location as the record's location fields hold it.
#[inline(always)]
fn as_ptr(at: &'static Location<'static>) -> *mut Location<'static> {
    at as *const Location<'static> as *mut _
}

impl Local {
    /// The thread becomes an ordinary reader (it registers, or leaves the
    /// online state): counted in `ORDINARY` before any of its ordinary
    /// sections, followed by a real fence.
    fn count_ordinary(&self, #[cfg(loom)] fault: crate::fault::LoomFault) {
        #[cfg(loom)]
        if crate::fault::active(fault) {
            return;
        }
        if self.counted.replace(true) {
            return;
        }
        // AcqRel: a read-modify-write, so that the writer's load finds it in
        // the count's modification order; the fence below does the ordering.
        ORDINARY.fetch_add(1, Ordering::AcqRel);
        // Pairs with the writer's full fence before its load of the count
        // (`ordinary_readers`): either that load sees this increment and the
        // writer issues the expedited barrier, or the writer's fence comes
        // first and every load of this thread after this fence (its ordinary
        // sections, whose own fence is a compiler fence) sees what the
        // writer stored before its fence.
        real_reader_fence();
    }

    /// The thread stops being an ordinary reader (it has published its
    /// online state, or leaves the registry).
    fn uncount_ordinary(&self) {
        if !self.counted.replace(false) {
            return;
        }
        // Release pairs with the Acquire load in `ordinary_readers`: a writer
        // that sees the count without this thread (and skips the barrier)
        // sees the online state published before this, or the record gone
        // from the registry.
        ORDINARY.fetch_sub(1, Ordering::Release);
    }

    #[inline(always)]
    fn enter(&self, at: &'static Location<'static>) {
        let record = &self.record;
        // Relaxed: only this thread writes `ctr`.
        let ctr = record.ctr.load(Ordering::Relaxed);
        if ctr == 0 {
            record.publish(at);
            // Relaxed: the bits tested here are the owner's; writers change
            // only `WAITING`.
            let signal = record.signal.load(Ordering::Relaxed);
            if signal & ENTER_SLOW != 0 {
                if signal & ENTER_SLOW == REAL_FENCE {
                    // The fence flavor: the real fence, and nothing else.
                    // Not in `enter_slow`, whose prologue would fill the
                    // store buffer that the fence must drain.
                    real_reader_fence();
                } else {
                    self.enter_slow(at);
                }
            } else {
                // Pairs with the writer's fence before its scan (see
                // `publish`); the writer's membarrier makes it a full fence.
                reader_fence(false);
            }
        } else {
            // A nested entry, or the outermost entry of an online thread
            // (whose `ctr` is never 0): neither publishes anything, so both
            // only store the depth. One test (of the depth bits but the
            // lowest) sends both the online outermost entry (new depth 1)
            // and an overflow (new depth 0) off the nested path, which so
            // costs what it did before online threads existed.
            let next = ctr + 1;
            if next & (NEST_MASK - 1) == 0 {
                if next & NEST_MASK == 0 {
                    depth_overflow();
                }
                // Relaxed: read by this thread's deadlock checks and by
                // writers only in reports.
                record.entered_at.store(as_ptr(at), Ordering::Relaxed);
            }
            // Relaxed: publishes nothing new (an online record's grace-period
            // value is unchanged).
            record.ctr.store(next, Ordering::Relaxed);
        }
    }

    #[inline(always)]
    fn exit(&self) {
        let record = &self.record;
        let ctr = record.ctr.load(Ordering::Relaxed);
        let next = ctr - 1;
        if next & (NEST_MASK | ONLINE) != 0 {
            // A nested exit, or the outermost exit of an online thread that
            // deferred nothing (deferring clears `ONLINE` for the rest of
            // the section, see `mark_deferred`): the record keeps its
            // grace-period value, and the exit stores the depth. Relaxed:
            // publishes nothing. One test, as for a nested exit alone.
            record.ctr.store(next, Ordering::Relaxed);
            return;
        }
        if ctr & DEFERRED != 0 {
            return self.exit_deferred();
        }
        self.publish_exit();
    }

    /// Publishes the end of the outermost section: the thread is quiescent
    /// from here on, and a writer waiting for it is woken.
    #[inline(always)]
    fn publish_exit(&self) {
        self.publish_quiescent(0);
    }

    /// Ends the outermost section: on an online thread only the depth and
    /// the `DEFERRED` flag go (the grace-period value stays published); on
    /// any other thread the end is published.
    fn end_outermost(&self) {
        let ctr = self.record.ctr();
        if self.online.get() {
            // Relaxed: publishes nothing (the grace-period value is kept).
            self.record
                .ctr
                .store((ctr & !(DEFERRED | NEST_MASK)) | ONLINE, Ordering::Relaxed);
        } else {
            self.publish_exit();
        }
    }

    /// Publishes `ctr`, a value that blocks no grace period that has begun:
    /// 0 (outside any section, or offline) or, on an online thread, the
    /// current grace-period value with `ONLINE` (a quiescent state); then
    /// wakes a writer that waits for this thread.
    #[inline(always)]
    fn publish_quiescent(&self, ctr: u64) {
        self.publish_quiescent_in(&self.record.ctr, ctr, false);
    }

    /// Publishes an online thread's new state, `value`: a quiescent state
    /// (the current grace-period value with `ONLINE`) or 0 (offline), in
    /// `ctr` for the thread's own use and in `online_state`, which writers
    /// read; then wakes a writer that waits for this thread. The fence
    /// before the wake-up check is a real one in every flavor: a writer
    /// that waits for online threads alone issues no expedited barrier
    /// (see `flavor::writer_fence`).
    fn publish_online_state(&self, value: u64) {
        // Release, as the store to `online_state` below: a writer judges
        // the thread by `ctr` when its scan reads an online state that is
        // not `ONLINE` (a stale offline 0, before the thread came back
        // online inside a section: see `come_back_online`), and the Acquire
        // fence after its scan must then pair with this store, which ends
        // the protection of every load before it.
        self.record.ctr.store(value, Ordering::Release);
        self.publish_quiescent_in(&self.record.online_state.0, value, true);
    }

    /// `publish_quiescent`, storing `value` in `word` (`ctr` or
    /// `online_state`), with a real fence before the wake-up check if
    /// `real` (a constant at each call).
    #[inline(always)]
    fn publish_quiescent_in(&self, word: &AtomicU64, value: u64, real: bool) {
        let record = &self.record;
        // Release pairs with the writer's Acquire fence after it reads this
        // value: every load of the section (or, online, every load since the
        // last quiescent state) happens before whatever the writer does once
        // the grace period is over.
        word.store(value, Ordering::Release);
        // Keeps the `signal` load below after the store. In the membarrier
        // flavor this is the reader's whole side of the fence that pairs
        // with the writer's membarrier after it sets `WAITING`; the fence
        // flavor adds a real fence below, which `REAL_FENCE` sends it to.
        // With `real` (an online state) it is a real fence, which pairs with
        // the writer's full fence after it sets `WAITING` whether or not
        // the writer adds the barrier.
        reader_fence(real);
        let mut signal = record.signal.load(Ordering::Relaxed);
        if signal != 0 {
            if signal & REAL_FENCE != 0 && !real {
                // The fence flavor's side of the exit fence, here rather
                // than out of line, for the reason given in `enter`.
                real_reader_fence();
                // Relaxed: ordered by the fence above.
                signal = record.signal.load(Ordering::Relaxed);
            }
            if signal & !REAL_FENCE != 0 {
                self.exit_signalled(signal);
            }
        }
    }

    /// The outermost exit of a section that deferred calls: the section
    /// calls run while the section is still published (what they use is
    /// kept alive by it), then the end is published, then the `call_local`
    /// calls run outside it.
    #[inline(never)]
    fn exit_deferred(&self) {
        let unwinding = EndOnUnwind(self);
        self.record.held.running();
        let section_panic = self.section_calls.run();
        self.record.held.clear();
        std::mem::forget(unwinding);
        self.end_outermost();
        local::run_if_due(self, section_panic);
    }

    /// The rest of an outermost entry that has published its section in the
    /// thread's own record: the fence flavor's fence, the thread's first
    /// section (registration), or a section that needs a stand-in.
    #[cold]
    #[inline(never)]
    fn enter_slow(&self, at: &'static Location<'static>) {
        // If anything below panics, no guard will ever end the section that
        // `enter` has published: the unwind must end it.
        let abandon = AbandonEntry(self);
        let record = &self.record;
        // Relaxed: owner-written bits.
        let mut signal = record.signal.load(Ordering::Relaxed);
        if signal & UNREGISTERED != 0 {
            // The section's `ctr` is already in the record (`register`
            // refreshes its counter value): from the moment a writer can see
            // the record (under the registry lock), it sees the section, and
            // the fence below orders the section's loads after it.
            self.register();
            signal = record.signal.load(Ordering::Relaxed);
            if signal & STAND_IN == 0 {
                // An ordinary reader from now on: its later sections fence
                // with a compiler fence only, so writers must know of it.
                self.count_ordinary(
                    #[cfg(loom)]
                    crate::fault::LoomFault::RegisterUncounted,
                );
            }
        }
        if signal & STAND_IN != 0 {
            // The thread's registration is gone (or could not be armed): the
            // section stays open in the thread's own record, which is off the
            // registry, and a stand-in publishes it to writers.
            let owner = Owner {
                name: None,
                id: self
                    .thread_id
                    .get()
                    .map_or_else(|| "a thread".to_owned(), |id| format!("{id:?}")),
                exited: true,
            };
            let stand_in = registry().acquire_stand_in(owner);
            stand_in.publish(at);
            self.stand_in.set(Some(stand_in));
        }
        std::mem::forget(abandon);
        // Pairs with the writer's fence before its scan, as in `enter`.
        real_reader_fence();
    }

    /// The outermost exit when `signal` (loaded after the exit's fence) has
    /// a bit besides `REAL_FENCE`: a waiting writer to wake, or a stand-in
    /// to update.
    #[cold]
    #[inline(never)]
    fn exit_signalled(&self, signal: u8) {
        let record = &self.record;
        if signal & STAND_IN != 0 {
            if let Some(stand_in) = self.stand_in.take() {
                stand_in.unpublish();
                registry().release(stand_in);
            }
            return;
        }
        if signal & WAITING != 0 {
            // Relaxed: the writer re-arms it under the registry lock before
            // each sleep; a stale clear only costs it a wake-up that it
            // would not need.
            record.signal.store(signal & !WAITING, Ordering::Relaxed);
            event::wake_writer();
        }
    }

    /// Adds this thread's record to the registry and arms its removal at
    /// thread exit. If the removal cannot be armed (the thread is already
    /// destroying its thread-locals), the record stays off the registry and
    /// is marked `STAND_IN` instead.
    fn register(&self) {
        // SAFETY: with `std`, `LOCAL` has a constant initializer and no
        // destructor, so its memory stays valid until the thread's
        // thread-local storage is freed, which happens after every
        // thread-local destructor of the thread has run, `REGISTRATION`'s
        // included. That destructor takes this reference out of the registry
        // (under the registry lock, which writers hold while they use it)
        // and nothing else keeps it. If the destructor cannot be armed, the
        // reference is dropped below without being shared. Under loom,
        // `LOCAL` holds a leaked allocation that is valid forever.
        let this: &'static Local = unsafe { &*(self as *const Local) };
        #[cfg(test)]
        tests::maybe_fail(tests::FailAt::BeforeRegistry);
        let armed = REGISTRATION
            .try_with(|registration| registration.0.set(Some(this)))
            .is_ok();
        if !armed {
            self.record.signal.store(STAND_IN, Ordering::Relaxed);
            return;
        }
        let current = thread::current();
        self.thread_id.set(Some(current.id()));
        let owner = Owner {
            name: current.name().map(str::to_owned),
            id: format!("{:?}", current.id()),
            exited: false,
        };
        let signal = flavor_signal();
        let mut registry = registry();
        // Relaxed: published to writers by the registry lock.
        self.record.signal.store(signal, Ordering::Relaxed);
        // The section being entered read the grace-period counter before
        // the lock, so it may hold a value older than a grace period that
        // has already asked every registered reader to wake it: this record
        // would then block that grace period without having been asked.
        // Read the counter again under the lock (which orders it after any
        // such grace period's advance): the section then blocks only grace
        // periods that will see the record when they ask.
        let ctr = self.record.ctr();
        if ctr != 0 {
            self.record
                .ctr
                .store(gp_counter() | (ctr & LOW_MASK), Ordering::Relaxed);
        }
        registry.add_thread_local(&this.record, owner);
        drop(registry);
        #[cfg(test)]
        tests::maybe_fail(tests::FailAt::AfterRegistry);
    }

    /// The thread's read-section depth.
    fn depth(&self) -> usize {
        depth_of(self.record.ctr())
    }

    /// Whether the thread is inside a read section.
    #[inline(always)]
    pub(crate) fn in_section(&self) -> bool {
        // Relaxed: owner-only read of its own word.
        self.record.ctr.load(Ordering::Relaxed) & NEST_MASK != 0
    }

    /// Records a section call (see `SectionCalls::record`) if the thread
    /// is inside a read section, and marks the section so that its
    /// outermost exit runs it. `false` if it recorded nothing.
    ///
    /// # Safety
    ///
    /// As `SectionCalls::record`: `f(data)` must be safe to call until the
    /// end of the current outermost section.
    #[inline(always)]
    pub(crate) unsafe fn record_section_call(&self, f: RawFn, data: *const ()) -> bool {
        // Relaxed: owner-only read of its own word.
        let ctr = self.record.ctr.load(Ordering::Relaxed);
        if ctr & NEST_MASK == 0 {
            return false;
        }
        let before = self.section_calls.pending();
        // SAFETY: inside a section (depth > 0), and the caller's promise.
        if !unsafe { self.section_calls.record(f, data) } {
            return false;
        }
        let after = self.section_calls.pending();
        if after != before {
            self.note_held(after);
        }
        if ctr & DEFERRED == 0 {
            // Relaxed: owner-only bits, read back by this thread's exit (see
            // `mark_deferred` for `ONLINE`).
            self.record
                .ctr
                .store((ctr | DEFERRED) & !ONLINE, Ordering::Relaxed);
        }
        true
    }

    /// A new section call was recorded; `pending` are now queued. Tells
    /// the watchdog (a new section number for the first).
    #[inline(always)]
    fn note_held(&self, pending: usize) {
        let mut seq = self.held_sections.get();
        if pending == 1 {
            seq = seq.wrapping_add(1);
            self.held_sections.set(seq);
        }
        self.record.held.queued(seq, pending);
    }

    /// Inside a read section: the outermost exit must run deferred calls.
    ///
    /// On an online thread this also clears `ONLINE` until the section
    /// ends (`end_outermost` sets it again, from `Local::online`), so that
    /// the outermost exit leaves the one-test path that an online
    /// section's exit shares with a nested exit. Writers judge an online
    /// thread by `online_state`, which this does not change; and `ctr`
    /// blocks the same grace periods with or without `ONLINE` (only the
    /// low bits change).
    #[inline(always)]
    pub(crate) fn mark_deferred(&self) {
        let ctr = self.record.ctr();
        if depth_of(ctr) > 0 {
            // Relaxed: owner-only bits, read back by this thread's exit.
            self.record
                .ctr
                .store((ctr | DEFERRED) & !ONLINE, Ordering::Relaxed);
        }
    }

    /// Whether the thread is online now (not inside `Online::offline`).
    pub(crate) fn is_online(&self) -> bool {
        self.online.get()
    }

    /// Makes the thread an online reader, registering it first if it has
    /// never been; the caller has checked that it is outside any read
    /// section and has no `Online` handle. `false` if it cannot be: its
    /// registration is gone (it is exiting), so it stays an ordinary reader.
    pub(crate) fn go_online(&self, at: &'static Location<'static>) -> bool {
        let record = &self.record;
        // Relaxed: owner-written bits.
        if record.signal.load(Ordering::Relaxed) & UNREGISTERED != 0 {
            // With `ctr` at 0: a writer that finds the record before the
            // online state below is published finds it quiescent, and the
            // counter value read below is read after the registry lock, so
            // it is no older than a grace period that asked this record to
            // wake it (see `register`).
            self.register();
        }
        // Relaxed: owner-written bits.
        if record.signal.load(Ordering::Relaxed) & STAND_IN != 0 {
            return false;
        }
        // Writers read this record's online state from now on (see
        // `Entry::may_be_online`); set before the state is published, under
        // the lock their scans hold.
        registry().mark_may_be_online(record);
        // Relaxed: read by writers only in reports.
        record.online_at.store(as_ptr(at), Ordering::Relaxed);
        record
            .quiescent_at
            .store(std::ptr::null_mut(), Ordering::Relaxed);
        self.publish_online();
        self.online.set(true);
        // After the online state is published (see `uncount_ordinary`).
        self.uncount_ordinary();
        true
    }

    /// Publishes the online state at the current grace-period value: the
    /// online twin of an outermost entry, and like it followed by a fence
    /// before the thread's next loads, a real one in every flavor (writers
    /// that wait for online threads alone issue no expedited barrier).
    fn publish_online(&self) {
        let record = &self.record;
        // As in `publish`: the fence below orders this store before the
        // thread's later loads; it pairs with the writer's fence before its
        // scan: either the scan sees the thread online, or the thread's
        // loads see everything the writer unpublished before that fence.
        // And Release, as there: a writer whose scan reads this value as not
        // blocking (it is newer than its grace period) skips over the end of
        // the sections the thread ran offline, whose loads must happen
        // before its free.
        let value = gp_counter() | ONLINE;
        record.ctr.store(value, Ordering::Release);
        // The same, where writers read it (see `online_state`).
        record.online_state.0.store(value, Ordering::Release);
        // The store→load fence described above.
        real_reader_fence();
    }

    /// Reports a quiescent state: the thread holds no reference obtained
    /// before this point. `Err` inside a read section; nothing to do while
    /// offline (an offline thread holds up no grace period).
    #[inline(always)]
    pub(crate) fn quiescent(&self, at: &'static Location<'static>) -> Result<(), ()> {
        let record = &self.record;
        // Relaxed: owner-only read of its own word.
        let ctr = record.ctr.load(Ordering::Relaxed);
        if ctr & (NEST_MASK | ONLINE) != ONLINE {
            return if ctr & NEST_MASK != 0 {
                Err(())
            } else {
                Ok(())
            };
        }
        // Relaxed: read by writers only in reports.
        record.quiescent_at.store(as_ptr(at), Ordering::Relaxed);
        let gp = gp_counter_acquire();
        if ctr & !LOW_MASK == gp {
            // Already reported at this grace-period value. Every load since
            // that report came after an Acquire load of `gp`, so it sees
            // everything unpublished before grace period `gp` began: none of
            // it can reach what that grace period frees, and the next grace
            // period finds this record holding an older value and waits for
            // a new report.
            return Ok(());
        }
        // Release (in `publish_online_state`): every load before this point
        // happens before the free of a writer that sees `gp` here.
        self.publish_online_state(gp | ONLINE);
        Ok(())
    }

    /// Takes the thread offline (publishes 0, wakes a waiting writer):
    /// `Ok(true)` if it was online, `Ok(false)` if it was not, `Err` inside a
    /// read section (going offline would end the section early).
    pub(crate) fn go_offline(&self) -> Result<bool, ()> {
        let ctr = self.record.ctr();
        if ctr & NEST_MASK != 0 {
            return Err(());
        }
        if !self.online.replace(false) {
            return Ok(false);
        }
        // Counted before its offline state is published: an ordinary reader
        // from here on.
        self.count_ordinary(
            #[cfg(loom)]
            crate::fault::LoomFault::OfflineUncounted,
        );
        self.publish_online_state(0);
        Ok(true)
    }

    /// Back online after `go_offline` returned `Ok(true)`; keeps where the
    /// thread first went online.
    ///
    /// The thread may come back inside a read section that it opened while
    /// offline (a guard returned out of `Online::offline`'s closure, or
    /// forgotten in it). That section keeps its depth, its `DEFERRED` flag
    /// and its protection: the thread comes back online at the section's
    /// grace-period value, not the current one, so it blocks exactly the
    /// grace periods that the section blocks, and goes on blocking them
    /// after the section ends, until its next quiescent state (which is
    /// refused while the section is open).
    pub(crate) fn come_back_online(&self) {
        let record = &self.record;
        // Relaxed: owner-written bits. A thread whose registration went
        // away meanwhile (it is exiting) stays offline.
        if record.signal.load(Ordering::Relaxed) & STAND_IN != 0 {
            return;
        }
        let ctr = record.ctr();
        if depth_of(ctr) == 0 {
            self.publish_online();
        } else {
            // The section's own word, with `ONLINE` unless the section has
            // deferred a call (see `mark_deferred`), so that its outermost
            // exit ends it as an online section's (`exit`, or
            // `exit_deferred` and `end_outermost`). Relaxed, and no fence:
            // both stores hold the section's grace-period value, so either
            // word blocks the grace periods that the section blocks. A
            // writer whose scan still reads the offline 0 in the online
            // state judges the thread by `ctr`, which holds the section (the
            // entry's fence saw to that) until a later store ends its
            // protection, and each such store is a Release
            // (`publish_online_state`, `publish_exit`) that the writer's
            // Acquire fence pairs with.
            let own = if ctr & DEFERRED != 0 {
                ctr
            } else {
                ctr | ONLINE
            };
            record.ctr.store(own, Ordering::Relaxed);
            record
                .online_state
                .0
                .store((ctr & !LOW_MASK) | ONLINE, Ordering::Relaxed);
        }
        self.online.set(true);
        // After the online state is published (see `uncount_ordinary`).
        self.uncount_ordinary();
    }

    /// The thread's `Online` handle is dropped: it goes offline. Inside a
    /// read section it cannot yet (the section's references would lose
    /// their protection): the section stays published, as an ordinary
    /// section that began at the thread's last quiescent state, and its
    /// outermost exit publishes its end as any ordinary section's does.
    pub(crate) fn drop_online(&self) {
        self.online_handle.set(None);
        if !self.online.replace(false) {
            return;
        }
        // An ordinary reader from here on (counted before its state changes).
        self.count_ordinary(
            #[cfg(loom)]
            crate::fault::LoomFault::OfflineUncounted,
        );
        let ctr = self.record.ctr();
        if ctr & NEST_MASK == 0 {
            self.publish_online_state(0);
        } else {
            // Relaxed: the value blocks exactly the grace periods the online
            // state blocked (the same counter value; only the low bits
            // change), so a writer may read either until the next fence.
            self.record.ctr.store(ctr & !ONLINE, Ordering::Relaxed);
            self.record.online_state.0.store(0, Ordering::Relaxed);
        }
    }

    /// The depth of the thread's read section and where it was entered.
    pub(crate) fn section(&self) -> (usize, Option<&'static Location<'static>>) {
        (self.depth(), self.record.entered_at())
    }
}

/// Runs `f` (a wait for a grace period or for callbacks) with the calling
/// thread offline if it is online and outside any read section, and back
/// online afterwards, also if `f` unwinds: an online thread waiting for a
/// grace period would otherwise wait for its own quiescent state (liburcu's
/// `synchronize_rcu` does the same).
pub(crate) fn offline_while<R>(f: impl FnOnce() -> R) -> R {
    /// Brings the thread back online however `f` ends.
    struct BackOnline(bool);
    impl Drop for BackOnline {
        fn drop(&mut self) {
            if self.0 {
                let _ = with_local(Local::come_back_online);
            }
        }
    }
    let offline = with_local(|local| local.go_offline() == Ok(true)).unwrap_or(false);
    let _back = BackOnline(offline);
    f()
}

/// Ends an outermost section whose entry unwound before `read_lock` could
/// return its guard (see `Local::enter_slow`), as the guard's drop would
/// have: the thread is left outside any section, and a writer that already
/// waits for the section is woken.
struct AbandonEntry<'a>(&'a Local);

impl Drop for AbandonEntry<'_> {
    fn drop(&mut self) {
        let local = self.0;
        if let Some(stand_in) = local.stand_in.take() {
            stand_in.unpublish();
            registry().release(stand_in);
        }
        let record = &local.record;
        // Release pairs with the writer's Acquire fence after it reads 0, as
        // in `Local::exit`.
        record.ctr.store(0, Ordering::Release);
        // Pairs with the writer's fence after it sets `WAITING`, as in
        // `Record::unpublish`.
        real_reader_fence();
        // Relaxed: ordered by the fence above.
        let signal = record.signal.load(Ordering::Relaxed);
        if signal & WAITING != 0 {
            record.signal.store(signal & !WAITING, Ordering::Relaxed);
            event::wake_writer();
        }
    }
}

/// Ends the outermost section when a section call's panic unwinds out of
/// `Local::exit_deferred`: the section must not stay published with no
/// guard left to end it, and the thread's `call_local` calls still run
/// (with their panics reported, since the thread is unwinding).
struct EndOnUnwind<'a>(&'a Local);

impl Drop for EndOnUnwind<'_> {
    fn drop(&mut self) {
        let local = self.0;
        local.section_calls.abandon();
        local.record.held.clear();
        local.end_outermost();
        local::run_if_due(local, None);
    }
}

#[cold]
#[inline(never)]
fn depth_overflow() -> ! {
    panic!("rcu-defer: read sections nested more than {NEST_MASK} deep on one thread");
}

/// Takes the thread's record out of the registry when the thread exits.
struct Registration(Cell<Option<&'static Local>>);

impl Drop for Registration {
    fn drop(&mut self) {
        let Some(local) = self.0.take() else { return };
        // When a loom model fails, loom destroys the remaining thread-locals
        // after it has dropped the model's statics (the registry among
        // them); touching the registry then would turn the model's failure
        // into an abort that hides it.
        #[cfg(loom)]
        if std::thread::panicking() {
            return;
        }
        let record = &local.record;
        let mut registry = registry();
        let Some(i) = registry.position(record) else {
            return;
        };
        let mut ctr = record.ctr();
        let was_online = local.online.replace(false);
        if was_online {
            // The thread exits online (its `Online` handle leaked, or lives
            // in a thread-local destroyed later): it goes offline here. Inside
            // a section it becomes an ordinary reader whose section began at
            // its last quiescent state, which blocks exactly what the online
            // record blocked; the stand-in below takes it over. Relaxed:
            // writers see the record only under the registry lock, which this
            // thread holds.
            ctr = if depth_of(ctr) == 0 { 0 } else { ctr & !ONLINE };
            record.ctr.store(ctr, Ordering::Relaxed);
            record.online_state.0.store(0, Ordering::Relaxed);
        }
        if ctr == 0 {
            registry.remove(i);
            // Off the registry: writers need not reach it.
            local.uncount_ordinary();
            // A writer may be asleep waiting for this thread if it was
            // online (an ordinary thread outside any section blocks
            // nothing): it asked under the registry lock, so before this
            // removal, and the flag is seen here. Relaxed: ordered by the
            // lock.
            let waited_for = was_online && record.signal.load(Ordering::Relaxed) & WAITING != 0;
            // Relaxed: owner-only from now on (off the registry).
            record.signal.store(STAND_IN, Ordering::Relaxed);
            drop(registry);
            if waited_for {
                event::wake_writer();
            }
            return;
        }
        // The thread is exiting inside a read section: a guard was leaked
        // (`mem::forget`) or lives in another thread-local that is destroyed
        // later. Closing the section here would be unsound in the second
        // case (that destructor may still read through the guard), so the
        // section stays open, published by a stand-in that takes the
        // record's place (the record's memory goes with the thread). Writers
        // see one or the other, never neither: the swap happens under the
        // registry lock. If the guard's drop does come, it ends the section
        // through the stand-in; a leaked guard blocks grace periods for
        // good, and stall reports name it.
        let (stand_in, who) = registry.stand_in_for(i);
        // Relaxed: published to writers by the registry lock.
        stand_in
            .entered_at
            .store(record.entered_at.load(Ordering::Relaxed), Ordering::Relaxed);
        // A writer's pending wake-up request moves with the section.
        stand_in.signal.store(
            record.signal.load(Ordering::Relaxed) & WAITING,
            Ordering::Relaxed,
        );
        stand_in.ctr.store(ctr & !DEFERRED, Ordering::Relaxed);
        // The stand-in's entry is not `i` (that entry is owned): this swaps
        // the thread's entry out, and may move the stand-in's, which is
        // done with.
        registry.remove(i);
        // The stand-in ends the section with a real fence (`unpublish`):
        // writers need not reach the thread with a barrier.
        local.uncount_ordinary();
        drop(registry);
        local.stand_in.set(Some(stand_in));
        record.signal.store(STAND_IN, Ordering::Relaxed);
        let at = record
            .entered_at()
            .map_or_else(|| "an unknown location".to_owned(), |l| l.to_string());
        report!(
            ExitInSection,
            "{who} is exiting inside a read section (depth {}, entered at {at}); \
             grace periods wait until its guard is dropped: a guard held by a thread-local \
             that is destroyed later ends the section then (and runs its deferred calls), a \
             leaked guard never does",
            depth_of(ctr)
        );
    }
}

/// The current thread's read depth and the location of its outermost
/// section, if it is inside one.
pub(crate) fn current_section() -> Option<(usize, Option<&'static Location<'static>>)> {
    LOCAL
        .try_with(|local| {
            let depth = local.depth();
            (depth > 0).then(|| (depth, local.record.entered_at()))
        })
        .ok()
        .flatten()
}

/// How many calls the calling thread's current section has queued to run
/// at its end (`record_section_call`: the signals queued by
/// `IrqNotifier::notify`, one per notifier); 0 outside a section.
#[cfg(target_os = "linux")]
pub(crate) fn queued_section_calls() -> usize {
    LOCAL
        .try_with(|local| local.section_calls.pending())
        .unwrap_or(0)
}

/// A number that identifies the calling thread among the threads alive now
/// (the address of its reader state): a thread that exits may see its token
/// reused by a later thread, never by one alive at the same time.
#[inline(always)]
pub(crate) fn thread_token() -> usize {
    LOCAL
        .try_with(|local| {
            // (Under loom the thread-local holds a `&'static Local`.)
            let local: &Local = local;
            local as *const Local as usize
        })
        .unwrap_or(0)
}

/// Calls `f` with the current thread's state; `None` only under loom once
/// the thread's locals are gone (with `std` the state is always there).
#[inline(always)]
pub(crate) fn with_local<R>(f: impl FnOnce(&Local) -> R) -> Option<R> {
    LOCAL.try_with(|local| f(local)).ok()
}

/// Enters a read section on the current thread and returns its guard.
///
/// While any guard of a thread is alive, the thread is inside a read
/// section: data that a writer retires after the section began (with
/// [`synchronize_rcu`](crate::synchronize_rcu), [`call_rcu`](crate::call_rcu)
/// or [`RcuCell`](crate::RcuCell)) is not freed until the section ends.
///
/// Sections nest freely: only the outermost `read_lock` publishes the
/// section (one thread-local store and the flavor's fence); nested ones
/// increment a counter. The first call on a thread registers it; there is no
/// registration function. The caller's location is kept for deadlock and
/// stall reports.
///
/// Never blocks. Not async-signal-safe, except nested inside a section the
/// interrupted code holds (see the crate documentation).
///
/// Keep the guard in a named variable for as long as the section must last:
/// `let _ = read_lock();` drops it at once (the section is over before the
/// next statement, and calls deferred "until its end" run immediately),
/// whereas `let _guard = read_lock();` holds it to the end of the scope.
///
/// ```
/// let outer = rcu_defer::read_lock();
/// let inner = rcu_defer::read_lock();
/// assert_eq!(rcu_defer::read_depth(), 2);
/// drop(inner);
/// drop(outer);
/// assert!(!rcu_defer::in_read_section());
/// ```
#[inline]
#[track_caller]
pub fn read_lock() -> ReadGuard {
    let at = Location::caller();
    LOCAL.with(|local| local.enter(at));
    ReadGuard {
        _not_send: PhantomData,
    }
}

/// Whether the current thread is inside a read section.
///
/// ```
/// assert!(!rcu_defer::in_read_section());
/// let _guard = rcu_defer::read_lock();
/// assert!(rcu_defer::in_read_section());
/// ```
pub fn in_read_section() -> bool {
    read_depth() > 0
}

/// How many read guards the current thread holds (0 outside any section).
pub fn read_depth() -> usize {
    LOCAL.try_with(|local| local.depth()).unwrap_or(0)
}

/// A read section of the current thread; the section ends when the last
/// (outermost) guard is dropped.
///
/// A guard cannot leave its thread: it is neither `Send` nor `Sync`.
///
/// ```compile_fail
/// fn needs_send<T: Send>(_: T) {}
/// needs_send(rcu_defer::read_lock());
/// ```
///
/// ```compile_fail
/// fn needs_sync<T: Sync>(_: &T) {}
/// needs_sync(&rcu_defer::read_lock());
/// ```
///
/// Moving one into another thread fails with "`ReadGuard` cannot be sent to
/// or shared with another thread: read sections and defer scopes belong to
/// the thread that entered them":
///
/// ```compile_fail,E0277
/// let guard = rcu_defer::read_lock();
/// std::thread::spawn(move || drop(guard));
/// ```
#[must_use = "the read section ends as soon as the guard is dropped"]
pub struct ReadGuard {
    /// Makes the guard `!Send` and `!Sync` (the section belongs to the
    /// thread that entered it), with an error that names `ReadGuard`.
    _not_send: PhantomData<ThreadBound<ReadGuard>>,
}

/// Dropping the outermost guard runs the thread's pending
/// [`call_local`](crate::call_local) calls (unless a
/// [`DeferScope`](crate::DeferScope) is still open).
///
/// # Panics
///
/// Resumes the first panic of a pending call after all of them have run
/// (unless the thread is already unwinding; then such panics are reported
/// and dropped).
impl Drop for ReadGuard {
    #[inline]
    fn drop(&mut self) {
        LOCAL.with(|local| local.exit());
    }
}

impl fmt::Debug for ReadGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (depth, entered_at) = current_section().unwrap_or((0, None));
        f.debug_struct("ReadGuard")
            .field("depth", &depth)
            .field("entered_at", &entered_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::catch_unwind;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Where an injected registration failure happens.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub(super) enum FailAt {
        BeforeRegistry,
        AfterRegistry,
    }

    crate::sync::thread_local_const! {
        static FAIL: Cell<Option<FailAt>> = Cell::new(None);
    }

    /// Panics at `at` if this thread's test asked for it (once).
    pub(super) fn maybe_fail(at: FailAt) {
        if FAIL.with(|f| f.get()) == Some(at) {
            FAIL.with(|f| f.set(None));
            panic!("injected registration failure");
        }
    }

    /// A thread whose first `read_lock` panics at `at` must be left outside
    /// any section, and its next section must be seen by writers.
    fn first_read_lock_panics_then_a_section_holds_up_writers(at: FailAt) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let reader = thread::spawn(move || {
            FAIL.with(|f| f.set(Some(at)));
            let first = catch_unwind(|| drop(read_lock()));
            assert!(first.is_err(), "the injected failure panics");
            assert_eq!(read_depth(), 0, "the failed entry left a section open");
            let guard = read_lock();
            assert_eq!(read_depth(), 1);
            entered_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            drop(guard);
        });
        entered_rx.recv().unwrap();
        let held = crate::synchronize_rcu_timeout(Duration::from_millis(100));
        assert!(
            matches!(held, Err(crate::Error::Timeout(_))),
            "a writer must wait for the section that followed the failed entry: {held:?}"
        );
        release_tx.send(()).unwrap();
        reader.join().unwrap();
        crate::synchronize_rcu_timeout(Duration::from_secs(30)).unwrap();
    }

    #[test]
    fn a_panic_before_registration_leaves_no_section_and_the_next_one_registers() {
        first_read_lock_panics_then_a_section_holds_up_writers(FailAt::BeforeRegistry);
    }

    #[test]
    fn a_panic_after_registration_leaves_no_section_and_the_next_one_is_seen() {
        first_read_lock_panics_then_a_section_holds_up_writers(FailAt::AfterRegistry);
    }
}
