//! The guest: a virtio-blk driver for one split virtqueue, written against
//! the virtio 1.x specification, section 2.7 "Split Virtqueues", and driving
//! the ring the way Linux's `virtio_ring.c` and `virtio_blk.c` do.
//!
//! # Ring layout (spec 2.7, "Virtqueue Alignment" and 2.7.5-2.7.8)
//!
//! Queue size `Q` (a power of two), all fields little-endian:
//!
//! ```text
//! descriptor table  align 16  Q x { le64 addr; le32 len; le16 flags; le16 next; }   16 bytes each
//! available ring    align 2   le16 flags; le16 idx; le16 ring[Q]; le16 used_event;
//! used ring         align 4   le16 flags; le16 idx; { le32 id; le32 len; } ring[Q]; le16 avail_event;
//! ```
//!
//! `flags` of a descriptor: `VRING_DESC_F_NEXT` (the chain goes on at
//! `next`), `VRING_DESC_F_WRITE` (device-writable). Each request takes the
//! three descriptors of its slot `s`: `3s` the header (device-readable),
//! `3s + 1` the data buffer (device-writable), `3s + 2` the status byte
//! (device-writable); its head, the id the device hands back, is `3s`.
//!
//! # Memory-ordering rules (named where they are used)
//!
//! - **R1, publish** (2.7.13.3.1): the descriptors and the available ring
//!   entry are written before `avail.idx` is; the driver "MUST perform a
//!   suitable memory barrier before the idx update". Here: a Release store
//!   of `avail.idx` (the device reads it with Acquire).
//! - **R2, kick** (2.7.13.4.1): the driver "MUST perform a suitable memory
//!   barrier before reading flags or avail_event, to avoid missing a
//!   notification": a full (SeqCst) fence between the `avail.idx` store and
//!   the read of the device's suppression field. It pairs with the device's
//!   full fence between writing `avail_event` (or clearing
//!   `VRING_USED_F_NO_NOTIFY`) and re-reading `avail.idx`
//!   (virtio-queue's `enable_notification`): one side always sees the other.
//! - **R3, reap** (2.7.14): `used.idx` is read with Acquire, so the used
//!   elements below it, and what the device wrote into the buffers, are
//!   read after it and are complete (Linux: `virtio_rmb` after the index).
//! - **R4, re-enable interrupts** (2.7.10 and the sample driver of 2.7.14):
//!   write `used_event` (or clear `VRING_AVAIL_F_NO_INTERRUPT`), a full
//!   fence, then read `used.idx` again before sleeping, so that a completion
//!   published before the device could see the new `used_event` is not
//!   slept through. It pairs with the device's full fence between storing
//!   `used.idx` and reading `used_event` (virtio-queue's
//!   `needs_notification`).
//!
//! # Notification suppression
//!
//! Kicks (driver to device, through the ioeventfd): with
//! `VIRTIO_F_EVENT_IDX` the driver kicks only when the new `avail.idx`
//! passes `avail_event` ([`vring_need_event`]); without it, only when the
//! device has not set `VRING_USED_F_NO_NOTIFY` in `used.flags`.
//!
//! Interrupts (device to driver, through the irqfd): with EVENT_IDX the
//! driver sets `used_event` to the last used index it has seen before it
//! sleeps (as Linux's `virtqueue_enable_cb` does) and leaves it behind
//! while it reaps, so that only the first completion after it sleeps
//! interrupts it; `avail.flags` stays 0, as the spec requires then.
//! Without EVENT_IDX it sets `VRING_AVAIL_F_NO_INTERRUPT` while it reaps
//! and clears it before sleeping (Linux's `virtqueue_disable_cb`).
//!
//! Every completion is checked: the used element names a request in
//! flight, its length is what the device must have written, the status
//! byte is `VIRTIO_BLK_S_OK` and the data is the disk's contents at the
//! request's sector; a malformed chain posted on purpose must come back
//! with exactly the answer the device gives that kind. Anything else ends
//! the run with a message naming the request.

use super::blk::{self, Header, Malformed};
use super::{Lifecycle, Memory};
use rcu_defer::virtio::{vring_need_event, EventFd, IrqNotifier};
use rcu_defer::vm::GuestMemoryRcu;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};

