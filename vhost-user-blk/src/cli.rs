//! The command line, and the stats line printed at the end of each
//! connection.

use crate::backend::{ConnectionStats, DeviceConfig, Workers, DEFAULT_POLL_US, MAX_QUEUES};
use crate::request::NotifyMode;
use std::ffi::OsString;
use std::path::PathBuf;

/// `--help`.
pub const USAGE: &str = "\
usage: vhost-user-blk --socket PATH --notify per-request|batched|always-batched
                      [--size-mib N] [--queues N] [--thread-per-queue]
                      [--no-event-idx] [--latency-us N] [--poll-us N] [--once]

Serves a RAM disk (N MiB, default 256) as a vhost-user-blk device on the Unix
socket PATH, one frontend connection at a time. Never-written sectors read as a
pattern: each 8-byte word holds its byte offset on the disk (little-endian).

  --notify per-request  signal a queue's call eventfd after each completion that
                        the driver wants to be told of (EVENT_IDX)
  --notify batched      each pass over the queues with available requests
                        either signals at once or batches its signals (at most
                        one per queue, at the pass's end), whichever the
                        worker thread measures to complete more
  --notify always-batched
                        every pass batches its signals
  --queues N            the device's queues, 1 to 8 (default 1)
  --thread-per-queue    a worker thread per queue (default: one worker thread
                        serves all the queues)
  --no-event-idx        do not offer EVENT_IDX: every completion needs a signal
  --poll-us N           after a pass, poll the queues for up to N us (the window
                        adapts to the load) before sleeping until a kick, as a
                        QEMU IOThread's poll-max-ns does (default 128; 0: never)
  --latency-us N        an asynchronous disk: a request completes N us after the
                        device pops it, with all others due by then, in one pass
                        (as io_uring completions come in bursts; default 0)
  --once                exit after the first connection ends

At the end of each connection one line goes to stdout:
  vhost-user-blk stats: requests=N signals=N suppressed=N errors=N cpu_ns=N";

/// The parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// `--socket PATH`: where to listen.
    pub socket: PathBuf,
    /// `--notify per-request|batched`, `--queues N` and
    /// `--thread-per-queue`.
    pub device: DeviceConfig,
    /// `--size-mib N`: the disk's size in MiB.
    pub size_mib: u64,
    /// `--once`: exit after the first connection.
    pub once: bool,
}

/// The largest `--size-mib` (1 TiB; the disk is sparse, but the capacity
/// in sectors must stay far from overflowing).
pub const MAX_SIZE_MIB: u64 = 1 << 20;

/// The largest `--latency-us` (one second).
pub const MAX_LATENCY_US: u64 = 1_000_000;

/// The largest `--poll-us` (one millisecond).
pub const MAX_POLL_US: u64 = 1000;

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Serve.
    Run(Args),
    /// `--help`: print [`USAGE`] and exit.
    Help,
}

/// Parses the arguments (without the program name).
///
/// # Errors
///
/// A message naming the bad or missing argument.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    let mut socket = None;
    let mut notify = None;
    let mut size_mib = 256;
    let mut once = false;
    let mut queues = 1;
    let mut workers = Workers::One;
    let mut event_idx = true;
    let mut latency_us = 0;
    let mut poll_us = DEFAULT_POLL_US;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(arg) = arg.to_str().map(str::to_owned) else {
            return Err(format!("unexpected argument {arg:?}"));
        };
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(value("--socket")?)),
            "--notify" => {
                let mode = value("--notify")?;
                notify = Some(mode.to_str().and_then(NotifyMode::from_name).ok_or_else(|| {
                    format!("--notify must be per-request, batched or always-batched, not {mode:?}")
                })?);
            }
            "--size-mib" => {
                let n = value("--size-mib")?;
                size_mib = n
                    .to_str()
                    .and_then(|n| n.parse::<u64>().ok())
                    .filter(|n| (1..=MAX_SIZE_MIB).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "--size-mib must be a whole number from 1 to {MAX_SIZE_MIB}, not {n:?}"
                        )
                    })?;
            }
            "--queues" => {
                let n = value("--queues")?;
                queues = n
                    .to_str()
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| (1..=MAX_QUEUES).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "--queues must be a whole number from 1 to {MAX_QUEUES} \
                             (the device's maximum), not {n:?}"
                        )
                    })?;
            }
            "--thread-per-queue" => workers = Workers::PerQueue,
            "--no-event-idx" => event_idx = false,
            "--poll-us" => {
                let n = value("--poll-us")?;
                poll_us = n
                    .to_str()
                    .and_then(|n| n.parse::<u64>().ok())
                    .filter(|n| *n <= MAX_POLL_US)
                    .ok_or_else(|| {
                        format!(
                            "--poll-us must be a whole number from 0 to {MAX_POLL_US}, not {n:?}"
                        )
                    })?;
            }
            "--latency-us" => {
                let n = value("--latency-us")?;
                latency_us = n
                    .to_str()
                    .and_then(|n| n.parse::<u64>().ok())
                    .filter(|n| *n <= MAX_LATENCY_US)
                    .ok_or_else(|| {
                        format!(
                            "--latency-us must be a whole number from 0 to {MAX_LATENCY_US}, \
                             not {n:?}"
                        )
                    })?;
            }
            "--once" => once = true,
            "--help" | "-h" => return Ok(Command::Help),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(Command::Run(Args {
        socket: socket.ok_or("--socket PATH is required")?,
        device: DeviceConfig {
            event_idx,
            latency_us,
            poll_us,
            queues,
            workers,
            notify: notify.ok_or("--notify per-request|batched|always-batched is required")?,
        },
        size_mib,
        once,
    }))
}

