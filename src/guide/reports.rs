//! Reports: what goes wrong where no caller can get an error, and where it
//! goes.
//!
//! # Reports and the report handler
//!
//! What goes wrong where no caller can get an error (a
//! [`call_rcu`](crate::call_rcu) callback that panics, a failed guest
//! notification, a thread that exits inside a read section, a stalled grace
//! period, an unusable `RCU_DEFER_FLAVOR`) is a [`Report`](crate::Report)
//! with a [`ReportKind`](crate::ReportKind) and a
//! [`Severity`](crate::Severity). Without a handler, a report goes to the
//! `log` facade (feature `log`) or to `tracing` (feature `tracing`) when a
//! logger or subscriber takes its level at target `rcu_defer`, and to stderr
//! (`rcu-defer: ...`) otherwise. A monitor that routes it elsewhere sets a
//! handler with [`set_report_handler`](crate::set_report_handler):
//!
//! ```
//! use rcu_defer::{set_report_handler, Severity};
//!
//! set_report_handler(|report| {
//!     // The monitor's own log; the handler runs with no rcu-defer lock held.
//!     let level = match report.severity() {
//!         Severity::Error => "error",
//!         Severity::Warning => "warn",
//!         Severity::Info => "info",
//!     };
//!     eprintln!("{level}: rcu-defer ({:?}): {report}", report.kind());
//! });
//! ```
//!
//! A report made while the handler runs (by the handler itself, or by a
//! logger it calls) goes to stderr instead of back to the handler, and a
//! handler that panics is caught: its report is printed on stderr with a
//! note.
//!
//! A failed guest notification, for instance, is reported once per notifier
//! (later failures are counted in its statistics):
//!
//! ```
//! use rcu_defer::virtio::{IrqNotifier, Notify};
//! use rcu_defer::{set_report_handler, ReportKind};
//! use std::sync::{Arc, Mutex};
//!
//! struct Closed; // an irqfd the monitor has already closed
//! impl Notify for Closed {
//!     fn signal(&self) -> std::io::Result<()> {
//!         Err(std::io::Error::from_raw_os_error(9)) // EBADF
//!     }
//! }
//!
//! let kinds = Arc::new(Mutex::new(Vec::new()));
//! let seen = Arc::clone(&kinds);
//! set_report_handler(move |report| seen.lock().unwrap().push(report.kind()));
//!
//! let irq = IrqNotifier::new(Closed);
//! irq.notify_now();
//! irq.notify_now();
//! assert_eq!(irq.stats().failed, 2);
//! let kinds = kinds.lock().unwrap();
//! assert_eq!(kinds.len(), 1);
//! assert!(matches!(kinds[0], ReportKind::NotifyFailed));
//! ```
//!
//! # The flavor from the environment
//!
//! Set `RCU_DEFER_FLAVOR=fence` or `RCU_DEFER_FLAVOR=membarrier` to force a
//! flavor (for instance, to measure what the fences cost); any other value is
//! reported (a [`ReportKind::Config`](crate::ReportKind::Config) report) and
//! ignored. [`set_flavor`](crate::set_flavor) called before the first read
//! section takes precedence.
