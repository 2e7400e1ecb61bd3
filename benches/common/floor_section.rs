//! The least a nesting read section with rcu-defer's semantics does on a
//! thread that publishes nothing (an online thread): count its depth, note
//! where the outermost section began (the quiescent-in-section and deadlock
//! messages name it), and look for deferred calls at the outermost end
//! (`call_local` batches end there). Nothing here is rcu-defer's code: it is
//! the floor its online sections are measured against, in
//! `peers/benches/read_side_peers.rs` and in `examples/urcu_workload.rs`
//! (`--floor-sections`), which include this file with `#[path]`.

use std::panic::Location;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize};

/// A thread's state for [`FloorSection`].
struct FloorState {
    depth: AtomicUsize,
    entered_at: AtomicPtr<Location<'static>>,
    deferred: AtomicBool,
}

thread_local! {
    static FLOOR: FloorState = const {
        FloorState {
            depth: AtomicUsize::new(0),
            entered_at: AtomicPtr::new(std::ptr::null_mut()),
            deferred: AtomicBool::new(false),
        }
    };
}

/// A floor section: entered by [`FloorSection::enter`], left when dropped.
/// Relaxed atomics throughout: plain moves that the compiler must keep, as
/// the reader's own words are.
pub struct FloorSection;

impl FloorSection {
    /// Enters a section: at depth 0, notes the caller's location.
    #[inline(always)]
    #[track_caller]
    pub fn enter() -> FloorSection {
        let at = Location::caller();
        FLOOR.with(|floor| {
            let depth = floor.depth.load(Relaxed);
            if depth == 0 {
                floor
                    .entered_at
                    .store(at as *const Location<'static> as *mut _, Relaxed);
            }
            floor.depth.store(depth + 1, Relaxed);
        });
        FloorSection
    }
}

impl Drop for FloorSection {
    #[inline(always)]
    fn drop(&mut self) {
        FLOOR.with(|floor| {
            let depth = floor.depth.load(Relaxed) - 1;
            floor.depth.store(depth, Relaxed);
            if depth == 0 && floor.deferred.load(Relaxed) {
                run_deferred(floor);
            }
        });
    }
}

/// Never reached in the measurements (nothing sets `deferred`); out of
/// line, as a real section's deferred calls are.
#[cold]
#[inline(never)]
fn run_deferred(floor: &FloorState) {
    floor.deferred.store(false, Relaxed);
}
