//! The load: connecting to the device, one thread per queue keeping
//! `iodepth` requests in flight, checking what comes back, and the report.

use crate::check::{self, Verify};
use crate::cli::{Job, Rw};
use crate::io::{Done, QueueIo};
use blkio::Blkio;
use hdrhistogram::Histogram;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A connected device: libblkio's instance, its started queues (each with
/// its buffers), and the capacity.
pub struct Device {
    /// libblkio's instance (connected and started).
    pub blkio: Blkio,
    /// The queues, `job.queues` of them, each with `job.iodepth` buffers of
    /// `job.bs` bytes.
    pub queues: Vec<QueueIo>,
    /// The device's capacity in bytes.
    pub capacity: u64,
}

fn blkio_error(what: &str) -> impl Fn(blkio::Error) -> String + '_ {
    move |e| format!("{what}: {}", e.message())
}

/// Connects libblkio's virtio-blk-vhost-user driver to `job.socket` and
/// starts `job.queues` queues of a size that holds `job.iodepth` requests.
///
/// # Errors
///
/// libblkio's message: the socket cannot be reached, the backend lacks a
/// protocol feature libblkio requires, it has fewer queues than asked
/// for, and the like.
pub fn connect(job: &Job) -> Result<Device, String> {
    let mut blkio =
        Blkio::new("virtio-blk-vhost-user").map_err(blkio_error("cannot create the driver"))?;
    let path = job
        .socket
        .to_str()
        .ok_or_else(|| format!("the socket path {:?} is not UTF-8", job.socket))?;
    blkio
        .set_str("path", path)
        .map_err(blkio_error("cannot set the socket path"))?;
    blkio.connect().map_err(blkio_error(&format!(
        "cannot connect to {}",
        job.socket.display()
    )))?;
    let num_queues = i32::try_from(job.queues).map_err(|_| "too many queues".to_owned())?;
    blkio
        .set_i32("num-queues", num_queues)
        .map_err(blkio_error("cannot ask for the queues"))?;
    // Three descriptors a request (header, data, status), no indirect
    // tables: a ring of 3 * iodepth entries holds them all (libblkio keeps
    // any excess back until there is room).
    let queue_size = (3 * job.iodepth).next_power_of_two().clamp(256, 1024);
    blkio
        .set_i32("queue-size", queue_size as i32)
        .map_err(blkio_error("cannot set the queue size"))?;
    let capacity = blkio
        .get_u64("capacity")
        .map_err(blkio_error("cannot read the capacity"))?;
    let started = blkio.start().map_err(blkio_error(&format!(
        "cannot start {} queue(s) on {}",
        job.queues,
        job.socket.display()
    )))?;
    let mut queues = Vec::with_capacity(job.queues);
    for queue in started.queues {
        queues.push(
            QueueIo::new(&mut blkio, queue, job.iodepth, job.bs)
                .map_err(blkio_error("cannot set up the buffers"))?,
        );
    }
    Ok(Device {
        blkio,
        queues,
        capacity,
    })
}

/// What one queue did.
#[derive(Clone, Debug)]
pub struct QueueReport {
    /// Reads completed (read-backs not included).
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Read-backs of this run's writes completed.
    pub read_backs: u64,
    /// Returns from the wait on the completion fd (0 with `--poll`).
    pub wakeups: u64,
    /// From the first submission to the last completion.
    pub elapsed: Duration,
    /// Per-request latency, submission to completion seen, in ns.
    pub latency: Histogram<u64>,
}

impl QueueReport {
    /// All requests completed.
    pub fn completions(&self) -> u64 {
        self.reads + self.writes + self.read_backs
    }
}

/// A small xorshift generator (offsets need no better).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    ReadBack,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::ReadBack => "read-back",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    op: Op,
    block: u64,
    submitted: Instant,
}