/// How long the driver waits for an interrupt while requests are in flight
/// before it declares a completion or an interrupt lost.
const INTERRUPT_LIMIT: Duration = Duration::from_secs(10);

/// Bytes of one descriptor in the table.
const DESC_LEN: u64 = 16;
/// Descriptors per request.
const DESCS_PER_REQUEST: u16 = 3;
const PAGE: u64 = 4096;

fn align_up(addr: u64, align: u64) -> u64 {
    addr.div_ceil(align) * align
}

/// Where the driver puts the ring and the request buffers in guest memory
/// (the addresses a real driver writes to the device's queue registers).
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Requests in flight, one slot each.
    pub depth: u16,
    /// Ring entries: a power of two holding every slot's 3 descriptors.
    pub queue_size: u16,
    pub desc_table: GuestAddress,
    pub avail_ring: GuestAddress,
    pub used_ring: GuestAddress,
    headers: u64,
    statuses: u64,
    data: u64,
    /// Bytes of guest memory the layout needs (from address 0).
    pub memory_len: u64,
}

impl Layout {
    /// The largest `depth` (so that `3 * depth` descriptors fit a queue of
    /// at most 32768 entries, and the data buffers 16 MiB).
    pub const MAX_DEPTH: u16 = 4096;

    pub fn new(depth: u16) -> Layout {
        assert!((1..=Layout::MAX_DEPTH).contains(&depth));
        let queue_size = (depth * DESCS_PER_REQUEST).next_power_of_two().max(4);
        let q = u64::from(queue_size);
        // Page 0 stays unused: virtio-queue takes a ring at guest address 0
        // for one that was never set.
        let desc_table = PAGE;
        let avail_ring = align_up(desc_table + DESC_LEN * q, PAGE);
        let used_ring = align_up(avail_ring + 6 + 2 * q, PAGE);
        let headers = align_up(used_ring + 6 + 8 * q, PAGE);
        let statuses = headers + u64::from(blk::HEADER_LEN) * u64::from(depth);
        let data = align_up(statuses + u64::from(depth), PAGE);
        let memory_len = align_up(data + u64::from(blk::BLOCK_LEN) * u64::from(depth), PAGE);
        Layout {
            depth,
            queue_size,
            desc_table: GuestAddress(desc_table),
            avail_ring: GuestAddress(avail_ring),
            used_ring: GuestAddress(used_ring),
            headers,
            statuses,
            data,
            memory_len,
        }
    }

    fn desc(&self, index: u16) -> GuestAddress {
        GuestAddress(self.desc_table.0 + DESC_LEN * u64::from(index))
    }

    fn avail_flags(&self) -> GuestAddress {
        self.avail_ring
    }

    fn avail_idx(&self) -> GuestAddress {
        GuestAddress(self.avail_ring.0 + 2)
    }

    fn avail_entry(&self, idx: Wrapping<u16>) -> GuestAddress {
        GuestAddress(self.avail_ring.0 + 4 + 2 * u64::from(idx.0 % self.queue_size))
    }

    fn used_event(&self) -> GuestAddress {
        GuestAddress(self.avail_ring.0 + 4 + 2 * u64::from(self.queue_size))
    }

    fn used_flags(&self) -> GuestAddress {
        self.used_ring
    }

    fn used_idx(&self) -> GuestAddress {
        GuestAddress(self.used_ring.0 + 2)
    }

    fn used_elem(&self, idx: Wrapping<u16>) -> GuestAddress {
        GuestAddress(self.used_ring.0 + 4 + 8 * u64::from(idx.0 % self.queue_size))
    }

    fn avail_event(&self) -> GuestAddress {
        GuestAddress(self.used_ring.0 + 4 + 8 * u64::from(self.queue_size))
    }

    fn header(&self, slot: u16) -> GuestAddress {
        GuestAddress(self.headers + u64::from(blk::HEADER_LEN) * u64::from(slot))
    }

    fn status(&self, slot: u16) -> GuestAddress {
        GuestAddress(self.statuses + u64::from(slot))
    }

    fn data(&self, slot: u16) -> GuestAddress {
        GuestAddress(self.data + u64::from(blk::BLOCK_LEN) * u64::from(slot))
    }

