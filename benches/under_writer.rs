//! Read throughput of a shared configuration while a writer replaces it
//! 1,000 times per second: `std::sync::RwLock`, `parking_lot::RwLock`,
//! `arc_swap::ArcSwap` and `rcu_defer::RcuCell`.
//!
//! One iteration is one read: take the lock or guard, read the queue size,
//! the feature bits and one entry of the backing-file table, release. It is
//! timed on Criterion's thread (`iter_custom`, one `Instant` pair per
//! sample), while, for the whole time the benchmark runs (warm-up and
//! measurement):
//!
//! - a writer thread reconfigures the value every millisecond, paced by a
//!   deadline (`next += 1 ms`, sleep until it): in place under the write
//!   lock for the locks, copy-modify-publish for `ArcSwap::rcu` and
//!   `RcuCell::update` (whose old values are freed after a grace period
//!   on the `rcu-call` thread);
//! - in the `<n>_readers` cases with n > 1, n - 1 more reader threads read
//!   in a loop, so that readers contend with each other as well.
//!
//! Groups (Criterion ids `<group>/<variant>/<n>_readers`):
//!
//! - `under_writer_1khz`: the writer above, with 1 reader and with
//!   `available_parallelism` readers;
//! - `no_writer`: the same read with no writer thread and 1 reader, to show
//!   what the writer costs the readers.
//!
//! `RcuCell` is measured once per flavor: the fence flavor in a re-executed
//! child (see `benches/common/mod.rs`), the variant named
//! `rcu_cell_<flavor>` after the flavor actually in effect.
//!
//! After each benchmark the writer's rate during the timed loops is printed
//! to stderr, so a run in which the writer did not keep up says so.
//!
//! Figures and the plot: BENCHMARKS.md, `scripts/plot_under_writer.py`.
//!
//! ```text
//! cargo bench --bench under_writer                 # ~1.5 min
//! cargo bench --bench under_writer -- --test       # each once
//! ```

mod common;

use arc_swap::ArcSwap;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use rcu_defer::{read_lock, RcuCell};
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The writer's rate.
const WRITER_HZ: u32 = 1000;

/// Entries in the backing-file table.
const EXTENTS: usize = 8;

/// The shared value: what a virtio-blk device's I/O path reads per request
/// (see `examples/device_config.rs` for the full model).
#[derive(Clone)]
struct Config {
    generation: u64,
    queue_size: u16,
    features: u64,
    /// (fd, offset, len) of each extent's backing file.
    backing: Vec<(i32, u64, u64)>,
}

impl Config {
    fn initial() -> Config {
        Config {
            generation: 0,
            queue_size: 256,
            features: 1 << 9,
            backing: (0..EXTENTS as u64)
                .map(|i| (10 + i as i32, i << 30, 1 << 30))
                .collect(),
        }
    }

    /// One reconfiguration: toggle a feature, resize the queue, rotate the
    /// backing descriptors.
    fn advance(&mut self) {
        self.generation += 1;
        self.features ^= 1 << 9;
        self.queue_size = if self.queue_size == 256 { 128 } else { 256 };
        let g = self.generation as usize;
        for (i, extent) in self.backing.iter_mut().enumerate() {
            extent.0 = 10 + ((i + g) % EXTENTS) as i32;
        }
    }
}

/// What a read does with the value: a few fields and one table entry.
#[inline(always)]
fn use_config(config: &Config, i: usize) -> u64 {
    let (fd, offset, len) = config.backing[i % EXTENTS];
    u64::from(config.queue_size) ^ config.features ^ fd as u64 ^ offset ^ len
}

/// One way of sharing the value.
trait Shared: Send + Sync + 'static {
    fn new(config: Config) -> Self;
    /// One read: acquire, `use_config`, release.
    fn read(&self, i: usize) -> u64;
    /// One reconfiguration.
    fn write(&self);
}

impl Shared for std::sync::RwLock<Config> {
    fn new(config: Config) -> Self {
        std::sync::RwLock::new(config)
    }
    #[inline]
    fn read(&self, i: usize) -> u64 {
        use_config(&self.read().expect("never poisoned"), i)
    }
    fn write(&self) {
        self.write().expect("never poisoned").advance();
    }
}

impl Shared for parking_lot::RwLock<Config> {
    fn new(config: Config) -> Self {
        parking_lot::RwLock::new(config)
    }
    #[inline]
    fn read(&self, i: usize) -> u64 {
        use_config(&self.read(), i)
    }
    fn write(&self) {
        self.write().advance();
    }
}

impl Shared for ArcSwap<Config> {
    fn new(config: Config) -> Self {
        ArcSwap::from_pointee(config)
    }
    #[inline]
    fn read(&self, i: usize) -> u64 {
        use_config(&self.load(), i)
    }
    fn write(&self) {
        self.rcu(|old| {
            let mut new = Config::clone(old);
            new.advance();
            new
        });
    }
}

