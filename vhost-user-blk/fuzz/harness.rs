//! The request-path fuzz harness: turns arbitrary bytes into a virtqueue in
//! guest memory (descriptor tables, indirect tables, request headers, the
//! available ring and its indices, the rings' placement, the queue size,
//! EVENT_IDX and the notification mode), serves it with a `BlkServer`, and
//! checks what the device did.
//!
//! Shared by the cargo-fuzz target (`fuzz_targets/requests.rs`, nightly)
//! and the stable test `vhost-user-blk/tests/fuzz_requests.rs`, which
//! replays the seed corpus and inputs built with [`Builder`].
//!
//! Checks, besides "no panic" (the disk panics on an access beyond it, and
//! vm-memory refuses any access outside guest memory):
//!
//! - every chain the server popped is on the used ring, in order, unless
//!   its head is outside the descriptor table (then there is nothing to
//!   put there); the server's `requests` count matches;
//! - the device wrote guest memory only inside device-writable buffers
//!   named by the descriptor table or an indirect table it refers to, and
//!   in the used ring.
//!
//! The two checks need to know what the device read. They apply to a serve
//! where the device could not change the descriptor table, the indirect
//! tables or the available ring (a chain that reads disk data over them
//! changes what later chains are made of): they overlap neither the used
//! ring nor a device-writable buffer, and the serve left them as they were.
//! Any other serve is only checked for no panic and no hang. The used-ring
//! order check also needs no writable buffer to overlap the used ring.

#![allow(dead_code)] // the fuzz target and the test each use a part

use rcu_defer::virtio::{IrqNotifier, Notify};
use rcu_defer::vm::GuestMemoryRcu;
use std::io;
use std::num::Wrapping;
use std::sync::{Arc, RwLock};
use vhost_user_blk::disk::RamDisk;
use vhost_user_blk::request::{BlkServer, NotifyMode};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type Map = GuestMemoryMmap<()>;

/// Guest memory: two regions with a gap between them, so that buffers can
/// straddle a region's end, lie in the gap or beyond the last region.
pub const REGIONS: [(u64, u64); 2] = [(0, 0x8000), (0x9000, 0x4000)];
/// Addresses the input names compactly lie below this (past the last
/// region, so that some are outside guest memory).
const SPAN: u64 = 0xe000;
/// The default rings, room for the largest queue (1024 entries): the
/// descriptor table at 0, the available ring at 0x4000, the used ring at
/// 0x5000.
const DESC: u64 = 0;
const AVAIL: u64 = 0x4000;
const USED: u64 = 0x5000;
/// The largest queue size (as the backend's `MAX_QUEUE_SIZE`).
const MAX_QUEUE: u16 = 1024;
/// The disk: 64 sectors (32 KiB), so that random sectors often hit it.
pub const DISK_SECTORS: u64 = 64;
/// Where [`Op::Request`] puts headers, data and status bytes: the second
/// region, round-robin, each buffer taking at most [`POOL_SLOT`] bytes
/// (longer ones overlap the buffers after them).
const POOL: (u64, u64) = (0x9000, 0xd000);
const POOL_SLOT: u64 = 0x1000;

/// A `Notify` that only counts.
#[derive(Debug, Default)]
pub struct Count(std::sync::atomic::AtomicU64);

