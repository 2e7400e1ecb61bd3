//! The request path without vhost-user: a `BlkServer` serving a mock split
//! virtqueue in guest memory held by `GuestMemoryRcu`.

mod common;

use common::*;
use std::sync::{Arc, RwLock};
use vhost_user_blk::disk::RamDisk;
use vhost_user_blk::request::{
    BlkServer, NotifyMode, QueueStats, QueueWork, DEVICE_ID, S_IOERR, S_OK, S_UNSUPP,
};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Sectors of the test disk (1 MiB).
const SECTORS: u64 = 2048;

struct Setup {
    driver: Driver,
    queue: Queue,
    server: BlkServer,
    irq: Arc<rcu_defer::virtio::IrqNotifier<Counter>>,
}

fn setup(mode: NotifyMode) -> Setup {
    let driver = Driver::new();
    let queue = driver.queue();
    Setup {
        driver,
        queue,
        server: BlkServer::new(Arc::new(RwLock::new(RamDisk::new(SECTORS))), mode),
        irq: counting_notifier(),
    }
}

impl Setup {
    fn serve(&mut self) {
        self.server
            .serve_queue(&mut self.queue, &self.driver.rcu, &self.irq)
            .unwrap();
    }

    fn signals(&self) -> u64 {
        self.irq.stats().signalled
    }
}

#[test]
fn reads_return_the_pattern() {
    let mut s = setup(NotifyMode::PerRequest);
    let one = s.driver.post(VIRTIO_BLK_T_IN, 5, &[4096]);
    // Buffers split at odd bytes, as a scatter list may be.
    let split = s.driver.post(VIRTIO_BLK_T_IN, 7, &[1000, 13, 2059]);
    let last = s.driver.post(VIRTIO_BLK_T_IN, SECTORS - 1, &[512]);
    s.serve();

    assert_eq!(
        s.driver.take_used(),
        vec![(one.head, 4097), (split.head, 3073), (last.head, 513)]
    );
    for posted in [&one, &split, &last] {
        assert_eq!(s.driver.status_of(posted), S_OK);
    }
    assert_pattern(&s.driver.data_of(&one), 5 * 512);
    assert_pattern(&s.driver.data_of(&split), 7 * 512);
    assert_pattern(&s.driver.data_of(&last), (SECTORS - 1) * 512);
    assert_eq!(
        s.server.stats(),
        QueueStats {
            requests: 3,
            suppressed: 0,
            errors: 0
        }
    );
}

#[test]
fn writes_read_back_and_leave_the_rest_alone() {
    let mut s = setup(NotifyMode::AlwaysBatched);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
    let write = s.driver.post(VIRTIO_BLK_T_OUT, 100, &[1536, 2560]);
    s.driver
        .map
        .write_slice(&data[..1536], GuestAddress(write.data[0].0))
        .unwrap();
    s.driver
        .map
        .write_slice(&data[1536..], GuestAddress(write.data[1].0))
        .unwrap();
    s.serve();
    assert_eq!(s.driver.take_used(), vec![(write.head, 1)]);
    assert_eq!(s.driver.status_of(&write), S_OK);

    let back = s.driver.post(VIRTIO_BLK_T_IN, 99, &[512, 4096, 512]);
    s.serve();
    assert_eq!(s.driver.take_used(), vec![(back.head, 5121)]);
    let read = s.driver.data_of(&back);
    assert_pattern(&read[..512], 99 * 512);
    assert_eq!(&read[512..4608], &data[..]);
    assert_pattern(&read[4608..], 108 * 512);
}

