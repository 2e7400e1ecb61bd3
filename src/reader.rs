//! Read sections: per-thread reader records, lazy registration, and the
//! guard whose creation and drop are the read-side fast path.
//!
//! Each thread that ever enters a read section owns a [`Record`]. Records are
//! allocated once, leaked, and kept in the registry for the life of the
//! process; a record whose thread has exited is reused by the next thread
//! that registers. A writer scanning the registry therefore never touches
//! freed memory, however threads come and go during its grace period.

use crate::flavor::{flavor, reader_fence, Flavor};
use crate::grace;
use crate::local;
use crate::sync::{
    global, lock, thread, thread_local_const, thread_local_lazy, AtomicBool, AtomicPtr, AtomicU64,
    Mutex, MutexGuard, Ordering,
};
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::panic::Location;
use std::time::Instant;

/// A reader's `ctr` word holds its nesting depth in the low `DEPTH_BITS`
/// bits and, above them, the grace-period counter value read when the
/// outermost section began (liburcu's layout). One word means the outermost
/// entry is one load of `GP_CTR` and one store, and the exit one store of 0.
const DEPTH_BITS: u32 = 24;
/// The depth part of a `ctr` word.
const DEPTH_MASK: u64 = (1 << DEPTH_BITS) - 1;
/// How far one grace period advances the counter: the low bits stay 0.
///
/// The counter can wrap only after 2^40 grace periods, and a reader is
/// mistaken for a new one only if the counter advanced by exactly that much
/// while it stayed in one section, which a section that blocks every grace
/// period cannot allow (only abandoned, timed-out grace periods advance it
/// without completing).
pub(crate) const GP_STEP: u64 = 1 << DEPTH_BITS;
/// The first value of the grace-period counter (never 0).
const GP_FIRST: u64 = GP_STEP;

global! {
    /// The grace-period counter: readers copy it into their record on
    /// entering their outermost section; a grace period advances it and then
    /// waits for every record that holds an older value.
    static GP_CTR: AtomicU64 = AtomicU64::new(GP_FIRST);
}

global! {
    /// Every record ever allocated, with the thread that owns it now.
    static REGISTRY: Mutex<Registry> = Mutex::new(Registry { entries: Vec::new() });
}

thread_local_const! {
    /// This thread's record once it has registered: the read-side fast path
    /// reads only this.
    static LOCAL: Cell<Option<&'static Record>> = Cell::new(None);
}

thread_local_lazy! {
    /// Holds the registration whose destructor releases the record when the
    /// thread exits.
    static REGISTRATION: Registration = Registration(Cell::new(None));
}

/// One thread's published reader state.
///
/// All fields but `waiting` are written only by the owning thread; writers
/// read them. Aligned to its own cache lines so that two readers never write
/// the same line.
#[repr(align(128))]
pub(crate) struct Record {
    /// 0 while the thread is outside any read section; otherwise the value of
    /// `GP_CTR` when it entered its outermost section plus its nesting depth
    /// (see `DEPTH_BITS`). Written only by the owner, with plain loads and
    /// stores (no read-modify-write).
    ctr: AtomicU64,
    /// Where the outermost section was entered (a `&'static Location`), for
    /// deadlock and stall reports.
    entered_at: AtomicPtr<Location<'static>>,
    /// Set by a writer that sleeps until this thread leaves its section.
    waiting: AtomicBool,
    /// Owner-only: the thread has `call_local` calls to run when its
    /// outermost section ends.
    deferred: AtomicBool,
    /// `flavor() == Flavor::Fence`, cached: readers issue real fences.
    real_fence: bool,
}

/// Who owns a record, for reports.
#[derive(Clone, Debug)]
pub(crate) struct Owner {
    /// The thread's name, if it has one.
    pub(crate) name: Option<String>,
    /// The thread's id, formatted.
    pub(crate) id: String,
    /// The thread exited while inside a read section (its record then stays
    /// owned and blocking).
    pub(crate) exited: bool,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exited = if self.exited { ", exited" } else { "" };
        match &self.name {
            Some(name) => write!(f, "thread '{name}' ({}{exited})", self.id),
            None => write!(f, "unnamed thread ({}{exited})", self.id),
        }
    }
}

