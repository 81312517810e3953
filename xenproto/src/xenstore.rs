//! The Xenstore wire protocol (`xen/include/public/io/xs_wire.h`,
//! `docs/misc/xenstore.txt`): message framing, payload conventions and error strings.
//!
//! A message is a 16-byte little-endian header — type, request id, transaction id,
//! payload length — and at most 4096 bytes of payload. Requests carry NUL-terminated
//! strings (`path\0`, `path\0token\0`; a write is `path\0value`, without a final NUL).
//! Replies carry a value, NUL-terminated names, `OK\0`, or for errors the errno name
//! (`ENOENT\0`). Watch events arrive unrequested, as `path\0token\0`.
//!
//! [`Decoder`] is incremental: feed it whatever the ring holds, in pieces of any size,
//! and take whole messages out. A header announcing more than 4096 bytes, or an unknown
//! type, is an error — the stream cannot be trusted after it.

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::AtomicU32;

use crate::byte_ring::Ring;
use crate::shared::SharedBytes;

/// Length of a message header.
pub const HEADER_LEN: usize = 16;
/// `XENSTORE_PAYLOAD_MAX`.
pub const PAYLOAD_MAX: usize = 4096;
/// Size of each direction of the Xenstore ring page.
pub const RING_SIZE: usize = 1024;

/// `struct xenstore_domain_interface`: the shared page between a domain and xenstored.
#[repr(C)]
pub struct RingPage {
    req: UnsafeCell<[u8; RING_SIZE]>,
    rsp: UnsafeCell<[u8; RING_SIZE]>,
    req_cons: AtomicU32,
    req_prod: AtomicU32,
    rsp_cons: AtomicU32,
    rsp_prod: AtomicU32,
    pub server_features: AtomicU32,
    pub connection: AtomicU32,
    pub error: AtomicU32,
}

// SAFETY: indices are atomics; data is only reached through `Ring`, which copies with
// volatile accesses inside the bounds the protocol gives each side.
unsafe impl Sync for RingPage {}

impl fmt::Debug for RingPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingPage")
            .field("req_prod", &self.req_prod)
            .field("rsp_prod", &self.rsp_prod)
            .finish_non_exhaustive()
    }
}

impl RingPage {
    /// The Xenstore interface at the start of a shared page.
    ///
    /// # Safety
    /// `page` must point to a mapped, writable page that stays mapped for `'a`.
    pub unsafe fn from_page<'a>(page: *mut u8) -> &'a Self {
        // SAFETY: guaranteed by the caller; any bit pattern is a valid RingPage.
        unsafe { &*page.cast::<Self>() }
    }

    /// Requests: the domain produces, xenstored consumes.
    pub fn requests(&self) -> Ring<'_> {
        Ring::new(
            SharedBytes::of_cell(&self.req),
            &self.req_cons,
            &self.req_prod,
        )
    }

    /// Replies and watch events: xenstored produces, the domain consumes.
    pub fn responses(&self) -> Ring<'_> {
        Ring::new(
            SharedBytes::of_cell(&self.rsp),
            &self.rsp_cons,
            &self.rsp_prod,
        )
    }
}

/// `XenbusState`: the state a front or back end publishes in its `state` node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XenbusState {
    Unknown = 0,
    Initialising = 1,
    InitWait = 2,
    Initialised = 3,
    Connected = 4,
    Closing = 5,
    Closed = 6,
    Reconfiguring = 7,
    Reconfigured = 8,
}

impl XenbusState {
    /// Parse a `state` node's value.
    pub fn parse(value: &str) -> Option<Self> {
        use XenbusState::*;
        Some(match value.trim().parse::<u32>().ok()? {
            0 => Unknown,
            1 => Initialising,
            2 => InitWait,
            3 => Initialised,
            4 => Connected,
            5 => Closing,
            6 => Closed,
            7 => Reconfiguring,
            8 => Reconfigured,
            _ => return None,
        })
    }

    /// The node value.
    pub fn as_str(self) -> &'static str {
        ["0", "1", "2", "3", "4", "5", "6", "7", "8"][self as usize]
    }
}

/// `enum xsd_sockmsg_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MsgType {
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    ResetWatches = 21,
    DirectoryPart = 22,
}

impl MsgType {
    /// The type for a wire value.
    pub fn from_wire(value: u32) -> Option<Self> {
        use MsgType::*;
        Some(match value {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            21 => ResetWatches,
            22 => DirectoryPart,
            _ => return None,
        })
    }
}

