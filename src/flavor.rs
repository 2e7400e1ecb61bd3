//! Flavors: which side of the grace-period protocol pays for the memory
//! fences. Chosen once per process, before the first reader registers.

#[cfg(not(loom))]
use crate::fork;
#[cfg(not(loom))]
use crate::report;
use crate::report::report;
#[cfg(not(loom))]
use crate::sync::AtomicU64;
use crate::sync::{compiler_fence, fence, global, lock, AtomicU8, Mutex, Ordering};
use crate::sys;
use std::fmt;

/// How read sections and grace periods order their memory accesses.
///
/// The flavor is chosen once per process and never changes afterwards:
/// by [`set_flavor`] if the program calls it first, otherwise the first time
/// anything in this crate needs it (the first [`read_lock`](crate::read_lock)
/// or grace period), from `RCU_DEFER_FLAVOR=fence|membarrier` in the
/// environment if it is set, and from what the kernel offers if not.
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
    /// While no thread is an ordinary reader (all readers are
    /// [online](crate::online)), grace periods issue a plain fence instead,
    /// as liburcu's `urcu-qsbr`.
    Membarrier,
    /// Readers issue a real `SeqCst` fence on entering and leaving their
    /// outermost section; writers issue ordinary fences and make no system
    /// call. Used where membarrier is missing, under loom, and on request
    /// (a sandbox whose seccomp filter refuses `membarrier(2)`).
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

/// Why [`set_flavor`] refused a flavor.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlavorError {
    /// The flavor had already been decided (by an earlier `set_flavor`, or
    /// by the first read section or grace period) and differs.
    AlreadyDecided {
        /// The flavor that was asked for.
        requested: Flavor,
        /// The flavor the process uses.
        decided: Flavor,
    },
    /// [`Flavor::Membarrier`] was asked for, but the kernel (or a seccomp
    /// filter) does not let this process use `membarrier(2)`.
    MembarrierUnavailable {
        /// What the kernel answered.
        reason: String,
    },
}

impl fmt::Display for FlavorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlavorError::AlreadyDecided { requested, decided } => write!(
                f,
                "the {requested} flavor was asked for, but this process already uses the \
                 {decided} flavor (chosen by the first read section or grace period, or by an \
                 earlier set_flavor); call set_flavor before anything else in rcu-defer"
            ),
            FlavorError::MembarrierUnavailable { reason } => write!(
                f,
                "the membarrier flavor was asked for, but membarrier(2) cannot be used here: \
                 {reason}"
            ),
        }
    }
}

impl std::error::Error for FlavorError {}

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

fn code_of(flavor: Flavor) -> u8 {
    match flavor {
        Flavor::Membarrier => MEMBARRIER,
        Flavor::Fence => FENCE,
    }
}

fn decided() -> Option<Flavor> {
    // Acquire pairs with the Release store in `publish`: whoever sees
    // the decision also sees the membarrier registration that preceded it.
    match FLAVOR.load(Ordering::Acquire) {
        MEMBARRIER => Some(Flavor::Membarrier),
        FENCE => Some(Flavor::Fence),
        _ => None,
    }
}

/// The flavor this process uses, deciding it on the first call.
///
/// Never panics. An unusable `RCU_DEFER_FLAVOR` (a value other than `fence`
/// or `membarrier`, or `membarrier` on a kernel that cannot provide it) is
/// reported once (see [`set_report_handler`](crate::set_report_handler);
/// stderr by default) and the default is used instead; call
/// [`set_flavor`] to get such a choice refused with an error.
pub fn flavor() -> Flavor {
    match decided() {
        Some(flavor) => flavor,
        None => decide(),
    }
}