impl Notify for Count {
    fn signal(&self) -> io::Result<()> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// The bytes of an input, read front to back; past the end every read is
/// zero.
struct Input<'a> {
    bytes: &'a [u8],
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&b, rest)) => {
                self.bytes = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// An address: mostly below [`SPAN`], some near a region's end, some
    /// anywhere.
    fn addr(&mut self) -> u64 {
        match self.u8() % 8 {
            0..=5 => u64::from(self.u16()) % SPAN,
            6 => {
                let (start, len) = REGIONS[usize::from(self.u8() % 2)];
                (start + len).wrapping_sub(u64::from(self.u8()))
            }
            _ => self.u64(),
        }
    }

    /// A length: small, whole sectors, or anything.
    fn len(&mut self) -> u32 {
        match self.u8() % 4 {
            0 => u32::from(self.u8()),
            1 => 512 * u32::from(self.u8() % 9),
            2 => u32::from(self.u16()),
            _ => self.u32(),
        }
    }

    /// Descriptor flags: NEXT, WRITE and INDIRECT in any combination, or
    /// any 16 bits.
    fn flags(&mut self) -> u16 {
        let b = self.u8();
        if b & 0x80 != 0 {
            return self.u16();
        }
        let mut flags = 0;
        if b & 1 != 0 {
            flags |= VRING_DESC_F_NEXT;
        }
        if b & 2 != 0 {
            flags |= VRING_DESC_F_WRITE;
        }
        if b & 4 != 0 {
            flags |= VRING_DESC_F_INDIRECT;
        }
        flags as u16
    }

    /// A request type: the served ones, DISCARD, or any 32 bits.
    fn request_type(&mut self) -> u32 {
        match self.u8() % 8 {
            0 | 6 => VIRTIO_BLK_T_IN,
            1 | 7 => VIRTIO_BLK_T_OUT,
            2 => VIRTIO_BLK_T_FLUSH,
            3 => VIRTIO_BLK_T_GET_ID,
            4 => VIRTIO_BLK_T_DISCARD,
            _ => self.u32(),
        }
    }

    /// A sector: mostly on or just past the disk, some anywhere.
    fn sector(&mut self) -> u64 {
        match self.u8() {
            b @ 0..=223 => u64::from(b) % (DISK_SECTORS + 8),
            _ => self.u64(),
        }
    }
}

/// The input's operations, each introduced by one byte (its value modulo
/// 9 picks the operation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Writes one descriptor of the table.
    Descriptor = 0,
    /// Posts a request built from a type, a sector and up to three data
    /// buffers (chained descriptors, buffers from a pool).
    Request = 1,
    /// Puts a head on the available ring and advances `avail.idx`.
    Avail = 2,
    /// Writes a request header at an address.
    Header = 3,
    /// Writes up to 63 bytes at an address.
    Bytes = 4,
    /// Writes up to 7 descriptors at an address (an indirect table).
    Indirect = 5,
    /// Sets `avail.idx` to any value.
    AvailIdx = 6,
    /// Sets `used_event` (read with EVENT_IDX) to any value.
    UsedEvent = 7,
    /// Serves the queue and checks the outcome.
    Serve = 8,
}

/// Descriptor flags as [`Builder`] takes them: (NEXT, WRITE, INDIRECT).
pub type Flags = (bool, bool, bool);
/// A descriptor as [`Builder::indirect`] takes it: address, length, flags,
/// next index.
pub type BuiltDescriptor = (u64, u32, Flags, u16);
/// A range of guest addresses: start, length.
type Range = (u64, u64);

/// Builds inputs for the harness from operations (the seed corpus and the
/// stable tests).
#[derive(Clone, Debug, Default)]
pub struct Builder {
    bytes: Vec<u8>,
}

/// Setup flags of [`Builder::new`].
pub const EVENT_IDX: u8 = 1;
/// Serve in batched mode (otherwise per request).
pub const BATCHED: u8 = 2;
/// Place the rings where the input says (three addresses follow the
/// set-up).
pub const RINGS: u8 = 4;

impl Builder {
    /// An input with a queue of `1 << size_log2` entries, `flags`
    /// ([`EVENT_IDX`], [`BATCHED`]) and the device's indices starting at
    /// `start`.
    pub fn new(size_log2: u8, flags: u8, start: u16) -> Builder {
        let mut b = Builder::default();
        b.bytes.push(size_log2);
        b.bytes.push(flags);
        b.bytes.extend(start.to_le_bytes());
        b
    }

