//! virtio-blk requests on split virtqueues, independent of vhost-user: a
//! [`BlkServer`] pops the available chains of one or more
//! `virtio_queue::Queue`s, checks and executes each against the
//! [`RamDisk`], puts it on the used ring and notifies the queue's driver
//! through its [`IrqNotifier`].
//!
//! A request is one descriptor chain (virtio 1.x, 5.2.6): a 16-byte header
//! the device reads (`le32 type`, `le32 reserved`, `le64 sector`), the data
//! buffers, and a 1-byte status the device writes last. A chain that is
//! malformed, names sectors beyond the disk or has an unknown type is
//! answered with `VIRTIO_BLK_S_IOERR` or `VIRTIO_BLK_S_UNSUPP` when it has
//! a status byte to write, completed with used length 0 when it has none,
//! and counted; the server keeps serving and never panics on what the
//! driver wrote.

use crate::disk::{RamDisk, SECTOR_SIZE};
use crate::warn;
use rcu_defer::read_lock;
use rcu_defer::virtio::{Delivery, IrqNotifier, Moderation, Notify};
use std::collections::VecDeque;
use std::fmt;
use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemory, Permissions};

/// Bytes in a request header (`struct virtio_blk_outhdr`).
pub const HEADER_LEN: u32 = 16;
/// The status byte of a request that succeeded.
pub const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
/// The status byte of a request that failed or was malformed.
pub const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
/// The status byte of a request of a type the device does not serve.
pub const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
/// The device's serial number, the answer to `VIRTIO_BLK_T_GET_ID`
/// (zero-padded to 20 bytes; a 20-byte buffer has no terminating zero).
pub const DEVICE_ID: &[u8] = b"rcu-defer-vub";
/// The longest chain the device follows, in descriptors; longer chains are
/// refused. Above the `seg_max` the device advertises plus header and
/// status, whatever the queue size.
pub const MAX_DESCRIPTORS: usize = 1026;
/// Bytes the device copies between guest memory and the disk at a time.
const CHUNK: usize = 4096;

/// When the device notifies the driver of completed requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyMode {
    /// `IrqNotifier::notify_now` after each completion that needs a
    /// notification: one eventfd write each.
    PerRequest,
    /// Each pass batches its signals or sends them at once as
    /// `rcu_defer::virtio::Moderation` chooses for the worker thread, by
    /// measuring which completes more: batching where it pays, never much
    /// slower than per-request where it does not.
    Batched,
    /// Every pass over the available requests is one read section, and each
    /// completion that needs a notification calls `IrqNotifier::notify`:
    /// one eventfd write per queue when the pass ends, however many it
    /// completed (what QEMU's `defer_call` does for an IOThread).
    AlwaysBatched,
}

impl NotifyMode {
    /// The command-line spelling: `per-request`, `batched` or
    /// `always-batched`.
    pub fn name(self) -> &'static str {
        match self {
            NotifyMode::PerRequest => "per-request",
            NotifyMode::Batched => "batched",
            NotifyMode::AlwaysBatched => "always-batched",
        }
    }

    /// The mode spelled `name` on the command line.
    pub fn from_name(name: &str) -> Option<NotifyMode> {
        [
            NotifyMode::PerRequest,
            NotifyMode::Batched,
            NotifyMode::AlwaysBatched,
        ]
        .into_iter()
        .find(|mode| mode.name() == name)
    }
}

/// Why a request was refused; its [`answer`](RefusalKind::answer) says
/// what the driver gets back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// No descriptor could be read, the chain breaks off (a next index
    /// outside the table, a bad indirect table, a loop), the last
    /// descriptor is not device-writable, the status byte is outside guest
    /// memory, or the chain is longer than [`MAX_DESCRIPTORS`]: there is no
    /// status byte to answer in.
    NoStatus,
    /// The header is missing, device-writable, shorter than 16 bytes or
    /// outside guest memory.
    BadHeader,
    /// A request type the device does not serve.
    Unsupported,
    /// The data buffers: none, one in the wrong direction, not a whole
    /// number of sectors, too long, or a status descriptor of more than
    /// one byte.
    BadData,
    /// The sectors lie beyond the disk.
    OutOfRange,
    /// A data buffer is outside guest memory.
    DataOutsideMemory,
}

impl RefusalKind {
    /// The status byte the driver gets, or `None` when there is no status
    /// byte to write (the chain is completed with used length 0).
    pub fn answer(self) -> Option<u8> {
        match self {
            RefusalKind::NoStatus => None,
            RefusalKind::Unsupported => Some(S_UNSUPP),
            RefusalKind::BadHeader
            | RefusalKind::BadData
            | RefusalKind::OutOfRange
            | RefusalKind::DataOutsideMemory => Some(S_IOERR),
        }
    }
}

