//! Reports: the messages rcu-defer makes when something goes wrong that has
//! no caller to return an error to (a panicking callback, a failed guest
//! notification, a stalled grace period), the hook that delivers them
//! ([`set_report_handler`]), and panic payloads turned into text for them.

#[cfg(not(loom))]
use crate::fork;
use crate::sync::{global, lock, thread_local_const, Mutex};
use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::io::{self, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// What a [`Report`] is about.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReportKind {
    /// A grace period has waited longer than the stall timeout; the message
    /// is the [`StallReport`](crate::StallReport). Made by the default stall
    /// handler (see [`set_stall_handler`](crate::set_stall_handler)).
    Stall,
    /// A thread is exiting inside a read section or a defer scope, so its
    /// deferred calls wait for the guard's drop (never, for a leaked guard),
    /// and, for a read section, so do grace periods.
    ExitInSection,
    /// User code panicked where the panic cannot reach a caller: a
    /// [`call_rcu`](crate::call_rcu) callback, the stall handler, or a
    /// deferred call on a thread that was already unwinding.
    CallbackPanicked,
    /// A guest notification failed ([`IrqNotifier`](crate::virtio::IrqNotifier);
    /// reported once per notifier, later failures are counted).
    NotifyFailed,
    /// The `rcu-call` thread cannot do its work: it cannot be started or its
    /// grace periods fail (its callbacks stay queued), or a callback left it
    /// inside a read section (no grace period ends until the section does)
    /// or online (it is taken offline).
    CallRcuThread,
    /// The `rcu-call` thread works again after failures reported as
    /// [`CallRcuThread`](ReportKind::CallRcuThread).
    CallRcuThreadRecovered,
    /// A read section has held back queued guest notifications
    /// ([`IrqNotifier::notify`](crate::virtio::IrqNotifier::notify) inside
    /// it) for longer than the stall timeout, or a queued notification's
    /// `Notify::signal` has not returned for that long: the guest is not
    /// being interrupted. Made by the `rcu-watchdog` thread, once per
    /// section; see [`virtio`](crate::virtio#sections-that-block).
    HeldNotification,
    /// A setting cannot be honoured: an unusable `RCU_DEFER_FLAVOR`, or a
    /// helper thread that cannot be started.
    Config,
    /// The `fork()` handlers cannot be registered.
    ForkHandlers,
}

impl ReportKind {
    /// How serious a report of this kind is.
    fn severity(self) -> Severity {
        match self {
            ReportKind::CallbackPanicked | ReportKind::NotifyFailed | ReportKind::CallRcuThread => {
                Severity::Error
            }
            ReportKind::Stall
            | ReportKind::HeldNotification
            | ReportKind::ExitInSection
            | ReportKind::Config
            | ReportKind::ForkHandlers => Severity::Warning,
            ReportKind::CallRcuThreadRecovered => Severity::Info,
        }
    }
}

/// How serious a [`Report`] is; it maps to the `log` and `tracing` level of
/// the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Something that went wrong works again.
    Info,
    /// Something may be wrong, or will be if it lasts.
    Warning,
    /// Something failed: a callback, a notification, the `rcu-call` thread.
    Error,
}

/// A message from rcu-defer about something that went wrong (or works
/// again) with no caller to return an error to; see
/// [`set_report_handler`].
///
/// Its `Display` is the message alone; on stderr it is printed as
/// `rcu-defer: {message}`.
#[derive(Clone, Debug)]
pub struct Report {
    kind: ReportKind,
    message: String,
}

impl Report {
    /// What the report is about.
    pub fn kind(&self) -> ReportKind {
        self.kind
    }

    /// How serious it is.
    pub fn severity(&self) -> Severity {
        self.kind.severity()
    }

