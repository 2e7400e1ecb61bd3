//! A torture test in the spirit of the Linux kernel's rcutorture: readers
//! hammer RCU-protected objects while writers retire them as fast as they
//! can, and an object that RCU would free is *marked dead* instead, so that
//! a reader that ever sees a dead object fails the test by an assertion.
//!
//! Everything below runs at once, for the run's duration:
//!
//! - an `RcuCell<Slot>` updated by one updater that cycles through
//!   `replace`, `replace_sync`, `update`, and `replace` followed by
//!   `synchronize_rcu`. Dropping a `Slot` (which the cell does after a grace
//!   period) marks its `Item` dead; the `Item` itself is reference-counted
//!   and outlives the mark, so the check is a plain load. (The cell's own
//!   box around the `Slot` is freed as usual: a grace-period bug would make
//!   that one load from the box a use-after-free, but the dead mark is what
//!   the test detects.)
//! - rcutorture's "pipe": each `Item` carries a grace-period age, 0 while
//!   published. The updater adds 1 when it unpublishes the item, and 1 each
//!   time a grace period has passed since (after its own `replace_sync` or
//!   `synchronize_rcu`, and when the cell's `call_rcu` drops the `Slot`).
//!   So age 1 is "retired, but a reader that found it may still hold it",
//!   and age 2 or more is "a grace period has passed since it was retired":
//!   no reader may ever see that. Readers record the age they see at the
//!   end of each section in a histogram [0, 1, 2+]; the run fails if the
//!   last bucket is not empty, and prints the histogram (`--nocapture`).
//! - a ring of slots that are never freed, published by an index, and
//!   retired with `synchronize_rcu` or `call_rcu` by a second writer: this
//!   part has no unsafe memory at all. A slot is reused only after it was
//!   marked dead, with a new generation number, so a reader can tell a slot
//!   that was retired or reused under it.
//! - `call_rcu` floods from several threads, in bursts of callbacks that
//!   each have an id: every id must run exactly once (a run count per id);
//!   a burst queued inside a read section must not run before the section
//!   ends; a flooder's `drain_call_rcu` must find its earlier bursts run.
//!   Flooders keep their backlog bounded by draining, so that a long run
//!   does not exhaust memory.
//! - threads created and destroyed constantly: short-lived readers that
//!   enter a few sections and exit, a few at a time, in a loop.
//! - online (QSBR) readers (`rcu_defer::online`): the same sections, and
//!   between them reads of the ring with no section at all, protected by
//!   the thread's quiescent states alone (a slot it found must stay alive
//!   until its next `quiescent()`); now and then a wait offline
//!   (`Online::offline`), a `synchronize_rcu` from the online thread, or
//!   the handle dropped and the thread online again.
//! - polled grace periods: the ring writer also retires slots against a
//!   cookie (`start_poll_synchronize_rcu`), polling it
//!   (`poll_state_synchronize_rcu`) or waiting for it
//!   (`cond_synchronize_rcu`).
//! - `call_local` inside the readers: each section records a deduplicated
//!   `call_local` (recorded twice: the second must be refused) and some
//!   `call_local_fn` closures; none may run before the outermost guard is
//!   dropped, each must have run exactly once, on its own thread and
//!   outside any section, when the drop returns.
//! - every `Item` and every flood callback holds a token counted in a
//!   "live objects" counter: once all threads have stopped and
//!   `drain_call_rcu` has returned, only the cell's current item may be
//!   live, and nothing once the cell is dropped.
//! - a stall handler that panics now and then: the stall timeout is 1 ms,
//!   and one reader section in a thousand sleeps past it, so grace periods
//!   (the updater's, the ring writer's, the `rcu-call` thread's) call the
//!   handler throughout the run; every 25th call panics (the first
//!   included). rcu-defer must catch the panic and let the grace period go
//!   on waiting: a panic that came out of it, a reader that saw a retired
//!   object, or a drain that did not finish fails the run, and the handler
//!   must have panicked at least once. (The threads that wait for grace periods and drains time
//!   their waits instead: one that took `STALL_LIMIT` fails the run.)
//!
//! - (Linux) a forker: every `FORK_EVERY` it forks the whole tortured
//!   process. The child, which has only the forker thread, must find no
//!   record of the parent's other threads in the registry, and must finish
//!   a grace period, a `call_rcu` + drain and an `RcuCell::replace_sync` of
//!   the run's cell (whose writer lock the updater may have held at the
//!   fork) within `FORK_CHILD_LIMIT`, after which it exits; the parent
//!   checks its exit status, and the run goes on.
//!
//! A second mix, in a child process of its own with the library's defaults,
//! is about the membarrier flavor's expedited barrier, which a grace period
//! sends only while some thread is an ordinary reader (not online): online
//! readers only (more of them), the same writers, flooders that queue no
//! burst inside a section, an updater and a ring writer that never enter a
//! read section, and no short-lived readers, through three phases of at
//! least a third of the run each:
//!
//! 1. online readers that never leave the online state: no grace period
//!    may send the barrier, and some must skip it;
//! 2. short-lived ordinary readers register, read and exit, and the online
//!    readers go offline, wait for grace periods and drop their handles:
//!    grace periods must send the barrier;
//! 3. once every online reader is online for good and every short-lived
//!    reader has exited (and one grace period later, for one that counted
//!    the readers before), no grace period may send the barrier again, and
//!    some must skip it.
//!
//! Every check of the first mix holds in each phase. Where the kernel offers
//! no membarrier, the child says so and passes.
//!
//! Thread counts scale with `std::thread::available_parallelism` (at least
//! two of each kind). Each default run takes about 2 s (the default flavor
//! in this process, the fence flavor and the online-only mix each in a
//! child process, all at the same time); `torture_long` and
//! `torture_long_with_online_readers_only` (ignored by default) run for
//! `RCU_DEFER_TORTURE_SECS` seconds (60 if unset; a positive number, whole
//! or decimal, e.g. `1.5`):
//!
//! ```text
//! RCU_DEFER_TORTURE_SECS=600 cargo test --release --test torture -- --ignored --nocapture
//! ```

mod common;

use common::{child_command, is_child, output_within, within_limit, MARKER};
use rcu_defer::{
    barrier_stats, call_local, call_local_fn, call_rcu, cond_synchronize_rcu, drain_call_rcu,
    flavor, in_read_section, online, poll_state_synchronize_rcu, read_depth, read_lock,
    set_stall_handler, set_stall_timeout, start_poll_synchronize_rcu, synchronize_rcu,
    BarrierStats, Flavor, RcuCell, StallReport,
};
use std::any::Any;
use std::collections::VecDeque;
use std::panic::{panic_any, resume_unwind, set_hook, take_hook};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

/// The default run's duration.
const DEFAULT_RUN: Duration = Duration::from_secs(2);
/// How much longer than its planned duration a run may take before it is
/// taken for a hang.
const HANG_MARGIN: Duration = Duration::from_secs(60);
/// Any wait for a grace period or a drain that takes this long during the
/// torture is a failure: readers never stay in a section for more than a
/// few milliseconds on purpose.
const STALL_LIMIT: Duration = Duration::from_secs(10);
/// The stall timeout during the torture: short, so that the stall handler
/// runs many times per run.
const STALL_TIMEOUT: Duration = Duration::from_millis(1);
/// One reader section in this many sleeps for `LONG_SECTION`, past the
/// stall timeout, so that grace periods stall in every run.
const LONG_SECTION_ONE_IN: u64 = 1000;
const LONG_SECTION: Duration = Duration::from_millis(2);
/// The stall handler panics on every this many calls (the first included).
const STALL_PANIC_EVERY: usize = 25;

