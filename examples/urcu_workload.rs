//! liburcu's benchmark workload (`tests/benchmark/test_urcu.c` and
//! `test_urcu_qsbr.c`) written against rcu-defer, printing the same
//! `SUMMARY` line, so that the two can be set side by side line for line.
//!
//! ```text
//! cargo run --release --example urcu_workload -- nr_readers nr_writers duration \
//!     [-c reader_loops] [-d writer_delay_loops] [-e writer_loops] \
//!     [--flavor membarrier|fence|qsbr] [--no-sections | --counter-sections |
//!     --floor-sections | --bare-qsbr] [-v]
//! ```
//!
//! One pointer to an integer that holds 8. Each reader loops: enter a read
//! section, load the pointer, check that the integer is 8, spin
//! `reader_loops` times (`-c`), leave, count one read. Each writer loops:
//! allocate a new integer holding 8, swap it in, spin `writer_loops` times
//! (`-e`), wait for a grace period (`synchronize_rcu`), poison the old
//! integer (write 0) and free it, count one write, spin `writer_delay_loops`
//! times (`-d`; liburcu's usage text says microseconds, its code spins that
//! many loops, and so does this). After `duration` seconds every thread
//! stops, and the totals are printed as liburcu prints them. A reader that
//! ever sees a value other than 8 (a poisoned or freed integer: the grace
//! period ended too early) makes the run fail (exit status 1).
//!
//! `--flavor` (default: the process's default flavor, membarrier where the
//! kernel offers it; `--no-sections`, `--counter-sections` and
//! `--floor-sections` are described after the list):
//!
//! - `membarrier`, `fence`: readers are ordinary threads, one outermost
//!   `read_lock` per read, as liburcu's `test_urcu` (urcu-memb) and
//!   `test_urcu_mb` do;
//! - `qsbr`: readers are online threads (`rcu_defer::online`): a read
//!   section is the nesting counter only, and each reader reports a
//!   quiescent state once every 1024 reads, as liburcu's `test_urcu_qsbr`
//!   does. The flavor is the library's default (`RCU_DEFER_FLAVOR` still
//!   chooses): with every reader online and the writer not a reader, the
//!   membarrier flavor's grace periods issue no `membarrier(2)`, as
//!   liburcu's urcu-qsbr issues none.
//!
//! `--no-sections` (with `--flavor qsbr` only): the online readers load and
//! check the value with no read section at all. That is still safe: an
//! online thread's quiescent states alone protect what it loads (as with
//! DPDK's `rte_rcu_qsbr`, which has no read-side sections), and the check
//! comes before the next one. It measures what the sections cost: liburcu's
//! urcu-qsbr sections are empty, rcu-defer's count their depth and keep
//! where the outermost one began.
//!
//! `--counter-sections` (with `--flavor qsbr` only): as `--no-sections`,
//! but each read is between an increment and a decrement of a bare
//! thread-local counter (a relaxed atomic load and store each, like
//! `baseline/tls_depth_counter_inc_dec_no_fence` in `benches/read_side.rs`):
//! the floor for a read section that nests, in this workload.
//!
//! `--floor-sections` (with `--flavor qsbr` only): as `--counter-sections`,
//! but each read is inside the floor section of
//! `benches/common/floor_section.rs`: the counter, plus what rcu-defer's
//! semantics add to any section (the outermost entry's location, the
//! outermost exit's test for deferred calls). The floor for a section that
//! does what rcu-defer's online sections must do, in this workload.
//!
//! `--bare-qsbr` (with `--flavor qsbr` only): no rcu-defer at all. The
//! readers run `--no-sections`' loop, and their quiescent states and the
//! writers' grace periods are the least QSBR that keeps the workload
//! correct (the `bare` module: a slot per reader, a counter the writer
//! bumps and waits on). It is the same program with the library taken out:
//! what the loop and the harness cost on their own, so that rcu-defer's
//! online readers can be set beside it rather than beside a C program
//! whose loop the compiler lays out differently.

#[path = "../benches/common/floor_section.rs"]
mod floor_section;

use floor_section::FloorSection;
use rcu_defer::{online, read_lock, set_flavor, synchronize_rcu, Flavor};
use std::hint::spin_loop;
use std::process::ExitCode;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

/// The value every published integer holds.
const LIVE: u64 = 8;

/// What a writer writes into an integer before freeing it.
const POISON: u64 = 0;

