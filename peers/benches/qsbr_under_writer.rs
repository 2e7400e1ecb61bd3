//! Reads per second of an online (quiescent-state-based) reader while a
//! writer runs grace periods back to back: rcu-defer's online thread next
//! to liburcu's urcu-qsbr (through the shim, `peers/c/urcu_qsbr_shim.c`),
//! with the same loop on both sides: a read-side section that loads a
//! shared pointer and the value behind it, a quiescent state every 1024
//! reads, and a writer thread that swaps the pointer and waits for a grace
//! period in a loop. One reader, one writer (the machine this was written
//! on has 2 cores).
//!
//! rcu-defer runs in the fence flavor unless `RCU_DEFER_FLAVOR` says
//! otherwise, as `examples/urcu_workload.rs --flavor qsbr` does: online
//! readers pay no fence for their sections in either flavor, and the fence
//! flavor's writer issues plain fences where the membarrier flavor's
//! interrupts every running thread, the online reader included, twice per
//! grace period; urcu-qsbr's writer issues plain fences too.
//!
//! ```text
//! cargo bench -p peers --bench qsbr_under_writer            # 3 rounds of 2 s each
//! RCU_DEFER_FLAVOR=membarrier cargo bench -p peers --bench qsbr_under_writer
//! cargo bench -p peers --bench qsbr_under_writer -- --test  # one short round
//! ```
//!
//! Not a Criterion bench: a round is seconds long and the figure is a
//! rate. The rounds alternate between the two, and the load average is
//! printed before and after, since another process's load changes both.

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The two values the writer publishes in turn; readers check what they
/// see.
static VALUES: [u64; 2] = [8, 8];

/// rcu-defer: reads in `duration` on an online thread, and grace periods
/// of the writer meanwhile.
fn rcu_defer_round(duration: Duration) -> (u64, u64) {
    let shared = Arc::new(AtomicPtr::new(&VALUES[0] as *const u64 as *mut u64));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
        thread::spawn(move || {
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let next = &VALUES[(n & 1) as usize] as *const u64 as *mut u64;
                // Release: `rcu_assign_pointer`.
                shared.swap(next, Ordering::Release);
                rcu_defer::synchronize_rcu();
                n += 1;
            }
            n
        })
    };
    let online = rcu_defer::online();
    let deadline = Instant::now() + duration;
    let (mut reads, mut sum) = (0u64, 0u64);
    loop {
        for _ in 0..1024 {
            let _guard = rcu_defer::read_lock();
            // Acquire: `rcu_dereference`.
            let p = shared.load(Ordering::Acquire);
            // SAFETY: `p` points into the static `VALUES`.
            sum += unsafe { *p };
        }
        reads += 1024;
        online.quiescent();
        if Instant::now() >= deadline {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    // The writer's last grace period must not wait for this thread.
    let writes = online.offline(|| writer.join().expect("the writer panicked"));
    assert_eq!(sum, 8 * reads, "a read saw a wrong value");
    (reads, writes)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn main() {
    if std::env::var_os("RCU_DEFER_FLAVOR").is_none() {
        rcu_defer::set_flavor(rcu_defer::Flavor::Fence)
            .expect("nothing has decided the flavor yet");
    }
    let quick = std::env::args().any(|a| a == "--test");
    let (rounds, duration) = if quick {
        (1, Duration::from_millis(200))
    } else {
        (3, Duration::from_secs(2))
    };
    println!(
        "qsbr_under_writer: 1 online reader, 1 writer (back-to-back grace periods), {rounds} \
         round(s) of {duration:?}; rcu-defer flavor {}; load average {}",
        rcu_defer::flavor(),
        loadavg()
    );
    let per_s = |n: u64| n as f64 / duration.as_secs_f64();
    for round in 1..=rounds {
        let (reads, writes) = rcu_defer_round(duration);
        println!(
            "round {round}: rcu_defer_online   reads/s {:>14.0}  grace periods/s {:>10.0}",
            per_s(reads),
            per_s(writes)
        );
        #[cfg(peers_liburcu)]
        {
            let (reads, writes) = thread::spawn(move || {
                peers::liburcu::QsbrReader::current().reads_under_writer(duration)
            })
            .join()
            .expect("the urcu-qsbr round panicked");
            println!(
                "round {round}: liburcu_urcu_qsbr  reads/s {:>14.0}  grace periods/s {:>10.0}",
                per_s(reads),
                per_s(writes)
            );
        }
    }
    if !peers::LIBURCU {
        println!("built without liburcu: urcu-qsbr skipped (see peers/build.rs)");
    }
    println!("load average after: {}", loadavg());
}
