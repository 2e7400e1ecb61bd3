//! The registry of reader records: which records writers scan (each
//! thread's own, and the stand-ins of threads that exited inside a
//! section), who owns each, and the writer's side of a grace period's
//! wait: the scans, the wake-up requests, the stall report's view.
//!
//! Registration and thread exit (in the parent module) add and remove
//! entries under the registry lock; writers hold the same lock while they
//! read records, so a record is never read after its thread has gone.

#[cfg(not(loom))]
use super::LOCAL;
use super::{blocks, depth_of, flavor_signal, location, Record, LOW_MASK, ONLINE, WAITING};
#[cfg(not(loom))]
use crate::sync::Ordering;
use crate::sync::{global, lock, Mutex, MutexGuard};
#[cfg(not(loom))]
use crate::{fork, report};
use std::fmt;
use std::panic::Location;
use std::time::Instant;

global! {
    /// Every registered record, with the thread that owns it.
    static REGISTRY: Mutex<Registry> = Mutex::new(Registry { entries: Vec::new() });
}

/// Who owns a record, for reports.
#[derive(Clone, Debug)]
pub(crate) struct Owner {
    /// The thread's name, if it has one.
    pub(crate) name: Option<String>,
    /// The thread's id, formatted.
    pub(crate) id: String,
    /// The thread is exiting or has exited while inside a read section.
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
    /// Whether `record` is a thread's thread-local one (removed from the
    /// registry when the thread exits) rather than a leaked stand-in (kept,
    /// and reused once free).
    thread_local: bool,
    /// `None` while a stand-in is free for reuse.
    owner: Option<Owner>,
    /// The section (its `ctr` without the low bits) a sleeping writer first
    /// found blocking, and when: how long a stalled reader has been inside,
    /// for reports.
    blocked_since: Option<(u64, Instant)>,
    /// The owner has gone online at some point (set under the registry
    /// lock before it first publishes an online state): writers read the
    /// record's online state first. Other records cost a writer's scan one
    /// cache line each, not two. Only a matter of cost: `ctr` holds the
    /// same counter value as the online state.
    may_be_online: bool,
}

impl Entry {
    /// The value writers judge the entry's record by (see
    /// `Record::published`).
    #[inline]
    fn published(&self) -> u64 {
        if self.may_be_online {
            self.record.published()
        } else {
            self.record.ctr()
        }
    }
}

/// A reader that holds up a grace period, as a writer saw it.
pub(crate) struct Blocker {
    pub(crate) owner: Option<Owner>,
    pub(crate) depth: usize,
    pub(crate) entered_at: Option<&'static Location<'static>>,
    /// When a writer first found this section blocking, if one has slept on it.
    pub(crate) blocked_since: Option<Instant>,
    /// For an online thread: where it went online and where it last
    /// reported a quiescent state (`None`: not since it went online).
    pub(crate) online: Option<OnlineBlocker>,
}

/// What a stall report says about an online thread that holds up a grace
/// period.
pub(crate) struct OnlineBlocker {
    pub(crate) online_at: Option<&'static Location<'static>>,
    pub(crate) quiescent_at: Option<&'static Location<'static>>,
}

/// The registry of reader records. Scanned by writers under its lock;
/// registration and thread exit take the same lock.
pub(crate) struct Registry {
    entries: Vec<Entry>,
}

impl Registry {
    /// Whether any record holds up the grace period that set the counter
    /// to `gp` (see `blocks`). A free record is always quiescent.
    pub(crate) fn any_blocks(&self, gp: u64) -> bool {
        self.entries.iter().any(|e| blocks(e.published(), gp))
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
        let base = flavor_signal();
        for entry in &mut self.entries {
            entry.record.set_signal(base | WAITING);
            let ctr = entry.published();
            if blocks(ctr, gp) {
                let section = ctr & !LOW_MASK;
                if entry.blocked_since.map(|(seen, _)| seen) != Some(section) {
                    entry.blocked_since = Some((section, now));
                }
            }
        }
    }

