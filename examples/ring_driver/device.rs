//! The device: a virtio-blk-like device on rust-vmm's `virtio_queue::Queue`,
//! in guest memory held by `rcu_defer::vm::GuestMemoryRcu`.
//!
//! It sleeps on the ioeventfd until the driver kicks, then runs a pass:
//! with the driver's kicks disabled it pops every available chain and
//! serves it (the request's work), then puts each served chain on the used
//! ring and asks virtio-queue whether the driver wants an interrupt for it
//! (`needs_notification`, which applies EVENT_IDX). It then re-enables
//! kicks and, if chains arrived meanwhile, runs another pass, as
//! virtio-queue's documentation prescribes so that no kick is lost. The
//! interrupt goes through an `IrqNotifier`: `notify_now` per completion
//! unbatched, or `notify` inside one read section around the pass's
//! completions batched (one eventfd write when they are all on the used
//! ring, before kicks are re-enabled). `--complete-inline` completes each
//! chain right after serving it instead, and then the batched section
//! spans the whole pass.
//!
//! virtio-queue 0.18's `needs_notification` applies EVENT_IDX only: without
//! it, every completion needs an interrupt, whatever the driver's
//! `VRING_AVAIL_F_NO_INTERRUPT` says (the spec says a device "SHOULD NOT"
//! notify then, so ignoring it is allowed).
//!
//! A malformed chain never stops the device: it is answered with an error
//! status when it has a status byte, completed with used length 0 when it
//! has none, and counted by kind with the first instance kept for the
//! report. Only a broken ring (one the device cannot read or write at all)
//! ends the device, with an error.

use super::blk::{self, Header, Malformed};
use super::{Lifecycle, Memory, Mode};
use rcu_defer::read_lock;
use rcu_defer::virtio::{EventFd, IrqNotifier};
use rcu_defer::vm::GuestMemoryRcu;
use std::fmt;
use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddressSpace, GuestMemory, Permissions};

type Handle = <GuestMemoryRcu<Memory> as GuestAddressSpace>::T;

/// How long the device waits for a kick before it gives up on the driver.
const KICK_LIMIT: Duration = Duration::from_secs(60);
/// The longest chain the device follows (more is malformed).
const MAX_DESCRIPTORS: usize = 64;

fn ring_error(e: virtio_queue::Error) -> String {
    format!("device: ring access failed: {e}")
}

/// A chain the device refused, and where.
#[derive(Clone, Copy, Debug)]
pub struct Rejection {
    pub kind: Malformed,
    what: &'static str,
    head: u16,
    /// The descriptor at fault (address, length), if one is.
    desc: Option<(u64, u32)>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chain at head {}: {}", self.head, self.what)?;
        if let Some((addr, len)) = self.desc {
            write!(f, " (descriptor: {len} bytes at {addr:#x})")?;
        }
        Ok(())
    }
}

/// What the device counted in one run.
#[derive(Clone, Debug, Default)]
pub struct DeviceStats {
    /// Chains put on the used ring.
    pub completions: u64,
    /// Completions for which `needs_notification` said yes.
    pub notified: u64,
    /// Completions for which it said no (EVENT_IDX suppressed them).
    pub suppressed: u64,
    /// Refused chains, by kind.
    pub malformed: [u64; Malformed::COUNT],
    /// The first refused chain of each kind.
    pub first: [Option<Rejection>; Malformed::COUNT],
}

pub struct Device {
    queue: Queue,
    gm: GuestMemoryRcu<Memory>,
    kick: Arc<EventFd>,
    irq: Arc<IrqNotifier<EventFd>>,
    mode: Mode,
    lifecycle: Arc<Lifecycle>,
    /// The current chain's descriptors (reused: no allocation per request).
    descs: Vec<Descriptor>,
    /// The data the device writes (reused likewise).
    scratch: Vec<u8>,
    /// The chains of the current pass that have been served and wait to be
    /// completed: (head, used length) (reused likewise).
    served: Vec<(u16, u32)>,
    /// `--complete-inline`: complete each chain right after serving it.
    inline: bool,
    stats: DeviceStats,
}

impl Device {
    pub fn new(
        queue: Queue,
        gm: GuestMemoryRcu<Memory>,
        kick: Arc<EventFd>,
        irq: Arc<IrqNotifier<EventFd>>,
        mode: Mode,
        inline: bool,
        lifecycle: Arc<Lifecycle>,
    ) -> Device {
        Device {
            queue,
            gm,
            kick,
            irq,
            mode,
            lifecycle,
            descs: Vec::with_capacity(MAX_DESCRIPTORS + 1),
            scratch: vec![0; blk::BLOCK_LEN as usize],
            served: Vec::new(),
            inline,
            stats: DeviceStats::default(),
        }
    }

    /// Serves kicks until the driver is done. On an error the driver is
    /// woken (the irqfd, uncounted) so that it stops too.
    pub fn run(mut self) -> Result<DeviceStats, String> {
        match self.serve_kicks() {
            Ok(()) => Ok(self.stats),
            Err(e) => {
                self.lifecycle.device_failed.store(true, Ordering::Release);
                let _ = self.irq.notifier().signal();
                Err(e)
            }
        }
    }

