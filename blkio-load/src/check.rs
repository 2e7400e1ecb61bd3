//! What a block should hold, and the checks of what a read returned.
//!
//! A block never written reads as the vhost-user-blk backend's RAM-disk
//! pattern ([`vhost_user_blk::disk::pattern_word`]: every 8-byte word
//! holds its own byte offset on the disk). A block this generator writes
//! holds, in its word at disk byte `o`, `mix(o) ^ key`, where `mix` is a
//! multiplication by an odd constant (so a block read from the wrong
//! offset does not fit any key) and `key` carries [`WRITE_TAG`] in its top
//! 16 bits and a per-write number below. A read of a block that this run
//! wrote must return exactly the last write; a read of a block it did not
//! write may return the pattern or any earlier run's write (the backend's
//! disk lives as long as its process), as long as every word fits one
//! tagged key.

use std::fmt;
use vhost_user_blk::disk::pattern_word;

/// The top 16 bits of every write's key.
pub const WRITE_TAG: u64 = 0xb10c << 48;
/// The bits of a key that hold [`WRITE_TAG`].
pub const TAG_MASK: u64 = 0xffff << 48;

/// How reads are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Against the backend's pattern and this run's writes; every write is
    /// read back.
    Pattern,
    /// Every read must return zeros (a peer such as qemu-storage-daemon's
    /// `null-co` driver with `read-zeroes=on`, which drops writes); writes
    /// are not read back.
    Zeroes,
    /// Nothing is checked; writes are not read back.
    None,
}

impl Verify {
    /// The command-line spelling: `pattern`, `zeroes` or `none`.
    pub fn name(self) -> &'static str {
        match self {
            Verify::Pattern => "pattern",
            Verify::Zeroes => "zeroes",
            Verify::None => "none",
        }
    }
}

/// A word of a read that does not hold what it should.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The disk byte offset of the word.
    pub offset: u64,
    /// What the word holds.
    pub found: u64,
    /// What it should hold.
    pub expected: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the word at disk offset {} holds {:#018x}, not {}",
            self.offset, self.found, self.expected
        )
    }
}

/// Spreads a disk offset over the word (a bijection: odd multiplier).
fn mix(offset: u64) -> u64 {
    offset.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The key of write number `n` of a run (`n` below 2^48).
pub fn write_key(n: u64) -> u64 {
    WRITE_TAG | (n & !TAG_MASK)
}

/// Fills `buf` with what a write with `key` puts at disk byte `offset`.
pub fn fill_written(buf: &mut [u8], offset: u64, key: u64) {
    for (i, word) in buf.chunks_exact_mut(8).enumerate() {
        let at = offset + 8 * i as u64;
        word.copy_from_slice(&(mix(at) ^ key).to_le_bytes());
    }
}

fn words(buf: &[u8], offset: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    buf.chunks_exact(8).enumerate().map(move |(i, word)| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        (offset + 8 * i as u64, u64::from_le_bytes(bytes))
    })
}

/// Checks that `buf`, read from disk byte `offset`, is exactly the pattern
/// (`key` `None`) or the write with `key`.
///
/// # Errors
///
/// The first word that differs.
pub fn check_exact(buf: &[u8], offset: u64, key: Option<u64>) -> Result<(), Mismatch> {
    for (at, found) in words(buf, offset) {
        let expected = match key {
            None => pattern_word(at),
            Some(key) => mix(at) ^ key,
        };
        if found != expected {
            return Err(Mismatch {
                offset: at,
                found,
                expected: match key {
                    None => format!("the pattern's {expected:#018x}"),
                    Some(key) => format!("{expected:#018x} of the write with key {key:#018x}"),
                },
            });
        }
    }
    Ok(())
}

/// Checks that `buf`, read from disk byte `offset` of a block this run has
/// not written, is the pattern or one write (any tagged key) throughout.
///
/// # Errors
///
/// The first word that fits neither.
pub fn check_unwritten(buf: &[u8], offset: u64) -> Result<(), Mismatch> {
    let Some((_, first)) = words(buf, offset).next() else {
        return Ok(());
    };
    if first == pattern_word(offset) {
        return check_exact(buf, offset, None);
    }
    let key = first ^ mix(offset);
    if key & TAG_MASK != WRITE_TAG {
        return Err(Mismatch {
            offset,
            found: first,
            expected: format!(
                "the pattern's {:#018x} or a word of a write",
                pattern_word(offset)
            ),
        });
    }
    check_exact(buf, offset, Some(key))
}

/// Checks that `buf`, read from disk byte `offset`, is all zeros.
///
/// # Errors
///
/// The first word that is not.
pub fn check_zeroes(buf: &[u8], offset: u64) -> Result<(), Mismatch> {
    match words(buf, offset).find(|&(_, word)| word != 0) {
        None => Ok(()),
        Some((at, found)) => Err(Mismatch {
            offset: at,
            found,
            expected: "0".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vhost_user_blk::disk::fill_pattern;

    #[test]
    fn the_pattern_passes_and_a_changed_word_is_named() {
        let mut buf = vec![0u8; 4096];
        fill_pattern(&mut buf, 8192);
        assert_eq!(check_exact(&buf, 8192, None), Ok(()));
        assert_eq!(check_unwritten(&buf, 8192), Ok(()));
        buf[100] ^= 1;
        let err = check_unwritten(&buf, 8192).unwrap_err();
        assert_eq!(err.offset, 8192 + 96);
        assert!(err.to_string().contains("8288"), "{err}");
    }

    #[test]
    fn a_write_reads_back_under_its_key_only() {
        let mut buf = vec![0u8; 4096];
        let key = write_key(7);
        fill_written(&mut buf, 4096, key);
        assert_eq!(check_exact(&buf, 4096, Some(key)), Ok(()));
        assert_eq!(check_unwritten(&buf, 4096), Ok(()));
        assert_eq!(
            check_exact(&buf, 4096, Some(write_key(8)))
                .unwrap_err()
                .offset,
            4096
        );
        assert!(check_exact(&buf, 4096, None).is_err());
    }

    #[test]
    fn a_block_from_the_wrong_offset_fits_nothing() {
        // The pattern of the next block, read as this one.
        let mut pattern = vec![0u8; 4096];
        fill_pattern(&mut pattern, 8192);
        assert!(check_unwritten(&pattern, 4096).is_err());
        // A write to the next block, read as this one.
        let mut written = vec![0u8; 4096];
        fill_written(&mut written, 8192, write_key(1));
        assert!(check_unwritten(&written, 4096).is_err());
    }

    #[test]
    fn zeroes() {
        let mut buf = vec![0u8; 512];
        assert_eq!(check_zeroes(&buf, 0), Ok(()));
        buf[511] = 1;
        assert_eq!(check_zeroes(&buf, 512).unwrap_err().offset, 512 + 504);
    }
}
