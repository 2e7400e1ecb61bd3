//! Costs of `call_local` and of the batching it enables.
//!
//! Groups (see BENCHMARKS.md for figures):
//!
//! - `call_local`: recording a new call, hitting a duplicate, and a whole
//!   section that records one call and runs it at its end (flavor-neutral:
//!   measured once, in the default flavor); with two baselines for the
//!   last: the same section around a hand-written deferral (a thread-local
//!   slot holding the function and a clone of the `Arc`), the floor for
//!   any deferral that keeps its argument alive, and an `Arc` clone and
//!   drop alone.
//! - `batching_<flavor>`: 64 small reads each in its own read section
//!   against the same 64 inside one outer section, once per flavor (the
//!   fence flavor in a re-executed child, see `common::run_in_both_flavors`).

mod common;

use criterion::{Criterion, Throughput};
use rcu_defer::{call_local, read_lock, RcuCell};
use std::cell::Cell;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Operations per batch in the batching comparison (one completion pass).
const PASS: usize = 64;

fn main() -> ExitCode {
    common::run_in_both_flavors(batching, call_local_costs)
}

fn touch_fn(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One function pointer for every call site: a function may have one
/// address per codegen unit, and `call_local` deduplicates by address.
static TOUCH: fn(&AtomicU64) = touch_fn;

fn call_local_costs(c: &mut Criterion) {
    common::register_reader_thread();
    let mut group = c.benchmark_group("call_local");

    // A duplicate: the same (f, Arc) is already pending in the section that
    // is held across the whole measurement, so each call only compares keys
    // and returns false.
    group.bench_function("duplicate_hit", |b| {
        let arg = Arc::new(AtomicU64::new(0));
        let section = read_lock();
        assert!(call_local(TOUCH, &arg));
        b.iter(|| black_box(call_local(TOUCH, black_box(&arg))));
        drop(section);
        assert_eq!(
            arg.load(Ordering::Relaxed),
            1,
            "one call for all duplicates"
        );
    });

    // A new key: each iteration records a distinct (f, Arc) pair in a
    // section of 4096 records; only the recording is timed (the section's
    // end, which runs them, is outside the timed part).
    group.bench_function("record_new_key_in_section_of_4096", |b| {
        let args: Vec<Arc<AtomicU64>> = (0..4096).map(|_| Arc::new(AtomicU64::new(0))).collect();
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(args.len() as u64) as usize;
                let section = read_lock();
                let start = Instant::now();
                for arg in &args[..n] {
                    black_box(call_local(TOUCH, arg));
                }
                timed += start.elapsed();
                drop(section);
                left -= n as u64;
            }
            timed
        });
    });

    // The whole unit a device pays per batch with one notifier: enter the
    // outermost section, record one call, leave (which runs it).
    group.bench_function("section_recording_and_running_one_call", |b| {
        let arg = Arc::new(AtomicU64::new(0));
        b.iter(|| {
            let section = read_lock();
            call_local(TOUCH, &arg);
            drop(section);
        });
    });

    // The same section with nothing recorded: subtract it from the one above
    // to get the cost of recording plus running one call.
    group.bench_function("section_alone", |b| {
        b.iter(|| drop(read_lock()));
    });

    // The floor: the same section and callback, deferred by hand through a
    // thread-local slot that holds the function and a clone of the `Arc`
    // (no dedup, no ordering, no panic handling, one call only).
    group.bench_function("floor_section_and_hand_written_tls_slot", |b| {
        let arg = Arc::new(AtomicU64::new(0));
        b.iter(|| {
            let section = read_lock();
            let held = Arc::clone(black_box(&arg));
            FLOOR_SLOT.with(|slot| slot.set(Some((TOUCH, held))));
            drop(section);
            if let Some((f, held)) = FLOOR_SLOT.with(Cell::take) {
                f(&held);
            }
        });
    });

    // What keeping the argument alive costs by itself: two locked RMWs.
    group.bench_function("arc_clone_and_drop", |b| {
        let arg = Arc::new(AtomicU64::new(0));
        b.iter(|| drop(black_box(Arc::clone(black_box(&arg)))));
    });
    group.finish();
}

type FloorCall = (fn(&AtomicU64), Arc<AtomicU64>);

thread_local! {
    /// The hand-written deferral of the floor benchmark.
    static FLOOR_SLOT: Cell<Option<FloorCall>> = const { Cell::new(None) };
}

/// A small piece of device state read on every operation.
struct Config {
    queue_size: u16,
    features: u64,
}

fn batching(c: &mut Criterion) {
    common::register_reader_thread();
    let config = RcuCell::new(Config {
        queue_size: 256,
        features: 0x1_0000_0000,
    });
    let mut group = c.benchmark_group(format!("batching_{}", common::flavor_name()));
    group.throughput(Throughput::Elements(PASS as u64));

    // Each operation guards itself: 64 outermost sections, each paying the
    // flavor's fences.
    group.bench_function("64_ops_each_in_own_section", |b| {
        b.iter(|| {
            for _ in 0..PASS {
                let guard = read_lock();
                let c = config.read(&guard);
                black_box(u64::from(c.queue_size) ^ c.features);
            }
        });
    });

    // The same operations, still each taking its own guard, inside one
    // outer section: the inner guards are depth increments.
    group.bench_function("64_ops_in_one_outer_section", |b| {
        b.iter(|| {
            let pass = read_lock();
            for _ in 0..PASS {
                let guard = read_lock();
                let c = config.read(&guard);
                black_box(u64::from(c.queue_size) ^ c.features);
            }
            drop(pass);
        });
    });
    group.finish();
}