    /// An address no guest memory covers, for malformed chains.
    fn outside(&self) -> GuestAddress {
        GuestAddress(self.memory_len + (1 << 30))
    }
}

/// One 16-byte descriptor, encoded as the table holds it.
fn descriptor(addr: GuestAddress, len: u32, flags: u32, next: u16) -> [u8; DESC_LEN as usize] {
    let mut bytes = [0; DESC_LEN as usize];
    bytes[0..8].copy_from_slice(&addr.0.to_le_bytes());
    bytes[8..12].copy_from_slice(&len.to_le_bytes());
    bytes[12..14].copy_from_slice(&(flags as u16).to_le_bytes());
    bytes[14..16].copy_from_slice(&next.to_le_bytes());
    bytes
}

/// What the driver counted in one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct DriverStats {
    pub completions: u64,
    /// Returns from the wait on the irqfd (one per interrupt delivered,
    /// however many signals it had gathered).
    pub wakeups: u64,
    /// ioeventfd writes.
    pub kicks: u64,
    /// Malformed chains posted on purpose, by kind.
    pub malformed: [u64; Malformed::COUNT],
    /// From the first request posted to the last completion checked.
    pub elapsed: Duration,
}

/// A request the device holds.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    /// 0, 1, 2, ... in posting order; request `seq` reads sector
    /// `seq * 8`, so every request reads different data.
    seq: u64,
    /// `Some` for a chain malformed on purpose.
    fault: Option<Malformed>,
}

impl InFlight {
    fn sector(&self) -> u64 {
        self.seq * (u64::from(blk::BLOCK_LEN) / blk::SECTOR_LEN)
    }
}

type Handle = <GuestMemoryRcu<Memory> as GuestAddressSpace>::T;

pub struct Driver {
    gm: GuestMemoryRcu<Memory>,
    layout: Layout,
    irq: Arc<IrqNotifier<EventFd>>,
    kick: Arc<EventFd>,
    lifecycle: Arc<Lifecycle>,
    event_idx: bool,
    /// Every `bad_every`-th request is malformed (0: none).
    bad_every: u64,
    /// Per slot, the request it holds.
    slots: Vec<Option<InFlight>>,
    free: Vec<u16>,
    /// The driver's copy of `avail.idx`.
    avail_idx: Wrapping<u16>,
    /// Entries made available since the last kick decision.
    num_added: u16,
    /// The used ring entries seen so far.
    last_used: Wrapping<u16>,
    next_seq: u64,
    scratch: Vec<u8>,
    stats: DriverStats,
}

/// Ends the device's wait when the driver returns, whatever it returns.
struct TellDeviceOnExit<'a> {
    lifecycle: &'a Lifecycle,
    kick: &'a EventFd,
}

impl Drop for TellDeviceOnExit<'_> {
    fn drop(&mut self) {
        self.lifecycle.driver_done.store(true, Ordering::Release);
        // The eventfd write orders the store before the device's read.
        let _ = self.kick.signal();
    }
}

impl Driver {
    pub fn new(
        gm: GuestMemoryRcu<Memory>,
        layout: Layout,
        irq: Arc<IrqNotifier<EventFd>>,
        kick: Arc<EventFd>,
        lifecycle: Arc<Lifecycle>,
        event_idx: bool,
        bad_every: u64,
    ) -> Driver {
        Driver {
            gm,
            layout,
            irq,
            kick,
            lifecycle,
            event_idx,
            bad_every,
            slots: vec![None; usize::from(layout.depth)],
            // Popped from the end: slot 0 first.
            free: (0..layout.depth).rev().collect(),
            avail_idx: Wrapping(0),
            num_added: 0,
            last_used: Wrapping(0),
            next_seq: 0,
            scratch: vec![0; blk::BLOCK_LEN as usize],
            stats: DriverStats::default(),
        }
    }

