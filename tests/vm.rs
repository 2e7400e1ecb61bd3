//! Claims about `rcu_defer::vm::GuestMemoryRcu`, the RCU drop-in for
//! `vm_memory::GuestMemoryAtomic` (feature `vm-memory`, which the
//! dev-dependency on this crate turns on for the tests).
//!
//! The maps under test are real `GuestMemoryMmap`s, so a region whose last
//! owner is dropped is really unmapped: a reader still using it would fault.
//! [`Tracked`] wraps one and records its drop (which map generation, on
//! which thread, inside a read section or not) in a [`Ledger`], which
//! readers consult while they still hold a handle on that generation.

mod common;

use common::{child_command, is_child, markers, output_within, recv, within, HANG_LIMIT, MARKER};
use rcu_defer::vm::{GuestMemoryRcu, GuestMemoryRcuHandle};
use rcu_defer::{drain_call_rcu, in_read_section, read_depth};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryBackend,
    GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress,
};

/// The guest RAM every test map starts with: one region at guest address 0.
const RAM_SIZE: usize = 0x1_0000;
/// Where the tests keep a 4-byte value that tells maps apart.
const VALUE_AT: GuestAddress = GuestAddress(0x100);
/// Longer than the `call_rcu` batch window (5 ms), with room for a loaded
/// machine: a callback that could run has had time to.
const SETTLE: Duration = Duration::from_millis(60);

/// One drop of a [`Tracked`] map.
#[derive(Clone, Debug)]
struct DropRecord {
    generation: usize,
    /// The name of the thread that dropped it.
    thread: Option<String>,
    /// Whether that thread was inside a read section.
    in_section: bool,
}

/// Which generations of one test's maps have been dropped, how often, and
/// where.
struct Ledger {
    /// Drops per generation (the index), so that a double drop shows.
    drops: Vec<AtomicUsize>,
    /// Every drop, in the order they happened.
    records: Mutex<Vec<DropRecord>>,
}

impl Ledger {
    /// A ledger for generations `0..generations`.
    fn new(generations: usize) -> Arc<Self> {
        Arc::new(Ledger {
            drops: (0..generations).map(|_| AtomicUsize::new(0)).collect(),
            records: Mutex::new(Vec::new()),
        })
    }

    /// Map generation `generation`, over `mem`'s regions.
    fn map(self: &Arc<Self>, generation: usize, mem: GuestMemoryMmap) -> Tracked {
        assert!(generation < self.drops.len(), "ledger too small");
        Tracked {
            generation,
            mem,
            ledger: Arc::clone(self),
        }
    }

    /// How often generation `generation` has been dropped; `None` for a
    /// generation this ledger never issued (a reader that read one from a
    /// freed map).
    fn drop_count(&self, generation: usize) -> Option<usize> {
        // SeqCst, with the store in `Tracked::drop`: a reader that checks
        // after its copy sees a drop that came before the check.
        self.drops.get(generation).map(|d| d.load(Ordering::SeqCst))
    }

    /// Whether generation `generation` has been dropped (or is unknown).
    fn is_dropped(&self, generation: usize) -> bool {
        self.drop_count(generation) != Some(0)
    }

    /// How many drops have happened so far.
    fn total_drops(&self) -> usize {
        self.records().len()
    }

    /// Every drop so far, in order.
    fn records(&self) -> Vec<DropRecord> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Asserts that generations `0..generations` were each dropped exactly
    /// once, every time on the `rcu-call` thread outside any read section.
    fn assert_all_dropped_once_by_rcu_call(&self, generations: usize) {
        for generation in 0..generations {
            assert_eq!(
                self.drop_count(generation),
                Some(1),
                "map generation {generation} should have been dropped exactly once"
            );
        }
        let records = self.records();
        assert_eq!(records.len(), generations, "{records:?}");
        for record in records {
            assert_dropped_by_rcu_call(&record);
        }
    }
}

