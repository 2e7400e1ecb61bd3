//! The vhost-user glue without a socket: a `BlkBackend` and `BlkVring` set
//! up as vhost-user-backend's handler sets them up (memory table, vring
//! addresses, call eventfd), then kicked through `handle_event`.

mod common;

use common::*;
use rcu_defer::virtio::EventFd;
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::{Arc, RwLock};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringT};
use vhost_user_blk::backend::{
    config_space, AtomicMemory, BlkBackend, BlkVring, ConnectionStats, DeviceConfig, Workers,
    BLK_SIZE, MAX_QUEUES, SEG_MAX,
};
use vhost_user_blk::disk::RamDisk;
use vhost_user_blk::request::{NotifyMode, QueueStats, S_IOERR, S_OK};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_T_IN,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::epoll::EventSet;

const SECTORS: u64 = 2048;

fn call_file(fd: &EventFd) -> File {
    File::from(fd.as_fd().try_clone_to_owned().unwrap())
}

struct Device {
    driver: Driver,
    backend: BlkBackend,
    vring: BlkVring,
}

/// SET_VRING_NUM, SET_VRING_ADDR, SET_FEATURES, SET_VRING_KICK/ENABLE for
/// the vring of `driver`'s queue.
fn vring_of(driver: &Driver, atomic: &AtomicMemory, event_idx: bool) -> BlkVring {
    let vring = BlkVring::new(atomic.clone(), 1024).unwrap();
    vring.set_queue_size(QUEUE_SIZE);
    vring
        .set_queue_info(
            driver.mock.desc_table_addr().0,
            driver.mock.avail_addr().0,
            driver.mock.used_addr().0,
        )
        .unwrap();
    vring.set_queue_event_idx(event_idx);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    vring
}

fn device(mode: NotifyMode, event_idx: bool) -> Device {
    let driver = Driver::new();
    let atomic: AtomicMemory = GuestMemoryAtomic::new(driver.map.clone());
    let backend = BlkBackend::new(
        Arc::new(RwLock::new(RamDisk::new(SECTORS))),
        DeviceConfig::new(mode),
    )
    .unwrap();
    // SET_MEM_TABLE.
    backend.update_memory(atomic.clone()).unwrap();
    let vring = vring_of(&driver, &atomic, event_idx);
    Device {
        driver,
        backend,
        vring,
    }
}

/// A device of several queues, each with its driver, vring and call
/// eventfd.
struct MultiDevice {
    drivers: Vec<Driver>,
    backend: BlkBackend,
    vrings: Vec<BlkVring>,
    calls: Vec<EventFd>,
}

fn multi_device(config: DeviceConfig) -> MultiDevice {
    let first = Driver::new();
    let mut drivers: Vec<Driver> = (1..config.queues as u16)
        .map(|i| first.queue_driver(i))
        .collect();
    drivers.insert(0, first);
    let atomic: AtomicMemory = GuestMemoryAtomic::new(drivers[0].map.clone());
    let backend = BlkBackend::new(Arc::new(RwLock::new(RamDisk::new(SECTORS))), config).unwrap();
    backend.update_memory(atomic.clone()).unwrap();
    let vrings: Vec<BlkVring> = drivers
        .iter()
        .map(|d| vring_of(d, &atomic, false))
        .collect();
    let calls: Vec<EventFd> = vrings
        .iter()
        .map(|v| {
            let call = EventFd::new().unwrap();
            v.set_call(Some(call_file(&call)));
            call
        })
        .collect();
    MultiDevice {
        drivers,
        backend,
        vrings,
        calls,
    }
}

impl MultiDevice {
    /// The signals each queue's call eventfd got since the last call.
    fn signals(&self) -> Vec<u64> {
        self.calls
            .iter()
            .map(|c| c.consume().unwrap_or(0))
            .collect()
    }
}

impl Device {
    fn kick(&self) {
        self.backend
            .handle_event(0, EventSet::IN, std::slice::from_ref(&self.vring), 0)
            .unwrap();
    }
}