    /// Completes `total` requests, `depth` in flight, checking each.
    pub fn run(mut self, total: u64) -> Result<DriverStats, String> {
        let lifecycle = Arc::clone(&self.lifecycle);
        let kick = Arc::clone(&self.kick);
        let _tell = TellDeviceOnExit {
            lifecycle: &lifecycle,
            kick: &kick,
        };
        self.initialize_rings()?;
        let start = Instant::now();
        {
            let mem = self.gm.memory();
            self.post_while_room(&mem, total)?;
            self.publish_and_kick(&mem)?;
        }
        loop {
            let sleep = {
                // A handle is a read section: it must be gone before the
                // wait below, which may block.
                let mem = self.gm.memory();
                self.disable_interrupts(&mem)?;
                self.reap(&mem)?;
                if self.stats.completions == total {
                    break;
                }
                self.post_while_room(&mem, total)?;
                self.publish_and_kick(&mem)?;
                !self.enable_interrupts(&mem)?
            };
            if sleep {
                self.sleep()?;
            }
        }
        self.stats.elapsed = start.elapsed();
        Ok(self.stats)
    }

    /// Lays out empty rings: every field the device reads starts at 0
    /// (guest memory is zeroed, but a driver writes what it relies on).
    fn initialize_rings(&mut self) -> Result<(), String> {
        let mem = self.gm.memory();
        let l = self.layout;
        let zero = |addr: GuestAddress, what: &str| {
            mem.write_obj(0u16, addr)
                .map_err(|e| format!("driver: cannot initialize {what}: {e}"))
        };
        zero(l.avail_flags(), "avail.flags")?;
        zero(l.avail_idx(), "avail.idx")?;
        zero(l.used_event(), "used_event")?;
        zero(l.used_flags(), "used.flags")?;
        zero(l.used_idx(), "used.idx")?;
        zero(l.avail_event(), "avail_event")?;
        Ok(())
    }

