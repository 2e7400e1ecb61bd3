//! One libblkio queue and the memory it does I/O from. This module holds
//! all of the crate's `unsafe` code: slices over libblkio's memory region,
//! the completions `do_io` fills in, and a duplicate of the queue's
//! completion fd.

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// A request that completed: the slot it used, and libblkio's result (0,
/// or a negative errno).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    /// The slot the request was submitted from.
    pub slot: usize,
    /// 0 on success, a negative errno on failure.
    pub ret: i32,
}

/// A libblkio queue with a memory region of `slots` buffers of `slot_len`
/// bytes, one per request in flight.
///
/// A slot's buffer can be looked at ([`slot`](Self::slot),
/// [`slot_mut`](Self::slot_mut)) only while no request of it is in flight;
/// those calls panic otherwise. The region belongs to the queue: it stays
/// mapped in this process while the `QueueIo` lives (libblkio frees its
/// allocated regions when the `Blkio` and all its queues are gone, and this
/// type keeps the queue).
pub struct QueueIo {
    queue: Blkioq,
    region: MemoryRegion,
    slot_len: usize,
    slots: usize,
    in_flight: Vec<bool>,
    completions: Vec<MaybeUninit<Completion>>,
}

impl QueueIo {
    /// Takes `queue` and gives it a region of `slots` buffers of
    /// `slot_len` bytes, allocated and mapped (the backend gets it with
    /// `ADD_MEM_REG`, or in its memory table) through `blkio`, the queue's
    /// instance.
    ///
    /// # Errors
    ///
    /// libblkio cannot allocate or map the region.
    pub fn new(
        blkio: &mut Blkio,
        queue: Blkioq,
        slots: usize,
        slot_len: usize,
    ) -> blkio::Result<QueueIo> {
        let region = map_region(blkio, slots * slot_len)?;
        Ok(QueueIo {
            queue,
            region,
            slot_len,
            slots,
            in_flight: vec![false; slots],
            completions: (0..slots).map(|_| MaybeUninit::uninit()).collect(),
        })
    }

    /// The number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Whether a request of `slot` is in flight.
    pub fn in_flight(&self, slot: usize) -> bool {
        self.in_flight[slot]
    }

    /// Moves the slots to a new region: allocates and maps it (the backend
    /// gets an `ADD_MEM_REG`), then unmaps and frees the old one
    /// (`REM_MEM_REG`). The slots' contents are not carried over.
    ///
    /// # Errors
    ///
    /// libblkio cannot allocate or map the new region; the old one is kept.
    ///
    /// # Panics
    ///
    /// If a request is in flight.
    pub fn remap(&mut self, blkio: &mut Blkio) -> blkio::Result<()> {
        assert!(
            !self.in_flight.contains(&true),
            "remap with requests in flight"
        );
        let new = map_region(blkio, self.slots * self.slot_len)?;
        let old = std::mem::replace(&mut self.region, new);
        blkio.unmap_mem_region(&old);
        // No slot refers to the old region any more, and no request is in
        // flight on it.
        blkio.free_mem_region(&old);
        Ok(())
    }

    /// The address of `slot`'s buffer.
    fn slot_ptr(&self, slot: usize) -> *mut u8 {
        assert!(slot < self.slots, "slot {slot} of {}", self.slots);
        (self.region.addr + slot * self.slot_len) as *mut u8
    }

    /// `slot`'s buffer.
    ///
    /// # Panics
    ///
    /// If a request of `slot` is in flight, or there is no such slot.
    pub fn slot(&self, slot: usize) -> &[u8] {
        let ptr = self.slot_ptr(slot);
        assert!(!self.in_flight[slot], "slot {slot} is in flight");
        // SAFETY: `ptr` is the start of `slot_len` bytes inside the region
        // (slot < slots, and the region holds slots * slot_len bytes),
        // which libblkio mapped readable and writable in this process
        // (alloc_mem_region mmaps a memfd) and which stays mapped while
        // `self.queue` lives (see the type's documentation; the region is
        // freed only by `remap`, after `self.region` has moved off it). No
        // request of ours is in flight on the slot, so the device does not
        // write it, and the submitting methods take `&mut self`, so none
        // can start while the returned borrow of `self` lasts. Any byte
        // value is a valid `u8`.
        unsafe { std::slice::from_raw_parts(ptr, self.slot_len) }
    }

    /// `slot`'s buffer, to fill before a write.
    ///
    /// # Panics
    ///
    /// If a request of `slot` is in flight, or there is no such slot.
    pub fn slot_mut(&mut self, slot: usize) -> &mut [u8] {
        let ptr = self.slot_ptr(slot);
        assert!(!self.in_flight[slot], "slot {slot} is in flight");
        // SAFETY: as in `slot`; the borrow is exclusive because it borrows
        // `self` mutably, and slots do not overlap.
        unsafe { std::slice::from_raw_parts_mut(ptr, self.slot_len) }
    }