/// A refused request: the kind, and what was wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// What the driver got back.
    pub kind: RefusalKind,
    /// A description for the error message.
    pub what: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let answer = match self.kind.answer() {
            Some(S_UNSUPP) => "answered VIRTIO_BLK_S_UNSUPP",
            Some(_) => "answered VIRTIO_BLK_S_IOERR",
            None => "completed with used length 0 (no status byte to answer in)",
        };
        write!(f, "{}; {answer}", self.what)
    }
}

/// What the device did with one chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes the device wrote into the chain's buffers, status included:
    /// the used length.
    pub used_len: u32,
    /// Why the request was refused, if it was.
    pub refusal: Option<Refusal>,
}

impl Outcome {
    fn done(used_len: u32) -> Outcome {
        Outcome {
            used_len,
            refusal: None,
        }
    }
}

/// Checks one request chain, executes it against `disk` and writes its
/// status. `descs` are the chain's descriptors in order (indirect tables
/// followed); `scratch` is a reusable buffer. The disk is locked once, for
/// the range check and the data copy (shared for a read, exclusive for a
/// write), so that worker threads serving other queues can use it
/// meanwhile. Each buffer is looked up in guest memory once (once per
/// region it lies in), and each chunk of data is one copy into or out of
/// it.
pub fn execute<M: GuestMemory + ?Sized>(
    mem: &M,
    descs: &[Descriptor],
    disk: &RwLock<RamDisk>,
    scratch: &mut Vec<u8>,
) -> Outcome {
    execute_with(mem, descs, &mut DiskLock::new(disk), scratch)
}

/// The disk's lock, held across the requests of a pass: a read request
/// takes the shared lock only if the pass does not hold it yet, and keeps
/// it until the next write request or the end of the pass (when this is
/// dropped); a write takes the exclusive lock for itself alone.
///
/// Taking and releasing the lock for each request cost a quarter of the
/// worker's time under 4 KiB reads at iodepth 64: the release is a locked
/// instruction, which waits for the request's 4 KiB copy into guest memory
/// to drain from the store buffer. Held across a pass, the copies drain
/// while the next requests are parsed. A worker serving other queues that
/// wants to write waits for the end of this pass (at most a ring's worth of
/// requests).
pub struct DiskLock<'a> {
    disk: &'a RwLock<RamDisk>,
    read: Option<RwLockReadGuard<'a, RamDisk>>,
}