    fn serve_kicks(&mut self) -> Result<(), String> {
        loop {
            let kicks = self
                .kick
                .wait(Some(KICK_LIMIT))
                .map_err(|e| format!("device: waiting for a kick: {e}"))?;
            if self.lifecycle.driver_done.load(Ordering::Acquire) {
                return Ok(());
            }
            if kicks == 0 {
                return Err(format!(
                    "device: no kick for {} s while the driver is running",
                    KICK_LIMIT.as_secs()
                ));
            }
            self.serve_until_idle()?;
        }
    }

    /// Runs passes until re-enabling kicks finds no chain waiting.
    fn serve_until_idle(&mut self) -> Result<(), String> {
        loop {
            match (self.mode, self.inline) {
                (Mode::Batched, true) => {
                    // One read section around the whole pass: every
                    // `notify` in it is one eventfd write when `_pass` (the
                    // outermost section) ends, before kicks are re-enabled
                    // below.
                    let _pass = read_lock();
                    self.pass()?;
                }
                _ => self.pass()?,
            }
            let mem = self.gm.memory();
            // enable_notification re-reads avail.idx after re-enabling kicks
            // (with a full fence between): true means chains arrived that
            // the driver may not have kicked for, so serve them now.
            if !self.queue.enable_notification(&*mem).map_err(ring_error)? {
                return Ok(());
            }
            // pop_descriptor_chain also returns None for an avail.idx that
            // runs more than a queue ahead; going round again would then
            // spin forever.
            let avail = self
                .queue
                .avail_idx(&*mem, Ordering::Acquire)
                .map_err(ring_error)?;
            let pending = (avail - Wrapping(self.queue.next_avail())).0;
            if pending > self.queue.size() {
                return Err(format!(
                    "device: avail.idx {avail} is {pending} entries ahead of the device, \
                     more than the queue's {}: the ring is broken",
                    self.queue.size()
                ));
            }
        }
    }

    /// One pass, with kicks disabled: serves every available chain, puts it
    /// on the used ring and requests an interrupt if the driver wants one.
    ///
    /// By default in two phases, as a device with an asynchronous backend
    /// (io_uring, Linux AIO) works: first every chain is popped and its
    /// request executed (the backend's part), then the completions are
    /// handed back one after the other; batched, the completion phase is
    /// one read section, so the interrupt goes out when the last completion
    /// of the pass is on the used ring. With `--complete-inline` each chain
    /// is completed right after its own request, and the batched section
    /// spans the whole pass, requests included.
    fn pass(&mut self) -> Result<(), String> {
        if self.inline {
            // A handle is a nested read section: in the batched mode the
            // interrupt goes when both it and the pass's guard are gone.
            let mem = self.gm.memory();
            self.queue.disable_notification(&*mem).map_err(ring_error)?;
            while let Some(chain) = self.queue.pop_descriptor_chain(mem.clone()) {
                let head = chain.head_index();
                let used_len = self.serve(&mem, chain);
                self.complete(&mem, head, used_len)?;
            }
            return Ok(());
        }
        // The requests. The handle (a read section) ends with this block,
        // so in the batched mode the notifications below are not held back
        // by it.
        {
            let mem = self.gm.memory();
            self.queue.disable_notification(&*mem).map_err(ring_error)?;
            while let Some(chain) = self.queue.pop_descriptor_chain(mem.clone()) {
                let head = chain.head_index();
                let used_len = self.serve(&mem, chain);
                self.served.push((head, used_len));
            }
        }
        // The completions: batched, one read section for all of them (the
        // handle would be one too; the explicit guard says what batches).
        let _completions = (self.mode == Mode::Batched).then(read_lock);
        let mem = self.gm.memory();
        let served = std::mem::take(&mut self.served);
        for &(head, used_len) in &served {
            self.complete(&mem, head, used_len)?;
        }
        self.served = served;
        self.served.clear();
        Ok(())
    }

    /// Hands a served chain back on the used ring and interrupts the driver
    /// if it wants to be (`notify_now`, or `notify` in the batched mode).
    fn complete(&mut self, mem: &Handle, head: u16, used_len: u32) -> Result<(), String> {
        if head >= self.queue.size() {
            // Nothing to hand back: add_used would refuse it.
            return Ok(());
        }
        self.queue
            .add_used(&**mem, head, used_len)
            .map_err(ring_error)?;
        self.stats.completions += 1;
        if self.queue.needs_notification(&**mem).map_err(ring_error)? {
            self.stats.notified += 1;
            match self.mode {
                Mode::Unbatched => self.irq.notify_now(),
                Mode::Batched => self.irq.notify(),
            }
        } else {
            self.stats.suppressed += 1;
        }
        Ok(())
    }