#[test]
fn a_kick_serves_the_queue_and_signals_the_call_eventfd() {
    for (mode, signals) in [(NotifyMode::PerRequest, 8), (NotifyMode::AlwaysBatched, 1)] {
        let mut d = device(mode, false);
        let call = EventFd::new().unwrap();
        d.vring.set_call(Some(call_file(&call)));
        let posted: Vec<Posted> = (0..8)
            .map(|i| d.driver.post(VIRTIO_BLK_T_IN, i, &[512]))
            .collect();
        d.kick();
        assert_eq!(d.driver.take_used().len(), 8);
        for (i, p) in posted.iter().enumerate() {
            assert_eq!(d.driver.status_of(p), S_OK);
            assert_pattern(&d.driver.data_of(p), i as u64 * 512);
        }
        assert_eq!(call.consume().unwrap(), signals, "{mode:?}");
        assert_eq!(
            d.backend.stats(),
            ConnectionStats {
                queue: QueueStats {
                    requests: 8,
                    suppressed: 0,
                    errors: 0
                },
                signals,
            },
            "{mode:?}"
        );
    }
}

#[test]
fn event_idx_counts_suppressed_completions() {
    let mut d = device(NotifyMode::PerRequest, true);
    let call = EventFd::new().unwrap();
    d.vring.set_call(Some(call_file(&call)));
    d.driver.set_used_event(0);
    for i in 0..8 {
        d.driver.post(VIRTIO_BLK_T_IN, i, &[512]);
    }
    d.kick();
    assert_eq!(d.driver.take_used().len(), 8);
    assert_eq!(call.consume().unwrap(), 1);
    let stats = d.backend.stats();
    assert_eq!((stats.signals, stats.queue.suppressed), (1, 7));
}

#[test]
fn signals_follow_the_call_eventfd_the_frontend_set_last() {
    let mut d = device(NotifyMode::Batched, false);
    let first = EventFd::new().unwrap();
    let second = EventFd::new().unwrap();
    d.vring.set_call(Some(call_file(&first)));
    d.driver.post(VIRTIO_BLK_T_IN, 0, &[512]);
    d.kick();
    assert_eq!(first.consume().unwrap(), 1);

    // SET_VRING_CALL with a new eventfd: the old one gets nothing more.
    d.vring.set_call(Some(call_file(&second)));
    d.driver.post(VIRTIO_BLK_T_IN, 1, &[512]);
    d.kick();
    assert_eq!(second.consume().unwrap(), 1);
    assert_eq!(
        first.consume().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );

    // No call eventfd (as after GET_VRING_BASE): the request is still
    // completed, the signal fails and is not counted as sent.
    d.vring.set_call(None);
    d.driver.post(VIRTIO_BLK_T_IN, 2, &[512]);
    d.kick();
    assert_eq!(d.driver.take_used().len(), 3);
    assert_eq!(d.backend.stats().signals, 2);
    assert_eq!(d.vring.irq().stats().failed, 1);
}

#[test]
fn an_event_for_a_queue_the_device_lacks_is_an_error_not_a_panic() {
    let d = device(NotifyMode::Batched, false);
    let err = d
        .backend
        .handle_event(3, EventSet::IN, std::slice::from_ref(&d.vring), 0)
        .unwrap_err();
    assert!(err.to_string().contains("queue 3"), "{err}");
}

#[test]
fn a_broken_ring_is_reported_and_the_worker_keeps_going() {
    let mut d = device(NotifyMode::Batched, false);
    d.driver.set_avail_idx(QUEUE_SIZE + 1);
    // handle_event returns Ok: an error would end vhost-user-backend's
    // worker thread, and with it the device.
    d.kick();
    assert!(d.driver.take_used().is_empty());
}

