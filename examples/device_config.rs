//! A worked example of moving device configuration from an `RwLock` to an
//! `RcuCell`, measured under a live writer.
//!
//! A small virtio-blk-like device: I/O threads serve requests, and every
//! request reads the device's configuration (queue size, negotiated feature
//! bits, the table of backing-file extents) to decide whether it may write
//! and where in which file its sector lives. A control thread reconfigures
//! the device 1,000 times per second (toggles a feature, resizes the queue,
//! reopens the backing files), paced by a deadline that advances by 1 ms
//! per update.
//!
//! The same workload runs four times, once per way of sharing the
//! configuration. The only code that differs is the `SharedConfig` impl of
//! each (read the impls side by side: that is the migration):
//!
//! - `std::sync::RwLock<Config>`: readers take the read lock per request;
//!   the writer takes the write lock and changes the value in place;
//! - `parking_lot::RwLock<Config>`: the same, with parking_lot's lock;
//! - `arc_swap::ArcSwap<Config>`: readers `load()`; the writer copies,
//!   changes and stores a new `Arc<Config>` (`rcu`);
//! - `rcu_defer::RcuCell<Config>`: readers take a `read_lock()` guard and
//!   `read` through it; the writer copies and publishes with `update`, and
//!   the old value is freed after a grace period on the `rcu-call` thread.
//!
//! Each variant runs two phases of `--secs` seconds, with the writer active
//! throughout:
//!
//! 1. throughput: the I/O threads serve requests back to back with no clock
//!    reads; requests/s is per I/O thread (the mean over them);
//! 2. latency: every request's read-and-use of the configuration (from
//!    taking the lock or guard to releasing it) is timed with two
//!    `Instant::now()` calls and recorded in an HDR histogram
//!    (`hdrhistogram` crate), merged across I/O threads; the table shows
//!    its p50, p99, p99.9, p99.99 and max, in nanoseconds. Each figure
//!    includes the cost of one clock read; the header prints that floor
//!    (an empty timed region) so you can subtract it. The max is usually
//!    a preemption of the I/O thread, whichever variant it runs.
//!
//! "updates" is how many reconfigurations the control thread completed over
//! both phases. There are `max(1, available_parallelism - 1)` I/O threads
//! and one control thread.
//!
//! ```text
//! cargo run --release --example device_config -- [--secs S] [--writer-hz N] [--io-threads N] [--batch-window-us N]
//! ```
//!
//! `--writer-hz 0` runs without the control thread, to see what the writer
//! costs the readers. `--batch-window-us` sets
//! [`rcu_defer::set_call_rcu_batch_window`] (default 5000): how long the
//! `rcu-call` thread lets retired values gather before one grace period
//! frees them all; 0 runs a grace period per batch as soon as it is queued,
//! which at a high writer rate interrupts the readers once per update.

use arc_swap::ArcSwap;
use hdrhistogram::Histogram;
use rcu_defer::{read_lock, RcuCell};
use std::hint::black_box;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// The device: its configuration and what a request does with it.
// ---------------------------------------------------------------------------

/// virtio-blk feature bits the example uses (virtio 1.2, 5.2.3).
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// The disk is split into this many extents, each stored in its own
/// backing file.
const EXTENTS: usize = 8;
/// Sectors (512 bytes) per extent.
const EXTENT_SECTORS: u64 = 1 << 21;
/// The first backing file's descriptor; the others follow.
const FIRST_FD: i32 = 10;

/// Where one extent of the virtual disk lives.
#[derive(Clone, Debug)]
struct Extent {
    /// The backing file's descriptor.
    fd: i32,
    /// Byte offset of the extent in that file.
    offset: u64,
}

/// The device configuration every request reads.
#[derive(Clone, Debug)]
struct Config {
    /// Bumped by every reconfiguration.
    generation: u64,
    /// Negotiated virtqueue size.
    queue_size: u16,
    /// Negotiated feature bits.
    features: u64,
    /// The backing-file table: extent `i` of the disk is `backing[i]`.
    backing: Vec<Extent>,
}

impl Config {
    fn initial() -> Config {
        let mut config = Config {
            generation: 0,
            queue_size: 256,
            features: VIRTIO_BLK_F_FLUSH | VIRTIO_RING_F_EVENT_IDX,
            backing: Vec::new(),
        };
        config.backing = (0..EXTENTS).map(|i| config.extent(i)).collect();
        config
    }

    /// The backing file of extent `i` in this generation: reconfiguring
    /// "reopens" the files, so the descriptors rotate.
    fn extent(&self, i: usize) -> Extent {
        let slot = (i + self.generation as usize) % EXTENTS;
        Extent {
            fd: FIRST_FD + slot as i32,
            offset: (i as u64) * EXTENT_SECTORS * 512,
        }
    }

