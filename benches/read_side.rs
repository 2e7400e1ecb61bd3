//! Read-side costs of rcu-defer, with the write-side operations a reader's
//! data waits for, against the peers a user would otherwise pick.
//!
//! Groups (see BENCHMARKS.md for figures):
//!
//! - `rcu_defer_<flavor>`: read sections, once per flavor. `<flavor>` is
//!   what `rcu_defer::flavor()` reports in the process that measured it.
//!   The fence flavor is measured by a re-executed child of this binary
//!   (see `common::run_in_both_flavors`).
//! - `rcu_defer_<flavor>_writer`: `synchronize_rcu` and `call_rcu`, per
//!   flavor (the writer's fence is a membarrier or a plain fence).
//! - `baseline`: the floor for nested sections and the peers, measured once
//!   (they do not depend on the flavor).
//!
//! `cargo bench --bench read_side -- rcu_defer_fence` runs only the fence
//! flavor's benchmarks, `-- --test` runs each once.

mod common;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use rcu_defer::{call_rcu, drain_call_rcu, read_lock, synchronize_rcu};
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::Instant;

/// How many callbacks one iteration of the `call_rcu` benchmark queues.
const CALLBACKS: u64 = 10_000;

fn main() -> ExitCode {
    common::run_in_both_flavors(flavored, baseline)
}

/// Everything whose cost depends on the flavor.
fn flavored(c: &mut Criterion) {
    read_sections(c);
    writer(c);
}

fn read_sections(c: &mut Criterion) {
    common::register_reader_thread();
    let mut group = c.benchmark_group(format!("rcu_defer_{}", common::flavor_name()));

    // The outermost entry publishes the section (a load of the grace-period
    // counter, two stores, the flavor's fence) and the drop ends it (a
    // store, the flavor's fence, loads of the writer's wake-up flag and of
    // the deferred-calls flag). All of it is atomic accesses and fences,
    // which the compiler must keep (the disassembly in BENCHMARKS.md shows
    // every one of them in the loop), so nothing needs a black_box; the
    // guard is dropped inside the timed loop.
    group.bench_function("outermost_read_lock_drop", |b| {
        assert!(!rcu_defer::in_read_section());
        b.iter(|| drop(read_lock()));
    });

    // Nested: an outer guard is held across the whole measurement, so each
    // read_lock() only increments the depth and its drop decrements it.
    group.bench_function("nested_read_lock_drop_in_outer_section", |b| {
        let outer = read_lock();
        b.iter(|| drop(read_lock()));
        assert_eq!(rcu_defer::read_depth(), 1);
        drop(outer);
    });

    // An online thread's outermost section: the depth counter and the
    // entry location, nothing published, no fence (compare with
    // `baseline/tls_depth_counter_inc_dec_no_fence`). Nothing else runs a
    // grace period while it is measured, and the thread goes offline after.
    group.bench_function("online_outermost_read_lock_drop", |b| {
        let online = rcu_defer::online();
        b.iter(|| drop(read_lock()));
        drop(online);
    });

    // `quiescent()` when no grace period has begun since the last one: a
    // load of the counter, a compare and the location store.
    group.bench_function("online_quiescent_no_grace_period", |b| {
        let online = rcu_defer::online();
        b.iter(|| online.quiescent());
        drop(online);
    });
    group.finish();
}

fn writer(c: &mut Criterion) {
    common::register_reader_thread();
    let mut group = c.benchmark_group(format!("rcu_defer_{}_writer", common::flavor_name()));
    // Microseconds to milliseconds per iteration: flat sampling keeps the
    // run within the measurement time.
    group.sampling_mode(SamplingMode::Flat);

    // The bench thread is a registered reader (it has taken read locks),
    // outside any section; no other thread is in a section. So this is the
    // grace period's fixed cost: the writer's fences and one registry scan.
    group.bench_function("synchronize_rcu_no_reader_in_section", |b| {
        assert!(!rcu_defer::in_read_section());
        b.iter(synchronize_rcu);
    });

    // A polled cookie: take one (a read-modify-write of the attempt count,
    // and a load that finds the grace period already asked for) and poll
    // it (a load), with nothing else running grace periods: after the
    // first iteration's request completes, one iteration per grace period
    // asks for the next (queues one call_rcu), the rest make no system
    // call (tests/poll.rs checks that with a seccomp filter).
    group.bench_function("start_poll_then_poll_cookie", |b| {
        b.iter(|| {
            let cookie = rcu_defer::start_poll_synchronize_rcu();
            black_box(rcu_defer::poll_state_synchronize_rcu(cookie))
        });
    });
    group.bench_function("get_state_then_poll_cookie", |b| {
        b.iter(|| {
            let cookie = rcu_defer::get_state_synchronize_rcu();
            black_box(rcu_defer::poll_state_synchronize_rcu(cookie))
        });
    });

    // Enqueue-to-run: queue CALLBACKS callbacks, then drain_call_rcu(),
    // which returns once all of them have run on the rcu-call thread. Each
    // callback captures a pointer (so each is one boxed allocation, as a
    // real callback that frees something is) and increments a counter,
    // which is checked outside the timed part.
    let ran: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    group.throughput(Throughput::Elements(CALLBACKS));
    group.bench_function(
        BenchmarkId::new("call_rcu_then_drain_call_rcu", CALLBACKS),
        |b| {
            b.iter_custom(|iters| {
                let before = ran.load(Ordering::Relaxed);
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..CALLBACKS {
                        call_rcu(move || {
                            ran.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                    drain_call_rcu();
                }
                let elapsed = start.elapsed();
                assert_eq!(ran.load(Ordering::Relaxed) - before, iters * CALLBACKS);
                elapsed
            });
        },
    );
    group.finish();
}

thread_local! {
    /// The floor for nested sections: a depth counter in a thread-local.
    /// Relaxed atomic loads and stores compile to plain moves, like the
    /// reader's own depth word; being atomic, they cannot be folded into
    /// nothing, so no black_box (which would add a stack round trip) is
    /// needed.
    static PLAIN_DEPTH: AtomicUsize = const { AtomicUsize::new(0) };
}

/// Peers and the floor: measured once, in this process's flavor.
fn baseline(c: &mut Criterion) {
    let mut group = c.benchmark_group("baseline");

    group.bench_function("tls_depth_counter_inc_dec_no_fence", |b| {
        b.iter(|| {
            PLAIN_DEPTH.with(|depth| {
                depth.store(depth.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                depth.store(depth.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
            });
        });
    });

    group.bench_function("crossbeam_epoch_pin_drop", |b| {
        drop(crossbeam_epoch::pin()); // registers this thread's handle
        b.iter(|| drop(crossbeam_epoch::pin()));
    });

    group.bench_function("std_rwlock_read_drop_uncontended", |b| {
        let lock = RwLock::new(0u64);
        // black_box: the lock is not known to be this local, uncontended one.
        let lock = black_box(&lock);
        b.iter(|| drop(lock.read().expect("never poisoned")));
    });

    group.bench_function("arc_swap_load_drop_guard", |b| {
        let swap = arc_swap::ArcSwap::from_pointee(0u64);
        let swap = black_box(&swap);
        b.iter(|| drop(swap.load()));
    });

    group.finish();
}