#[test]
fn features_and_configuration_space() {
    let backend = BlkBackend::new(
        Arc::new(RwLock::new(RamDisk::new(256 * 2048))),
        DeviceConfig::new(NotifyMode::Batched),
    )
    .unwrap();
    let features = backend.features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
    ] {
        assert_ne!(features & (1 << bit), 0, "feature bit {bit}");
    }
    assert!(backend
        .protocol_features()
        .contains(VhostUserProtocolFeatures::CONFIG));
    assert_eq!(backend.num_queues(), 1);

    // QEMU reads the whole structure from offset 0.
    let config = backend.get_config(0, 60);
    assert_eq!(config.len(), 60);
    let le64 = |at: usize| u64::from_le_bytes(config[at..at + 8].try_into().unwrap());
    let le32 = |at: usize| u32::from_le_bytes(config[at..at + 4].try_into().unwrap());
    assert_eq!(le64(0), 256 * 2048, "capacity in sectors");
    assert_eq!(le32(12), SEG_MAX);
    assert_eq!(le32(20), BLK_SIZE);
    assert_eq!(
        u16::from_le_bytes([config[34], config[35]]),
        1,
        "num_queues"
    );
    // A part of it, and past its end (zeros, the size asked for).
    assert_eq!(backend.get_config(20, 4), BLK_SIZE.to_le_bytes());
    assert_eq!(backend.get_config(4096, 8), vec![0; 8]);
    assert_eq!(&config_space(256 * 2048, 1)[..60], &config[..]);
}

#[test]
fn requests_are_served_from_the_map_the_frontend_set_last() {
    let mut d = device(NotifyMode::PerRequest, false);
    let posted = d.driver.post(VIRTIO_BLK_T_IN, 0, &[512]);
    // A memory table without the rings: the kick finds no ring to read
    // (reported once on stderr), and nothing is completed.
    d.backend
        .update_memory(GuestMemoryAtomic::new(GuestMemoryMmap::new()))
        .unwrap();
    d.kick();
    assert!(d.driver.take_used().is_empty());
    // The map back: the same request is served.
    d.backend
        .update_memory(GuestMemoryAtomic::new(d.driver.map.clone()))
        .unwrap();
    d.kick();
    assert_eq!(d.driver.take_used(), vec![(posted.head, 513)]);
    assert_eq!(d.backend.stats().queue.requests, 1);
}

#[test]
fn libblkio_protocol_features_are_offered() {
    let backend = BlkBackend::new(
        Arc::new(RwLock::new(RamDisk::new(SECTORS))),
        DeviceConfig::new(NotifyMode::Batched),
    )
    .unwrap();
    assert!(backend.protocol_features().contains(
        VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::MQ
    ));
}

/// Where the test's added region lies in guest-physical space (past the
/// driver's 16 MiB).
const ADDED_BASE: u64 = 1 << 30;
const ADDED_LEN: u64 = 1 << 20;

/// Posts a 4 KiB read of `sector` whose data buffer is at `data` (header
/// and status in the driver's own memory).
fn post_read_into(driver: &mut Driver, sector: u64, data: u64) -> Posted {
    let header = driver.header(VIRTIO_BLK_T_IN, sector);
    let status = driver.status();
    let head = driver.post_chain(&[
        readable(header, 16),
        writable(data, 4096),
        writable(status, 1),
    ]);
    Posted {
        head,
        status,
        data: vec![(data, 4096)],
    }
}