    /// Appends raw bytes.
    pub fn raw(mut self, bytes: &[u8]) -> Builder {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// An address in compact form (`addr` below [`SPAN`]).
    pub fn addr(self, addr: u64) -> Builder {
        assert!(addr < SPAN);
        self.raw(&[0]).raw(&(addr as u16).to_le_bytes())
    }

    /// Any 64-bit address.
    pub fn far_addr(self, addr: u64) -> Builder {
        self.raw(&[7]).raw(&addr.to_le_bytes())
    }

    /// Any 32-bit length.
    pub fn len(self, len: u32) -> Builder {
        self.raw(&[3]).raw(&len.to_le_bytes())
    }

    /// Flags as [`Input::flags`] decodes them: bit 0 NEXT, 1 WRITE, 2
    /// INDIRECT.
    pub fn flags(self, next: bool, write: bool, indirect: bool) -> Builder {
        self.raw(&[u8::from(next) | u8::from(write) << 1 | u8::from(indirect) << 2])
    }

    /// A request type selector (0 IN, 1 OUT, 2 FLUSH, 3 GET_ID, 4
    /// DISCARD, 5 the unknown type 0xdeadbeef).
    pub fn request_type(self, selector: u8) -> Builder {
        let b = self.raw(&[selector]);
        if selector % 8 == 5 {
            b.raw(&0xdead_beef_u32.to_le_bytes())
        } else {
            b
        }
    }

    /// Any 64-bit sector.
    pub fn sector(self, sector: u64) -> Builder {
        self.raw(&[0xff]).raw(&sector.to_le_bytes())
    }

    /// The operation byte.
    pub fn op(self, op: Op) -> Builder {
        self.raw(&[op as u8])
    }

    /// A whole [`Op::Descriptor`].
    pub fn descriptor(self, index: u16, addr: u64, len: u32, flags: Flags, next: u16) -> Builder {
        self.op(Op::Descriptor)
            .raw(&index.to_le_bytes())
            .addr(addr)
            .len(len)
            .flags(flags.0, flags.1, flags.2)
            .raw(&next.to_le_bytes())
    }

    /// A whole [`Op::Request`]: `selector` as [`request_type`](Self::request_type),
    /// data buffers of `lens` bytes (at most three).
    pub fn request(self, selector: u8, sector: u64, lens: &[u32]) -> Builder {
        assert!(lens.len() <= 3);
        let mut b = self
            .op(Op::Request)
            .request_type(selector)
            .sector(sector)
            .raw(&[lens.len() as u8]);
        for &len in lens {
            b = b.len(len);
        }
        b
    }

    /// A whole [`Op::Indirect`]: `descs` (address, length, flags as
    /// [`flags`](Self::flags), next) at `addr` (at most 7).
    pub fn indirect(mut self, addr: u64, descs: &[BuiltDescriptor]) -> Builder {
        assert!(descs.len() < 8);
        self = self.op(Op::Indirect).addr(addr).raw(&[descs.len() as u8]);
        for &(addr, len, (next, write, indirect), next_index) in descs {
            self = self
                .addr(addr)
                .len(len)
                .flags(next, write, indirect)
                .raw(&next_index.to_le_bytes());
        }
        self
    }

    /// A whole [`Op::Header`]: a header of `selector`'s type for `sector`
    /// at `addr`.
    pub fn header(self, addr: u64, selector: u8, sector: u64) -> Builder {
        self.op(Op::Header)
            .addr(addr)
            .request_type(selector)
            .sector(sector)
    }

    /// A whole [`Op::AvailIdx`].
    pub fn avail_idx(self, idx: u16) -> Builder {
        self.op(Op::AvailIdx).raw(&idx.to_le_bytes())
    }

    /// The ring addresses that follow the set-up when [`RINGS`] is set.
    pub fn rings(self, desc: u64, avail: u64, used: u64) -> Builder {
        self.addr(desc).addr(avail).addr(used)
    }

    /// A whole [`Op::Avail`] putting `head` (any value) on the ring.
    pub fn avail(self, head: u16) -> Builder {
        self.op(Op::Avail).raw(&[0xff]).raw(&head.to_le_bytes())
    }

    /// A whole [`Op::Serve`].
    pub fn serve(self) -> Builder {
        self.op(Op::Serve)
    }

    /// The input.
    pub fn build(self) -> Vec<u8> {
        self.bytes
    }
}

/// What the serves of one input did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Serves (one per [`Op::Serve`], and one at the end).
    pub serves: u64,
    /// Serves checked in full (they left the structures the device reads
    /// chains from as they were).
    pub checked: u64,
    /// Chains put on the used ring.
    pub requests: u64,
    /// Of those, the refused ones.
    pub errors: u64,
    /// Serves that ended in a ring error.
    pub ring_errors: u64,
}

