//! libblkio's driver against the workspace's vhost-user-blk backend, run
//! in-process on a socket in the temporary directory: whole runs with every
//! read checked, a corrupted disk caught, a queue count above the backend's
//! refused, and memory regions added and removed while requests run.

use blkio_load::check;
use blkio_load::cli::{Job, Rw};
use blkio_load::io::{Done, QueueIo};
use blkio_load::load::{self, connect};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::Duration;
use vhost_user_blk::backend::{DeviceConfig, Workers};
use vhost_user_blk::disk::RamDisk;
use vhost_user_blk::request::NotifyMode;
use vhost_user_blk::serve::{serve_one, Connection};

/// A 16 MiB disk.
const SECTORS: u64 = 16 * 2048;

/// Serves one connection on a fresh socket; the handle returns the
/// backend's counts when the client has gone.
fn serve_once(
    name: &str,
    config: DeviceConfig,
    disk: Arc<RwLock<RamDisk>>,
) -> (PathBuf, Connection) {
    let path = std::env::temp_dir().join(format!(
        "blkio-load-test-{}-{name}.sock",
        std::process::id()
    ));
    let connection = serve_one(&path, config, disk).unwrap();
    (path, connection)
}

fn disk() -> Arc<RwLock<RamDisk>> {
    Arc::new(RwLock::new(RamDisk::new(SECTORS)))
}

/// A job that stops after `ios` requests per queue (the runtime is only a
/// bound).
fn job(path: PathBuf, rw: Rw, queues: usize, iodepth: usize, ios: u64) -> Job {
    Job {
        rw,
        queues,
        iodepth,
        runtime: Duration::from_secs(600),
        ios: Some(ios),
        seed: Some(1),
        ..Job::new(path)
    }
}

#[test]
fn every_read_and_write_checks_out_in_each_mode() {
    for (name, workers, notify) in [
        ("one-per-request", Workers::One, NotifyMode::PerRequest),
        ("one-batched", Workers::One, NotifyMode::Batched),
        ("per-queue-batched", Workers::PerQueue, NotifyMode::Batched),
        (
            "one-always-batched",
            Workers::One,
            NotifyMode::AlwaysBatched,
        ),
    ] {
        let config = DeviceConfig {
            event_idx: true,
            latency_us: 0,
            poll_us: 0,
            queues: 2,
            workers,
            notify,
        };
        let (path, server) = serve_once(name, config, disk());
        let report = load::run(&job(path, Rw::RandRw, 2, 8, 2000)).unwrap();
        let stats = server.join().unwrap();
        for queue in &report.queues {
            assert_eq!(queue.reads + queue.writes, 2000, "{name}");
            assert_eq!(
                queue.read_backs, queue.writes,
                "{name}: every write read back"
            );
            assert!(queue.writes > 0 && queue.reads > 0, "{name}");
        }
        assert_eq!(stats.queue.requests, report.completions(), "{name}");
        assert_eq!(stats.queue.errors, 0, "{name}");
        assert!(report.wakeups() > 0, "{name}");
        assert!(report.result_line().starts_with("blkio-load result: iops="));
    }
}

#[test]
fn an_asynchronous_disk_without_event_idx_completes_every_request_in_bursts() {
    // Completions come from a timer, 200 us after each request was popped,
    // in one pass each; every completion needs a signal (no EVENT_IDX).
    for notify in [
        NotifyMode::PerRequest,
        NotifyMode::Batched,
        NotifyMode::AlwaysBatched,
    ] {
        let name = format!("latency-{}", notify.name());
        let config = DeviceConfig {
            event_idx: false,
            latency_us: 200,
            poll_us: 0,
            queues: 2,
            workers: Workers::One,
            notify,
        };
        let (path, server) = serve_once(&name, config, disk());
        let report = load::run(&job(path, Rw::RandRw, 2, 8, 1000)).unwrap();
        let stats = server.join().unwrap();
        for queue in &report.queues {
            assert_eq!(queue.reads + queue.writes, 1000, "{name}");
            assert_eq!(queue.read_backs, queue.writes, "{name}");
        }
        assert_eq!(stats.queue.requests, report.completions(), "{name}");
        assert_eq!(stats.queue.suppressed, 0, "{name}: no EVENT_IDX");
        if notify == NotifyMode::PerRequest {
            assert_eq!(stats.signals, stats.queue.requests, "{name}");
        }
        if notify == NotifyMode::AlwaysBatched {
            // Each burst signals each queue once, and bursts hold several
            // completions when 8 requests per queue are in flight.
            assert!(stats.signals < stats.queue.requests, "{name}: {stats:?}");
        }
    }
}

