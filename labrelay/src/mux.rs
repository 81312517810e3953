//! The relay's engine, the same at both ends: many streams over one channel.
//!
//! A [`Mux`] writes whole frames to the channel under a lock and, in [`Mux::serve`],
//! reads frames and hands each to its stream's [`Peer`]. A TCP stream is two threads
//! ([`Mux::run_tcp`]): one reads the socket into `Data` frames, as far as the window
//! lets it ([`WINDOW`], topped up by the other end's `Credit` once it has written the
//! bytes to its socket), and one writes what comes in to the socket. So a client that
//! does not read holds up only its own stream, and neither end buffers more than a
//! window per stream and direction.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::Duration;

use socket2::SockRef;

use crate::wire::{Frame, Proto, VERSION};

/// Bytes one end may send on a stream before the other has credited them.
pub const WINDOW: usize = 256 * 1024;

/// Bytes of one `Data` frame of a TCP stream: small enough that streams take turns.
const CHUNK: usize = 16 * 1024;

/// How soon a writer blocked on a client that does not read notices a close.
const CLOSED_POLL: Duration = Duration::from_millis(200);

/// Stack of a stream's threads (their buffers are on the heap); a lab run may carry
/// hundreds of streams at once.
const STREAM_STACK: usize = 128 * 1024;

/// One end's side of a stream: what the frames that come in for it do.
pub trait Peer: Send + Sync {
    /// Bytes (TCP) or a datagram (UDP) from the other end.
    fn data(&self, bytes: Vec<u8>);
    /// The other end's sender is done (TCP half close).
    fn eof(&self);
    /// The other end delivered `bytes` more of ours.
    fn credit(&self, bytes: u32);
    /// The stream is gone: release what it holds, send nothing more for it.
    fn close(&self);
}

/// Many streams over one channel.
pub struct Mux {
    link: Mutex<Box<dyn Write + Send>>,
    streams: Mutex<HashMap<u32, Arc<dyn Peer>>>,
    next_stream: AtomicU32,
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux")
            .field("streams", &self.lock_streams().len())
            .finish_non_exhaustive()
    }
}

impl Mux {
    /// A mux writing to `link`.
    pub fn new(link: Box<dyn Write + Send>) -> Arc<Self> {
        Arc::new(Self {
            link: Mutex::new(link),
            streams: Mutex::new(HashMap::new()),
            next_stream: AtomicU32::new(1),
        })
    }

    /// Send one frame. A channel that fails ends the relay through [`Mux::serve`]'s
    /// reader, so callers may ignore the error.
    pub fn send(&self, frame: &Frame) -> io::Result<()> {
        let mut link = self.link.lock().unwrap_or_else(PoisonError::into_inner);
        frame.write_to(&mut *link)
    }

    fn lock_streams(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<dyn Peer>>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh stream number (the end that opens streams numbers them).
    pub fn new_stream(&self) -> u32 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }

    /// Route the frames of `stream` to `peer` from now on.
    pub fn register(&self, stream: u32, peer: Arc<dyn Peer>) {
        self.lock_streams().insert(stream, peer);
    }

    fn peer(&self, stream: u32) -> Option<Arc<dyn Peer>> {
        self.lock_streams().get(&stream).cloned()
    }

    /// Whether `stream` is still open.
    pub fn is_open(&self, stream: u32) -> bool {
        self.lock_streams().contains_key(&stream)
    }

    /// How many streams are open.
    pub fn open_streams(&self) -> usize {
        self.lock_streams().len()
    }

    /// Drop `stream` without telling the other end (both its halves ended).
    fn forget(&self, stream: u32) {
        self.lock_streams().remove(&stream);
    }

    /// End `stream` here and tell the other end (`Close`).
    pub fn abort(&self, stream: u32) {
        let peer = self.lock_streams().remove(&stream);
        if let Some(peer) = peer {
            peer.close();
            let _ = self.send(&Frame::Close { stream });
        }
    }

    /// Close every stream here (the channel is gone).
    pub fn close_all(&self) {
        let peers: Vec<Arc<dyn Peer>> = self.lock_streams().drain().map(|(_, p)| p).collect();
        for peer in peers {
            peer.close();
        }
    }

