//! A torture test in the spirit of the Linux kernel's rcutorture: readers
//! hammer RCU-protected objects while writers retire them as fast as they
//! can, and an object that RCU would free is *marked dead* instead, so that
//! a reader that ever sees a dead object fails the test by an assertion.
//!
//! Two structures are tortured at once:
//!
//! - an `RcuCell<Slot>` updated by one updater that cycles through
//!   `replace`, `replace_sync` and `update`. Dropping a `Slot` (which the
//!   cell does after a grace period) marks its `Item` dead; the `Item`
//!   itself is reference-counted and outlives the mark, so the check is a
//!   plain load. (The cell's own box around the `Slot` is freed as usual:
//!   a grace-period bug would make that one load from the box a
//!   use-after-free, but the dead mark is what the test detects.)
//! - a ring of slots that are never freed, published by an index, and
//!   retired with `synchronize_rcu` or `call_rcu` by a second writer: this
//!   part has no unsafe memory at all. A slot is reused only after it was
//!   marked dead, with a new generation number, so a reader can tell a slot
//!   that was retired or reused under it.
//!
//! The default run takes about 2 s per flavor (the default flavor in this
//! process, the fence flavor in a child process, at the same time);
//! `torture_long` (ignored by default) runs for `RCU_DEFER_TORTURE_SECS`
//! seconds (60 if unset):
//!
//! ```text
//! RCU_DEFER_TORTURE_SECS=600 cargo test --release --test torture -- --ignored --nocapture
//! ```

mod common;

use common::{child_command, is_child, output_within, within_limit, MARKER};
use rcu_defer::{
    call_rcu, drain_call_rcu, flavor, read_lock, set_stall_handler, set_stall_timeout,
    synchronize_rcu, Flavor, RcuCell, StallReport,
};
use std::env;
use std::panic::resume_unwind;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The default run's duration.
const DEFAULT_RUN: Duration = Duration::from_secs(2);
/// How much longer than its planned duration a run may take before it is
/// taken for a hang.
const HANG_MARGIN: Duration = Duration::from_secs(60);
/// Any grace period that waits this long during the torture is a failure:
/// readers never stay in a section for more than a fraction of a
/// millisecond on purpose.
const STALL_LIMIT: Duration = Duration::from_secs(10);

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
}

/// What the cell holds. Dropping it (which the cell does once no reader can
/// see it) marks the item dead and counts the retirement.
struct Slot {
    item: Arc<Item>,
    retired: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let was_dead = self.item.dead.swap(true, Ordering::SeqCst);
        assert!(!was_dead, "item {} retired twice", self.item.seq);
        self.retired.fetch_add(1, Ordering::SeqCst);
    }
}