#[test]
fn buffers_across_two_memory_regions_are_read_and_written() {
    let mut s = setup(NotifyMode::PerRequest);
    let d = &mut s.driver;
    // A 4 KiB buffer whose first 1000 bytes are in one region and the rest
    // in the next.
    let across = REGION_SPLIT - 1000;
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 13 % 251) as u8).collect();
    d.map.write_slice(&data, GuestAddress(across)).unwrap();
    let (h, st) = (d.header(VIRTIO_BLK_T_OUT, 40), d.status());
    let write = d.post_chain(&[readable(h, 16), readable(across, 4096), writable(st, 1)]);
    s.serve();
    assert_eq!(s.driver.take_used(), vec![(write, 1)]);
    assert_eq!(s.driver.bytes(st, 1), [S_OK]);

    let d = &mut s.driver;
    d.map
        .write_slice(&[0u8; 4096], GuestAddress(across))
        .unwrap();
    let (h, st) = (d.header(VIRTIO_BLK_T_IN, 40), d.status());
    let read = d.post_chain(&[readable(h, 16), writable(across, 4096), writable(st, 1)]);
    s.serve();
    assert_eq!(s.driver.take_used(), vec![(read, 4097)]);
    assert_eq!(s.driver.bytes(st, 1), [S_OK]);
    assert_eq!(s.driver.bytes(across, 4096), data);

    let d = &mut s.driver;
    let (h, st) = (d.header(VIRTIO_BLK_T_IN, 48), d.status());
    let pattern = d.post_chain(&[readable(h, 16), writable(across, 4096), writable(st, 1)]);
    s.serve();
    assert_eq!(s.driver.take_used(), vec![(pattern, 4097)]);
    assert_eq!(s.driver.bytes(st, 1), [S_OK]);
    assert_pattern(&s.driver.bytes(across, 4096), 48 * 512);
}

#[test]
fn flush_and_get_id_succeed() {
    let mut s = setup(NotifyMode::PerRequest);
    let flush = s.driver.post(VIRTIO_BLK_T_FLUSH, 0, &[]);
    let id = s.driver.post(VIRTIO_BLK_T_GET_ID, 0, &[20]);
    let short_id = s.driver.post(VIRTIO_BLK_T_GET_ID, 0, &[4]);
    s.serve();
    assert_eq!(
        s.driver.take_used(),
        vec![(flush.head, 1), (id.head, 21), (short_id.head, 5)]
    );
    assert_eq!(s.driver.status_of(&flush), S_OK);
    assert_eq!(s.driver.status_of(&id), S_OK);
    let mut expected = [0u8; 20];
    expected[..DEVICE_ID.len()].copy_from_slice(DEVICE_ID);
    assert_eq!(s.driver.data_of(&id), expected);
    assert_eq!(s.driver.data_of(&short_id), &DEVICE_ID[..4]);
    assert_eq!(s.server.stats().errors, 0);
}

#[test]
fn indirect_chains_are_followed() {
    let mut s = setup(NotifyMode::AlwaysBatched);
    let header = s.driver.header(VIRTIO_BLK_T_IN, 9);
    let data = s.driver.alloc(2048);
    let status = s.driver.status();
    let head = s.driver.post_indirect(&[
        readable(header, 16),
        writable(data, 1024),
        writable(data + 1024, 1024),
        writable(status, 1),
    ]);
    s.serve();
    assert_eq!(s.driver.take_used(), vec![(head, 2049)]);
    assert_eq!(
        s.driver.map.read_obj::<u8>(GuestAddress(status)).unwrap(),
        S_OK
    );
    assert_pattern(&s.driver.bytes(data, 2048), 9 * 512);
}

#[test]
fn sectors_beyond_the_disk_get_ioerr() {
    let mut s = setup(NotifyMode::PerRequest);
    let past_end = s.driver.post(VIRTIO_BLK_T_IN, SECTORS, &[512]);
    let straddling = s.driver.post(VIRTIO_BLK_T_IN, SECTORS - 1, &[1024]);
    let write_past_end = s.driver.post(VIRTIO_BLK_T_OUT, SECTORS + 10, &[512]);
    let overflowing = s.driver.post(VIRTIO_BLK_T_IN, u64::MAX / 256, &[512]);
    let fine = s.driver.post(VIRTIO_BLK_T_IN, 0, &[512]);
    s.serve();
    let used = s.driver.take_used();
    assert_eq!(used.len(), 5);
    for bad in [&past_end, &straddling, &write_past_end, &overflowing] {
        assert_eq!(s.driver.status_of(bad), S_IOERR);
        assert!(used.contains(&(bad.head, 1)));
    }
    // The refused reads wrote no data.
    assert!(s.driver.data_of(&past_end).iter().all(|&b| b == 0));
    assert_eq!(s.driver.status_of(&fine), S_OK);
    assert_eq!(s.server.stats().errors, 4);
    assert_eq!(s.server.stats().requests, 5);
}