/// Guest memory, the disk and a server of each notification mode, reused
/// from input to input (each input starts from zeroed memory and a fresh
/// disk).
pub struct Harness {
    map: Map,
    rcu: GuestMemoryRcu<Map>,
    disk: Arc<RwLock<RamDisk>>,
    per_request: BlkServer,
    batched: BlkServer,
    irq: Arc<IrqNotifier<Count>>,
    summary: Summary,
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

/// The rings' places and the queue size, for the checks.
#[derive(Clone, Copy)]
struct Layout {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

impl Layout {
    fn avail_bytes(&self) -> (u64, u64) {
        (self.avail, 6 + 2 * u64::from(self.size))
    }

    fn used_bytes(&self) -> (u64, u64) {
        (self.used, 6 + 8 * u64::from(self.size))
    }
}

/// Whether `[a, a + alen)` and `[b, b + blen)` overlap (wrapping ranges
/// count up to the end of the address space).
fn overlaps((a, alen): (u64, u64), (b, blen): (u64, u64)) -> bool {
    let a_end = a.saturating_add(alen);
    let b_end = b.saturating_add(blen);
    alen > 0 && blen > 0 && a < b_end && b < a_end
}

impl Harness {
    /// Maps the guest memory ([`REGIONS`]).
    pub fn new() -> Harness {
        let ranges: Vec<(GuestAddress, usize)> = REGIONS
            .iter()
            .map(|&(start, len)| (GuestAddress(start), len as usize))
            .collect();
        let map = Map::from_ranges(&ranges).expect("map the fuzz guest memory");
        let disk = Arc::new(RwLock::new(RamDisk::new(DISK_SECTORS)));
        Harness {
            rcu: GuestMemoryRcu::new(map.clone()),
            map,
            per_request: BlkServer::new(Arc::clone(&disk), NotifyMode::PerRequest),
            batched: BlkServer::new(Arc::clone(&disk), NotifyMode::Batched),
            disk,
            irq: IrqNotifier::new(Count::default()),
            summary: Summary::default(),
        }
    }

    /// A copy of the guest memory.
    fn snapshot(&self) -> Snapshot {
        Snapshot(
            REGIONS
                .iter()
                .map(|&(start, len)| {
                    let mut bytes = vec![0; len as usize];
                    self.map
                        .read_slice(&mut bytes, GuestAddress(start))
                        .expect("read a region");
                    bytes
                })
                .collect(),
        )
    }

    /// Writes `bytes` at `addr`, as much of it as lies in guest memory
    /// (a driver cannot write outside it either).
    fn poke(&self, addr: u64, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            let _ = self
                .map
                .write_obj(b, GuestAddress(addr.wrapping_add(i as u64)));
        }
    }