/// Asserts that a map was dropped on the `rcu-call` thread, outside any
/// read section.
fn assert_dropped_by_rcu_call(record: &DropRecord) {
    assert_eq!(
        record.thread.as_deref(),
        Some("rcu-call"),
        "map generation {} was dropped on the wrong thread",
        record.generation
    );
    assert!(
        !record.in_section,
        "map generation {} was dropped inside a read section",
        record.generation
    );
}

/// A `GuestMemoryMmap` that records its drop in a [`Ledger`]; regions are
/// the wrapped map's.
struct Tracked {
    generation: usize,
    mem: GuestMemoryMmap,
    ledger: Arc<Ledger>,
}

impl GuestMemoryBackend for Tracked {
    type R = GuestRegionMmap;

    fn num_regions(&self) -> usize {
        self.mem.num_regions()
    }

    fn find_region(&self, addr: GuestAddress) -> Option<&GuestRegionMmap> {
        self.mem.find_region(addr)
    }

    fn iter(&self) -> impl Iterator<Item = &GuestRegionMmap> {
        self.mem.iter()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Recorded before the fields are dropped, which unmaps any region
        // that only this map holds.
        if let Some(count) = self.ledger.drops.get(self.generation) {
            count.fetch_add(1, Ordering::SeqCst);
        }
        self.ledger
            .records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(DropRecord {
                generation: self.generation,
                thread: thread::current().name().map(str::to_owned),
                in_section: in_read_section(),
            });
    }
}

/// Fresh guest RAM (one region at 0) holding `value` at [`VALUE_AT`].
fn ram(value: u32) -> GuestMemoryMmap {
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_SIZE)]).expect("mmap guest RAM");
    mem.write_obj(value, VALUE_AT).unwrap();
    mem
}

/// The value at [`VALUE_AT`] in `mem`.
fn value<M: GuestMemory + ?Sized>(mem: &M) -> u32 {
    mem.read_obj::<u32>(VALUE_AT).expect("VALUE_AT is mapped")
}

// ---------------------------------------------------------------------------
// Hot-plug under readers.

/// The hot-plug claim's name, for its child process.
const HOT_PLUG_TEST: &str =
    "regions_hot_plugged_while_readers_copy_are_never_unmapped_under_a_handle";

/// Size of every region in the hot-plug claim.
const REGION: usize = 0x1_0000;
/// Hot-plug slots: guest addresses where a region comes and goes.
const SLOTS: [GuestAddress; 3] = [
    GuestAddress(0x10_0000),
    GuestAddress(0x20_0000),
    GuestAddress(0x30_0000),
];
/// The base of every region tag (each region's words all hold its tag).
const TAG_BASE: u64 = 0x5eed_0000_0000_0000;

/// Fills every word of `region` with `tag`.
fn fill(region: &GuestRegionMmap, tag: u64) {
    let words = vec![tag; region.len() as usize / 8];
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    region
        .write_slice(&bytes, MemoryRegionAddress(0))
        .expect("fill a fresh region");
}

/// Copies every region of `mem` out of guest memory by guest address and
/// checks it: each word holds the region's tag. Also checks that each slot
/// is readable exactly when the map has a region there.
fn copy_and_check(mem: &Tracked, buf: &mut [u8]) -> Result<(), String> {
    for region in mem.iter() {
        let start = region.start_addr();
        let len = region.len() as usize;
        mem.read_slice(&mut buf[..len], start)
            .map_err(|e| format!("copy from {start:?}: {e}"))?;
        let tag = u64::from_ne_bytes(buf[..8].try_into().unwrap());
        if tag & TAG_BASE != TAG_BASE {
            return Err(format!("region at {start:?} holds {tag:#x}, not a tag"));
        }
        if let Some(word) = buf[..len]
            .chunks_exact(8)
            .map(|w| u64::from_ne_bytes(w.try_into().unwrap()))
            .find(|&w| w != tag)
        {
            return Err(format!(
                "region at {start:?} (tag {tag:#x}) holds {word:#x}"
            ));
        }
    }
    for slot in SLOTS {
        let present = mem.find_region(slot).is_some();
        if mem.read_obj::<u64>(slot).is_ok() != present {
            return Err(format!(
                "slot {slot:?}: region present {present}, read disagrees"
            ));
        }
    }
    Ok(())
}

