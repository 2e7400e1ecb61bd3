//! loom model of a batched `IrqNotifier::notify`, whose queued signal holds
//! no reference count: the notifier's state must outlive the signal however
//! the last `Arc` goes.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use loom_tests::Retirable;
use rcu_defer::virtio::{IrqNotifier, Notify};
use rcu_defer::{drain_call_rcu, loom_stop_call_rcu_thread, read_lock};

/// A notifier whose signal uses memory that its drop frees (see
/// `Retirable`): loom fails the model if a signal is not ordered before the
/// drop.
struct Probe(Arc<Retirable>);

impl Notify for Probe {
    fn signal(&self) -> std::io::Result<()> {
        self.0.check_live();
        Ok(())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.0.free();
    }
}

/// Property: a signal queued by `notify` inside a read section runs while
/// the notifier is alive, whether the last `Arc` is dropped inside that
/// section by the notifying thread (the state is then freed on that thread
/// after the signal) or concurrently by another thread (freed by the
/// `rcu-call` thread after a grace period); the notifier is dropped exactly
/// once, after the drain.
///
/// Threads: the device thread, which creates the notifier, hands a clone to
/// a second thread that drops it at any point, and notifies in a section in
/// which it drops its own `Arc`; the second thread; the `rcu-call` worker;
/// the model's thread, which drains and stops the worker. Bounded to 5
/// preemptions (see the bound's comment).
///
/// Checked: fails when the state of a notifier dropped on another thread is
/// freed at once instead of through `call_rcu`, when the one dropped inside
/// the section on its own thread is freed at once, and when the section's
/// signals run after its end is published.
#[test]
fn a_queued_signal_never_outlives_its_notifier_whichever_thread_drops_it_last() {
    // Four threads, one of them the worker with its grace period's sleeps:
    // 5 preemptions take about 10 s on 2 cores (3: 0.3 s, and they already
    // catch all three mutations above); the interleavings that matter (the
    // other thread's drop before, inside or after the section) need one.
    loom_tests::bounded(5).check(|| {
        rcu_defer::flavor();
        let memory = Arc::new(Retirable::new());
        let device = {
            let memory = Arc::clone(&memory);
            thread::spawn(move || {
                let irq = IrqNotifier::new(Probe(memory));
                let clone = std::sync::Arc::clone(&irq);
                let other = thread::spawn(move || drop(clone));
                let pass = read_lock();
                irq.notify();
                drop(irq);
                drop(pass);
                other.join().unwrap();
            })
        };
        loom_tests::join([device]);
        drain_call_rcu();
        loom_stop_call_rcu_thread();
        assert!(
            memory.is_freed(),
            "the notifier must be dropped once the drain has returned"
        );
    });
}