struct Entry {
    record: &'static Record,
    /// `None` while the record is free for reuse.
    owner: Option<Owner>,
    /// The section (its `ctr` without the depth) a sleeping writer first
    /// found blocking, and
    /// when: how long a stalled reader has been inside, for reports.
    blocked_since: Option<(u64, Instant)>,
}

/// A reader that holds up a grace period, as a writer saw it.
pub(crate) struct Blocker {
    pub(crate) owner: Option<Owner>,
    pub(crate) depth: usize,
    pub(crate) entered_at: Option<&'static Location<'static>>,
    /// When a writer first found this section blocking, if one has slept on it.
    pub(crate) blocked_since: Option<Instant>,
}

/// The registry of reader records. Scanned by writers under its lock;
/// registration and thread exit take the same lock.
pub(crate) struct Registry {
    entries: Vec<Entry>,
}

impl Registry {
    /// Every record, free or owned. A free record is always quiescent.
    pub(crate) fn records(&self) -> impl Iterator<Item = &'static Record> + '_ {
        self.entries.iter().map(|e| e.record)
    }

    /// Before sleeping: asks *every* reader to wake the writer when it
    /// leaves its section, and notes when each blocking section was first
    /// seen. Flagging only the readers that block now would lose a wake-up:
    /// a reader that enters (with an old counter value) after this scan but
    /// before the writer's fence is seen blocking by the rescan that
    /// decides to sleep, and it would leave without waking the writer.
    /// `unmark_quiescent` withdraws the request from the readers that turn
    /// out not to block.
    pub(crate) fn mark_waiting(&mut self, gp: u64) {
        let now = Instant::now();
        for entry in &mut self.entries {
            entry.record.set_waiting(true);
            let ctr = entry.record.ctr();
            if blocks(ctr, gp) {
                let section = ctr & !DEPTH_MASK;
                if entry.blocked_since.map(|(seen, _)| seen) != Some(section) {
                    entry.blocked_since = Some((section, now));
                }
            }
        }
    }

    /// After the writer's fence: withdraws the wake-up request from readers
    /// that have left, and says whether any still blocks `gp`.
    pub(crate) fn unmark_quiescent(&mut self, gp: u64) -> bool {
        let mut any = false;
        for record in self.records() {
            if record.blocks(gp) {
                any = true;
            } else {
                record.set_waiting(false);
            }
        }
        any
    }

    /// The readers that block `gp`, for a stall report.
    pub(crate) fn blockers(&self, gp: u64) -> Vec<Blocker> {
        self.entries
            .iter()
            .filter_map(|entry| {
                let ctr = entry.record.ctr();
                blocks(ctr, gp).then(|| Blocker {
                    owner: entry.owner.clone(),
                    depth: entry.record.depth(),
                    entered_at: entry.record.entered_at(),
                    blocked_since: entry
                        .blocked_since
                        .and_then(|(seen, at)| (seen == ctr & !DEPTH_MASK).then_some(at)),
                })
            })
            .collect()
    }

    fn acquire(&mut self, owner: Owner) -> &'static Record {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.owner.is_none()) {
            entry.owner = Some(owner);
            return entry.record;
        }
        let record: &'static Record = Box::leak(Box::new(Record {
            ctr: AtomicU64::new(0),
            entered_at: AtomicPtr::new(std::ptr::null_mut()),
            waiting: AtomicBool::new(false),
            deferred: AtomicBool::new(false),
            real_fence: flavor() == Flavor::Fence,
        }));
        self.entries.push(Entry {
            record,
            owner: Some(owner),
            blocked_since: None,
        });
        record
    }

    fn entry(&mut self, record: &'static Record) -> Option<&mut Entry> {
        self.entries
            .iter_mut()
            .find(|e| std::ptr::eq(e.record, record))
    }

    fn release(&mut self, record: &'static Record) {
        if let Some(entry) = self.entry(record) {
            entry.owner = None;
        }
    }

    /// Marks the record's owner as exited; returns how to name it.
    fn mark_exited(&mut self, record: &'static Record) -> String {
        match self.entry(record).and_then(|e| e.owner.as_mut()) {
            Some(owner) => {
                let name = owner.to_string();
                owner.exited = true;
                name
            }
            None => "a thread".to_owned(),
        }
    }
}

