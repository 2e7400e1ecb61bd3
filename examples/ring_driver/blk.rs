//! The virtio-blk request both sides agree on (virtio 1.x section 5.2.6,
//! "Device Operation"), the disk contents the device serves, and the ways a
//! request chain can be malformed.
//!
//! A request is one descriptor chain: a 16-byte header the device reads
//! (`le32 type`, `le32 reserved`, `le64 sector`), then the data buffers,
//! then one status byte the device writes last. Only reads
//! (`VIRTIO_BLK_T_IN`) are served: the device fills the data buffers from
//! the disk, writes `VIRTIO_BLK_S_OK`, and reports the bytes it wrote
//! (data + status) as the used length.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_IN,
};

/// Bytes in a request header.
pub const HEADER_LEN: u32 = 16;
/// Bytes in a sector, the unit of `sector` and of data lengths.
pub const SECTOR_LEN: u64 = 512;
/// Bytes each request of the driver reads: one 4 KiB page.
pub const BLOCK_LEN: u32 = 4096;
/// The largest data length the device serves in one request.
pub const MAX_DATA_LEN: u64 = 1 << 20;
/// The disk's size in bytes (its contents are computed, not stored).
pub const DISK_LEN: u64 = 1 << 60;

pub const T_IN: u32 = VIRTIO_BLK_T_IN;
pub const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
pub const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
pub const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
/// What the driver puts in the status byte before posting a request: no
/// device writes it, so finding it after a completion means the device
/// never answered that request.
pub const S_UNWRITTEN: u8 = 0xff;

/// A status byte's name, for messages.
pub fn status_name(status: u8) -> String {
    match status {
        S_OK => "VIRTIO_BLK_S_OK".to_owned(),
        S_IOERR => "VIRTIO_BLK_S_IOERR".to_owned(),
        S_UNSUPP => "VIRTIO_BLK_S_UNSUPP".to_owned(),
        S_UNWRITTEN => "0xff (never written)".to_owned(),
        other => format!("{other:#04x}"),
    }
}

/// A request header (`struct virtio_blk_outhdr`), little-endian in guest
/// memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub request_type: u32,
    pub sector: u64,
}

impl Header {
    pub fn encode(self) -> [u8; HEADER_LEN as usize] {
        let mut bytes = [0; HEADER_LEN as usize];
        bytes[0..4].copy_from_slice(&self.request_type.to_le_bytes());
        // bytes[4..8]: `reserved` (formerly `ioprio`), zero.
        bytes[8..16].copy_from_slice(&self.sector.to_le_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8; HEADER_LEN as usize]) -> Header {
        let mut request_type = [0; 4];
        request_type.copy_from_slice(&bytes[0..4]);
        let mut sector = [0; 8];
        sector.copy_from_slice(&bytes[8..16]);
        Header {
            request_type: u32::from_le_bytes(request_type),
            sector: u64::from_le_bytes(sector),
        }
    }
}

/// The disk's contents: the little-endian word at byte `8 * word`. The odd
/// multiplier makes it a bijection, so no two words of the disk are equal
/// and data from the wrong sector (or a stale buffer) never passes a check.
pub fn disk_word(word: u64) -> u64 {
    word.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x0123_4567_89ab_cdef
}

/// Fills `buf` with the disk's contents from byte `offset` on.
pub fn fill(buf: &mut [u8], offset: u64) {
    if offset % 8 == 0 && buf.len() % 8 == 0 {
        // Whole words: the common case (a page-sized buffer).
        let first = offset / 8;
        for (i, word) in buf.chunks_exact_mut(8).enumerate() {
            word.copy_from_slice(&disk_word(first + i as u64).to_le_bytes());
        }
    } else {
        // A buffer of a chain split at an odd byte.
        for (i, byte) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            *byte = disk_word(at / 8).to_le_bytes()[(at % 8) as usize];
        }
    }
}

/// A word of a data buffer that is not what the disk holds there.
#[derive(Debug)]
pub struct Mismatch {
    /// Byte offset in the buffer.
    pub at: usize,
    pub found: u64,
    pub expected: u64,
}

/// Checks that `buf` holds the disk's contents from byte `offset` on.
pub fn check(buf: &[u8], offset: u64) -> Result<(), Mismatch> {
    let first = offset / 8;
    for (i, word) in buf.chunks_exact(8).enumerate() {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        let found = u64::from_le_bytes(bytes);
        let expected = disk_word(first + i as u64);
        if found != expected {
            return Err(Mismatch {
                at: i * 8,
                found,
                expected,
            });
        }
    }
    Ok(())
}

/// Why the device refused a request chain. The device counts each kind;
/// the driver posts some on purpose (`--bad-every`) and expects exactly
/// those counts back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// No descriptor of the chain could be read (its head is outside the
    /// descriptor table).
    EmptyChain,
    /// The last descriptor is not a 1-byte device-writable status buffer.
    NoStatus,
    /// The status byte is outside guest memory.
    StatusOutsideMemory,
    /// The header is missing, device-writable, shorter than 16 bytes,
    /// outside guest memory, or names sectors beyond the disk.
    BadHeader,
    /// A request type other than `VIRTIO_BLK_T_IN`.
    Unsupported,
    /// No data buffer, a device-readable one, or a length that is not a
    /// whole number of sectors (or is over `MAX_DATA_LEN`).
    BadData,
    /// A data buffer outside guest memory.
    DataOutsideMemory,
}

impl Malformed {
    pub const COUNT: usize = 7;
    pub const ALL: [Malformed; Malformed::COUNT] = [
        Malformed::EmptyChain,
        Malformed::NoStatus,
        Malformed::StatusOutsideMemory,
        Malformed::BadHeader,
        Malformed::Unsupported,
        Malformed::BadData,
        Malformed::DataOutsideMemory,
    ];
    /// The kinds the driver posts with `--bad-every`, in turn.
    pub const POSTED: [Malformed; 3] = [
        Malformed::DataOutsideMemory,
        Malformed::BadHeader,
        Malformed::NoStatus,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Malformed::EmptyChain => "empty chain",
            Malformed::NoStatus => "no status descriptor",
            Malformed::StatusOutsideMemory => "status byte outside guest memory",
            Malformed::BadHeader => "bad header",
            Malformed::Unsupported => "unsupported request type",
            Malformed::BadData => "bad data buffer",
            Malformed::DataOutsideMemory => "data buffer outside guest memory",
        }
    }

    /// The status byte the device answers with, or `None` when it has no
    /// status byte to write; the used length is 1 (the status byte) or 0.
    pub fn answer(self) -> Option<u8> {
        match self {
            Malformed::EmptyChain | Malformed::NoStatus | Malformed::StatusOutsideMemory => None,
            Malformed::Unsupported => Some(S_UNSUPP),
            Malformed::BadHeader | Malformed::BadData | Malformed::DataOutsideMemory => {
                Some(S_IOERR)
            }
        }
    }

    pub fn used_len(self) -> u32 {
        u32::from(self.answer().is_some())
    }
}