#[test]
fn unknown_types_get_unsupp() {
    let mut s = setup(NotifyMode::PerRequest);
    let discard = s.driver.post(VIRTIO_BLK_T_DISCARD, 0, &[16]);
    let bogus = s.driver.post(0xdead_beef, 0, &[]);
    s.serve();
    assert_eq!(
        s.driver.take_used(),
        vec![(discard.head, 1), (bogus.head, 1)]
    );
    assert_eq!(s.driver.status_of(&discard), S_UNSUPP);
    assert_eq!(s.driver.status_of(&bogus), S_UNSUPP);
    assert_eq!(s.server.stats().errors, 2);
}

#[test]
fn malformed_chains_are_refused_counted_and_survived() {
    let mut s = setup(NotifyMode::AlwaysBatched);
    let d = &mut s.driver;
    let mut expect = Vec::new(); // (head, used length, status address or none, status)

    // Header device-writable.
    let (h, b, st) = (d.header(VIRTIO_BLK_T_IN, 0), d.alloc(512), d.status());
    let head = d.post_chain(&[writable(h, 16), writable(b, 512), writable(st, 1)]);
    expect.push((head, 1, Some(st), S_IOERR));
    // Header too short.
    let (h, b, st) = (d.header(VIRTIO_BLK_T_IN, 0), d.alloc(512), d.status());
    let head = d.post_chain(&[readable(h, 8), writable(b, 512), writable(st, 1)]);
    expect.push((head, 1, Some(st), S_IOERR));
    // Header outside guest memory.
    let (b, st) = (d.alloc(512), d.status());
    let head = d.post_chain(&[readable(OUTSIDE, 16), writable(b, 512), writable(st, 1)]);
    expect.push((head, 1, Some(st), S_IOERR));
    // Only a status descriptor: no header.
    let st = d.status();
    let head = d.post_chain(&[writable(st, 1)]);
    expect.push((head, 1, Some(st), S_IOERR));
    // No status descriptor: the last one is device-readable.
    let (h, b) = (d.header(VIRTIO_BLK_T_OUT, 0), d.alloc(512));
    let head = d.post_chain(&[readable(h, 16), readable(b, 512)]);
    expect.push((head, 0, None, 0));
    // Status byte outside guest memory.
    let (h, b) = (d.header(VIRTIO_BLK_T_IN, 0), d.alloc(512));
    let head = d.post_chain(&[readable(h, 16), writable(b, 512), writable(OUTSIDE, 1)]);
    expect.push((head, 0, None, 0));
    // A data buffer outside guest memory.
    let (h, st) = (d.header(VIRTIO_BLK_T_IN, 0), d.status());
    let head = d.post_chain(&[readable(h, 16), writable(OUTSIDE, 512), writable(st, 1)]);
    expect.push((head, 1, Some(st), S_IOERR));
    // A read into a device-readable buffer.
    let (h, b, st) = (d.header(VIRTIO_BLK_T_IN, 0), d.alloc(512), d.status());
    let head = d.post_chain(&[readable(h, 16), readable(b, 512), writable(st, 1)]);
    expect.push((head, 1, Some(st), S_IOERR));
    // A write from a device-writable buffer.
    let (h, b, st) = (d.header(VIRTIO_BLK_T_OUT, 0), d.alloc(512), d.status());
    let head = d.post_chain(&[readable(h, 16), writable(b, 512), writable(st, 1)]);
    expect.push((head, 1, Some(st), S_IOERR));
    // Not a whole number of sectors.
    let (h, b, st) = (d.header(VIRTIO_BLK_T_IN, 0), d.alloc(500), d.status());
    let head = d.post_chain(&[readable(h, 16), writable(b, 500), writable(st, 1)]);
    expect.push((head, 1, Some(st), S_IOERR));
    // A read with no data buffer.
    let (h, st) = (d.header(VIRTIO_BLK_T_IN, 0), d.status());
    let head = d.post_chain(&[readable(h, 16), writable(st, 1)]);
    expect.push((head, 1, Some(st), S_IOERR));
    // Data and status in one buffer: the status is its last byte.
    let (h, b) = (d.header(VIRTIO_BLK_T_IN, 0), d.alloc(513));
    let head = d.post_chain(&[readable(h, 16), writable(b, 513)]);
    expect.push((head, 1, Some(b + 512), S_IOERR));
    // A data buffer whose length runs past the end of the address space.
    let (h, st) = (d.header(VIRTIO_BLK_T_IN, 0), d.status());
    let head = d.post_chain(&[
        readable(h, 16),
        writable(u64::MAX - 100, 512),
        writable(st, 1),
    ]);
    expect.push((head, 1, Some(st), S_IOERR));
    // A chain whose last descriptor names a next one outside the table.
    let (h, b) = (d.header(VIRTIO_BLK_T_IN, 0), d.alloc(512));
    let head = d.post_chain(&[readable(h, 16), writable(b, 512)]);
    let last = d.mock.desc_table().load(head + 1).unwrap();
    let last = virtio_queue::desc::split::Descriptor::from(last);
    let broken = virtio_queue::desc::split::Descriptor::new(
        last.addr().0,
        last.len(),
        last.flags() | virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16,
        QUEUE_SIZE + 7,
    );
    d.mock.desc_table().store(head + 1, broken.into()).unwrap();
    expect.push((head, 0, None, 0));
    // A well-formed request after all of them.
    let fine = d.post(VIRTIO_BLK_T_IN, 3, &[512]);

    s.serve();
    let used = s.driver.take_used();
    let mut expected_used: Vec<(u16, u32)> = expect.iter().map(|e| (e.0, e.1)).collect();
    expected_used.push((fine.head, 513));
    assert_eq!(used, expected_used);
    for (head, _, status, code) in &expect {
        if let Some(status) = status {
            let found: u8 = s.driver.map.read_obj(GuestAddress(*status)).unwrap();
            assert_eq!(found, *code, "status of the chain at head {head}");
        }
    }
    assert_eq!(s.driver.status_of(&fine), S_OK);
    assert_pattern(&s.driver.data_of(&fine), 3 * 512);
    let stats = s.server.stats();
    assert_eq!(stats.errors, expect.len() as u64);
    assert_eq!(stats.requests, expect.len() as u64 + 1);
    // Batched: one signal for the whole pass, refusals included.
    assert_eq!(s.signals(), 1);
}

