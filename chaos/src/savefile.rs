//! The file `chaos save` writes and `chaos restore` reads: a small header, the guest's
//! configuration (JSON, as `chaos create` reads it, with the MACs it got), then libxc's
//! migration stream (v3, `docs/specs/libxc-migration-stream.pandoc`), which libxc reads
//! up to its END record.
//!
//! ```text
//! offset  size  field (little-endian)
//!      0    16  magic "chaos saved vm\n\0"
//!     16     4  format version (1)
//!     20     4  length of the configuration, at most MAX_CONFIG bytes
//!     24     8  length of libxc's stream; 0 while it is being written (or unknown)
//!     32     …  the configuration (UTF-8 JSON), then libxc's stream
//! ```
//!
//! The stream's length is written once the save is complete, so a file cut short is
//! found before anything is created for it. Pure: no I/O but the `Read` handed in.

use std::fmt;
use std::io::Read;

/// The first bytes of every chaos save file.
pub const MAGIC: [u8; 16] = *b"chaos saved vm\n\0";
/// The format this chaos writes and reads.
pub const VERSION: u32 = 1;
/// The header's size.
pub const HEADER_LEN: usize = 32;
/// Where the stream's length sits in the header (written after the save).
pub const STREAM_LEN_OFFSET: u64 = 24;
/// A configuration is a few hundred bytes; anything near this is not one.
pub const MAX_CONFIG: u32 = 64 * 1024;
/// xl's save files start with this (`tools/xl/xl.h`).
const XL_MAGIC: &[u8] = b"Xen saved domain, xl format\n";
/// libxc's image header: marker (all ones), "XENF", version 3 (big-endian).
const LIBXC_START: [u8; 16] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, b'X', b'E', b'N', b'F', 0, 0, 0, 3,
];

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub config_len: u32,
    /// 0: not known (a save that did not finish writing it).
    pub stream_len: u64,
}

/// Why a file is not a usable chaos save file; the messages are about the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveFileError {
    /// The file ends at `have` bytes, inside `part`, which needs `need` bytes in all.
    Truncated {
        part: &'static str,
        have: u64,
        need: u64,
    },
    /// An `xl save` file.
    Xl,
    /// Not a chaos save file at all.
    Foreign { start: Vec<u8> },
    /// A chaos save file of another format version.
    Version { found: u32 },
    /// The configuration's length is beyond [`MAX_CONFIG`].
    ConfigTooLarge { len: u32 },
    /// The configuration is not UTF-8.
    ConfigNotText,
    /// No stream length: the save that wrote the file did not finish.
    Unfinished,
    /// After the configuration comes something that is not libxc's stream.
    NotLibxc { start: Vec<u8> },
    /// The file is longer than the header says (more than one stream, or garbage).
    TrailingBytes { extra: u64 },
    /// Reading failed.
    Io(String),
}

impl fmt::Display for SaveFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { part, have, need } => write!(
                f,
                "cut short: the file ends after {have} bytes, inside {part} ({need} bytes \
                 expected)"
            ),
            Self::Xl => f.write_str("an `xl save` file, not chaos's: `xl restore` reads it"),
            Self::Foreign { start } => write!(
                f,
                "not a chaos save file (it starts with {:?}, not {:?})",
                String::from_utf8_lossy(start),
                String::from_utf8_lossy(&MAGIC)
            ),
            Self::Version { found } => write!(
                f,
                "a chaos save file of format version {found}; this chaos reads version \
                 {VERSION}"
            ),
            Self::ConfigTooLarge { len } => write!(
                f,
                "its header gives the configuration {len} bytes, more than the {MAX_CONFIG} a \
                 save file may hold: a damaged file"
            ),
            Self::ConfigNotText => f.write_str("its configuration is not UTF-8 text"),
            Self::Unfinished => f.write_str(
                "the save that wrote it did not finish (the header has no stream length)",
            ),
            Self::NotLibxc { start } => write!(
                f,
                "after the configuration comes no libxc migration stream (v3): it starts \
                 with {start:02x?}"
            ),
            Self::TrailingBytes { extra } => write!(
                f,
                "{extra} bytes follow the end its header gives: a damaged file"
            ),
            Self::Io(err) => write!(f, "cannot be read: {err}"),
        }
    }
}

impl std::error::Error for SaveFileError {}