impl<'a> DiskLock<'a> {
    /// `disk`, not locked yet.
    pub fn new(disk: &'a RwLock<RamDisk>) -> DiskLock<'a> {
        DiskLock { disk, read: None }
    }

    /// The disk for a read request: shared, kept for the next ones.
    fn read(&mut self) -> &RamDisk {
        let disk = self.disk;
        self.read
            .get_or_insert_with(|| disk.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The disk for a write request: exclusive, for this request only.
    fn write(&mut self) -> RwLockWriteGuard<'a, RamDisk> {
        self.read = None;
        self.disk.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`execute`] with the disk's lock held as `disk` says (see [`DiskLock`]).
pub fn execute_with<M: GuestMemory + ?Sized>(
    mem: &M,
    descs: &[Descriptor],
    disk: &mut DiskLock<'_>,
    scratch: &mut Vec<u8>,
) -> Outcome {
    let refuse = |kind: RefusalKind, what: String| Outcome {
        used_len: u32::from(kind.answer().is_some()),
        refusal: Some(Refusal { kind, what }),
    };
    let Some(status) = descs.last() else {
        return refuse(
            RefusalKind::NoStatus,
            "no descriptor of the chain could be read".to_owned(),
        );
    };
    if descs.len() > MAX_DESCRIPTORS {
        return refuse(
            RefusalKind::NoStatus,
            format!("the chain is longer than {MAX_DESCRIPTORS} descriptors"),
        );
    }
    if status.has_next() {
        // virtio-queue stopped following the chain: a next index outside
        // the table, a bad indirect table, or a loop.
        return refuse(
            RefusalKind::NoStatus,
            "the chain breaks off before its last descriptor".to_owned(),
        );
    }
    if !status.is_write_only() || status.len() == 0 {
        return refuse(
            RefusalKind::NoStatus,
            format!(
                "the last descriptor ({} bytes at {:#x}) is not a device-writable status byte",
                status.len(),
                status.addr().0
            ),
        );
    }
    // The status is the descriptor's last byte.
    let Some(status_addr) = status.addr().0.checked_add(u64::from(status.len()) - 1) else {
        return refuse(
            RefusalKind::NoStatus,
            "the status descriptor wraps around the address space".to_owned(),
        );
    };
    let status_addr = GuestAddress(status_addr);
    // The status byte is looked up once, here, and written last.
    let status_byte = mem
        .get_slices(status_addr, 1, Permissions::Write)
        .ok()
        .and_then(|mut pieces| pieces.next())
        .and_then(Result::ok);
    let Some(status_byte) = status_byte else {
        return refuse(
            RefusalKind::NoStatus,
            format!(
                "the status byte at {:#x} is outside guest memory",
                status_addr.0
            ),
        );
    };
    let (code, outcome) = match execute_request(mem, descs, disk, scratch) {
        Ok(data_len) => (S_OK, Outcome::done(data_len + 1)),
        Err(refusal) => (
            refusal.kind.answer().unwrap_or(S_IOERR),
            refuse(refusal.kind, refusal.what),
        ),
    };
    status_byte.copy_from(&[code]);
    outcome
}

/// The header and data part of [`execute`]: returns the bytes written into
/// the data buffers.
fn execute_request<M: GuestMemory + ?Sized>(
    mem: &M,
    descs: &[Descriptor],
    disk: &mut DiskLock<'_>,
    scratch: &mut Vec<u8>,
) -> Result<u32, Refusal> {
    let refuse = |kind, what: String| Err(Refusal { kind, what });
    let [header, data @ .., status] = descs else {
        return refuse(RefusalKind::BadHeader, "no header descriptor".to_owned());
    };
    if header.is_write_only() {
        return refuse(
            RefusalKind::BadHeader,
            "the header is device-writable".to_owned(),
        );
    }
    if header.len() < HEADER_LEN {
        return refuse(
            RefusalKind::BadHeader,
            format!("the header is {} bytes, not 16", header.len()),
        );
    }
    let mut bytes = [0u8; HEADER_LEN as usize];
    if !read_guest(mem, header.addr(), &mut bytes) {
        return refuse(
            RefusalKind::BadHeader,
            format!(
                "the header at {:#x} is outside guest memory",
                header.addr().0
            ),
        );
    }
    let request_type = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&bytes[8..16]);
    let sector = u64::from_le_bytes(sector);
    if status.len() != 1 {
        return refuse(
            RefusalKind::BadData,
            format!(
                "the status descriptor is {} bytes, not 1 (data and status in one buffer)",
                status.len()
            ),
        );
    }

    match request_type {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let device_writes = request_type == VIRTIO_BLK_T_IN;
            let name = if device_writes { "read" } else { "write" };
            let mut len = 0u64;
            for d in data {
                if d.is_write_only() != device_writes {
                    return refuse(
                        RefusalKind::BadData,
                        format!(
                            "a data buffer of a {name} is device-{}",
                            if d.is_write_only() {
                                "writable"
                            } else {
                                "readable"
                            }
                        ),
                    );
                }
                len += u64::from(d.len());
            }
            if data.is_empty() || len % SECTOR_SIZE != 0 || len >= u64::from(u32::MAX) {
                return refuse(
                    RefusalKind::BadData,
                    format!("the {name} is {len} bytes, not 1 or more whole sectors"),
                );
            }
            let offset = sector.checked_mul(SECTOR_SIZE);
            // One lock for the whole request (shared for a read, exclusive
            // for a write): the range check and the copy see one disk.
            let mut disk = if device_writes {
                DiskAccess::Read(disk.read())
            } else {
                DiskAccess::Write(disk.write())
            };
            let Some(offset) = offset.filter(|&offset| disk.get().contains(offset, len)) else {
                return refuse(
                    RefusalKind::OutOfRange,
                    format!(
                        "a {name} of {} sectors at sector {sector} is beyond the disk's {} sectors",
                        len / SECTOR_SIZE,
                        disk.get().sectors(),
                    ),
                );
            };
            if scratch.len() < CHUNK {
                scratch.resize(CHUNK, 0);
            }
            let scratch = &mut scratch[..CHUNK];
            let outside = |d: &Descriptor| {
                refuse(
                    RefusalKind::DataOutsideMemory,
                    format!(
                        "a data buffer ({} bytes at {:#x}) is outside guest memory",
                        d.len(),
                        d.addr().0
                    ),
                )
            };
            match &mut disk {
                DiskAccess::Read(disk) => {
                    // Each buffer is translated once, as it is filled; a
                    // buffer outside guest memory refuses the request (the
                    // buffers before it may have been filled).
                    let mut at = offset;
                    for d in data {
                        if !read_into_guest(mem, d, disk, at, scratch) {
                            return outside(d);
                        }
                        at += u64::from(d.len());
                    }
                }
                DiskAccess::Write(disk) => {
                    // Every buffer is checked before the disk changes.
                    if let Some(d) = data
                        .iter()
                        .find(|d| !mem.check_range(d.addr(), d.len() as usize, Permissions::Read))
                    {
                        return outside(d);
                    }
                    let mut at = offset;
                    for d in data {
                        if !write_from_guest(mem, d, disk, at, scratch) {
                            // Checked above, and the map cannot change under
                            // the caller's handle: this does not happen.
                            return outside(d);
                        }
                        at += u64::from(d.len());
                    }
                }
            }
            Ok(if device_writes { len as u32 } else { 0 })
        }
        VIRTIO_BLK_T_FLUSH => Ok(0), // the disk is memory: nothing to flush
        VIRTIO_BLK_T_GET_ID => {
            let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
            id[..DEVICE_ID.len()].copy_from_slice(DEVICE_ID);
            let mut written = 0usize;
            for d in data {
                if written == id.len() {
                    break;
                }
                if !d.is_write_only() {
                    return refuse(
                        RefusalKind::BadData,
                        "the buffer of a GET_ID is device-readable".to_owned(),
                    );
                }
                let n = (d.len() as usize).min(id.len() - written);
                if mem
                    .write_slice(&id[written..written + n], d.addr())
                    .is_err()
                {
                    return refuse(
                        RefusalKind::DataOutsideMemory,
                        format!(
                            "the buffer of a GET_ID ({} bytes at {:#x}) is outside guest memory",
                            d.len(),
                            d.addr().0
                        ),
                    );
                }
                written += n;
            }
            Ok(written as u32)
        }
        other => refuse(
            RefusalKind::Unsupported,
            format!("request type {other} is not served"),
        ),
    }
}

/// The disk, locked for a request's data copy.
enum DiskAccess<'a> {
    /// A read request: the disk is read.
    Read(&'a RamDisk),
    /// A write request: the disk is written.
    Write(RwLockWriteGuard<'a, RamDisk>),
}

impl DiskAccess<'_> {
    /// The disk, whichever way it is locked.
    fn get(&self) -> &RamDisk {
        match self {
            DiskAccess::Read(disk) => disk,
            DiskAccess::Write(disk) => disk,
        }
    }
}

/// Copies the guest bytes at `addr` into `buf`: false when they are not all
/// in guest memory. Each region the bytes lie in is looked up once.
fn read_guest<M: GuestMemory + ?Sized>(mem: &M, addr: GuestAddress, buf: &mut [u8]) -> bool {
    let Ok(pieces) = mem.get_slices(addr, buf.len(), Permissions::Read) else {
        return false;
    };
    let mut done = 0;
    for piece in pieces {
        let Ok(piece) = piece else {
            return false;
        };
        done += piece.copy_to(&mut buf[done..]);
    }
    done == buf.len()
}

/// Fills the data buffer `d` with the disk's bytes from byte `at` on,
/// through `scratch` (a chunk at a time): false when the buffer is not all
/// in guest memory. The buffer is translated once (once per region it lies
/// in), and each chunk is one copy into it.
fn read_into_guest<M: GuestMemory + ?Sized>(
    mem: &M,
    d: &Descriptor,
    disk: &RamDisk,
    mut at: u64,
    scratch: &mut [u8],
) -> bool {
    let Ok(pieces) = mem.get_slices(d.addr(), d.len() as usize, Permissions::Write) else {
        return false;
    };
    let mut total = 0;
    for piece in pieces {
        let Ok(piece) = piece else {
            return false;
        };
        let mut done = 0;
        while done < piece.len() {
            let n = scratch.len().min(piece.len() - done);
            let chunk = &mut scratch[..n];
            disk.read(at, chunk);
            let Ok(to) = piece.offset(done) else {
                return false;
            };
            to.copy_from(&chunk[..]);
            done += n;
            at += n as u64;
        }
        total += done;
    }
    total == d.len() as usize
}

/// Writes the data buffer `d` to the disk from byte `at` on, through
/// `scratch` (a chunk at a time): false when the buffer is not all in
/// guest memory.
fn write_from_guest<M: GuestMemory + ?Sized>(
    mem: &M,
    d: &Descriptor,
    disk: &mut RamDisk,
    mut at: u64,
    scratch: &mut [u8],
) -> bool {
    let Ok(pieces) = mem.get_slices(d.addr(), d.len() as usize, Permissions::Read) else {
        return false;
    };
    let mut total = 0;
    for piece in pieces {
        let Ok(piece) = piece else {
            return false;
        };
        let mut done = 0;
        while done < piece.len() {
            let Ok(from) = piece.offset(done) else {
                return false;
            };
            let n = from.copy_to(&mut scratch[..]);
            disk.write(at, &scratch[..n]);
            done += n;
            at += n as u64;
        }
        total += done;
    }
    total == d.len() as usize
}

/// What a [`BlkServer`] counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Chains put on the used ring (refused ones included).
    pub requests: u64,
    /// Completions for which `needs_notification` said the driver wanted
    /// no notification (EVENT_IDX).
    pub suppressed: u64,
    /// Refused requests (see [`RefusalKind`]).
    pub errors: u64,
}