fn new_slot(seq: u64, retired: &Arc<AtomicUsize>) -> Slot {
    Slot {
        item: Arc::new(Item {
            seq,
            check: seq ^ MAGIC,
            dead: AtomicBool::new(false),
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
    ring_syncs: AtomicU64,
    ring_call_rcus: AtomicU64,
    /// How many updates behind the newest the item a reader saw was when its
    /// section ended (rcutorture's "pipeline"); the last bucket is "or more".
    age: [AtomicU64; 8],
}

static STALLS: AtomicUsize = AtomicUsize::new(0);

fn count_stall(report: &StallReport) {
    eprintln!("torture: stall: {report}");
    STALLS.fetch_add(1, Ordering::SeqCst);
}

fn reader(
    id: u64,
    cell: &RcuCell<Slot>,
    latest: &AtomicU64,
    ring: &Ring,
    stop: &AtomicBool,
    stats: &Stats,
) {
    let mut rng = Rng::new(id + 1);
    let mut last_seq = 0;
    let mut reads = 0u64;
    let mut nested = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let outer = read_lock();
        let extra: Vec<_> = (0..rng.below(3)).map(|_| read_lock()).collect();
        if !extra.is_empty() {
            nested += 1;
        }

        let item = Arc::clone(&cell.read(&outer).item);
        let index = ring.current.load(Ordering::Acquire);
        let ring_slot = &ring.slots[index];
        let generation = ring_slot.generation.load(Ordering::Acquire);

        let check = |when: &str| {
            assert_eq!(
                item.check,
                item.seq ^ MAGIC,
                "reader {id} saw a corrupt item"
            );
            assert!(
                !item.dead.load(Ordering::SeqCst),
                "reader {id} saw item {} retired {when} its section",
                item.seq
            );
            assert!(
                !ring_slot.dead.load(Ordering::SeqCst),
                "reader {id} saw ring slot {index} retired {when} its section"
            );
            assert_eq!(
                ring_slot.generation.load(Ordering::SeqCst),
                generation,
                "reader {id} saw ring slot {index} reused {when} its section"
            );
        };
        check("at the start of");
        assert!(
            item.seq >= last_seq,
            "reader {id} saw item {} after item {last_seq}",
            item.seq
        );
        last_seq = item.seq;

        // Stay a while, in a way that varies: the writers must get the
        // chance to retire what this section holds.
        match rng.below(100) {
            0..=84 => {
                for _ in 0..rng.below(200) {
                    std::hint::spin_loop();
                }
            }
            85..=97 => thread::yield_now(),
            _ => thread::sleep(Duration::from_micros(rng.below(200))),
        }
        check("before the end of");

        let age = latest.load(Ordering::Relaxed).saturating_sub(item.seq);
        stats.age[usize::try_from(age).unwrap_or(usize::MAX).min(7)]
            .fetch_add(1, Ordering::Relaxed);
        drop(extra);
        drop(outer);
        reads += 1;

        // Sometimes give the writers the CPU between sections too.
        if rng.below(16) == 0 {
            thread::yield_now();
        }
    }
    stats.reads.fetch_add(reads, Ordering::Relaxed);
    stats.nested_reads.fetch_add(nested, Ordering::Relaxed);
}

fn updater(
    cell: &RcuCell<Slot>,
    latest: &AtomicU64,
    retired: &Arc<AtomicUsize>,
    stop: &AtomicBool,
    stats: &Stats,
) -> u64 {
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let slot = new_slot(seq, retired);
        match seq % 3 {
            0 => {
                cell.replace(slot);
                stats.replaces.fetch_add(1, Ordering::Relaxed);
            }
            1 => {
                let old = cell.replace_sync(slot);
                assert_eq!(
                    old.item.seq,
                    seq - 1,
                    "replace_sync returned the wrong value"
                );
                assert!(!old.item.dead.load(Ordering::SeqCst));
                // Dropping it marks it dead: no reader can see it any more.
                drop(old);
                stats.replace_syncs.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                cell.update(|old| {
                    assert_eq!(old.item.seq, seq - 1, "update saw the wrong current value");
                    slot
                });
                stats.updates.fetch_add(1, Ordering::Relaxed);
            }
        }
        latest.store(seq, Ordering::Relaxed);
    }
    seq
}

fn ring_writer(ring: &Arc<Ring>, stop: &AtomicBool, stats: &Stats) {
    let mut generation = 0u64;
    let mut index = 0usize;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let old = index;
        index = (index + 1) % RING;
        let next = &ring.slots[index];
        // Reuse a slot only once it has been retired (its call_rcu may still
        // be pending).
        if !next.dead.load(Ordering::SeqCst) {
            drain_call_rcu();
            assert!(
                next.dead.load(Ordering::SeqCst),
                "a retirement callback never ran"
            );
        }
        generation += 1;
        next.generation.store(generation, Ordering::SeqCst);
        next.dead.store(false, Ordering::SeqCst);
        ring.current.store(index, Ordering::Release);
        if round % 2 == 0 {
            synchronize_rcu();
            ring.slots[old].dead.store(true, Ordering::SeqCst);
            stats.ring_syncs.fetch_add(1, Ordering::Relaxed);
        } else {
            let ring = Arc::clone(ring);
            call_rcu(move || ring.slots[old].dead.store(true, Ordering::SeqCst));
            stats.ring_call_rcus.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs the torture for `duration` and prints what happened.
fn torture(duration: Duration) {
    set_stall_timeout(Some(STALL_LIMIT));
    set_stall_handler(count_stall);
    let readers = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);

    let retired = Arc::new(AtomicUsize::new(0));
    let cell = Arc::new(RcuCell::new(new_slot(0, &retired)));
    let latest = Arc::new(AtomicU64::new(0));
    let ring = Arc::new(Ring {
        current: AtomicUsize::new(0),
        slots: (0..RING)
            .map(|i| RingSlot {
                generation: AtomicU64::new(0),
                // Every slot but the published one starts retired.
                dead: AtomicBool::new(i != 0),
            })
            .collect(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());

    let reader_threads: Vec<_> = (0..readers as u64)
        .map(|id| {
            let (cell, latest, ring, stop, stats) = (
                Arc::clone(&cell),
                Arc::clone(&latest),
                Arc::clone(&ring),
                Arc::clone(&stop),
                Arc::clone(&stats),
            );
            thread::Builder::new()
                .name(format!("torture-reader-{id}"))
                .spawn(move || reader(id, &cell, &latest, &ring, &stop, &stats))
                .unwrap()
        })
        .collect();
    let updater_thread = {
        let (cell, latest, retired, stop, stats) = (
            Arc::clone(&cell),
            Arc::clone(&latest),
            Arc::clone(&retired),
            Arc::clone(&stop),
            Arc::clone(&stats),
        );
        thread::Builder::new()
            .name("torture-updater".to_owned())
            .spawn(move || updater(&cell, &latest, &retired, &stop, &stats))
            .unwrap()
    };
    let ring_thread = {
        let (ring, stop, stats) = (Arc::clone(&ring), Arc::clone(&stop), Arc::clone(&stats));
        thread::Builder::new()
            .name("torture-ring-writer".to_owned())
            .spawn(move || ring_writer(&ring, &stop, &stats))
            .unwrap()
    };

    let started = Instant::now();
    thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut failure = None;
    for handle in reader_threads {
        if let Err(payload) = handle.join() {
            failure.get_or_insert(payload);
        }
    }
    let published = match updater_thread.join() {
        Ok(seq) => seq,
        Err(payload) => resume_unwind(payload),
    };
    if let Err(payload) = ring_thread.join() {
        failure.get_or_insert(payload);
    }
    if let Some(payload) = failure {
        resume_unwind(payload);
    }
    let ran = started.elapsed();

    // Every value the updater unpublished is retired exactly once, and only
    // those: the current one is retired when the cell goes.
    drain_call_rcu();
    let published = usize::try_from(published).unwrap();
    assert_eq!(retired.load(Ordering::SeqCst), published);
    assert!(!cell.read(&read_lock()).item.dead.load(Ordering::SeqCst));
    let cell = Arc::try_unwrap(cell).unwrap_or_else(|_| panic!("a thread still holds the cell"));
    drop(cell);
    assert_eq!(retired.load(Ordering::SeqCst), published + 1);

    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let ages: Vec<u64> = stats.age.iter().map(get).collect();
    println!(
        "torture ({} flavor, {readers} readers, {ran:.1?}): {} reads ({} nested), \
         {} cell updates ({} replace, {} replace_sync, {} update), \
         ring: {} synchronize_rcu + {} call_rcu retirements; \
         reader age in updates [0, 1, .., 7+]: {ages:?}",
        flavor(),
        get(&stats.reads),
        get(&stats.nested_reads),
        published,
        get(&stats.replaces),
        get(&stats.replace_syncs),
        get(&stats.updates),
        get(&stats.ring_syncs),
        get(&stats.ring_call_rcus),
    );
    assert_eq!(
        STALLS.load(Ordering::SeqCst),
        0,
        "grace periods stalled for {STALL_LIMIT:?}"
    );
    // The run did something: every thread ran its loop at least once (each
    // checks `stop` only after an iteration's work, and the first check
    // comes after they were started).
    assert!(get(&stats.reads) > 0 && published > 0);
}

#[test]
fn torture_readers_never_see_a_retired_object() {
    within_limit("torture", DEFAULT_RUN + HANG_MARGIN, || {
        torture(DEFAULT_RUN)
    });
}

#[test]
fn torture_readers_never_see_a_retired_object_in_the_fence_flavor() {
    const TEST: &str = "torture_readers_never_see_a_retired_object_in_the_fence_flavor";
    if is_child(TEST) {
        assert_eq!(flavor(), Flavor::Fence);
        within_limit("torture (fence)", DEFAULT_RUN + HANG_MARGIN, || {
            torture(DEFAULT_RUN)
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
    assert!(
        output.status.success() && stdout.contains(&format!("{MARKER}done")),
        "the fence-flavor torture failed:\n{stdout}\n{stderr}"
    );
}

#[test]
#[ignore = "long: RCU_DEFER_TORTURE_SECS seconds (default 60)"]
fn torture_long() {
    let secs: u64 = match env::var("RCU_DEFER_TORTURE_SECS") {
        Ok(value) => value.parse().unwrap_or_else(|_| {
            panic!("RCU_DEFER_TORTURE_SECS must be a number of seconds, not {value:?}")
        }),
        Err(_) => 60,
    };
    let duration = Duration::from_secs(secs);
    within_limit("long torture", duration + HANG_MARGIN, move || {
        torture(duration)
    });
}