/// The published integer (null before the first write, as in liburcu).
static POINTER: AtomicPtr<u64> = AtomicPtr::new(ptr::null_mut());
/// Set when the threads may start (liburcu's `_test_go`).
static GO: AtomicBool = AtomicBool::new(false);
/// Set when the threads must stop (liburcu's `_test_stop`).
static STOP: AtomicBool = AtomicBool::new(false);
/// Set by a reader that saw a value other than `LIVE`.
static SAW_POISON: AtomicBool = AtomicBool::new(false);

/// The run's parameters, liburcu's names.
struct Config {
    nr_readers: u32,
    nr_writers: u32,
    duration: u64,
    rduration: u64,
    wduration: u64,
    wdelay: u64,
    qsbr: bool,
    /// What each read is inside.
    sections: Sections,
    /// `--bare-qsbr`: the `bare` module's QSBR instead of rcu-defer.
    bare: bool,
    verbose: bool,
}

/// What each read is inside.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sections {
    /// A read section (`read_lock`): the default.
    Read,
    /// Nothing (`--no-sections`).
    None,
    /// A bare thread-local counter (`--counter-sections`).
    Counter,
    /// The floor section (`--floor-sections`).
    Floor,
}

/// `Sections` as `read_loop`'s const parameter.
const READ: u8 = 0;
const NONE: u8 = 1;
const COUNTER: u8 = 2;
const FLOOR: u8 = 3;

thread_local! {
    /// `--counter-sections`: the bare depth counter around each read.
    static COUNTER_DEPTH: AtomicU64 = const { AtomicU64::new(0) };
}

fn usage(prog: &str) -> ExitCode {
    println!("Usage : {prog} nr_readers nr_writers duration (s) <OPTIONS>");
    println!("OPTIONS:");
    println!("\t[-d delay] (writer period (loops))");
    println!("\t[-c duration] (reader C.S. duration (in loops))");
    println!("\t[-e duration] (writer C.S. duration (in loops))");
    println!("\t[--flavor membarrier|fence|qsbr]");
    println!("\t[--no-sections] (online readers read with no section; qsbr only)");
    println!("\t[--counter-sections] (online readers read inside a bare thread-local counter; qsbr only)");
    println!("\t[--floor-sections] (online readers read inside the least section with rcu-defer's semantics; qsbr only)");
    println!(
        "\t[--bare-qsbr] (readers and writers use a bare QSBR instead of rcu-defer; qsbr only)"
    );
    println!("\t[-v] (verbose output)");
    println!();
    ExitCode::FAILURE
}

/// Spins `loops` times (liburcu's `loop_sleep`: `caa_cpu_relax()`).
#[inline]
fn loop_sleep(loops: u64) {
    for _ in 0..loops {
        spin_loop();
    }
}

fn wait_until_go() {
    // Acquire pairs with the main thread's Release store of `GO`.
    while !GO.load(Ordering::Acquire) {
        spin_loop();
    }
}

/// One reader: returns how many reads it made. Each mode has its own loop,
/// as liburcu has one program per flavor.
fn reader(config: &Config) -> u64 {
    if config.bare {
        let slot = bare::register();
        wait_until_go();
        let reads = read_loop::<NONE>(config.rduration, config.verbose, || bare::quiescent(slot));
        bare::offline(slot);
        reads
    } else if config.qsbr {
        let online = online();
        wait_until_go();
        let quiescent = || online.quiescent();
        match config.sections {
            Sections::Read => read_loop::<READ>(config.rduration, config.verbose, quiescent),
            Sections::None => read_loop::<NONE>(config.rduration, config.verbose, quiescent),
            Sections::Counter => read_loop::<COUNTER>(config.rduration, config.verbose, quiescent),
            Sections::Floor => read_loop::<FLOOR>(config.rduration, config.verbose, quiescent),
        }
    } else {
        wait_until_go();
        read_loop::<READ>(config.rduration, config.verbose, || {})
    }
}

