//! Per-completion cost of guest notifications through an eventfd, batched
//! (one outer read section per pass, `notify`) against unbatched
//! (`notify_now` per completion), at pass depths 1, 8 and 64.
//!
//! Nothing reads the eventfd during the measurement, so each signal is a
//! plain write(2) that wakes nobody: this is the device-side cost alone.
//! The `notify_noop_<flavor>` group repeats depths 1 and 64 with a
//! `Notify` that makes no system call, which leaves the library's own cost
//! of each mode.
//! `examples/ring_driver/` measures the whole loop: a virtio-blk-like
//! device on a real virtqueue, with a guest-driver thread.

mod common;

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("notify bench: eventfd is Linux-only; nothing to measure here");
}

#[cfg(target_os = "linux")]
mod linux {
    use super::common;
    use criterion::{BenchmarkId, Criterion, Throughput};
    use rcu_defer::read_lock;
    use rcu_defer::virtio::{EventFd, IrqNotifier, Notify};
    use std::hint::black_box;
    use std::process::ExitCode;
    use std::sync::Arc;

    pub fn main() -> ExitCode {
        let mut c = common::criterion();
        notify(&mut c);
        c.final_summary();
        ExitCode::SUCCESS
    }

    fn notify(c: &mut Criterion) {
        common::register_reader_thread();
        let irq = IrqNotifier::new(EventFd::new().expect("an eventfd"));
        let group = format!("notify_{}", common::flavor_name());
        both_modes(c, &group, &irq, &[1, 8, 64], || {
            // Reset the counter now and then (it saturates only after 2^64
            // signals, but keep the fd in its usual state).
            let _ = irq.notifier().consume();
        });
        let stats = irq.stats();
        assert_eq!(stats.failed, 0, "no signal may fail: {stats:?}");

        let irq = IrqNotifier::new(NoSyscall);
        let group = format!("notify_noop_{}", common::flavor_name());
        both_modes(c, &group, &irq, &[1, 64], || {});
        let stats = irq.stats();
        assert!(stats.signalled > 0 && stats.failed == 0, "{stats:?}");
    }

    /// Per depth: `depth` completions each signalled at once (`notify_now`),
    /// and the same inside one read section (`notify`); `after_depth` runs
    /// between depths, outside the timing.
    fn both_modes<N: Notify + 'static>(
        c: &mut Criterion,
        group: &str,
        irq: &Arc<IrqNotifier<N>>,
        depths: &[u64],
        mut after_depth: impl FnMut(),
    ) {
        let mut group = c.benchmark_group(group);
        for &depth in depths {
            group.throughput(Throughput::Elements(depth));
            group.bench_with_input(BenchmarkId::new("unbatched", depth), &depth, |b, &depth| {
                b.iter(|| {
                    for _ in 0..depth {
                        irq.notify_now();
                    }
                });
            });
            group.bench_with_input(BenchmarkId::new("batched", depth), &depth, |b, &depth| {
                b.iter(|| {
                    let pass = read_lock();
                    for _ in 0..depth {
                        irq.notify();
                    }
                    drop(pass);
                });
            });
            after_depth();
        }
        group.finish();
    }

    /// A notifier that signals nobody: no system call, so what is left is
    /// `IrqNotifier`'s and the batching's own cost.
    struct NoSyscall;

    impl Notify for NoSyscall {
        fn signal(&self) -> std::io::Result<()> {
            black_box(());
            Ok(())
        }
    }
}