/// `struct xsd_sockmsg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub msg_type: MsgType,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        for (i, word) in [self.msg_type as u32, self.req_id, self.tx_id, self.len]
            .into_iter()
            .enumerate()
        {
            out[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, WireError> {
        let word = |i: usize| {
            u32::from_le_bytes([
                bytes[i * 4],
                bytes[i * 4 + 1],
                bytes[i * 4 + 2],
                bytes[i * 4 + 3],
            ])
        };
        let msg_type = MsgType::from_wire(word(0)).ok_or(WireError::UnknownType(word(0)))?;
        let len = word(3);
        if len as usize > PAYLOAD_MAX {
            return Err(WireError::TooLong(len));
        }
        Ok(Self {
            msg_type,
            req_id: word(1),
            tx_id: word(2),
            len,
        })
    }
}

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// A payload over [`PAYLOAD_MAX`] bytes.
    TooLong(u32),
    UnknownType(u32),
    /// A payload that does not have the shape its type requires.
    Malformed(&'static str),
    /// Text that is not UTF-8.
    NotUtf8,
    /// A path or value with a NUL inside.
    EmbeddedNul,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong(len) => {
                write!(f, "Xenstore payload of {len} bytes exceeds {PAYLOAD_MAX}")
            }
            Self::UnknownType(t) => write!(f, "unknown Xenstore message type {t}"),
            Self::Malformed(what) => write!(f, "malformed Xenstore payload: {what}"),
            Self::NotUtf8 => f.write_str("Xenstore text is not UTF-8"),
            Self::EmbeddedNul => f.write_str("Xenstore path or value contains a NUL byte"),
        }
    }
}

/// An error reply (`xsd_errors` in `xs_wire.h`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XsError {
    Einval,
    Eacces,
    Eexist,
    Eisdir,
    Enoent,
    Enomem,
    Enospc,
    Eio,
    Enotempty,
    Enosys,
    Erofs,
    Ebusy,
    /// The transaction conflicted: start it again.
    Eagain,
    Eisconn,
    E2big,
    Eperm,
    /// A name this protocol version does not define.
    Other(String),
}

impl XsError {
    const NAMES: [(&'static str, XsError); 16] = [
        ("EINVAL", Self::Einval),
        ("EACCES", Self::Eacces),
        ("EEXIST", Self::Eexist),
        ("EISDIR", Self::Eisdir),
        ("ENOENT", Self::Enoent),
        ("ENOMEM", Self::Enomem),
        ("ENOSPC", Self::Enospc),
        ("EIO", Self::Eio),
        ("ENOTEMPTY", Self::Enotempty),
        ("ENOSYS", Self::Enosys),
        ("EROFS", Self::Erofs),
        ("EBUSY", Self::Ebusy),
        ("EAGAIN", Self::Eagain),
        ("EISCONN", Self::Eisconn),
        ("E2BIG", Self::E2big),
        ("EPERM", Self::Eperm),
    ];

    /// Parse the payload of an `XS_ERROR` reply.
    pub fn from_payload(payload: &[u8]) -> Self {
        let name = payload.strip_suffix(b"\0").unwrap_or(payload);
        match Self::NAMES
            .iter()
            .find(|(known, _)| known.as_bytes() == name)
        {
            Some((_, err)) => err.clone(),
            None => Self::Other(String::from_utf8_lossy(name).into_owned()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Other(name) => name,
            known => Self::NAMES
                .iter()
                .find(|(_, e)| e == known)
                .map_or("?", |(n, _)| n),
        }
    }
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub payload: Vec<u8>,
}

/// Append a request to `out`: header and payload built from `parts`, each followed by
/// a NUL except the last when `last_nul` is false (a write's value).
pub fn encode_request(
    msg_type: MsgType,
    req_id: u32,
    tx_id: u32,
    parts: &[&[u8]],
    last_nul: bool,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    if parts.iter().any(|part| part.contains(&0)) {
        return Err(WireError::EmbeddedNul);
    }
    let nuls = parts.len() - usize::from(!last_nul && !parts.is_empty());
    let len = parts.iter().map(|p| p.len()).sum::<usize>() + nuls;
    if len > PAYLOAD_MAX {
        return Err(WireError::TooLong(len as u32));
    }
    let header = Header {
        msg_type,
        req_id,
        tx_id,
        len: len as u32,
    };
    out.extend_from_slice(&header.encode());
    for (i, part) in parts.iter().enumerate() {
        out.extend_from_slice(part);
        if i < nuls {
            out.push(0);
        }
    }
    Ok(())
}

/// Reassembles messages from a byte stream.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes still wanted to complete the message in progress (the header first).
    pub fn wanted(&self) -> Result<usize, WireError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(HEADER_LEN - self.buf.len());
        }
        let header = self.header()?;
        Ok(HEADER_LEN + header.len as usize - self.buf.len())
    }

    fn header(&self) -> Result<Header, WireError> {
        let bytes: &[u8; HEADER_LEN] = self.buf[..HEADER_LEN].try_into().expect("header length");
        Header::decode(bytes)
    }

    /// Feed bytes; returns how many were taken (never more than [`Self::wanted`]), so
    /// the caller leaves the rest on the ring for the next message.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, WireError> {
        let take = bytes.len().min(self.wanted()?);
        self.buf.extend_from_slice(&bytes[..take]);
        Ok(take)
    }

    /// The message, once complete.
    pub fn take(&mut self) -> Result<Option<Message>, WireError> {
        if self.buf.len() < HEADER_LEN || self.wanted()? > 0 {
            return Ok(None);
        }
        let header = self.header()?;
        let payload = self.buf.split_off(HEADER_LEN);
        self.buf.clear();
        Ok(Some(Message { header, payload }))
    }
}

