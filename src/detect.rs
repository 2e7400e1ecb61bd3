//! Deadlock detection and stall reports: the library never hangs silently.
//!
//! A thread that waits for a grace period (or for `call_rcu` callbacks)
//! while it holds a read guard waits for itself; that is caught before it
//! waits. A grace period held up by a reader for longer than the stall
//! timeout is reported, naming the readers.

#[cfg(not(loom))]
use crate::fork;
use crate::reader::{current_section, Blocker, Registry};
#[cfg(not(loom))]
use crate::report;
use crate::report::{panic_message, report};
use crate::sync::{global, lock, thread_local_const, AtomicU64, Mutex, MutexGuard, Ordering};
use std::cell::Cell;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe, Location};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a grace-period wait or a drain did not (or would never) complete.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub enum Error {
    /// The calling thread is inside a read section, so waiting for a grace
    /// period would wait for itself forever.
    InReadSection {
        /// The operation that was refused, e.g. `"synchronize_rcu"`.
        op: &'static str,
        /// The caller's read-section depth.
        depth: usize,
        /// Where the caller's outermost read section was entered.
        entered_at: &'static Location<'static>,
    },
    /// The caller is a `call_rcu` callback, and the operation would wait for
    /// the callback thread that is running it.
    InCallRcuCallback {
        /// The operation that was refused, e.g. `"drain_call_rcu"`.
        op: &'static str,
    },
    /// The grace period did not complete within the caller's time limit.
    Timeout(StallReport),
    /// The caller is the stall handler, which runs in the middle of the
    /// stalled grace period: waiting for a grace period there would wait
    /// for itself.
    InStallHandler {
        /// The operation that was refused, e.g. `"synchronize_rcu"`.
        op: &'static str,
    },
    /// `membarrier(2)` failed after the process had registered for it, as
    /// it does once a seccomp filter that refuses it is installed. Readers
    /// of the membarrier flavor rely on it, so no grace period can end: the
    /// operation is refused and nothing retired is freed (values queued
    /// with [`call_rcu`](crate::call_rcu) stay queued, and the `rcu-call`
    /// thread retries now and then). Allow `membarrier` in the filter, or
    /// choose [`Flavor::Fence`](crate::Flavor::Fence) with
    /// [`set_flavor`](crate::set_flavor) before the first read section.
    MembarrierFailed {
        /// The error number the kernel returned (`EPERM` from a seccomp
        /// filter).
        errno: i32,
    },
    /// The grace period that this operation waited for panicked (a bug in
    /// rcu-defer: user code such as the stall handler runs under
    /// `catch_unwind`). Nothing it was to free has been freed; a later
    /// attempt starts afresh.
    GracePeriodPanicked {
        /// The panic's message.
        message: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InReadSection {
                op,
                depth,
                entered_at,
            } => write!(
                f,
                "{op} was called inside a read section (depth {depth}, outermost section \
                 entered at {entered_at}); it would wait for that section to end, which cannot \
                 happen while this thread waits, so it would never return"
            ),
            Error::InCallRcuCallback { op } => write!(
                f,
                "{op} was called from a call_rcu callback; it would wait for the callback \
                 thread, which is busy running this callback, so it would never return"
            ),
            Error::InStallHandler { op } => write!(
                f,
                "{op} was called from the stall handler, which runs inside the stalled grace \
                 period; it would wait for that grace period, which cannot end until the \
                 handler returns, so it would never return"
            ),
            Error::Timeout(report) => write!(f, "the time limit passed: {report}"),
            Error::MembarrierFailed { errno } => write!(
                f,
                "membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) failed after the process had \
                 registered for it ({}); readers of the membarrier flavor rely on it, so no \
                 grace period can end and nothing retired is freed. A seccomp filter that \
                 refuses membarrier(2) does this: allow membarrier in the filter, or choose the \
                 fence flavor before the first read section (rcu_defer::set_flavor(Flavor::Fence) \
                 or RCU_DEFER_FLAVOR=fence)",
                std::io::Error::from_raw_os_error(*errno)
            ),
            Error::GracePeriodPanicked { message } => write!(
                f,
                "the grace period panicked ({message}); nothing it was to free has been freed"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// How many readers a report's text names in full; it counts the rest.
const READERS_IN_FULL: usize = 8;

/// A grace period that is held up, and the readers holding it up.
///
/// Given to the stall handler (see [`set_stall_handler`]) and carried by
/// [`Error::Timeout`].
///
/// Its text (`Display`) is a summary line with the number of readers, then
/// one line for each of the first 8 readers, longest inside first, and,
/// when more block, a last line that counts the rest: a thousand stalled
/// readers make a report of ten lines. [`readers`](StallReport::readers)
/// has them all.
#[derive(Clone, Debug)]
pub struct StallReport {
    waited: Duration,
    readers: Vec<StalledReader>,
    waiter: Waiter,
}

/// What waited, for the report's wording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waiter {
    /// A grace period (`synchronize_rcu` and its variants, the stall
    /// handler).
    GracePeriod,
    /// `drain_call_rcu_timeout`.
    Drain,
}

impl StallReport {
    /// How long the grace period had waited when the report was made.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The readers that held the grace period up, longest inside first.
    pub fn readers(&self) -> &[StalledReader] {
        &self.readers
    }
}

impl fmt::Display for StallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.readers.len();
        let s = if n == 1 { "" } else { "s" };
        match self.waiter {
            Waiter::GracePeriod => {
                write!(
                    f,
                    "a grace period has waited {:.1?} for {n} reader{s} still inside a read \
                     section that began before it",
                    self.waited
                )?;
                if n == 0 {
                    f.write_str(" (they left just before the report was made)")?;
                }
            }
            Waiter::Drain => {
                write!(
                    f,
                    "drain_call_rcu has waited {:.1?} for the call_rcu callbacks queued before \
                     it; {n} reader{s} inside a read section that began before the current grace \
                     period hold it up",
                    self.waited
                )?;
                if n == 0 {
                    f.write_str(" (none: a callback is still running, or the batch is waiting)")?;
                }
            }
        }
        for reader in self.readers.iter().take(READERS_IN_FULL) {
            write!(f, "\n  - {reader}")?;
        }
        if n > READERS_IN_FULL {
            write!(
                f,
                "\n  ... and {} more (StallReport::readers lists them all)",
                n - READERS_IN_FULL
            )?;
        }
        Ok(())
    }
}

