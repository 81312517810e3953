//! The frames that travel on the relay's channel, both ways.
//!
//! Each frame is a 7-byte header — kind (u8), stream (u32 LE), payload length (u16 LE)
//! — and its payload. The host end opens streams (`Open`) and numbers them; after that
//! both ends send `Data`, `Eof` (no more data this way), `Credit` (this many bytes of
//! yours were delivered: send that many more) and `Close` (the stream is gone).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};

/// The largest payload a frame can carry (a UDP datagram fits).
pub const MAX_PAYLOAD: usize = u16::MAX as usize;

/// Bytes of a frame's header.
pub const HEADER: usize = 7;

/// What a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// A byte stream: `Data` frames are its bytes in order.
    Tcp,
    /// Datagrams: each `Data` frame is one datagram.
    Udp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Host → dom0: connect a new stream to `to` (the guest's address and port).
    Open {
        stream: u32,
        proto: Proto,
        to: SocketAddrV4,
    },
    /// Bytes of a TCP stream, or one UDP datagram.
    Data { stream: u32, bytes: Vec<u8> },
    /// The sender's side of a TCP stream has ended (a half close).
    Eof { stream: u32 },
    /// The receiver wrote `bytes` more of the stream to its socket.
    Credit { stream: u32, bytes: u32 },
    /// The stream is gone (refused, reset, or done); nothing more comes for it.
    Close { stream: u32 },
    /// The first frame each end sends: which protocol it speaks.
    Hello { version: u32 },
}

/// The protocol [`Frame::Hello`] announces.
pub const VERSION: u32 = 1;

const OPEN: u8 = 1;
const DATA: u8 = 2;
const EOF: u8 = 3;
const CREDIT: u8 = 4;
const CLOSE: u8 = 5;
const HELLO: u8 = 6;
/// The stream number of frames that belong to no stream.
const NO_STREAM: u32 = 0;