    /// The message: one or more lines of text, without the `rcu-defer: `
    /// prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A report handler, as `set_report_handler` stores it.
type Handler = dyn Fn(&Report) + Send + Sync;

global! {
    /// The user's report handler; `None` for the default.
    static HANDLER: Mutex<Option<Arc<Handler>>> = Mutex::new(None);
}

thread_local_const! {
    /// True while this thread delivers a report (in the handler, a logger
    /// or a subscriber): a report made meanwhile goes to stderr.
    static DELIVERING: Cell<bool> = Cell::new(false);
}

/// Sets the function that receives every report rcu-defer makes, in place
/// of the default, which hands a report to the `log` facade (with the `log`
/// feature) or to `tracing` (with the `tracing` feature) when a logger or
/// subscriber is listening at its level, and prints it to stderr
/// otherwise. Target `rcu_defer` either way; the `tracing` event has a
/// `kind` field.
///
/// Reports are rare (a panicking callback, a failed guest notification, a
/// thread exiting inside a read section, a stalled grace period under the
/// default stall handler, ...); see [`ReportKind`]. The handler runs on the
/// thread that makes the report (often the `rcu-call` thread, or a thread
/// that is exiting), with none of rcu-defer's locks held, so it may use
/// rcu-defer; it should return soon, as the work that made the report waits
/// for it. It must not wait for a grace period: it may run inside a read
/// section (a batched guest notification that fails is reported as its
/// section ends) or inside a stalled grace period (the default stall
/// handler's report), where such a wait is refused
/// ([`try_synchronize_rcu`](crate::try_synchronize_rcu) returns an error,
/// the plain forms panic). A report made while the handler (or a logger it calls) runs on
/// the same thread goes to stderr instead of back to the handler, and if
/// the handler panics, the panic is caught and the report is printed to
/// stderr with a note: a handler can neither recurse without end nor
/// unwind into rcu-defer.
///
/// A [`StallReport`](crate::StallReport) reaches this handler through the
/// default stall handler; [`set_stall_handler`](crate::set_stall_handler)
/// replaces that one.
///
/// ```
/// use rcu_defer::{set_report_handler, Severity};
///
/// // A monitor that logs through its own logger:
/// set_report_handler(|report| {
///     let level = match report.severity() {
///         Severity::Error => "ERROR",
///         Severity::Warning => "WARN",
///         Severity::Info => "INFO",
///     };
///     eprintln!("[{level}] rcu-defer ({:?}): {report}", report.kind());
/// });
/// ```
pub fn set_report_handler(handler: impl Fn(&Report) + Send + Sync + 'static) {
    register_for_fork();
    let old = lock(&HANDLER).replace(Arc::new(handler));
    // Outside the lock: dropping the old handler runs user code.
    drop(old);
}

// The report handler's lock across a `fork()` (see `fork`): a child never
// finds it locked. Nothing changes in the child: the handler stays set.
#[cfg(not(loom))]
fork::lock_hook!(ReportHandler, HANDLER, Option<Arc<Handler>>);

/// Registers the report handler's fork hook: before its lock is taken.
#[inline]
fn register_for_fork() {
    #[cfg(not(loom))]
    fork::register(&FORK_HOOK).unwrap_or_else(fork_handlers_failed);
}

/// Reports that the fork handlers cannot be registered: the error that
/// `fork::register` returned to a module registering its hook.
#[cfg(not(loom))]
pub(crate) fn fork_handlers_failed(e: io::Error) {
    emit(
        ReportKind::ForkHandlers,
        format_args!(
            "cannot register the fork handlers ({e}); a child process forked while another \
             thread holds one of rcu-defer's locks may hang"
        ),
    );
}

/// Makes one report: to the user's handler if one is set, else to `log` or
/// `tracing` if one listens, else to stderr.
///
/// Never panics: reports are made on paths that must not unwind, such as
/// the `rcu-call` thread holding retired values, or a thread that is already
/// unwinding. Callers hold none of rcu-defer's locks. Under loom it does
/// nothing: a model runs the same threads thousands of times, and its
/// failures are reported by loom.
pub(crate) fn emit(kind: ReportKind, args: fmt::Arguments<'_>) {
    if cfg!(loom) {
        return;
    }
    let mut message = String::new();
    // Ignores a `Display` that fails (`fmt::format` would panic): the rest
    // of the message is still worth reporting.
    let _ = fmt::Write::write_fmt(&mut message, args);
    let report = Report { kind, message };
    // The flag has no destructor, so it works in thread-local destructors
    // too (a thread exiting inside a section reports from one).
    if DELIVERING.with(|d| d.replace(true)) {
        // Made by the handler, a logger or a subscriber while it delivers a
        // report: delivering it the same way could recurse without end, or
        // deadlock on the logger's own lock.
        to_stderr(&report);
        return;
    }
    /// Clears the flag however delivery ends.
    struct Delivered;
    impl Drop for Delivered {
        fn drop(&mut self) {
            DELIVERING.with(|d| d.set(false));
        }
    }
    let _delivered = Delivered;
    // AssertUnwindSafe: the handler gets a shared report, and the handler
    // `Arc` is dropped inside (its drop may be the last and run user code).
    let mut by_handler = false;
    let delivery = catch_unwind(AssertUnwindSafe(|| {
        register_for_fork();
        let handler = lock(&HANDLER).clone();
        match handler {
            Some(handler) => {
                by_handler = true;
                handler(&report);
            }
            None => deliver_by_default(&report),
        }
    }));
    if let Err(payload) = delivery {
        to_stderr(&report);
        let who = if by_handler {
            "the report handler"
        } else {
            "the logger or subscriber"
        };
        emit_to_stderr(format_args!(
            "{who} panicked: {}; the report above was printed here instead",
            panic_message(&*payload)
        ));
        // A payload whose drop panics must not unwind from here either.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    }
}

/// The default delivery: `tracing` or `log` if a subscriber or logger takes
/// the report's level at target `rcu_defer` (`tracing` first: with both,
/// one of them usually forwards to the other), else stderr.
fn deliver_by_default(report: &Report) {
    #[cfg(feature = "tracing")]
    if to_tracing(report) {
        return;
    }
    #[cfg(feature = "log")]
    if to_log(report) {
        return;
    }
    to_stderr(report);
}

/// Hands `report` to `tracing`, if the current subscriber wants its level.
#[cfg(feature = "tracing")]
fn to_tracing(report: &Report) -> bool {
    use tracing::Level;
    macro_rules! event_at {
        ($level:expr) => {{
            if !tracing::event_enabled!(target: "rcu_defer", $level) {
                return false;
            }
            tracing::event!(
                target: "rcu_defer",
                $level,
                kind = ?report.kind,
                "{}",
                report.message
            );
        }};
    }
    match report.severity() {
        Severity::Error => event_at!(Level::ERROR),
        Severity::Warning => event_at!(Level::WARN),
        Severity::Info => event_at!(Level::INFO),
    }
    true
}

/// Hands `report` to the `log` facade, if the logger wants its level.
#[cfg(feature = "log")]
fn to_log(report: &Report) -> bool {
    let level = match report.severity() {
        Severity::Error => log::Level::Error,
        Severity::Warning => log::Level::Warn,
        Severity::Info => log::Level::Info,
    };
    if !log::log_enabled!(target: "rcu_defer", level) {
        return false;
    }
    log::log!(target: "rcu_defer", level, "{}", report.message);
    true
}

fn to_stderr(report: &Report) {
    emit_to_stderr(format_args!("{}", report.message));
}

/// Prints one line (or several) on stderr, prefixed with `rcu-defer: `.
///
/// Never panics (unlike `eprintln!`, which panics when stderr is a closed
/// pipe). In a forked child it does not take the standard library's stderr
/// lock, which a thread of the parent may have held at the fork (and so
/// forever in the child): one `write(2)` of the whole text instead.
fn emit_to_stderr(args: fmt::Arguments<'_>) {
    #[cfg(not(loom))]
    if crate::fork::generation() > 0 {
        let text = format!("rcu-defer: {args}\n");
        crate::sys::write_stderr(text.as_bytes());
        return;
    }
    let _ = writeln!(io::stderr().lock(), "rcu-defer: {args}");
}

/// `report!(kind, "...", args)`: [`emit`] with `format!` syntax, `kind` a
/// [`ReportKind`] variant's name.
macro_rules! report {
    ($kind:ident, $($arg:tt)*) => {
        $crate::report::emit($crate::report::ReportKind::$kind, format_args!($($arg)*))
    };
}
pub(crate) use report;

/// The message of a panic payload, for reports.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(a panic payload that is not a string)"
    }
}