#[test]
fn memory_regions_added_and_removed_are_followed() {
    let mut d = device(NotifyMode::Batched, false);
    let added = Arc::new(
        GuestRegionMmap::<()>::from_range(GuestAddress(ADDED_BASE), ADDED_LEN as usize, None)
            .unwrap(),
    );

    // Before ADD_MEM_REG the buffer is outside guest memory: IOERR.
    let early = post_read_into(&mut d.driver, 8, ADDED_BASE);
    d.kick();
    assert_eq!(d.driver.take_used(), vec![(early.head, 1)]);
    assert_eq!(d.driver.status_of(&early), S_IOERR);

    // ADD_MEM_REG: vhost-user-backend inserts the region into its map and
    // hands the whole map to update_memory.
    let with_added = d.driver.map.insert_region(Arc::clone(&added)).unwrap();
    d.backend
        .update_memory(GuestMemoryAtomic::new(with_added.clone()))
        .unwrap();
    let served = post_read_into(&mut d.driver, 16, ADDED_BASE + 4096);
    d.kick();
    assert_eq!(d.driver.take_used(), vec![(served.head, 4097)]);
    assert_eq!(d.driver.status_of(&served), S_OK);
    let mut data = vec![0; 4096];
    with_added
        .read_slice(&mut data, GuestAddress(ADDED_BASE + 4096))
        .unwrap();
    assert_pattern(&data, 16 * 512);

    // REM_MEM_REG: the region is gone from the map the requests see.
    let (without, removed) = with_added
        .remove_region(GuestAddress(ADDED_BASE), ADDED_LEN)
        .unwrap();
    assert!(Arc::ptr_eq(&removed, &added));
    d.backend
        .update_memory(GuestMemoryAtomic::new(without))
        .unwrap();
    let late = post_read_into(&mut d.driver, 24, ADDED_BASE + 8192);
    d.kick();
    assert_eq!(d.driver.take_used(), vec![(late.head, 1)]);
    assert_eq!(d.driver.status_of(&late), S_IOERR);
    // The untouched part of the region still holds what the device wrote
    // before (the region was not written after it left the map).
    let mut after = vec![0; 4096];
    with_added
        .read_slice(&mut after, GuestAddress(ADDED_BASE + 8192))
        .unwrap();
    assert_eq!(after, vec![0; 4096]);
    assert_eq!(d.backend.stats().queue.errors, 2);
}

#[test]
fn the_queue_count_is_the_configured_one_and_too_many_are_refused() {
    for queues in [1, 2, MAX_QUEUES] {
        let backend = BlkBackend::new(
            Arc::new(RwLock::new(RamDisk::new(SECTORS))),
            DeviceConfig {
                event_idx: true,
                latency_us: 0,
                poll_us: 0,
                queues,
                workers: Workers::One,
                notify: NotifyMode::Batched,
            },
        )
        .unwrap();
        assert_eq!(backend.num_queues(), queues);
        let config = backend.get_config(0, 60);
        assert_eq!(
            usize::from(u16::from_le_bytes([config[34], config[35]])),
            queues,
            "num_queues"
        );
        assert_ne!(backend.features() & (1 << VIRTIO_BLK_F_MQ), 0);
    }
    for queues in [0, MAX_QUEUES + 1] {
        let err = BlkBackend::new(
            Arc::new(RwLock::new(RamDisk::new(SECTORS))),
            DeviceConfig {
                event_idx: true,
                latency_us: 0,
                poll_us: 0,
                queues,
                workers: Workers::One,
                notify: NotifyMode::Batched,
            },
        )
        .err()
        .unwrap();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains(&format!("not {queues}")), "{err}");
    }
}

#[test]
fn worker_threads_and_their_exit_events_follow_the_configuration() {
    let config = |workers| DeviceConfig {
        event_idx: true,
        latency_us: 0,
        poll_us: 0,
        queues: 3,
        workers,
        notify: NotifyMode::PerRequest,
    };
    assert_eq!(config(Workers::One).queues_per_thread(), vec![0b111]);
    assert_eq!(
        config(Workers::PerQueue).queues_per_thread(),
        vec![0b001, 0b010, 0b100]
    );
    let backend = BlkBackend::new(
        Arc::new(RwLock::new(RamDisk::new(SECTORS))),
        config(Workers::PerQueue),
    )
    .unwrap();
    assert_eq!(backend.queues_per_thread(), vec![0b001, 0b010, 0b100]);
    for thread in 0..3 {
        assert!(backend.exit_event(thread).is_some(), "thread {thread}");
        assert!(backend.exit_event(thread).is_none(), "handed over once");
    }
    assert!(backend.exit_event(3).is_none());
}