/// One reader named in a [`StallReport`].
#[derive(Clone, Debug)]
pub struct StalledReader {
    thread_name: Option<String>,
    thread_id: String,
    thread_exited: bool,
    depth: usize,
    entered_at: Option<&'static Location<'static>>,
    in_section: Duration,
    /// For an online thread: where it went online and where it last
    /// reported a quiescent state.
    online: Option<OnlineStall>,
}

/// Where a stalled online thread went online and last reported a
/// quiescent state.
#[derive(Clone, Copy, Debug)]
struct OnlineStall {
    online_at: Option<&'static Location<'static>>,
    quiescent_at: Option<&'static Location<'static>>,
}

impl StalledReader {
    /// The reader thread's name, if it has one.
    pub fn thread_name(&self) -> Option<&str> {
        self.thread_name.as_deref()
    }

    /// The reader thread's id (`ThreadId(N)`, as `Debug` prints it).
    pub fn thread_id(&self) -> &str {
        &self.thread_id
    }

    /// Whether the reader thread has exited while inside its section (a
    /// leaked guard: the section can then never end).
    pub fn thread_exited(&self) -> bool {
        self.thread_exited
    }

    /// Whether the reader is an online thread (see
    /// [`online`](crate::online())) that has not reported a quiescent state
    /// since the grace period began; it may be inside a read section or not
    /// ([`depth`](StalledReader::depth) says).
    pub fn is_online(&self) -> bool {
        self.online.is_some()
    }

    /// For an online thread, where it went online.
    pub fn went_online_at(&self) -> Option<&'static Location<'static>> {
        self.online.and_then(|o| o.online_at)
    }