/// The reader's loop; `quiescent` is called once every 1024 reads (as
/// test_urcu_qsbr reports a quiescent state). Each read is inside what
/// `SECTIONS` says (`READ`, `NONE`, `COUNTER` or `FLOOR`). Not inlined: each mode's
/// loop is compiled on its own, so that adding a mode does not change how
/// the others are laid out.
#[inline(never)]
fn read_loop<const SECTIONS: u8>(rduration: u64, verbose: bool, quiescent: impl Fn()) -> u64 {
    let mut nr_reads: u64 = 0;
    loop {
        {
            let _guard = (SECTIONS == READ).then(read_lock);
            let _floor = (SECTIONS == FLOOR).then(FloorSection::enter);
            if SECTIONS == COUNTER {
                // Relaxed: the thread's own counter, as a section's depth.
                COUNTER_DEPTH.with(|d| d.store(d.load(Ordering::Relaxed) + 1, Ordering::Relaxed));
            }
            // Acquire: `rcu_dereference`; pairs with the writer's swap.
            let p = POINTER.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: `p` was published by a writer, which frees it only
                // after a grace period that waits for this section (or, on
                // an online thread, with or without a section, for its next
                // quiescent state, which comes after this check). Volatile,
                // so that the check is a real load each time.
                let value = unsafe { ptr::read_volatile(p) };
                if value != LIVE {
                    SAW_POISON.store(true, Ordering::Relaxed);
                }
            }
            if rduration != 0 {
                loop_sleep(rduration);
            }
            if SECTIONS == COUNTER {
                // Relaxed: as above.
                COUNTER_DEPTH.with(|d| d.store(d.load(Ordering::Relaxed) - 1, Ordering::Relaxed));
            }
        }
        nr_reads += 1;
        if nr_reads & ((1 << 10) - 1) == 0 {
            quiescent();
        }
        // Relaxed: a stop flag with no data attached (liburcu's
        // `uatomic_load`).
        if STOP.load(Ordering::Relaxed) {
            break;
        }
    }
    if verbose {
        match thread_cpu_seconds() {
            Some(cpu) => eprintln!(
                "reader: {nr_reads} reads in {cpu:.2} CPU-seconds of its own: {:.0} M reads per \
                 CPU-second",
                nr_reads as f64 / cpu / 1e6
            ),
            None => eprintln!("reader: {nr_reads} reads"),
        }
    }
    nr_reads
}

/// The calling thread's CPU time (user and system), from
/// `/proc/thread-self/stat` (Linux; `None` elsewhere or if unreadable).
/// Counted in clock ticks (`USER_HZ`, 100 on Linux): enough for runs of
/// seconds.
fn thread_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may
    // hold spaces: utime and stime are the 12th and 13th of them.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// One writer: returns how many writes (grace periods) it made.
fn writer(config: &Config) -> u64 {
    wait_until_go();
    let mut nr_writes: u64 = 0;
    loop {
        let new = Box::into_raw(Box::new(LIVE));
        // AcqRel: Release publishes the new integer (`rcu_xchg_pointer`);
        // Acquire makes the old one's contents ours to poison.
        let old = POINTER.swap(new, Ordering::AcqRel);
        if config.wduration != 0 {
            loop_sleep(config.wduration);
        }
        if config.bare {
            bare::synchronize();
        } else {
            synchronize_rcu();
        }
        if !old.is_null() {
            // SAFETY: `old` came from `Box::into_raw` and was unpublished
            // before the grace period, which every reader that could reach
            // it has finished: this writer owns it.
            unsafe {
                ptr::write_volatile(old, POISON);
                drop(Box::from_raw(old));
            }
        }
        nr_writes += 1;
        if STOP.load(Ordering::Relaxed) {
            break;
        }
        if config.wdelay != 0 {
            loop_sleep(config.wdelay);
        }
    }
    nr_writes
}