/// The number of CPUs, which the thread counts follow.
fn cpus() -> usize {
    thread::available_parallelism().map_or(2, |n| n.get())
}

/// A small, fast, per-thread pseudo-random generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Counts itself in a run's live-object counter while it exists.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Live(Arc::clone(live))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// The RcuCell part.

const MAGIC: u64 = 0xA5A5_5A5A_C3C3_3C3C;

/// An object published through the cell.
struct Item {
    seq: u64,
    /// `seq ^ MAGIC`: a reader that sees garbage notices.
    check: u64,
    /// Set when RCU would have freed the object.
    dead: AtomicBool,
    /// The grace-period age (rcutorture's pipe count): 0 while published,
    /// +1 when unpublished, +1 per grace period known to have passed since.
    pipe: AtomicU64,
    _live: Live,
}

/// What the cell holds. Dropping it (which the cell does once no reader can
/// see it) marks the item dead, ages it and counts the retirement.
struct Slot {
    item: Arc<Item>,
    retired: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let was_dead = self.item.dead.swap(true, Ordering::SeqCst);
        assert!(!was_dead, "item {} retired twice", self.item.seq);
        self.item.pipe.fetch_add(1, Ordering::SeqCst);
        self.retired.fetch_add(1, Ordering::SeqCst);
    }
}

fn new_slot(seq: u64, retired: &Arc<AtomicUsize>, live: &Arc<AtomicUsize>) -> Slot {
    Slot {
        item: Arc::new(Item {
            seq,
            check: seq ^ MAGIC,
            dead: AtomicBool::new(false),
            pipe: AtomicU64::new(0),
            _live: Live::new(live),
        }),
        retired: Arc::clone(retired),
    }
}

// ---------------------------------------------------------------------------
// The ring part.

const RING: usize = 64;

/// A slot of the ring: never freed; `dead` is set where RCU would free it,
/// and `generation` changes each time it is reused.
struct RingSlot {
    generation: AtomicU64,
    dead: AtomicBool,
}

struct Ring {
    current: AtomicUsize,
    slots: Vec<RingSlot>,
}

// ---------------------------------------------------------------------------

/// Counts shared by all threads of a run.
#[derive(Default)]
struct Stats {
    reads: AtomicU64,
    nested_reads: AtomicU64,
    replaces: AtomicU64,
    replace_syncs: AtomicU64,
    updates: AtomicU64,
    synchronizes: AtomicU64,
    ring_syncs: AtomicU64,
    ring_call_rcus: AtomicU64,
    /// Ring retirements against a polled cookie, and how many of those
    /// found their grace period over at the first poll.
    ring_cookies: AtomicU64,
    ring_cookies_done_at_once: AtomicU64,
    /// Online readers' reads of the ring outside any section, quiescent
    /// states, offline waits, grace periods waited for from an online
    /// thread, and times an online reader dropped its handle and came back.
    online_bare_reads: AtomicU64,
    online_quiescents: AtomicU64,
    online_offline_waits: AtomicU64,
    online_synchronizes: AtomicU64,
    online_rejoins: AtomicU64,
    /// How many updates behind the newest the item a reader saw was when its
    /// section ended; the last bucket is "or more".
    behind: [AtomicU64; 8],
    /// The grace-period age of the item a reader saw when its section ended
    /// (rcutorture's pipe): [0, 1, 2+]. 2+ is a failure.
    pipe: [AtomicU64; 3],
    /// `call_local` and `call_local_fn` calls recorded inside sections...
    local_recorded: AtomicU64,
    /// ...and how many of them ran.
    local_ran: AtomicU64,
    short_threads: AtomicU64,
    short_sections: AtomicU64,
    flood_callbacks: AtomicU64,
    flood_bursts: AtomicU64,
    flood_bursts_in_section: AtomicU64,
    flood_drains: AtomicU64,
    /// Children forked and checked.
    forks: AtomicU64,
    /// The longest wait for a grace period or a drain, in microseconds.
    longest_wait_us: AtomicU64,
}

/// Which threads a run has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mix {
    /// Every kind of thread at once, for the whole run.
    Everything,
    /// Online readers, and no ordinary reader (no thread that enters a read
    /// section while not online) but in the middle third of the run (see
    /// `Phase`): the membarrier flavor's grace periods must skip the
    /// expedited barrier, and send it while ordinary readers come and go.
    OnlineOnly,
}

/// The phases of a `Mix::OnlineOnly` run, in `Shared::phase`.
mod phase {
    /// Online readers only, which stay online (quiescent states only).
    pub const ONLINE_ONLY: u8 = 0;
    /// Short-lived ordinary readers register, enter sections and exit;
    /// online readers go offline, wait for grace periods and drop their
    /// handles now and then.
    pub const MIXED: u8 = 1;
    /// Online readers only again: each online reader and the thread churn
    /// acknowledge it (`Shared::online_again`) once they have stopped
    /// leaving the online state and every ordinary reader has exited.
    pub const ONLINE_AGAIN: u8 = 2;
}

/// What all threads of a run share.
struct Shared {
    mix: Mix,
    /// The phase of a `Mix::OnlineOnly` run (see `phase`).
    phase: AtomicU8,
    /// Threads that have acknowledged `phase::ONLINE_AGAIN`.
    online_again: AtomicUsize,
    cell: RcuCell<Slot>,
    /// The sequence number the updater last published.
    latest: AtomicU64,
    ring: Arc<Ring>,
    stop: AtomicBool,
    stats: Stats,
    /// Slots the cell has dropped.
    retired: Arc<AtomicUsize>,
    /// Items and flood callbacks in existence.
    live: Arc<AtomicUsize>,
}

impl Shared {
    /// Whether online readers may leave the online state (go offline, wait
    /// for a grace period, drop their handle) now.
    fn may_leave_online(&self) -> bool {
        self.mix == Mix::Everything || self.phase.load(Ordering::SeqCst) == phase::MIXED
    }

    /// Whether ordinary readers may register now.
    fn may_register_ordinary(&self) -> bool {
        self.mix == Mix::Everything || self.phase.load(Ordering::SeqCst) == phase::MIXED
    }

    /// Whether this is a `Mix::OnlineOnly` run past its mixed phase.
    fn online_again(&self) -> bool {
        self.mix == Mix::OnlineOnly && self.phase.load(Ordering::SeqCst) == phase::ONLINE_AGAIN
    }
}

/// Readers that saw a grace-period age of 2 or more and said so.
static PIPE_REPORTS: AtomicUsize = AtomicUsize::new(0);

/// Calls of the stall handler, and how many of them panicked.
static STALL_CALLS: AtomicUsize = AtomicUsize::new(0);
static STALL_PANICS: AtomicUsize = AtomicUsize::new(0);