    /// For an online thread, where it last reported a quiescent state
    /// (`None` if it has not since it went online).
    pub fn last_quiescent_at(&self) -> Option<&'static Location<'static>> {
        self.online.and_then(|o| o.quiescent_at)
    }

    /// The reader's read-section depth.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Where the reader entered its outermost section.
    pub fn entered_at(&self) -> Option<&'static Location<'static>> {
        self.entered_at
    }

    /// How long the reader has been inside its section, at least.
    ///
    /// Entering a section records no time (that would slow the read side),
    /// so this is measured from the moment a writer first found the section
    /// in its way, or from the start of the reported grace period,
    /// whichever is earlier. For an online thread outside any section, how
    /// long it has held the grace period up without reporting a quiescent
    /// state, measured the same way.
    pub fn in_section(&self) -> Duration {
        self.in_section
    }
}

impl fmt::Display for StalledReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exited = if self.thread_exited {
            ", exited: its guard was leaked"
        } else {
            ""
        };
        match &self.thread_name {
            Some(name) => write!(f, "thread '{name}' ({}{exited})", self.thread_id)?,
            None => write!(f, "unnamed thread ({}{exited})", self.thread_id)?,
        }
        if let Some(online) = self.online {
            match online.online_at {
                Some(at) => write!(f, ", online since {at}")?,
                None => f.write_str(", online")?,
            }
            match online.quiescent_at {
                Some(at) => write!(f, ", last quiescent state reported at {at}")?,
                None => f.write_str(", no quiescent state reported since it went online")?,
            }
            write!(f, ", none for at least {:.1?}", self.in_section)?;
            if self.depth == 0 {
                return Ok(());
            }
            f.write_str("; now")?;
        }
        write!(f, ", depth {}, ", self.depth)?;
        match self.entered_at {
            Some(at) => write!(f, "section entered at {at}")?,
            None => f.write_str("section entry point unknown")?,
        }
        write!(f, ", inside for at least {:.1?}", self.in_section)
    }
}

thread_local_const! {
    /// True while this thread runs the stall handler.
    static IN_STALL_HANDLER: Cell<bool> = Cell::new(false);
}

/// Stall timeout in milliseconds; `u64::MAX` disables stall reports.
const STALL_DISABLED: u64 = u64::MAX;
const STALL_DEFAULT_MS: u64 = 21_000;

global! {
    static STALL_TIMEOUT_MS: AtomicU64 = AtomicU64::new(STALL_DEFAULT_MS);
}
/// A stall handler, as `set_stall_handler` stores it.
type StallHandler = dyn Fn(&StallReport) + Send + Sync;

global! {
    /// The user's stall handler; `None` for the default, `print_stall_report`.
    static STALL_HANDLER: Mutex<Option<Arc<StallHandler>>> = Mutex::new(None);
}

/// Sets how long a grace period may wait before the stall handler is called
/// (default 21 s, like the Linux kernel's RCU CPU stall warning); `None`
/// disables stall reports. Takes effect for grace periods that sleep after
/// the call.
///
/// The same limit applies to a read section that holds back batched guest
/// notifications (see [`virtio`](crate::virtio#sections-that-block)): past
/// it, the `rcu-watchdog` thread makes a
/// [`ReportKind::HeldNotification`](crate::ReportKind::HeldNotification)
/// report, and `None` turns those off too.
pub fn set_stall_timeout(limit: Option<Duration>) {
    let ms = match limit {
        None => STALL_DISABLED,
        Some(d) => u64::try_from(d.as_millis())
            .unwrap_or(STALL_DISABLED - 1)
            .min(STALL_DISABLED - 1),
    };
    // Relaxed: a configuration value with no data attached.
    STALL_TIMEOUT_MS.store(ms, Ordering::Relaxed);
}