fn parse(args: &[String]) -> Option<Config> {
    if args.len() < 4 {
        return None;
    }
    let mut config = Config {
        nr_readers: args[1].parse().ok()?,
        nr_writers: args[2].parse().ok()?,
        duration: args[3].parse().ok()?,
        rduration: 0,
        wduration: 0,
        wdelay: 0,
        qsbr: false,
        sections: Sections::Read,
        bare: false,
        verbose: false,
    };
    let mut flavor = None;
    let mut rest = args[4..].iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "-c" => config.rduration = rest.next()?.parse().ok()?,
            "-d" => config.wdelay = rest.next()?.parse().ok()?,
            "-e" => config.wduration = rest.next()?.parse().ok()?,
            "-v" => config.verbose = true,
            "--no-sections" => config.sections = Sections::None,
            "--counter-sections" => config.sections = Sections::Counter,
            "--floor-sections" => config.sections = Sections::Floor,
            "--bare-qsbr" => config.bare = true,
            "--flavor" => {
                flavor = match rest.next()?.as_str() {
                    "membarrier" => Some(Flavor::Membarrier),
                    "fence" => Some(Flavor::Fence),
                    "qsbr" => {
                        config.qsbr = true;
                        None
                    }
                    _ => return None,
                }
            }
            _ => return None,
        }
    }
    if let Some(flavor) = flavor {
        if let Err(e) = set_flavor(flavor) {
            eprintln!("urcu_workload: {e}");
            return None;
        }
    }
    if (config.sections != Sections::Read || config.bare) && !config.qsbr {
        // Ordinary readers are protected only by their sections.
        eprintln!(
            "urcu_workload: --no-sections, --counter-sections, --floor-sections and \
             --bare-qsbr need --flavor qsbr (online readers)"
        );
        return None;
    }
    if config.bare && config.sections != Sections::Read {
        eprintln!(
            "urcu_workload: --bare-qsbr reads with no sections; it takes no other section option"
        );
        return None;
    }
    Some(config)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let prog = args.first().map_or("urcu_workload", String::as_str);
    let Some(config) = parse(&args) else {
        return usage(prog);
    };
    if config.verbose {
        eprintln!(
            "running test for {} seconds, {} readers, {} writers; flavor {}{}",
            config.duration,
            config.nr_readers,
            config.nr_writers,
            if config.bare {
                "unused".to_string()
            } else {
                rcu_defer::flavor().to_string()
            },
            match (config.qsbr, config.sections) {
                _ if config.bare => ", bare QSBR readers (no rcu-defer)",
                (true, Sections::Read) => ", online readers",
                (true, Sections::None) => ", online readers with no read sections",
                (true, Sections::Counter) => ", online readers with a bare counter for sections",
                (true, Sections::Floor) => ", online readers with floor sections",
                _ => "",
            }
        );
    }
    if config.bare {
        bare::init(config.nr_readers as usize);
    }
    let config = &config;
    let (reads, writes) = thread::scope(|s| {
        let readers: Vec<_> = (0..config.nr_readers)
            .map(|_| s.spawn(|| reader(config)))
            .collect();
        let writers: Vec<_> = (0..config.nr_writers)
            .map(|_| s.spawn(|| writer(config)))
            .collect();
        // Release pairs with the threads' Acquire loads in `wait_until_go`.
        GO.store(true, Ordering::Release);
        thread::sleep(Duration::from_secs(config.duration));
        STOP.store(true, Ordering::Relaxed);
        let reads: Vec<u64> = readers.into_iter().map(|h| h.join().unwrap()).collect();
        let writes: Vec<u64> = writers.into_iter().map(|h| h.join().unwrap()).collect();
        if config.verbose {
            eprintln!("reads per reader: {reads:?}; writes per writer: {writes:?}");
        }
        let reads: u64 = reads.iter().sum();
        let writes: u64 = writes.iter().sum();
        (reads, writes)
    });
    println!(
        "SUMMARY {:<25} testdur {:4} nr_readers {:3} rdur {:6} wdur {:6} nr_writers {:3} \
         wdelay {:6} nr_reads {:12} nr_writes {:12} nr_ops {:12}",
        prog,
        config.duration,
        config.nr_readers,
        config.rduration,
        config.wduration,
        config.nr_writers,
        config.wdelay,
        reads,
        writes,
        reads + writes
    );
    let last = POINTER.swap(ptr::null_mut(), Ordering::AcqRel);
    if !last.is_null() {
        // SAFETY: every thread has stopped: nothing else can reach it.
        drop(unsafe { Box::from_raw(last) });
    }
    if SAW_POISON.load(Ordering::Relaxed) {
        eprintln!(
            "urcu_workload: a reader saw a poisoned or freed value: grace periods ended early"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `--bare-qsbr`: the least quiescent-state-based RCU that keeps the
/// workload correct, with nothing of rcu-defer in it. Each reader has a
/// slot on a line of its own holding the grace-period counter's value at
/// its last quiescent state (`OFFLINE` when it is not reading); a writer
/// bumps the counter and waits until every slot has reached the new value:
/// it spins a little, then sleeps until a reader's quiescent state wakes
/// it, as liburcu's urcu-qsbr writers do (a writer that only spun would
/// hold up a reader that shares its CPU for a whole time slice).
mod bare {
    use std::hint::spin_loop;
    use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Mutex, OnceLock};
    use std::thread::{self, Thread};
    use std::time::{Duration, Instant};

    /// A counter alone on its line pair (adjacent-line prefetching).
    #[repr(align(128))]
    struct Slot(AtomicU64);

    /// A slot's value while its reader is not reading: later than any
    /// grace period.
    const OFFLINE: u64 = u64::MAX;
    /// How long a writer spins before it sleeps: longer than a reader
    /// takes between quiescent states here (about 2.5 µs), as liburcu's
    /// writers spin for theirs.
    const SPIN_FOR: Duration = Duration::from_micros(20);

    static GP: Slot = Slot(AtomicU64::new(1));
    static SLOTS: OnceLock<Box<[Slot]>> = OnceLock::new();
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    /// Set by a writer about to sleep: the next quiescent state wakes the
    /// writers in `SLEEPERS`.
    static WAITING: AtomicBool = AtomicBool::new(false);
    static SLEEPERS: Mutex<Vec<Thread>> = Mutex::new(Vec::new());

    /// Makes a slot for each of `readers` readers, before they start.
    pub fn init(readers: usize) {
        SLOTS.get_or_init(|| {
            (0..readers)
                .map(|_| Slot(AtomicU64::new(OFFLINE)))
                .collect()
        });
    }

    fn slots() -> &'static [Slot] {
        SLOTS
            .get()
            .expect("bare::init runs before the threads start")
    }

    /// Takes the next slot and reports a first quiescent state: the caller
    /// reads from here on.
    pub fn register() -> usize {
        // Relaxed: only hands out distinct indices.
        let slot = NEXT.fetch_add(1, Ordering::Relaxed);
        publish(slot, GP.0.load(Ordering::Acquire));
        slot
    }

    /// A quiescent state: the reader holds nothing it loaded before.
    #[inline]
    pub fn quiescent(slot: usize) {
        // Acquire pairs with the writer's bump (AcqRel): the reader's later
        // loads see what the writer unpublished before it.
        let gp = GP.0.load(Ordering::Acquire);
        // Relaxed: the reader's own slot.
        if slots()[slot].0.load(Ordering::Relaxed) != gp {
            publish(slot, gp);
        }
    }

    fn publish(slot: usize, value: u64) {
        // Release: the reader's loads before this point happen before the
        // free of a writer whose scan reads this value.
        slots()[slot].0.store(value, Ordering::Release);
        // Pairs with the writer's fence between its bump and its scan:
        // either the scan sees this store, or the reader's next loads see
        // everything the writer unpublished before its bump. And with the
        // fence after a writer sets `WAITING`: either its rescan sees this
        // store, or the load below sees `WAITING`.
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fences.
        if WAITING.load(Ordering::Relaxed) {
            WAITING.store(false, Ordering::Relaxed);
            for writer in SLEEPERS.lock().unwrap().iter() {
                writer.unpark();
            }
        }
    }

    /// The reader stops reading: grace periods no longer wait for it.
    pub fn offline(slot: usize) {
        publish(slot, OFFLINE);
    }

    /// Waits until every reader has reported a quiescent state after the
    /// call began (or gone offline).
    pub fn synchronize() {
        // AcqRel, and the fence: pair with the reader's Acquire load of the
        // counter and with its fence in `publish`.
        let gp = GP.0.fetch_add(1, Ordering::AcqRel) + 1;
        fence(Ordering::SeqCst);
        let spin_until = Instant::now() + SPIN_FOR;
        for slot in slots() {
            // Acquire pairs with the reader's Release store: its loads
            // before the quiescent state happen before the caller's free.
            while slot.0.load(Ordering::Acquire) < gp {
                if Instant::now() < spin_until {
                    spin_loop();
                    continue;
                }
                {
                    let mut sleepers = SLEEPERS.lock().unwrap();
                    if !sleepers.iter().any(|t| t.id() == thread::current().id()) {
                        sleepers.push(thread::current());
                    }
                }
                // Relaxed, then the fence: pairs with the reader's fence in
                // `publish` (see there).
                WAITING.store(true, Ordering::Relaxed);
                fence(Ordering::SeqCst);
                if slot.0.load(Ordering::Acquire) < gp {
                    // A wake-up that raced with another writer's is caught
                    // by the timeout.
                    thread::park_timeout(Duration::from_millis(1));
                }
            }
        }
    }
}
