//! One report handler per test binary: a report that a test expects goes
//! to that test, to check; any other is printed to stderr as rcu-defer's
//! default handler prints it. So stderr shows the reports that no test
//! expected, and a test that expects a report fails if it does not come.

use super::HANG_LIMIT;
use rcu_defer::Report;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, Once, PoisonError};
use std::time::Duration;

/// What a test expects: which reports, and where they go.
struct Expectation {
    id: u64,
    matches: Box<dyn Fn(&Report) -> bool + Send>,
    tx: Sender<Report>,
}

/// The expectations of the tests running now.
static EXPECTATIONS: Mutex<Vec<Expectation>> = Mutex::new(Vec::new());

/// Installs the binary's report handler (once). A test binary that uses
/// this module must not set a handler of its own, or the reports this
/// module expects go there instead.
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        rcu_defer::set_report_handler(|report| {
            let expectations = EXPECTATIONS.lock().unwrap_or_else(PoisonError::into_inner);
            match expectations.iter().find(|e| (e.matches)(report)) {
                Some(expectation) => {
                    let _ = expectation.tx.send(report.clone());
                }
                None => {
                    drop(expectations);
                    let _ = writeln!(std::io::stderr(), "rcu-defer: {report}");
                }
            }
        });
    });
}

/// Reports that a test expects, from [`expect`]; they stop being
/// expected when this is dropped.
pub struct Expected {
    id: u64,
    what: String,
    rx: Receiver<Report>,
}

/// Expects the reports that `matches` accepts (the first expectation that
/// accepts a report gets it): they are not printed, but kept for the test
/// to take. `what` describes them for a test that fails waiting.
pub fn expect(what: &str, matches: impl Fn(&Report) -> bool + Send + 'static) -> Expected {
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    install();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel();
    EXPECTATIONS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Expectation {
            id,
            matches: Box::new(matches),
            tx,
        });
    Expected {
        id,
        what: what.to_owned(),
        rx,
    }
}

impl Expected {
    /// Waits for the next expected report; panics if none comes within
    /// [`HANG_LIMIT`].
    pub fn next(&self) -> Report {
        self.next_within(HANG_LIMIT)
    }

    /// Waits for the next expected report; panics if none comes within
    /// `limit`.
    pub fn next_within(&self, limit: Duration) -> Report {
        self.rx
            .recv_timeout(limit)
            .unwrap_or_else(|e| panic!("expected a report ({}) within {limit:?}: {e}", self.what))
    }

    /// The expected reports that have come and not been taken yet.
    pub fn taken(&self) -> Vec<Report> {
        self.rx.try_iter().collect()
    }
}

impl Drop for Expected {
    fn drop(&mut self) {
        EXPECTATIONS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|e| e.id != self.id);
    }
}