#[test]
fn a_head_outside_the_table_is_counted_and_skipped() {
    let mut s = setup(NotifyMode::PerRequest);
    let fine = s.driver.post(VIRTIO_BLK_T_IN, 0, &[512]);
    // A second avail entry naming descriptor 1000 of a 256-entry table.
    s.driver.mock.avail().ring().ref_at(1).unwrap().store(1000);
    s.driver.mock.avail().idx().store(2);
    // The next request goes in avail slot 2.
    let after = s.driver.post(VIRTIO_BLK_T_IN, 1, &[512]);
    s.serve();
    assert_eq!(
        s.driver.take_used(),
        vec![(fine.head, 513), (after.head, 513)]
    );
    assert_eq!(s.server.stats().errors, 1);
    assert_eq!(s.server.stats().requests, 2);
}

#[test]
fn an_avail_index_far_ahead_is_a_ring_error_not_a_spin() {
    let mut s = setup(NotifyMode::AlwaysBatched);
    s.driver.set_avail_idx(QUEUE_SIZE + 5);
    let err = s
        .server
        .serve_queue(&mut s.queue, &s.driver.rcu, &s.irq)
        .unwrap_err();
    assert!(err.to_string().contains("ahead"), "{err}");
    assert!(s.driver.take_used().is_empty());
}

/// Posts `n` one-sector reads and serves them in one pass; returns the
/// signals and the server's counts.
fn one_pass(mode: NotifyMode, event_idx: bool, n: u64) -> (u64, QueueStats) {
    let mut s = setup(mode);
    s.queue.set_event_idx(event_idx);
    // With EVENT_IDX the driver asks to be told when entry 0 is used.
    s.driver.set_used_event(0);
    for sector in 0..n {
        s.driver.post(VIRTIO_BLK_T_IN, sector, &[512]);
    }
    s.serve();
    assert_eq!(s.driver.take_used().len() as u64, n);
    (s.signals(), s.server.stats())
}