    /// Serves one chain; returns the used length (bytes written). A
    /// refused chain is counted and answered as its kind says.
    fn serve(&mut self, mem: &Memory, chain: DescriptorChain<Handle>) -> u32 {
        let head = chain.head_index();
        self.descs.clear();
        self.descs.extend(chain.take(MAX_DESCRIPTORS + 1));
        match execute(mem, head, &self.descs, &mut self.scratch) {
            Ok(used_len) => used_len,
            Err(rejection) => {
                let kind = rejection.kind as usize;
                self.stats.malformed[kind] += 1;
                self.stats.first[kind].get_or_insert(rejection);
                rejection.kind.used_len()
            }
        }
    }
}

/// Checks a request chain and serves it; returns the used length. Every
/// refusal that has a status byte to write has written it.
fn execute(
    mem: &Memory,
    head: u16,
    descs: &[Descriptor],
    scratch: &mut Vec<u8>,
) -> Result<u32, Rejection> {
    let reject = |kind, what, desc: Option<&Descriptor>| Rejection {
        kind,
        what,
        head,
        desc: desc.map(|d| (d.addr().0, d.len())),
    };
    let Some(status) = descs.last() else {
        return Err(reject(
            Malformed::EmptyChain,
            "no descriptor could be read",
            None,
        ));
    };
    if descs.len() > MAX_DESCRIPTORS {
        // Too long to trust the last descriptor as the status.
        return Err(reject(
            Malformed::NoStatus,
            "more descriptors than the device follows",
            None,
        ));
    }
    if !status.is_write_only() || status.len() != 1 {
        return Err(reject(
            Malformed::NoStatus,
            "the last descriptor is not a 1-byte device-writable status",
            Some(status),
        ));
    }
    if !mem.check_range(status.addr(), 1, Permissions::Write) {
        return Err(reject(
            Malformed::StatusOutsideMemory,
            "the status byte is outside guest memory",
            Some(status),
        ));
    }
    let answer = |code: u8| {
        // The range was checked above and the map cannot change under the
        // handle, so this cannot fail; if it did, the status stays unwritten
        // and the driver reports it.
        let _ = mem.write_obj(code, status.addr());
    };
    match read_request(mem, descs, scratch) {
        Ok(data_len) => {
            answer(blk::S_OK);
            Ok(data_len + 1)
        }
        Err((kind, what, desc)) => {
            answer(kind.answer().unwrap_or(blk::S_IOERR));
            Err(reject(kind, what, desc))
        }
    }
}

type Refusal<'a> = (Malformed, &'static str, Option<&'a Descriptor>);

/// Parses the header and fills the data buffers; returns the data length.
fn read_request<'a>(
    mem: &Memory,
    descs: &'a [Descriptor],
    scratch: &mut Vec<u8>,
) -> Result<u32, Refusal<'a>> {
    let [header, data @ .., _status] = descs else {
        return Err((Malformed::BadHeader, "no header descriptor", None));
    };
    if header.is_write_only() {
        return Err((
            Malformed::BadHeader,
            "the header is device-writable",
            Some(header),
        ));
    }
    if header.len() < blk::HEADER_LEN {
        return Err((
            Malformed::BadHeader,
            "the header is shorter than 16 bytes",
            Some(header),
        ));
    }
    let mut bytes = [0; blk::HEADER_LEN as usize];
    if mem.read_slice(&mut bytes, header.addr()).is_err() {
        return Err((
            Malformed::BadHeader,
            "the header is outside guest memory",
            Some(header),
        ));
    }
    let header_fields = Header::decode(&bytes);
    if header_fields.request_type != blk::T_IN {
        return Err((
            Malformed::Unsupported,
            "the request is not a read (VIRTIO_BLK_T_IN)",
            Some(header),
        ));
    }

    let mut data_len = 0u64;
    for d in data {
        if !d.is_write_only() {
            return Err((
                Malformed::BadData,
                "a data buffer is device-readable",
                Some(d),
            ));
        }
        data_len += u64::from(d.len());
    }
    if data.is_empty() || data_len % blk::SECTOR_LEN != 0 || data_len > blk::MAX_DATA_LEN {
        return Err((
            Malformed::BadData,
            "the data is not 1 to 2048 whole sectors",
            data.first(),
        ));
    }
    let offset = header_fields.sector.checked_mul(blk::SECTOR_LEN);
    let end = offset.and_then(|o| o.checked_add(data_len));
    if end.map_or(true, |end| end > blk::DISK_LEN) {
        return Err((
            Malformed::BadHeader,
            "the sectors lie beyond the disk",
            Some(header),
        ));
    }
    for d in data {
        if !mem.check_range(d.addr(), d.len() as usize, Permissions::Write) {
            return Err((
                Malformed::DataOutsideMemory,
                "a data buffer is outside guest memory",
                Some(d),
            ));
        }
    }

    // The request's work: read the sectors into the buffers.
    let mut offset = offset.unwrap_or_default();
    for d in data {
        let len = d.len() as usize;
        if scratch.len() < len {
            scratch.resize(len, 0);
        }
        blk::fill(&mut scratch[..len], offset);
        if mem.write_slice(&scratch[..len], d.addr()).is_err() {
            return Err((
                Malformed::DataOutsideMemory,
                "a data buffer is outside guest memory",
                Some(d),
            ));
        }
        offset += u64::from(d.len());
    }
    Ok(data_len as u32)
}