/// The payload of the stall handler's panics.
const HANDLER_PANIC: &str = "torture: the stall handler panics on purpose";

/// The stall handler: counts its calls and panics on every
/// `STALL_PANIC_EVERY`th. It runs on the thread whose grace period stalled,
/// inside that grace period.
fn panicking_stall_handler(_report: &StallReport) {
    if STALL_CALLS.fetch_add(1, Ordering::SeqCst) % STALL_PANIC_EVERY == 0 {
        STALL_PANICS.fetch_add(1, Ordering::SeqCst);
        panic_any(HANDLER_PANIC);
    }
}

fn is_handler_panic(payload: &(dyn Any + Send)) -> bool {
    payload.downcast_ref::<&str>() == Some(&HANDLER_PANIC)
}

/// Keeps the panic hook quiet about the stall handler's panics (rcu-defer
/// reports each one it catches on stderr); any other panic goes to the hook
/// that was in place. A handler's panic that comes out of rcu-defer is
/// named when the thread it killed is joined (`rethrow`).
fn hush_handler_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = take_hook();
        set_hook(Box::new(move |info| {
            if !is_handler_panic(info.payload()) {
                previous(info);
            }
        }));
    });
}

/// Re-raises a torture thread's panic on the calling thread.
fn rethrow(payload: Box<dyn Any + Send>) -> ! {
    if is_handler_panic(&*payload) {
        panic!("the stall handler's panic came out of rcu-defer and killed a torture thread");
    }
    resume_unwind(payload)
}

/// Runs `wait` (a grace period or a drain) and records how long it took.
fn timed<T>(stats: &Stats, wait: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = wait();
    let waited = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    stats.longest_wait_us.fetch_max(waited, Ordering::Relaxed);
    result
}

// ---------------------------------------------------------------------------
// Readers.

/// One reader thread's deferred local calls: each thread records its own
/// calls with its own tally, so that `call_local`'s deduplication is
/// predictable.
struct LocalTally {
    owner: ThreadId,
    ran: AtomicU64,
    /// Calls that ran on another thread or inside a read section.
    misplaced: AtomicU64,
}

impl LocalTally {
    fn new() -> Arc<Self> {
        Arc::new(LocalTally {
            owner: thread::current().id(),
            ran: AtomicU64::new(0),
            misplaced: AtomicU64::new(0),
        })
    }

    fn ran(&self) {
        if thread::current().id() != self.owner || in_read_section() {
            self.misplaced.fetch_add(1, Ordering::SeqCst);
        }
        self.ran.fetch_add(1, Ordering::SeqCst);
    }
}

/// One pointer value for every call site: `call_local` deduplicates by
/// function address, which is not unique per function.
static LOCAL_CALL: fn(&LocalTally) = local_call;

fn local_call(tally: &LocalTally) {
    tally.ran();
}

/// One read section: reads the cell and the ring, checks what it saw at the
/// start and before the end, stays a while, records deferred local calls,
/// and checks that they ran exactly once when the section ended.
fn section(shared: &Shared, who: &str, rng: &mut Rng, tally: &Arc<LocalTally>, last_seq: &mut u64) {
    let stats = &shared.stats;
    let ring = &shared.ring;
    let outer = read_lock();
    let extra: Vec<_> = (0..rng.below(3)).map(|_| read_lock()).collect();
    if !extra.is_empty() {
        stats.nested_reads.fetch_add(1, Ordering::Relaxed);
    }

    let item = Arc::clone(&shared.cell.read(&outer).item);
    let index = ring.current.load(Ordering::Acquire);
    let ring_slot = &ring.slots[index];
    let generation = ring_slot.generation.load(Ordering::Acquire);

    let check = |when: &str| {
        assert_eq!(item.check, item.seq ^ MAGIC, "{who} saw a corrupt item");
        assert!(
            !item.dead.load(Ordering::SeqCst),
            "{who} saw item {} retired {when} its section",
            item.seq
        );
        assert!(
            !ring_slot.dead.load(Ordering::SeqCst),
            "{who} saw ring slot {index} retired {when} its section"
        );
        assert_eq!(
            ring_slot.generation.load(Ordering::SeqCst),
            generation,
            "{who} saw ring slot {index} reused {when} its section"
        );
    };
    check("at the start of");
    assert!(
        item.seq >= *last_seq,
        "{who} saw item {} after item {last_seq}",
        item.seq
    );
    *last_seq = item.seq;

    // Deferred local calls: one deduplicated call (its duplicate refused)
    // and a few closures, none of which may run before the section ends.
    let ran_before = tally.ran.load(Ordering::SeqCst);
    let mut recorded = 0;
    if rng.below(2) == 0 {
        assert!(
            call_local(LOCAL_CALL, tally),
            "{who}: call_local refused the section's first call"
        );
        assert!(
            !call_local(LOCAL_CALL, tally),
            "{who}: call_local recorded a duplicate"
        );
        recorded += 1;
    }
    for _ in 0..rng.below(3) {
        let tally = Arc::clone(tally);
        call_local_fn(move || tally.ran());
        recorded += 1;
    }

    // Stay a while, in a way that varies: the writers must get the chance
    // to retire what this section holds. Rarely, long enough to stall a
    // grace period.
    if rng.below(LONG_SECTION_ONE_IN) == 0 {
        thread::sleep(LONG_SECTION);
    } else {
        match rng.below(100) {
            0..=84 => {
                for _ in 0..rng.below(200) {
                    std::hint::spin_loop();
                }
            }
            85..=97 => thread::yield_now(),
            _ => thread::sleep(Duration::from_micros(rng.below(200))),
        }
    }
    check("before the end of");

    let behind = shared
        .latest
        .load(Ordering::Relaxed)
        .saturating_sub(item.seq);
    stats.behind[usize::try_from(behind).unwrap_or(usize::MAX).min(7)]
        .fetch_add(1, Ordering::Relaxed);
    let pipe = item.pipe.load(Ordering::SeqCst);
    stats.pipe[usize::try_from(pipe).unwrap_or(usize::MAX).min(2)].fetch_add(1, Ordering::Relaxed);
    // Name the first few offenders; the histogram counts them all.
    if pipe >= 2 && PIPE_REPORTS.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!(
            "torture: {who} saw item {} at grace-period age {pipe} at the end of its section",
            item.seq
        );
    }

    drop(extra);
    assert_eq!(
        tally.ran.load(Ordering::SeqCst),
        ran_before,
        "{who}: a deferred local call ran before the outermost section ended"
    );
    drop(outer);
    let ran = tally.ran.load(Ordering::SeqCst) - ran_before;
    assert_eq!(
        ran, recorded,
        "{who}: the section's {recorded} deferred local calls did not each run once at its end"
    );
    assert_eq!(read_depth(), 0);
    stats.local_recorded.fetch_add(recorded, Ordering::Relaxed);
    stats.local_ran.fetch_add(ran, Ordering::Relaxed);
    stats.reads.fetch_add(1, Ordering::Relaxed);
}

/// Checks a reader thread's tally once it is done.
fn check_tally(who: &str, tally: &LocalTally) {
    assert_eq!(
        tally.misplaced.load(Ordering::SeqCst),
        0,
        "{who}: deferred local calls ran on another thread or inside a read section"
    );
}