    /// Posts requests into free slots until `total` have been posted.
    fn post_while_room(&mut self, mem: &Handle, total: u64) -> Result<(), String> {
        while self.next_seq < total {
            let Some(slot) = self.free.pop() else {
                break;
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            let fault =
                (self.bad_every > 0 && seq % self.bad_every == self.bad_every - 1).then(|| {
                    Malformed::POSTED[(seq / self.bad_every) as usize % Malformed::POSTED.len()]
                });
            let request = InFlight { seq, fault };
            self.write_request(mem, slot, request)
                .map_err(|e| format!("driver: cannot write request {seq}: {e}"))?;
            self.slots[usize::from(slot)] = Some(request);
            if let Some(kind) = fault {
                self.stats.malformed[kind as usize] += 1;
            }
        }
        Ok(())
    }

    /// Writes the buffers and descriptors of `request` into `slot` and puts
    /// its head on the available ring (not yet published: see R1).
    fn write_request(
        &mut self,
        mem: &Handle,
        slot: u16,
        request: InFlight,
    ) -> Result<(), vm_memory::GuestMemoryError> {
        let l = self.layout;
        let header = Header {
            request_type: blk::T_IN,
            sector: request.sector(),
        };
        mem.write_slice(&header.encode(), l.header(slot))?;
        mem.write_obj(blk::S_UNWRITTEN, l.status(slot))?;

        let head = slot * DESCS_PER_REQUEST;
        let mut header_flags = VRING_DESC_F_NEXT;
        let mut data_addr = l.data(slot);
        let mut data_flags = VRING_DESC_F_NEXT | VRING_DESC_F_WRITE;
        match request.fault {
            None => {}
            Some(Malformed::DataOutsideMemory) => data_addr = l.outside(),
            Some(Malformed::BadHeader) => header_flags |= VRING_DESC_F_WRITE,
            // The chain ends at the data buffer.
            Some(Malformed::NoStatus) => data_flags = VRING_DESC_F_WRITE,
            Some(other) => unreachable!("the driver does not post {other:?}"),
        }
        let mut table = [0; 3 * DESC_LEN as usize];
        table[0..16].copy_from_slice(&descriptor(
            l.header(slot),
            blk::HEADER_LEN,
            header_flags,
            head + 1,
        ));
        table[16..32].copy_from_slice(&descriptor(data_addr, blk::BLOCK_LEN, data_flags, head + 2));
        table[32..48].copy_from_slice(&descriptor(l.status(slot), 1, VRING_DESC_F_WRITE, 0));
        mem.write_slice(&table, l.desc(head))?;

        mem.write_obj(head.to_le(), l.avail_entry(self.avail_idx))?;
        self.avail_idx += 1;
        self.num_added += 1;
        Ok(())
    }

    /// Publishes the new available entries and kicks the device if its
    /// suppression field asks for it.
    fn publish_and_kick(&mut self, mem: &Handle) -> Result<(), String> {
        if self.num_added == 0 {
            return Ok(());
        }
        let l = self.layout;
        let ring = |e: vm_memory::GuestMemoryError| format!("driver: ring access failed: {e}");
        // R1: Release, so the descriptors, buffers and ring entries written
        // above are visible to a device that reads this index with Acquire.
        mem.store(self.avail_idx.0.to_le(), l.avail_idx(), Ordering::Release)
            .map_err(ring)?;
        // R2: the index store before the read of avail_event / used.flags.
        fence(Ordering::SeqCst);
        let new = self.avail_idx.0;
        let old = new.wrapping_sub(self.num_added);
        self.num_added = 0;
        let needed = if self.event_idx {
            let avail_event =
                u16::from_le(mem.load(l.avail_event(), Ordering::Relaxed).map_err(ring)?);
            vring_need_event(avail_event, new, old)
        } else {
            let flags = u16::from_le(mem.load(l.used_flags(), Ordering::Relaxed).map_err(ring)?);
            flags & VRING_USED_F_NO_NOTIFY as u16 == 0
        };
        if needed {
            self.kick
                .signal()
                .map_err(|e| format!("driver: kick failed: {e}"))?;
            self.stats.kicks += 1;
        }
        Ok(())
    }

    /// Asks the device not to interrupt while the driver reaps.
    fn disable_interrupts(&mut self, mem: &Handle) -> Result<(), String> {
        // With EVENT_IDX, used_event already lies behind the used entries
        // still to come (it was set to last_used before sleeping), which
        // suppresses them; avail.flags must stay 0.
        if !self.event_idx {
            mem.store(
                (VRING_AVAIL_F_NO_INTERRUPT as u16).to_le(),
                self.layout.avail_flags(),
                Ordering::Relaxed,
            )
            .map_err(|e| format!("driver: ring access failed: {e}"))?;
        }
        Ok(())
    }

    /// Asks for an interrupt at the next completion; returns whether used
    /// entries arrived meanwhile (then the driver reaps instead of sleeping).
    fn enable_interrupts(&mut self, mem: &Handle) -> Result<bool, String> {
        let l = self.layout;
        let ring = |e: vm_memory::GuestMemoryError| format!("driver: ring access failed: {e}");
        if self.event_idx {
            mem.store(self.last_used.0.to_le(), l.used_event(), Ordering::Relaxed)
                .map_err(ring)?;
        } else {
            mem.store(0u16, l.avail_flags(), Ordering::Relaxed)
                .map_err(ring)?;
        }
        // R4: the used_event / flags store before the re-read of used.idx.
        fence(Ordering::SeqCst);
        let used = u16::from_le(mem.load(l.used_idx(), Ordering::Relaxed).map_err(ring)?);
        Ok(used != self.last_used.0)
    }

    /// Waits for an interrupt (the irqfd), then reads the ISR as a guest's
    /// interrupt handler does.
    fn sleep(&mut self) -> Result<(), String> {
        let signals = self
            .irq
            .notifier()
            .wait(Some(INTERRUPT_LIMIT))
            .map_err(|e| format!("driver: waiting for an interrupt: {e}"))?;
        if self.lifecycle.device_failed.load(Ordering::Acquire) {
            return Err("driver: the device stopped with an error".to_owned());
        }
        if signals == 0 {
            return Err(self.lost());
        }
        self.stats.wakeups += 1;
        self.irq.take_isr();
        Ok(())
    }

    /// Describes what went missing when no interrupt came.
    fn lost(&self) -> String {
        let in_flight = self.slots.iter().flatten().count();
        let oldest = self.slots.iter().flatten().map(|r| r.seq).min();
        let used = self
            .gm
            .memory()
            .load::<u16>(self.layout.used_idx(), Ordering::Acquire)
            .map(u16::from_le);
        let what = match used {
            Ok(used) if used != self.last_used.0 => format!(
                "an interrupt was lost: used.idx is {used} but the driver has seen {} \
                 entries and was not interrupted",
                self.last_used
            ),
            _ => format!(
                "completions were lost: {in_flight} requests in flight were not completed \
                 (oldest: request {})",
                oldest.map_or_else(|| "none".to_owned(), |s| s.to_string())
            ),
        };
        format!(
            "driver: no interrupt for {} s after {} completions; {what}",
            INTERRUPT_LIMIT.as_secs(),
            self.stats.completions
        )
    }

    /// Takes every used entry the device has published and checks each.
    fn reap(&mut self, mem: &Handle) -> Result<(), String> {
        let l = self.layout;
        let ring = |e: vm_memory::GuestMemoryError| format!("driver: ring access failed: {e}");
        // R3: Acquire, so the used elements and the buffers the device
        // wrote before publishing this index are read after it.
        let used = Wrapping(u16::from_le(
            mem.load(l.used_idx(), Ordering::Acquire).map_err(ring)?,
        ));
        let new = (used - self.last_used).0;
        let in_flight = self.slots.iter().flatten().count();
        if usize::from(new) > in_flight {
            return Err(format!(
                "driver: the device moved used.idx from {} to {} ({new} entries) with only \
                 {in_flight} requests in flight: duplicated or invented completions",
                self.last_used, used
            ));
        }
        while self.last_used != used {
            let addr = l.used_elem(self.last_used);
            let id = u32::from_le(mem.read_obj(addr).map_err(ring)?);
            let len = u32::from_le(mem.read_obj(GuestAddress(addr.0 + 4)).map_err(ring)?);
            self.complete(mem, self.last_used, id, len)?;
            self.last_used += 1;
        }
        Ok(())
    }

    /// Checks one completion and frees its slot.
    fn complete(
        &mut self,
        mem: &Handle,
        at: Wrapping<u16>,
        id: u32,
        len: u32,
    ) -> Result<(), String> {
        let l = self.layout;
        let slot = (id % u32::from(DESCS_PER_REQUEST) == 0)
            .then(|| id / u32::from(DESCS_PER_REQUEST))
            .and_then(|slot| u16::try_from(slot).ok())
            .filter(|&slot| slot < l.depth);
        let Some(request) = slot.and_then(|slot| self.slots[usize::from(slot)].take()) else {
            return Err(format!(
                "driver: used ring entry {at} names descriptor {id}, which is not the head \
                 of a request in flight: a duplicated or invented completion"
            ));
        };
        let slot = slot.expect("a request was found in it");
        self.free.push(slot);
        self.stats.completions += 1;

        let name = || {
            format!(
                "request {} (sector {}, slot {slot}, used ring entry {at}{})",
                request.seq,
                request.sector(),
                request.fault.map_or_else(String::new, |f| format!(
                    ", malformed on purpose: {}",
                    f.name()
                ))
            )
        };
        let status: u8 = mem
            .read_obj(l.status(slot))
            .map_err(|e| format!("driver: cannot read the status of {}: {e}", name()))?;
        let (want_status, want_len) = match request.fault {
            None => (blk::S_OK, blk::BLOCK_LEN + 1),
            Some(kind) => (kind.answer().unwrap_or(blk::S_UNWRITTEN), kind.used_len()),
        };
        if status == blk::S_UNWRITTEN && want_status != blk::S_UNWRITTEN {
            return Err(format!(
                "driver: {} completed with its status byte never written: completed \
                 before it was served",
                name()
            ));
        }
        if status != want_status {
            return Err(format!(
                "driver: {} completed with status {}, expected {}",
                name(),
                blk::status_name(status),
                blk::status_name(want_status)
            ));
        }
        if len != want_len {
            return Err(format!(
                "driver: {} completed with used length {len}, expected {want_len}",
                name()
            ));
        }
        if request.fault.is_none() {
            mem.read_slice(&mut self.scratch, l.data(slot))
                .map_err(|e| format!("driver: cannot read the data of {}: {e}", name()))?;
            if let Err(m) = blk::check(&self.scratch, request.sector() * blk::SECTOR_LEN) {
                return Err(format!(
                    "driver: {} has wrong data: byte {} holds {:#018x}, the disk {:#018x}",
                    name(),
                    m.at,
                    m.found,
                    m.expected
                ));
            }
        }
        Ok(())
    }
}
