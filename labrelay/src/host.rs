//! The host's end: for each forward, a TCP listener and a UDP socket on 127.0.0.1;
//! each accepted connection, and each UDP client (by its address), is a stream.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::mux::{Mux, Peer};
use crate::wire::{Frame, MAX_PAYLOAD, Proto, VERSION};

/// Connections the kernel queues before the relay accepts them: a load generator's
/// burst waits here instead of in SYN back-off.
pub const BACKLOG: i32 = 1024;

/// A UDP client silent this long loses its stream (and dom0 its socket).
const UDP_IDLE: Duration = Duration::from_secs(60);

/// UDP clients followed at once per forward; beyond it the longest silent goes.
const MAX_UDP_CLIENTS: usize = 1024;

/// How often the UDP receiver looks at the clock and the stop flag.
const UDP_POLL: Duration = Duration::from_millis(200);

/// `127.0.0.1:host_port` on the host leads to `to`, for TCP and UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub host_port: u16,
    pub to: SocketAddrV4,
}

/// Every forward's sockets, bound but not relaying yet: binding before the lab boots
/// makes a port that is taken fail at once.
#[derive(Debug)]
pub struct Listeners {
    bound: Vec<(Forward, TcpListener, UdpSocket)>,
}

impl Listeners {
    pub fn bind(forwards: &[Forward]) -> io::Result<Self> {
        let mut bound = Vec::new();
        for forward in forwards {
            let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, forward.host_port);
            let named = |proto: &'static str| {
                move |err: io::Error| {
                    io::Error::new(err.kind(), format!("{proto} port {addr}: {err}"))
                }
            };
            let tcp = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            // A port whose last connections linger in TIME_WAIT can be bound again.
            tcp.set_reuse_address(true)?;
            tcp.bind(&addr.into()).map_err(named("tcp"))?;
            tcp.listen(BACKLOG).map_err(named("tcp"))?;
            let udp = UdpSocket::bind(addr).map_err(named("udp"))?;
            bound.push((*forward, tcp.into(), udp));
        }
        Ok(Self { bound })
    }

    /// Relay over `link` (the channel to dom0's end) until the returned relay is
    /// dropped or the channel ends.
    pub fn start(self, link: UnixStream) -> io::Result<HostRelay> {
        let mux = Mux::new(Box::new(link.try_clone()?));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut wakers = Vec::new();
        let reader = link.try_clone()?;
        let serving = mux.clone();
        threads.push(
            thread::Builder::new()
                .name("relay-link".into())
                .spawn(move || {
                    let _ = serving.serve(reader, |_, stream, _, _| {
                        Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("dom0's end opened stream {stream}: only the host's does"),
                        ))
                    });
                })?,
        );
        let _ = mux.send(&Frame::Hello { version: VERSION });
        for (forward, tcp, udp) in self.bound {
            wakers.push(Socket::from(tcp.try_clone()?));
            let (mux_tcp, stop_tcp) = (mux.clone(), stop.clone());
            threads.push(
                thread::Builder::new()
                    .name(format!("relay-accept-{}", forward.host_port))
                    .spawn(move || accept(&mux_tcp, &tcp, forward.to, &stop_tcp))?,
            );
            let (mux_udp, stop_udp) = (mux.clone(), stop.clone());
            udp.set_read_timeout(Some(UDP_POLL))?;
            let udp = Arc::new(udp);
            threads.push(
                thread::Builder::new()
                    .name(format!("relay-udp-{}", forward.host_port))
                    .spawn(move || relay_udp(&mux_udp, &udp, forward.to, &stop_udp))?,
            );
        }
        Ok(HostRelay {
            mux,
            link,
            stop,
            wakers,
            threads,
        })
    }
}

/// The host's end at work; dropping it closes every stream and the listeners.
#[derive(Debug)]
pub struct HostRelay {
    mux: Arc<Mux>,
    link: UnixStream,
    stop: Arc<AtomicBool>,
    /// The listeners, to wake their accepting threads with.
    wakers: Vec<Socket>,
    threads: Vec<JoinHandle<()>>,
}

