//! Claims about the virtio notification adapter.

use rcu_defer::virtio::{vring_need_event, IrqNotifier, Notify, NotifyStats, ISR_QUEUE};
use rcu_defer::{defer_scope, read_lock};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

mod common;

/// A notifier that counts signals, and fails when told to.
#[derive(Default)]
struct Counter {
    signals: AtomicU64,
    fail: std::sync::atomic::AtomicBool,
}

impl Notify for Counter {
    fn signal(&self) -> io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "test failure"));
        }
        self.signals.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn signals(irq: &IrqNotifier<Counter>) -> u64 {
    irq.notifier().signals.load(Ordering::SeqCst)
}

#[test]
fn outside_a_section_each_notify_signals_at_once() {
    let irq = IrqNotifier::new(Counter::default());
    irq.notify();
    assert_eq!(signals(&irq), 1);
    irq.notify();
    assert_eq!(signals(&irq), 2);
    assert_eq!(
        irq.stats(),
        NotifyStats {
            requested: 2,
            signalled: 2,
            failed: 0
        }
    );
}

#[test]
fn inside_an_outermost_section_each_notifier_signals_once_at_its_end() {
    let a = IrqNotifier::new(Counter::default());
    let b = IrqNotifier::new(Counter::default());
    {
        let _pass = read_lock();
        for _ in 0..10 {
            let _nested = read_lock();
            a.notify();
            b.notify();
            a.notify();
        }
        assert_eq!((signals(&a), signals(&b)), (0, 0), "nothing before the end");
        assert_eq!(a.take_isr(), ISR_QUEUE, "the ISR bit is set at once");
    }
    assert_eq!((signals(&a), signals(&b)), (1, 1));
    assert_eq!(a.stats().requested, 20);
    assert_eq!(b.stats().requested, 10);
    assert_eq!(a.stats().signalled, 1);
}

#[test]
fn a_defer_scope_batches_like_a_read_section() {
    let irq = IrqNotifier::new(Counter::default());
    let scope = defer_scope();
    irq.notify();
    irq.notify();
    {
        let _g = read_lock();
        irq.notify();
    }
    assert_eq!(signals(&irq), 0, "the scope is still open");
    drop(scope);
    assert_eq!(signals(&irq), 1);
}

#[test]
fn notify_now_is_never_batched() {
    let irq = IrqNotifier::new(Counter::default());
    let _g = read_lock();
    irq.notify_now();
    irq.notify_now();
    assert_eq!(signals(&irq), 2);
}

#[test]
fn every_pass_signals_again() {
    let irq = IrqNotifier::new(Counter::default());
    for pass in 1..=5 {
        let _g = read_lock();
        for _ in 0..64 {
            irq.notify();
        }
        drop(_g);
        assert_eq!(signals(&irq), pass);
    }
}

#[test]
fn a_failed_signal_is_counted_not_dropped_and_never_panics() {
    let reports = common::reports::expect("the Counter's failure", |report| {
        report.kind() == rcu_defer::ReportKind::NotifyFailed
            && report.message().contains("test failure")
    });
    let irq = IrqNotifier::new(Counter::default());
    irq.notifier().fail.store(true, Ordering::SeqCst);
    {
        let _g = read_lock();
        irq.notify();
    } // the deferred signal fails here; it must not panic
    irq.notify_now();
    assert_eq!(
        irq.stats(),
        NotifyStats {
            requested: 2,
            signalled: 0,
            failed: 2
        }
    );
    let report = reports.next();
    assert!(
        report.message().starts_with(
            "a guest notification failed: test failure (further failures of this notifier"
        ),
        "{report}"
    );
    assert!(
        reports.taken().is_empty(),
        "only the first failure is reported"
    );
    irq.notifier().fail.store(false, Ordering::SeqCst);
    irq.notify();
    assert_eq!(irq.stats().signalled, 1);
}