fn reader(id: u64, shared: &Shared) {
    let who = format!("reader {id}");
    let mut rng = Rng::new(id + 1);
    let tally = LocalTally::new();
    let mut last_seq = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        section(shared, &who, &mut rng, &tally, &mut last_seq);
        // Sometimes give the writers the CPU between sections too.
        if rng.below(16) == 0 {
            thread::yield_now();
        }
    }
    check_tally(&who, &tally);
}

/// A ring slot an online reader found outside any section: it must stay
/// alive and unreused until the reader's next quiescent state.
struct BareRead {
    index: usize,
    generation: u64,
}

impl BareRead {
    /// Reads the ring's current slot, with no section.
    fn take(ring: &Ring) -> BareRead {
        let index = ring.current.load(Ordering::Acquire);
        BareRead {
            index,
            generation: ring.slots[index].generation.load(Ordering::Acquire),
        }
    }

    fn check(&self, ring: &Ring, who: &str, when: &str) {
        let slot = &ring.slots[self.index];
        assert!(
            !slot.dead.load(Ordering::SeqCst),
            "{who} saw ring slot {} retired {when} (read outside a section, before a quiescent \
             state)",
            self.index
        );
        assert_eq!(
            slot.generation.load(Ordering::SeqCst),
            self.generation,
            "{who} saw ring slot {} reused {when} (read outside a section, before a quiescent \
             state)",
            self.index
        );
    }
}

/// An online (QSBR) reader: sections as the other readers', reads of the
/// ring outside any section held until its next quiescent state, and now
/// and then an offline wait, a grace period of its own, or a new handle.
fn online_reader(id: u64, shared: &Shared) {
    let who = format!("online reader {id}");
    let stats = &shared.stats;
    let ring = &shared.ring;
    let mut rng = Rng::new(0x0B11_17E0 + id);
    let tally = LocalTally::new();
    let mut last_seq = 0;
    let mut handle = Some(online());
    let mut held: Vec<BareRead> = Vec::new();
    let mut acknowledged = false;
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(current) = handle.as_ref() else {
            handle = Some(online());
            stats.online_rejoins.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        // Online here, and from now on never leaving the online state.
        if !acknowledged && shared.online_again() {
            shared.online_again.fetch_add(1, Ordering::SeqCst);
            acknowledged = true;
        }
        let may_leave = shared.may_leave_online();
        section(shared, &who, &mut rng, &tally, &mut last_seq);
        held.push(BareRead::take(ring));
        stats.online_bare_reads.fetch_add(1, Ordering::Relaxed);
        for bare in &held {
            bare.check(ring, &who, "after a section");
        }
        match rng.below(64) {
            // A quiescent state ends what the bare reads may hold.
            0..=15 => {
                for bare in held.drain(..) {
                    bare.check(ring, &who, "at its quiescent state");
                }
                current.quiescent();
                stats.online_quiescents.fetch_add(1, Ordering::Relaxed);
            }
            // Going offline is a quiescent state too.
            16 if may_leave => {
                for bare in held.drain(..) {
                    bare.check(ring, &who, "before going offline");
                }
                current.offline(|| thread::sleep(Duration::from_micros(rng.below(300))));
                stats.online_offline_waits.fetch_add(1, Ordering::Relaxed);
            }
            // A grace period from an online thread goes offline for the
            // wait.
            17 if may_leave => {
                for bare in held.drain(..) {
                    bare.check(ring, &who, "before its own grace period");
                }
                timed(stats, synchronize_rcu);
                stats.online_synchronizes.fetch_add(1, Ordering::Relaxed);
            }
            // Dropping the handle takes the thread offline.
            18 if may_leave => {
                for bare in held.drain(..) {
                    bare.check(ring, &who, "before it dropped its handle");
                }
                handle = None;
            }
            _ => {}
        }
    }
    for bare in held.drain(..) {
        bare.check(ring, &who, "at the end of the run");
    }
    // (An ordinary reader from here until it exits: the run is over.)
    drop(handle);
    check_tally(&who, &tally);
}

