//! How `synchronize_rcu`'s latency grows with the number of registered
//! threads, for rcu-defer and for liburcu's `urcu-memb`.
//!
//! Group `synchronize_rcu_idle_threads`: one iteration is one
//! `synchronize_rcu` on the measuring thread (itself registered, outside
//! any section) while `n` more threads (1, 10, 100, 1000) are registered
//! and idle: each has run one read section and then sleeps on a channel.
//! No reader is inside a section, so this measures what a grace period
//! costs by itself: its memory barriers (`membarrier(2)` in both
//! rcu-defer's membarrier flavor and urcu-memb) and its scans of every
//! registered thread.
//!
//! - `rcu_defer_<flavor>/<n>`: `rcu_defer::synchronize_rcu()`, once per
//!   flavor (the fence flavor in a re-executed child, see
//!   `benches/common/mod.rs` at the top of the repository).
//! - `liburcu_urcu_memb/<n>`: `urcu_memb_synchronize_rcu()` through the
//!   shim; skipped, with a message, when the crate was built without
//!   liburcu.
//!
//! ```text
//! cargo bench -p peers --bench synchronize_scale            # ~1 min
//! cargo bench -p peers --bench synchronize_scale -- --test  # each once
//! ```

#[path = "../../benches/common/mod.rs"]
mod common;

use criterion::{BenchmarkId, Criterion};
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

/// The Criterion group every contender is measured in.
const GROUP: &str = "synchronize_rcu_idle_threads";

/// The numbers of idle registered threads measured.
const THREADS: [usize; 4] = [1, 10, 100, 1000];

/// Stack size of the idle threads: they need little, and a thousand
/// default stacks would reserve 2 GiB of address space.
const STACK: usize = 128 << 10;

fn main() -> ExitCode {
    if !peers::LIBURCU && !common::is_flavor_child() {
        eprintln!(
            "synchronize_scale bench: built without liburcu (liburcu-dev not found by \
             peers/build.rs, or RCU_DEFER_PEERS_LIBURCU=0): skipping liburcu_urcu_memb"
        );
    }
    common::run_in_both_flavors(rcu_defer_synchronize, liburcu_synchronize)
}

/// `n` threads that each call `register` and then sleep until dropped.
struct IdleThreads {
    stop: mpsc::Sender<()>,
    handles: Vec<thread::JoinHandle<()>>,
}

impl IdleThreads {
    /// Starts them; returns once every one has registered.
    fn start(n: usize, register: fn()) -> IdleThreads {
        let registered = Arc::new(Barrier::new(n + 1));
        let (stop, stop_rx) = mpsc::channel::<()>();
        let stop_rx = Arc::new(Mutex::new(stop_rx));
        let handles = (0..n)
            .map(|_| {
                let registered = Arc::clone(&registered);
                let stop_rx = Arc::clone(&stop_rx);
                thread::Builder::new()
                    .stack_size(STACK)
                    .spawn(move || {
                        register();
                        registered.wait();
                        // Every thread sleeps here until the sender is
                        // dropped, which wakes them all with an error.
                        let _ = stop_rx.lock().unwrap().recv();
                    })
                    .expect("spawning an idle thread")
            })
            .collect();
        registered.wait();
        IdleThreads { stop, handles }
    }

    /// Ends the threads (they unregister as they exit).
    fn stop(self) {
        drop(self.stop);
        for handle in self.handles {
            handle.join().unwrap();
        }
    }
}

/// Registers the calling thread with rcu-defer.
fn register_rcu_defer() {
    drop(rcu_defer::read_lock());
}

fn rcu_defer_synchronize(c: &mut Criterion) {
    common::register_reader_thread();
    let mut group = c.benchmark_group(GROUP);
    let name = format!("rcu_defer_{}", common::flavor_name());
    for n in THREADS {
        let idle = IdleThreads::start(n, register_rcu_defer);
        group.bench_function(BenchmarkId::new(&name, n), |b| {
            b.iter(rcu_defer::synchronize_rcu);
        });
        idle.stop();
    }
    group.finish();
}

#[cfg(peers_liburcu)]
fn liburcu_synchronize(c: &mut Criterion) {
    use peers::liburcu::MembReader;
    fn register_urcu_memb() {
        let _ = MembReader::current();
    }
    let reader = MembReader::current();
    let mut group = c.benchmark_group(GROUP);
    for n in THREADS {
        let idle = IdleThreads::start(n, register_urcu_memb);
        group.bench_function(BenchmarkId::new("liburcu_urcu_memb", n), |b| {
            b.iter(|| reader.synchronize_rcu());
        });
        idle.stop();
    }
    group.finish();
}

#[cfg(not(peers_liburcu))]
fn liburcu_synchronize(_: &mut Criterion) {}