/// What the hot-plug claim's readers saw.
#[derive(Default)]
struct ReaderLog {
    /// Snapshots copied and checked.
    reads: AtomicUsize,
    /// Snapshots that had already been replaced when the reader finished
    /// with them: the reader held a handle across a hot-plug.
    stale: AtomicUsize,
    /// Everything that went wrong.
    violations: Mutex<Vec<String>>,
}

impl ReaderLog {
    /// Records something a reader saw that must not happen.
    fn violation(&self, what: String) {
        self.violations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(what);
    }
}

/// Claim: a writer thread plugs and unplugs regions (lock, build the next
/// map from the current one with `insert_region`/`remove_region`, replace)
/// while reader threads copy every region out of guest memory through
/// handles, and no reader ever sees an unmapped region: every copy
/// succeeds with the region's own contents, and no map generation is
/// dropped while a reader holds a handle on it (each reader checks the
/// ledger after its copy, before dropping its handle). Every map is dropped
/// once, on the `rcu-call` thread, and every unplugged region is really
/// freed (unmapped) by the end.
///
/// It runs in a child process: if the claim is false, a reader may fault on
/// an unmapped region, and that must fail this test with a message rather
/// than kill every test in the binary.
#[test]
fn regions_hot_plugged_while_readers_copy_are_never_unmapped_under_a_handle() {
    if is_child(HOT_PLUG_TEST) {
        let summary = within("hot-plug under readers", hot_plug_under_readers);
        println!("{MARKER}{summary}");
        return;
    }
    let output = output_within(child_command(HOT_PLUG_TEST), HANG_LIMIT + HANG_LIMIT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = output.status.signal() {
            panic!(
                "the hot-plug child died of signal {signal} (11 is SIGSEGV: a reader touched \
                 unmapped guest memory)\n{stdout}\n{stderr}"
            );
        }
    }
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{stderr}"
    );
    let summary = markers(&output);
    assert_eq!(summary.len(), 1, "{stdout}");
    println!("hot-plug child: {}", summary[0]);
}