#[test]
fn per_request_signals_each_completion_batched_signals_once_per_pass() {
    let (signals, stats) = one_pass(NotifyMode::PerRequest, false, 16);
    assert_eq!((signals, stats.requests, stats.suppressed), (16, 16, 0));
    let (signals, stats) = one_pass(NotifyMode::AlwaysBatched, false, 16);
    assert_eq!((signals, stats.requests, stats.suppressed), (1, 16, 0));
}

#[test]
fn event_idx_suppresses_completions_the_driver_did_not_ask_about() {
    // used_event 0: only the first completion needs a notification.
    let (signals, stats) = one_pass(NotifyMode::PerRequest, true, 16);
    assert_eq!((signals, stats.requests, stats.suppressed), (1, 16, 15));
    let (signals, stats) = one_pass(NotifyMode::AlwaysBatched, true, 16);
    assert_eq!((signals, stats.requests, stats.suppressed), (1, 16, 15));
}

#[test]
fn batched_signals_once_per_pass_across_passes() {
    let mut s = setup(NotifyMode::AlwaysBatched);
    for pass in 0..3u64 {
        for i in 0..4 {
            s.driver.post(VIRTIO_BLK_T_IN, pass * 4 + i, &[512]);
        }
        s.serve();
        assert_eq!(s.signals(), pass + 1);
    }
    assert_eq!(s.server.stats().requests, 12);
}

#[test]
fn batched_signals_wait_for_the_end_of_the_pass() {
    // A pass run inside the caller's own read section: its signal goes when
    // that section ends.
    let mut s = setup(NotifyMode::AlwaysBatched);
    s.driver.post(VIRTIO_BLK_T_IN, 0, &[512]);
    {
        let _outer = rcu_defer::read_lock();
        s.serve();
        assert_eq!(s.signals(), 0);
        assert_eq!(s.irq.stats().requested, 1);
    }
    assert_eq!(s.signals(), 1);
}

/// Several queues of one device, served by one server.
struct MultiSetup {
    drivers: Vec<Driver>,
    queues: Vec<Queue>,
    server: BlkServer,
    irqs: Vec<Arc<rcu_defer::virtio::IrqNotifier<Counter>>>,
}

fn multi_setup(mode: NotifyMode, n: u16) -> MultiSetup {
    let first = Driver::new();
    let mut drivers: Vec<Driver> = (1..n).map(|i| first.queue_driver(i)).collect();
    drivers.insert(0, first);
    let queues = drivers.iter().map(Driver::queue).collect();
    MultiSetup {
        drivers,
        queues,
        server: BlkServer::new(Arc::new(RwLock::new(RamDisk::new(SECTORS))), mode),
        irqs: (0..n).map(|_| counting_notifier()).collect(),
    }
}

impl MultiSetup {
    fn serve(&mut self) -> Vec<(usize, vhost_user_blk::request::RingError)> {
        let mut work: Vec<QueueWork<'_, Counter>> = self
            .queues
            .iter_mut()
            .zip(&self.irqs)
            .enumerate()
            .map(|(id, (queue, irq))| QueueWork { id, queue, irq })
            .collect();
        self.server.serve_queues(&mut work, &self.drivers[0].rcu)
    }

    fn signals(&self) -> Vec<u64> {
        self.irqs.iter().map(|irq| irq.stats().signalled).collect()
    }
}