/// One queue's run: the state of its requests.
struct QueueRun<'a> {
    job: &'a Job,
    index: usize,
    /// The queue's blocks are `r * queues + index` for `r` below this:
    /// queues never touch each other's blocks.
    blocks: u64,
    rng: Rng,
    slots: Vec<Slot>,
    /// Blocks with a request in flight (one at a time per block).
    busy: HashSet<u64>,
    /// This run's last write key of each block it wrote.
    written: HashMap<u64, u64>,
    next_key: u64,
}

impl QueueRun<'_> {
    fn offset(&self, block: u64) -> u64 {
        (block * self.job.queues as u64 + self.index as u64) * self.job.bs as u64
    }

    fn submit(&mut self, io: &mut QueueIo, slot: usize, op: Op, block: u64, now: Instant) {
        let offset = self.offset(block);
        self.slots[slot] = Slot {
            op,
            block,
            submitted: now,
        };
        match op {
            Op::Read | Op::ReadBack => io.read(slot, offset),
            Op::Write => {
                let key = check::write_key(self.next_key);
                self.next_key += 1;
                check::fill_written(io.slot_mut(slot), offset, key);
                if self.job.verify == Verify::Pattern {
                    self.written.insert(block, key);
                }
                io.write(slot, offset);
            }
        }
    }

    /// A new request from `slot` at a random block no request is using.
    fn submit_new(&mut self, io: &mut QueueIo, slot: usize, now: Instant) {
        let op = match self.job.rw {
            Rw::RandRead => Op::Read,
            Rw::RandWrite => Op::Write,
            Rw::RandRw if self.rng.next() & 1 == 0 => Op::Read,
            Rw::RandRw => Op::Write,
        };
        let block = loop {
            let block = self.rng.below(self.blocks);
            if self.busy.insert(block) {
                break block;
            }
        };
        self.submit(io, slot, op, block, now);
    }

    /// Checks a completed read.
    fn check(&self, io: &QueueIo, done: &Done, slot: &Slot) -> Result<(), String> {
        let offset = self.offset(slot.block);
        let data = io.slot(done.slot);
        let result = match (self.job.verify, slot.op) {
            (Verify::None, _) | (_, Op::Write) => Ok(()),
            (Verify::Zeroes, _) => check::check_zeroes(data, offset),
            (Verify::Pattern, _) => match self.written.get(&slot.block) {
                Some(&key) => check::check_exact(data, offset, Some(key)),
                None => check::check_unwritten(data, offset),
            },
        };
        result.map_err(|mismatch| {
            format!(
                "queue {}: the {} of {} bytes at offset {offset} returned wrong data: {mismatch}",
                self.index,
                slot.op.name(),
                self.job.bs
            )
        })
    }
}

/// Runs `job`'s load on queue `index` (`io`) of a device of `capacity`
/// bytes until the runtime is over (or `job.ios` requests are done, or
/// `stop` is set), then waits for the requests in flight.
///
/// # Errors
///
/// A request failed, a read did not check out (the message names the
/// offset), libblkio failed, or `stop` was set because another queue
/// failed. `stop` is set on the way out of any error.
pub fn run_queue(
    io: &mut QueueIo,
    job: &Job,
    index: usize,
    capacity: u64,
    stop: &AtomicBool,
) -> Result<QueueReport, String> {
    let result = run_queue_inner(io, job, index, capacity, stop);
    if result.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    result
}