    /// After the writer's fence: withdraws the wake-up request from readers
    /// that have left, and says whether any still blocks `gp`.
    pub(crate) fn unmark_quiescent(&mut self, gp: u64) -> bool {
        let base = flavor_signal();
        let mut any = false;
        for entry in &self.entries {
            if blocks(entry.published(), gp) {
                any = true;
            } else {
                entry.record.set_signal(base);
            }
        }
        any
    }

    /// The readers that block `gp`, for a stall report.
    pub(crate) fn blockers(&self, gp: u64) -> Vec<Blocker> {
        self.entries
            .iter()
            .filter_map(|entry| {
                let ctr = entry.published();
                blocks(ctr, gp).then(|| Blocker {
                    owner: entry.owner.clone(),
                    depth: depth_of(entry.record.ctr()),
                    entered_at: entry.record.entered_at(),
                    blocked_since: entry
                        .blocked_since
                        .and_then(|(seen, at)| (seen == ctr & !LOW_MASK).then_some(at)),
                    online: (ctr & ONLINE != 0).then(|| OnlineBlocker {
                        online_at: location(&entry.record.online_at),
                        quiescent_at: location(&entry.record.quiescent_at),
                    }),
                })
            })
            .collect()
    }

    /// The records whose sections have guest notifications queued, for the
    /// watchdog.
    #[cfg(not(loom))]
    pub(crate) fn held_sections(&self) -> Vec<super::held::HeldSection> {
        self.entries
            .iter()
            .filter_map(|entry| {
                let word = entry.record.held.load();
                (word != 0).then(|| super::held::HeldSection {
                    key: entry.record as *const Record as usize,
                    word,
                    owner: entry.owner.clone(),
                    entered_at: entry.record.entered_at(),
                })
            })
            .collect()
    }

    /// Adds a thread's own record.
    pub(super) fn add_thread_local(&mut self, record: &'static Record, owner: Owner) {
        self.entries.push(Entry {
            record,
            thread_local: true,
            owner: Some(owner),
            blocked_since: None,
            may_be_online: false,
        });
    }

    /// A stand-in record for `owner`: a free one, or a new leaked one.
    ///
    /// Stand-ins are never freed, and a new one is made only when none is
    /// free: there are never more than the most that were ever in use at
    /// once, that is, threads that were exiting or had exited inside a read
    /// section at the same time.
    pub(super) fn acquire_stand_in(&mut self, owner: Owner) -> &'static Record {
        let i = self.stand_in_index(owner);
        self.entries[i].record
    }

    /// The index of a stand-in entry now owned by `owner`: a free one, or a
    /// new leaked one. Its record is quiescent.
    pub(super) fn stand_in_index(&mut self, owner: Owner) -> usize {
        let free = self
            .entries
            .iter()
            .position(|e| !e.thread_local && e.owner.is_none());
        if let Some(i) = free {
            let entry = &mut self.entries[i];
            entry.owner = Some(owner);
            entry.blocked_since = None;
            return i;
        }
        let record: &'static Record = Box::leak(Box::new(Record::stand_in()));
        self.entries.push(Entry {
            record,
            thread_local: false,
            owner: Some(owner),
            blocked_since: None,
            may_be_online: false,
        });
        self.entries.len() - 1
    }

    /// Removes the entry at `i` (a thread's own record), and gives memory
    /// back once the registry is mostly empty: after many threads have come
    /// and gone, it holds no more than a few times what the threads alive
    /// now need.
    pub(super) fn remove(&mut self, i: usize) {
        self.entries.swap_remove(i);
        let capacity = self.entries.capacity();
        if capacity > REGISTRY_KEEP && self.entries.len() <= capacity / 4 {
            self.entries.shrink_to((capacity / 2).max(REGISTRY_KEEP));
        }
    }

    pub(super) fn position(&self, record: &Record) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| std::ptr::eq(e.record, record))
    }

    /// Writers read `record`'s online state from now on (see
    /// `Entry::may_be_online`).
    pub(super) fn mark_may_be_online(&mut self, record: &Record) {
        if let Some(i) = self.position(record) {
            self.entries[i].may_be_online = true;
        }
    }

    /// A stand-in for the thread that owns entry `i`, which is exiting
    /// inside a read section: owned by the same owner, marked exited, and
    /// carrying when a writer first saw the section block. Returns its
    /// record and the owner's name for reports; the caller copies the
    /// section into the record, then removes entry `i`.
    pub(super) fn stand_in_for(&mut self, i: usize) -> (&'static Record, String) {
        let mut owner = self.entries[i].owner.clone().unwrap_or_else(|| Owner {
            name: None,
            id: "a thread".to_owned(),
            exited: true,
        });
        owner.exited = true;
        let who = owner.to_string();
        let blocked_since = self.entries[i].blocked_since;
        let s = self.stand_in_index(owner);
        self.entries[s].blocked_since = blocked_since;
        (self.entries[s].record, who)
    }

    /// Takes a record out of use: a thread's own record leaves the
    /// registry, a stand-in becomes free for reuse.
    pub(super) fn release(&mut self, record: &Record) {
        if let Some(i) = self.position(record) {
            if self.entries[i].thread_local {
                self.remove(i);
            } else {
                self.entries[i].owner = None;
            }
        }
    }
}