impl Shared for RcuCell<Config> {
    fn new(config: Config) -> Self {
        RcuCell::new(config)
    }
    #[inline]
    fn read(&self, i: usize) -> u64 {
        let guard = read_lock();
        use_config(RcuCell::read(self, &guard), i)
    }
    fn write(&self) {
        self.update(|old| {
            let mut new = old.clone();
            new.advance();
            new
        });
    }
}

/// The writer: `WRITER_HZ` reconfigurations per second until `stop`. The
/// deadline advances by one period per update (a late wake-up is made up
/// by the next ones); more than 10 periods behind, it skips ahead instead
/// of bursting.
fn writer<S: Shared>(shared: &S, stop: &AtomicBool, updates: &AtomicU64) {
    let period = Duration::from_secs(1) / WRITER_HZ;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        shared.write();
        updates.fetch_add(1, Ordering::Relaxed);
        next += period;
        let now = Instant::now();
        if now > next + period * 10 {
            next = now;
        } else if next > now {
            thread::sleep(next - now);
        }
    }
}

/// Measures `S`'s read on this thread with `readers - 1` more readers and,
/// if `with_writer`, the writer running throughout.
fn bench_variant<S: Shared>(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    readers: usize,
    with_writer: bool,
) {
    let shared = S::new(Config::initial());
    let stop = AtomicBool::new(false);
    let updates = AtomicU64::new(0);
    let param = format!("{readers}_reader{}", if readers == 1 { "" } else { "s" });
    let id = BenchmarkId::new(name, &param);

    thread::scope(|s| {
        if with_writer {
            s.spawn(|| writer(&shared, &stop, &updates));
            // The writer is live (it has published once) before anything
            // is timed.
            while updates.load(Ordering::Relaxed) == 0 {
                thread::yield_now();
            }
        }
        for _ in 1..readers {
            s.spawn(|| {
                let mut acc = 0;
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..256 {
                        acc ^= shared.read(i);
                        i = i.wrapping_add(1);
                    }
                }
                black_box(acc)
            });
        }

        let mut timed = Duration::ZERO;
        let mut timed_updates = 0;
        group.bench_function(id, |b| {
            let mut i = 0usize;
            b.iter_custom(|iters| {
                let updates_before = updates.load(Ordering::Relaxed);
                let start = Instant::now();
                let mut acc = 0;
                for _ in 0..iters {
                    acc ^= shared.read(i);
                    i = i.wrapping_add(1);
                }
                let elapsed = start.elapsed();
                black_box(acc);
                timed += elapsed;
                timed_updates += updates.load(Ordering::Relaxed) - updates_before;
                elapsed
            });
        });
        stop.store(true, Ordering::Relaxed);

        // Nothing to say about a benchmark that a filter skipped (timed is
        // zero) or that `--test` ran once (a few microseconds).
        if with_writer && timed >= Duration::from_millis(10) {
            eprintln!(
                "under_writer: {}/{name}/{param}: writer made {timed_updates} updates during {:.3} s of \
                 timed reads ({:.0}/s)",
                group_name(with_writer),
                timed.as_secs_f64(),
                timed_updates as f64 / timed.as_secs_f64().max(1e-9),
            );
            // A writer that ran, but never during the timed loops, would
            // make this a benchmark of something else.
            assert!(
                timed < Duration::from_millis(100) || timed_updates > 0,
                "the writer made no update during {timed:?} of timed reads"
            );
        }
    });
}

fn group_name(with_writer: bool) -> &'static str {
    if with_writer {
        "under_writer_1khz"
    } else {
        "no_writer"
    }
}

/// The reader counts measured under the writer: 1, and one per CPU.
fn reader_counts() -> Vec<usize> {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    if cpus > 1 {
        vec![1, cpus]
    } else {
        vec![1]
    }
}

/// Runs `f` for each (group, reader count) case.
fn for_each_case(
    c: &mut Criterion,
    mut f: impl FnMut(&mut BenchmarkGroup<'_, criterion::measurement::WallTime>, usize, bool),
) {
    for with_writer in [true, false] {
        let mut group = c.benchmark_group(group_name(with_writer));
        group.throughput(Throughput::Elements(1));
        let counts = if with_writer {
            reader_counts()
        } else {
            vec![1]
        };
        for readers in counts {
            f(&mut group, readers, with_writer);
        }
        group.finish();
    }
}

/// RcuCell, whose read cost depends on the flavor.
fn flavored(c: &mut Criterion) {
    let name = format!("rcu_cell_{}", common::flavor_name());
    for_each_case(c, |group, readers, with_writer| {
        bench_variant::<RcuCell<Config>>(group, &name, readers, with_writer);
    });
    rcu_defer::drain_call_rcu();
}

/// The peers, measured once.
fn peers(c: &mut Criterion) {
    for_each_case(c, |group, readers, with_writer| {
        bench_variant::<std::sync::RwLock<Config>>(group, "std_rwlock", readers, with_writer);
        bench_variant::<parking_lot::RwLock<Config>>(
            group,
            "parking_lot_rwlock",
            readers,
            with_writer,
        );
        bench_variant::<ArcSwap<Config>>(group, "arc_swap", readers, with_writer);
    });
}

fn main() -> ExitCode {
    common::run_in_both_flavors(flavored, peers)
}