    /// Runs one input: see the [module documentation](self).
    ///
    /// # Panics
    ///
    /// When the server panics, or a check fails.
    pub fn run(&mut self, bytes: &[u8]) -> Summary {
        self.summary = Summary::default();
        for &(start, len) in &REGIONS {
            self.map
                .write_slice(&ZEROS[..len as usize], GuestAddress(start))
                .expect("zero a region");
        }
        *self.disk.write().unwrap() = RamDisk::new(DISK_SECTORS);
        let mut input = Input { bytes };

        let size = 1u16 << (input.u8() % 11);
        let flags = input.u8();
        let start = input.u16();
        let layout = if flags & RINGS != 0 {
            Layout {
                size,
                desc: input.addr() & !0xf,
                avail: input.addr() & !1,
                used: input.addr() & !3,
            }
        } else {
            Layout {
                size,
                desc: DESC,
                avail: AVAIL,
                used: USED,
            }
        };
        let mut queue = Queue::new(MAX_QUEUE).expect("a queue");
        queue.set_size(size);
        queue
            .try_set_desc_table_address(GuestAddress(layout.desc))
            .expect("aligned");
        queue
            .try_set_avail_ring_address(GuestAddress(layout.avail))
            .expect("aligned");
        queue
            .try_set_used_ring_address(GuestAddress(layout.used))
            .expect("aligned");
        queue.set_event_idx(flags & EVENT_IDX != 0);
        queue.set_next_avail(start);
        queue.set_next_used(start);
        queue.set_ready(true);
        self.poke(layout.avail.wrapping_add(2), &start.to_le_bytes());
        self.poke(layout.used.wrapping_add(2), &start.to_le_bytes());
        let batched = flags & BATCHED != 0;

        // The driver's state: the next avail index it fills, and where
        // Op::Request takes descriptors and buffers from.
        let mut avail_idx = start;
        let mut next_desc = 0u16;
        let mut pool = POOL.0;
        let mut alloc = |len: u64| {
            let len = len.min(POOL_SLOT);
            if pool + len > POOL.1 {
                pool = POOL.0;
            }
            let at = pool;
            pool += (len + 7) & !7;
            at
        };

        while !input.is_empty() {
            let op = input.u8() % 9;
            match op {
                0 => {
                    let index = input.u16() % size;
                    let desc = descriptor(&mut input);
                    self.poke(layout.desc.wrapping_add(16 * u64::from(index)), &desc);
                }
                1 => {
                    let request_type = input.request_type();
                    let sector = input.sector();
                    let header = alloc(16);
                    self.poke(header, &header_bytes(request_type, sector));
                    let device_writes = request_type != VIRTIO_BLK_T_OUT;
                    let mut bufs = vec![(header, 16, false)];
                    for _ in 0..input.u8() % 4 {
                        let len = input.len();
                        bufs.push((alloc(u64::from(len)), len, device_writes));
                    }
                    bufs.push((alloc(1), 1, true));
                    let head = next_desc % size;
                    for (i, &(addr, len, write)) in bufs.iter().enumerate() {
                        let index = next_desc % size;
                        next_desc = next_desc.wrapping_add(1);
                        let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                        if i + 1 < bufs.len() {
                            flags |= VRING_DESC_F_NEXT as u16;
                        }
                        let desc = raw_descriptor(addr, len, flags, next_desc % size);
                        self.poke(layout.desc.wrapping_add(16 * u64::from(index)), &desc);
                    }
                    self.push_avail(&layout, &mut avail_idx, head);
                }
                2 => {
                    let head = match input.u8() {
                        0..=239 => input.u16() % size,
                        _ => input.u16(),
                    };
                    self.push_avail(&layout, &mut avail_idx, head);
                }
                3 => {
                    let addr = input.addr();
                    let request_type = input.request_type();
                    let sector = input.sector();
                    self.poke(addr, &header_bytes(request_type, sector));
                }
                4 => {
                    let addr = input.addr();
                    let bytes: Vec<u8> = (0..input.u8() % 64).map(|_| input.u8()).collect();
                    self.poke(addr, &bytes);
                }
                5 => {
                    let addr = input.addr();
                    for i in 0..u64::from(input.u8() % 8) {
                        let desc = descriptor(&mut input);
                        self.poke(addr.wrapping_add(16 * i), &desc);
                    }
                }
                6 => {
                    avail_idx = input.u16();
                    self.poke(layout.avail.wrapping_add(2), &avail_idx.to_le_bytes());
                }
                7 => {
                    let event = input.u16();
                    self.poke(
                        layout.avail.wrapping_add(4 + 2 * u64::from(size)),
                        &event.to_le_bytes(),
                    );
                }
                _ => self.serve(&mut queue, &layout, batched),
            }
        }
        self.serve(&mut queue, &layout, batched);
        self.summary
    }

