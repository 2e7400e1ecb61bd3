//! A ring-level check of a virtio device and of batched guest
//! notifications, with a guest driver written here: a real split virtqueue,
//! real eventfds and two real threads. (The main job,
//! `examples/irqfd_batching.rs`, drives the vhost-user-blk backend with
//! libblkio's driver instead.)
//!
//! A virtio-blk-like device (`device.rs`) runs on rust-vmm's
//! `virtio_queue::Queue` over a `vm_memory::GuestMemoryMmap` held by
//! `rcu_defer::vm::GuestMemoryRcu`. A guest-driver thread (`driver.rs`, the
//! part to check against the virtio 1.x spec) lays out the split ring in
//! that guest memory, keeps `--depth` 4 KiB read requests in flight, kicks
//! the device through an ioeventfd, sleeps on the irqfd, and checks every
//! completion (status byte, used length, and the data against the disk's
//! contents) before posting the next request. `VIRTIO_F_EVENT_IDX` is
//! negotiated, as Linux guests do, unless `--no-event-idx`. Two modes:
//!
//! - unbatched: `IrqNotifier::notify_now()` for each completion that
//!   `Queue::needs_notification` says needs one: an eventfd write each;
//! - batched: each device pass runs inside one read section and calls
//!   `notify()`, so a pass costs at most one eventfd write.
//!
//! The requests of each mode are split into `--rounds` rounds, run
//! alternately (which mode goes first alternates too), and each mode's
//! completions/s is the median over its rounds, so that a burst of load from
//! elsewhere on the machine does not decide the comparison. A round's time
//! runs from the driver's first request to its last checked completion; a
//! fresh guest memory, queue and pair of eventfds are set up before it.
//!
//! `--bad-every N` makes the driver post a malformed chain as every N-th
//! request (a data buffer outside guest memory, a device-writable header,
//! no status descriptor, in turn); the device must answer each as
//! `blk.rs` says and count it, and the run checks both sides' counts.
//!
//! ```text
//! cargo run --release --example ring_driver -- [--depth N] [--requests N] [--rounds N]
//!     [--no-event-idx] [--bad-every N]
//! ```

#[cfg(target_os = "linux")]
mod blk;
#[cfg(target_os = "linux")]
mod device;
#[cfg(target_os = "linux")]
mod driver;

#[cfg(target_os = "linux")]
fn main() {
    if let Err(message) = linux::run(std::env::args().skip(1)) {
        eprintln!("ring_driver: {message}");
        std::process::exit(2);
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("ring_driver: eventfd is Linux-only; nothing to run here");
}

/// The guest memory map type both sides use.
#[cfg(target_os = "linux")]
type Memory = vm_memory::GuestMemoryMmap<()>;

/// How the device sends its interrupts.
#[cfg(target_os = "linux")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Unbatched = 0,
    Batched = 1,
}

/// How each side learns that the other has stopped.
#[cfg(target_os = "linux")]
#[derive(Default)]
struct Lifecycle {
    /// Set by the driver when it returns (then it kicks).
    driver_done: std::sync::atomic::AtomicBool,
    /// Set by the device when it stops on an error (then it signals the
    /// irqfd).
    device_failed: std::sync::atomic::AtomicBool,
}

#[cfg(target_os = "linux")]
mod linux {
    use super::blk::{self, Malformed};
    use super::device::{Device, DeviceStats};
    use super::driver::{Driver, DriverStats, Layout};
    use super::{Lifecycle, Memory, Mode};
    use rcu_defer::flavor;
    use rcu_defer::virtio::{EventFd, IrqNotifier, NotifyStats};
    use rcu_defer::vm::GuestMemoryRcu;
    use std::io::Write;
    use std::sync::Arc;
    use std::thread;
    use std::time::{Duration, Instant};
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{GuestAddress, GuestAddressSpace};

    const USAGE: &str = "usage: ring_driver [--depth N] [--requests N] [--rounds N] \
        [--no-event-idx] [--complete-inline] [--bad-every N]\n  \
        --depth N       requests in flight (default 64, at most 4096)\n  \
        --requests N    completions per mode (default 1000000)\n  \
        --rounds N      alternating rounds per mode, the median is over them (default 5;\n                  \
        11 or more to judge small differences, e.g. at --depth 1)\n  \
        --no-event-idx  do not negotiate VIRTIO_F_EVENT_IDX\n  \
        --complete-inline  complete each request right after executing it, instead of\n                  \
        executing a pass's requests first and then completing them all\n  \
        --bad-every N   post a malformed chain as every N-th request (default 0: none)";

    struct Options {
        depth: u16,
        requests: u64,
        rounds: u64,
        event_idx: bool,
        complete_inline: bool,
        bad_every: u64,
    }

    fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut depth = 64;
        let mut options = Options {
            depth: 0,
            requests: 1_000_000,
            rounds: 5,
            event_idx: true,
            complete_inline: false,
            bad_every: 0,
        };
        let mut args = args;
        while let Some(arg) = args.next() {
            let (slot, zero_ok) = match arg.as_str() {
                "--depth" => (&mut depth, false),
                "--requests" => (&mut options.requests, false),
                "--rounds" => (&mut options.rounds, false),
                "--bad-every" => (&mut options.bad_every, true),
                "--no-event-idx" => {
                    options.event_idx = false;
                    continue;
                }
                "--complete-inline" => {
                    options.complete_inline = true;
                    continue;
                }
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
                Ok(n) if n > 0 || zero_ok => n,
                _ if zero_ok => {
                    return Err(format!(
                        "{arg} must be a non-negative integer, not '{value}'"
                    ))
                }
                _ => return Err(format!("{arg} must be a positive integer, not '{value}'")),
            };
        }
        options.depth = match u16::try_from(depth) {
            Ok(d) if d <= Layout::MAX_DEPTH => d,
            _ => {
                return Err(format!(
                    "--depth must be at most {}, not {depth}",
                    Layout::MAX_DEPTH
                ))
            }
        };
        if options.rounds > options.requests {
            return Err(format!(
                "--rounds ({}) cannot exceed --requests ({})",
                options.rounds, options.requests
            ));
        }
        Ok(options)
    }

    impl Mode {
        fn name(self) -> &'static str {
            match self {
                Mode::Unbatched => "unbatched",
                Mode::Batched => "batched",
            }
        }
    }

    /// One mode's results: of a round, or summed over rounds (with the
    /// median rate).
    #[derive(Default)]
    struct Outcome {
        completions_per_sec: f64,
        irq: NotifyStats,
        driver: DriverStats,
        device: DeviceStats,
    }

    /// One round: `total` requests through a fresh queue.
    fn run_round(mode: Mode, options: &Options, total: u64) -> Result<Outcome, String> {
        let layout = Layout::new(options.depth);
        let map =
            Memory::from_ranges(&[(GuestAddress(0), layout.memory_len as usize)]).map_err(|e| {
                format!(
                    "cannot map {} bytes of guest memory: {e}",
                    layout.memory_len
                )
            })?;
        let gm = GuestMemoryRcu::new(map);
        let irq = IrqNotifier::new(EventFd::new().map_err(|e| e.to_string())?);
        let kick = Arc::new(EventFd::new().map_err(|e| e.to_string())?);
        let lifecycle = Arc::new(Lifecycle::default());

        // What a VMM does when the driver writes the queue's registers and
        // sets DRIVER_OK: the queue takes the driver's layout and features.
        let queue_error = |e: virtio_queue::Error| format!("queue set-up: {e}");
        let mut queue = Queue::new(layout.queue_size).map_err(queue_error)?;
        queue.try_set_size(layout.queue_size).map_err(queue_error)?;
        queue
            .try_set_desc_table_address(layout.desc_table)
            .map_err(queue_error)?;
        queue
            .try_set_avail_ring_address(layout.avail_ring)
            .map_err(queue_error)?;
        queue
            .try_set_used_ring_address(layout.used_ring)
            .map_err(queue_error)?;
        queue.set_event_idx(options.event_idx);
        queue.set_ready(true);
        if !queue.is_valid(&*gm.memory()) {
            return Err("queue set-up: the rings do not fit guest memory".to_owned());
        }

        let device = {
            let device = Device::new(
                queue,
                gm.clone(),
                Arc::clone(&kick),
                Arc::clone(&irq),
                mode,
                options.complete_inline,
                Arc::clone(&lifecycle),
            );
            thread::Builder::new()
                .name("device".to_owned())
                .spawn(move || device.run())
                .map_err(|e| e.to_string())?
        };
        let driver = Driver::new(
            gm,
            layout,
            Arc::clone(&irq),
            kick,
            lifecycle,
            options.event_idx,
            options.bad_every,
        );
        let driver = thread::Builder::new()
            .name("guest".to_owned())
            .spawn(move || driver.run(total))
            .map_err(|e| e.to_string())?;

        let driver = driver.join().map_err(|_| "the guest thread panicked")?;
        let device = device.join().map_err(|_| "the device thread panicked")?;
        // The device's error explains the driver's, so it goes first.
        let device = device?;
        let driver = driver?;

        let irq = irq.stats();
        let checks = [
            (
                device.completions == total,
                format!(
                    "the device completed {} requests, not {total}",
                    device.completions
                ),
            ),
            (
                irq.requested == device.notified,
                format!(
                    "{} notifications requested, but needs_notification said yes {} times",
                    irq.requested, device.notified
                ),
            ),
            (
                irq.failed == 0,
                format!("{} eventfd writes failed", irq.failed),
            ),
            (
                device.malformed == driver.malformed,
                format!(
                    "the device refused {:?} chains by kind, the driver posted {:?} malformed",
                    device.malformed, driver.malformed
                ),
            ),
        ];
        if let Some((_, message)) = checks.into_iter().find(|(ok, _)| !ok) {
            return Err(format!("{} mode: {message}", mode.name()));
        }
        Ok(Outcome {
            completions_per_sec: total as f64 / driver.elapsed.as_secs_f64(),
            irq,
            driver,
            device,
        })
    }

    /// Adds a round's counts to a mode's totals.
    fn accumulate(sum: &mut Outcome, round: Outcome) {
        sum.irq.requested += round.irq.requested;
        sum.irq.signalled += round.irq.signalled;
        sum.irq.failed += round.irq.failed;
        sum.driver.completions += round.driver.completions;
        sum.driver.wakeups += round.driver.wakeups;
        sum.driver.kicks += round.driver.kicks;
        sum.device.completions += round.device.completions;
        sum.device.notified += round.device.notified;
        sum.device.suppressed += round.device.suppressed;
        for kind in 0..Malformed::COUNT {
            sum.driver.malformed[kind] += round.driver.malformed[kind];
            sum.device.malformed[kind] += round.device.malformed[kind];
            if sum.device.first[kind].is_none() {
                sum.device.first[kind] = round.device.first[kind];
            }
        }
    }

    /// Runs every round of both modes, alternating; returns per mode the
    /// median completions/s and the summed counts.
    fn run_all(options: &Options) -> Result<[Outcome; 2], String> {
        let start = Instant::now();
        let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut sums = [Outcome::default(), Outcome::default()];
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
                let o = run_round(mode, options, total)?;
                let m = mode as usize;
                rates[m].push(o.completions_per_sec);
                accumulate(&mut sums[m], o);
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
        for (m, sum) in sums.iter_mut().enumerate() {
            let rates = &mut rates[m];
            rates.sort_by(f64::total_cmp);
            sum.completions_per_sec = rates[rates.len() / 2];
        }
        Ok(sums)
    }

    /// The malformed chains both modes posted, how the device answered,
    /// and the first of each kind as the device reported it.
    fn print_malformed(options: &Options, outcome: &Outcome) {
        let posted: u64 = outcome.driver.malformed.iter().sum();
        println!(
            "malformed chains (--bad-every {}): {posted} per mode, each refused, counted \
             and answered as expected:",
            options.bad_every
        );
        for kind in Malformed::ALL {
            let count = outcome.device.malformed[kind as usize];
            if count == 0 {
                continue;
            }
            let answer = match kind.answer() {
                Some(status) => format!("{}, used length 1", blk::status_name(status)),
                None => "no status, used length 0".to_owned(),
            };
            let example = outcome.device.first[kind as usize]
                .map_or_else(String::new, |r| format!("; first: {r}"));
            println!("  {count} {} ({answer}){example}", kind.name());
        }
    }

    pub fn run(args: impl Iterator<Item = String>) -> Result<(), String> {
        let options = parse(args)?;
        let layout = Layout::new(options.depth);
        println!(
            "ring driver: virtio-blk on a {}-entry split virtqueue, depth {} (4 KiB reads \
             in flight), EVENT_IDX {}; {} completions per mode in {} alternating rounds, {} \
             flavor, {} CPUs",
            layout.queue_size,
            options.depth,
            if options.event_idx { "on" } else { "off" },
            options.requests,
            options.rounds,
            flavor(),
            thread::available_parallelism().map_or(1, |n| n.get())
        );
        let [unbatched, batched] = run_all(&options)?;
        println!("(completions/s: median of the rounds; counts: totals)");

        println!(
            "{:<10} {:>14} {:>15} {:>11} {:>15} {:>9} {:>18}",
            "mode",
            "completions/s",
            "eventfd writes",
            "suppressed",
            "guest wake-ups",
            "kicks",
            "writes/completion"
        );
        for (mode, o) in [(Mode::Unbatched, &unbatched), (Mode::Batched, &batched)] {
            println!(
                "{:<10} {:>14.0} {:>15} {:>11} {:>15} {:>9} {:>18.4}",
                mode.name(),
                o.completions_per_sec,
                o.irq.signalled,
                o.device.suppressed,
                o.driver.wakeups,
                o.driver.kicks,
                o.irq.signalled as f64 / options.requests as f64
            );
        }
        if options.bad_every > 0 {
            print_malformed(&options, &batched);
        }
        println!(
            "speedup: {:.2}x (eventfd writes {} vs {})",
            batched.completions_per_sec / unbatched.completions_per_sec,
            batched.irq.signalled,
            unbatched.irq.signalled
        );
        Ok(())
    }
}