/// A section that published `ctr` blocks the grace period that set the
/// counter to `gp` unless it is quiescent (0) or began after (`gp`).
fn blocks(ctr: u64, gp: u64) -> bool {
    ctr != 0 && ctr & !DEPTH_MASK != gp
}

#[cold]
#[inline(never)]
fn depth_overflow() -> ! {
    panic!("rcu-defer: read sections nested more than {DEPTH_MASK} deep on one thread");
}

/// Locks the registry (writers scan it; registration and exit change it).
pub(crate) fn registry() -> MutexGuard<'static, Registry> {
    lock(&REGISTRY)
}

/// The current grace-period counter value.
#[inline(always)]
pub(crate) fn gp_counter() -> u64 {
    // Relaxed: only the grace-period leader writes it, under the leader
    // election lock; its ordering against readers comes from the fences.
    GP_CTR.load(Ordering::Relaxed)
}

/// Publishes a new grace-period counter value (the leader only).
pub(crate) fn set_gp_counter(value: u64) {
    // Relaxed: readers that load the new value need no data from the writer
    // beyond what the writer's fence before this store already ordered.
    GP_CTR.store(value, Ordering::Relaxed);
}

impl Record {
    #[inline(always)]
    fn enter(&self, at: &'static Location<'static>) {
        // Relaxed: only this thread writes `ctr`.
        let ctr = self.ctr.load(Ordering::Relaxed);
        if ctr == 0 {
            // Relaxed: read by writers only in reports; the ctr store below
            // is what the protocol orders.
            self.entered_at
                .store(at as *const Location<'static> as *mut _, Ordering::Relaxed);
            // Relaxed: the fence below orders this store before the
            // section's loads (pairs with the writer's fence that precedes
            // its scan of `ctr`). The stored value does not depend on the
            // loaded one, so no store-to-load chain links one section to the
            // next.
            self.ctr.store(gp_counter() | 1, Ordering::Relaxed);
            reader_fence(self.real_fence);
        } else {
            if ctr & DEPTH_MASK == DEPTH_MASK {
                depth_overflow();
            }
            // Relaxed: nested entry publishes nothing new.
            self.ctr.store(ctr + 1, Ordering::Relaxed);
        }
    }

    #[inline(always)]
    fn exit(&self) {
        let ctr = self.ctr.load(Ordering::Relaxed);
        if ctr & DEPTH_MASK == 1 {
            // Release pairs with the writer's Acquire fence after it reads
            // 0: every load of the section happens before whatever the writer
            // does once the grace period is over.
            self.ctr.store(0, Ordering::Release);
            // Pairs with the writer's fence after it sets `waiting`: either
            // the writer sees ctr == 0 or this thread sees `waiting`.
            reader_fence(self.real_fence);
            // Relaxed: ordered by the fence above.
            if self.waiting.load(Ordering::Relaxed) {
                self.wake_writer();
            }
            // Relaxed: owner-only. The section has ended, so the calls run
            // outside it.
            if self.deferred.load(Ordering::Relaxed) {
                local::run_if_due();
            }
        } else {
            // Relaxed: nested exit publishes nothing.
            self.ctr.store(ctr - 1, Ordering::Relaxed);
        }
    }

    #[cold]
    #[inline(never)]
    fn wake_writer(&self) {
        self.waiting.store(false, Ordering::Relaxed);
        grace::wake_writer();
    }

    fn ctr(&self) -> u64 {
        // Relaxed: the writer's fences around its scans order it.
        self.ctr.load(Ordering::Relaxed)
    }

    /// Whether this record holds up a grace period that set the counter to
    /// `gp`: it is inside a section that began before that.
    pub(crate) fn blocks(&self, gp: u64) -> bool {
        blocks(self.ctr(), gp)
    }

    /// Asks the owner to wake the writer when it leaves its section.
    pub(crate) fn set_waiting(&self, on: bool) {
        // Relaxed: ordered by the writer's fence that follows, which pairs
        // with the reader's fence in `exit`.
        self.waiting.store(on, Ordering::Relaxed);
    }

    /// Owner only: whether the outermost exit must run deferred calls.
    pub(crate) fn set_deferred(&self, on: bool) {
        // Relaxed: owner-only flag.
        self.deferred.store(on, Ordering::Relaxed);
    }

    /// The owner's read-section depth (racy when read from another thread:
    /// for reports only).
    pub(crate) fn depth(&self) -> usize {
        // The mask keeps the value below 2^24, so it fits any usize.
        (self.ctr() & DEPTH_MASK) as usize
    }

    /// Where the owner's current (or last) outermost section was entered.
    pub(crate) fn entered_at(&self) -> Option<&'static Location<'static>> {
        let at = self.entered_at.load(Ordering::Relaxed);
        // SAFETY: `entered_at` only ever holds null or a pointer made from a
        // `&'static Location<'static>` in `enter`, so it is valid forever.
        unsafe { at.as_ref() }
    }
}

/// Releases the thread's record when the thread exits.
struct Registration(Cell<Option<&'static Record>>);

impl Drop for Registration {
    fn drop(&mut self) {
        let Some(record) = self.0.get() else { return };
        // When a loom model fails, loom destroys the remaining thread-locals
        // after it has dropped the model's statics (the registry among
        // them); touching the registry then would turn the model's failure
        // into an abort that hides it.
        #[cfg(loom)]
        if std::thread::panicking() {
            return;
        }
        let depth = record.depth();
        if depth == 0 {
            // The fast-path thread-local has no destructor, so it is still
            // accessible (under loom it may already be gone: ignore that).
            // Forget the record before it can be reused by another thread.
            let _ = LOCAL.try_with(|local| local.set(None));
            registry().release(record);
        } else {
            // The record is never released, so the thread keeps it: its
            // later thread-local destructors still see their section (and
            // get `InReadSection` instead of a hang), and the guard's drop
            // still ends it.
            // The thread is exiting inside a read section: a guard was
            // leaked (`mem::forget`) or lives in another thread-local that is
            // destroyed later. Closing the section here would be unsound in
            // the second case (that destructor may still read through the
            // guard), so the section stays open: the record stays owned,
            // marked exited, and keeps blocking grace periods, which stall
            // reports will name. Say so now, with the location.
            let who = registry().mark_exited(record);
            let at = record
                .entered_at()
                .map_or_else(|| "an unknown location".to_owned(), |l| l.to_string());
            eprintln!(
                "rcu-defer: {who} is exiting inside a read section (depth {depth}, entered at \
                 {at}); grace periods will wait until its guard is dropped, which for a \
                 leaked guard is never"
            );
        }
    }
}

#[cold]
#[inline(never)]
fn register_current_thread() -> &'static Record {
    let current = thread::current();
    let owner = Owner {
        name: current.name().map(str::to_owned),
        id: format!("{:?}", current.id()),
        exited: false,
    };
    let record = registry().acquire(owner);
    // A thread that registers while its thread-locals are being destroyed
    // cannot arm the release; its record then stays owned (and quiescent
    // between sections) for the life of the process.
    let _ = REGISTRATION.try_with(|registration| registration.0.set(Some(record)));
    LOCAL.with(|local| local.set(Some(record)));
    record
}

#[inline(always)]
fn current_record() -> &'static Record {
    match LOCAL.with(Cell::get) {
        Some(record) => record,
        None => register_current_thread(),
    }
}

/// The current thread's record if it has registered.
pub(crate) fn current_record_if_registered() -> Option<&'static Record> {
    LOCAL.try_with(Cell::get).ok().flatten()
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
/// Never blocks.
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
    let record = current_record();
    record.enter(at);
    ReadGuard {
        record,
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
    current_record_if_registered().map_or(0, Record::depth)
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
#[must_use = "the read section ends as soon as the guard is dropped"]
pub struct ReadGuard {
    record: &'static Record,
    /// A raw pointer makes the guard `!Send` and `!Sync`: the section
    /// belongs to the thread that entered it.
    _not_send: PhantomData<*const ()>,
}

/// Dropping the outermost guard runs the thread's pending
/// [`call_local`](crate::call_local) calls (unless a
/// [`DeferScope`](crate::DeferScope) is still open).
///
/// # Panics
///
/// Resumes the first panic of a pending call after all of them have run
/// (unless the thread is already unwinding; then such panics are reported on
/// stderr and dropped).
impl Drop for ReadGuard {
    #[inline]
    fn drop(&mut self) {
        self.record.exit();
    }
}

impl fmt::Debug for ReadGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadGuard")
            .field("depth", &self.record.depth())
            .field("entered_at", &self.record.entered_at())
            .finish()
    }
}