    /// Read frames from `link` and act on them until it ends; then close every stream.
    /// `open` handles the other end's `Open` frames (only dom0's end takes them).
    pub fn serve(
        self: &Arc<Self>,
        mut link: impl Read,
        mut open: impl FnMut(&Arc<Mux>, u32, Proto, SocketAddrV4) -> io::Result<()>,
    ) -> io::Result<()> {
        let result = loop {
            let frame = match Frame::read_from(&mut link) {
                Ok(Some(frame)) => frame,
                Ok(None) => break Ok(()),
                Err(err) => break Err(err),
            };
            // A stream closed here a moment ago may still get frames: they are dropped.
            match frame {
                Frame::Hello { version } if version != VERSION => {
                    break Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the other end speaks version {version}, this one {VERSION}"),
                    ));
                }
                Frame::Hello { .. } => {}
                Frame::Open { stream, proto, to } => {
                    if let Err(err) = open(self, stream, proto, to) {
                        break Err(err);
                    }
                }
                Frame::Data { stream, bytes } => {
                    if let Some(peer) = self.peer(stream) {
                        peer.data(bytes);
                    }
                }
                Frame::Eof { stream } => {
                    if let Some(peer) = self.peer(stream) {
                        peer.eof();
                    }
                }
                Frame::Credit { stream, bytes } => {
                    if let Some(peer) = self.peer(stream) {
                        peer.credit(bytes);
                    }
                }
                Frame::Close { stream } => {
                    let peer = self.lock_streams().remove(&stream);
                    if let Some(peer) = peer {
                        peer.close();
                    }
                }
            }
        };
        self.close_all();
        result
    }

    /// Register a TCP stream whose socket is not there yet (dom0 connects to the guest
    /// while the host may already send data): what comes in waits for [`Mux::run_tcp`].
    pub fn pending_tcp(&self, stream: u32) -> PendingTcp {
        let (inbox, received) = mpsc::channel();
        let end = Arc::new(TcpEnd {
            inbox: Mutex::new(Some(inbox)),
            window: Window::new(WINDOW),
            socket: OnceLock::new(),
            halves_done: AtomicU8::new(0),
            closed: AtomicBool::new(false),
        });
        self.register(stream, end.clone());
        PendingTcp {
            stream,
            end,
            received,
        }
    }

    /// Relay `socket` as the TCP stream `pending`: one thread reads it into frames,
    /// another writes the frames that come in. Fails (and aborts the stream) only if
    /// the threads cannot be started.
    pub fn run_tcp(self: &Arc<Self>, pending: PendingTcp, socket: TcpStream) -> io::Result<()> {
        let PendingTcp {
            stream,
            end,
            received,
        } = pending;
        let started = (|| {
            let reader = socket.try_clone()?;
            let writer = socket.try_clone()?;
            writer.set_write_timeout(Some(CLOSED_POLL))?;
            let _ = end.socket.set(socket);
            if end.closed.load(Ordering::Acquire) {
                // Closed while connecting: close() found no socket to reset.
                end.close();
            }
            let (mux, pump_end) = (self.clone(), end.clone());
            thread::Builder::new()
                .name(format!("relay-{stream}-out"))
                .stack_size(STREAM_STACK)
                .spawn(move || mux.pump(stream, &pump_end, reader))?;
            let mux = self.clone();
            thread::Builder::new()
                .name(format!("relay-{stream}-in"))
                .stack_size(STREAM_STACK)
                .spawn(move || mux.drain(stream, &end, received, writer))?;
            Ok(())
        })();
        if started.is_err() {
            self.abort(stream);
        }
        started
    }

    /// Socket → frames, within the window.
    fn pump(&self, stream: u32, end: &TcpEnd, mut socket: TcpStream) {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let Some(open) = end.window.wait_open() else {
                return; // closed
            };
            let want = open.min(CHUNK);
            match socket.read(&mut buf[..want]) {
                Ok(0) => {
                    if !end.closed.load(Ordering::Acquire) {
                        let _ = self.send(&Frame::Eof { stream });
                        end.half_done(self, stream);
                    }
                    return;
                }
                Ok(n) => {
                    end.window.consume(n);
                    let _ = self.send(&Frame::Data {
                        stream,
                        bytes: buf[..n].to_vec(),
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.abort(stream);
                    return;
                }
            }
        }
    }

    /// Frames → socket, crediting what was written.
    fn drain(&self, stream: u32, end: &TcpEnd, received: Receiver<Inbound>, mut socket: TcpStream) {
        // Ends when the stream closes (the sender is dropped) or after an Eof.
        for inbound in received {
            match inbound {
                Inbound::Data(bytes) => {
                    if !write_unless_closed(&mut socket, &bytes, &end.closed) {
                        self.abort(stream);
                        return;
                    }
                    let _ = self.send(&Frame::Credit {
                        stream,
                        bytes: bytes.len() as u32,
                    });
                }
                Inbound::Eof => {
                    let _ = socket.shutdown(Shutdown::Write);
                    end.half_done(self, stream);
                    return;
                }
            }
        }
    }
}