/// The hot-plug claim's body (in the child process); returns a summary.
fn hot_plug_under_readers() -> String {
    /// Reader threads copying from guest memory.
    const READERS: usize = 2;
    /// At least this many hot-plugs ...
    const MIN_REPLACES: usize = 200;
    /// ... and more until readers have held handles across hot-plugs and
    /// maps have been dropped while readers ran, up to this many.
    const MAX_REPLACES: usize = 5_000;
    /// ... and for at most this long.
    const DEADLINE: Duration = Duration::from_secs(10);

    let ledger = Ledger::new(MAX_REPLACES + 1);
    let base = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), REGION)]).unwrap();
    fill(base.find_region(GuestAddress(0)).unwrap(), TAG_BASE);
    let memory = GuestMemoryRcu::new(ledger.map(0, base));
    let published = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(ReaderLog::default());

    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let (memory, ledger, published, stop, log) = (
                memory.clone(),
                Arc::clone(&ledger),
                Arc::clone(&published),
                Arc::clone(&stop),
                Arc::clone(&log),
            );
            thread::Builder::new()
                .name(format!("vm-reader-{i}"))
                .spawn(move || {
                    let mut buf = vec![0u8; REGION];
                    while !stop.load(Ordering::Relaxed) {
                        let mem = memory.memory();
                        let generation = mem.generation;
                        if let Err(e) = copy_and_check(&mem, &mut buf) {
                            log.violation(format!("generation {generation}: {e}"));
                        }
                        if published.load(Ordering::SeqCst) > generation {
                            log.stale.fetch_add(1, Ordering::Relaxed);
                        }
                        // Last thing before the handle goes.
                        if ledger.is_dropped(generation) {
                            log.violation(format!(
                                "map generation {generation} was dropped while a reader \
                                 held a handle on it"
                            ));
                        }
                        drop(mem);
                        log.reads.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .expect("spawn a reader")
        })
        .collect();

    let started = Instant::now();
    let mut unplugged: Vec<Weak<GuestRegionMmap>> = Vec::new();
    let mut generation = 0;
    let mut drops_while_reading;
    loop {
        drops_while_reading = ledger.total_drops();
        if generation >= MIN_REPLACES
            && log.stale.load(Ordering::Relaxed) > 0
            && drops_while_reading > 0
        {
            break;
        }
        assert!(
            generation < MAX_REPLACES && started.elapsed() < DEADLINE,
            "not exercised after {generation} hot-plugs in {:?}: {} stale snapshots, \
             {drops_while_reading} maps dropped",
            started.elapsed(),
            log.stale.load(Ordering::Relaxed),
        );
        generation += 1;
        let slot = SLOTS[generation % SLOTS.len()];
        let writer = memory.lock().unwrap();
        let next = {
            let current = memory.memory();
            if current.find_region(slot).is_some() {
                let (next, region) = current.mem.remove_region(slot, REGION as u64).unwrap();
                // The retired map is now the region's last owner.
                unplugged.push(Arc::downgrade(&region));
                next
            } else {
                let region = GuestRegionMmap::from_range(slot, REGION, None).unwrap();
                fill(&region, TAG_BASE | generation as u64);
                current.mem.insert_region(Arc::new(region)).unwrap()
            }
        };
        writer.replace(ledger.map(generation, next));
        published.store(generation, Ordering::SeqCst);
        thread::sleep(Duration::from_micros(300));
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().expect("a reader panicked");
    }
    let violations = log.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");

    drop(memory);
    drain_call_rcu();
    ledger.assert_all_dropped_once_by_rcu_call(generation + 1);
    assert!(
        unplugged.iter().all(|region| region.strong_count() == 0),
        "an unplugged region outlived every map that held it"
    );
    format!(
        "{generation} hot-plugs, {} snapshots copied, {} held across a hot-plug, \
         {drops_while_reading} maps dropped while readers ran, {} regions unplugged and unmapped",
        log.reads.load(Ordering::Relaxed),
        log.stale.load(Ordering::Relaxed),
        unplugged.len()
    )
}

// ---------------------------------------------------------------------------
// Where and when maps are dropped.

/// Claim: a replaced map is dropped on the `rcu-call` thread outside any
/// read section: not on the writer's thread, although it replaces from
/// inside a section of its own, and not on the reader's thread, although
/// that reader's handle is the last one on the map (with
/// `GuestMemoryAtomic`, the last guard frees the map where it is dropped).
/// The last map goes the same way when the address space is dropped.
#[test]
fn the_old_map_is_dropped_on_the_rcu_call_thread_outside_any_read_section() {
    within("drop thread", || {
        let ledger = Ledger::new(2);
        let memory = GuestMemoryRcu::new(ledger.map(0, ram(0)));
        let (held_tx, held_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let reader = {
            let memory = memory.clone();
            thread::Builder::new()
                .name("vm-reader".to_owned())
                .spawn(move || {
                    let mem = memory.memory();
                    held_tx.send(mem.generation).unwrap();
                    release_rx.recv().unwrap();
                    assert_eq!(value(&*mem), 0);
                    drop(mem);
                })
                .unwrap()
        };
        assert_eq!(recv(&held_rx, "the reader's handle"), 0);
        {
            let _mine = memory.memory();
            memory.lock().unwrap().replace(ledger.map(1, ram(1)));
            assert!(!ledger.is_dropped(0), "dropped by replace");
        }
        release_tx.send(()).unwrap();
        reader.join().unwrap();
        drain_call_rcu();
        let records = ledger.records();
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].generation, 0);
        assert_dropped_by_rcu_call(&records[0]);

        drop(memory);
        drain_call_rcu();
        ledger.assert_all_dropped_once_by_rcu_call(2);
    });
}