impl HostRelay {
    /// Streams open now (connections and UDP clients).
    pub fn open_streams(&self) -> usize {
        self.mux.open_streams()
    }
}

impl Drop for HostRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for listener in &self.wakers {
            // On Linux this makes a blocked accept() return.
            let _ = listener.shutdown(Shutdown::Read);
        }
        let _ = self.link.shutdown(Shutdown::Both);
        self.mux.close_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Each accepted connection becomes a stream to `to`.
fn accept(mux: &Arc<Mux>, listener: &TcpListener, to: SocketAddrV4, stop: &AtomicBool) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::Acquire) {
            return;
        }
        let Ok((socket, _)) = accepted else {
            // Out of file descriptors, or a client gone before it was accepted.
            thread::sleep(Duration::from_millis(20));
            continue;
        };
        let _ = socket.set_nodelay(true);
        let stream = mux.new_stream();
        // Registered before the Open goes out: dom0's answer may come at once.
        let pending = mux.pending_tcp(stream);
        let _ = mux.send(&Frame::Open {
            stream,
            proto: Proto::Tcp,
            to,
        });
        let _ = mux.run_tcp(pending, socket);
    }
}

/// Each UDP client (address) is a stream to `to`; replies go back to the address.
fn relay_udp(mux: &Arc<Mux>, socket: &Arc<UdpSocket>, to: SocketAddrV4, stop: &AtomicBool) {
    let mut clients: HashMap<SocketAddr, (u32, Instant)> = HashMap::new();
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let mut swept = Instant::now();
    while !stop.load(Ordering::Acquire) {
        if let Ok((len, from)) = socket.recv_from(&mut buf) {
            let now = Instant::now();
            let stream = match clients.get_mut(&from) {
                Some((stream, seen)) if mux.is_open(*stream) => {
                    *seen = now;
                    *stream
                }
                _ => match open_udp(mux, socket, from, to) {
                    Ok(stream) => {
                        clients.insert(from, (stream, now));
                        stream
                    }
                    Err(_) => continue,
                },
            };
            let _ = mux.send(&Frame::Data {
                stream,
                bytes: buf[..len].to_vec(),
            });
        }
        if swept.elapsed() >= UDP_POLL || clients.len() > MAX_UDP_CLIENTS {
            swept = Instant::now();
            clients.retain(|_, (stream, seen)| {
                let keep = seen.elapsed() < UDP_IDLE && mux.is_open(*stream);
                if !keep {
                    mux.abort(*stream);
                }
                keep
            });
            while clients.len() > MAX_UDP_CLIENTS {
                let oldest = clients
                    .iter()
                    .min_by_key(|(_, (_, seen))| *seen)
                    .map(|(addr, (stream, _))| (*addr, *stream));
                if let Some((addr, stream)) = oldest {
                    clients.remove(&addr);
                    mux.abort(stream);
                }
            }
        }
    }
}

fn open_udp(
    mux: &Arc<Mux>,
    socket: &Arc<UdpSocket>,
    client: SocketAddr,
    to: SocketAddrV4,
) -> io::Result<u32> {
    let stream = mux.new_stream();
    mux.register(
        stream,
        Arc::new(UdpClient {
            socket: socket.clone(),
            client,
        }),
    );
    mux.send(&Frame::Open {
        stream,
        proto: Proto::Udp,
        to,
    })?;
    Ok(stream)
}

/// A UDP client of the host's socket: what the guest sends back goes to it.
#[derive(Debug)]
struct UdpClient {
    socket: Arc<UdpSocket>,
    client: SocketAddr,
}

impl Peer for UdpClient {
    fn data(&self, bytes: Vec<u8>) {
        let _ = self.socket.send_to(&bytes, self.client);
    }

    fn eof(&self) {}

    fn credit(&self, _bytes: u32) {}

    fn close(&self) {}
}