#[test]
fn batched_signals_each_queue_once_per_pass_over_all_of_them() {
    let mut s = multi_setup(NotifyMode::AlwaysBatched, 3);
    for q in 0..3 {
        for i in 0..(q as u64 + 2) {
            s.drivers[q].post(VIRTIO_BLK_T_IN, i, &[512]);
        }
    }
    assert!(s.serve().is_empty());
    assert_eq!(
        s.drivers
            .iter_mut()
            .map(|d| d.take_used().len())
            .collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(s.signals(), vec![1, 1, 1]);
    assert_eq!(s.server.stats().requests, 9);
}

#[test]
fn per_request_signals_every_completion_of_every_queue() {
    let mut s = multi_setup(NotifyMode::PerRequest, 2);
    for q in 0..2 {
        for i in 0..3 {
            s.drivers[q].post(VIRTIO_BLK_T_IN, i, &[512]);
        }
    }
    assert!(s.serve().is_empty());
    assert_eq!(s.signals(), vec![3, 3]);
}

/// A `Notify` that records, at each signal, how many completions every
/// queue's used ring holds.
struct UsedAtSignal {
    used_idx: Vec<GuestAddress>,
    map: &'static Map,
    seen: std::sync::Mutex<Vec<Vec<u16>>>,
}

impl rcu_defer::virtio::Notify for UsedAtSignal {
    fn signal(&self) -> std::io::Result<()> {
        let idx = self
            .used_idx
            .iter()
            .map(|&at| self.map.read_obj::<u16>(at).unwrap())
            .collect();
        self.seen.lock().unwrap().push(idx);
        Ok(())
    }
}

#[test]
fn batched_signals_go_after_the_whole_pass_over_all_queues() {
    let first = Driver::new();
    let mut drivers = vec![first.queue_driver(1)];
    drivers.insert(0, first);
    let used_idx: Vec<GuestAddress> = drivers
        .iter()
        .map(|d| GuestAddress(d.mock.used_addr().0 + 2))
        .collect();
    let irq = rcu_defer::virtio::IrqNotifier::new(UsedAtSignal {
        used_idx,
        map: drivers[0].map,
        seen: std::sync::Mutex::new(Vec::new()),
    });
    for d in &mut drivers {
        for i in 0..4 {
            d.post(VIRTIO_BLK_T_IN, i, &[512]);
        }
    }
    let mut queues: Vec<Queue> = drivers.iter().map(Driver::queue).collect();
    let mut server = BlkServer::new(
        Arc::new(RwLock::new(RamDisk::new(SECTORS))),
        NotifyMode::AlwaysBatched,
    );
    // Both queues signal through the one recording notifier (deduplicated
    // within the pass: one signal for the pass).
    let mut work: Vec<QueueWork<'_, UsedAtSignal>> = queues
        .iter_mut()
        .enumerate()
        .map(|(id, queue)| QueueWork {
            id,
            queue,
            irq: &irq,
        })
        .collect();
    assert!(server.serve_queues(&mut work, &drivers[0].rcu).is_empty());
    assert_eq!(*irq.notifier().seen.lock().unwrap(), vec![vec![4, 4]]);
}

#[test]
fn a_broken_ring_stops_its_queue_only() {
    let mut s = multi_setup(NotifyMode::AlwaysBatched, 2);
    s.drivers[0].set_avail_idx(QUEUE_SIZE + 1);
    let fine = s.drivers[1].post(VIRTIO_BLK_T_IN, 3, &[512]);
    let errors = s.serve();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, 0);
    assert!(errors[0].1.to_string().contains("ahead"), "{}", errors[0].1);
    assert_eq!(s.drivers[1].take_used(), vec![(fine.head, 513)]);
    assert_eq!(s.signals(), vec![0, 1]);
}

#[test]
fn a_queue_without_work_keeps_its_kicks_enabled() {
    let mut s = multi_setup(NotifyMode::AlwaysBatched, 2);
    s.drivers[1].post(VIRTIO_BLK_T_IN, 0, &[512]);
    assert!(s.serve().is_empty());
    // Queue 0 was not touched: no used entries, no signal, and the driver
    // is not told to stop kicking (used.flags 0).
    assert!(s.drivers[0].take_used().is_empty());
    assert_eq!(s.signals(), vec![0, 1]);
    let flags: u16 = s.drivers[0]
        .map
        .read_obj(s.drivers[0].mock.used_addr())
        .unwrap();
    assert_eq!(flags, 0);
}