fn run_queue_inner(
    io: &mut QueueIo,
    job: &Job,
    index: usize,
    capacity: u64,
    stop: &AtomicBool,
) -> Result<QueueReport, String> {
    let total_blocks = capacity / job.bs as u64;
    let blocks = total_blocks
        .saturating_sub(index as u64)
        .div_ceil(job.queues as u64);
    if blocks < job.iodepth as u64 * 2 {
        return Err(format!(
            "the device's {capacity} bytes hold {total_blocks} blocks of {}: too few for \
             {} queue(s) with {} requests in flight each",
            job.bs, job.queues, job.iodepth
        ));
    }
    let seed = job.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let start = Instant::now();
    let mut run = QueueRun {
        job,
        index,
        blocks,
        rng: Rng::new(seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        slots: vec![
            Slot {
                op: Op::Read,
                block: 0,
                submitted: start,
            };
            job.iodepth
        ],
        busy: HashSet::new(),
        written: HashMap::new(),
        next_key: 0,
    };
    let fd = if job.poll {
        None
    } else {
        io.set_completion_fd_enabled(true);
        Some(
            io.completion_fd()
                .map_err(|e| format!("queue {index}: {e}"))?,
        )
    };
    let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
        .map_err(|e| format!("cannot make a histogram: {e}"))?;
    let (mut reads, mut writes, mut read_backs, mut wakeups) = (0u64, 0u64, 0u64, 0u64);
    let deadline = start + job.runtime;
    let ios = job.ios.unwrap_or(u64::MAX);
    let mut issued = 0u64;
    let mut in_flight = 0usize;
    for slot in 0..job.iodepth {
        if issued < ios {
            run.submit_new(io, slot, start);
            issued += 1;
            in_flight += 1;
        }
    }
    let mut done = Vec::with_capacity(job.iodepth);
    let mut stopping = false;
    let mut last = start;
    while in_flight > 0 {
        done.clear();
        let n = io
            .do_io(&mut done)
            .map_err(|e| format!("queue {index}: libblkio: {}", e.message()))?;
        if n == 0 {
            if stop.load(Ordering::Relaxed) {
                return Err(format!("queue {index}: stopped (another queue failed)"));
            }
            match &fd {
                Some(fd) => {
                    fd.wait()
                        .map_err(|e| format!("queue {index}: waiting for completions: {e}"))?;
                    wakeups += 1;
                }
                None => std::hint::spin_loop(),
            }
            continue;
        }
        let now = Instant::now();
        last = now;
        if !stopping && (now >= deadline || stop.load(Ordering::Relaxed)) {
            stopping = true;
        }
        for d in &done {
            let Some(&slot) = run.slots.get(d.slot) else {
                return Err(format!(
                    "queue {index}: a completion for request {}, which was not submitted",
                    d.slot
                ));
            };
            in_flight -= 1;
            let _ = latency.record(now.duration_since(slot.submitted).as_nanos().max(1) as u64);
            if d.ret != 0 {
                return Err(format!(
                    "queue {index}: the {} of {} bytes at offset {} failed: {}",
                    slot.op.name(),
                    job.bs,
                    run.offset(slot.block),
                    std::io::Error::from_raw_os_error(-d.ret)
                ));
            }
            run.check(io, d, &slot)?;
            match slot.op {
                Op::Read => reads += 1,
                Op::Write => writes += 1,
                Op::ReadBack => read_backs += 1,
            }
            if slot.op == Op::Write && job.verify == Verify::Pattern {
                // Every write is read back, even when stopping.
                run.submit(io, d.slot, Op::ReadBack, slot.block, now);
                in_flight += 1;
                continue;
            }
            run.busy.remove(&slot.block);
            if !stopping && issued < ios {
                run.submit_new(io, d.slot, now);
                issued += 1;
                in_flight += 1;
            }
        }
    }
    Ok(QueueReport {
        reads,
        writes,
        read_backs,
        wakeups,
        elapsed: last.duration_since(start),
        latency,
    })
}

/// What the whole job did.
#[derive(Clone, Debug)]
pub struct Report {
    /// The job.
    pub job: Job,
    /// Each queue's.
    pub queues: Vec<QueueReport>,
}

impl Report {
    /// All queues' requests completed.
    pub fn completions(&self) -> u64 {
        self.queues.iter().map(QueueReport::completions).sum()
    }

    /// The longest queue's run.
    pub fn elapsed(&self) -> Duration {
        self.queues
            .iter()
            .map(|q| q.elapsed)
            .max()
            .unwrap_or_default()
    }

    /// Requests completed per second over [`elapsed`](Self::elapsed).
    pub fn iops(&self) -> f64 {
        let secs = self.elapsed().as_secs_f64();
        if secs > 0.0 {
            self.completions() as f64 / secs
        } else {
            0.0
        }
    }

    /// Wake-ups from the completion fd, all queues.
    pub fn wakeups(&self) -> u64 {
        self.queues.iter().map(|q| q.wakeups).sum()
    }

    /// Completions per wake-up (`None` with `--poll`, or no wake-up).
    pub fn completions_per_wakeup(&self) -> Option<f64> {
        let wakeups = self.wakeups();
        (wakeups > 0).then(|| self.completions() as f64 / wakeups as f64)
    }

    /// All queues' latencies together.
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)
            .expect("constant bounds are valid");
        for q in &self.queues {
            let _ = all.add(&q.latency);
        }
        all
    }

    /// The line for scripts: `blkio-load result: iops=N
    /// completions_per_wakeup=X p50_ns=N p99_ns=N p999_ns=N`
    /// (`completions_per_wakeup=-` with `--poll`).
    pub fn result_line(&self) -> String {
        let latency = self.latency();
        format!(
            "blkio-load result: iops={:.0} completions_per_wakeup={} p50_ns={} p99_ns={} p999_ns={}",
            self.iops(),
            self.completions_per_wakeup()
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.2}")),
            latency.value_at_quantile(0.50),
            latency.value_at_quantile(0.99),
            latency.value_at_quantile(0.999),
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let job = &self.job;
        let sum = |get: fn(&QueueReport) -> u64| self.queues.iter().map(get).sum::<u64>();
        writeln!(
            f,
            "blkio-load: {} bs={} queues={} iodepth={} on {} ({}, verify {})",
            job.rw.name(),
            job.bs,
            job.queues,
            job.iodepth,
            job.socket.display(),
            if job.poll {
                "busy-polling"
            } else {
                "sleeping on the completion fd"
            },
            job.verify.name()
        )?;
        writeln!(
            f,
            "IOPS: {:.0} ({} requests in {:.3} s: {} reads, {} writes, {} read-backs)",
            self.iops(),
            self.completions(),
            self.elapsed().as_secs_f64(),
            sum(|q| q.reads),
            sum(|q| q.writes),
            sum(|q| q.read_backs),
        )?;
        match self.completions_per_wakeup() {
            Some(c) => writeln!(
                f,
                "completions per wake-up: {c:.2} ({} wake-ups)",
                self.wakeups()
            )?,
            None => writeln!(f, "completions per wake-up: - (no wake-ups)")?,
        }
        let latency = self.latency();
        let us = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
        writeln!(
            f,
            "latency: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us",
            us(0.50),
            us(0.99),
            us(0.999)
        )?;
        write!(f, "{}", self.result_line())
    }
}

/// Runs `job`: connects, runs a thread per queue, and reports.
///
/// # Errors
///
/// What [`connect`] or any queue's [`run_queue`] returned (the first
/// queue's error that is not a stop caused by another).
pub fn run(job: &Job) -> Result<Report, String> {
    let mut device = connect(job)?;
    let stop = AtomicBool::new(false);
    let capacity = device.capacity;
    let results: Vec<Result<QueueReport, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = device
            .queues
            .iter_mut()
            .enumerate()
            .map(|(index, io)| {
                let stop = &stop;
                std::thread::Builder::new()
                    .name(format!("queue-{index}"))
                    .spawn_scoped(scope, move || run_queue(io, job, index, capacity, stop))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| match handle {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err("a queue thread panicked".to_owned())),
                Err(e) => Err(format!("cannot start a queue thread: {e}")),
            })
            .collect()
    });
    let mut queues = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for result in results {
        match result {
            Ok(report) => queues.push(report),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        // The queue that failed first, rather than the ones it stopped.
        let first = errors
            .iter()
            .find(|e| !e.contains("stopped (another queue failed)"))
            .unwrap_or(&errors[0]);
        return Err(first.clone());
    }
    drop(device);
    Ok(Report {
        job: job.clone(),
        queues,
    })
}