/// Sets the function called (on the waiting writer's thread) with a report
/// when a grace period stalls: a function or a closure (one that sends the
/// report to the program's logger, say). The default makes a
/// [`ReportKind::Stall`](crate::ReportKind::Stall) report, which goes to the
/// report handler ([`set_report_handler`](crate::set_report_handler); by
/// default `log`, `tracing` or stderr).
///
/// The handler runs in the middle of the stalled grace period, with none of
/// rcu-defer's locks held. It may log, take read sections and use
/// [`RcuCell::read`](crate::RcuCell::read), and queue
/// [`call_rcu`](crate::call_rcu) callbacks. It must not wait for a grace
/// period: `synchronize_rcu` and `drain_call_rcu` called from it are
/// refused with [`Error::InStallHandler`] (the plain forms panic). If the
/// handler panics, the panic is caught and reported (a
/// [`ReportKind::CallbackPanicked`](crate::ReportKind::CallbackPanicked)
/// report), and the grace period goes on waiting as if the handler had
/// returned: a handler cannot make a grace period end early.
///
/// ```
/// fn log_stall(report: &rcu_defer::StallReport) {
///     eprintln!("device thread stuck: {report}");
/// }
/// rcu_defer::set_stall_handler(log_stall);
///
/// // A closure, with what it captures:
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// let stalls = Arc::new(AtomicU64::new(0));
/// let counter = Arc::clone(&stalls);
/// rcu_defer::set_stall_handler(move |report| {
///     counter.fetch_add(1, Ordering::Relaxed);
///     eprintln!("stall #{}: {report}", counter.load(Ordering::Relaxed));
/// });
/// ```
pub fn set_stall_handler(handler: impl Fn(&StallReport) + Send + Sync + 'static) {
    let old = stall_handler().replace(Arc::new(handler));
    // Outside the lock: dropping the old handler runs user code.
    drop(old);
}

/// Locks the stall handler, its fork hook registered first.
fn stall_handler() -> MutexGuard<'static, Option<Arc<StallHandler>>> {
    #[cfg(not(loom))]
    fork::register(&FORK_HOOK).unwrap_or_else(report::fork_handlers_failed);
    lock(&STALL_HANDLER)
}

// The stall handler's lock across a `fork()` (see `fork`): a child never
// finds it locked. Nothing changes in the child: the handler stays set.
#[cfg(not(loom))]
fork::lock_hook!(StallHandler, STALL_HANDLER, Option<Arc<StallHandler>>);

pub(crate) fn stall_timeout() -> Option<Duration> {
    // Relaxed: see `set_stall_timeout`.
    match STALL_TIMEOUT_MS.load(Ordering::Relaxed) {
        STALL_DISABLED => None,
        ms => Some(Duration::from_millis(ms)),
    }
}

fn print_stall_report(report: &StallReport) {
    report!(Stall, "stall: {report}");
}

/// Calls the stall handler.
pub(crate) fn report_stall(report: &StallReport) {
    /// Clears the flag however the handler returns (it may panic).
    struct InHandler;
    impl Drop for InHandler {
        fn drop(&mut self) {
            IN_STALL_HANDLER.with(|h| h.set(false));
        }
    }
    let handler = stall_handler().clone();
    IN_STALL_HANDLER.with(|h| h.set(true));
    let _in_handler = InHandler;
    // A panic must not unwind through the grace period: the caller's
    // retired values would be dropped while the stalled readers still use
    // them. AssertUnwindSafe: the handler only gets a shared report, and
    // the `Arc` is dropped inside (its drop may be the last, running user
    // code).
    let outcome = catch_unwind(AssertUnwindSafe(move || match handler {
        Some(handler) => handler(report),
        None => print_stall_report(report),
    }));
    if let Err(payload) = outcome {
        report!(
            CallbackPanicked,
            "the stall handler panicked: {}; the grace period goes on waiting",
            panic_message(&*payload)
        );
    }
}

