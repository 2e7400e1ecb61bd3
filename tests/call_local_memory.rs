//! Claims about the heap memory that deferred calls keep after they ran.
//!
//! In a binary of its own: it installs a counting global allocator, and
//! measures live heap bytes with nothing else in the process allocating
//! (its tests take turns).

mod common;

use rcu_defer::{call_local_fn, read_lock, ReadGuard};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

/// The system allocator, counting the bytes currently allocated.
struct Counting;

/// Live heap bytes of the whole process.
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments,
// unchanged, and only adds relaxed counter updates, which do not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees for `alloc`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees for `alloc_zeroed`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees for `dealloc`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees for `realloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

/// Every allocation of this test binary goes through `Counting`.
#[global_allocator]
static GLOBAL: Counting = Counting;

/// How many calls the large pass defers.
const CALLS: usize = 1_000_000;

/// How far above its baseline the live heap may stay after the large pass:
/// the calls' vectors alone would keep tens of megabytes.
const MARGIN: usize = 1 << 20;

/// Taken by each test for its whole run: measurements of the live heap
/// must not overlap.
static SERIAL: Mutex<()> = Mutex::new(());

/// Waits for the other tests' measurements to end; holds `SERIAL`.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Defers `n` closures, each adding 1 to `count`.
fn defer_bumps(n: usize, count: &Arc<AtomicUsize>) {
    for _ in 0..n {
        let count = Arc::clone(count);
        call_local_fn(move || {
            count.fetch_add(1, Ordering::Relaxed);
        });
    }
}

/// One read section that defers `n` closures, each adding 1 to `count`.
fn pass(n: usize, count: &Arc<AtomicUsize>) {
    let section = read_lock();
    defer_bumps(n, count);
    drop(section);
}

#[test]
fn a_pass_of_a_million_deferred_calls_gives_its_memory_back_once_they_ran() {
    let _serial = serial();
    let (before, after) = thread::spawn(|| {
        let count = Arc::new(AtomicUsize::new(0));
        // A small pass first: registers the thread and arms its exit-time
        // cleanup, whose allocations are not the large pass's.
        pass(100, &count);
        let before = LIVE.load(Ordering::SeqCst);
        pass(CALLS, &count);
        let after = LIVE.load(Ordering::SeqCst);
        assert_eq!(count.load(Ordering::Relaxed), 100 + CALLS, "every call ran");
        (before, after)
    })
    .join()
    .expect("the measuring thread panicked");
    assert!(
        after <= before + MARGIN,
        "{} bytes still live after the calls ran ({before} before the pass, {after} after)",
        after.saturating_sub(before)
    );
}

thread_local! {
    static HELD: RefCell<Option<ReadGuard>> = const { RefCell::new(None) };
}

/// Runs a thread that defers `n` closures in a read section whose guard
/// lives in a thread-local, and exits: the section ends, and the calls
/// run, after the library's exit-time cleanup. Waits until it has exited.
fn exit_inside_a_held_section(n: usize, count: &Arc<AtomicUsize>) {
    const NAME: &str = "exits-in-a-held-section";
    // The library reports the exit inside a section (the guard's
    // thread-local ends it later): expected, and checked.
    let report = common::reports::expect("the exit inside a held section", |report| {
        report.kind() == rcu_defer::ReportKind::ExitInSection
            && report.message().contains(&format!("thread '{NAME}'"))
    });
    let count = Arc::clone(count);
    thread::Builder::new()
        .name(NAME.to_owned())
        .spawn(move || {
            // Used before the first read_lock: destroyed after the library's
            // exit-time thread-locals.
            HELD.with(|held| assert!(held.borrow().is_none()));
            let guard = read_lock();
            HELD.with(|held| *held.borrow_mut() = Some(guard));
            defer_bumps(n, &count);
        })
        .expect("spawning a thread")
        .join()
        .expect("the exiting thread panicked");
    let report = report.next();
    assert!(
        report.message().contains(concat!(
            "is exiting inside a read section (depth 1, entered at ",
            file!()
        )),
        "{report}"
    );
}

/// How far above its baseline the live heap may be after a thread exited:
/// well below what its calls' vectors held (10,000 slots of 48 bytes).
const EXIT_MARGIN: usize = 64 << 10;

#[test]
fn calls_run_by_a_section_that_ends_at_thread_exit_leave_no_vectors_behind() {
    let _serial = serial();
    let count = Arc::new(AtomicUsize::new(0));
    // A first such thread makes what the library keeps for the process
    // (registry capacity, a stand-in record for a section open at exit).
    exit_inside_a_held_section(10_000, &count);
    assert_eq!(count.load(Ordering::Relaxed), 10_000, "every call ran");
    let before = LIVE.load(Ordering::SeqCst);
    exit_inside_a_held_section(10_000, &count);
    let after = LIVE.load(Ordering::SeqCst);
    assert_eq!(count.load(Ordering::Relaxed), 20_000, "every call ran");
    assert!(
        after <= before + EXIT_MARGIN,
        "{} bytes still live after the thread exited ({before} before, {after} after)",
        after.saturating_sub(before)
    );
}
