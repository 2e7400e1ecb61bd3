//! The RAM disk the backend serves.
//!
//! A sector never written reads as a known pattern, so that a reader can
//! check any sector without having written it: every 8-byte word holds its
//! own byte offset on the disk as a little-endian `u64`. The word at byte
//! `o` (a multiple of 8) of sector `S` is `S * 512 + o`. Written data is
//! kept in 4 KiB pages allocated on first write (a page starts as the
//! pattern), so a 256 MiB disk costs memory only for what the guest wrote.

use std::collections::HashMap;

/// Bytes in a sector: the unit of request offsets and of the capacity.
pub const SECTOR_SIZE: u64 = 512;

/// Bytes in a page of stored data.
const PAGE_SIZE: usize = 4096;

/// The pattern's word at byte `offset` of the disk (`offset` a multiple of
/// 8): the offset itself.
pub fn pattern_word(offset: u64) -> u64 {
    offset
}

/// Fills `buf` with the pattern of the disk bytes from `offset` on.
pub fn fill_pattern(buf: &mut [u8], offset: u64) {
    if offset % 8 == 0 {
        let mut words = buf.chunks_exact_mut(8);
        let mut at = offset;
        for word in &mut words {
            word.copy_from_slice(&pattern_word(at).to_le_bytes());
            at += 8;
        }
        let tail = words.into_remainder();
        let len = tail.len();
        tail.copy_from_slice(&pattern_word(at).to_le_bytes()[..len]);
    } else {
        for (i, byte) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            *byte = pattern_word(at & !7).to_le_bytes()[(at % 8) as usize];
        }
    }
}

/// A sparse disk in memory: the pattern, overlaid with what was written.
#[derive(Debug)]
pub struct RamDisk {
    len: u64,
    /// Written pages, by page number.
    pages: HashMap<u64, Box<[u8; PAGE_SIZE]>>,
}

impl RamDisk {
    /// A disk of `sectors` sectors, all reading as the pattern.
    pub fn new(sectors: u64) -> RamDisk {
        RamDisk {
            len: sectors.saturating_mul(SECTOR_SIZE),
            pages: HashMap::new(),
        }
    }

    /// The capacity in sectors.
    pub fn sectors(&self) -> u64 {
        self.len / SECTOR_SIZE
    }

    /// Whether `len` bytes from byte `offset` lie on the disk.
    pub fn contains(&self, offset: u64, len: u64) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.len)
    }

    /// Reads `buf.len()` bytes from byte `offset`.
    ///
    /// # Panics
    ///
    /// If the range is not on the disk ([`contains`](Self::contains) is the
    /// caller's check).
    pub fn read(&self, offset: u64, buf: &mut [u8]) {
        assert!(
            self.contains(offset, buf.len() as u64),
            "read beyond the disk"
        );
        let mut at = offset;
        let mut done = 0;
        while done < buf.len() {
            let in_page = (at % PAGE_SIZE as u64) as usize;
            let n = (PAGE_SIZE - in_page).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match self.pages.get(&(at / PAGE_SIZE as u64)) {
                Some(page) => out.copy_from_slice(&page[in_page..in_page + n]),
                None => fill_pattern(out, at),
            }
            at += n as u64;
            done += n;
        }
    }

    /// Writes `data` at byte `offset`.
    ///
    /// # Panics
    ///
    /// If the range is not on the disk ([`contains`](Self::contains) is the
    /// caller's check).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        assert!(
            self.contains(offset, data.len() as u64),
            "write beyond the disk"
        );
        let mut at = offset;
        let mut done = 0;
        while done < data.len() {
            let number = at / PAGE_SIZE as u64;
            let in_page = (at % PAGE_SIZE as u64) as usize;
            let n = (PAGE_SIZE - in_page).min(data.len() - done);
            let page = self.pages.entry(number).or_insert_with(|| {
                let mut page = Box::new([0; PAGE_SIZE]);
                fill_pattern(&mut page[..], number * PAGE_SIZE as u64);
                page
            });
            page[in_page..in_page + n].copy_from_slice(&data[done..done + n]);
            at += n as u64;
            done += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(buf: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(buf[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn unwritten_sectors_read_as_their_offsets() {
        let disk = RamDisk::new(16);
        let mut buf = vec![0; 1024];
        disk.read(3 * SECTOR_SIZE, &mut buf);
        assert_eq!(word(&buf, 0), 3 * 512);
        assert_eq!(word(&buf, 8), 3 * 512 + 8);
        assert_eq!(word(&buf, 1016), 4 * 512 + 504);
    }

    #[test]
    fn unaligned_pattern_matches_the_aligned_one() {
        let mut aligned = vec![0; 64];
        fill_pattern(&mut aligned, 4096);
        let mut odd = vec![0; 61];
        fill_pattern(&mut odd, 4096 + 3);
        assert_eq!(&aligned[3..], &odd[..]);
        let mut short = vec![0; 13];
        fill_pattern(&mut short, 4096);
        assert_eq!(&aligned[..13], &short[..]);
    }

    #[test]
    fn writes_read_back_across_pages_and_keep_the_pattern_around_them() {
        let mut disk = RamDisk::new(64);
        let data: Vec<u8> = (0..3000).map(|i| (i % 251) as u8).collect();
        disk.write(4096 - 1000, &data);
        let mut back = vec![0; 3000];
        disk.read(4096 - 1000, &mut back);
        assert_eq!(back, data);
        let mut before = vec![0; 8];
        disk.read(4096 - 1008, &mut before);
        assert_eq!(word(&before, 0), 4096 - 1008);
        let mut after = vec![0; 8];
        disk.read(4096 + 2000, &mut after);
        assert_eq!(word(&after, 0), 4096 + 2000);
    }

    #[test]
    fn contains_checks_the_end_and_overflow() {
        let disk = RamDisk::new(8);
        assert_eq!(disk.sectors(), 8);
        assert!(disk.contains(0, 4096));
        assert!(!disk.contains(512, 4096));
        assert!(!disk.contains(u64::MAX, 2));
    }
}
