//! `GuestAddressSpace::memory()` on `rcu_defer::vm::GuestMemoryRcu` against
//! `vm_memory::GuestMemoryAtomic`, the type it replaces, over the same
//! `GuestMemoryMmap` layout.
//!
//! Why: rust-vmm's vm-virtio issue 89 ("Improve performance penalty caused
//! by Queue::mem.memory()"). `GuestMemoryAtomic::memory()` is an
//! `arc_swap::ArcSwap` load. Its fast path parks the pointer in one of 8
//! per-thread debt slots (shared by every `ArcSwap` the thread loads); once
//! the thread holds 8 guards the slots are full, and the load falls to a
//! slow path that increments the map's shared reference count (and the
//! guard's drop decrements it): locked read-modify-writes on one cache line
//! shared by every device thread. Devices hold handles longer than one
//! access: one per descriptor chain in flight (virtio-queue's
//! `pop_descriptor_chain` clones the handle it is given into the chain),
//! one per queue being processed, so 8 is reached in practice.
//! `GuestMemoryRcu::memory()` is a nested read section (a thread-local
//! counter increment) plus one pointer load, however many handles the
//! thread holds.
//!
//! Benchmark ids are `guest_memory/<what>/<type>/held_<N>`:
//!
//! - `<type>`: `rcu_<flavor>` (`GuestMemoryRcu`; `<flavor>` is what
//!   `rcu_defer::flavor()` reports in the measuring process:
//!   `RCU_DEFER_FLAVOR=fence cargo bench --bench guest_memory` measures
//!   the fence flavor) or `atomic` (`GuestMemoryAtomic`).
//! - `held_<N>`: the thread already holds N-1 handles from the same address
//!   space, taken before the timed loop and dropped after it, so the
//!   measured `memory()` is the N-th. At `held_1` an RCU handle is an
//!   outermost read section; above it, a nested one. `held_8` is the last
//!   count at which `GuestMemoryAtomic` still finds a free debt slot.
//!
//! Groups (`<what>`):
//!
//! - `memory_drop`: take a handle and drop it: the cost of `memory()`
//!   itself.
//! - `memory_read_u32`: take a handle, read 4 bytes of guest memory through
//!   it, drop it: the smallest real use, so that the difference is seen
//!   against real work. In vm-memory 0.18, `read_obj::<u32>` is a region
//!   lookup and a volatile copy through the `GuestMemory::get_slices`
//!   iterator.
//! - `memory_drop_hotplug_100hz`, `memory_read_u32_hotplug_100hz`: the same
//!   while a writer thread hot-plugs 100 times a second (`lock()`, then
//!   `replace` with a freshly mmapped map of the same layout). For
//!   `GuestMemoryRcu` that adds the grace periods (with the membarrier
//!   flavor, each interrupts the measuring thread's CPU); for
//!   `GuestMemoryAtomic`, the writer paying the readers' debts and the
//!   reference counts moving to a new map.
//!
//! `cargo bench --bench guest_memory -- --test` runs each benchmark once;
//! `-- memory_drop/` selects a group. Figures go in BENCHMARKS.md.

mod common;

use criterion::{BenchmarkId, Criterion};
use rcu_defer::vm::GuestMemoryRcu;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

/// The guest memory layout every map has: RAM below and above a 32-bit
/// hole, as a monitor lays it out (small, so that a hot-plug's fresh mmap
/// is cheap).
const LAYOUT: [(GuestAddress, usize); 2] = [
    (GuestAddress(0), 0x10_0000),
    (GuestAddress(0x1_0000_0000), 0x10_0000),
];
/// Where the measured 4-byte read happens (in the second region, so that
/// the region lookup does some work).
const READ_AT: GuestAddress = GuestAddress(0x1_0000_0800);
/// The value every map holds at [`READ_AT`].
const VALUE: u32 = 0x5eed_c0de;
/// Handle counts the thread holds, the measured one included.
const HELD: [usize; 4] = [1, 8, 16, 64];
/// The hot-plug writer's period (100 Hz).
const HOT_PLUG_PERIOD: Duration = Duration::from_millis(10);

/// A fresh map with [`LAYOUT`], holding [`VALUE`] at [`READ_AT`].
fn fresh_map() -> vm_memory::GuestMemoryMmap {
    let map = vm_memory::GuestMemoryMmap::<()>::from_ranges(&LAYOUT).expect("mmap guest memory");
    map.write_obj(VALUE, READ_AT).expect("READ_AT is mapped");
    map
}

/// What is measured per iteration.
#[derive(Clone, Copy)]
enum Op {
    /// `memory()`, then drop the handle.
    MemoryDrop,
    /// `memory()`, `read_obj::<u32>` through the handle, drop it.
    MemoryReadU32,
}

impl Op {
    /// The group name (without the hot-plug suffix).
    fn name(self) -> &'static str {
        match self {
            Op::MemoryDrop => "memory_drop",
            Op::MemoryReadU32 => "memory_read_u32",
        }
    }
}

/// One address space under test, with what differs between the two types.
struct Subject<S> {
    /// `rcu_<flavor>` or `atomic`.
    name: String,
    /// The address space whose `memory()` is measured.
    space: S,
    /// The read-section depth this thread has while holding `n` handles
    /// from `space` (handles of `GuestMemoryAtomic` are not read sections).
    depth_with: fn(usize) -> usize,
    /// Hot-plugs one fresh map into `space`.
    replace: fn(&S),
}

