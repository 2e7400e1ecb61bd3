//! Claims about `rcu_defer::vhost_user` (feature `vhost-user-backend`): the
//! vring type a vhost-user-backend 0.24 backend uses to serve its queues
//! through `GuestMemoryRcu` handles and notify through `IrqNotifier`, and
//! `Notify` for vmm-sys-util's `EventNotifier`.
//!
//! Run with `cargo test --all-features` (or `--features vhost-user-backend`).

#![cfg(all(target_os = "linux", feature = "vhost-user-backend"))]

mod common;

use common::within;
use rcu_defer::vhost_user::{AtomicMemory, CallNotifier, RcuVring};
use rcu_defer::virtio::{EventFd, IrqNotifier, Notify};
use rcu_defer::vm::GuestMemoryRcu;
use rcu_defer::{drain_call_rcu, in_read_section, ReportKind};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use vhost_user_backend::VringT;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::QueueT;
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
};
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventFlag};

const QUEUE_SIZE: u16 = 16;

/// The frontend's end of a call eventfd: a `File` for SET_VRING_CALL.
fn call_file(fd: &EventFd) -> File {
    File::from(fd.as_fd().try_clone_to_owned().unwrap())
}

fn ram() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap()
}

/// A vring set up as vhost-user-backend's handler does on SET_VRING_NUM,
/// SET_VRING_ADDR and SET_VRING_ENABLE, over `mock`'s ring, with `chains`
/// one-descriptor requests posted.
fn vring_over(
    mock: &MockSplitQueue<'_, GuestMemoryMmap>,
    atomic: &AtomicMemory,
    chains: u16,
) -> RcuVring {
    let descs: Vec<_> = (0..chains)
        .map(|i| RawDescriptor::from(Descriptor::new(0x8000 + 0x100 * u64::from(i), 0x100, 2, 0)))
        .collect();
    mock.add_desc_chains(&descs, 0).unwrap();
    let vring = RcuVring::new(atomic.clone(), 256).unwrap();
    vring.set_queue_size(QUEUE_SIZE);
    vring
        .set_queue_info(
            mock.desc_table_addr().0,
            mock.avail_addr().0,
            mock.used_addr().0,
        )
        .unwrap();
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    vring
}

/// Claim: the deadlocking wiring, written with the shipped vring
/// (the vring's write guard taken first, a guest memory handle after it,
/// `notify` and `signal_used_queue` inside, the handle dropped while the
/// guard is still alive), runs to the end and signals the call eventfd
/// once for the whole pass.
#[test]
fn the_lock_trap_wiring_with_the_shipped_vring_runs_and_signals_once() {
    let map = ram();
    let mock = MockSplitQueue::create(&map, GuestAddress(0), QUEUE_SIZE);
    let atomic = GuestMemoryAtomic::new(map.clone());
    let vring = vring_over(&mock, &atomic, 4);
    let call = EventFd::new().unwrap();
    vring.set_call(Some(call_file(&call)));
    let memory = GuestMemoryRcu::new(map.clone());
    memory.follow(&atomic);

    let served = {
        let vring = vring.clone();
        within("a pass under the vring's write guard", move || {
            let mut state = vring.get_mut();
            let mem = memory.memory();
            let queue = state.get_queue_mut();
            let mut served = 0;
            while let Some(chain) = queue.pop_descriptor_chain(mem.clone()) {
                queue.add_used(&*mem, chain.head_index(), 0).unwrap();
                vring.irq().notify();
                vring.signal_used_queue().unwrap();
                served += 1;
            }
            drop(mem); // the queued signal runs here, under `state`
            assert!(!in_read_section());
            drop(state);
            served
        })
    };
    assert_eq!(served, 4);
    assert_eq!(call.consume().unwrap(), 1, "one signal for the pass");
    let stats = vring.irq().stats();
    assert_eq!((stats.requested, stats.signalled, stats.failed), (8, 1, 0));
}

/// Claim: the notifier follows SET_VRING_CALL: after the frontend replaces
/// the call eventfd, signals go to the new one and none to the old.
#[test]
fn signals_go_to_the_call_eventfd_set_last() {
    let map = ram();
    let mock = MockSplitQueue::create(&map, GuestAddress(0), QUEUE_SIZE);
    let vring = vring_over(&mock, &GuestMemoryAtomic::new(map.clone()), 0);
    let (first, second) = (EventFd::new().unwrap(), EventFd::new().unwrap());
    vring.set_call(Some(call_file(&first)));
    vring.irq().notify_now();
    vring.set_call(Some(call_file(&second)));
    vring.irq().notify_now();
    vring.irq().notify_now();
    assert_eq!(first.consume().unwrap(), 1);
    assert_eq!(second.consume().unwrap(), 2);
    assert!(vring.irq().notifier().is_set());
}