/// The header for a configuration of `config_len` bytes and a stream of `stream_len`
/// (0 while unknown).
pub fn encode_header(
    config_len: usize,
    stream_len: u64,
) -> Result<[u8; HEADER_LEN], SaveFileError> {
    let config_len = u32::try_from(config_len)
        .ok()
        .filter(|len| *len <= MAX_CONFIG)
        .ok_or(SaveFileError::ConfigTooLarge {
            len: u32::try_from(config_len).unwrap_or(u32::MAX),
        })?;
    let mut header = [0u8; HEADER_LEN];
    header[..16].copy_from_slice(&MAGIC);
    header[16..20].copy_from_slice(&VERSION.to_le_bytes());
    header[20..24].copy_from_slice(&config_len.to_le_bytes());
    header[24..32].copy_from_slice(&stream_len.to_le_bytes());
    Ok(header)
}

/// The header's fields, from the file's first bytes (`bytes` holds what there is, at
/// most [`HEADER_LEN`]).
pub fn decode_header(bytes: &[u8]) -> Result<Header, SaveFileError> {
    // Say what the file is as soon as its first bytes show it, even if it is short.
    let known = bytes.len().min(MAGIC.len());
    if bytes.starts_with(XL_MAGIC) {
        return Err(SaveFileError::Xl);
    }
    if bytes[..known] != MAGIC[..known] {
        return Err(SaveFileError::Foreign {
            start: bytes[..known].to_vec(),
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(SaveFileError::Truncated {
            part: "the header",
            have: bytes.len() as u64,
            need: HEADER_LEN as u64,
        });
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = u32_at(16);
    if version != VERSION {
        return Err(SaveFileError::Version { found: version });
    }
    let config_len = u32_at(20);
    if config_len > MAX_CONFIG {
        return Err(SaveFileError::ConfigTooLarge { len: config_len });
    }
    let stream_len = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes"));
    Ok(Header {
        config_len,
        stream_len,
    })
}

/// Whether `start` (the stream's first bytes) is libxc's image header.
pub fn check_stream_start(start: &[u8]) -> Result<(), SaveFileError> {
    if start.len() < LIBXC_START.len() || start[..LIBXC_START.len()] != LIBXC_START {
        return Err(SaveFileError::NotLibxc {
            start: start[..start.len().min(LIBXC_START.len())].to_vec(),
        });
    }
    Ok(())
}

/// Read the header and the configuration from the start of a save file of `file_len`
/// bytes, leaving `reader` at the first byte of libxc's stream. The stream's length is
/// checked against the file's, so a file cut short (or run on) is refused here.
pub fn read_prefix(
    reader: &mut impl Read,
    file_len: u64,
) -> Result<(Header, String), SaveFileError> {
    let mut head = [0u8; HEADER_LEN];
    let got = read_up_to(reader, &mut head)?;
    let header = decode_header(&head[..got])?;
    let mut config = vec![0u8; header.config_len as usize];
    let got = read_up_to(reader, &mut config)?;
    let config_end = HEADER_LEN as u64 + u64::from(header.config_len);
    if got < config.len() {
        return Err(SaveFileError::Truncated {
            part: "the configuration",
            have: HEADER_LEN as u64 + got as u64,
            need: config_end,
        });
    }
    if header.stream_len == 0 {
        return Err(SaveFileError::Unfinished);
    }
    let need = config_end.saturating_add(header.stream_len);
    if file_len < need {
        return Err(SaveFileError::Truncated {
            part: "the guest's memory (libxc's stream)",
            have: file_len,
            need,
        });
    }
    if file_len > need {
        return Err(SaveFileError::TrailingBytes {
            extra: file_len - need,
        });
    }
    let config = String::from_utf8(config).map_err(|_| SaveFileError::ConfigNotText)?;
    Ok((header, config))
}

/// Fill `buf` as far as the reader goes; how many bytes it got.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> Result<usize, SaveFileError> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(SaveFileError::Io(err.to_string())),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str =
        r#"{"name": "linux", "kernel": "/apps/linux/vmlinuz", "memory": 96, "vcpus": 1}"#;

    /// A whole file: header, configuration, a stream of `stream` bytes that starts like
    /// libxc's.
    fn file(stream: usize) -> Vec<u8> {
        let mut out = encode_header(CONFIG.len(), stream as u64).unwrap().to_vec();
        out.extend_from_slice(CONFIG.as_bytes());
        let mut body = LIBXC_START.to_vec();
        body.resize(stream, 0xab);
        out.extend_from_slice(&body);
        out
    }

    fn read(bytes: &[u8]) -> Result<(Header, String), SaveFileError> {
        read_prefix(&mut &bytes[..], bytes.len() as u64)
    }

    #[test]
    fn a_file_reads_back() {
        let bytes = file(4096);
        let (header, config) = read(&bytes).unwrap();
        assert_eq!(
            header,
            Header {
                config_len: CONFIG.len() as u32,
                stream_len: 4096
            }
        );
        assert_eq!(config, CONFIG);
        let stream = &bytes[HEADER_LEN + CONFIG.len()..];
        check_stream_start(stream).unwrap();
        // The reader is left at the stream.
        let mut reader = &bytes[..];
        read_prefix(&mut reader, bytes.len() as u64).unwrap();
        assert_eq!(reader, stream);
    }

    #[test]
    fn a_file_cut_short_says_where() {
        let bytes = file(4096);
        let whole = bytes.len() as u64;
        assert_eq!(
            read(&bytes[..bytes.len() - 100]).unwrap_err(),
            SaveFileError::Truncated {
                part: "the guest's memory (libxc's stream)",
                have: whole - 100,
                need: whole
            }
        );
        assert_eq!(
            read(&bytes[..HEADER_LEN + 10]).unwrap_err(),
            SaveFileError::Truncated {
                part: "the configuration",
                have: HEADER_LEN as u64 + 10,
                need: (HEADER_LEN + CONFIG.len()) as u64
            }
        );
        assert_eq!(
            read(&bytes[..20]).unwrap_err(),
            SaveFileError::Truncated {
                part: "the header",
                have: 20,
                need: HEADER_LEN as u64
            }
        );
        let err = read(&bytes[..20]).unwrap_err().to_string();
        assert_eq!(
            err,
            "cut short: the file ends after 20 bytes, inside the header (32 bytes expected)"
        );
        // An empty file is a short one too.
        assert!(matches!(
            read(&[]).unwrap_err(),
            SaveFileError::Truncated { have: 0, .. }
        ));
    }

    #[test]
    fn foreign_files_are_named() {
        assert_eq!(
            read(b"Xen saved domain, xl format\n \0 \r\x04\x03\x02\x01").unwrap_err(),
            SaveFileError::Xl
        );
        let err = read(b"#!/bin/sh\necho hello, this is no save file\n").unwrap_err();
        assert!(matches!(err, SaveFileError::Foreign { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("not a chaos save file (it starts with \"#!/bin/sh")
        );
        // A short foreign file is foreign, not short.
        assert!(matches!(
            read(b"ELF").unwrap_err(),
            SaveFileError::Foreign { .. }
        ));
    }

    #[test]
    fn another_version_is_refused() {
        let mut bytes = file(64);
        bytes[16..20].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            read(&bytes).unwrap_err(),
            SaveFileError::Version { found: 2 }
        );
        assert_eq!(
            SaveFileError::Version { found: 2 }.to_string(),
            "a chaos save file of format version 2; this chaos reads version 1"
        );
    }

    #[test]
    fn an_oversized_configuration_is_refused_before_it_is_read() {
        let mut bytes = file(64);
        bytes[20..24].copy_from_slice(&(MAX_CONFIG + 1).to_le_bytes());
        assert_eq!(
            read(&bytes).unwrap_err(),
            SaveFileError::ConfigTooLarge {
                len: MAX_CONFIG + 1
            }
        );
        bytes[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read(&bytes).unwrap_err(),
            SaveFileError::ConfigTooLarge { .. }
        ));
        assert!(matches!(
            encode_header(MAX_CONFIG as usize + 1, 0),
            Err(SaveFileError::ConfigTooLarge { .. })
        ));
        assert!(encode_header(MAX_CONFIG as usize, 0).is_ok());
    }

    #[test]
    fn an_unfinished_or_overlong_file_is_refused() {
        let mut bytes = file(64);
        bytes[24..32].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(read(&bytes).unwrap_err(), SaveFileError::Unfinished);
        let mut bytes = file(64);
        bytes.extend_from_slice(b"junk");
        assert_eq!(
            read(&bytes).unwrap_err(),
            SaveFileError::TrailingBytes { extra: 4 }
        );
    }

    #[test]
    fn a_configuration_that_is_not_text_is_refused() {
        let mut bytes = file(64);
        bytes[HEADER_LEN] = 0xff;
        assert_eq!(read(&bytes).unwrap_err(), SaveFileError::ConfigNotText);
    }

    #[test]
    fn the_stream_must_be_libxcs() {
        assert!(check_stream_start(&LIBXC_START).is_ok());
        let mut v2 = LIBXC_START;
        v2[15] = 2;
        assert!(matches!(
            check_stream_start(&v2),
            Err(SaveFileError::NotLibxc { .. })
        ));
        assert!(matches!(
            check_stream_start(&[0xff; 4]),
            Err(SaveFileError::NotLibxc { .. })
        ));
    }
}