/// Hot-plugs into a `GuestMemoryRcu`.
fn replace_rcu(space: &GuestMemoryRcu<vm_memory::GuestMemoryMmap>) {
    space.lock().unwrap().replace(fresh_map());
}

/// Hot-plugs into a `GuestMemoryAtomic`.
fn replace_atomic(space: &GuestMemoryAtomic<vm_memory::GuestMemoryMmap>) {
    space.lock().unwrap().replace(fresh_map());
}

/// A writer thread hot-plugging into an address space every
/// [`HOT_PLUG_PERIOD`] until dropped.
struct HotPlugger {
    /// Tells the writer to stop.
    stop: Arc<AtomicBool>,
    /// The writer; returns how many hot-plugs it did.
    thread: Option<thread::JoinHandle<u64>>,
    /// When the writer was started.
    started: Instant,
}

impl HotPlugger {
    /// Starts a writer that calls `replace(&space)` every
    /// [`HOT_PLUG_PERIOD`].
    fn start<S: Send + 'static>(space: S, replace: fn(&S)) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("hot-plug".to_owned())
                .spawn(move || {
                    let mut next = Instant::now() + HOT_PLUG_PERIOD;
                    let mut done = 0;
                    while !stop.load(Ordering::Relaxed) {
                        thread::sleep(next.saturating_duration_since(Instant::now()));
                        replace(&space);
                        done += 1;
                        next += HOT_PLUG_PERIOD;
                    }
                    done
                })
                .expect("spawn the hot-plug writer")
        };
        HotPlugger {
            stop,
            thread: Some(thread),
            started: Instant::now(),
        }
    }
}

impl Drop for HotPlugger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let done = thread.join().expect("the hot-plug writer panicked");
            // A check that the writer really ran. Loose, because on a
            // loaded machine a sleeping thread can wake well over 100 ms
            // late, and `--test` or a filter makes a benchmark short or
            // empty.
            let ran = self.started.elapsed();
            assert!(
                ran < 100 * HOT_PLUG_PERIOD || done > 0,
                "no hot-plug in {ran:?}"
            );
        }
    }
}

/// Registers `op` on `subject` at every count in [`HELD`], in `group`,
/// with a hot-plug writer running if `hot_plug`.
fn bench_subject<S>(c: &mut Criterion, group: &str, op: Op, subject: &Subject<S>, hot_plug: bool)
where
    S: GuestAddressSpace + Send + 'static,
{
    let mut group = c.benchmark_group(group);
    for held in HELD {
        let id = BenchmarkId::new(&subject.name, format!("held_{held}"));
        // One writer for the whole benchmark, warm-up and samples.
        let writer = hot_plug.then(|| HotPlugger::start(subject.space.clone(), subject.replace));
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                // The N-1 handles already held, from the same address space.
                let others: Vec<S::T> = (1..held).map(|_| subject.space.memory()).collect();
                assert_eq!(rcu_defer::read_depth(), (subject.depth_with)(held - 1));
                let start = Instant::now();
                match op {
                    Op::MemoryDrop => {
                        for _ in 0..iters {
                            drop(black_box(subject.space.memory()));
                        }
                    }
                    Op::MemoryReadU32 => {
                        for _ in 0..iters {
                            black_box(subject.space.memory().read_obj::<u32>(READ_AT).ok());
                        }
                    }
                }
                let elapsed = start.elapsed();
                // The loop read real guest memory (checked outside the timing).
                assert_eq!(
                    subject.space.memory().read_obj::<u32>(READ_AT).ok(),
                    Some(VALUE)
                );
                drop(others);
                elapsed
            });
        });
        drop(writer);
    }
    group.finish();
}

/// Both types, one group per operation, without and with a hot-plug writer.
fn guest_memory(c: &mut Criterion) {
    common::register_reader_thread();
    let rcu = Subject {
        name: format!("rcu_{}", common::flavor_name()),
        space: GuestMemoryRcu::new(fresh_map()),
        depth_with: |handles| handles,
        replace: replace_rcu,
    };
    let atomic = Subject {
        name: "atomic".to_owned(),
        space: GuestMemoryAtomic::new(fresh_map()),
        depth_with: |_| 0,
        replace: replace_atomic,
    };
    for hot_plug in [false, true] {
        for op in [Op::MemoryDrop, Op::MemoryReadU32] {
            let suffix = if hot_plug { "_hotplug_100hz" } else { "" };
            let group = format!("guest_memory/{}{suffix}", op.name());
            bench_subject(c, &group, op, &rcu, hot_plug);
            bench_subject(c, &group, op, &atomic, hot_plug);
        }
    }
    // Retired maps are freed before the final summary.
    drop(rcu);
    rcu_defer::drain_call_rcu();
}

/// Runs every benchmark of this file and prints Criterion's summary.
fn main() {
    // 32 benchmarks of a few nanoseconds each: shorter than the other
    // benches' default, still about 200 hot-plugs per hot-plug benchmark.
    // Command-line options override it.
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(50)
        .nresamples(20_000)
        .configure_from_args();
    guest_memory(&mut c);
    c.final_summary();
}
