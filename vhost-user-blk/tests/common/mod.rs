//! A driver side for the tests: posts virtio-blk requests on a split
//! virtqueue laid out by `virtio_queue::mock`, in guest memory that the
//! device reads through a `GuestMemoryRcu` over the same regions.

#![allow(dead_code)] // each test file uses a part

use rcu_defer::virtio::{IrqNotifier, Notify};
use rcu_defer::vm::GuestMemoryRcu;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::{Descriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub type Map = GuestMemoryMmap<()>;

/// Guest memory: 16 MiB from 0 (queue `i`'s rings at `i * RING_SPAN`,
/// buffers from 1 MiB), in two regions that meet at `REGION_SPLIT`.
pub const MEM_LEN: u64 = 16 << 20;
/// Where the second region of guest memory begins: in the last MiB, which
/// no queue's buffers use, so that a test can place a buffer across it.
pub const REGION_SPLIT: u64 = MEM_LEN - (512 << 10);
/// Where request headers, data and status bytes go: queue 0's buffers from
/// here to `EXTRA_BUFFERS`, queue `i`'s (for `i` from 1) the `i`-th MiB
/// from there.
pub const BUFFERS: u64 = 1 << 20;
/// Where the buffers of the queues after the first begin.
pub const EXTRA_BUFFERS: u64 = 8 << 20;
/// Guest memory for one queue's rings.
pub const RING_SPAN: u64 = 64 << 10;
/// The most queues a test map holds.
pub const MAX_TEST_QUEUES: u16 = 8;
/// An address outside guest memory.
pub const OUTSIDE: u64 = 1 << 40;
pub const QUEUE_SIZE: u16 = 256;

/// A `Notify` that counts its signals.
#[derive(Debug, Default)]
pub struct Counter(pub AtomicU64);

impl Notify for Counter {
    fn signal(&self) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// One descriptor of a chain being posted: address, length, device-writable.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

pub fn readable(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: false,
    }
}

pub fn writable(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: true,
    }
}

/// A request as the driver posted it: where its parts are.
#[derive(Clone, Debug)]
pub struct Posted {
    pub head: u16,
    pub status: u64,
    pub data: Vec<(u64, u32)>,
}

pub struct Driver {
    /// Leaked, so that the mock queue can borrow it for the test's length
    /// (a `MockSplitQueue` zeroes its rings when created, so there must be
    /// only one).
    pub map: &'static Map,
    pub mock: MockSplitQueue<'static, Map>,
    pub rcu: GuestMemoryRcu<Map>,
    /// The next free descriptor-table slot.
    next_desc: u16,
    /// The next free buffer address.
    next_buf: u64,
    /// The end of this queue's buffer space.
    buf_end: u64,
    /// The next used-ring entry to read.
    next_used: u16,
}