/// Claim: 64 handles held at once on one thread all dereference to the
/// current map and read it; each is one more nesting level; after a
/// replace they still read the old map while a new handle reads the new
/// one; dropped in neither taking order nor its reverse, they leave the
/// thread outside any section, and the old map is then dropped once.
#[test]
fn sixty_four_handles_held_at_once_on_one_thread_all_read_and_nest() {
    within("64 handles", || {
        /// Handles held at once.
        const HANDLES: usize = 64;
        let ledger = Ledger::new(2);
        let memory = GuestMemoryRcu::new(ledger.map(0, ram(0xaaaa)));
        let before = read_depth();
        let mut handles: Vec<Option<GuestMemoryRcuHandle<Tracked>>> =
            (0..HANDLES).map(|_| Some(memory.memory())).collect();
        assert_eq!(read_depth(), before + HANDLES);
        for handle in handles.iter().flatten() {
            assert_eq!((handle.generation, value(&**handle)), (0, 0xaaaa));
        }

        memory.lock().unwrap().replace(ledger.map(1, ram(0xbbbb)));
        assert!(
            !ledger.is_dropped(0),
            "the map was dropped under 64 handles"
        );
        assert_eq!(value(&*memory.memory()), 0xbbbb);
        for handle in handles.iter().flatten() {
            assert_eq!((handle.generation, value(&**handle)), (0, 0xaaaa));
        }

        // Odd indices upwards, then even indices downwards.
        let order = (1..HANDLES).step_by(2).chain((0..HANDLES).step_by(2).rev());
        for (dropped, index) in order.enumerate() {
            let handle = handles[index].take().expect("each dropped once");
            assert_eq!(value(&*handle), 0xaaaa);
            drop(handle);
            assert_eq!(read_depth(), before + HANDLES - dropped - 1);
        }
        assert_eq!(read_depth(), before);
        assert!(!in_read_section());
        assert!(!ledger.is_dropped(0), "nothing can have waited for us yet");

        drain_call_rcu();
        assert_eq!(ledger.drop_count(0), Some(1));
        assert_eq!(ledger.drop_count(1), Some(0));
    });
}

/// Claim: a cloned handle is a section of its own: with the original
/// dropped first, the clone still reads its map, and a replace followed by
/// `drain_call_rcu` on another thread neither drops that map nor returns
/// until the clone is dropped.
#[test]
fn a_cloned_handle_outlives_its_original_and_keeps_its_map_until_dropped() {
    within("handle clone", || {
        let ledger = Ledger::new(2);
        let memory = GuestMemoryRcu::new(ledger.map(0, ram(0xc10e)));
        let original = memory.memory();
        let depth = read_depth();
        let clone = original.clone();
        assert_eq!(read_depth(), depth + 1);
        drop(original);
        assert_eq!(read_depth(), depth);
        assert!(in_read_section(), "the clone is still a section");
        assert_eq!((clone.generation, value(&*clone)), (0, 0xc10e));

        let (progress_tx, progress_rx) = mpsc::channel();
        let writer = {
            let (memory, ledger) = (memory.clone(), Arc::clone(&ledger));
            thread::spawn(move || {
                memory.lock().unwrap().replace(ledger.map(1, ram(0x2222)));
                progress_tx.send("replaced").unwrap();
                drain_call_rcu();
                progress_tx.send("drained").unwrap();
            })
        };
        assert_eq!(recv(&progress_rx, "the replace"), "replaced");
        assert_eq!(
            memory.memory().generation,
            1,
            "a new handle sees the new map"
        );
        thread::sleep(SETTLE);
        assert_eq!(
            progress_rx.try_recv(),
            Err(TryRecvError::Empty),
            "drain_call_rcu returned while the clone was alive"
        );
        assert!(
            !ledger.is_dropped(0),
            "the clone's map was dropped under it"
        );
        assert_eq!((clone.generation, value(&*clone)), (0, 0xc10e));

        drop(clone);
        assert!(!in_read_section());
        assert_eq!(recv(&progress_rx, "the drain"), "drained");
        writer.join().unwrap();
        assert_eq!(ledger.drop_count(0), Some(1));
        assert_dropped_by_rcu_call(&ledger.records()[0]);
    });
}