#[test]
fn one_worker_serves_every_queue_with_work_on_a_kick() {
    for (mode, per_queue) in [(NotifyMode::AlwaysBatched, 1), (NotifyMode::PerRequest, 4)] {
        let mut d = multi_device(DeviceConfig {
            event_idx: true,
            latency_us: 0,
            poll_us: 0,
            queues: 3,
            workers: Workers::One,
            notify: mode,
        });
        // Work on queues 0 and 2, none on queue 1.
        let mut posted = Vec::new();
        for q in [0, 2] {
            for i in 0..4 {
                let sector = 8 * (q as u64 * 4 + i);
                posted.push((
                    q,
                    sector,
                    d.drivers[q].post(VIRTIO_BLK_T_IN, sector, &[512]),
                ));
            }
        }
        // The kick of queue 2 alone: one worker serves both queues.
        d.backend
            .handle_event(2, EventSet::IN, &d.vrings, 0)
            .unwrap();
        for (q, sector, p) in &posted {
            assert_eq!(d.drivers[*q].status_of(p), S_OK);
            assert_pattern(&d.drivers[*q].data_of(p), sector * 512);
        }
        assert_eq!(d.drivers[0].take_used().len(), 4);
        assert!(d.drivers[1].take_used().is_empty());
        assert_eq!(d.drivers[2].take_used().len(), 4);
        assert_eq!(d.signals(), vec![per_queue, 0, per_queue], "{mode:?}");
        let stats = d.backend.stats();
        assert_eq!(stats.queue.requests, 8);
        assert_eq!(stats.signals, 2 * per_queue);

        // The kick of queue 0 coming after (epoll reported both): nothing
        // left to do, nothing signalled.
        d.backend
            .handle_event(0, EventSet::IN, &d.vrings, 0)
            .unwrap();
        assert_eq!(d.signals(), vec![0, 0, 0]);
    }
}

#[test]
fn a_worker_per_queue_serves_its_own_queue() {
    let mut d = multi_device(DeviceConfig {
        event_idx: true,
        latency_us: 0,
        poll_us: 0,
        queues: 3,
        workers: Workers::PerQueue,
        notify: NotifyMode::Batched,
    });
    let on_1 = d.drivers[1].post(VIRTIO_BLK_T_IN, 5, &[512]);
    let on_2 = d.drivers[2].post(VIRTIO_BLK_T_IN, 6, &[512]);
    // vhost-user-backend hands each worker thread its own vrings, the
    // event numbered within them.
    d.backend
        .handle_event(0, EventSet::IN, &d.vrings[1..2], 1)
        .unwrap();
    assert_eq!(d.drivers[1].take_used(), vec![(on_1.head, 513)]);
    assert!(d.drivers[2].take_used().is_empty());
    assert_eq!(d.signals(), vec![0, 1, 0]);
    d.backend
        .handle_event(0, EventSet::IN, &d.vrings[2..3], 2)
        .unwrap();
    assert_eq!(d.drivers[2].take_used(), vec![(on_2.head, 513)]);
    assert_eq!(d.signals(), vec![0, 0, 1]);
    assert_eq!(
        d.backend.stats(),
        ConnectionStats {
            queue: QueueStats {
                requests: 2,
                suppressed: 0,
                errors: 0
            },
            signals: 2,
        }
    );
    let err = d
        .backend
        .handle_event(0, EventSet::IN, &d.vrings[..1], 3)
        .unwrap_err();
    assert!(err.to_string().contains("worker thread 3"), "{err}");
}

#[test]
fn a_disabled_queue_is_not_served_until_enabled() {
    let mut d = multi_device(DeviceConfig {
        event_idx: true,
        latency_us: 0,
        poll_us: 0,
        queues: 2,
        workers: Workers::One,
        notify: NotifyMode::Batched,
    });
    // SET_VRING_ENABLE 0 on queue 1.
    d.vrings[1].set_enabled(false);
    let on_0 = d.drivers[0].post(VIRTIO_BLK_T_IN, 0, &[512]);
    let on_1 = d.drivers[1].post(VIRTIO_BLK_T_IN, 1, &[512]);
    d.backend
        .handle_event(0, EventSet::IN, &d.vrings, 0)
        .unwrap();
    assert_eq!(d.drivers[0].take_used(), vec![(on_0.head, 513)]);
    assert!(d.drivers[1].take_used().is_empty());
    d.vrings[1].set_enabled(true);
    d.backend
        .handle_event(1, EventSet::IN, &d.vrings, 0)
        .unwrap();
    assert_eq!(d.drivers[1].take_used(), vec![(on_1.head, 513)]);
}
