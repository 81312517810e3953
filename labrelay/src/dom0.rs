//! dom0's end: each stream the host opens becomes a socket to the guest.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crate::mux::{Mux, Peer};
use crate::wire::{Frame, MAX_PAYLOAD, Proto};

/// How long a connection to a guest may take before the stream is refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a UDP stream's reader looks whether its stream was closed.
const UDP_POLL: Duration = Duration::from_millis(500);

/// Serve the host's streams over `link` until it ends: [`Mux::serve`] with dom0's
/// handling of `Open`.
pub fn serve(mux: &Arc<Mux>, link: impl io::Read) -> io::Result<()> {
    mux.serve(link, |mux, stream, proto, to| {
        open(mux, stream, proto, to);
        Ok(())
    })
}

/// Connect `stream` to `to`; a stream that cannot be connected is closed (`Close`).
fn open(mux: &Arc<Mux>, stream: u32, proto: Proto, to: SocketAddrV4) {
    let opened = match proto {
        Proto::Tcp => open_tcp(mux, stream, to),
        Proto::Udp => open_udp(mux, stream, to),
    };
    if let Err(err) = opened {
        eprintln!("labrelay: stream {stream} to {to} ({proto:?}): {err}");
        mux.abort(stream);
    }
}

/// The stream is registered at once (the host's data may come before the guest
/// answers); a thread connects and then relays.
fn open_tcp(mux: &Arc<Mux>, stream: u32, to: SocketAddrV4) -> io::Result<()> {
    let pending = mux.pending_tcp(stream);
    let mux = mux.clone();
    thread::Builder::new()
        .name(format!("connect-{stream}"))
        .spawn(
            move || match TcpStream::connect_timeout(&to.into(), CONNECT_TIMEOUT) {
                Ok(socket) => {
                    let _ = socket.set_nodelay(true);
                    let _ = mux.run_tcp(pending, socket);
                }
                Err(err) => {
                    eprintln!("labrelay: stream {stream}: connecting to {to}: {err}");
                    mux.abort(stream);
                }
            },
        )?;
    Ok(())
}

/// A UDP socket of dom0's own, connected to `to`: the guest's replies come back on it.
fn open_udp(mux: &Arc<Mux>, stream: u32, to: SocketAddrV4) -> io::Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect(to)?;
    socket.set_read_timeout(Some(UDP_POLL))?;
    let end = Arc::new(UdpEnd {
        socket: socket.try_clone()?,
        closed: AtomicBool::new(false),
    });
    mux.register(stream, end.clone());
    let mux = mux.clone();
    thread::Builder::new()
        .name(format!("udp-{stream}"))
        .spawn(move || {
            let mut buf = vec![0u8; MAX_PAYLOAD];
            while !end.closed.load(Ordering::Acquire) {
                // Timeouts, and an ICMP "port unreachable" from a guest that is not
                // listening (yet), are errors here: the stream lives on.
                if let Ok(n) = socket.recv(&mut buf) {
                    let _ = mux.send(&Frame::Data {
                        stream,
                        bytes: buf[..n].to_vec(),
                    });
                }
            }
        })?;
    Ok(())
}

#[derive(Debug)]
struct UdpEnd {
    socket: UdpSocket,
    closed: AtomicBool,
}

impl Peer for UdpEnd {
    fn data(&self, bytes: Vec<u8>) {
        // UDP may lose a datagram; the client asks again.
        let _ = self.socket.send(&bytes);
    }

    fn eof(&self) {}

    fn credit(&self, _bytes: u32) {}

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}