/// Chooses the flavor for this process, before its first read section or
/// grace period.
///
/// A program that sandboxes itself with a seccomp filter that refuses
/// `membarrier(2)` calls `set_flavor(Flavor::Fence)` first: readers then pay
/// a real fence, and grace periods make no system call. (A process whose
/// readers already rely on membarrier cannot switch: grace periods would
/// fail for good once the filter is in place; see
/// [`Error::MembarrierFailed`](crate::Error::MembarrierFailed).) The choice
/// takes precedence over `RCU_DEFER_FLAVOR`.
///
/// Asking again for the flavor already in use is `Ok`.
///
/// ```
/// use rcu_defer::{flavor, set_flavor, Flavor};
/// // In a fresh process this decides; here earlier examples may have.
/// match set_flavor(Flavor::Fence) {
///     Ok(()) => assert_eq!(flavor(), Flavor::Fence),
///     Err(e) => println!("too late: {e}"),
/// }
/// ```
///
/// # Errors
///
/// [`FlavorError::AlreadyDecided`] if the process already uses another
/// flavor; [`FlavorError::MembarrierUnavailable`] if
/// [`Flavor::Membarrier`] is asked for where the kernel refuses it (the
/// flavor stays undecided then).
pub fn set_flavor(requested: Flavor) -> Result<(), FlavorError> {
    register_for_fork();
    let _one_at_a_time = lock(&DECIDING);
    if let Some(decided) = decided() {
        return if decided == requested {
            Ok(())
        } else {
            Err(FlavorError::AlreadyDecided { requested, decided })
        };
    }
    // Under loom the membarrier flavor is emulated (see `emulated`).
    if requested == Flavor::Membarrier && !cfg!(loom) {
        if let Err(e) = sys::membarrier_register() {
            return Err(FlavorError::MembarrierUnavailable {
                reason: e.to_string(),
            });
        }
    }
    publish(requested);
    Ok(())
}

/// Records the decision; the caller holds `DECIDING`.
fn publish(flavor: Flavor) {
    #[cfg(loom)]
    emulated::switch(flavor == Flavor::Membarrier);
    // Release pairs with the Acquire load in `decided`.
    FLAVOR.store(code_of(flavor), Ordering::Release);
}

#[cold]
fn decide() -> Flavor {
    register_for_fork();
    let one_at_a_time = lock(&DECIDING);
    if let Some(flavor) = decided() {
        return flavor;
    }
    let (chosen, unusable) = choose();
    publish(chosen);
    // Reports are made with no lock held (the report handler may use
    // rcu-defer, and so decide the flavor).
    drop(one_at_a_time);
    if let Some(unusable) = unusable {
        report!(Config, "{unusable}");
    }
    chosen
}

/// The flavor for a process that did not call `set_flavor`, and what to
/// report about an unusable `RCU_DEFER_FLAVOR`. Never panics: it runs
/// inside the first `read_lock` of the process, whose section must not be
/// left half entered.
fn choose() -> (Flavor, Option<String>) {
    if cfg!(loom) {
        // loom has no compiler fence and cannot model membarrier.
        return (Flavor::Fence, None);
    }
    match requested() {
        Requested::Fence => (Flavor::Fence, None),
        Requested::Membarrier => match sys::membarrier_register() {
            Ok(()) => (Flavor::Membarrier, None),
            Err(e) => (
                Flavor::Fence,
                Some(format!(
                    "RCU_DEFER_FLAVOR=membarrier was requested, but membarrier(2) cannot be \
                     used here ({e}); using the fence flavor"
                )),
            ),
        },
        Requested::Default => (default_flavor(), None),
        Requested::Unusable(value) => (
            default_flavor(),
            Some(format!(
                "RCU_DEFER_FLAVOR must be `fence` or `membarrier`, not {value:?}; ignoring it \
                 and using the default flavor"
            )),
        ),
    }
}

/// Membarrier if the kernel lets this process use it, else fence.
fn default_flavor() -> Flavor {
    match sys::membarrier_register() {
        Ok(()) => Flavor::Membarrier,
        Err(_) => Flavor::Fence,
    }
}