/// Write all of `bytes` unless the stream closes first (a client that does not read
/// must not keep the writer forever); whether it was all written.
fn write_unless_closed(socket: &mut TcpStream, mut bytes: &[u8], closed: &AtomicBool) -> bool {
    while !bytes.is_empty() {
        match socket.write(bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if closed.load(Ordering::Acquire) {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// A TCP stream registered before its socket exists ([`Mux::pending_tcp`]).
#[derive(Debug)]
pub struct PendingTcp {
    stream: u32,
    end: Arc<TcpEnd>,
    received: Receiver<Inbound>,
}

#[derive(Debug)]
enum Inbound {
    Data(Vec<u8>),
    Eof,
}

/// A TCP stream at one end.
#[derive(Debug)]
struct TcpEnd {
    /// To the thread that writes the socket; taken on close.
    inbox: Mutex<Option<Sender<Inbound>>>,
    window: Window,
    /// A handle to shut the socket down with on close (its threads have their own).
    socket: OnceLock<TcpStream>,
    /// Directions that ended with an Eof: at two the stream is done.
    halves_done: AtomicU8,
    closed: AtomicBool,
}

impl TcpEnd {
    fn deliver(&self, inbound: Inbound) {
        if let Some(inbox) = &*self.inbox.lock().unwrap_or_else(PoisonError::into_inner) {
            let _ = inbox.send(inbound);
        }
    }

    fn half_done(&self, mux: &Mux, stream: u32) {
        if self.halves_done.fetch_add(1, Ordering::AcqRel) == 1 {
            mux.forget(stream);
        }
    }
}

impl Peer for TcpEnd {
    fn data(&self, bytes: Vec<u8>) {
        self.deliver(Inbound::Data(bytes));
    }

    fn eof(&self) {
        self.deliver(Inbound::Eof);
    }

    fn credit(&self, bytes: u32) {
        self.window.grant(bytes as usize);
    }

    /// The connection is reset, not ended: the client of a guest that refused it, or
    /// of one that reset it, sees a reset. Shutting down only the reading side wakes
    /// the reader without sending a FIN; the writer wakes on its timeout; the last of
    /// the socket's handles to go sends the RST (SO_LINGER 0).
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.window.close();
        if let Some(socket) = self.socket.get() {
            let _ = SockRef::from(socket).set_linger(Some(Duration::ZERO));
            let _ = socket.shutdown(Shutdown::Read);
        }
    }
}

/// How many bytes a stream's sender may still send, and whether it is closed.
#[derive(Debug)]
struct Window {
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl Window {
    fn new(bytes: usize) -> Self {
        Self {
            state: Mutex::new((bytes, false)),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, bool)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wait until some window is open; `None` once closed.
    fn wait_open(&self) -> Option<usize> {
        let mut state = self.lock();
        loop {
            match *state {
                (_, true) => return None,
                (0, false) => {
                    state = self
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                (open, false) => return Some(open),
            }
        }
    }

    fn consume(&self, bytes: usize) {
        let mut state = self.lock();
        state.0 = state.0.saturating_sub(bytes);
    }

    fn grant(&self, bytes: usize) {
        let mut state = self.lock();
        // A peer crediting more than it was sent gains nothing beyond one window.
        state.0 = state.0.saturating_add(bytes).min(WINDOW);
        self.changed.notify_all();
    }

    fn close(&self) {
        self.lock().1 = true;
        self.changed.notify_all();
    }
}