    /// One reconfiguration, as the control thread applies it: toggle the
    /// write cache (FLUSH), resize the queue, reopen the backing files.
    fn advance(&mut self) {
        self.generation += 1;
        self.features ^= VIRTIO_BLK_F_FLUSH;
        self.queue_size = if self.queue_size == 256 { 128 } else { 256 };
        for i in 0..EXTENTS {
            self.backing[i] = self.extent(i);
        }
    }
}

/// A guest request: read or write one sector.
#[derive(Clone, Copy)]
struct Request {
    sector: u64,
    write: bool,
}

/// What serving a request needs from the configuration: the status, and
/// where the I/O goes (file and position), as a pread/pwrite would get it.
/// The "I/O" itself is not done; the result is folded into a checksum so
/// the work cannot be optimized away.
///
/// # Panics
///
/// If the backing table does not belong to the configuration's generation:
/// a torn read, which none of the four variants may produce.
fn handle(config: &Config, request: Request) -> u64 {
    if request.write && config.features & VIRTIO_BLK_F_RO != 0 {
        return u64::MAX; // VIRTIO_BLK_S_IOERR
    }
    let index = (request.sector / EXTENT_SECTORS) as usize;
    let extent = &config.backing[index];
    assert_eq!(
        extent.fd,
        config.extent(index).fd,
        "torn read: backing table of another generation"
    );
    let position = extent.offset + (request.sector % EXTENT_SECTORS) * 512;
    let flush = config.features & VIRTIO_BLK_F_FLUSH != 0 && request.write;
    position ^ ((extent.fd as u64) << 48) ^ u64::from(config.queue_size) ^ u64::from(flush)
}

// ---------------------------------------------------------------------------
// The four ways of sharing the configuration. This is the part to compare.
// ---------------------------------------------------------------------------

/// How I/O threads read the configuration and how the control thread
/// changes it.
trait SharedConfig: Send + Sync + 'static {
    const NAME: &'static str;
    fn new(config: Config) -> Self;
    /// Serves one request: read the configuration, use it, let go.
    fn serve(&self, request: Request) -> u64;
    /// Applies one reconfiguration.
    fn reconfigure(&self);
}

impl SharedConfig for std::sync::RwLock<Config> {
    const NAME: &'static str = "std::sync::RwLock";
    fn new(config: Config) -> Self {
        std::sync::RwLock::new(config)
    }
    fn serve(&self, request: Request) -> u64 {
        let config = self.read().expect("never poisoned");
        handle(&config, request)
    }
    fn reconfigure(&self) {
        self.write().expect("never poisoned").advance();
    }
}

impl SharedConfig for parking_lot::RwLock<Config> {
    const NAME: &'static str = "parking_lot::RwLock";
    fn new(config: Config) -> Self {
        parking_lot::RwLock::new(config)
    }
    fn serve(&self, request: Request) -> u64 {
        let config = self.read();
        handle(&config, request)
    }
    fn reconfigure(&self) {
        self.write().advance();
    }
}

impl SharedConfig for ArcSwap<Config> {
    const NAME: &'static str = "arc_swap::ArcSwap";
    fn new(config: Config) -> Self {
        ArcSwap::from_pointee(config)
    }
    fn serve(&self, request: Request) -> u64 {
        let config = self.load();
        handle(&config, request)
    }
    fn reconfigure(&self) {
        self.rcu(|old| {
            let mut new = Config::clone(old);
            new.advance();
            new
        });
    }
}

impl SharedConfig for RcuCell<Config> {
    const NAME: &'static str = "rcu_defer::RcuCell";
    fn new(config: Config) -> Self {
        RcuCell::new(config)
    }
    fn serve(&self, request: Request) -> u64 {
        let guard = read_lock();
        handle(self.read(&guard), request)
    }
    fn reconfigure(&self) {
        self.update(|old| {
            let mut new = old.clone();
            new.advance();
            new
        });
    }
}

// ---------------------------------------------------------------------------
// The harness: I/O threads, the control thread, the phases, the table.
// ---------------------------------------------------------------------------

const USAGE: &str = "usage: device_config [--secs S] [--writer-hz N] [--io-threads N] \
    [--batch-window-us N]\n  \
    --secs S              seconds per phase per variant, decimals allowed (default 2)\n  \
    --writer-hz N         reconfigurations per second, 0 for no control thread (default 1000)\n  \
    --io-threads N        I/O (reader) threads (default max(1, available_parallelism - 1))\n  \
    --batch-window-us N   rcu-defer's call_rcu batch window in microseconds (default 5000)";

