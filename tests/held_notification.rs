//! Claims about the `rcu-watchdog` thread: a read section that holds back
//! a queued guest notification for longer than the stall timeout is
//! reported even though no writer waits for a grace period (where the
//! section began, on which thread, how many notifications), and so is a
//! queued signal that does not return (the lock trap of a `Notify` that
//! takes a lock the code around the section still holds).
//!
//! The reports go to a test report handler, which hands those of the
//! thread under test to the test.

#![cfg(target_os = "linux")]

mod common;

use common::{recv, within};
use rcu_defer::virtio::{EventFd, IrqNotifier, Notify};
use rcu_defer::vm::GuestMemoryRcu;
use rcu_defer::{set_report_handler, set_stall_timeout, ReportKind};
use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::thread;
use std::time::Duration;
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryMmap};

/// Short, so that the tests take little time; the claims hold for any.
const STALL_TIMEOUT: Duration = Duration::from_millis(200);

/// The held-notification reports, by thread name in the message.
static LISTENERS: Mutex<Vec<(&'static str, Sender<String>)>> = Mutex::new(Vec::new());

/// Sets the stall timeout and the report handler (once for the binary) and
/// returns the held-notification reports that name `thread_name`.
fn reports_naming(thread_name: &'static str) -> Receiver<String> {
    static SET_UP: Once = Once::new();
    SET_UP.call_once(|| {
        set_stall_timeout(Some(STALL_TIMEOUT));
        set_report_handler(|report| {
            if report.kind() != ReportKind::HeldNotification {
                return;
            }
            let listeners = LISTENERS.lock().unwrap_or_else(PoisonError::into_inner);
            for (name, tx) in listeners.iter() {
                if report.message().contains(&format!("'{name}'")) {
                    let _ = tx.send(report.message().to_owned());
                }
            }
        });
    });
    let (tx, rx) = mpsc::channel();
    LISTENERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((thread_name, tx));
    rx
}

/// Claim: a guest-memory handle held across a blocking wait (the issue's
/// `let mem = memory.memory();` then a blocking kick read) after a batched
/// `notify` is reported within about one stall timeout, naming the thread,
/// the line of the `memory()` call and the one held notification; the
/// signal is sent once the handle is dropped.
#[test]
fn a_handle_held_across_a_blocking_wait_is_reported_with_the_memory_call_site() {
    let reports = reports_naming("held-across-kick");
    let irq = IrqNotifier::new(EventFd::new().unwrap());
    let memory = GuestMemoryRcu::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap(),
    );
    let (kick_tx, kick_rx) = mpsc::channel::<()>();
    let (line_tx, line_rx) = mpsc::channel();
    let device = {
        let irq = Arc::clone(&irq);
        thread::Builder::new()
            .name("held-across-kick".into())
            .spawn(move || {
                let (mem, line) = (memory.memory(), line!());
                line_tx.send(line).unwrap();
                irq.notify(); // batched: sent when `mem` is dropped
                kick_rx.recv().unwrap(); // the blocking wait, handle held
                drop(mem);
            })
            .unwrap()
    };
    let line = recv(&line_rx, "the device thread's memory() line");
    let report = recv(&reports, "a held-notification report");
    assert!(
        report.contains(&format!("{}:{line}:", file!())),
        "names the memory() call: {report}"
    );
    assert!(report.contains("1 guest notification "), "{report}");
    assert!(report.contains("held back"), "{report}");
    assert_eq!(irq.stats().signalled, 0, "still held");
    kick_tx.send(()).unwrap();
    device.join().unwrap();
    assert_eq!(irq.notifier().consume().unwrap(), 1);
}

/// A notifier whose signal blocks until the test lets it go: what a
/// `Notify` that takes the vring's lock under the vring's `get_mut()` guard
/// does forever.
struct Blocking {
    entered: Mutex<Option<Sender<()>>>,
    release: Mutex<Receiver<()>>,
}

impl Notify for Blocking {
    fn signal(&self) -> io::Result<()> {
        if let Some(entered) = self.entered.lock().unwrap().take() {
            let _ = entered.send(());
        }
        let _ = self.release.lock().unwrap().recv();
        Ok(())
    }
}

/// Claim: a queued signal that does not return at the section's end is
/// reported as running, naming the thread and where the section began,
/// and telling what a queued signal must not do; it completes normally
/// once it returns.
#[test]
fn a_queued_signal_that_does_not_return_is_reported_as_running() {
    let reports = reports_naming("blocked-signal");
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let irq = IrqNotifier::new(Blocking {
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(release_rx),
    });
    let (line_tx, line_rx) = mpsc::channel();
    let device = thread::Builder::new()
        .name("blocked-signal".into())
        .spawn(move || {
            let (pass, line) = (rcu_defer::read_lock(), line!());
            line_tx.send(line).unwrap();
            irq.notify();
            drop(pass); // the signal runs here, and blocks
            irq.stats()
        })
        .unwrap();
    let line = recv(&line_rx, "the section's line");
    recv(&entered_rx, "the signal to start");
    let report = recv(&reports, "a report of the blocked signal");
    assert!(report.contains("does not return"), "{report}");
    assert!(report.contains(&format!("{}:{line}:", file!())), "{report}");
    assert!(report.contains("must not block"), "{report}");
    release_tx.send(()).unwrap();
    let stats = within("the device thread", move || device.join().unwrap());
    assert_eq!((stats.requested, stats.signalled), (1, 1));
}
