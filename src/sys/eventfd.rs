//! eventfd(2) through rustix (Linux). Plain I/O, so it is the same under
//! loom.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

/// A new eventfd with counter 0, close-on-exec and non-blocking (a device
/// must never block on signalling: a full counter is `EAGAIN`, not a wait).
pub(crate) fn eventfd_new() -> io::Result<OwnedFd> {
    use rustix::event::{eventfd, EventfdFlags};
    eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(io::Error::from)
}

/// Adds `value` to an eventfd's counter: one write(2).
pub(crate) fn eventfd_add(fd: BorrowedFd<'_>, value: u64) -> io::Result<()> {
    let bytes = value.to_ne_bytes();
    let written = rustix::io::write(fd, &bytes).map_err(io::Error::from)?;
    if written != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write of {written} bytes to an eventfd"),
        ));
    }
    Ok(())
}

/// Reads and resets an eventfd's counter: one read(2). `WouldBlock` when
/// the counter is 0.
pub(crate) fn eventfd_take(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    let read = rustix::io::read(fd, &mut bytes).map_err(io::Error::from)?;
    if read != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("short read of {read} bytes from an eventfd"),
        ));
    }
    Ok(u64::from_ne_bytes(bytes))
}

/// Waits until `fd` is readable or `timeout` passes (true if readable).
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let timeout = timeout.map(|d| Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    loop {
        match poll(&mut fds, timeout.as_ref()) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(fds[0].revents().contains(PollFlags::IN)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