/// The queue can no longer be served: the rings are outside guest memory,
/// or the driver's available index is inconsistent.
#[derive(Debug)]
pub struct RingError(String);

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RingError {}

fn ring_error(e: virtio_queue::Error) -> RingError {
    RingError(format!("the virtqueue's rings cannot be accessed: {e}"))
}

/// One queue handed to [`BlkServer::serve_queues`]: the virtqueue, and the
/// notifier of its driver.
pub struct QueueWork<'a, N: Notify + 'static> {
    /// Names the queue from one call to the next (the device's queue
    /// index): a delayed completion (see [`BlkServer::set_latency`]) goes
    /// to the queue of the same `id` in a later call.
    pub id: usize,
    /// The virtqueue (its rings in the guest memory the server is given).
    pub queue: &'a mut Queue,
    /// Signals the queue's driver.
    pub irq: &'a Arc<IrqNotifier<N>>,
}

/// Serves virtio-blk queues: see the [module documentation](self). One
/// server belongs to one worker thread, whichever queues that thread
/// serves.
#[derive(Debug)]
pub struct BlkServer {
    disk: Arc<RwLock<RamDisk>>,
    mode: NotifyMode,
    /// Whether each pass batches (`NotifyMode::Batched`).
    moderation: Moderation,
    /// The current chain's descriptors (reused across requests).
    descs: Vec<Descriptor>,
    /// The copy buffer (reused likewise).
    scratch: Vec<u8>,
    /// Which of the queues handed to `serve_queues` still have work
    /// (reused likewise).
    active: Vec<bool>,
    stats: QueueStats,
    /// Whether a refused request has been reported on stderr (only the
    /// first is; the rest are counted).
    refusal_reported: bool,
    /// How long after it is executed a request completes (`None`: at
    /// once).
    latency: Option<Duration>,
    /// Executed requests waiting for their completion time, oldest first.
    delayed: VecDeque<Delayed>,
    /// How long to poll for more work after a pass (see
    /// [`set_poll_max`](Self::set_poll_max)).
    poller: Poller,
}