/// Claim: when the last `GuestMemoryRcu` is dropped while a handle taken
/// from it is alive, the map survives until the handle is dropped, and is
/// then dropped after a grace period (on the `rcu-call` thread).
#[test]
fn a_handle_keeps_the_map_alive_after_the_last_address_space_is_dropped() {
    within("handle outlives its address space", || {
        let ledger = Ledger::new(1);
        let memory = GuestMemoryRcu::new(ledger.map(0, ram(0x1a57)));
        let mem = memory.memory();
        drop(memory);

        let (drained_tx, drained_rx) = mpsc::channel();
        let drainer = thread::spawn(move || {
            drain_call_rcu();
            drained_tx.send(()).unwrap();
        });
        thread::sleep(SETTLE);
        assert!(
            !ledger.is_dropped(0),
            "the map was dropped under a live handle"
        );
        assert_eq!(
            drained_rx.try_recv(),
            Err(TryRecvError::Empty),
            "drain_call_rcu returned while the handle was alive"
        );
        assert_eq!(value(&*mem), 0x1a57);

        drop(mem);
        recv(&drained_rx, "the drain");
        drainer.join().unwrap();
        ledger.assert_all_dropped_once_by_rcu_call(1);
    });
}

// ---------------------------------------------------------------------------
// Writers.