    fn push_avail(&self, layout: &Layout, avail_idx: &mut u16, head: u16) {
        let slot = u64::from(*avail_idx % layout.size);
        self.poke(layout.avail.wrapping_add(4 + 2 * slot), &head.to_le_bytes());
        *avail_idx = avail_idx.wrapping_add(1);
        self.poke(layout.avail.wrapping_add(2), &avail_idx.to_le_bytes());
    }

    /// The structures the device reads chains from: the descriptor table,
    /// the indirect tables it refers to, and the available ring; and the
    /// device-writable buffers they name.
    fn read_side(&self, memory: &Snapshot, layout: &Layout) -> (Vec<Range>, Vec<Range>) {
        let mut tables = vec![
            (layout.desc, 16 * u64::from(layout.size)),
            layout.avail_bytes(),
        ];
        let mut writable = Vec::new();
        let read_desc = |at: u64| -> Option<(u64, u32, u16)> {
            let raw = memory.bytes(at, 16)?;
            let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(raw[8..12].try_into().unwrap());
            let flags = u16::from_le_bytes([raw[12], raw[13]]);
            Some((addr, len, flags))
        };
        for i in 0..u64::from(layout.size) {
            let Some((addr, len, flags)) = read_desc(layout.desc.wrapping_add(16 * i)) else {
                continue;
            };
            if flags & VRING_DESC_F_WRITE as u16 != 0 {
                writable.push((addr, u64::from(len)));
            }
            if flags & VRING_DESC_F_INDIRECT as u16 != 0
                && !tables.contains(&(addr, u64::from(len)))
            {
                tables.push((addr, u64::from(len)));
                for j in 0..u64::from(len / 16).min(u64::from(u16::MAX) + 1) {
                    let Some((addr, len, flags)) = read_desc(addr.wrapping_add(16 * j)) else {
                        break;
                    };
                    if flags & VRING_DESC_F_WRITE as u16 != 0 {
                        writable.push((addr, u64::from(len)));
                    }
                }
            }
        }
        (tables, writable)
    }

