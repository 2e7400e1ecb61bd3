//! The main job: what batching guest notifications does for a real virtio
//! driver at native speed.
//!
//! The workspace's vhost-user-blk backend (`vhost-user-blk/`, on rust-vmm's
//! vhost-user-backend, notifying through `rcu_defer::virtio::IrqNotifier`)
//! serves a RAM disk on a Unix socket from a thread of this process, and
//! libblkio's virtio-blk-vhost-user driver (crate `blkio`, the userspace
//! driver QEMU's `blkio` block driver uses), run by the `blkio-load` crate,
//! drives it: one thread per queue keeps `--iodepth` 4 KiB random reads in
//! flight and, when a queue has nothing completed, sleeps on the queue's
//! completion fd, which is the vring's call eventfd: it is woken by exactly
//! the signals the backend sends, as a guest is by its interrupt. EVENT_IDX
//! is negotiated. Every read is checked against the disk's pattern; a
//! wrong byte ends the run naming its offset.
//!
//! Two modes of the backend, each a fresh connection per round:
//!
//! - per-request: `IrqNotifier::notify_now()` for each completion that
//!   EVENT_IDX says the driver waits for: an eventfd write each;
//! - batched (the backend's default): each pass over the queues either
//!   signals at once or is one read section whose `notify()` calls cost
//!   each queue at most one eventfd write, as the worker thread's
//!   `rcu_defer::virtio::Moderation` chooses by measuring which completes
//!   more.
//!
//! Each mode completes `--requests` reads in `--rounds` rounds, run
//! alternately (which mode goes first alternates too); a mode's IOPS is the
//! median over its rounds, so that a burst of load from elsewhere on the
//! machine does not decide the comparison.
//!
//! ```text
//! cargo run --release --example irqfd_batching -- [--queues N] [--iodepth N]
//!     [--requests N] [--rounds N] [--thread-per-queue]
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
    eprintln!("irqfd_batching: vhost-user and eventfd are Linux-only; nothing to run here");
}

#[cfg(target_os = "linux")]
mod linux {
    use blkio_load::check::Verify;
    use blkio_load::cli::{Job, Rw};
    use blkio_load::load;
    use hdrhistogram::Histogram;
    use std::sync::{Arc, RwLock};
    use std::time::Duration;
    use vhost_user_blk::backend::{DeviceConfig, Workers, DEFAULT_POLL_US, MAX_QUEUES};
    use vhost_user_blk::disk::{RamDisk, SECTOR_SIZE};
    use vhost_user_blk::request::NotifyMode;
    use vhost_user_blk::serve::serve_one;

    /// The disk: 256 MiB, as the backend's default.
    const DISK_BYTES: u64 = 256 << 20;

    /// What the command line asks for.
    struct Args {
        queues: usize,
        iodepth: usize,
        requests: u64,
        rounds: u64,
        workers: Workers,
        event_idx: bool,
        latency_us: u64,
        poll_us: u64,
    }

    fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut parsed = Args {
            queues: 1,
            iodepth: 64,
            requests: 7_000_000,
            rounds: 7,
            workers: Workers::One,
            event_idx: true,
            latency_us: 0,
            poll_us: DEFAULT_POLL_US,
        };
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> Result<u64, String> {
                let v = args.next().ok_or_else(|| format!("{name} needs a value"))?;
                v.parse()
                    .map_err(|_| format!("{name} takes a number, not {v:?}"))
            };
            match arg.as_str() {
                "--queues" => parsed.queues = value("--queues")? as usize,
                "--iodepth" => parsed.iodepth = value("--iodepth")? as usize,
                "--requests" => parsed.requests = value("--requests")?,
                "--rounds" => parsed.rounds = value("--rounds")?,
                "--thread-per-queue" => parsed.workers = Workers::PerQueue,
                "--no-event-idx" => parsed.event_idx = false,
                "--latency-us" => parsed.latency_us = value("--latency-us")?.min(1_000_000),
                "--poll-us" => parsed.poll_us = value("--poll-us")?.min(1000),
                "--help" | "-h" => {
                    println!(
                        "cargo run --release --example irqfd_batching -- [--queues N (1..={MAX_QUEUES}, \
                         default 1)] [--iodepth N (per queue, default 64)] [--requests N (per \
                         mode, default 7000000)] [--rounds N (default 7)] [--thread-per-queue] \
                         [--no-event-idx] [--latency-us N] [--poll-us N (default {DEFAULT_POLL_US}; 0: never)] (the \
                         backend's options of those names)"
                    );
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other:?} (--help for the usage)")),
            }
        }
        if !(1..=MAX_QUEUES).contains(&parsed.queues) {
            return Err(format!("--queues must be 1 to {MAX_QUEUES}"));
        }
        if !(1..=1024).contains(&parsed.iodepth) {
            return Err("--iodepth must be 1 to 1024".to_owned());
        }
        if parsed.rounds == 0 || parsed.requests < parsed.rounds * parsed.queues as u64 {
            return Err(
                "--rounds must be at least 1, and --requests at least one request \
                        per queue and round"
                    .to_owned(),
            );
        }
        Ok(parsed)
    }

    /// One mode's rounds, added up.
    struct Mode {
        notify: NotifyMode,
        iops: Vec<f64>,
        completions: u64,
        signals: u64,
        suppressed: u64,
        wakeups: u64,
        latency: Histogram<u64>,
    }

    impl Mode {
        fn new(notify: NotifyMode) -> Mode {
            Mode {
                notify,
                iops: Vec::new(),
                completions: 0,
                signals: 0,
                suppressed: 0,
                wakeups: 0,
                latency: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                    .expect("constant bounds are valid"),
            }
        }

        fn median_iops(&self) -> f64 {
            let mut sorted = self.iops.clone();
            sorted.sort_by(f64::total_cmp);
            let n = sorted.len();
            if n % 2 == 1 {
                sorted[n / 2]
            } else {
                (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
            }
        }

        fn per_completion(&self, count: u64) -> f64 {
            count as f64 / self.completions.max(1) as f64
        }
    }

    /// One round of `mode`: a fresh backend connection, a load of
    /// `per_queue` reads per queue, checked against the backend's counts.
    fn round(
        args: &Args,
        mode: &mut Mode,
        disk: &Arc<RwLock<RamDisk>>,
        per_queue: u64,
        seed: u64,
    ) -> Result<(), String> {
        let socket =
            std::env::temp_dir().join(format!("irqfd-batching-{}.sock", std::process::id()));
        let config = DeviceConfig {
            event_idx: args.event_idx,
            latency_us: args.latency_us,
            poll_us: args.poll_us,
            queues: args.queues,
            workers: args.workers,
            notify: mode.notify,
        };
        let connection = serve_one(&socket, config, Arc::clone(disk))
            .map_err(|e| format!("cannot start the backend: {e}"))?;
        let job = Job {
            rw: Rw::RandRead,
            queues: args.queues,
            iodepth: args.iodepth,
            // A bound only: the round ends after its requests.
            runtime: Duration::from_secs(600),
            ios: Some(per_queue),
            verify: Verify::Pattern,
            seed: Some(seed),
            ..Job::new(&socket)
        };
        let report = load::run(&job);
        let stats = connection.join()?;
        let report = report?;
        if stats.queue.errors != 0 {
            return Err(format!(
                "the backend refused {} requests of a well-formed driver",
                stats.queue.errors
            ));
        }
        if stats.queue.requests != report.completions() {
            return Err(format!(
                "the backend completed {} requests, the driver saw {}",
                stats.queue.requests,
                report.completions()
            ));
        }
        mode.iops.push(report.iops());
        mode.completions += report.completions();
        mode.signals += stats.signals;
        mode.suppressed += stats.queue.suppressed;
        mode.wakeups += report.wakeups();
        mode.latency
            .add(report.latency())
            .map_err(|e| format!("latency histogram: {e}"))?;
        Ok(())
    }

    pub fn run(args: impl Iterator<Item = String>) -> Result<(), String> {
        let args = parse(args)?;
        let disk = Arc::new(RwLock::new(RamDisk::new(DISK_BYTES / SECTOR_SIZE)));
        let per_queue = args.requests / args.rounds / args.queues as u64;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = match args.workers {
            Workers::One => 1,
            Workers::PerQueue => args.queues,
        };
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        println!(
            "irqfd batching: libblkio's virtio-blk driver against the vhost-user-blk backend \
             ({} queue{}, {workers} worker thread{}), iodepth {} per queue (4 KiB random \
             reads), EVENT_IDX {}{}{}; {} reads per mode in {} alternating rounds, {:?} \
             flavor, {cpus} CPUs",
            args.queues,
            plural(args.queues),
            plural(workers),
            args.iodepth,
            if args.event_idx { "on" } else { "off" },
            match args.latency_us {
                0 => String::new(),
                us => format!(", disk latency {us} us"),
            },
            match args.poll_us {
                0 => ", no polling".to_owned(),
                us => format!(", polling up to {us} us"),
            },
            per_queue * args.queues as u64 * args.rounds,
            args.rounds,
            rcu_defer::flavor(),
        );
        let mut modes = [
            Mode::new(NotifyMode::PerRequest),
            Mode::new(NotifyMode::Batched),
        ];
        for r in 0..args.rounds {
            let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let mode = &mut modes[i];
                round(&args, mode, &disk, per_queue, r + 1)?;
                println!(
                    "round {}/{} {:<11} {:>9.0} IOPS",
                    r + 1,
                    args.rounds,
                    mode.notify.name(),
                    mode.iops.last().copied().unwrap_or_default()
                );
            }
        }
        println!("(IOPS: median of the rounds; counts: totals; latency: all requests)");
        println!(
            "{:<12} {:>9} {:>14} {:>10} {:>9} {:>17} {:>15} {:>7} {:>7}",
            "mode",
            "IOPS",
            "eventfd writes",
            "suppressed",
            "wake-ups",
            "writes/completion",
            "completions/wake",
            "p50 us",
            "p99 us"
        );
        for mode in &modes {
            let us = |q: f64| mode.latency.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "{:<12} {:>9.0} {:>14} {:>10} {:>9} {:>17.4} {:>15.2} {:>7.1} {:>7.1}",
                mode.notify.name(),
                mode.median_iops(),
                mode.signals,
                mode.suppressed,
                mode.wakeups,
                mode.per_completion(mode.signals),
                mode.completions as f64 / mode.wakeups.max(1) as f64,
                us(0.50),
                us(0.99)
            );
        }
        let [per_request, batched] = &modes;
        println!(
            "speedup: {:.2}x (eventfd writes {} vs {})",
            batched.median_iops() / per_request.median_iops(),
            batched.signals,
            per_request.signals
        );
        Ok(())
    }
}