/// Claim: `lock()` serializes writers. Two threads each hot-plug many
/// times, each time under the lock: read the current map's generation
/// through a handle, build the next map from it, replace. No two writers
/// are ever inside the lock at once, no hot-plug is lost (each map is built
/// from a different predecessor, so the maps form one chain), and after
/// `drain_call_rcu` every map but the last has been dropped exactly once.
#[test]
fn lock_serializes_writers_and_every_replaced_map_is_dropped_once() {
    within("two writers", || {
        /// Writer threads.
        const WRITERS: usize = 2;
        /// Hot-plugs per writer.
        const EACH: usize = 100;
        /// Maps in all: the first and one per hot-plug.
        const MAPS: usize = WRITERS * EACH + 1;
        let ledger = Ledger::new(MAPS);
        let rammed = ram(0);
        let memory = GuestMemoryRcu::new(ledger.map(0, rammed.clone()));
        let next_generation = Arc::new(AtomicUsize::new(1));
        let inside = Arc::new(AtomicUsize::new(0));
        let parents = Arc::new(Mutex::new(Vec::new()));
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (memory, ledger, rammed, next_generation, inside, parents) = (
                    memory.clone(),
                    Arc::clone(&ledger),
                    rammed.clone(),
                    Arc::clone(&next_generation),
                    Arc::clone(&inside),
                    Arc::clone(&parents),
                );
                thread::spawn(move || {
                    for _ in 0..EACH {
                        let writer = memory.lock().unwrap();
                        assert_eq!(
                            inside.fetch_add(1, Ordering::SeqCst),
                            0,
                            "two writers inside lock() at once"
                        );
                        let parent = memory.memory().generation;
                        thread::yield_now();
                        let generation = next_generation.fetch_add(1, Ordering::Relaxed);
                        parents.lock().unwrap().push(parent);
                        inside.fetch_sub(1, Ordering::SeqCst);
                        writer.replace(ledger.map(generation, rammed.clone()));
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }

        let mut parents = parents.lock().unwrap().clone();
        parents.sort_unstable();
        parents.dedup();
        assert_eq!(
            parents.len(),
            MAPS - 1,
            "two hot-plugs were built from the same map: one was lost"
        );
        let last = memory.memory().generation;
        assert!(
            !parents.contains(&last),
            "the current map is nobody's predecessor"
        );

        drain_call_rcu();
        for generation in 0..MAPS {
            let expected = usize::from(generation != last);
            assert_eq!(
                ledger.drop_count(generation),
                Some(expected),
                "generation {generation} (last: {last})"
            );
        }
        drop(memory);
        drain_call_rcu();
        ledger.assert_all_dropped_once_by_rcu_call(MAPS);
    });
}

// ---------------------------------------------------------------------------
// rust-vmm interoperability.

/// virtio 1.x split-ring descriptor flag: the chain continues at `next`.
const VIRTQ_DESC_F_NEXT: u16 = 1;
/// virtio 1.x split-ring descriptor flag: the buffer is device-writable.
const VIRTQ_DESC_F_WRITE: u16 = 2;

/// Claim: the handle works wherever `virtio-queue` takes memory. The
/// driver side (virtio-queue's `MockSplitQueue`) lays out a split ring in
/// guest memory and posts one chain: a device-readable header, a
/// device-writable data buffer and a device-writable status byte. The
/// device side pops it with `pop_descriptor_chain(memory.memory())`, walks
/// and clones the chain (each clone is a nested section), writes data and
/// status through the chain's memory, and completes it with
/// `add_used(&*memory.memory(), ..)` and `needs_notification(&*memory.memory())`
/// (EVENT_IDX on, as Linux guests negotiate it). A hot-plug between pop and
/// completion changes nothing for the chain. The driver then finds the
/// completion in the used ring.
#[test]
fn a_virtqueue_pops_completes_and_notifies_through_handles() {
    within("virtqueue over GuestMemoryRcu", || {
        /// Descriptors in the ring.
        const QUEUE_SIZE: u16 = 16;
        /// The request header (16 bytes, device-readable).
        const HEADER: GuestAddress = GuestAddress(0x1000);
        /// The data buffer (device-writable).
        const DATA: GuestAddress = GuestAddress(0x2000);
        /// The status byte (device-writable).
        const STATUS: GuestAddress = GuestAddress(0x3000);
        /// Length of the data buffer.
        const DATA_LEN: u32 = 512;
        /// What the driver puts in the header, for the device to read.
        const REQUEST: u64 = 0x0123_4567_89ab_cdef;

        let memory = GuestMemoryRcu::new(ram(0));
        let (mut queue, used_ring) = {
            let mem = memory.memory();
            let driver = MockSplitQueue::create(&*mem, GuestAddress(0), QUEUE_SIZE);
            assert!(driver.end() <= HEADER, "the ring fits below the buffers");
            mem.write_obj(REQUEST, HEADER).unwrap();
            mem.write_obj(0xffu8, STATUS).unwrap();
            let chain = [
                SplitDescriptor::new(HEADER.0, 16, VIRTQ_DESC_F_NEXT, 1),
                SplitDescriptor::new(DATA.0, DATA_LEN, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2),
                SplitDescriptor::new(STATUS.0, 1, VIRTQ_DESC_F_WRITE, 0),
            ]
            .map(RawDescriptor::from);
            driver.add_desc_chains(&chain, 0).unwrap();
            let mut queue: Queue = driver.create_queue().unwrap();
            queue.set_event_idx(true);
            assert!(queue.is_valid(&*mem));
            (queue, driver.used_addr())
        };
        assert!(!in_read_section());

        // Device side.
        let chain = queue
            .pop_descriptor_chain(memory.memory())
            .expect("the posted chain");
        // pop_descriptor_chain clones the handle it is given into the chain
        // and drops the original.
        assert_eq!(read_depth(), 1, "the chain holds one handle");
        assert!(queue.pop_descriptor_chain(memory.memory()).is_none());
        let head = chain.head_index();
        let descriptors: Vec<_> = chain.clone().collect();
        assert_eq!(read_depth(), 1, "the walked clone is gone");
        assert_eq!(descriptors.len(), 3);
        let (header, data, status) = (descriptors[0], descriptors[1], descriptors[2]);
        assert!(!header.is_write_only() && data.is_write_only() && status.is_write_only());

        // A hot-plug while the request is in flight: the chain keeps its
        // snapshot; the RAM region is shared with the new map.
        {
            let current = memory.memory();
            let extra = GuestRegionMmap::from_range(GuestAddress(0x10_0000), 0x1000, None).unwrap();
            let next = current.insert_region(Arc::new(extra)).unwrap();
            drop(current);
            memory.lock().unwrap().replace(next);
        }
        assert_eq!(memory.memory().num_regions(), 2);
        assert_eq!(chain.memory().num_regions(), 1);

        let mem = chain.memory();
        assert_eq!(mem.read_obj::<u64>(header.addr()).unwrap(), REQUEST);
        mem.write_slice(&[0xab; DATA_LEN as usize], data.addr())
            .unwrap();
        mem.write_obj(0u8, status.addr()).unwrap();
        drop(chain);
        assert!(!in_read_section());

        queue
            .add_used(&*memory.memory(), head, DATA_LEN + 1)
            .unwrap();
        assert!(
            queue.needs_notification(&*memory.memory()).unwrap(),
            "the first completion passes used_event 0"
        );
        assert!(
            !queue.needs_notification(&*memory.memory()).unwrap(),
            "nothing new to notify"
        );
        assert!(!in_read_section());

        // Driver side: the used ring (flags u16, idx u16, then {id u32, len u32}).
        let mem = memory.memory();
        assert_eq!(mem.read_obj::<u16>(used_ring.unchecked_add(2)).unwrap(), 1);
        assert_eq!(
            mem.read_obj::<u32>(used_ring.unchecked_add(4)).unwrap(),
            u32::from(head)
        );
        assert_eq!(
            mem.read_obj::<u32>(used_ring.unchecked_add(8)).unwrap(),
            DATA_LEN + 1
        );
        let mut written = [0u8; DATA_LEN as usize];
        mem.read_slice(&mut written, DATA).unwrap();
        assert!(written.iter().all(|&b| b == 0xab));
        assert_eq!(mem.read_obj::<u8>(STATUS).unwrap(), 0);
    });
}

// ---------------------------------------------------------------------------
// Types.

/// Compiles only if `T` is `Send + Sync + Clone`.
fn send_sync_clone<T: Send + Sync + Clone>() {}

/// Claim: `GuestMemoryRcu` is `Send + Sync + Clone` (as `GuestMemoryAtomic`
/// is), and a clone sent to another thread reads the same map.
#[test]
fn guest_memory_rcu_is_send_sync_and_clone() {
    send_sync_clone::<GuestMemoryRcu<GuestMemoryMmap>>();
    send_sync_clone::<GuestMemoryRcu<Tracked>>();
    let memory = GuestMemoryRcu::new(ram(0x5e4d));
    let clone = memory.clone();
    let seen = within("a clone on another thread", move || value(&*clone.memory()));
    assert_eq!(seen, 0x5e4d);
}

/// A trait with two implementations for `Send` types and one for the rest,
/// so that naming `<T as AmbiguousIfSend<_>>::some_item` compiles only for
/// a type that is not `Send` (the inference is ambiguous otherwise).
trait AmbiguousIfSend<A> {
    /// Something to name.
    fn some_item() {}
}
impl<T: ?Sized> AmbiguousIfSend<()> for T {}
impl<T: ?Sized + Send> AmbiguousIfSend<u8> for T {}

/// Claim: the handle is not `Send` (it is the thread's read section). This
/// compiles only if it is not; the compile_fail doctest on
/// `GuestMemoryRcuHandle` checks the error a user sees (E0277).
#[test]
fn the_handle_is_not_send() {
    let _ = <GuestMemoryRcuHandle<GuestMemoryMmap> as AmbiguousIfSend<_>>::some_item;
}