/// Adaptive polling after a pass, as QEMU's `aio_poll` does for an
/// IOThread: a driver that resubmits within the window is served without a
/// kick and without the device thread going to sleep (waking a sleeping
/// thread costs tens of microseconds when its CPU is idle). The window
/// grows while the device sleeps for less than the maximum between
/// passes (polling a little longer would have caught the work), and
/// shrinks when it sleeps for longer (polling is wasted on this load).
#[derive(Debug, Default)]
struct Poller {
    max: Duration,
    window: Duration,
    /// When the device last stopped working (started polling or went to
    /// sleep), while it waits for the next call.
    idle_since: Option<Instant>,
    /// Whether this call's poll found nothing, so that `idle_since` is when
    /// it started polling.
    polled_since: Option<Instant>,
}

/// The first window after a sleep that polling would have caught.
const POLL_START: Duration = Duration::from_micros(4);

impl Poller {
    /// Called as a call to the server begins: adapts the window to how
    /// long the device waited.
    fn woke(&mut self) {
        let Some(since) = self.idle_since.take() else {
            return;
        };
        if !self.max.is_zero() {
            self.adapt(since.elapsed());
        }
    }

    /// Adapts the window to a wait of `waited` between calls.
    fn adapt(&mut self, waited: Duration) {
        if waited <= self.window {
            // Polling would have caught it (work on another queue, or a
            // kick just after the window): the window is right.
        } else if waited > self.max {
            self.window /= 2;
            if self.window < POLL_START {
                self.window = Duration::ZERO;
            }
        } else {
            self.window = (self.window * 2).max(POLL_START).min(self.max);
        }
    }