/// A reply's text value (`XS_READ`), as UTF-8.
pub fn parse_value(payload: &[u8]) -> Result<&str, WireError> {
    core::str::from_utf8(payload).map_err(|_| WireError::NotUtf8)
}

/// The names of an `XS_DIRECTORY` reply.
pub fn parse_directory(payload: &[u8]) -> Result<Vec<&str>, WireError> {
    if payload.is_empty() {
        return Ok(Vec::new());
    }
    let body = payload
        .strip_suffix(b"\0")
        .ok_or(WireError::Malformed("directory without final NUL"))?;
    body.split(|&b| b == 0)
        .map(|name| core::str::from_utf8(name).map_err(|_| WireError::NotUtf8))
        .collect()
}

/// `(path, token)` of an `XS_WATCH_EVENT`.
pub fn parse_watch_event(payload: &[u8]) -> Result<(&str, &str), WireError> {
    let mut fields = payload.split(|&b| b == 0);
    let path = fields
        .next()
        .ok_or(WireError::Malformed("watch event without path"))?;
    let token = fields
        .next()
        .ok_or(WireError::Malformed("watch event without token"))?;
    let utf8 = |s| core::str::from_utf8(s).map_err(|_| WireError::NotUtf8);
    Ok((utf8(path)?, utf8(token)?))
}