/// Serves `queue` on another thread and returns the outcome, failing if the
/// serve has not ended after a generous bound (a spin would hang the test).
fn serve_bounded(
    mut queue: Queue,
    driver: &Driver,
) -> Result<QueueStats, vhost_user_blk::request::RingError> {
    let rcu = rcu_defer::vm::GuestMemoryRcu::new(driver.map.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut server = BlkServer::new(
            Arc::new(RwLock::new(RamDisk::new(SECTORS))),
            NotifyMode::AlwaysBatched,
        );
        let irq = counting_notifier();
        let served = server.serve_queue(&mut queue, &rcu, &irq);
        let _ = tx.send(served.map(|()| server.stats()));
    });
    rx.recv_timeout(std::time::Duration::from_secs(120))
        .expect("the serve spins instead of ending")
}

#[test]
fn an_avail_ring_at_address_zero_is_a_ring_error_not_a_spin() {
    // virtio-queue pops nothing from an available ring at guest address 0
    // (it takes the queue for one that was reset), while avail.idx there
    // says a chain waits.
    let driver = Driver::new();
    let mut queue = driver.queue();
    queue.set_avail_ring_address(Some(0), Some(0));
    driver.map.write_obj(1u16, GuestAddress(2)).unwrap();
    let err = serve_bounded(queue, &driver).unwrap_err();
    assert!(err.to_string().contains("cannot be read"), "{err}");
}

#[test]
fn an_avail_ring_running_past_guest_memory_is_a_ring_error_not_a_spin() {
    // avail.idx is the last word of guest memory; the ring's entries are
    // beyond it.
    let driver = Driver::new();
    let mut queue = driver.queue();
    let avail = MEM_LEN - 4;
    queue.set_avail_ring_address(Some(avail as u32), Some(0));
    driver.map.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
    let err = serve_bounded(queue, &driver).unwrap_err();
    assert!(err.to_string().contains("cannot be read"), "{err}");
}

#[test]
fn batched_mode_moderates_from_signals_at_once() {
    // The default mode's moderation starts by measuring signals at once:
    // a first pass signals each completion the driver asked about, as
    // per-request does, and all its requests complete.
    let (signals, stats) = one_pass(NotifyMode::Batched, false, 16);
    assert_eq!((signals, stats.requests, stats.suppressed), (16, 16, 0));
}

#[test]
fn a_delayed_completion_waits_for_its_time_then_completes_with_the_burst() {
    let mut s = setup(NotifyMode::AlwaysBatched);
    s.server.set_latency(std::time::Duration::from_millis(5));
    let posted: Vec<_> = (0..4)
        .map(|sector| s.driver.post(VIRTIO_BLK_T_IN, sector, &[512]))
        .collect();
    s.serve();
    // Popped and executed, not yet used.
    assert!(s.driver.take_used().is_empty());
    assert_eq!(s.server.stats().requests, 0);
    let due = s.server.next_due().expect("four requests wait");
    let mut work = [QueueWork {
        id: 0,
        queue: &mut s.queue,
        irq: &s.irq,
    }];
    // Too early: nothing.
    if std::time::Instant::now() < due {
        assert!(s.server.complete_due(&mut work, &s.driver.rcu).is_empty());
    }
    while std::time::Instant::now() < due {
        std::thread::sleep(due - std::time::Instant::now());
    }
    assert!(s.server.complete_due(&mut work, &s.driver.rcu).is_empty());
    assert_eq!(s.server.next_due(), None);
    assert_eq!(s.driver.take_used().len(), 4);
    for (sector, p) in posted.iter().enumerate() {
        assert_eq!(s.driver.status_of(p), S_OK);
        assert_pattern(&s.driver.data_of(p), sector as u64 * 512);
    }
    // One burst, one pass, one signal.
    assert_eq!(s.signals(), 1);
    assert_eq!(s.server.stats().requests, 4);
}

#[test]
fn a_delayed_completion_of_a_queue_no_longer_served_is_dropped() {
    let mut s = setup(NotifyMode::PerRequest);
    s.server.set_latency(std::time::Duration::from_micros(1));
    s.driver.post(VIRTIO_BLK_T_IN, 0, &[512]);
    s.serve();
    std::thread::sleep(std::time::Duration::from_millis(1));
    // The queue (id 0) is not among those handed over.
    let mut none: [QueueWork<'_, Counter>; 0] = [];
    assert!(s.server.complete_due(&mut none, &s.driver.rcu).is_empty());
    assert_eq!(s.server.next_due(), None);
    assert!(s.driver.take_used().is_empty());
}
