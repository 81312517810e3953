//! kvstore's snapshot on its disk: what `SAVE` writes and boot loads.
//!
//! Sector 0 is the [`Header`]; the payload starts at sector 1 and is the entries one
//! after the other, each a little-endian `u32` key length, a `u32` value length, the
//! key and the value, in key order. The header has a magic, a format version, the
//! number of entries, the payload's length and CRC-32, and a CRC-32 of its own fields.
//! `SAVE` writes the payload first and the header last (each flushed), so a header
//! that checks out describes a payload that was written whole; a payload torn by a
//! crash fails its checksum and boot starts empty, saying why.
//!
//! [`Writer`] and [`Reader`] stream: the guest never holds a second copy of its data,
//! only chunks. Everything read back is checked (lengths against [`MAX_BULK`] and the
//! header, the count, both checksums) before it is believed.

use alloc::vec::Vec;
use core::fmt;

use crate::resp::MAX_BULK;

/// Bytes of a disk sector; the header takes one.
pub const SECTOR: usize = 512;
/// First bytes of the header.
pub const MAGIC: [u8; 8] = *b"KVSTORE\0";
/// The format [`Header`] and the payload follow.
pub const VERSION: u32 = 1;
/// Bytes of the header's fields (the rest of its sector is zero).
const HEADER_FIELDS: usize = 40;

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Entries in the payload.
    pub count: u64,
    /// Bytes of the payload.
    pub payload_len: u64,
    /// CRC-32 of the payload.
    pub payload_crc: u32,
}

/// Why a disk does not hold a snapshot, or not a whole one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    /// The header sector is all zeros: a new disk.
    Blank,
    /// The header does not start with [`MAGIC`]: something else is on the disk.
    NotASnapshot,
    /// A format this kvstore does not read.
    UnsupportedVersion(u32),
    /// The header's own checksum does not match its fields.
    HeaderChecksum,
    /// The payload would end beyond the disk.
    BeyondDisk { payload_len: u64, disk_bytes: u64 },
    /// More entries than the payload could hold (each takes 8 bytes at least).
    ImpossibleCount { count: u64, payload_len: u64 },
    /// An entry whose key or value is longer than kvstore accepts.
    EntryTooLarge {
        entry: u64,
        key_len: u32,
        value_len: u32,
    },
    /// The payload ends inside an entry, or has bytes after the last one.
    Truncated { entry: u64 },
    /// The payload's checksum does not match the header's.
    PayloadChecksum { expected: u32, found: u32 },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Blank => f.write_str("the disk is blank (its first sector is zeros)"),
            Self::NotASnapshot => f.write_str("no snapshot magic in the first sector"),
            Self::UnsupportedVersion(version) => {
                write!(
                    f,
                    "snapshot format version {version} (this kvstore reads {VERSION})"
                )
            }
            Self::HeaderChecksum => f.write_str("the snapshot header's checksum does not match"),
            Self::BeyondDisk {
                payload_len,
                disk_bytes,
            } => write!(
                f,
                "the header says {payload_len} bytes of data, beyond the disk's {disk_bytes} bytes"
            ),
            Self::ImpossibleCount { count, payload_len } => write!(
                f,
                "the header says {count} entries in {payload_len} bytes, which cannot hold them"
            ),
            Self::EntryTooLarge {
                entry,
                key_len,
                value_len,
            } => write!(
                f,
                "entry {entry} has a key of {key_len} and a value of {value_len} bytes \
                 (at most {MAX_BULK} each)"
            ),
            Self::Truncated { entry } => {
                write!(f, "the data does not end where entry {entry} does")
            }
            Self::PayloadChecksum { expected, found } => write!(
                f,
                "the data's checksum is {found:#010x}, the header says {expected:#010x}"
            ),
        }
    }
}

impl Header {
    /// The header's sector.
    pub fn encode(&self) -> [u8; SECTOR] {
        let mut sector = [0u8; SECTOR];
        sector[0..8].copy_from_slice(&MAGIC);
        sector[8..12].copy_from_slice(&VERSION.to_le_bytes());
        sector[16..24].copy_from_slice(&self.count.to_le_bytes());
        sector[24..32].copy_from_slice(&self.payload_len.to_le_bytes());
        sector[32..36].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32(&sector[..36]);
        sector[36..HEADER_FIELDS].copy_from_slice(&crc.to_le_bytes());
        sector
    }