struct Options {
    phase: Duration,
    writer_hz: u32,
    io_threads: usize,
    batch_window: Option<Duration>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let mut options = Options {
        phase: Duration::from_secs(2),
        writer_hz: 1000,
        io_threads: cpus.saturating_sub(1).max(1),
        batch_window: None,
    };
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))?;
        let bad = || format!("bad value '{value}' for {arg}\n{USAGE}");
        match arg.as_str() {
            "--secs" => {
                let secs: f64 = value.parse().map_err(|_| bad())?;
                options.phase = Duration::try_from_secs_f64(secs)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(bad)?;
            }
            "--writer-hz" => options.writer_hz = value.parse().map_err(|_| bad())?,
            "--io-threads" => {
                options.io_threads = value.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?;
            }
            "--batch-window-us" => {
                options.batch_window =
                    Some(Duration::from_micros(value.parse().map_err(|_| bad())?));
            }
            _ => return Err(format!("unknown argument '{arg}'\n{USAGE}")),
        }
    }
    Ok(options)
}

/// The phases, as the I/O threads see them in `Phase`.
const THROUGHPUT: u8 = 0;
const LATENCY: u8 = 1;
const STOP: u8 = 2;

/// Requests served between two looks at the phase.
const BATCH: u64 = 256;

/// How many periods the control thread may fall behind before it skips
/// deadlines instead of catching up.
const MAX_BEHIND: u32 = 10;

/// Latencies are recorded in nanoseconds, up to 10 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid bounds")
}

/// A cheap per-thread request generator (xorshift): random sectors over
/// the whole disk, one request in four a write.
fn next_request(state: &mut u64) -> Request {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    Request {
        sector: *state % (EXTENTS as u64 * EXTENT_SECTORS),
        write: *state >> 62 == 0,
    }
}

/// What one variant's run produced.
struct Row {
    name: &'static str,
    requests_per_sec: f64,
    latency: Histogram<u64>,
    updates: u64,
    writer_secs: f64,
}

/// One I/O thread's results.
struct IoResult {
    requests: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

fn io_thread<S: SharedConfig>(
    shared: &S,
    phase: &AtomicU8,
    start: &Barrier,
    seed: u64,
) -> IoResult {
    let mut rng = seed | 1;
    let mut checksum = 0u64;
    // Warm up (a thread's first read_lock registers it, for instance)
    // before the measurement starts.
    for _ in 0..10_000 {
        checksum ^= shared.serve(next_request(&mut rng));
    }
    start.wait();

    // Phase 1: throughput, no clock reads in the loop.
    let begin = Instant::now();
    let mut requests = 0;
    while phase.load(Ordering::Relaxed) == THROUGHPUT {
        for _ in 0..BATCH {
            checksum ^= shared.serve(next_request(&mut rng));
        }
        requests += BATCH;
    }
    let elapsed = begin.elapsed();

    // Phase 2: every request timed.
    let mut latency = histogram();
    while phase.load(Ordering::Relaxed) == LATENCY {
        for _ in 0..BATCH {
            let request = next_request(&mut rng);
            let t0 = Instant::now();
            checksum ^= shared.serve(request);
            latency.saturating_record(t0.elapsed().as_nanos() as u64);
        }
    }
    black_box(checksum);
    IoResult {
        requests,
        elapsed,
        latency,
    }
}

/// Reconfigures `writer_hz` times per second until the phase is STOP.
/// The deadline advances by one period per update, so a late wake-up is
/// made up by the next ones; if the thread falls more than `MAX_BEHIND`
/// periods behind (descheduled for long, or blocked by readers), it skips
/// the missed deadlines rather than catching up in a burst.
fn control_thread<S: SharedConfig>(shared: &S, phase: &AtomicU8, start: &Barrier, hz: u32) -> u64 {
    start.wait();
    let period = Duration::from_secs(1) / hz;
    let mut next = Instant::now() + period;
    let mut updates = 0;
    loop {
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        }
        if phase.load(Ordering::Relaxed) == STOP {
            return updates;
        }
        shared.reconfigure();
        updates += 1;
        next += period;
        let now = Instant::now();
        if now > next + period * MAX_BEHIND {
            next = now + period;
        }
    }
}