/// Claim (unhappy path): with no call eventfd (before SET_VRING_CALL, or
/// after the frontend withdrew it) a signal fails with `NotConnected`; the
/// notifier counts every failure and reports the first only, and signals
/// work again once an eventfd is set.
#[test]
fn a_signal_with_no_call_eventfd_fails_is_counted_and_reported_once() {
    let reports = common::reports::expect("a failure with no call eventfd", |report| {
        report.kind() == ReportKind::NotifyFailed && report.message().contains("no call eventfd")
    });
    let notifier = CallNotifier::new();
    let err = notifier.signal().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotConnected);

    let map = ram();
    let mock = MockSplitQueue::create(&map, GuestAddress(0), QUEUE_SIZE);
    let vring = vring_over(&mock, &GuestMemoryAtomic::new(map.clone()), 0);
    let call = EventFd::new().unwrap();
    vring.set_call(Some(call_file(&call)));
    vring.set_call(None);
    assert!(!vring.irq().notifier().is_set());
    vring.irq().notify_now();
    vring.irq().notify_now();
    let stats = vring.irq().stats();
    assert_eq!((stats.signalled, stats.failed), (0, 2));
    reports.next();
    assert!(reports.taken().is_empty(), "reported once");
    vring.set_call(Some(call_file(&call)));
    vring.irq().notify_now();
    assert_eq!(call.consume().unwrap(), 1);
}

/// Claim: a call eventfd whose counter is full (`EAGAIN`: a signal is
/// pending already, so the frontend's interrupt fires anyway) takes a
/// signal as delivered: counted as signalled, not failed, not reported.
#[test]
fn a_full_call_eventfd_counts_as_signalled_not_as_a_failure() {
    let reports = common::reports::expect("a NotifyFailed report", |report| {
        report.kind() == ReportKind::NotifyFailed && !report.message().contains("no call eventfd")
    });
    let call = EventFd::new().unwrap();
    (&call_file(&call))
        .write_all(&0xffff_ffff_ffff_fffe_u64.to_ne_bytes())
        .unwrap();
    let map = ram();
    let mock = MockSplitQueue::create(&map, GuestAddress(0), QUEUE_SIZE);
    let vring = vring_over(&mock, &GuestMemoryAtomic::new(map.clone()), 0);
    vring.set_call(Some(call_file(&call)));
    vring.irq().notifier().signal().unwrap();
    {
        let _pass = rcu_defer::read_lock();
        vring.signal_used_queue().unwrap();
    }
    vring.irq().notify_now();
    let stats = vring.irq().stats();
    assert_eq!((stats.requested, stats.signalled, stats.failed), (2, 2, 0));
    assert_eq!(call.consume().unwrap(), 0xffff_ffff_ffff_fffe);
    drain_call_rcu();
    assert!(reports.taken().is_empty(), "{:?}", reports.taken());
}

/// Claim: `GuestMemoryRcu::follow` publishes the map that
/// vhost-user-backend hands to `update_memory` (regions shared, not
/// copied), handles taken before keep the old one, and the old map is
/// dropped after a grace period.
#[test]
fn follow_mirrors_the_frameworks_map_and_keeps_old_handles_valid() {
    let first = ram();
    let atomic = GuestMemoryAtomic::new(first.clone());
    let memory = GuestMemoryRcu::new(GuestMemoryMmap::<()>::new());
    assert_eq!(memory.memory().num_regions(), 0);
    memory.follow(&atomic);
    let before = memory.memory();
    before.write_obj(0x55_u8, GuestAddress(0x40)).unwrap();
    assert_eq!(
        first.read_obj::<u8>(GuestAddress(0x40)).unwrap(),
        0x55,
        "the regions are shared with the framework's map"
    );
    let old = memory.snapshot();
    let weak = Arc::downgrade(&old);
    drop(old);

    // ADD_MEM_REG: the framework's new map has a second region.
    let bigger = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x1_0000),
        (GuestAddress(0x10_0000), 0x1000),
    ])
    .unwrap();
    atomic.lock().unwrap().replace(bigger);
    memory.follow(&atomic);
    assert_eq!(before.num_regions(), 1, "an old handle keeps its map");
    drop(before);
    assert_eq!(memory.memory().num_regions(), 2);
    drain_call_rcu();
    assert!(
        weak.upgrade().is_none(),
        "the old map went after a grace period"
    );
}

/// Claim: `IrqNotifier` works over vmm-sys-util's `EventNotifier`, the
/// type vhost-user-backend keeps call eventfds as: batched inside a
/// section, one write at its end.
#[test]
fn an_irq_notifier_over_an_event_notifier_signals_once_per_section() {
    let (consumer, notifier) =
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).unwrap();
    let irq = IrqNotifier::new(notifier);
    {
        let _pass = rcu_defer::read_lock();
        for _ in 0..10 {
            irq.notify();
        }
    }
    assert_eq!(irq.stats().signalled, 1, "one write");
    consumer.consume().expect("the write reached the eventfd");
    let again = consumer.consume().unwrap_err();
    assert_eq!(
        again.kind(),
        io::ErrorKind::WouldBlock,
        "and nothing after it"
    );
}