/// Starts short-lived (ordinary) readers, `at_once` at a time, each
/// entering a few sections and exiting, until the run stops; in a
/// `Mix::OnlineOnly` run only in its mixed phase.
fn thread_churn(shared: &Arc<Shared>, at_once: usize) {
    let mut rng = Rng::new(0xC0FFEE);
    let mut next_id = 0u64;
    let mut acknowledged = false;
    while !shared.stop.load(Ordering::Relaxed) {
        if !shared.may_register_ordinary() {
            // Every thread of the last batch has been joined, so has exited.
            if !acknowledged && shared.online_again() {
                shared.online_again.fetch_add(1, Ordering::SeqCst);
                acknowledged = true;
            }
            thread::sleep(Duration::from_millis(1));
            continue;
        }
        let threads: Vec<_> = (0..at_once)
            .map(|_| {
                next_id += 1;
                let (id, sections) = (next_id, 1 + rng.below(4));
                let shared = Arc::clone(shared);
                thread::Builder::new()
                    .name(format!("torture-short-{id}"))
                    .spawn(move || {
                        let who = format!("short-lived reader {id}");
                        let mut rng = Rng::new(id.wrapping_mul(7919));
                        let tally = LocalTally::new();
                        let mut last_seq = 0;
                        for _ in 0..sections {
                            section(&shared, &who, &mut rng, &tally, &mut last_seq);
                        }
                        check_tally(&who, &tally);
                        sections
                    })
                    .unwrap()
            })
            .collect();
        for handle in threads {
            match handle.join() {
                Ok(sections) => {
                    shared.stats.short_threads.fetch_add(1, Ordering::Relaxed);
                    shared
                        .stats
                        .short_sections
                        .fetch_add(sections, Ordering::Relaxed);
                }
                Err(payload) => resume_unwind(payload),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The forker.

/// How often the forker forks.
const FORK_EVERY: Duration = Duration::from_millis(100);
/// How long a forked child may take for its checks.
const FORK_CHILD_LIMIT: Duration = Duration::from_secs(10);

/// Forks every `FORK_EVERY` until the run stops; each child checks that it
/// works (`in_forked_child`) and exits; a child that fails or hangs fails
/// the run.
#[cfg(target_os = "linux")]
fn forker(shared: &Shared) {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    while !shared.stop.load(Ordering::Relaxed) {
        thread::sleep(FORK_EVERY);
        // SAFETY: `fork` has no memory-safety preconditions. In the child
        // only this thread exists; it runs its checks and leaves with
        // `_exit`, never returning into code that expects the parent's
        // other threads.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let outcome = catch_unwind(AssertUnwindSafe(|| in_forked_child(shared)))
                .unwrap_or_else(|_| Err("the child's checks panicked".to_owned()));
            let code = match outcome {
                Ok(()) => 0,
                Err(why) => {
                    use std::io::Write;
                    let _ = writeln!(std::io::stderr(), "torture: forked child: {why}");
                    1
                }
            };
            // SAFETY: ends the child at once, running nothing of the
            // parent's (no atexit handlers, no destructors).
            unsafe { libc::_exit(code) };
        }
        let status = common::wait_child(pid, FORK_CHILD_LIMIT);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "a forked child failed its checks (wait status {status:#x}; its reason is on stderr)"
        );
        shared.stats.forks.fetch_add(1, Ordering::Relaxed);
    }
}

/// A forked child's checks (see the module documentation).
#[cfg(target_os = "linux")]
fn in_forked_child(shared: &Shared) -> Result<(), String> {
    let stats = rcu_defer::registry_stats();
    if stats.entries - stats.free_stand_ins > 1 {
        return Err(format!("records of the parent's threads: {stats:?}"));
    }
    let limit = FORK_CHILD_LIMIT / 3;
    rcu_defer::synchronize_rcu_timeout(limit).map_err(|e| format!("synchronize_rcu: {e}"))?;
    let seq = shared.latest.load(Ordering::SeqCst) + 1_000_000;
    // The old slot is dropped here, in the child, after the grace period.
    drop(
        shared
            .cell
            .replace_sync(new_slot(seq, &shared.retired, &shared.live)),
    );
    {
        let guard = read_lock();
        let item = &shared.cell.read(&guard).item;
        if item.dead.load(Ordering::SeqCst) || item.seq != seq {
            return Err("the cell does not hold the value just published".to_owned());
        }
    }
    call_rcu(|| ());
    rcu_defer::drain_call_rcu_timeout(limit).map_err(|e| format!("drain_call_rcu: {e}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Writers.

/// Publishes new items until the run stops, starting from `first`, the
/// cell's first item; returns the last sequence number published. Never
/// enters a read section, so that it is no reader (grace periods for
/// online readers alone send no expedited barrier).
fn updater(shared: &Shared, first: Arc<Item>) -> u64 {
    let stats = &shared.stats;
    let cell = &shared.cell;
    let mut seq = 0;
    // The item published now, and those unpublished since the updater last
    // waited for a grace period: the next grace period ages them.
    let mut current = first;
    let mut pending: Vec<Arc<Item>> = Vec::new();
    let age = |items: &mut Vec<Arc<Item>>| {
        for item in items.drain(..) {
            item.pipe.fetch_add(1, Ordering::SeqCst);
        }
    };
    while !shared.stop.load(Ordering::Relaxed) {
        seq += 1;
        let slot = new_slot(seq, &shared.retired, &shared.live);
        let next = Arc::clone(&slot.item);
        match seq % 4 {
            0 => {
                cell.replace(slot);
                stats.replaces.fetch_add(1, Ordering::Relaxed);
            }
            1 => {
                let old = timed(stats, || cell.replace_sync(slot));
                assert_eq!(
                    old.item.seq,
                    seq - 1,
                    "replace_sync returned the wrong value"
                );
                assert!(!old.item.dead.load(Ordering::SeqCst));
                // A grace period has passed since everything pending was
                // unpublished.
                age(&mut pending);
                old.item.pipe.fetch_add(1, Ordering::SeqCst);
                // Dropping it marks it dead and ages it again: no reader can
                // see it any more.
                drop(old);
                stats.replace_syncs.fetch_add(1, Ordering::Relaxed);
            }
            2 => {
                cell.update(|old| {
                    assert_eq!(old.item.seq, seq - 1, "update saw the wrong current value");
                    slot
                });
                stats.updates.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                cell.replace(slot);
                current.pipe.fetch_add(1, Ordering::SeqCst);
                pending.push(Arc::clone(&current));
                timed(stats, synchronize_rcu);
                age(&mut pending);
                stats.synchronizes.fetch_add(1, Ordering::Relaxed);
            }
        }
        if seq % 4 == 0 || seq % 4 == 2 {
            // Unpublished; its grace period is still to come.
            current.pipe.fetch_add(1, Ordering::SeqCst);
            pending.push(Arc::clone(&current));
        }
        current = next;
        shared.latest.store(seq, Ordering::Relaxed);
    }
    seq
}

fn ring_writer(shared: &Shared) {
    let ring = &shared.ring;
    let stats = &shared.stats;
    let mut generation = 0u64;
    let mut index = 0usize;
    let mut round = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        round += 1;
        let old = index;
        index = (index + 1) % RING;
        let next = &ring.slots[index];
        // Reuse a slot only once it has been retired (its call_rcu may still
        // be pending).
        if !next.dead.load(Ordering::SeqCst) {
            timed(stats, drain_call_rcu);
            assert!(
                next.dead.load(Ordering::SeqCst),
                "a retirement callback never ran"
            );
        }
        generation += 1;
        next.generation.store(generation, Ordering::SeqCst);
        next.dead.store(false, Ordering::SeqCst);
        ring.current.store(index, Ordering::Release);
        match round % 3 {
            0 => {
                timed(stats, synchronize_rcu);
                ring.slots[old].dead.store(true, Ordering::SeqCst);
                stats.ring_syncs.fetch_add(1, Ordering::Relaxed);
            }
            1 => {
                let ring = Arc::clone(ring);
                call_rcu(move || ring.slots[old].dead.store(true, Ordering::SeqCst));
                stats.ring_call_rcus.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                // A polled cookie: poll it for a while, then wait for what
                // is left of its grace period.
                let cookie = start_poll_synchronize_rcu();
                if poll_state_synchronize_rcu(cookie) {
                    stats
                        .ring_cookies_done_at_once
                        .fetch_add(1, Ordering::Relaxed);
                }
                for _ in 0..round % 8 {
                    if poll_state_synchronize_rcu(cookie) {
                        break;
                    }
                    thread::yield_now();
                }
                timed(stats, || cond_synchronize_rcu(cookie));
                assert!(
                    poll_state_synchronize_rcu(cookie),
                    "a cookie's grace period was not over after cond_synchronize_rcu"
                );
                ring.slots[old].dead.store(true, Ordering::SeqCst);
                stats.ring_cookies.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// call_rcu floods.

/// The most callbacks in one burst.
const BURST: u64 = 512;
/// A flooder drains once it has this many bursts not known to have run.
const BURSTS_OUTSTANDING: usize = 32;

/// A flooder's errors, counted by its callbacks.
#[derive(Default)]
struct FloodErrors {
    /// A callback that ran a second time.
    twice: AtomicU64,
    /// A callback that ran while the read section it was queued in was
    /// still open.
    early: AtomicU64,
}

/// Callbacks queued together, each with an id (its index).
struct Burst {
    runs: Box<[AtomicU8]>,
    ran: AtomicUsize,
    /// Set while the read section the burst was queued in is open.
    section_open: AtomicBool,
    errors: Arc<FloodErrors>,
}

impl Burst {
    fn complete(&self) -> bool {
        self.ran.load(Ordering::SeqCst) == self.runs.len()
    }

    /// Checks that each callback ran exactly once.
    fn check(&self, who: &str) {
        if let Some(id) = self.runs.iter().position(|r| r.load(Ordering::SeqCst) != 1) {
            panic!(
                "{who}: call_rcu callback {id} of a burst of {} ran {} times",
                self.runs.len(),
                self.runs[id].load(Ordering::SeqCst)
            );
        }
    }
}

fn flooder(id: u64, shared: &Shared) {
    let who = format!("flooder {id}");
    let stats = &shared.stats;
    let mut rng = Rng::new(0xF100D + id);
    let errors = Arc::new(FloodErrors::default());
    let mut bursts: VecDeque<Arc<Burst>> = VecDeque::new();
    let drain = |bursts: &mut VecDeque<Arc<Burst>>| {
        timed(stats, drain_call_rcu);
        stats.flood_drains.fetch_add(1, Ordering::Relaxed);
        for burst in bursts.drain(..) {
            assert!(
                burst.complete(),
                "{who}: drain_call_rcu returned before callbacks queued before it had run"
            );
            burst.check(&who);
        }
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let size = 1 + rng.below(BURST) as usize;
        // (A section on a thread that is not online makes it an ordinary
        // reader.)
        let in_section = shared.mix == Mix::Everything && rng.below(4) == 0;
        let burst = Arc::new(Burst {
            runs: (0..size).map(|_| AtomicU8::new(0)).collect(),
            ran: AtomicUsize::new(0),
            section_open: AtomicBool::new(in_section),
            errors: Arc::clone(&errors),
        });
        let guard = in_section.then(read_lock);
        for i in 0..size {
            let burst = Arc::clone(&burst);
            let live = Live::new(&shared.live);
            call_rcu(move || {
                let _live = live;
                if burst.section_open.load(Ordering::SeqCst) {
                    burst.errors.early.fetch_add(1, Ordering::SeqCst);
                }
                if burst.runs[i].fetch_add(1, Ordering::SeqCst) != 0 {
                    burst.errors.twice.fetch_add(1, Ordering::SeqCst);
                }
                burst.ran.fetch_add(1, Ordering::SeqCst);
            });
        }
        if let Some(guard) = guard {
            for _ in 0..rng.below(500) {
                std::hint::spin_loop();
            }
            // Cleared inside the section: a callback that still sees it set
            // ran before the section ended.
            burst.section_open.store(false, Ordering::SeqCst);
            drop(guard);
            stats
                .flood_bursts_in_section
                .fetch_add(1, Ordering::Relaxed);
        }
        stats.flood_bursts.fetch_add(1, Ordering::Relaxed);
        stats
            .flood_callbacks
            .fetch_add(size as u64, Ordering::Relaxed);
        bursts.push_back(burst);
        while bursts.front().is_some_and(|b| b.complete()) {
            bursts.pop_front().unwrap().check(&who);
        }
        if bursts.len() > BURSTS_OUTSTANDING || rng.below(64) == 0 {
            drain(&mut bursts);
        }
        // Leave the other threads some CPU: the flood is one load among
        // several, not the whole run.
        thread::yield_now();
    }
    drain(&mut bursts);
    assert_eq!(
        errors.early.load(Ordering::SeqCst),
        0,
        "{who}: call_rcu callbacks ran before a read section open when they were queued ended"
    );
    assert_eq!(
        errors.twice.load(Ordering::SeqCst),
        0,
        "{who}: call_rcu callbacks ran twice"
    );
}

// ---------------------------------------------------------------------------

/// Starts a named thread running `f` on the run's shared state.
fn spawn<T: Send + 'static>(
    shared: &Arc<Shared>,
    name: String,
    f: impl FnOnce(&Arc<Shared>) -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let shared = Arc::clone(shared);
    thread::Builder::new()
        .name(name)
        .spawn(move || f(&shared))
        .unwrap()
}

/// What grace periods' writer fences did (`barrier_stats`) between two
/// points of a run.
fn barriers_since(since: BarrierStats) -> BarrierStats {
    let now = barrier_stats();
    BarrierStats {
        expedited: now.expedited - since.expedited,
        skipped: now.skipped - since.skipped,
    }
}

/// What the expedited barrier did in the phases of a `Mix::OnlineOnly` run.
#[derive(Debug)]
struct PhaseBarriers {
    /// Across the first phase (online readers only).
    online_only: BarrierStats,
    /// Across the mixed phase.
    mixed: BarrierStats,
    /// From a grace period that began after every thread acknowledged the
    /// last phase, to the stop.
    online_again: BarrierStats,
}

/// Waits at least `at_least`, and then until `done()` holds; `false` at
/// once if a worker has ended before the run stopped (it panicked, which
/// its join re-raises). Past `deadline`, a hang: panics naming `what`.
fn wait_until(
    what: &str,
    at_least: Duration,
    deadline: Instant,
    workers: &[thread::JoinHandle<()>],
    done: impl Fn() -> bool,
) -> bool {
    let started = Instant::now();
    loop {
        if workers.iter().any(thread::JoinHandle::is_finished) {
            return false;
        }
        if started.elapsed() >= at_least && done() {
            return true;
        }
        assert!(
            Instant::now() < deadline,
            "torture: still waiting for {what} after {:?}: hang",
            started.elapsed()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Steers a `Mix::OnlineOnly` run through its phases (see `phase`), a third
/// of `duration` each at least, and each until the barrier did what the
/// phase is there to show; `None` if a worker ended early.
fn steer_online_only(
    shared: &Shared,
    duration: Duration,
    at_start: BarrierStats,
    workers: &[thread::JoinHandle<()>],
    acknowledgers: usize,
) -> Option<PhaseBarriers> {
    let third = duration / 3;
    let deadline = Instant::now() + duration + HANG_MARGIN / 2;
    let skipped_since = |since: BarrierStats| move || barriers_since(since).skipped > 0;

    let online_only_done = wait_until(
        "a grace period that skips the barrier (online readers only)",
        third,
        deadline,
        workers,
        skipped_since(at_start),
    );
    if !online_only_done {
        return None;
    }
    let online_only = barriers_since(at_start);
    let mixed_start = barrier_stats();

    shared.phase.store(phase::MIXED, Ordering::SeqCst);
    let mixed_done = wait_until(
        "a grace period that sends the barrier while ordinary readers come and go",
        third,
        deadline,
        workers,
        || {
            barriers_since(mixed_start).expedited > 0
                && shared.stats.short_threads.load(Ordering::Relaxed) > 0
        },
    );
    if !mixed_done {
        return None;
    }
    let mixed = barriers_since(mixed_start);

    shared.phase.store(phase::ONLINE_AGAIN, Ordering::SeqCst);
    let acknowledged = wait_until(
        "every online reader and the thread churn to leave the mixed phase",
        Duration::ZERO,
        deadline,
        workers,
        || shared.online_again.load(Ordering::SeqCst) == acknowledgers,
    );
    if !acknowledged {
        return None;
    }
    // A grace period may have loaded the count of ordinary readers before
    // the last of them left, and be about to send the barrier: this one
    // waits for it (grace periods run one at a time). This thread is no
    // reader, so its wait makes no thread ordinary.
    synchronize_rcu();
    let again_start = barrier_stats();
    let again_done = wait_until(
        "a grace period that skips the barrier again (every ordinary reader has exited)",
        third,
        deadline,
        workers,
        skipped_since(again_start),
    );
    if !again_done {
        return None;
    }
    Some(PhaseBarriers {
        online_only,
        mixed,
        online_again: barriers_since(again_start),
    })
}

/// Runs the torture for `duration` with the threads of `mix`, and prints
/// what happened.
fn torture(duration: Duration, mix: Mix) {
    hush_handler_panics();
    // rcu-defer reports each panic of the stall handler that it catches:
    // expected, counted below.
    let handler_panic_reports = common::reports::expect("the stall handler's panics", |report| {
        report.kind() == rcu_defer::ReportKind::CallbackPanicked
            && report.message().contains(HANDLER_PANIC)
    });
    set_stall_timeout(Some(STALL_TIMEOUT));
    set_stall_handler(panicking_stall_handler);
    let at_start = barrier_stats();
    let cpus = cpus();
    let (readers, online_readers) = match mix {
        Mix::Everything => (cpus.max(2), (cpus / 2).max(1)),
        Mix::OnlineOnly => (0, cpus.max(2)),
    };
    let flooders = (cpus / 2).max(2);
    let short_at_once = (cpus / 2).max(2);

    let retired = Arc::new(AtomicUsize::new(0));
    let live = Arc::new(AtomicUsize::new(0));
    let baseline = live.load(Ordering::SeqCst);
    let first = new_slot(0, &retired, &live);
    let first_item = Arc::clone(&first.item);
    let shared = Arc::new(Shared {
        mix,
        phase: AtomicU8::new(phase::ONLINE_ONLY),
        online_again: AtomicUsize::new(0),
        cell: RcuCell::new(first),
        latest: AtomicU64::new(0),
        ring: Arc::new(Ring {
            current: AtomicUsize::new(0),
            slots: (0..RING)
                .map(|i| RingSlot {
                    generation: AtomicU64::new(0),
                    // Every slot but the published one starts retired.
                    dead: AtomicBool::new(i != 0),
                })
                .collect(),
        }),
        stop: AtomicBool::new(false),
        stats: Stats::default(),
        retired: Arc::clone(&retired),
        live: Arc::clone(&live),
    });

    let mut workers = Vec::new();
    for id in 0..readers as u64 {
        workers.push(spawn(&shared, format!("torture-reader-{id}"), move |s| {
            reader(id, s);
        }));
    }
    for id in 0..online_readers as u64 {
        workers.push(spawn(&shared, format!("torture-online-{id}"), move |s| {
            online_reader(id, s);
        }));
    }
    for id in 0..flooders as u64 {
        workers.push(spawn(&shared, format!("torture-flooder-{id}"), move |s| {
            flooder(id, s);
        }));
    }
    workers.push(spawn(&shared, "torture-ring-writer".to_owned(), |s| {
        ring_writer(s);
    }));
    workers.push(spawn(
        &shared,
        "torture-thread-churn".to_owned(),
        move |s| {
            thread_churn(s, short_at_once);
        },
    ));
    #[cfg(target_os = "linux")]
    workers.push(spawn(&shared, "torture-forker".to_owned(), |s| forker(s)));
    let updater_thread = spawn(&shared, "torture-updater".to_owned(), move |s| {
        updater(s, first_item)
    });

    let started = Instant::now();
    let phases = match mix {
        Mix::Everything => {
            thread::sleep(duration);
            None
        }
        Mix::OnlineOnly => {
            // The online readers and the thread churn acknowledge the last
            // phase.
            let phases =
                steer_online_only(&shared, duration, at_start, &workers, online_readers + 1);
            if phases.is_none() {
                // A worker ended early: its join below says why.
                assert!(
                    workers.iter().any(thread::JoinHandle::is_finished),
                    "the online-only run ended early with no worker ended"
                );
            }
            phases
        }
    };
    let barriers = barriers_since(at_start);
    shared.stop.store(true, Ordering::Relaxed);
    let mut failure = None;
    for handle in workers {
        if let Err(payload) = handle.join() {
            failure.get_or_insert(payload);
        }
    }
    let published = match updater_thread.join() {
        Ok(seq) => seq,
        Err(payload) => rethrow(payload),
    };
    if let Some(payload) = failure {
        rethrow(payload);
    }
    let ran = started.elapsed();

    // Every value the updater unpublished is retired exactly once, and only
    // those: the current one is retired when the cell goes. Every callback
    // has run and dropped what it held: only the current item is live.
    timed(&shared.stats, drain_call_rcu);
    let published = usize::try_from(published).unwrap();
    assert_eq!(retired.load(Ordering::SeqCst), published);
    assert!(!shared
        .cell
        .read(&read_lock())
        .item
        .dead
        .load(Ordering::SeqCst));
    assert_eq!(
        live.load(Ordering::SeqCst),
        baseline + 1,
        "objects still live after every thread stopped and drain_call_rcu returned \
         (the cell's current item is the one expected)"
    );
    let shared =
        Arc::try_unwrap(shared).unwrap_or_else(|_| panic!("a thread still holds the run's state"));
    let stats = shared.stats;
    drop(shared.cell);
    assert_eq!(retired.load(Ordering::SeqCst), published + 1);
    assert_eq!(
        live.load(Ordering::SeqCst),
        baseline,
        "objects still live after the cell was dropped"
    );

    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let behind: Vec<u64> = stats.behind.iter().map(get).collect();
    let pipe: Vec<u64> = stats.pipe.iter().map(get).collect();
    let longest_wait = Duration::from_micros(get(&stats.longest_wait_us));
    eprintln!(
        "torture ({} flavor, {mix:?}, {ran:.1?}; {readers} readers, {online_readers} online readers, \
         {flooders} flooders, short-lived readers {short_at_once} at a time): \
         {} reads ({} nested, {} in {} short-lived threads), \
         online: {} reads outside sections, {} quiescent states, {} offline waits, \
         {} grace periods, {} new handles; \
         {} cell updates ({} replace, {} replace_sync, {} update, {} replace+synchronize_rcu), \
         ring: {} synchronize_rcu + {} call_rcu + {} polled-cookie retirements \
         ({} cookies done at their first poll), \
         flood: {} call_rcu callbacks in {} bursts ({} queued inside a section), {} drains, \
         call_local: {} recorded, {} ran; {} forked children checked; \
         stall handler: {} calls, {} panicked; longest wait for a grace period or drain: \
         {longest_wait:.1?}; \
         writer fences until the stop: {barriers:?}, by phase: {phases:?}; \
         reader grace-period age (pipe) [0, 1, 2+]: {pipe:?}; \
         reader age in updates [0, 1, .., 7+]: {behind:?}",
        flavor(),
        get(&stats.reads),
        get(&stats.nested_reads),
        get(&stats.short_sections),
        get(&stats.short_threads),
        get(&stats.online_bare_reads),
        get(&stats.online_quiescents),
        get(&stats.online_offline_waits),
        get(&stats.online_synchronizes),
        get(&stats.online_rejoins),
        published,
        get(&stats.replaces),
        get(&stats.replace_syncs),
        get(&stats.updates),
        get(&stats.synchronizes),
        get(&stats.ring_syncs),
        get(&stats.ring_call_rcus),
        get(&stats.ring_cookies),
        get(&stats.ring_cookies_done_at_once),
        get(&stats.flood_callbacks),
        get(&stats.flood_bursts),
        get(&stats.flood_bursts_in_section),
        get(&stats.flood_drains),
        get(&stats.local_recorded),
        get(&stats.local_ran),
        get(&stats.forks),
        STALL_CALLS.load(Ordering::SeqCst),
        STALL_PANICS.load(Ordering::SeqCst),
    );
    assert_eq!(
        pipe[2], 0,
        "readers saw objects a grace period after they were retired: pipe {pipe:?}"
    );
    assert_eq!(get(&stats.local_recorded), get(&stats.local_ran));
    assert!(
        longest_wait < STALL_LIMIT,
        "a wait for a grace period or a drain took {longest_wait:?}"
    );
    assert!(
        STALL_PANICS.load(Ordering::SeqCst) > 0,
        "the stall handler never panicked: no grace period waited {STALL_TIMEOUT:?}"
    );
    // Each caught panic is reported once, as the stall handler's: read
    // after the count, as a panic is counted before it is reported.
    let handler_panics = STALL_PANICS.load(Ordering::SeqCst);
    let reported = handler_panic_reports.taken();
    assert!(
        !reported.is_empty() && reported.len() <= handler_panics,
        "{} report(s) of the stall handler's {handler_panics} panic(s)",
        reported.len()
    );
    assert!(
        reported
            .iter()
            .all(|r| r.message().starts_with("the stall handler panicked: ")),
        "{reported:?}"
    );
    // The run did something: every thread ran its loop at least once (each
    // checks `stop` only after an iteration's work, and the first check
    // comes after they were started).
    assert!(get(&stats.reads) > 0 && published > 0);
    assert!(get(&stats.flood_callbacks) > 0 && get(&stats.short_threads) > 0);
    assert!(get(&stats.online_bare_reads) > 0 && get(&stats.online_quiescents) > 0);
    assert!(
        get(&stats.ring_cookies) > 0,
        "no slot was retired against a cookie"
    );
    assert!(
        get(&stats.forks) > 0 || cfg!(not(target_os = "linux")),
        "no child was forked"
    );
    if mix == Mix::OnlineOnly {
        let phases = phases.expect("the run went through its phases");
        assert_eq!(
            flavor(),
            Flavor::Membarrier,
            "the online-only run is about the membarrier flavor's barrier"
        );
        // Online readers only: no grace period sent the barrier.
        assert_eq!(phases.online_only.expedited, 0, "{phases:?}");
        assert!(phases.online_only.skipped > 0, "{phases:?}");
        // Ordinary readers came and went: grace periods sent it.
        assert!(phases.mixed.expedited > 0, "{phases:?}");
        // Every ordinary reader gone, every online reader online again:
        // grace periods skip it again, and none sends it.
        assert_eq!(phases.online_again.expedited, 0, "{phases:?}");
        assert!(phases.online_again.skipped > 0, "{phases:?}");
    }
}

#[test]
fn torture_readers_never_see_a_retired_object() {
    within_limit("torture", DEFAULT_RUN + HANG_MARGIN, || {
        torture(DEFAULT_RUN, Mix::Everything)
    });
}

#[test]
fn torture_readers_never_see_a_retired_object_in_the_fence_flavor() {
    const TEST: &str = "torture_readers_never_see_a_retired_object_in_the_fence_flavor";
    if is_child(TEST) {
        assert_eq!(flavor(), Flavor::Fence);
        within_limit("torture (fence)", DEFAULT_RUN + HANG_MARGIN, || {
            torture(DEFAULT_RUN, Mix::Everything)
        });
        println!("{MARKER}done");
        return;
    }
    // The flavor is chosen once per process: run this in a child.
    let mut command = child_command(TEST);
    command.env("RCU_DEFER_FLAVOR", "fence");
    let output = output_within(command, DEFAULT_RUN + HANG_MARGIN + HANG_MARGIN);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        output.status.success() && stdout.contains(&format!("{MARKER}done")),
        "the fence-flavor torture failed:\n{stdout}\n{stderr}"
    );
}

/// The run's duration of the long tortures: `RCU_DEFER_TORTURE_SECS`
/// seconds, 60 if unset.
fn long_run() -> Duration {
    common::from_env(
        "RCU_DEFER_TORTURE_SECS",
        Duration::from_secs(60),
        common::parse_secs,
    )
}

#[test]
#[ignore = "long: RCU_DEFER_TORTURE_SECS seconds (default 60)"]
fn torture_long() {
    let duration = long_run();
    within_limit("long torture", duration + HANG_MARGIN, move || {
        torture(duration, Mix::Everything)
    });
}

/// Runs the `Mix::OnlineOnly` torture for `duration` as `test`'s part in a
/// child process with the library's defaults (no `RCU_DEFER_FLAVOR`): the
/// expedited barrier is counted process-wide, and the other tortures of
/// this binary run ordinary readers. Where the kernel offers no membarrier
/// there is no barrier to skip: the child says so and passes.
fn online_only_in_child(test: &str, duration: Duration) {
    if is_child(test) {
        if !common::kernel_offers_membarrier() {
            assert_eq!(flavor(), Flavor::Fence);
            println!(
                "{MARKER}skip: this kernel offers no membarrier(2), so there is no barrier to skip"
            );
            return;
        }
        // With the defaults, where the kernel offers it.
        assert_eq!(flavor(), Flavor::Membarrier);
        within_limit("torture (online only)", duration + HANG_MARGIN, move || {
            torture(duration, Mix::OnlineOnly)
        });
        println!("{MARKER}done");
        return;
    }
    let mut command = child_command(test);
    // The long run's test is ignored unless asked for.
    command.arg("--include-ignored");
    command.env_remove("RCU_DEFER_FLAVOR");
    let output = output_within(command, duration + HANG_MARGIN + HANG_MARGIN);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        output.status.success()
            && (stdout.contains(&format!("{MARKER}done"))
                || stdout.contains(&format!("{MARKER}skip"))),
        "the online-only torture failed:\n{stdout}\n{stderr}"
    );
}

#[test]
fn torture_with_online_readers_only_skips_the_barrier_and_sends_it_while_ordinary_readers_come_and_go(
) {
    online_only_in_child(
        "torture_with_online_readers_only_skips_the_barrier_and_sends_it_while_ordinary_readers_come_and_go",
        DEFAULT_RUN,
    );
}

#[test]
#[ignore = "long: RCU_DEFER_TORTURE_SECS seconds (default 60)"]
fn torture_long_with_online_readers_only() {
    online_only_in_child("torture_long_with_online_readers_only", long_run());
}

/// Claim: `RCU_DEFER_TORTURE_SECS` takes whole and decimal seconds, and
/// refuses zero (a run that tests nothing and passes) and garbage with a
/// message naming the variable and what it accepts.
#[test]
fn the_torture_duration_setting_takes_decimal_seconds_and_refuses_zero() {
    const NAME: &str = "RCU_DEFER_TORTURE_SECS";
    let parse = |value| common::parse_secs(NAME, value);
    assert_eq!(parse("600"), Ok(Duration::from_secs(600)));
    assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse(" 0.25 "), Ok(Duration::from_millis(250)));
    for refused in [
        "0", "0.0", "-3", "1e-12", "inf", "NaN", "", "ten", "1.5s", "60 s",
    ] {
        let message = parse(refused).expect_err(refused);
        assert!(
            message.starts_with("RCU_DEFER_TORTURE_SECS must be a positive number of seconds")
                && message.ends_with(&format!("not {refused:?}")),
            "{message}"
        );
    }
}