/// The registry's capacity (in entries) that it keeps however few threads
/// are registered: below it, it never shrinks.
const REGISTRY_KEEP: usize = 64;

/// Locks the registry (writers scan it; registration and exit change it),
/// its fork hook registered first.
pub(crate) fn registry() -> MutexGuard<'static, Registry> {
    #[cfg(not(loom))]
    fork::register(&FORK_HOOK).unwrap_or_else(report::fork_handlers_failed);
    lock(&REGISTRY)
}

// The registry's lock across a `fork()` (see `fork`), and its repair in
// the child.
#[cfg(not(loom))]
fork::lock_hook!(Registry, REGISTRY, Registry, repair: |registry| registry.after_fork_child());

#[cfg(not(loom))]
impl Registry {
    /// In the child of a fork, before the lock is released: only the
    /// forking thread exists, so only its records stay. The records of the
    /// other threads leave the registry (their sections cannot end here,
    /// and no stall report must name them), and the stand-ins they held
    /// become free. The forking thread keeps its own record (and the
    /// stand-in that publishes its section, if it forked while exiting
    /// inside one), with its open section, if any.
    fn after_fork_child(&mut self) {
        let (own, own_stand_in, own_counted) = LOCAL
            .try_with(|local| {
                let own: *const Record = &local.record;
                let stand_in = local.stand_in.get().map(|r| r as *const Record);
                (own, stand_in, local.counted.get())
            })
            .unwrap_or((std::ptr::null(), None, false));
        // Only the forking thread can be an ordinary reader here.
        super::reset_ordinary_after_fork(own_counted);
        self.entries.retain_mut(|entry| {
            let record: *const Record = entry.record;
            if record == own || Some(record) == own_stand_in {
                return true;
            }
            if entry.thread_local {
                return false;
            }
            // Relaxed: the child runs one thread (this one), and it holds
            // the registry lock.
            entry.record.ctr.store(0, Ordering::Relaxed);
            entry.record.signal.store(0, Ordering::Relaxed);
            entry.owner = None;
            entry.blocked_since = None;
            true
        });
    }
}

/// What the registry holds, for tests of its memory use.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegistryStats {
    /// Registered records: threads' own records and stand-ins.
    pub entries: usize,
    /// Entries the registry has room for without allocating.
    pub capacity: usize,
    /// Stand-ins, free or in use (each a leaked record).
    pub stand_ins: usize,
    /// Stand-ins free for reuse.
    pub free_stand_ins: usize,
}

/// What the registry holds now. Not part of the API: for tests.
#[doc(hidden)]
pub fn registry_stats() -> RegistryStats {
    let registry = registry();
    let stand_ins = registry.entries.iter().filter(|e| !e.thread_local);
    RegistryStats {
        entries: registry.entries.len(),
        capacity: registry.entries.capacity(),
        stand_ins: stand_ins.clone().count(),
        free_stand_ins: stand_ins.filter(|e| e.owner.is_none()).count(),
    }
}