#[test]
fn busy_polling_needs_no_signal() {
    let (path, server) = serve_once("poll", DeviceConfig::new(NotifyMode::Batched), disk());
    let report = load::run(&Job {
        poll: true,
        ..job(path, Rw::RandRead, 1, 4, 1000)
    })
    .unwrap();
    let stats = server.join().unwrap();
    assert_eq!(report.completions(), 1000);
    assert_eq!(report.wakeups(), 0);
    assert_eq!(report.completions_per_wakeup(), None);
    // The driver asked for no interrupts: with EVENT_IDX, none beyond the
    // one that the ring's initial used_event (0) asks for.
    assert!(stats.signals <= 1, "{stats:?}");
}

#[test]
fn a_wrong_word_fails_the_run_naming_its_offset() {
    let disk = disk();
    {
        // One wrong word in every 4 KiB block.
        let mut disk = disk.write().unwrap();
        for block in 0..SECTORS / 8 {
            disk.write(block * 4096 + 24, &[0xee; 8]);
        }
    }
    let (path, server) = serve_once("corrupt", DeviceConfig::new(NotifyMode::Batched), disk);
    let err = load::run(&job(path, Rw::RandRead, 1, 2, 100)).unwrap_err();
    server.join().unwrap();
    assert!(err.contains("returned wrong data"), "{err}");
    let offset: u64 = err
        .split("the word at disk offset ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no offset in {err:?}"));
    assert_eq!(offset % 4096, 24, "{err}");
}

#[test]
fn more_queues_than_the_backend_has_are_refused() {
    let config = DeviceConfig {
        event_idx: true,
        latency_us: 0,
        poll_us: 0,
        queues: 2,
        workers: Workers::One,
        notify: NotifyMode::PerRequest,
    };
    let (path, server) = serve_once("too-many", config, disk());
    let err = load::run(&job(path, Rw::RandRead, 3, 1, 10)).err().unwrap();
    server.join().unwrap();
    assert!(err.contains("cannot start 3 queue(s)"), "{err}");
    assert!(err.contains("greater than 2"), "{err}");
}

/// Reads `offset` into slot 0 of `io` and waits (busy) for it.
fn read_one(io: &mut QueueIo, offset: u64) -> Done {
    io.read(0, offset);
    let mut done = Vec::new();
    while done.is_empty() {
        io.do_io(&mut done).unwrap();
    }
    done[0]
}

#[test]
fn memory_regions_added_and_removed_while_requests_run() {
    let config = DeviceConfig {
        event_idx: true,
        latency_us: 0,
        poll_us: 0,
        queues: 2,
        workers: Workers::One,
        notify: NotifyMode::Batched,
    };
    let (path, server) = serve_once("remap", config, disk());
    let job = job(path, Rw::RandRw, 2, 4, 4000);
    let mut device = connect(&job).unwrap();
    let capacity = device.capacity;
    let (first, second) = device.queues.split_at_mut(1);
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        // Queue 0 runs a checked load all along...
        let load = scope.spawn(|| load::run_queue(&mut first[0], &job, 0, capacity, &stop));
        // ...while queue 1's buffers move to a new region (ADD_MEM_REG) and
        // the old one goes (REM_MEM_REG), again and again, each time read
        // into.
        let io = &mut second[0];
        for round in 0..8u64 {
            io.remap(&mut device.blkio).unwrap();
            // An odd block: queue 1's share of the disk (queue i of n
            // loads blocks i, i + n, ...), which queue 0's writes never
            // touch.
            let offset = (round * 14 + 1) * 4096;
            assert_eq!(read_one(io, offset), Done { slot: 0, ret: 0 });
            check::check_exact(io.slot(0), offset, None).unwrap();
        }
        let report = load.join().unwrap().unwrap();
        assert_eq!(report.reads + report.writes, 4000);
    });
    drop(device);
    let stats = server.join().unwrap();
    assert_eq!(stats.queue.errors, 0);
}