impl Driver {
    pub fn new() -> Driver {
        let map: &'static Map = Box::leak(Box::new(
            Map::from_ranges(&[
                (GuestAddress(0), REGION_SPLIT as usize),
                (
                    GuestAddress(REGION_SPLIT),
                    (MEM_LEN - REGION_SPLIT) as usize,
                ),
            ])
            .unwrap(),
        ));
        let rcu = GuestMemoryRcu::new(map.clone());
        Driver {
            map,
            mock: MockSplitQueue::new(map, QUEUE_SIZE),
            rcu,
            next_desc: 0,
            next_buf: BUFFERS,
            buf_end: EXTRA_BUFFERS,
            next_used: 0,
        }
    }

    /// The driver of queue `index` (1 to 7) of the same device: its rings
    /// and buffers in the same guest memory, apart from the others'.
    pub fn queue_driver(&self, index: u16) -> Driver {
        assert!((1..MAX_TEST_QUEUES).contains(&index));
        let buffers = EXTRA_BUFFERS + u64::from(index - 1) * (1 << 20);
        Driver {
            map: self.map,
            mock: MockSplitQueue::create(
                self.map,
                GuestAddress(u64::from(index) * RING_SPAN),
                QUEUE_SIZE,
            ),
            rcu: GuestMemoryRcu::new(self.map.clone()),
            next_desc: 0,
            next_buf: buffers,
            buf_end: buffers + (1 << 20),
            next_used: 0,
        }
    }

    pub fn queue(&self) -> Queue {
        self.mock.create_queue().unwrap()
    }

    /// Reserves `len` bytes of buffer space, 8-aligned.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next_buf;
        self.next_buf += (len + 7) & !7;
        assert!(self.next_buf <= self.buf_end, "out of test buffer space");
        at
    }

    /// A header for `request_type` at `sector`, in guest memory.
    pub fn header(&mut self, request_type: u32, sector: u64) -> u64 {
        let at = self.alloc(16);
        let mut bytes = [0u8; 16];
        bytes[0..4].copy_from_slice(&request_type.to_le_bytes());
        bytes[8..16].copy_from_slice(&sector.to_le_bytes());
        self.map.write_slice(&bytes, GuestAddress(at)).unwrap();
        at
    }

    /// A status byte preset to 0xff (no device writes that).
    pub fn status(&mut self) -> u64 {
        let at = self.alloc(1);
        self.map.write_obj(0xffu8, GuestAddress(at)).unwrap();
        at
    }

    /// Posts a chain of `bufs` on the available ring; returns its head.
    pub fn post_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut flags = if b.write { VRING_DESC_F_WRITE } else { 0 } as u16;
                if i + 1 < bufs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(Descriptor::new(b.addr, b.len, flags, head + i as u16 + 1))
            })
            .collect();
        self.mock.add_desc_chains(&descs, head).unwrap();
        self.next_desc += bufs.len() as u16;
        head
    }

    /// Posts a chain whose one descriptor refers to an indirect table
    /// holding `bufs`.
    pub fn post_indirect(&mut self, bufs: &[Buf]) -> u16 {
        let table = self.alloc(16 * bufs.len() as u64);
        for (i, b) in bufs.iter().enumerate() {
            let mut flags = if b.write { VRING_DESC_F_WRITE } else { 0 } as u16;
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let raw = RawDescriptor::from(Descriptor::new(b.addr, b.len, flags, i as u16 + 1));
            self.map
                .write_obj(raw, GuestAddress(table + 16 * i as u64))
                .unwrap();
        }
        let head = self.post_chain(&[readable(table, 16 * bufs.len() as u32)]);
        let indirect = Descriptor::new(
            table,
            16 * bufs.len() as u32,
            VRING_DESC_F_INDIRECT as u16,
            0,
        );
        self.mock
            .desc_table()
            .store(head, RawDescriptor::from(indirect))
            .unwrap();
        head
    }

    /// Posts a well-formed request of `request_type` at `sector` with
    /// data buffers of `lens` bytes (device-writable for reads and GET_ID).
    pub fn post(&mut self, request_type: u32, sector: u64, lens: &[u32]) -> Posted {
        let header = self.header(request_type, sector);
        let write = request_type != virtio_bindings::virtio_blk::VIRTIO_BLK_T_OUT;
        let data: Vec<(u64, u32)> = lens
            .iter()
            .map(|&len| (self.alloc(u64::from(len)), len))
            .collect();
        let status = self.status();
        let mut bufs = vec![readable(header, 16)];
        bufs.extend(data.iter().map(|&(addr, len)| Buf { addr, len, write }));
        bufs.push(writable(status, 1));
        let head = self.post_chain(&bufs);
        Posted { head, status, data }
    }

    pub fn status_of(&self, posted: &Posted) -> u8 {
        self.map.read_obj(GuestAddress(posted.status)).unwrap()
    }

    pub fn bytes(&self, addr: u64, len: u32) -> Vec<u8> {
        let mut buf = vec![0; len as usize];
        self.map.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    /// The data of a request, its buffers concatenated.
    pub fn data_of(&self, posted: &Posted) -> Vec<u8> {
        posted
            .data
            .iter()
            .flat_map(|&(addr, len)| self.bytes(addr, len))
            .collect()
    }

    /// The used-ring entries the device added since the last call.
    pub fn take_used(&mut self) -> Vec<(u16, u32)> {
        let idx = self.mock.used().idx().load();
        let mut entries = Vec::new();
        while self.next_used != idx {
            let elem: VirtqUsedElem = self
                .mock
                .used()
                .ring()
                .ref_at(usize::from(self.next_used % QUEUE_SIZE))
                .unwrap()
                .load();
            entries.push((elem.id() as u16, elem.len()));
            self.next_used = self.next_used.wrapping_add(1);
        }
        entries
    }

    /// Sets the avail ring's `used_event` (read by the device with
    /// EVENT_IDX).
    pub fn set_used_event(&self, value: u16) {
        let at = self.mock.avail_addr().0 + 4 + 2 * u64::from(QUEUE_SIZE);
        self.map.write_obj(value, GuestAddress(at)).unwrap();
    }

    /// Sets the avail ring's index directly (to break the ring).
    pub fn set_avail_idx(&self, value: u16) {
        self.map
            .write_obj(value, GuestAddress(self.mock.avail_addr().0 + 2))
            .unwrap();
    }
}

/// The word the disk pattern holds at byte `offset`.
pub fn pattern_at(offset: u64) -> u64 {
    offset
}

/// Checks that `data` is the disk pattern from byte `offset` on.
pub fn assert_pattern(data: &[u8], offset: u64) {
    for (i, word) in data.chunks_exact(8).enumerate() {
        let found = u64::from_le_bytes(word.try_into().unwrap());
        let at = offset + 8 * i as u64;
        assert_eq!(found, pattern_at(at), "word at disk byte {at}");
    }
}

/// A notifier over a counting `Notify`.
pub fn counting_notifier() -> Arc<IrqNotifier<Counter>> {
    IrqNotifier::new(Counter::default())
}
