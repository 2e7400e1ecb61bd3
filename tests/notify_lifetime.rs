//! A batched `IrqNotifier::notify` queues its signal without touching the
//! `Arc`'s reference count; these claims check that the notifier's state
//! still outlives every queued signal, however the last `Arc` goes, and
//! that a signal that panics or notifies again leaves nothing stuck.

mod common;

use common::{recv, within};
use rcu_defer::virtio::{IrqNotifier, Notify};
use rcu_defer::{defer_scope, drain_call_rcu, read_depth, read_lock, synchronize_rcu};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

/// A notifier that records its signals, checks it is alive when signalled,
/// and records its drop.
struct Probe {
    log: Arc<Mutex<Vec<String>>>,
    name: &'static str,
    dropped: Arc<AtomicBool>,
}

impl Probe {
    fn new(name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> (Probe, Arc<AtomicBool>) {
        let dropped = Arc::new(AtomicBool::new(false));
        let probe = Probe {
            log: Arc::clone(log),
            name,
            dropped: Arc::clone(&dropped),
        };
        (probe, dropped)
    }
}

impl Notify for Probe {
    fn signal(&self) -> io::Result<()> {
        assert!(
            !self.dropped.load(Ordering::SeqCst),
            "{} was signalled after it was dropped",
            self.name
        );
        self.log
            .lock()
            .unwrap()
            .push(format!("signal {} at depth {}", self.name, read_depth()));
        Ok(())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
        self.log
            .lock()
            .unwrap()
            .push(format!("drop {} at depth {}", self.name, read_depth()));
    }
}

fn log() -> Arc<Mutex<Vec<String>>> {
    Arc::new(Mutex::new(Vec::new()))
}

fn entries(log: &Mutex<Vec<String>>) -> Vec<String> {
    log.lock().unwrap().clone()
}

#[test]
fn a_queued_signal_runs_as_the_section_ends_once_per_notifier() {
    within("one signal per pass", || {
        let log = log();
        let irq = IrqNotifier::new(Probe::new("a", &log).0);
        {
            let _pass = read_lock();
            for _ in 0..64 {
                let _request = read_lock();
                irq.notify();
            }
            assert!(entries(&log).is_empty(), "signalled before the pass ended");
        }
        // The signal is sent before the section's end is published: the
        // thread is still (for the last time) at depth 1 then.
        assert_eq!(entries(&log), ["signal a at depth 1"]);
        assert_eq!(irq.stats().signalled, 1);
        assert_eq!(irq.stats().requested, 64);
        assert_eq!(read_depth(), 0);
    });
}

#[test]
fn the_last_arc_dropped_on_another_thread_while_a_signal_is_queued_keeps_the_state_until_it_ran() {
    within("drop on another thread", || {
        let log = log();
        let (probe, dropped) = Probe::new("shared", &log);
        let irq = IrqNotifier::new(probe);
        let (dropped_tx, dropped_rx) = mpsc::channel();
        let (give_tx, give_rx) = mpsc::channel::<Arc<IrqNotifier<Probe>>>();
        let other = thread::spawn(move || {
            let irq = give_rx.recv().unwrap();
            drop(irq); // the last Arc
            dropped_tx.send(()).unwrap();
        });
        {
            let _pass = read_lock();
            irq.notify();
            give_tx.send(irq).unwrap();
            recv(&dropped_rx, "the other thread to drop the last Arc");
            assert!(
                !dropped.load(Ordering::SeqCst),
                "freed under a queued signal"
            );
        }
        other.join().unwrap();
        assert_eq!(entries(&log), ["signal shared at depth 1"]);
        // The state goes after a grace period, on the rcu-call thread.
        drain_call_rcu();
        assert!(dropped.load(Ordering::SeqCst));
        assert_eq!(
            entries(&log),
            ["signal shared at depth 1", "drop shared at depth 0"]
        );
    });
}

#[test]
fn the_last_arc_dropped_inside_the_section_on_its_own_thread_goes_after_the_signal() {
    within("drop in the section", || {
        let log = log();
        let (probe, dropped) = Probe::new("local", &log);
        let irq = IrqNotifier::new(probe);
        {
            let _pass = read_lock();
            irq.notify();
            drop(irq);
            assert!(
                !dropped.load(Ordering::SeqCst),
                "freed under a queued signal"
            );
        }
        assert_eq!(
            entries(&log),
            ["signal local at depth 1", "drop local at depth 0"]
        );
    });
}

/// A notifier that is neither `Send` nor `Sync`.
struct ThreadBound(Rc<AtomicUsize>);

impl Notify for ThreadBound {
    fn signal(&self) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn a_notifier_that_is_not_send_is_freed_on_its_thread_after_its_queued_signal() {
    within("!Send notifier", || {
        let count = Rc::new(AtomicUsize::new(0));
        let irq = IrqNotifier::new(ThreadBound(Rc::clone(&count)));
        {
            let _pass = read_lock();
            irq.notify();
            drop(irq);
            assert_eq!(Rc::strong_count(&count), 2, "freed under a queued signal");
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(Rc::strong_count(&count), 1, "freed on this thread, after");
    });
}

#[test]
fn more_notifiers_than_the_section_holds_each_signal_once() {
    within("many notifiers", || {
        let log = log();
        let names = [
            "q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8", "q9", "q10", "q11",
        ];
        let irqs: Vec<_> = names
            .iter()
            .map(|name| IrqNotifier::new(Probe::new(name, &log).0))
            .collect();
        {
            let _pass = read_lock();
            for _ in 0..3 {
                for irq in &irqs {
                    irq.notify();
                }
            }
        }
        let mut seen: Vec<String> = entries(&log)
            .into_iter()
            .map(|e| e.split(' ').nth(1).unwrap().to_owned())
            .collect();
        seen.sort();
        let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        expected.sort();
        assert_eq!(seen, expected, "each notifier signalled exactly once");
        assert!(irqs.iter().all(|irq| irq.stats().signalled == 1));
    });
}

#[test]
fn inside_a_defer_scope_the_signal_waits_for_the_scope_even_past_the_section() {
    within("scope around sections", || {
        let log = log();
        let irq = IrqNotifier::new(Probe::new("scoped", &log).0);
        let scope = defer_scope();
        for _ in 0..4 {
            let _request = read_lock();
            irq.notify();
        }
        assert!(entries(&log).is_empty());
        drop(scope);
        assert_eq!(entries(&log), ["signal scoped at depth 0"]);
    });
}

/// A notifier whose signal panics, counting its calls.
struct Failing(AtomicUsize);

impl Notify for Failing {
    fn signal(&self) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("a notifier that panics");
    }
}

#[test]
fn a_panicking_signal_does_not_stop_the_others_or_leave_the_section_open() {
    within("panicking signal", || {
        let log = log();
        let bad = IrqNotifier::new(Failing(AtomicUsize::new(0)));
        let good = IrqNotifier::new(Probe::new("good", &log).0);
        let ran = catch_unwind(AssertUnwindSafe(|| {
            let _pass = read_lock();
            bad.notify();
            good.notify();
        }));
        assert!(
            ran.is_err(),
            "the signal's panic resumes after the others ran"
        );
        assert_eq!(bad.notifier().0.load(Ordering::SeqCst), 1);
        assert_eq!(entries(&log), ["signal good at depth 1"]);
        assert_eq!(read_depth(), 0, "the section ended");
        synchronize_rcu();
    });
}

/// A notifier whose signal notifies another notifier.
struct Chained(Arc<IrqNotifier<Probe>>);

impl Notify for Chained {
    fn signal(&self) -> io::Result<()> {
        self.0.notify();
        Ok(())
    }
}

#[test]
fn a_signal_that_notifies_again_gets_that_notification_sent_too() {
    within("chained notify", || {
        let log = log();
        let inner = IrqNotifier::new(Probe::new("inner", &log).0);
        let outer = IrqNotifier::new(Chained(Arc::clone(&inner)));
        {
            let _pass = read_lock();
            outer.notify();
        }
        assert_eq!(outer.stats().signalled, 1);
        assert_eq!(inner.stats().signalled, 1);
        assert_eq!(entries(&log).len(), 1);
    });
}
