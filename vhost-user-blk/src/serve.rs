//! The backend serving one frontend connection on a thread of its own, in
//! the caller's process: for the main job (`examples/irqfd_batching.rs`),
//! which drives it with libblkio's driver, and for tests.

use crate::backend::{BlkBackend, ConnectionStats, DeviceConfig};
use crate::disk::RamDisk;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::thread::{self, JoinHandle};
use vhost::vhost_user::{Error as ProtocolError, Listener};
use vhost_user_backend::{Error as DaemonError, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// Whether a connection's end is one a frontend causes by going away (it
/// exited, or was killed mid-run), not an error to report.
pub fn is_disconnect(e: &DaemonError) -> bool {
    matches!(
        e,
        DaemonError::HandleRequest(
            ProtocolError::Disconnected
                | ProtocolError::PartialMessage
                | ProtocolError::SocketBroken(_)
        )
    )
}

/// A connection being served on its own thread (see [`serve_one`]).
#[derive(Debug)]
pub struct Connection {
    path: PathBuf,
    handle: JoinHandle<Result<ConnectionStats, String>>,
}

impl Connection {
    /// The socket the backend listens on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until the frontend has disconnected and the backend's worker
    /// threads have stopped; returns what the backend did.
    ///
    /// # Errors
    ///
    /// The connection could not be accepted, or ended with an error other
    /// than the frontend going away; or the serving thread panicked.
    pub fn join(self) -> Result<ConnectionStats, String> {
        self.handle
            .join()
            .unwrap_or_else(|_| Err("the backend's thread panicked".to_owned()))
    }
}

/// Listens on `path` (a stale socket there is removed) and serves the first
/// frontend that connects with a fresh backend over `disk`, on a thread
/// named `vhost-user-blk`. Returns once the socket listens, so a client may
/// connect at once. The socket file is removed once the connection is
/// accepted.
///
/// # Errors
///
/// The device cannot be set up (`config` out of range, no eventfd) or the
/// socket cannot be bound.
pub fn serve_one(
    path: &Path,
    config: DeviceConfig,
    disk: Arc<RwLock<RamDisk>>,
) -> io::Result<Connection> {
    let backend = Arc::new(BlkBackend::new(disk, config)?);
    let mut listener = Listener::new(path, true)
        .map_err(|e| io::Error::other(format!("cannot listen on {}: {e}", path.display())))?;
    let daemon = VhostUserDaemon::new(
        "vhost-user-blk".to_owned(),
        Arc::clone(&backend),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| io::Error::other(format!("cannot set up the vhost-user daemon: {e}")))?;
    backend.register_timers(&daemon)?;
    let handle = thread::Builder::new()
        .name("vhost-user-blk".to_owned())
        .spawn(move || {
            let mut daemon = daemon;
            daemon
                .start(&mut listener)
                .map_err(|e| format!("cannot accept a connection: {e}"))?;
            drop(listener);
            let ended = daemon.wait();
            // Dropping the daemon stops and joins the worker threads, so
            // the counts below are final.
            drop(daemon);
            match ended {
                Err(e) if !is_disconnect(&e) => {
                    Err(format!("the connection ended with an error: {e}"))
                }
                _ => Ok(backend.stats()),
            }
        })?;
    Ok(Connection {
        path: path.to_owned(),
        handle,
    })
}