    /// Spins for up to the window until `work()` says there is some.
    fn poll(&mut self, mut work: impl FnMut() -> bool) -> bool {
        if self.window.is_zero() {
            self.polled_since = Some(Instant::now());
            return false;
        }
        let start = Instant::now();
        let deadline = start + self.window;
        loop {
            if work() {
                self.polled_since = None;
                return true;
            }
            if Instant::now() >= deadline {
                self.polled_since = Some(start);
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Called as the server goes idle until the next call.
    fn sleeping(&mut self) {
        self.idle_since = Some(self.polled_since.take().unwrap_or_else(Instant::now));
    }
}

/// A request executed but not yet on the used ring (see
/// [`BlkServer::set_latency`]).
#[derive(Clone, Copy, Debug)]
struct Delayed {
    due: Instant,
    /// [`QueueWork::id`] of its queue.
    queue: usize,
    head: u16,
    used_len: u32,
}

impl BlkServer {
    /// A server of `disk` that notifies as `mode` says.
    pub fn new(disk: Arc<RwLock<RamDisk>>, mode: NotifyMode) -> BlkServer {
        BlkServer {
            disk,
            mode,
            moderation: Moderation::new(),
            descs: Vec::new(),
            scratch: Vec::new(),
            active: Vec::new(),
            stats: QueueStats::default(),
            refusal_reported: false,
            latency: None,
            delayed: VecDeque::new(),
            poller: Poller::default(),
        }
    }

    /// Polls for more work for up to `max` after each pass before going
    /// idle, adapting the window to the load (see `Poller`); `Duration::ZERO`
    /// (the default) never polls.
    pub fn set_poll_max(&mut self, max: Duration) {
        self.poller.max = max;
        self.poller.window = self.poller.window.min(max);
    }

    /// Makes the disk asynchronous: a request's data moves when the device
    /// pops it, but it goes on the used ring only `latency` later, with
    /// every other request due by then, in one pass
    /// ([`complete_due`](Self::complete_due)), as completions come from
    /// io_uring in bursts. `Duration::ZERO` completes at once.
    pub fn set_latency(&mut self, latency: Duration) {
        self.latency = (!latency.is_zero()).then_some(latency);
    }

    /// When the oldest delayed request is due, if one waits: the caller
    /// arms a timer for it and then calls [`complete_due`](Self::complete_due).
    pub fn next_due(&self) -> Option<Instant> {
        self.delayed.front().map(|d| d.due)
    }

    /// Puts every delayed request that is due on its queue's used ring, in
    /// one pass: batched or not as the mode (and its moderation) says, so
    /// each queue's driver is signalled at most once when batched.
    /// Requests of queues not in `queues` (disabled meanwhile) are dropped.
    ///
    /// Returns the ring errors, as [`serve_queues`](Self::serve_queues)
    /// does.
    pub fn complete_due<A, N>(
        &mut self,
        queues: &mut [QueueWork<'_, N>],
        space: &A,
    ) -> Vec<(usize, RingError)>
    where
        A: GuestAddressSpace,
        N: Notify + 'static,
    {
        let mut errors = Vec::new();
        let now = Instant::now();
        match self.next_due() {
            Some(due) if due <= now => {}
            _ => return errors,
        }
        let delivery = self.start_pass();
        let _pass = (delivery == Delivery::Batched).then(read_lock);
        let mem = space.memory();
        let mut completed = 0;
        while let Some(done) = self.delayed.front().copied().filter(|d| d.due <= now) {
            self.delayed.pop_front();
            let Some((i, work)) = queues
                .iter_mut()
                .enumerate()
                .find(|(_, work)| work.id == done.queue)
            else {
                continue;
            };
            if errors.iter().any(|(failed, _)| *failed == i) {
                continue;
            }
            match self.complete(
                work.queue,
                &*mem,
                work.irq,
                done.head,
                done.used_len,
                delivery,
            ) {
                Ok(()) => completed += 1,
                Err(e) => errors.push((i, e)),
            }
        }
        self.end_pass(completed);
        errors
    }

    /// The delivery of the next pass's signals.
    fn start_pass(&mut self) -> Delivery {
        match self.mode {
            NotifyMode::PerRequest => Delivery::AtOnce,
            NotifyMode::Batched => self.moderation.start_pass(),
            NotifyMode::AlwaysBatched => Delivery::Batched,
        }
    }

    fn end_pass(&mut self, completed: u64) {
        if self.mode == NotifyMode::Batched {
            self.moderation.end_pass(completed);
        }
    }

    /// Puts one executed request on the used ring, and notifies if the
    /// driver wants it.
    fn complete<M: GuestMemory, N: Notify + 'static>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        irq: &Arc<IrqNotifier<N>>,
        head: u16,
        used_len: u32,
        delivery: Delivery,
    ) -> Result<(), RingError> {
        queue.add_used(mem, head, used_len).map_err(ring_error)?;
        self.stats.requests += 1;
        if queue.needs_notification(mem).map_err(ring_error)? {
            match delivery {
                Delivery::AtOnce => irq.notify_now(),
                Delivery::Batched => irq.notify(),
            }
        } else {
            self.stats.suppressed += 1;
        }
        Ok(())
    }

    /// What the server has counted so far, over all the queues it served.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// Serves every request the driver has made available on `queue`, and
    /// those it makes available meanwhile: [`serve_queues`](Self::serve_queues)
    /// with one queue.
    ///
    /// # Errors
    ///
    /// A [`RingError`] when the rings cannot be read or written, or the
    /// available index is more than a queue ahead of the device; the
    /// requests completed before it stay completed.
    pub fn serve_queue<A, N>(
        &mut self,
        queue: &mut Queue,
        space: &A,
        irq: &Arc<IrqNotifier<N>>,
    ) -> Result<(), RingError>
    where
        A: GuestAddressSpace,
        N: Notify + 'static,
    {
        let mut work = [QueueWork { id: 0, queue, irq }];
        match self.serve_queues(&mut work, space).pop() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Serves every request the drivers have made available on `queues`,
    /// and those they make available meanwhile, in passes: a pass takes
    /// every queue that has work (chains the device has not popped), pops
    /// all its available chains with its driver's kicks disabled, executes
    /// them, puts them on the used ring and notifies the driver if it wants
    /// to be told. After each pass every queue in it re-enables its kicks;
    /// a queue where that finds nothing new is done (the order virtio-queue
    /// prescribes, so that no kick is lost), the others go into the next
    /// pass. A queue without work is left alone: its kicks are enabled, so
    /// its driver kicks when it adds a request. Queues that are not ready
    /// are skipped.
    ///
    /// A batched pass is one read section over all its queues, so each
    /// queue's notifier signals at most once per pass, when the pass ends;
    /// otherwise each completion that needs a notification is signalled at
    /// once. `NotifyMode::Batched` lets the server's `Moderation` choose,
    /// pass by pass.
    ///
    /// Returns the ring errors, each with the index in `queues` of the
    /// queue it happened on: a [`RingError`] when a queue's rings cannot be
    /// read or written, or its available index is more than a queue ahead
    /// of the device. That queue is not served further in this call (the
    /// requests completed before the error stay completed); the others are.
    pub fn serve_queues<A, N>(
        &mut self,
        queues: &mut [QueueWork<'_, N>],
        space: &A,
    ) -> Vec<(usize, RingError)>
    where
        A: GuestAddressSpace,
        N: Notify + 'static,
    {
        let mut errors = Vec::new();
        self.poller.woke();
        let mut active = std::mem::take(&mut self.active);
        active.clear();
        {
            let mem = space.memory();
            for (i, work) in queues.iter().enumerate() {
                match has_work(work.queue, &*mem) {
                    Ok(work) => active.push(work),
                    Err(e) => {
                        errors.push((i, e));
                        active.push(false);
                    }
                }
            }
        }
        while active.contains(&true) {
            {
                // With a latency, a pass completes nothing (complete_due
                // does), so it needs no delivery of its own.
                let delivery = match self.latency {
                    None => self.start_pass(),
                    Some(_) => Delivery::AtOnce,
                };
                let _pass = (delivery == Delivery::Batched).then(read_lock);
                let before = self.stats.requests;
                let mem = space.memory();
                let now = self.latency.map(|latency| Instant::now() + latency);
                for (i, work) in queues.iter_mut().enumerate() {
                    if active[i] {
                        if let Err(e) = self.pass::<A, N>(work, &mem, delivery, now) {
                            errors.push((i, e));
                            active[i] = false;
                        }
                    }
                }
                if self.latency.is_none() {
                    self.end_pass(self.stats.requests - before);
                }
                // Batched, the pass's signals go out here, as its section
                // ends.
            }
            let mem = space.memory();
            // Kicks stay disabled while polling: a driver that posts more
            // in the window needs no kick, and the device no wake-up.
            let polled = self.poller.poll(|| {
                queues
                    .iter()
                    .zip(&active)
                    .any(|(work, active)| *active && has_work(work.queue, &*mem).unwrap_or(true))
            });
            for (i, work) in queues.iter_mut().enumerate() {
                if active[i] {
                    let more = match polled {
                        true => match has_work(work.queue, &*mem) {
                            Ok(true) => Ok(true),
                            Ok(false) => rearm(work.queue, &*mem),
                            Err(e) => Err(e),
                        },
                        false => rearm(work.queue, &*mem),
                    };
                    match more {
                        Ok(more) => active[i] = more,
                        Err(e) => {
                            errors.push((i, e));
                            active[i] = false;
                        }
                    }
                }
            }
        }
        self.poller.sleeping();
        self.active = active;
        errors
    }

    /// One queue's part of a pass: pops every available chain with the
    /// driver's kicks disabled, executes it, puts it on the used ring and
    /// notifies if the driver wants it.
    fn pass<A, N>(
        &mut self,
        work: &mut QueueWork<'_, N>,
        mem: &A::T,
        delivery: Delivery,
        due: Option<Instant>,
    ) -> Result<(), RingError>
    where
        A: GuestAddressSpace,
        N: Notify + 'static,
    {
        let queue = &mut *work.queue;
        queue.disable_notification(&**mem).map_err(ring_error)?;
        let mut popped = 0;
        let disk = Arc::clone(&self.disk);
        let mut disk = DiskLock::new(&disk);
        // At most a ring's worth per pass: a driver that posts as fast as
        // the device completes would otherwise keep one pass, and its read
        // section, open for as long as it runs, holding a batched pass's
        // signals all that time. The rest goes into the next pass.
        while popped < queue.size() {
            let Some(chain) = queue.pop_descriptor_chain(mem.clone()) else {
                break;
            };
            popped += 1;
            let head = chain.head_index();
            self.descs.clear();
            self.descs.extend(chain.take(MAX_DESCRIPTORS + 1));
            let outcome = execute_with(&**mem, &self.descs, &mut disk, &mut self.scratch);
            if let Some(refusal) = outcome.refusal {
                self.stats.errors += 1;
                if !self.refusal_reported {
                    self.refusal_reported = true;
                    warn(format_args!(
                        "refused a request (chain at head {head}): {refusal} \
                         (further refusals are only counted)"
                    ));
                }
            }
            if head >= queue.size() {
                // No descriptor to hand back (add_used would refuse it).
                continue;
            }
            match due {
                Some(due) => self.delayed.push_back(Delayed {
                    due,
                    queue: work.id,
                    head,
                    used_len: outcome.used_len,
                }),
                None => self.complete(queue, &**mem, work.irq, head, outcome.used_len, delivery)?,
            }
        }
        if popped > 0 {
            Ok(())
        } else {
            // The queue is in the pass because avail.idx said chains wait:
            // another pass would pop none again, and spin.
            stalled(queue, &**mem)
        }
    }
}

/// Why a queue whose avail.idx said chains wait gave none: an error,
/// unless avail.idx no longer says so.
fn stalled<M: GuestMemory>(queue: &Queue, mem: &M) -> Result<(), RingError> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(ring_error)?;
    let pending = (avail - Wrapping(queue.next_avail())).0;
    if pending == 0 {
        return Ok(());
    }
    if pending > queue.size() {
        return Err(too_far_ahead(queue, avail, pending));
    }
    // virtio-queue pops nothing from an available ring at guest address 0
    // (it takes that for a queue that was reset) or whose entries are
    // outside guest memory.
    Err(RingError(format!(
        "the driver's avail.idx {avail} says {pending} chains wait, but the available ring \
         at {:#x} cannot be read",
        queue.avail_ring()
    )))
}

/// The ring error of an avail.idx more than a queue ahead of the device.
fn too_far_ahead(queue: &Queue, avail: Wrapping<u16>, pending: u16) -> RingError {
    RingError(format!(
        "the driver's avail.idx {avail} is {pending} entries ahead of the device, \
         more than the queue's {}",
        queue.size()
    ))
}

/// Whether `queue` is ready and its driver has made chains available that
/// the device has not popped.
fn has_work<M: GuestMemory>(queue: &Queue, mem: &M) -> Result<bool, RingError> {
    if !queue.ready() {
        return Ok(false);
    }
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(ring_error)?;
    Ok(avail != Wrapping(queue.next_avail()))
}

/// Re-enables the driver's kicks after a pass: returns whether chains
/// arrived meanwhile that the driver may not kick for (the queue needs
/// another pass).
fn rearm<M: GuestMemory>(queue: &mut Queue, mem: &M) -> Result<bool, RingError> {
    // enable_notification re-reads avail.idx after re-enabling kicks: true
    // means chains arrived that the driver may not kick for.
    if !queue.enable_notification(mem).map_err(ring_error)? {
        return Ok(false);
    }
    // pop_descriptor_chain finds nothing when avail.idx is more than a
    // queue ahead; going round again would spin.
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(ring_error)?;
    let pending = (avail - Wrapping(queue.next_avail())).0;
    if pending > queue.size() {
        return Err(too_far_ahead(queue, avail, pending));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poller(max_us: u64) -> Poller {
        Poller {
            max: Duration::from_micros(max_us),
            ..Poller::default()
        }
    }

    #[test]
    fn a_pass_that_holds_the_read_lock_can_write_and_read_again() {
        let disk = RwLock::new(RamDisk::new(1 << 20));
        let mut lock = DiskLock::new(&disk);
        let mut before = [0u8; 512];
        lock.read().read(0, &mut before);
        // The write gives up the shared lock first: no deadlock with itself.
        lock.write().write(0, &[7u8; 512]);
        let mut after = [0u8; 512];
        lock.read().read(0, &mut after);
        assert_eq!(after, [7u8; 512]);
        // Held until the pass drops it: another thread's writer waits.
        assert!(disk.try_write().is_err());
        drop(lock);
        assert!(disk.try_write().is_ok());
    }

    #[test]
    fn the_poll_window_grows_while_the_driver_comes_back_within_the_maximum() {
        let mut p = poller(50);
        let mut windows = Vec::new();
        for _ in 0..6 {
            // The driver resubmits 30 us after the device went idle.
            p.adapt(Duration::from_micros(30));
            windows.push(p.window.as_micros());
        }
        assert_eq!(windows, [4, 8, 16, 32, 32, 32]);
    }

    #[test]
    fn the_poll_window_shrinks_to_nothing_when_the_driver_is_slower_than_the_maximum() {
        let mut p = poller(50);
        p.window = Duration::from_micros(50);
        let mut windows = Vec::new();
        for _ in 0..5 {
            p.adapt(Duration::from_micros(500));
            windows.push(p.window.as_micros());
        }
        assert_eq!(windows, [25, 12, 6, 0, 0]);
    }

    #[test]
    fn a_poller_without_a_maximum_never_spins() {
        let mut p = poller(0);
        let mut asked = 0;
        assert!(!p.poll(|| {
            asked += 1;
            true
        }));
        assert_eq!(asked, 0);
        p.sleeping();
        p.woke();
        assert_eq!(p.window, Duration::ZERO);
    }

    #[test]
    fn polling_stops_at_the_first_sign_of_work_or_at_the_window_end() {
        let mut p = poller(1000);
        p.window = Duration::from_millis(1);
        let mut asked = 0;
        assert!(p.poll(|| {
            asked += 1;
            asked == 3
        }));
        assert_eq!(asked, 3);
        let start = Instant::now();
        assert!(!p.poll(|| false));
        assert!(start.elapsed() >= Duration::from_millis(1));
    }
}