/// Builds a report of the readers that block grace period `gp`.
pub(crate) fn stall_report(
    registry: &mut Registry,
    gp: u64,
    waited: Duration,
    waiter: Waiter,
) -> StallReport {
    let now = Instant::now();
    let mut readers: Vec<StalledReader> = registry
        .blockers(gp)
        .into_iter()
        .map(|b: Blocker| {
            let seen = b.blocked_since.map_or(Duration::ZERO, |t| now - t);
            let (thread_name, thread_id, thread_exited) = match b.owner {
                Some(owner) => (owner.name, owner.id, owner.exited),
                // A free record is quiescent; only a race with reuse gets here.
                None => (None, "a thread that has exited".to_owned(), true),
            };
            StalledReader {
                thread_name,
                thread_id,
                thread_exited,
                depth: b.depth,
                entered_at: b.entered_at,
                in_section: seen.max(waited),
                online: b.online.map(|o| OnlineStall {
                    online_at: o.online_at,
                    quiescent_at: o.quiescent_at,
                }),
            }
        })
        .collect();
    // Stable: readers seen for equally long keep the registry's order.
    readers.sort_by_key(|r| std::cmp::Reverse(r.in_section));
    StallReport {
        waited,
        readers,
        waiter,
    }
}

/// `Err(InReadSection)` if the calling thread is inside a read section.
pub(crate) fn check_may_wait(op: &'static str) -> Result<(), Error> {
    if IN_STALL_HANDLER.with(Cell::get) {
        return Err(Error::InStallHandler { op });
    }
    match current_section() {
        Some((depth, entered_at)) => Err(Error::InReadSection {
            op,
            depth,
            entered_at: entered_at.expect("a record inside a section has an entry location"),
        }),
        None => Ok(()),
    }
}

/// Panics if the calling thread is inside a read section (or the stall
/// handler), for a wait for another party: [`EventFd::wait`] waits for a
/// peer to write the eventfd, not for a grace period, so the message says
/// what such a wait does to the section instead of `check_may_wait`'s
/// "would wait for that section to end".
///
/// [`EventFd::wait`]: crate::virtio::EventFd::wait
#[cfg(target_os = "linux")]
#[track_caller]
pub(crate) fn assert_may_wait_for_peer(op: &'static str) {
    match check_may_wait(op) {
        Ok(()) => {}
        Err(Error::InReadSection {
            depth, entered_at, ..
        }) => {
            let queued = crate::reader::queued_section_calls();
            panic!(
                "{op} was called inside a read section (depth {depth}, outermost section entered \
                 at {entered_at}), which holds {queued} queued guest notification(s) \
                 (IrqNotifier::notify in it); blocking there keeps the section open for as \
                 long as it waits: the notifications it has queued, and any queued later, are \
                 not sent until its outermost guard drops, so a peer that waits for one of them \
                 before it writes this eventfd (a driver that kicks again only after its \
                 interrupt) never writes it and this wait never returns, and meanwhile every \
                 grace period (synchronize_rcu, drain_call_rcu, the frees of call_rcu and \
                 RcuCell::replace) waits for this thread. End the section before waiting, or \
                 poll with a zero timeout"
            );
        }
        Err(Error::InStallHandler { .. }) => panic!(
            "{op} was called from the stall handler, which runs inside the stalled grace \
             period: blocking there holds that grace period, and every writer waiting for it, \
             for as long as it waits"
        ),
        Err(e) => panic!("{e}"),
    }
}

/// Panics if the calling thread is inside a read section.
///
/// Call it at the top of your own functions that may block or wait for a
/// grace period (the kernel's `might_sleep()` idea): the misuse is then found
/// at the first call, with the location where the section was entered,
/// rather than at the first deadlock.
///
/// ```
/// fn flush_to_disk() {
///     rcu_defer::assert_may_block("flush_to_disk");
///     // ... blocking work ...
/// }
/// flush_to_disk();
/// ```
///
/// ```should_panic
/// # fn flush_to_disk() { rcu_defer::assert_may_block("flush_to_disk"); }
/// let _guard = rcu_defer::read_lock();
/// flush_to_disk(); // panics: "flush_to_disk was called inside a read section ..."
/// ```
///
/// # Panics
///
/// If the calling thread holds a read guard.
#[track_caller]
pub fn assert_may_block(op: &'static str) {
    if let Err(e) = check_may_wait(op) {
        panic!("{e}");
    }
}
