//! A client killed with SIGKILL while it has requests in flight: the
//! backend (run in-process as the binary runs it, a fresh daemon per
//! connection on one socket and one disk) ends that connection and serves
//! the next client, whose reads check out against the disk pattern and the
//! killed client's writes.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vhost_user_blk::backend::{BlkBackend, ConnectionStats, DeviceConfig, Workers};
use vhost_user_blk::disk::RamDisk;
use vhost_user_blk::request::NotifyMode;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// A 16 MiB disk.
const SECTORS: u64 = 16 * 2048;
/// How long anything here may take before the test calls it a hang.
const HANG_BOUND: Duration = Duration::from_secs(120);

/// The backend of the connection being served, for the test to watch.
type Current = Arc<Mutex<Option<Arc<BlkBackend>>>>;

/// Serves `connections` connections one after the other on `path`, each
/// with a fresh daemon and backend over the one disk, as the
/// `vhost-user-blk` binary does; returns each connection's counts.
fn serve(
    path: &Path,
    config: DeviceConfig,
    connections: usize,
    current: Current,
) -> JoinHandle<Vec<ConnectionStats>> {
    let disk = Arc::new(RwLock::new(RamDisk::new(SECTORS)));
    let mut listener = Listener::new(path, true).unwrap();
    thread::spawn(move || {
        let mut stats = Vec::new();
        for _ in 0..connections {
            let backend = Arc::new(BlkBackend::new(Arc::clone(&disk), config).unwrap());
            *current.lock().unwrap() = Some(Arc::clone(&backend));
            let mut daemon = VhostUserDaemon::new(
                "vhost-user-blk".to_owned(),
                Arc::clone(&backend),
                GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            )
            .unwrap();
            daemon.start(&mut listener).unwrap();
            // Ends when the client goes away, killed or not.
            let _ = daemon.wait();
            // Stops and joins the worker threads.
            drop(daemon);
            stats.push(backend.stats());
        }
        stats
    })
}

/// `blkio-load` on `path` with `args`.
fn client(path: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_blkio-load"))
        .arg("--socket")
        .arg(path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` to end, failing after [`HANG_BOUND`].
fn wait(child: &mut Child, what: &str) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > HANG_BOUND {
            let _ = child.kill();
            panic!("{what} still running after {HANG_BOUND:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn output(child: &mut Child) -> String {
    let mut text = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

fn survives_a_killed_client(name: &str, config: DeviceConfig) {
    let path = std::env::temp_dir().join(format!(
        "blkio-load-killed-{}-{name}.sock",
        std::process::id()
    ));
    let current: Current = Arc::default();
    let server = serve(&path, config, 2, Arc::clone(&current));

    // Two queues of 64 requests each, reads and writes, for far longer
    // than the test waits.
    let mut killed = client(
        &path,
        &[
            "--rw",
            "randrw",
            "--queues",
            "2",
            "--iodepth",
            "64",
            "--runtime",
            "600",
        ],
    );
    // Kill it once the backend has completed a good many requests: the
    // client keeps 64 in flight per queue all along.
    let started = Instant::now();
    loop {
        let done = current
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |backend| backend.stats().queue.requests);
        if done >= 5000 {
            break;
        }
        if let Some(status) = killed.try_wait().unwrap() {
            panic!(
                "{name}: the first client ended by itself ({status}): {}",
                output(&mut killed)
            );
        }
        assert!(
            started.elapsed() < HANG_BOUND,
            "{name}: {done} requests served after {HANG_BOUND:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
    killed.kill().unwrap(); // SIGKILL
    let status = wait(&mut killed, "the killed client");
    assert_eq!(status.signal(), Some(9), "{name}: {status}");

    // The next client, on the same socket and disk: every read checked
    // against the pattern or a write (the killed client's included), every
    // write read back.
    let mut next = client(
        &path,
        &[
            "--rw",
            "randrw",
            "--queues",
            "2",
            "--iodepth",
            "16",
            "--ios",
            "2000",
            "--runtime",
            "600",
            "--verify",
            "pattern",
            "--seed",
            "7",
        ],
    );
    let status = wait(&mut next, "the second client");
    let text = output(&mut next);
    assert!(
        status.success(),
        "{name}: the second client: {status}: {text}"
    );
    assert!(text.contains("blkio-load result: iops="), "{name}: {text}");

    let stats = server.join().unwrap();
    assert!(stats[0].queue.requests >= 5000, "{name}: {stats:?}");
    assert_eq!(stats[1].queue.errors, 0, "{name}: {stats:?}");
    // 2000 requests per queue, and a read-back of each write.
    assert!(stats[1].queue.requests >= 4000, "{name}: {stats:?}");
}

#[test]
fn a_client_killed_with_requests_in_flight_leaves_the_backend_serving() {
    for (name, workers, notify) in [
        ("one-batched", Workers::One, NotifyMode::Batched),
        (
            "per-queue-per-request",
            Workers::PerQueue,
            NotifyMode::PerRequest,
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
        survives_a_killed_client(name, config);
    }
}
