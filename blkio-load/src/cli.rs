//! The command line.

use crate::check::Verify;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// `--help`.
pub const USAGE: &str = "\
usage: blkio-load --socket PATH [--rw randread|randwrite|randrw] [--bs N]
                  [--queues N] [--iodepth D] [--runtime SECS] [--ios N] [--poll]
                  [--verify pattern|zeroes|none] [--seed N]

Drives the vhost-user-blk device on the Unix socket PATH (ours, or any other
backend's, such as qemu-storage-daemon's) with libblkio's virtio-blk-vhost-user
driver, like fio: a thread per queue, each keeping D requests in flight at
random block-aligned offsets.

  --rw            randread (default), randwrite, or randrw (half reads)
  --bs N          bytes per request, a multiple of 512 (default 4096; k and m
                  suffixes for KiB and MiB)
  --queues N      queues, each on its own thread (default 1)
  --iodepth D     requests in flight per queue (default 1)
  --runtime SECS  how long to run (default 5)
  --ios N         stop each queue after N requests (default: no limit)
  --poll          busy-poll for completions (default: sleep in poll(2) on the
                  queue's completion fd when there are none)
  --verify        pattern (default): every read is checked against the
                  vhost-user-blk backend's disk pattern, or this run's last
                  write of the block, and every write is read back; zeroes:
                  every read must return zeros (qemu-storage-daemon with
                  driver=null-co,read-zeroes=on); none: nothing is checked
  --seed N        the offsets' random seed (default: from the clock)

A read that does not check out ends the run with status 1, naming the offset.
At the end it prints IOPS, completions per wake-up and latency percentiles,
and one line for scripts:
  blkio-load result: iops=N completions_per_wakeup=X p50_ns=N p99_ns=N p999_ns=N";

/// fio's `rw`: which requests are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rw {
    /// Reads only.
    RandRead,
    /// Writes only (each read back with `--verify pattern`).
    RandWrite,
    /// Reads and writes, half each.
    RandRw,
}

impl Rw {
    /// fio's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Rw::RandRead => "randread",
            Rw::RandWrite => "randwrite",
            Rw::RandRw => "randrw",
        }
    }
}

/// The parsed command line: one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// `--socket PATH`.
    pub socket: PathBuf,
    /// `--rw`.
    pub rw: Rw,
    /// `--bs`, in bytes.
    pub bs: usize,
    /// `--queues`.
    pub queues: usize,
    /// `--iodepth`, per queue.
    pub iodepth: usize,
    /// `--runtime`.
    pub runtime: Duration,
    /// `--ios`: requests per queue (`None`: until the runtime is over).
    pub ios: Option<u64>,
    /// `--poll`: busy-poll instead of sleeping on the completion fd.
    pub poll: bool,
    /// `--verify`.
    pub verify: Verify,
    /// `--seed` (`None`: from the clock).
    pub seed: Option<u64>,
}

impl Job {
    /// A job with the defaults, on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Job {
        Job {
            socket: socket.into(),
            rw: Rw::RandRead,
            bs: 4096,
            queues: 1,
            iodepth: 1,
            runtime: Duration::from_secs(5),
            ios: None,
            poll: false,
            verify: Verify::Pattern,
            seed: None,
        }
    }
}

/// The most queues, and requests in flight per queue, accepted.
pub const MAX_QUEUES: usize = 64;
/// See [`MAX_QUEUES`].
pub const MAX_IODEPTH: usize = 4096;

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the job.
    Run(Job),
    /// `--help`: print [`USAGE`].
    Help,
}

/// Parses a size: a number with an optional `k`/`K` (KiB) or `m`/`M`
/// (MiB) suffix.
fn parse_size(text: &str) -> Option<usize> {
    let (digits, unit) = match text.char_indices().last()? {
        (at, 'k' | 'K') => (&text[..at], 1 << 10),
        (at, 'm' | 'M') => (&text[..at], 1 << 20),
        _ => (text, 1),
    };
    digits.parse::<usize>().ok()?.checked_mul(unit)
}

/// Parses `text` as a number from `min` to `max`, for option `name`.
fn number<T>(name: &str, text: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    text.parse::<T>()
        .ok()
        .filter(|n| *n >= min && *n <= max)
        .ok_or_else(|| format!("{name} must be a whole number from {min} to {max}, not {text:?}"))
}

