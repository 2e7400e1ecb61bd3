//! rcu-defer's read side next to its peers, in one run: one iteration is
//! one empty outermost read-side critical section (enter, leave) on a
//! thread that is already registered, with no writer running.
//!
//! Group `peers_read_side`, one benchmark per contender:
//!
//! - `rcu_defer_<flavor>`: `drop(rcu_defer::read_lock())`, once per flavor
//!   (`<flavor>` is what `rcu_defer::flavor()` reports in the process that
//!   measured it; the fence flavor runs in a re-executed child, see
//!   `benches/common/mod.rs` at the top of the repository).
//! - `rcu_defer_online_<flavor>`: the same on an online thread
//!   (`rcu_defer::online()`), whose sections only count their depth.
//! - `liburcu_urcu_qsbr`: urcu-qsbr's `rcu_read_lock(); rcu_read_unlock();`
//!   on a registered (online) thread: empty, so the shim's loop is one
//!   compiler barrier per iteration.
//! - `tls_depth_counter_inc_dec`: a thread-local counter incremented and
//!   decremented, the floor for a section that counts its depth.
//! - `tls_depth_counter_location_deferred`: the same counter, plus what any
//!   section with rcu-defer's semantics must do besides counting: at the
//!   entry, a test of the depth and, at depth 0, a store of where the
//!   section began (quiescent-in-section and deadlock messages name it); at
//!   the exit, a test for the outermost end and of a deferred-calls flag
//!   (`call_local` batches end there). The floor for an online section
//!   (`benches/common/floor_section.rs` at the top of the repository).
//! - `liburcu_urcu_memb`, `liburcu_urcu_mb`: `urcu_memb_read_lock();
//!   urcu_memb_read_unlock();` (and the `mb` flavor's), inlined by
//!   `_LGPL_SOURCE` into a C loop of `iters` sections in the shim
//!   (`peers/c/`), timed around one call from Rust, so the call costs one
//!   call per sample. urcu-memb is the scheme rcu-defer's membarrier flavor
//!   uses; urcu-mb issues real fences, like rcu-defer's fence flavor.
//!   Skipped, with a message, when the crate was built without liburcu.
//! - `crossbeam_epoch_pin`: `drop(crossbeam_epoch::pin())`.
//! - `std_rwlock_read`: `drop(RwLock::read())`, uncontended.
//!
//! ```text
//! cargo bench -p peers                    # ~30 s
//! cargo bench -p peers -- --test          # each once
//! ```

#[path = "../../benches/common/mod.rs"]
mod common;
#[path = "../../benches/common/floor_section.rs"]
mod floor_section;

use criterion::Criterion;
use floor_section::FloorSection;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::RwLock;

/// The Criterion group every contender is measured in.
const GROUP: &str = "peers_read_side";

fn main() -> ExitCode {
    if !peers::LIBURCU && !common::is_flavor_child() {
        eprintln!(
            "peers bench: built without liburcu (liburcu-dev not found by peers/build.rs, \
             or RCU_DEFER_PEERS_LIBURCU=0): skipping liburcu_urcu_memb and liburcu_urcu_mb"
        );
    }
    common::run_in_both_flavors(rcu_defer_read_side, peers)
}

/// rcu-defer, in this process's flavor (and, via `run_in_both_flavors`,
/// in the fence flavor in a child).
fn rcu_defer_read_side(c: &mut Criterion) {
    common::register_reader_thread();
    let mut group = c.benchmark_group(GROUP);
    group.bench_function(format!("rcu_defer_{}", common::flavor_name()), |b| {
        assert!(!rcu_defer::in_read_section());
        // Atomic accesses and fences the compiler must keep: no black_box
        // needed (see benches/read_side.rs, which measures the same thing).
        b.iter(|| drop(rcu_defer::read_lock()));
    });
    // An online thread's section: the depth counter only (and the entry
    // location); the counterpart of urcu-qsbr.
    group.bench_function(format!("rcu_defer_online_{}", common::flavor_name()), |b| {
        let online = rcu_defer::online();
        b.iter(|| drop(rcu_defer::read_lock()));
        drop(online);
    });
    group.finish();
}

thread_local! {
    /// The floor for an online section: a depth counter in a thread-local
    /// (Relaxed atomics compile to plain moves and cannot be folded away).
    static PLAIN_DEPTH: AtomicUsize = const { AtomicUsize::new(0) };
}

/// Everything that does not depend on rcu-defer's flavor, measured once.
fn peers(c: &mut Criterion) {
    let mut group = c.benchmark_group(GROUP);

    #[cfg(peers_liburcu)]
    {
        use peers::liburcu::{MbReader, MembReader};
        use std::time::Instant;

        // Registers this thread with each flavor (once, outside the
        // measurement), as liburcu requires before any read section.
        let memb = MembReader::current();
        group.bench_function("liburcu_urcu_memb", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                memb.read_lock_unlock_n(iters);
                start.elapsed()
            });
        });
        assert!(!memb.read_ongoing());

        // urcu-qsbr: the sections are empty; the shim's loop keeps one
        // iteration per section with a compiler barrier. Registering makes
        // this thread online for liburcu-qsbr, whose grace periods nothing
        // here runs.
        let qsbr = peers::liburcu::QsbrReader::current();
        group.bench_function("liburcu_urcu_qsbr", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                qsbr.read_lock_unlock_n(iters);
                start.elapsed()
            });
        });

        let mb = MbReader::current();
        group.bench_function("liburcu_urcu_mb", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                mb.read_lock_unlock_n(iters);
                start.elapsed()
            });
        });
        assert!(!mb.read_ongoing());
    }

    group.bench_function("tls_depth_counter_inc_dec", |b| {
        b.iter(|| {
            PLAIN_DEPTH.with(|depth| {
                depth.store(depth.load(Relaxed) + 1, Relaxed);
                depth.store(depth.load(Relaxed) - 1, Relaxed);
            });
        });
    });

    group.bench_function("tls_depth_counter_location_deferred", |b| {
        b.iter(|| {
            let _section = FloorSection::enter();
        });
    });

    group.bench_function("crossbeam_epoch_pin", |b| {
        drop(crossbeam_epoch::pin()); // registers this thread's handle
        b.iter(|| drop(crossbeam_epoch::pin()));
    });

    group.bench_function("std_rwlock_read", |b| {
        let lock = RwLock::new(0u64);
        // black_box: the lock is not known to be this local, uncontended one.
        let lock = black_box(&lock);
        b.iter(|| drop(lock.read().expect("never poisoned")));
    });

    group.finish();
}