impl Frame {
    /// The frame's bytes, header first.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, stream, payload): (u8, u32, Vec<u8>) = match self {
            Frame::Open { stream, proto, to } => {
                let mut payload = vec![match proto {
                    Proto::Tcp => 6,
                    Proto::Udp => 17,
                }];
                payload.extend_from_slice(&to.ip().octets());
                payload.extend_from_slice(&to.port().to_be_bytes());
                (OPEN, *stream, payload)
            }
            Frame::Data { stream, bytes } => (DATA, *stream, bytes.clone()),
            Frame::Eof { stream } => (EOF, *stream, Vec::new()),
            Frame::Credit { stream, bytes } => (CREDIT, *stream, bytes.to_le_bytes().to_vec()),
            Frame::Close { stream } => (CLOSE, *stream, Vec::new()),
            Frame::Hello { version } => (HELLO, NO_STREAM, version.to_le_bytes().to_vec()),
        };
        assert!(payload.len() <= MAX_PAYLOAD, "frame payload too large");
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.push(kind);
        out.extend_from_slice(&stream.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Decode one frame from its header and payload.
    pub fn decode(header: [u8; HEADER], payload: Vec<u8>) -> io::Result<Frame> {
        let kind = header[0];
        let stream = u32::from_le_bytes(header[1..5].try_into().expect("4 bytes"));
        let len = usize::from(u16::from_le_bytes([header[5], header[6]]));
        if payload.len() != len {
            return Err(invalid(format!(
                "frame of kind {kind}: {} payload bytes, the header says {len}",
                payload.len()
            )));
        }
        let fixed = |want: usize| {
            if len == want {
                Ok(())
            } else {
                Err(invalid(format!(
                    "frame of kind {kind} with a {len}-byte payload (it has {want})"
                )))
            }
        };
        Ok(match kind {
            OPEN => {
                fixed(7)?;
                let proto = match payload[0] {
                    6 => Proto::Tcp,
                    17 => Proto::Udp,
                    other => return Err(invalid(format!("open: unknown protocol {other}"))),
                };
                let ip = Ipv4Addr::new(payload[1], payload[2], payload[3], payload[4]);
                let port = u16::from_be_bytes([payload[5], payload[6]]);
                Frame::Open {
                    stream,
                    proto,
                    to: SocketAddrV4::new(ip, port),
                }
            }
            DATA => Frame::Data {
                stream,
                bytes: payload,
            },
            EOF => {
                fixed(0)?;
                Frame::Eof { stream }
            }
            CREDIT => {
                fixed(4)?;
                Frame::Credit {
                    stream,
                    bytes: u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")),
                }
            }
            CLOSE => {
                fixed(0)?;
                Frame::Close { stream }
            }
            HELLO => {
                fixed(4)?;
                Frame::Hello {
                    version: u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")),
                }
            }
            other => return Err(invalid(format!("unknown frame kind {other}"))),
        })
    }

    /// Read the next frame; `None` if the channel ends between frames.
    pub fn read_from(reader: &mut impl Read) -> io::Result<Option<Frame>> {
        let mut header = [0u8; HEADER];
        let mut got = 0;
        while got < HEADER {
            match reader.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        let len = usize::from(u16::from_le_bytes([header[5], header[6]]));
        let mut payload = vec![0; len];
        reader.read_exact(&mut payload)?;
        Frame::decode(header, payload).map(Some)
    }

    /// Write the frame in one piece.
    pub fn write_to(&self, writer: &mut impl Write) -> io::Result<()> {
        writer.write_all(&self.encode())?;
        writer.flush()
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Frame> {
        vec![
            Frame::Open {
                stream: 7,
                proto: Proto::Tcp,
                to: "10.0.2.16:13".parse().unwrap(),
            },
            Frame::Open {
                stream: u32::MAX,
                proto: Proto::Udp,
                to: "192.168.1.2:65535".parse().unwrap(),
            },
            Frame::Data {
                stream: 1,
                bytes: b"2026-12-04T18:40:38.123456Z\r\n".to_vec(),
            },
            Frame::Data {
                stream: 2,
                bytes: Vec::new(),
            },
            Frame::Data {
                stream: 3,
                bytes: vec![0xa5; MAX_PAYLOAD],
            },
            Frame::Eof { stream: 4 },
            Frame::Credit {
                stream: 5,
                bytes: 262_144,
            },
            Frame::Close { stream: 6 },
            Frame::Hello { version: VERSION },
        ]
    }

    #[test]
    fn frames_round_trip_back_to_back() {
        let frames = every_kind();
        let mut channel = Vec::new();
        for frame in &frames {
            frame.write_to(&mut channel).unwrap();
        }
        let mut reader = channel.as_slice();
        for frame in &frames {
            assert_eq!(Frame::read_from(&mut reader).unwrap().as_ref(), Some(frame));
        }
        assert_eq!(Frame::read_from(&mut reader).unwrap(), None);
    }

    #[test]
    fn the_wire_layout_is_fixed() {
        let open = Frame::Open {
            stream: 0x0102_0304,
            proto: Proto::Tcp,
            to: "10.0.2.16:13".parse().unwrap(),
        };
        assert_eq!(open.encode(), [1, 4, 3, 2, 1, 7, 0, 6, 10, 0, 2, 16, 0, 13]);
        let credit = Frame::Credit {
            stream: 9,
            bytes: 0x100,
        };
        assert_eq!(credit.encode(), [4, 9, 0, 0, 0, 4, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn a_channel_cut_inside_a_frame_is_an_error() {
        let bytes = Frame::Data {
            stream: 1,
            bytes: b"abc".to_vec(),
        }
        .encode();
        for cut in 1..bytes.len() {
            let err = Frame::read_from(&mut &bytes[..cut]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
    }

    #[test]
    fn malformed_frames_are_refused_with_the_reason() {
        let cases: [(&[u8], &str); 5] = [
            (&[9, 0, 0, 0, 0, 0, 0], "unknown frame kind 9"),
            (
                &[3, 1, 0, 0, 0, 1, 0, 0],
                "frame of kind 3 with a 1-byte payload",
            ),
            (
                &[4, 1, 0, 0, 0, 2, 0, 0, 0],
                "frame of kind 4 with a 2-byte payload",
            ),
            (
                &[1, 1, 0, 0, 0, 7, 0, 1, 10, 0, 2, 16, 0, 13],
                "open: unknown protocol 1",
            ),
            (
                &[1, 1, 0, 0, 0, 3, 0, 6, 10, 0],
                "frame of kind 1 with a 3-byte",
            ),
        ];
        for (bytes, reason) in cases {
            let err = Frame::read_from(&mut &bytes[..]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bytes:?}");
            assert!(err.to_string().contains(reason), "{bytes:?}: {err}");
        }
    }
}