/// The transaction id of an `XS_TRANSACTION_START` reply (decimal text).
pub fn parse_transaction_id(payload: &[u8]) -> Result<u32, WireError> {
    let text = payload.strip_suffix(b"\0").unwrap_or(payload);
    core::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(WireError::Malformed("transaction id is not a number"))
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;

    fn request(msg_type: MsgType, parts: &[&str], last_nul: bool) -> Vec<u8> {
        let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
        let mut out = Vec::new();
        encode_request(msg_type, 7, 3, &parts, last_nul, &mut out).unwrap();
        out
    }

    #[test]
    fn requests_match_golden_bytes() {
        let read = request(MsgType::Read, &["device/vif/0/mac"], true);
        let mut golden = vec![2, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 17, 0, 0, 0];
        golden.extend_from_slice(b"device/vif/0/mac\0");
        assert_eq!(read, golden);

        let write = request(MsgType::Write, &["state", "4"], false);
        assert_eq!(&write[..4], &[11, 0, 0, 0]);
        assert_eq!(&write[12..16], &[7, 0, 0, 0]);
        assert_eq!(&write[16..], b"state\x004");

        let watch = request(MsgType::Watch, &["backend/state", "tok"], true);
        assert_eq!(&watch[16..], b"backend/state\0tok\0");

        let start = request(MsgType::TransactionStart, &[""], true);
        assert_eq!(&start[12..], &[1, 0, 0, 0, 0]);
    }

    #[test]
    fn requests_refuse_nul_and_oversize() {
        let mut out = Vec::new();
        assert_eq!(
            encode_request(MsgType::Write, 1, 0, &[b"a\0b", b"v"], false, &mut out),
            Err(WireError::EmbeddedNul)
        );
        let big = vec![b'x'; PAYLOAD_MAX];
        assert_eq!(
            encode_request(MsgType::Write, 1, 0, &[b"p", &big], false, &mut out),
            Err(WireError::TooLong(PAYLOAD_MAX as u32 + 2))
        );
        assert!(out.is_empty(), "nothing is written for a refused request");
    }

    fn reply(msg_type: u32, req_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [msg_type, req_id, 0, payload.len() as u32] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    fn decode_all(stream: &[u8], piece: usize) -> Vec<Message> {
        let mut decoder = Decoder::new();
        let mut messages = Vec::new();
        let mut rest = stream;
        while !rest.is_empty() {
            let chunk = &rest[..piece.min(rest.len())];
            let taken = decoder.feed(chunk).unwrap();
            rest = &rest[taken..];
            if let Some(message) = decoder.take().unwrap() {
                messages.push(message);
            }
        }
        messages
    }

    #[test]
    fn decoder_reassembles_whole_or_byte_by_byte() {
        let mut stream = reply(2, 1, b"00:16:3e:00:00:01");
        stream.extend(reply(15, 0, b"backend/state\0tok\0"));
        stream.extend(reply(16, 2, b"ENOENT\0"));
        stream.extend(reply(11, 3, b"OK\0"));
        stream.extend(reply(1, 4, b""));
        for piece in [1, 3, 16, 17, 1000] {
            let messages = decode_all(&stream, piece);
            assert_eq!(messages.len(), 5, "piece size {piece}");
            assert_eq!(messages[0].header.msg_type, MsgType::Read);
            assert_eq!(parse_value(&messages[0].payload), Ok("00:16:3e:00:00:01"));
            assert_eq!(
                parse_watch_event(&messages[1].payload),
                Ok(("backend/state", "tok"))
            );
            assert_eq!(XsError::from_payload(&messages[2].payload), XsError::Enoent);
            assert_eq!(messages[3].header.req_id, 3);
            assert_eq!(parse_directory(&messages[4].payload), Ok(vec![]));
        }
    }

    #[test]
    fn decoder_rejects_oversize_and_unknown_headers() {
        let mut decoder = Decoder::new();
        let mut header = reply(2, 1, b"");
        header[12..16].copy_from_slice(&5000u32.to_le_bytes());
        decoder.feed(&header).unwrap();
        assert_eq!(decoder.take(), Err(WireError::TooLong(5000)));

        let mut decoder = Decoder::new();
        decoder.feed(&reply(20, 1, b"")).unwrap();
        assert_eq!(decoder.take(), Err(WireError::UnknownType(20)));
    }

    #[test]
    fn ring_page_layout_and_states() {
        assert_eq!(core::mem::offset_of!(RingPage, req_cons), 2048);
        assert_eq!(core::mem::offset_of!(RingPage, error), 2072);
        assert_eq!(XenbusState::parse("4"), Some(XenbusState::Connected));
        assert_eq!(XenbusState::parse(" 2\n"), Some(XenbusState::InitWait));
        assert_eq!(XenbusState::parse("9"), None);
        assert_eq!(XenbusState::parse("x"), None);
        assert_eq!(XenbusState::Closed.as_str(), "6");
    }

    #[test]
    fn payload_shapes() {
        assert_eq!(parse_directory(b"0\x001\x00"), Ok(vec!["0", "1"]));
        assert_eq!(
            parse_directory(b"0\x001"),
            Err(WireError::Malformed("directory without final NUL"))
        );
        assert_eq!(parse_transaction_id(b"42\0"), Ok(42));
        assert!(parse_transaction_id(b"x\0").is_err());
        assert_eq!(
            parse_watch_event(b"only"),
            Err(WireError::Malformed("watch event without token"))
        );
        assert_eq!(XsError::from_payload(b"EAGAIN\0"), XsError::Eagain);
        assert_eq!(
            XsError::from_payload(b"EWEIRD\0"),
            XsError::Other("EWEIRD".into())
        );
        assert_eq!(XsError::Eagain.to_string(), "EAGAIN");
        assert_eq!(parse_value(b"\xff"), Err(WireError::NotUtf8));
    }
}
