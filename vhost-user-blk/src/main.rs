//! `vhost-user-blk --socket PATH --notify per-request|batched [--size-mib N]
//! [--queues N] [--thread-per-queue] [--once]`: serves a RAM disk to one vhost-user frontend (QEMU) at a time
//! on the Unix socket PATH, and prints a stats line on stdout as each
//! connection ends (see `vhost_user_blk::cli::USAGE`).
//!
//! The socket is bound once, so a frontend that connects while the previous
//! connection is being wound up waits in the listen queue. Each connection
//! gets a fresh `VhostUserDaemon` and backend (vhost-user-backend's handler
//! keeps per-connection state such as ownership); the disk is shared by all
//! of them. SIGTERM and SIGINT end the process with status 0: at once while
//! it waits for a connection, or after ending the current connection (and
//! printing its stats line).

use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vhost_user_blk::backend::BlkBackend;
use vhost_user_blk::cli::{self, Args, Command};
use vhost_user_blk::disk::{RamDisk, SECTOR_SIZE};
use vhost_user_blk::serve::is_disconnect;
use vhost_user_blk::warn;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

fn main() -> ExitCode {
    match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Help) => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Command::Run(args)) => match run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                warn(format_args!("{e}"));
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            let usage = cli::USAGE.lines().next().unwrap_or_default();
            warn(format_args!("{e}\n{usage} (--help for more)"));
            ExitCode::from(2)
        }
    }
}

/// Where the main thread is, for the signal thread.
enum Phase {
    /// Setting up or winding down a connection: a signal is acted on when
    /// the main thread next looks at `Control::terminating`.
    Busy,
    /// Blocked waiting for a frontend: a signal ends the process there.
    Accepting,
    /// Serving a frontend: a signal ends the connection through this.
    Connected(ShutdownHandle),
}

/// What the main thread and the signal thread share.
struct Control {
    phase: Mutex<Phase>,
    terminating: AtomicBool,
    socket: PathBuf,
}

impl Control {
    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase;
    }

    /// Moves to `Accepting` unless a signal has come: then returns false.
    fn start_accepting(&self) -> bool {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        if self.terminating.load(Ordering::Relaxed) {
            return false;
        }
        *phase = Phase::Accepting;
        true
    }

    fn terminating(&self) -> bool {
        self.terminating.load(Ordering::Relaxed)
    }

    /// SIGTERM or SIGINT came.
    fn terminate(&self) {
        let phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        self.terminating.store(true, Ordering::Relaxed);
        match &*phase {
            Phase::Busy => {}
            Phase::Accepting => {
                // The main thread is blocked in accept(2) with no connection
                // to report on; the socket file is removed here, as dropping
                // the listener would.
                let _ = std::fs::remove_file(&self.socket);
                std::process::exit(0);
            }
            Phase::Connected(connection) => connection.shutdown(),
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let sectors = args.size_mib * (1 << 20) / SECTOR_SIZE;
    let disk = Arc::new(RwLock::new(RamDisk::new(sectors)));
    // A stale socket is removed (by Listener::new); anything else at the
    // path is left alone.
    if let Ok(meta) = std::fs::symlink_metadata(&args.socket) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "{} exists and is not a socket: not removing it",
                args.socket.display()
            ));
        }
    }
    // Removes a stale socket file first; removes the file when dropped.
    let mut listener = Listener::new(&args.socket, true)
        .map_err(|e| format!("cannot listen on {}: {e}", args.socket.display()))?;
    let control = Arc::new(Control {
        phase: Mutex::new(Phase::Busy),
        terminating: AtomicBool::new(false),
        socket: args.socket.clone(),
    });
    let mut signals = Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot handle SIGTERM and SIGINT: {e}"))?;
    {
        let control = Arc::clone(&control);
        thread::Builder::new()
            .name("signals".to_owned())
            .spawn(move || {
                for _ in signals.forever() {
                    control.terminate();
                }
            })
            .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    }

    loop {
        let cpu_before = cli::process_cpu_ns();
        let backend = Arc::new(
            BlkBackend::new(Arc::clone(&disk), args.device)
                .map_err(|e| format!("cannot set up the device: {e}"))?,
        );
        let mut daemon = VhostUserDaemon::new(
            "vhost-user-blk".to_owned(),
            Arc::clone(&backend),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| format!("cannot set up the vhost-user daemon: {e}"))?;
        backend
            .register_timers(&daemon)
            .map_err(|e| format!("cannot set up the device: {e}"))?;
        if !control.start_accepting() {
            break;
        }
        daemon
            .start(&mut listener)
            .map_err(|e| format!("cannot accept a connection: {e}"))?;
        match daemon.shutdown_handle() {
            Some(connection) => control.set(Phase::Connected(connection)),
            None => control.set(Phase::Busy),
        }
        let ended = daemon.wait();
        control.set(Phase::Busy);
        // Dropping the daemon stops and joins the worker threads, so
        // the counts below are final.
        drop(daemon);
        let stats = backend.stats();
        let cpu_ns = cli::process_cpu_ns().saturating_sub(cpu_before);
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{}", cli::stats_line(&stats, cpu_ns));
        let _ = out.flush();
        drop(out);
        if let Err(e) = ended {
            if !is_disconnect(&e) {
                warn(format_args!("the connection ended with an error: {e}"));
            }
        }
        if args.once || control.terminating() {
            break;
        }
    }
    Ok(())
}