/// The line printed on stdout when a connection ends.
pub fn stats_line(stats: &ConnectionStats, cpu_ns: u64) -> String {
    format!(
        "vhost-user-blk stats: requests={} signals={} suppressed={} errors={} cpu_ns={}",
        stats.queue.requests, stats.signals, stats.queue.suppressed, stats.queue.errors, cpu_ns
    )
}

/// The CPU time the process has used so far (all its threads), in
/// nanoseconds: `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`.
pub fn process_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::QueueStats;

    fn parse_strs(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn the_contract_parses() {
        assert_eq!(
            parse_strs(&["--socket", "/tmp/s", "--notify", "batched"]),
            Ok(Command::Run(Args {
                socket: "/tmp/s".into(),
                device: DeviceConfig::new(NotifyMode::Batched),
                size_mib: 256,
                once: false,
            }))
        );
        assert_eq!(
            parse_strs(&[
                "--notify",
                "per-request",
                "--size-mib",
                "64",
                "--once",
                "--socket",
                "x"
            ]),
            Ok(Command::Run(Args {
                socket: "x".into(),
                device: DeviceConfig::new(NotifyMode::PerRequest),
                size_mib: 64,
                once: true,
            }))
        );
        assert_eq!(
            parse_strs(&[
                "--socket",
                "x",
                "--notify",
                "batched",
                "--queues",
                "8",
                "--thread-per-queue",
                "--no-event-idx",
                "--latency-us",
                "50",
                "--poll-us",
                "0"
            ]),
            Ok(Command::Run(Args {
                socket: "x".into(),
                device: DeviceConfig {
                    event_idx: false,
                    latency_us: 50,
                    poll_us: 0,
                    queues: 8,
                    workers: Workers::PerQueue,
                    notify: NotifyMode::Batched,
                },
                size_mib: 256,
                once: false,
            }))
        );
        for mode in [
            NotifyMode::PerRequest,
            NotifyMode::Batched,
            NotifyMode::AlwaysBatched,
        ] {
            let Ok(Command::Run(args)) = parse_strs(&["--socket", "x", "--notify", mode.name()])
            else {
                panic!("--notify {} does not parse", mode.name());
            };
            assert_eq!(args.device.notify, mode);
        }
        assert_eq!(parse_strs(&["--help"]), Ok(Command::Help));
    }

    #[test]
    fn bad_command_lines_name_the_problem() {
        let err = |args: &[&str]| parse_strs(args).unwrap_err();
        assert!(err(&["--notify", "batched"]).contains("--socket"));
        assert!(err(&["--socket", "s"]).contains("--notify"));
        assert!(err(&["--socket", "s", "--notify", "sometimes"]).contains("sometimes"));
        assert!(err(&["--socket", "s", "--notify", "batched", "--size-mib", "0"]).contains("0"));
        assert!(err(&["--socket"]).contains("needs a value"));
        assert!(err(&["--socket", "s", "--notify", "batched", "--bogus"]).contains("--bogus"));
        let too_many = err(&["--socket", "s", "--notify", "batched", "--queues", "9"]);
        assert!(
            too_many.contains("\"9\"") && too_many.contains("1 to 8"),
            "{too_many}"
        );
        assert!(err(&["--socket", "s", "--notify", "batched", "--queues", "0"]).contains("\"0\""));
        let slow = err(&[
            "--socket",
            "s",
            "--notify",
            "batched",
            "--latency-us",
            "2000000",
        ]);
        assert!(
            slow.contains("--latency-us") && slow.contains("2000000"),
            "{slow}"
        );
    }

    #[test]
    fn the_usage_states_the_default_poll_window() {
        let default = format!("(default {DEFAULT_POLL_US}; 0: never)");
        assert!(USAGE.contains(&default), "USAGE does not say {default}");
    }

    #[test]
    fn the_stats_line_is_the_contract() {
        let stats = ConnectionStats {
            queue: QueueStats {
                requests: 10,
                suppressed: 7,
                errors: 1,
            },
            signals: 3,
        };
        assert_eq!(
            stats_line(&stats, 12345),
            "vhost-user-blk stats: requests=10 signals=3 suppressed=7 errors=1 cpu_ns=12345"
        );
    }

    #[test]
    fn cpu_time_moves_forward() {
        let before = process_cpu_ns();
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_ns() > before);
    }
}