#[test]
fn take_isr_reads_and_clears_the_status() {
    let irq = IrqNotifier::new(Counter::default());
    assert_eq!(irq.take_isr(), 0);
    irq.notify();
    assert_eq!(irq.take_isr(), ISR_QUEUE);
    assert_eq!(irq.take_isr(), 0);
}

#[test]
fn vring_need_event_follows_the_event_idx_rule_across_the_wrap() {
    // (event_idx, new_idx, old_idx, expected): notify iff event_idx is in
    // [old_idx, new_idx) modulo 2^16.
    let table: &[(u16, u16, u16, bool)] = &[
        (0, 1, 0, true),
        (5, 6, 5, true),
        (5, 10, 5, true),
        (9, 10, 5, true),
        (10, 10, 5, false),
        (4, 10, 5, false),
        (11, 10, 5, false),
        (5, 5, 5, false), // nothing new: never notify
        (65535, 0, 65535, true),
        (65535, 1, 65534, true),
        (0, 1, 65535, true),
        (1, 1, 65535, false),
        (65534, 1, 65535, false),
        (32768, 32769, 0, true),
        (0, 32769, 32768, false),
        (100, 100, 100, false),
    ];
    for &(event, new, old, expected) in table {
        assert_eq!(
            vring_need_event(event, new, old),
            expected,
            "vring_need_event(event {event}, new {new}, old {old})"
        );
    }
    // The rule against a brute-force reading of it, for a sweep around the
    // wrap.
    for old in [65500u16, 65535, 0, 10] {
        for n in 0..80u16 {
            let new = old.wrapping_add(n);
            for back in 0..100u16 {
                let event = new.wrapping_sub(back);
                let passed = (0..n).any(|k| old.wrapping_add(k) == event);
                assert_eq!(vring_need_event(event, new, old), passed);
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod eventfd {
    use rcu_defer::read_lock;
    use rcu_defer::virtio::{EventFd, IrqNotifier};
    use std::io;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    #[test]
    fn an_eventfd_counts_signals_until_consumed() {
        let fd = EventFd::new().unwrap();
        assert_eq!(
            fd.consume().unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "a fresh eventfd has nothing to consume and does not block"
        );
        fd.signal().unwrap();
        fd.signal().unwrap();
        fd.signal().unwrap();
        assert_eq!(fd.consume().unwrap(), 3);
        assert_eq!(fd.consume().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(fd.as_raw_fd() >= 0);
    }

    #[test]
    fn wait_returns_zero_on_timeout_and_the_count_when_signalled() {
        let fd = EventFd::new().unwrap();
        let start = Instant::now();
        assert_eq!(fd.wait(Some(Duration::from_millis(50))).unwrap(), 0);
        assert!(start.elapsed() >= Duration::from_millis(40));
        fd.signal().unwrap();
        assert_eq!(fd.wait(Some(Duration::from_secs(5))).unwrap(), 1);
    }

    #[test]
    fn a_batched_pass_writes_the_eventfd_once_and_wakes_a_blocked_reader_once() {
        let irq = IrqNotifier::new(EventFd::new().unwrap());
        let guest = {
            let irq = irq.clone();
            std::thread::spawn(move || irq.notifier().wait(Some(Duration::from_secs(30))))
        };
        {
            let _pass = read_lock();
            for _ in 0..64 {
                irq.notify();
            }
        }
        assert_eq!(guest.join().unwrap().unwrap(), 1);
        assert_eq!(irq.stats().signalled, 1);
    }

    /// The largest value an eventfd's counter holds: a write of 1 more
    /// fails with `EAGAIN` on a non-blocking eventfd.
    pub const FULL: u64 = 0xffff_ffff_ffff_fffe;

    /// Expects any `NotifyFailed` report (a failure of this binary's other
    /// notifier, the `Counter`, says "test failure"): the full-counter tests
    /// check that none comes.
    pub fn notify_failed_reports() -> super::common::reports::Expected {
        super::common::reports::expect("a NotifyFailed report", |report| {
            report.kind() == rcu_defer::ReportKind::NotifyFailed
                && !report.message().contains("test failure")
        })
    }

    /// Claim: a full counter (`EAGAIN`: a signal is pending already, so the
    /// reader wakes anyway) is a delivered notification, batched or not:
    /// counted as signalled, not failed, not reported, and never a block.
    #[test]
    fn a_full_eventfd_counter_counts_as_signalled_not_as_a_failure() {
        let reports = notify_failed_reports();
        // Fill the counter through a second handle on the same eventfd.
        let fd = EventFd::new().unwrap();
        let raw = fd.as_raw_fd();
        let dup = std::fs::File::from(std::os::fd::AsFd::as_fd(&fd).try_clone_to_owned().unwrap());
        use std::io::Write;
        (&dup).write_all(&FULL.to_ne_bytes()).unwrap();
        assert_eq!(
            fd.signal().unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "the raw write finds the counter full"
        );
        let irq = IrqNotifier::new(fd);
        assert_eq!(irq.notifier().as_raw_fd(), raw);
        {
            let _pass = read_lock();
            irq.notify();
            irq.notify();
        }
        irq.notify_now();
        assert_eq!(
            irq.stats(),
            rcu_defer::virtio::NotifyStats {
                requested: 3,
                signalled: 2,
                failed: 0
            }
        );
        assert_eq!(irq.notifier().consume().unwrap(), FULL, "the pending value");
        irq.notify();
        assert_eq!(irq.notifier().consume().unwrap(), 1, "signals work on");
        assert_eq!(irq.stats().signalled, 3);
        rcu_defer::drain_call_rcu();
        assert!(reports.taken().is_empty(), "{:?}", reports.taken());
    }

    #[cfg(feature = "vmm-sys-util")]
    #[test]
    fn a_vmm_sys_util_eventfd_is_a_notifier() {
        use vmm_sys_util::eventfd::{EventFd as VmmEventFd, EFD_NONBLOCK};
        let irq = IrqNotifier::new(VmmEventFd::new(EFD_NONBLOCK).unwrap());
        {
            let _pass = read_lock();
            irq.notify();
            irq.notify();
        }
        assert_eq!(irq.notifier().read().unwrap(), 1);
        assert_eq!(irq.stats().signalled, 1);
    }

    /// Claim: as for rcu-defer's own eventfd, a full counter is delivered,
    /// for vmm-sys-util's `EventFd`.
    #[cfg(feature = "vmm-sys-util")]
    #[test]
    fn a_full_vmm_sys_util_eventfd_counts_as_signalled() {
        use vmm_sys_util::eventfd::{EventFd as VmmEventFd, EFD_NONBLOCK};
        let reports = notify_failed_reports();
        let fd = VmmEventFd::new(EFD_NONBLOCK).unwrap();
        fd.write(FULL).unwrap();
        let irq = IrqNotifier::new(fd);
        {
            let _pass = read_lock();
            irq.notify();
        }
        irq.notify_now();
        let stats = irq.stats();
        assert_eq!((stats.requested, stats.signalled, stats.failed), (2, 2, 0));
        assert_eq!(irq.notifier().read().unwrap(), FULL);
        assert!(reports.taken().is_empty(), "{:?}", reports.taken());
    }

    /// Claim: and for vmm-sys-util's `EventNotifier` (what
    /// vhost-user-backend keeps a call eventfd as).
    #[cfg(feature = "vhost-user-backend")]
    #[test]
    fn a_full_event_notifier_counts_as_signalled() {
        use std::os::fd::{FromRawFd, IntoRawFd};
        use vmm_sys_util::event::EventNotifier;
        let reports = notify_failed_reports();
        let fd = EventFd::new().unwrap();
        let dup = std::os::fd::AsFd::as_fd(&fd).try_clone_to_owned().unwrap();
        // SAFETY: `dup` is an open descriptor that this test owns and hands
        // over to the `EventNotifier`.
        let notifier = unsafe { EventNotifier::from_raw_fd(dup.into_raw_fd()) };
        let irq = IrqNotifier::new(notifier);
        let dup = std::fs::File::from(std::os::fd::AsFd::as_fd(&fd).try_clone_to_owned().unwrap());
        use std::io::Write;
        (&dup).write_all(&FULL.to_ne_bytes()).unwrap();
        {
            let _pass = read_lock();
            irq.notify();
        }
        irq.notify_now();
        let stats = irq.stats();
        assert_eq!((stats.requested, stats.signalled, stats.failed), (2, 2, 0));
        assert_eq!(fd.consume().unwrap(), FULL);
        assert!(reports.taken().is_empty(), "{:?}", reports.taken());
    }
}

#[cfg(feature = "tracing")]
mod tracing_events {
    use super::Counter;
    use rcu_defer::read_lock;
    use rcu_defer::virtio::IrqNotifier;
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    /// Records the message of every event (followed by ` [kind=...]` if
    /// it has a `kind` field).
    struct Messages(Arc<Mutex<Vec<String>>>);

    struct MessageOf<'a>(&'a mut Option<String>, Option<String>);

    impl Visit for MessageOf<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            match field.name() {
                "message" => *self.0 = Some(format!("{value:?}")),
                "kind" => self.1 = Some(format!("{value:?}")),
                _ => {}
            }
        }
    }

    impl Subscriber for Messages {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut message = None;
            let mut visitor = MessageOf(&mut message, None);
            event.record(&mut visitor);
            let kind = visitor.1;
            if let (Some(message), Some(kind)) = (&mut message, kind) {
                message.push_str(&format!(" [kind={kind}]"));
            }
            self.0.lock().unwrap().extend(message);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    /// In a child process of its own: the other tests of this binary set a
    /// report handler, which would take the report from `tracing`.
    #[test]
    fn a_failed_notification_s_report_is_a_tracing_event_when_a_subscriber_listens() {
        const TEST: &str =
            "tracing_events::a_failed_notification_s_report_is_a_tracing_event_when_a_subscriber_listens";
        if !super::common::is_child(TEST) {
            super::common::run_child(TEST, super::common::HANG_LIMIT);
            return;
        }
        let messages = Arc::new(Mutex::new(Vec::new()));
        let irq = IrqNotifier::new(Counter::default());
        irq.notifier().fail.store(true, Ordering::SeqCst);
        tracing::subscriber::with_default(Messages(messages.clone()), || irq.notify_now());
        let messages = messages.lock().unwrap();
        assert!(
            messages.iter().any(|m| m.starts_with(
                "a guest notification failed: test failure (further failures of this notifier"
            ) && m.ends_with(" [kind=NotifyFailed]")),
            "{messages:#?}"
        );
    }

    #[test]
    fn tracing_shows_each_request_and_the_one_real_signal() {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let irq = IrqNotifier::new(Counter::default());
        tracing::subscriber::with_default(Messages(messages.clone()), || {
            let _pass = read_lock();
            irq.notify();
            irq.notify();
            assert_eq!(
                *messages.lock().unwrap(),
                ["guest notification requested"; 2],
                "requests are traced when they happen; nothing is sent yet"
            );
        });
        // A whole pass: the requests, then one real signal at its end.
        let messages = Arc::new(Mutex::new(Vec::new()));
        tracing::subscriber::with_default(Messages(messages.clone()), || {
            {
                let _pass = read_lock();
                irq.notify();
            }
            assert_eq!(
                *messages.lock().unwrap(),
                ["guest notification requested", "guest notified"]
            );
        });
    }
}

#[inline(never)]
fn complete_read(irq: &std::sync::Arc<IrqNotifier<Counter>>) {
    irq.notify();
}

#[inline(never)]
fn complete_write(irq: &std::sync::Arc<IrqNotifier<Counter>>) {
    irq.notify();
}

#[test]
fn notifies_from_different_functions_share_one_signal() {
    let irq = IrqNotifier::new(Counter::default());
    {
        let _pass = read_lock();
        complete_read(&irq);
        complete_write(&irq);
        irq.notify();
    }
    assert_eq!(signals(&irq), 1);
}