    /// Read a header sector from a disk of `disk_bytes` bytes.
    pub fn decode(sector: &[u8; SECTOR], disk_bytes: u64) -> Result<Self, SnapshotError> {
        if sector.iter().all(|&byte| byte == 0) {
            return Err(SnapshotError::Blank);
        }
        if sector[0..8] != MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([sector[at], sector[at + 1], sector[at + 2], sector[at + 3]])
        };
        let u64_at = |at: usize| u64::from(u32_at(at)) | u64::from(u32_at(at + 4)) << 32;
        let version = u32_at(8);
        if version != VERSION {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        if u32_at(36) != crc32(&sector[..36]) {
            return Err(SnapshotError::HeaderChecksum);
        }
        let header = Self {
            count: u64_at(16),
            payload_len: u64_at(24),
            payload_crc: u32_at(32),
        };
        let room = disk_bytes.saturating_sub(SECTOR as u64);
        if header.payload_len > room {
            return Err(SnapshotError::BeyondDisk {
                payload_len: header.payload_len,
                disk_bytes,
            });
        }
        if header.count > header.payload_len / 8 {
            return Err(SnapshotError::ImpossibleCount {
                count: header.count,
                payload_len: header.payload_len,
            });
        }
        Ok(header)
    }
}

/// Bytes an entry takes in the payload.
pub fn entry_len(key: &[u8], value: &[u8]) -> u64 {
    8 + key.len() as u64 + value.len() as u64
}

/// Builds a payload in chunks: [`Writer::push`] each entry, write out each chunk that
/// [`Writer::take_chunk`] gives, and at the end [`Writer::finish`]'s tail and header.
#[derive(Debug, Default)]
pub struct Writer {
    pending: Vec<u8>,
    count: u64,
    len: u64,
    crc: Crc32,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add an entry (its bytes wait until a chunk is full).
    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        let start = self.pending.len();
        self.pending
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.pending
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.pending.extend_from_slice(key);
        self.pending.extend_from_slice(value);
        self.crc.update(&self.pending[start..]);
        self.len += entry_len(key, value);
        self.count += 1;
    }

    /// The next `size` bytes of payload (`size` a multiple of [`SECTOR`]), once that
    /// many are pending.
    pub fn take_chunk(&mut self, size: usize) -> Option<Vec<u8>> {
        debug_assert!(size > 0 && size.is_multiple_of(SECTOR));
        if self.pending.len() < size {
            return None;
        }
        let rest = self.pending.split_off(size);
        Some(core::mem::replace(&mut self.pending, rest))
    }

    /// The last bytes of the payload, padded with zeros to whole sectors, and the
    /// header that describes the whole payload.
    pub fn finish(mut self) -> (Vec<u8>, Header) {
        let padded = self.pending.len().next_multiple_of(SECTOR);
        self.pending.resize(padded, 0);
        let header = Header {
            count: self.count,
            payload_len: self.len,
            payload_crc: self.crc.value(),
        };
        (self.pending, header)
    }
}

/// Reads a payload in chunks of any size: [`Reader::feed`] gives back the entries that
/// are complete, [`Reader::finish`] checks the count and checksum. Entries are handed
/// out before the checksum is known: keep them apart until `finish` says yes.
#[derive(Debug)]
pub struct Reader {
    header: Header,
    pending: Vec<u8>,
    fed: u64,
    entries: u64,
    crc: Crc32,
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

impl Reader {
    pub fn new(header: Header) -> Self {
        Self {
            header,
            pending: Vec::new(),
            fed: 0,
            entries: 0,
            crc: Crc32::default(),
        }
    }

    /// Payload bytes still to feed (anything fed beyond is padding, ignored).
    pub fn remaining(&self) -> u64 {
        self.header.payload_len - self.fed
    }

    /// Take the next bytes of the payload; the entries they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Entry>, SnapshotError> {
        let take = bytes.len().min(self.remaining() as usize);
        let bytes = &bytes[..take];
        self.fed += take as u64;
        self.crc.update(bytes);
        self.pending.extend_from_slice(bytes);
        let mut entries = Vec::new();
        let mut at = 0;
        while self.pending.len() - at >= 8 {
            let field = |at: usize| {
                u32::from_le_bytes([
                    self.pending[at],
                    self.pending[at + 1],
                    self.pending[at + 2],
                    self.pending[at + 3],
                ])
            };
            let (key_len, value_len) = (field(at), field(at + 4));
            if self.entries >= self.header.count {
                return Err(SnapshotError::Truncated {
                    entry: self.entries,
                });
            }
            if key_len as usize > MAX_BULK || value_len as usize > MAX_BULK {
                return Err(SnapshotError::EntryTooLarge {
                    entry: self.entries,
                    key_len,
                    value_len,
                });
            }
            let end = at + 8 + key_len as usize + value_len as usize;
            if self.pending.len() < end {
                break;
            }
            let key_end = at + 8 + key_len as usize;
            entries.push((
                self.pending[at + 8..key_end].to_vec(),
                self.pending[key_end..end].to_vec(),
            ));
            self.entries += 1;
            at = end;
        }
        self.pending.drain(..at);
        Ok(entries)
    }