// The flavor decision's lock across a `fork()` (see `fork`): a child must
// not find it locked by a thread that does not exist there. Nothing
// changes in the child: the decision (and the membarrier registration,
// which the child's memory map inherits) stands.
#[cfg(not(loom))]
fork::lock_hook!(Deciding, DECIDING, ());

/// Registers the flavor decision's fork hook: before its lock is taken.
#[inline]
fn register_for_fork() {
    #[cfg(not(loom))]
    fork::register(&FORK_HOOK).unwrap_or_else(report::fork_handlers_failed);
}

/// What `RCU_DEFER_FLAVOR` asks for.
enum Requested {
    Fence,
    Membarrier,
    /// Unset or empty.
    Default,
    /// Another value: the default is used, and the value reported.
    Unusable(std::ffi::OsString),
}

fn requested() -> Requested {
    let Some(value) = std::env::var_os("RCU_DEFER_FLAVOR") else {
        return Requested::Default;
    };
    match value.to_str() {
        Some("fence") => Requested::Fence,
        Some("membarrier") => Requested::Membarrier,
        Some("") => Requested::Default,
        _ => Requested::Unusable(value),
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
        #[cfg(loom)]
        emulated::reader_site();
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
/// `ordinary_readers` is `reader::ordinary_readers`, passed in by the
/// caller (a grace period's writer) because the read side sits above this
/// module (docs/architecture.md).
///
/// # Errors
///
/// The kernel's error number (for `Error::MembarrierFailed`) if it refuses
/// the membarrier after having accepted the registration (a seccomp filter
/// installed since). The readers' side of the protocol is then missing, so
/// the caller must not treat the grace period as over.
pub(crate) fn writer_fence(ordinary_readers: impl FnOnce() -> bool) -> Result<(), i32> {
    #[cfg(loom)]
    if crate::fault::active(crate::fault::LoomFault::WriterFenceFails) {
        // What a membarrier refused by seccomp returns.
        return Err(1);
    }
    match flavor() {
        Flavor::Membarrier => {
            // A full fence in every case. It pairs with the real fence after
            // a thread counts itself as an ordinary reader
            // (`Local::count_ordinary`), so that the load of the count below
            // misses no such thread whose loads could miss what this thread
            // stored before the fence; and with the online threads' real
            // fences (going online or offline, a new quiescent state before
            // its wake-up check), which are the whole of their side.
            fence(Ordering::SeqCst);
            #[cfg(loom)]
            if crate::fault::active(crate::fault::LoomFault::SkipExpeditedBarrier) {
                return Ok(());
            }
            if !ordinary_readers() {
                // No thread can be inside a section whose fence is a
                // compiler fence: the fence above is all the grace period
                // needs, as liburcu's urcu-qsbr writer's.
                #[cfg(not(loom))]
                SKIPPED.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            #[cfg(not(loom))]
            EXPEDITED.fetch_add(1, Ordering::Relaxed);
            // The kernel brackets this command with smp_mb() on the calling
            // CPU too, so it is also a full fence for the writer itself.
            expedited_barrier().map_err(|e| e.raw_os_error().unwrap_or(0))
        }
        Flavor::Fence => {
            fence(Ordering::SeqCst);
            Ok(())
        }
    }
}

/// The membarrier flavor's expedited barrier: every running thread of the
/// process executes a full fence.
#[cfg(not(loom))]
fn expedited_barrier() -> std::io::Result<()> {
    sys::membarrier()
}

/// Under loom, the emulated barrier (see `emulated`).
#[cfg(loom)]
fn expedited_barrier() -> std::io::Result<()> {
    emulated::barrier();
    Ok(())
}

/// Expedited barriers issued by grace periods (membarrier flavor) since the
/// process started; not counted under loom.
#[cfg(not(loom))]
static EXPEDITED: AtomicU64 = AtomicU64::new(0);
/// Expedited barriers skipped (no ordinary reader); not counted under loom.
#[cfg(not(loom))]
static SKIPPED: AtomicU64 = AtomicU64::new(0);

/// What grace periods' writer-side fences did, for tests and benchmarks.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BarrierStats {
    /// Writer fences that issued the expedited barrier (`membarrier(2)`).
    pub expedited: u64,
    /// Writer fences of the membarrier flavor that found no ordinary
    /// reader and issued a plain fence only.
    pub skipped: u64,
}

/// What grace periods' writer-side fences have done so far in this
/// process. Not part of the API: for tests and benchmarks.
#[doc(hidden)]
pub fn barrier_stats() -> BarrierStats {
    #[cfg(not(loom))]
    {
        // Relaxed: statistics.
        BarrierStats {
            expedited: EXPEDITED.load(Ordering::Relaxed),
            skipped: SKIPPED.load(Ordering::Relaxed),
        }
    }
    #[cfg(loom)]
    BarrierStats::default()
}

/// The membarrier flavor under loom, which has no such system call and no
/// compiler fence. A model selects it with `set_flavor(Flavor::Membarrier)`
/// (by default loom runs the fence flavor). What `membarrier(2)` promises
/// is that every other running thread executes a full fence at some point
/// during the call. The emulation places that fence at the readers'
/// compiler-fence sites (`reader_fence(false)`, which the protocol puts
/// right after each store a writer must see and before each load that must
/// see the writer): each site is an AcqRel read-modify-write of an epoch,
/// and the barrier is one too. Read-modify-writes of one atomic are totally
/// ordered, so for each site either the barrier reads from it (the
/// reader's stores before the site are visible to the writer after its
/// barrier) or it reads from the barrier (the reader's loads after the site
/// see what the writer stored before it).
///
/// That is weaker than the real barrier (whose fence may fall anywhere,
/// not only at a site) except in one way: two readers' sites order each
/// other, which compiler fences do not. Models of the membarrier flavor
/// therefore have one ordinary reader thread at a time.
///
/// The barrier's fence may also fall before the grace-period counter load
/// that begins an ordinary section (`Record::publish`), and it must have if
/// that load reads a value stored after the barrier: the emulation makes
/// that load Acquire, which pairs with the writer's fence before its store.
///
/// A grace period that skips the barrier leaves the readers' sites with
/// nothing to pair with: a reader that the writer wrongly took for online
/// gets what its compiler fences really give it, no ordering.
#[cfg(loom)]
pub(crate) mod emulated {
    use crate::sync::{fence, global, AtomicU64, Ordering, UnmodeledAtomicU8};

    global! {
        /// Advanced by each emulated barrier; the readers' sites read it.
        static EPOCH: AtomicU64 = AtomicU64::new(0);
    }

    /// Whether the current execution runs the membarrier flavor. A plain
    /// `std` atomic (a test switch, set by each execution's flavor
    /// decision): a test binary must not mix flavors across its models,
    /// which run in parallel.
    static ON: UnmodeledAtomicU8 = UnmodeledAtomicU8::new(0);

    /// Whether the current execution runs the emulated membarrier flavor.
    pub(crate) fn on() -> bool {
        ON.load(Ordering::SeqCst) != 0
    }

    /// Records the execution's flavor.
    pub(super) fn switch(on: bool) {
        ON.store(u8::from(on), Ordering::SeqCst);
    }

    /// A reader's compiler fence in the membarrier flavor.
    pub(super) fn reader_site() {
        if on() {
            // AcqRel pairs with the AcqRel of `barrier`, whichever of the two
            // comes first in the epoch's modification order.
            EPOCH.fetch_add(0, Ordering::AcqRel);
        }
    }

    /// The writer's barrier.
    pub(super) fn barrier() {
        // AcqRel pairs with the AcqRel of each reader site (see above).
        EPOCH.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::SeqCst);
    }
}
