//! Flavors: which side of the grace-period protocol pays for the memory
//! fences. Chosen once per process, before the first reader registers.

use crate::sync::{compiler_fence, fence, global, lock, AtomicU8, Mutex, Ordering};
use crate::sys;
use std::fmt;

/// How read sections and grace periods order their memory accesses.
///
/// The flavor is chosen once per process, the first time anything in this
/// crate needs it (the first [`read_lock`](crate::read_lock) or grace
/// period), and never changes afterwards. Set `RCU_DEFER_FLAVOR=fence` or
/// `RCU_DEFER_FLAVOR=membarrier` in the environment to force one.
///
/// ```
/// use rcu_defer::{flavor, Flavor};
/// match flavor() {
///     Flavor::Membarrier => println!("readers pay compiler fences only"),
///     Flavor::Fence => println!("readers pay a full fence per outermost section"),
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// Readers issue only compiler fences; a writer issues one
    /// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` per grace-period step,
    /// which makes every running reader execute a full fence. The default on
    /// Linux when the kernel offers it (liburcu's `urcu-memb`, QEMU's scheme).
    Membarrier,
    /// Readers issue a real `SeqCst` fence on entering and leaving their
    /// outermost section; writers issue ordinary fences. Used where
    /// membarrier is missing, under loom, and on request.
    Fence,
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavor::Membarrier => "membarrier",
            Flavor::Fence => "fence",
        })
    }
}

const UNDECIDED: u8 = 0;
const MEMBARRIER: u8 = 1;
const FENCE: u8 = 2;

global! {
    /// The decided flavor, or `UNDECIDED`.
    static FLAVOR: AtomicU8 = AtomicU8::new(UNDECIDED);
}
global! {
    /// Serializes the one-time decision (and the membarrier registration).
    static DECIDING: Mutex<()> = Mutex::new(());
}

/// The flavor this process uses, deciding it on the first call.
///
/// # Panics
///
/// If `RCU_DEFER_FLAVOR` is set to anything but `fence` or `membarrier`, or
/// to `membarrier` on a kernel that cannot provide it.
pub fn flavor() -> Flavor {
    // Acquire pairs with the Release store in `decide`: whoever sees the
    // decision also sees the membarrier registration that preceded it.
    match FLAVOR.load(Ordering::Acquire) {
        MEMBARRIER => Flavor::Membarrier,
        FENCE => Flavor::Fence,
        _ => decide(),
    }
}

#[cold]
fn decide() -> Flavor {
    let _one_at_a_time = lock(&DECIDING);
    match FLAVOR.load(Ordering::Acquire) {
        MEMBARRIER => return Flavor::Membarrier,
        FENCE => return Flavor::Fence,
        _ => {}
    }
    let chosen = choose();
    let code = match chosen {
        Flavor::Membarrier => MEMBARRIER,
        Flavor::Fence => FENCE,
    };
    // Release pairs with the Acquire loads in `flavor`.
    FLAVOR.store(code, Ordering::Release);
    chosen
}

fn choose() -> Flavor {
    if cfg!(loom) {
        // loom has no compiler fence and cannot model membarrier.
        return Flavor::Fence;
    }
    match requested() {
        Some(Flavor::Fence) => Flavor::Fence,
        Some(Flavor::Membarrier) => match sys::membarrier_register() {
            Ok(()) => Flavor::Membarrier,
            Err(e) => panic!(
                "rcu-defer: RCU_DEFER_FLAVOR=membarrier was requested, but membarrier \
                 cannot be used here: {e}"
            ),
        },
        None => match sys::membarrier_register() {
            Ok(()) => Flavor::Membarrier,
            Err(_) => Flavor::Fence,
        },
    }
}

fn requested() -> Option<Flavor> {
    let value = std::env::var_os("RCU_DEFER_FLAVOR")?;
    match value.to_str() {
        Some("fence") => Some(Flavor::Fence),
        Some("membarrier") => Some(Flavor::Membarrier),
        Some("") => None,
        _ => panic!("rcu-defer: RCU_DEFER_FLAVOR must be `fence` or `membarrier`, not {value:?}"),
    }
}

/// The reader's side of a store→load ordering point: a compiler fence in the
/// membarrier flavor (the writer's membarrier supplies the hardware fence),
/// a real fence otherwise. `real` is the reader's cached
/// `flavor() == Fence`.
#[inline(always)]
pub(crate) fn reader_fence(real: bool) {
    if real {
        real_reader_fence();
    } else {
        compiler_fence(Ordering::SeqCst);
    }
}

/// The fence flavor's reader fence. Inline: out of line, the call's own
/// stack store sits in the store buffer that the fence must drain, which
/// measured about twice the cost of the fence alone.
#[inline(always)]
pub(crate) fn real_reader_fence() {
    #[cfg(loom)]
    if crate::fault::active(crate::fault::LoomFault::DropReaderFence) {
        return;
    }
    fence(Ordering::SeqCst);
}

/// The writer's side of a store→load ordering point: a membarrier that makes
/// every running reader execute a full fence, or a plain full fence in the
/// fence flavor.
///
/// # Panics
///
/// If the kernel refuses a membarrier after having accepted the
/// registration (it never does; continuing would be unsound).
pub(crate) fn writer_fence() {
    match flavor() {
        Flavor::Membarrier => {
            // The kernel brackets this command with smp_mb() on the calling
            // CPU too, so it is also a full fence for the writer itself.
            if let Err(e) = sys::membarrier() {
                panic!("rcu-defer: membarrier(PRIVATE_EXPEDITED) failed after registration: {e}");
            }
        }
        Flavor::Fence => fence(Ordering::SeqCst),
    }
}