/// Parses the arguments (without the program name). Options take their
/// value as the next argument or after `=`.
///
/// # Errors
///
/// A message naming the bad or missing argument.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    let mut socket = None;
    let mut job = Job::new("");
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(arg) = arg.to_str().map(str::to_owned) else {
            return Err(format!("unexpected argument {arg:?}"));
        };
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_owned(), Some(value.into())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            let value = match inline.clone() {
                Some(value) => value,
                None => args.next().ok_or_else(|| format!("{name} needs a value"))?,
            };
            value
                .into_string()
                .map_err(|v| format!("{name}: {v:?} is not UTF-8"))
        };
        match name.as_str() {
            "--socket" => socket = Some(PathBuf::from(value()?)),
            "--rw" => {
                let v = value()?;
                job.rw = match v.as_str() {
                    "randread" => Rw::RandRead,
                    "randwrite" => Rw::RandWrite,
                    "randrw" => Rw::RandRw,
                    _ => {
                        return Err(format!(
                            "--rw must be randread, randwrite or randrw, not {v:?}"
                        ))
                    }
                };
            }
            "--bs" => {
                let v = value()?;
                job.bs = parse_size(&v)
                    .filter(|&bs| bs > 0 && bs % 512 == 0 && bs <= 1 << 20)
                    .ok_or_else(|| {
                        format!("--bs must be a multiple of 512 from 512 to 1m, not {v:?}")
                    })?;
            }
            "--queues" => job.queues = number("--queues", &value()?, 1, MAX_QUEUES)?,
            "--iodepth" => job.iodepth = number("--iodepth", &value()?, 1, MAX_IODEPTH)?,
            "--runtime" => {
                let v = value()?;
                let secs = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
                    .ok_or_else(|| {
                        format!("--runtime must be a number of seconds above 0, not {v:?}")
                    })?;
                job.runtime = Duration::from_secs_f64(secs);
            }
            "--ios" => job.ios = Some(number("--ios", &value()?, 1, u64::MAX)?),
            "--poll" if inline.is_none() => job.poll = true,
            "--verify" => {
                let v = value()?;
                job.verify = match v.as_str() {
                    "pattern" => Verify::Pattern,
                    "zeroes" => Verify::Zeroes,
                    "none" => Verify::None,
                    _ => {
                        return Err(format!(
                            "--verify must be pattern, zeroes or none, not {v:?}"
                        ))
                    }
                };
            }
            "--seed" => job.seed = Some(number("--seed", &value()?, 0, u64::MAX)?),
            "--help" | "-h" => return Ok(Command::Help),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    job.socket = socket.ok_or("--socket PATH is required")?;
    Ok(Command::Run(job))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn defaults_and_every_option() {
        assert_eq!(
            parse_strs(&["--socket", "/s"]),
            Ok(Command::Run(Job::new("/s")))
        );
        let Ok(Command::Run(job)) = parse_strs(&[
            "--socket=/s",
            "--rw",
            "randrw",
            "--bs=8k",
            "--queues",
            "2",
            "--iodepth=16",
            "--runtime",
            "0.5",
            "--ios",
            "100",
            "--poll",
            "--verify=zeroes",
            "--seed",
            "7",
        ]) else {
            panic!("did not parse");
        };
        assert_eq!(
            job,
            Job {
                socket: "/s".into(),
                rw: Rw::RandRw,
                bs: 8192,
                queues: 2,
                iodepth: 16,
                runtime: Duration::from_millis(500),
                ios: Some(100),
                poll: true,
                verify: Verify::Zeroes,
                seed: Some(7),
            }
        );
        assert_eq!(parse_strs(&["--help"]), Ok(Command::Help));
    }

    #[test]
    fn bad_values_are_named() {
        let err = |args: &[&str]| parse_strs(args).unwrap_err();
        assert!(err(&[]).contains("--socket"));
        assert!(err(&["--socket", "s", "--bs", "1000"]).contains("1000"));
        assert!(err(&["--socket", "s", "--rw", "read"]).contains("\"read\""));
        assert!(err(&["--socket", "s", "--queues", "0"]).contains("--queues"));
        assert!(err(&["--socket", "s", "--verify", "yes"]).contains("yes"));
        assert!(err(&["--socket", "s", "--runtime", "-1"]).contains("-1"));
        assert!(err(&["--socket", "s", "--iodepth"]).contains("needs a value"));
        assert!(err(&["--socket", "s", "--bogus"]).contains("--bogus"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("k"), None);
        assert_eq!(parse_size(""), None);
    }
}