    /// Serves the queue and checks the outcome.
    fn serve(&mut self, queue: &mut Queue, layout: &Layout, batched: bool) {
        let before = self.snapshot();
        let (tables, writable) = self.read_side(&before, layout);
        let next_avail = queue.next_avail();
        let next_used = queue.next_used();
        let server = if batched {
            &mut self.batched
        } else {
            &mut self.per_request
        };
        let stats = server.stats();
        // A ring error ends the serve (the rings are broken); what matters
        // is what happened before it.
        let ring_error = server.serve_queue(queue, &self.rcu, &self.irq).is_err();
        let requests = server.stats().requests - stats.requests;
        self.summary.serves += 1;
        self.summary.requests += requests;
        self.summary.errors += server.stats().errors - stats.errors;
        self.summary.ring_errors += u64::from(ring_error);
        let after = self.snapshot();

        let consumed = (Wrapping(queue.next_avail()) - Wrapping(next_avail)).0;
        let added = (Wrapping(queue.next_used()) - Wrapping(next_used)).0;
        // A used ring that breaks off between an entry and the index takes
        // the entry, not the count (the serve ends in a ring error).
        assert!(
            u64::from(added) == requests || ring_error && u64::from(added) == requests + 1,
            "the device's used index moved by {added}, the server counted {requests} requests"
        );

        // Which bytes of guest memory changed.
        let mut changed = Vec::new();
        for (r, (old, new)) in before.0.iter().zip(&after.0).enumerate() {
            for (c, (old, new)) in old.chunks(64).zip(new.chunks(64)).enumerate() {
                if old == new {
                    continue;
                }
                for (i, (o, n)) in old.iter().zip(new).enumerate() {
                    if o != n {
                        changed.push(REGIONS[r].0 + (64 * c + i) as u64);
                    }
                }
            }
        }
        // A device write into them may also have been undone before the
        // serve ended (used.flags over an available ring entry, set while
        // popping and cleared after), so any overlap counts.
        let self_modifying = tables.iter().any(|&t| {
            overlaps(t, layout.used_bytes())
                || writable.iter().any(|&w| overlaps(t, w))
                || changed.iter().any(|&at| overlaps(t, (at, 1)))
        });
        if self_modifying {
            return;
        }
        assert!(
            usize::from(consumed) <= usize::from(layout.size),
            "{consumed} chains popped from a queue of {}",
            layout.size
        );
        // The heads popped, as the available ring held them.
        let served: Vec<u16> = (0..consumed)
            .map(|i| {
                let slot = u64::from(next_avail.wrapping_add(i) % layout.size);
                let at = layout.avail.wrapping_add(4 + 2 * slot);
                let head = before.bytes(at, 2).expect("a head the server popped");
                u16::from_le_bytes([head[0], head[1]])
            })
            .filter(|&head| head < layout.size)
            .collect();
        // A ring error may come from the used ring after a chain was
        // popped: it stays unanswered, as the ring cannot take it.
        assert!(
            usize::from(added) == served.len() || ring_error && usize::from(added) < served.len(),
            "{consumed} chains popped, {} with a head in the table, {added} put on the used ring",
            served.len()
        );
        for &at in &changed {
            assert!(
                overlaps(layout.used_bytes(), (at, 1))
                    || writable.iter().any(|&w| overlaps(w, (at, 1))),
                "the device wrote guest memory at {at:#x}, outside every device-writable \
                 buffer and the used ring"
            );
        }
        self.summary.checked += 1;
        if writable.iter().any(|&w| overlaps(w, layout.used_bytes())) {
            return;
        }
        for (i, &head) in served.iter().take(usize::from(added)).enumerate() {
            let slot = u64::from(next_used.wrapping_add(i as u16) % layout.size);
            let id: u32 = self
                .map
                .read_obj(GuestAddress(layout.used.wrapping_add(4 + 8 * slot)))
                .expect("the used ring was written");
            assert_eq!(
                id,
                u32::from(head),
                "used entry {i} of the serve is not the {i}-th chain popped"
            );
        }
    }
}

/// Zeros to clear a region with.
static ZEROS: [u8; 0x8000] = [0; 0x8000];

/// A copy of the guest memory, region by region ([`REGIONS`]).
struct Snapshot(Vec<Vec<u8>>);

impl Snapshot {
    /// The `len` bytes at `addr`, if they lie in one region.
    fn bytes(&self, addr: u64, len: u64) -> Option<&[u8]> {
        REGIONS
            .iter()
            .zip(&self.0)
            .find_map(|(&(start, size), bytes)| {
                let offset = addr.checked_sub(start)?;
                let end = offset.checked_add(len)?;
                (end <= size).then(|| &bytes[offset as usize..end as usize])
            })
    }
}

fn header_bytes(request_type: u32, sector: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[0..4].copy_from_slice(&request_type.to_le_bytes());
    bytes[8..16].copy_from_slice(&sector.to_le_bytes());
    bytes
}

fn raw_descriptor(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[0..8].copy_from_slice(&addr.to_le_bytes());
    bytes[8..12].copy_from_slice(&len.to_le_bytes());
    bytes[12..14].copy_from_slice(&flags.to_le_bytes());
    bytes[14..16].copy_from_slice(&next.to_le_bytes());
    bytes
}

/// A descriptor from the input: address, length, flags, next index.
fn descriptor(input: &mut Input<'_>) -> [u8; 16] {
    let addr = input.addr();
    let len = input.len();
    let flags = input.flags();
    let next = input.u16();
    raw_descriptor(addr, len, flags, next)
}
