//! What batching guest notifications buys, with real eventfds and a real
//! consumer thread.
//!
//! A device thread completes requests in passes of `--depth` (like one
//! io_uring or Linux AIO completion pass): each completion puts an entry on
//! a used ring and notifies the guest through an `IrqNotifier`. A guest
//! thread blocks on the eventfd (poll + read) and counts its wake-ups and
//! the completions it has seen. Two modes run one after the other:
//!
//! - unbatched: `notify_now()` per completion, one eventfd write each;
//! - batched: the pass runs inside one outer read section and calls
//!   `notify()`, so each pass costs one eventfd write.
//!
//! The requests of each mode are split into `--rounds` rounds, run
//! alternately (which mode goes first alternates too), and each mode's
//! completions/s is the median over its rounds, so that a burst of load from
//! elsewhere on the machine does not decide the comparison.
//!
//! ```text
//! cargo run --release --example irqfd_batching -- [--depth N] [--requests N] [--rounds N]
//! ```

#[cfg(target_os = "linux")]
fn main() {
    if let Err(message) = linux::run(std::env::args().skip(1)) {
        eprintln!("irqfd_batching: {message}");
        std::process::exit(2);
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("irqfd_batching: eventfd is Linux-only; nothing to run here");
}

#[cfg(target_os = "linux")]
mod linux {
    use rcu_defer::virtio::{EventFd, IrqNotifier, NotifyStats};
    use rcu_defer::{flavor, read_lock};
    use std::io::Write;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::thread;
    use std::time::{Duration, Instant};

    const USAGE: &str = "usage: irqfd_batching [--depth N] [--requests N] [--rounds N]\n  \
        --depth N     completions per pass (default 64)\n  \
        --requests N  completions per mode (default 1000000)\n  \
        --rounds N    rounds per mode, alternating modes (default 5)";

    struct Options {
        depth: u64,
        requests: u64,
        rounds: u64,
    }

    fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut options = Options {
            depth: 64,
            requests: 1_000_000,
            rounds: 5,
        };
        let mut args = args;
        while let Some(arg) = args.next() {
            let slot = match arg.as_str() {
                "--depth" => &mut options.depth,
                "--requests" => &mut options.requests,
                "--rounds" => &mut options.rounds,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
            };
            let value = args
                .next()
                .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))?;
            *slot = match value.parse::<u64>() {
                Ok(n) if n > 0 => n,
                _ => return Err(format!("{arg} must be a positive integer, not '{value}'")),
            };
        }
        if options.rounds > options.requests {
            return Err(format!(
                "--rounds ({}) cannot exceed --requests ({})",
                options.rounds, options.requests
            ));
        }
        Ok(options)
    }

    /// The device's used ring, as far as this example needs one.
    struct UsedRing {
        entries: Vec<AtomicU32>,
        /// Completions published so far (the guest reads it after a wake-up).
        idx: AtomicU64,
    }

    impl UsedRing {
        fn new() -> UsedRing {
            UsedRing {
                entries: (0..256).map(|_| AtomicU32::new(0)).collect(),
                idx: AtomicU64::new(0),
            }
        }

        /// Puts request `id` on the ring and publishes it.
        fn complete(&self, id: u64) {
            let idx = self.idx.load(Ordering::Relaxed);
            let slot = (idx % self.entries.len() as u64) as usize;
            self.entries[slot].store(id as u32, Ordering::Relaxed);
            // Release: the entry is visible before the index that covers it.
            self.idx.store(idx + 1, Ordering::Release);
        }
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        Unbatched = 0,
        Batched = 1,
    }

    impl Mode {
        fn name(self) -> &'static str {
            match self {
                Mode::Unbatched => "unbatched",
                Mode::Batched => "batched",
            }
        }
    }

    struct Outcome {
        completions_per_sec: f64,
        stats: NotifyStats,
        wakeups: u64,
    }

    /// One round: `total` completions in passes of `depth`.
    fn run_round(mode: Mode, depth: u64, total: u64) -> Result<Outcome, String> {
        let irq = IrqNotifier::new(EventFd::new().map_err(|e| e.to_string())?);
        let ring = Arc::new(UsedRing::new());

        let guest = {
            let irq = Arc::clone(&irq);
            let ring = Arc::clone(&ring);
            thread::Builder::new()
                .name("guest".to_owned())
                .spawn(move || -> Result<u64, String> {
                    let mut wakeups = 0;
                    loop {
                        // A timeout only so that a lost signal is an error
                        // here, not a hang.
                        let signals = irq
                            .notifier()
                            .wait(Some(Duration::from_secs(10)))
                            .map_err(|e| format!("guest: {e}"))?;
                        if signals == 0 {
                            return Err(format!(
                                "guest: no interrupt for 10 s with {} of {total} completions seen",
                                ring.idx.load(Ordering::Acquire)
                            ));
                        }
                        wakeups += 1;
                        irq.take_isr();
                        if ring.idx.load(Ordering::Acquire) >= total {
                            return Ok(wakeups);
                        }
                    }
                })
                .map_err(|e| e.to_string())?
        };

        let start = Instant::now();
        let mut done = 0;
        while done < total {
            let pass = depth.min(total - done);
            match mode {
                Mode::Unbatched => {
                    for id in done..done + pass {
                        ring.complete(id);
                        irq.notify_now();
                    }
                }
                Mode::Batched => {
                    let _pass = read_lock();
                    for id in done..done + pass {
                        ring.complete(id);
                        irq.notify();
                    }
                }
            }
            done += pass;
        }
        let elapsed = start.elapsed();
        let wakeups = guest.join().map_err(|_| "the guest thread panicked")??;

        let stats = irq.stats();
        if stats.failed > 0 {
            return Err(format!("{} eventfd writes failed", stats.failed));
        }
        if stats.requested != total {
            return Err(format!(
                "{} notifications requested, expected {total}",
                stats.requested
            ));
        }
        Ok(Outcome {
            completions_per_sec: total as f64 / elapsed.as_secs_f64(),
            stats,
            wakeups,
        })
    }

    /// Runs every round of both modes, alternating; returns per mode the
    /// median completions/s and the summed counts.
    fn run_all(options: &Options) -> Result<[Outcome; 2], String> {
        let start = Instant::now();
        let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut sums = [(NotifyStats::default(), 0u64); 2];
        let mut shown = false;
        for round in 0..options.rounds {
            // Split the requests evenly; the first rounds take the remainder.
            let total = options.requests / options.rounds
                + u64::from(round < options.requests % options.rounds);
            let order = if round % 2 == 0 {
                [Mode::Unbatched, Mode::Batched]
            } else {
                [Mode::Batched, Mode::Unbatched]
            };
            for mode in order {
                let o = run_round(mode, options.depth, total)?;
                let m = mode as usize;
                rates[m].push(o.completions_per_sec);
                sums[m].0.requested += o.stats.requested;
                sums[m].0.signalled += o.stats.signalled;
                sums[m].0.failed += o.stats.failed;
                sums[m].1 += o.wakeups;
            }
            if start.elapsed() > Duration::from_secs(1) {
                eprint!("\r  round {}/{} done", round + 1, options.rounds);
                let _ = std::io::stderr().flush();
                shown = true;
            }
        }
        if shown {
            eprintln!();
        }
        Ok([0, 1].map(|m| {
            let rates = &mut rates[m];
            rates.sort_by(f64::total_cmp);
            Outcome {
                completions_per_sec: rates[rates.len() / 2],
                stats: sums[m].0,
                wakeups: sums[m].1,
            }
        }))
    }

    pub fn run(args: impl Iterator<Item = String>) -> Result<(), String> {
        let options = parse(args)?;
        println!(
            "irqfd batching: {} completions per mode in {} alternating rounds, {} per pass, \
             {} flavor, {} CPUs",
            options.requests,
            options.rounds,
            options.depth,
            flavor(),
            thread::available_parallelism().map_or(1, |n| n.get())
        );
        let [unbatched, batched] = run_all(&options)?;
        println!("(completions/s: median of the rounds; counts: totals)");

        println!(
            "{:<10} {:>14} {:>15} {:>15} {:>18}",
            "mode", "completions/s", "eventfd writes", "guest wake-ups", "writes/completion"
        );
        for (mode, o) in [(Mode::Unbatched, &unbatched), (Mode::Batched, &batched)] {
            println!(
                "{:<10} {:>14.0} {:>15} {:>15} {:>18.4}",
                mode.name(),
                o.completions_per_sec,
                o.stats.signalled,
                o.wakeups,
                o.stats.signalled as f64 / options.requests as f64
            );
        }
        println!(
            "speedup: {:.2}x (eventfd writes {} vs {})",
            batched.completions_per_sec / unbatched.completions_per_sec,
            batched.stats.signalled,
            unbatched.stats.signalled
        );
        Ok(())
    }
}