fn run<S: SharedConfig>(options: &Options) -> Row {
    let shared = S::new(Config::initial());
    let phase = AtomicU8::new(THROUGHPUT);
    let writers = usize::from(options.writer_hz > 0);
    let start = Barrier::new(options.io_threads + writers + 1);

    let (io, updates, writer_secs) = thread::scope(|s| {
        let io: Vec<_> = (0..options.io_threads)
            .map(|i| {
                let (shared, phase, start) = (&shared, &phase, &start);
                let seed = 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1);
                thread::Builder::new()
                    .name(format!("io-{i}"))
                    .spawn_scoped(s, move || io_thread(shared, phase, start, seed))
                    .expect("spawn an I/O thread")
            })
            .collect();
        let control = (options.writer_hz > 0).then(|| {
            let (shared, phase, start) = (&shared, &phase, &start);
            thread::Builder::new()
                .name("control".into())
                .spawn_scoped(s, move || {
                    control_thread(shared, phase, start, options.writer_hz)
                })
                .expect("spawn the control thread")
        });

        start.wait();
        let begin = Instant::now();
        thread::sleep(options.phase);
        phase.store(LATENCY, Ordering::Relaxed);
        thread::sleep(options.phase);
        phase.store(STOP, Ordering::Relaxed);
        let io: Vec<IoResult> = io
            .into_iter()
            .map(|t| t.join().expect("I/O thread"))
            .collect();
        let updates = control.map_or(0, |t| t.join().expect("control thread"));
        (io, updates, begin.elapsed().as_secs_f64())
    });

    let mut latency = histogram();
    for result in &io {
        latency.add(&result.latency).expect("same bounds");
    }
    let requests_per_sec = io
        .iter()
        .map(|r| r.requests as f64 / r.elapsed.as_secs_f64())
        .sum::<f64>()
        / io.len() as f64;
    Row {
        name: S::NAME,
        requests_per_sec,
        latency,
        updates,
        writer_secs,
    }
}

/// The cost of an empty timed region (`Instant::now()` and `elapsed()`),
/// which every latency figure includes.
fn clock_floor() -> Histogram<u64> {
    let mut floor = histogram();
    for _ in 0..200_000 {
        let t0 = Instant::now();
        floor.saturating_record(t0.elapsed().as_nanos() as u64);
    }
    floor
}

fn main() {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("device_config: {message}");
            std::process::exit(2);
        }
    };
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(window) = options.batch_window {
        rcu_defer::set_call_rcu_batch_window(window);
    }
    let window = options
        .batch_window
        .map_or_else(|| "default".to_owned(), |w| format!("{} us", w.as_micros()));
    let floor = clock_floor();
    let writer = match options.writer_hz {
        0 => "no control thread".to_string(),
        hz => format!("1 control thread at {hz} updates/s"),
    };
    println!(
        "device_config: {} I/O thread(s) + {writer}, {:.1} s per phase, {cpus} CPUs, rcu-defer flavor {}, call_rcu batch window {window}",
        options.io_threads,
        options.phase.as_secs_f64(),
        rcu_defer::flavor(),
    );
    println!(
        "requests/s: per I/O thread, no clock reads. latency (ns): read and use of the config per \
         request, every request timed with Instant::now (empty timed region: p50 {} ns, p99 {} ns)",
        floor.value_at_quantile(0.5),
        floor.value_at_quantile(0.99),
    );

    let rows = [
        run::<std::sync::RwLock<Config>>(&options),
        run::<parking_lot::RwLock<Config>>(&options),
        run::<ArcSwap<Config>>(&options),
        run::<RcuCell<Config>>(&options),
    ];
    // Let the rcu-call thread free the retired configurations.
    rcu_defer::drain_call_rcu();

    println!(
        "{:<20} {:>11} {:>7} {:>6} {:>6} {:>8} {:>9} {:>10} {:>7} {:>9}",
        "variant",
        "requests/s",
        "vs std",
        "p50",
        "p99",
        "p99.9",
        "p99.99",
        "max",
        "updates",
        "updates/s"
    );
    let baseline = rows[0].requests_per_sec;
    for row in &rows {
        let q = |quantile| row.latency.value_at_quantile(quantile);
        println!(
            "{:<20} {:>10.1}M {:>6.2}x {:>6} {:>6} {:>8} {:>9} {:>10} {:>7} {:>9.0}",
            row.name,
            row.requests_per_sec / 1e6,
            row.requests_per_sec / baseline,
            q(0.5),
            q(0.99),
            q(0.999),
            q(0.9999),
            row.latency.max(),
            row.updates,
            row.updates as f64 / row.writer_secs,
        );
        if options.writer_hz > 0 && row.updates == 0 {
            eprintln!(
                "device_config: the control thread completed no update for {}",
                row.name
            );
            std::process::exit(1);
        }
    }
}