    /// Submits a read of `slot_len` bytes at byte `offset` of the device
    /// into `slot`'s buffer (sent to the device at the next
    /// [`do_io`](Self::do_io)).
    ///
    /// # Panics
    ///
    /// If a request of `slot` is in flight.
    pub fn read(&mut self, slot: usize, offset: u64) {
        let ptr = self.start(slot);
        self.queue
            .read(offset, ptr, self.slot_len, slot, ReqFlags::empty());
    }

    /// Submits a write of `slot`'s buffer to byte `offset` of the device.
    ///
    /// # Panics
    ///
    /// If a request of `slot` is in flight.
    pub fn write(&mut self, slot: usize, offset: u64) {
        let ptr = self.start(slot);
        self.queue
            .write(offset, ptr, self.slot_len, slot, ReqFlags::empty());
    }

    fn start(&mut self, slot: usize) -> *mut u8 {
        let ptr = self.slot_ptr(slot);
        assert!(!self.in_flight[slot], "slot {slot} is already in flight");
        self.in_flight[slot] = true;
        ptr
    }

    /// Submits what was queued and appends the requests that completed to
    /// `done`, without waiting; returns how many completed.
    ///
    /// # Errors
    ///
    /// libblkio's, e.g. when the device has gone away.
    pub fn do_io(&mut self, done: &mut Vec<Done>) -> blkio::Result<usize> {
        let n = self.queue.do_io(&mut self.completions, 0, None, None)?;
        for completion in &self.completions[..n] {
            // SAFETY: `do_io` returns how many entries it filled in, and
            // fills them from the first on (libblkio writes each one with
            // `as_mut_ptr().write` before counting it). `Completion` is
            // plain data: reading it through a shared reference moves
            // nothing out.
            let completion = unsafe { completion.assume_init_ref() };
            let slot = completion.user_data;
            if let Some(flag) = self.in_flight.get_mut(slot) {
                *flag = false;
            }
            done.push(Done {
                slot,
                ret: completion.ret,
            });
        }
        Ok(n)
    }

    /// Enables (or disables) the queue's completion fd: enabled, the device
    /// signals it as completions need (it is the vring's call eventfd);
    /// disabled, the driver asks the device not to signal.
    pub fn set_completion_fd_enabled(&mut self, enabled: bool) {
        self.queue.set_completion_fd_enabled(enabled);
    }

    /// A duplicate of the queue's completion fd, to sleep on.
    ///
    /// # Errors
    ///
    /// The queue has no completion fd (a poll queue), or it cannot be
    /// duplicated.
    pub fn completion_fd(&self) -> io::Result<CompletionFd> {
        let Some(raw) = self.queue.get_completion_fd() else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the queue has no completion fd",
            ));
        };
        // SAFETY: `raw` is the completion eventfd that the queue owns (an
        // `Arc<EventFd>` inside libblkio's queue) and keeps open while it
        // lives; it is borrowed only for the `dup` below, while `self`,
        // and so the queue, is borrowed.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) }.try_clone_to_owned()?;
        Ok(CompletionFd(fd))
    }
}

/// Allocates and maps a region of at least `len` bytes (rounded up to the
/// driver's `mem-region-alignment`).
fn map_region(blkio: &mut Blkio, len: usize) -> blkio::Result<MemoryRegion> {
    let align = usize::try_from(blkio.get_u64("mem-region-alignment")?)
        .unwrap_or(4096)
        .max(1);
    let len = len.div_ceil(align).max(1) * align;
    let region = blkio.alloc_mem_region(len)?;
    if let Err(e) = blkio.map_mem_region(&region) {
        blkio.free_mem_region(&region);
        return Err(e);
    }
    Ok(region)
}

/// A duplicate of a queue's completion fd (an eventfd): sleeping on it
/// until the device signals is a guest driver's wait for its interrupt.
#[derive(Debug)]
pub struct CompletionFd(OwnedFd);

impl CompletionFd {
    /// Sleeps in poll(2) until the eventfd is signalled, then resets it
    /// (reads its counter).
    ///
    /// # Errors
    ///
    /// poll(2) or read(2) fails (other than EINTR and EAGAIN).
    pub fn wait(&self) -> io::Result<()> {
        loop {
            let mut fds = [PollFd::new(&self.0, PollFlags::IN)];
            match poll(&mut fds, None) {
                Ok(_) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let mut counter = [0u8; 8];
        match rustix::io::read(self.0.as_fd(), &mut counter) {
            // libblkio made the eventfd non-blocking: EAGAIN means another
            // reader reset it first.
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