    /// Check that the whole payload was fed, held exactly the header's entries and
    /// matches its checksum.
    pub fn finish(self) -> Result<u64, SnapshotError> {
        if self.remaining() > 0 || !self.pending.is_empty() || self.entries != self.header.count {
            return Err(SnapshotError::Truncated {
                entry: self.entries,
            });
        }
        let found = self.crc.value();
        if found != self.header.payload_crc {
            return Err(SnapshotError::PayloadChecksum {
                expected: self.header.payload_crc,
                found,
            });
        }
        Ok(self.entries)
    }
}

/// CRC-32 (IEEE 802.3, as zlib's `crc32`), computed as bytes come.
#[derive(Debug, Clone, Copy)]
pub struct Crc32(u32);

impl Default for Crc32 {
    fn default() -> Self {
        Self(!0)
    }
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

impl Crc32 {
    pub fn update(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = CRC_TABLE[((self.0 ^ u32::from(byte)) & 0xff) as usize] ^ (self.0 >> 8);
        }
    }

    pub fn value(&self) -> u32 {
        !self.0
    }
}

/// CRC-32 of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = Crc32::default();
    crc.update(bytes);
    crc.value()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const DISK: u64 = 1 << 20;

    fn sample() -> Vec<Entry> {
        vec![
            (b"".to_vec(), b"empty key".to_vec()),
            (b"counter".to_vec(), b"42".to_vec()),
            (vec![0, 0xff, b'\r', b'\n'], (0..=255).collect()),
            (b"big".to_vec(), vec![0xa5; 70_000]),
            (b"nothing".to_vec(), Vec::new()),
        ]
    }

    /// A whole disk image of `entries`, written in chunks of `chunk` bytes.
    fn image(entries: &[Entry], chunk: usize) -> Vec<u8> {
        let mut writer = Writer::new();
        let mut payload = Vec::new();
        for (key, value) in entries {
            writer.push(key, value);
            while let Some(bytes) = writer.take_chunk(chunk) {
                assert_eq!(bytes.len(), chunk);
                payload.extend(bytes);
            }
        }
        let (tail, header) = writer.finish();
        assert!(tail.len().is_multiple_of(SECTOR));
        payload.extend(tail);
        let mut disk = header.encode().to_vec();
        disk.extend(payload);
        disk
    }

    /// Read an image back feeding `chunk` bytes at a time.
    fn load(disk: &[u8], chunk: usize) -> Result<Vec<Entry>, SnapshotError> {
        let header = Header::decode(disk[..SECTOR].try_into().unwrap(), DISK)?;
        let mut reader = Reader::new(header);
        let mut entries = Vec::new();
        for bytes in disk[SECTOR..].chunks(chunk) {
            if reader.remaining() == 0 {
                break;
            }
            entries.extend(reader.feed(bytes)?);
        }
        let count = reader.finish()?;
        assert_eq!(count, entries.len() as u64);
        Ok(entries)
    }

    #[test]
    fn round_trip_whatever_the_chunks() {
        let entries = sample();
        for write_chunk in [SECTOR, 4096, 65536] {
            let disk = image(&entries, write_chunk);
            for read_chunk in [1, 7, SECTOR, 65536, disk.len()] {
                assert_eq!(
                    load(&disk, read_chunk),
                    Ok(entries.clone()),
                    "{write_chunk}/{read_chunk}"
                );
            }
        }
        assert_eq!(load(&image(&[], SECTOR), SECTOR), Ok(vec![]));
    }

    #[test]
    fn the_header_is_described_in_full() {
        let header = Header {
            count: 2,
            payload_len: 20,
            payload_crc: 0x1234_5678,
        };
        let sector = header.encode();
        assert_eq!(&sector[..12], b"KVSTORE\0\x01\0\0\0");
        assert_eq!(&sector[16..24], &2u64.to_le_bytes());
        assert_eq!(&sector[24..32], &20u64.to_le_bytes());
        assert!(sector[HEADER_FIELDS..].iter().all(|&b| b == 0));
        assert_eq!(Header::decode(&sector, DISK), Ok(header));
    }

    #[test]
    fn blank_and_foreign_disks() {
        assert_eq!(
            Header::decode(&[0; SECTOR], DISK),
            Err(SnapshotError::Blank)
        );
        let mut foreign = [0u8; SECTOR];
        foreign[510] = 0x55;
        foreign[511] = 0xaa;
        assert_eq!(
            Header::decode(&foreign, DISK),
            Err(SnapshotError::NotASnapshot)
        );
    }

    #[test]
    fn a_damaged_header_is_refused() {
        let good = Header {
            count: 1,
            payload_len: 10,
            payload_crc: 7,
        }
        .encode();
        let mut version = good;
        version[8] = 2;
        assert_eq!(
            Header::decode(&version, DISK),
            Err(SnapshotError::UnsupportedVersion(2))
        );
        let mut flipped = good;
        flipped[24] ^= 1;
        assert_eq!(
            Header::decode(&flipped, DISK),
            Err(SnapshotError::HeaderChecksum)
        );
        let beyond = Header {
            count: 1,
            payload_len: DISK,
            payload_crc: 0,
        }
        .encode();
        assert_eq!(
            Header::decode(&beyond, DISK),
            Err(SnapshotError::BeyondDisk {
                payload_len: DISK,
                disk_bytes: DISK
            })
        );
        let crowded = Header {
            count: 3,
            payload_len: 16,
            payload_crc: 0,
        }
        .encode();
        assert_eq!(
            Header::decode(&crowded, DISK),
            Err(SnapshotError::ImpossibleCount {
                count: 3,
                payload_len: 16
            })
        );
    }

    #[test]
    fn a_flipped_payload_byte_fails_the_checksum() {
        let disk = image(&sample(), 4096);
        // Bytes of keys and values: only the checksum can tell.
        for at in [SECTOR + 10, SECTOR + 400, SECTOR + 60_000] {
            let mut bad = disk.clone();
            bad[at] ^= 0x40;
            assert!(
                matches!(load(&bad, 4096), Err(SnapshotError::PayloadChecksum { .. })),
                "byte {at}: {:?}",
                load(&bad, 4096).map(|entries| entries.len())
            );
        }
    }

    #[test]
    fn a_flipped_length_byte_is_refused() {
        let disk = image(&sample(), 4096);
        for at in [SECTOR, SECTOR + 4, SECTOR + 17 + 5] {
            let mut bad = disk.clone();
            bad[at] ^= 0x40;
            assert!(load(&bad, 4096).is_err(), "byte {at}");
        }
    }

    #[test]
    fn lengths_that_do_not_add_up_are_refused() {
        // A header for two entries over a payload of one.
        let mut writer = Writer::new();
        writer.push(b"key", b"value");
        let (tail, mut header) = writer.finish();
        header.count = 2;
        let mut disk = header.encode().to_vec();
        disk.extend(&tail);
        assert_eq!(
            load(&disk, SECTOR),
            Err(SnapshotError::Truncated { entry: 1 })
        );
        // One entry, and the header's length cuts it short.
        header.count = 1;
        header.payload_len = 15;
        let mut disk = header.encode().to_vec();
        disk.extend(&tail);
        assert_eq!(
            load(&disk, SECTOR),
            Err(SnapshotError::Truncated { entry: 0 })
        );
        // A value length over the limit (the CRC would also fail; the length is seen
        // first and nothing of that size is allocated).
        let mut payload = Vec::new();
        payload.extend(1u32.to_le_bytes());
        payload.extend(u32::MAX.to_le_bytes());
        let header = Header {
            count: 1,
            payload_len: 64,
            payload_crc: 0,
        };
        let mut reader = Reader::new(header);
        assert_eq!(
            reader.feed(&payload),
            Err(SnapshotError::EntryTooLarge {
                entry: 0,
                key_len: 1,
                value_len: u32::MAX
            })
        );
    }

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        let mut split = Crc32::default();
        split.update(b"1234");
        split.update(b"56789");
        assert_eq!(split.value(), 0xcbf4_3926);
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            SnapshotError::PayloadChecksum {
                expected: 1,
                found: 0xabc
            }
            .to_string(),
            "the data's checksum is 0x00000abc, the header says 0x00000001"
        );
        assert_eq!(
            SnapshotError::Blank.to_string(),
            "the disk is blank (its first sector is zeros)"
        );
    }
}
