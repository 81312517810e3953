//! Async TCP on the stack's socket set.
//!
//! smoltcp has no accept queue: a socket in `Listen` takes one connection. A
//! [`TcpListener`] therefore keeps a backlog of listening sockets on its port and
//! replaces each one that a client connects to, so up to `backlog` handshakes can be
//! under way at once.

use alloc::vec;
use alloc::vec::Vec;
use core::future::poll_fn;
use core::task::Poll;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::IpEndpoint;

use crate::SocketError;
use crate::stack::{Stack, kick, with_stack};

/// Receive and send buffer sizes of each socket: small, for request/response
/// services with many connections.
const BUFFER: usize = 1024;

fn new_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; BUFFER]),
        tcp::SocketBuffer::new(vec![0; BUFFER]),
    )
}

fn listening(stack: &mut Stack, port: u16) -> SocketHandle {
    let mut socket = new_socket();
    socket
        .listen(port)
        .expect("a fresh socket can listen on a non-zero port");
    stack.sockets.add(socket)
}

/// Accepts connections on a port.
#[derive(Debug)]
pub struct TcpListener {
    port: u16,
    backlog: Vec<SocketHandle>,
}

impl TcpListener {
    /// Listen on `port` with `backlog` sockets.
    pub fn bind(port: u16, backlog: usize) -> Result<Self, SocketError> {
        if port == 0 {
            return Err(SocketError::InvalidPort);
        }
        let backlog = with_stack(|stack| {
            (0..backlog.max(1))
                .map(|_| listening(stack, port))
                .collect()
        });
        Ok(Self { port, backlog })
    }

    /// The next connection a client opened.
    pub async fn accept(&mut self) -> TcpStream {
        poll_fn(|cx| {
            with_stack(|stack| {
                for slot in &mut self.backlog {
                    let socket = stack.sockets.get_mut::<tcp::Socket<'_>>(*slot);
                    match socket.state() {
                        State::Listen | State::SynReceived => {
                            socket.register_recv_waker(cx.waker());
                        }
                        // Established, or already closing with data: hand it over.
                        _ => {
                            let handle = core::mem::replace(slot, listening(stack, self.port));
                            return Poll::Ready(TcpStream { handle });
                        }
                    }
                }
                Poll::Pending
            })
        })
        .await
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        with_stack(|stack| {
            for handle in self.backlog.drain(..) {
                stack.sockets.remove(handle);
            }
        });
    }
}

/// One connection; aborted if dropped without [`TcpStream::close`].
#[derive(Debug)]
pub struct TcpStream {
    handle: SocketHandle,
}

impl TcpStream {
    fn with_socket<T>(&self, f: impl FnOnce(&mut tcp::Socket<'static>) -> T) -> T {
        with_stack(|stack| f(stack.sockets.get_mut::<tcp::Socket<'static>>(self.handle)))
    }

    /// The client's address.
    pub fn peer(&self) -> Option<IpEndpoint> {
        self.with_socket(|socket| socket.remote_endpoint())
    }

    /// Send all of `data`.
    pub async fn write_all(&mut self, mut data: &[u8]) -> Result<(), SocketError> {
        while !data.is_empty() {
            let sent = poll_fn(|cx| {
                self.with_socket(|socket| {
                    if !socket.may_send() {
                        return Poll::Ready(Err(SocketError::Closed));
                    }
                    if socket.can_send() {
                        return Poll::Ready(
                            socket.send_slice(data).map_err(|_| SocketError::Closed),
                        );
                    }
                    socket.register_send_waker(cx.waker());
                    Poll::Pending
                })
            })
            .await?;
            data = &data[sent..];
            kick();
        }
        Ok(())
    }

    /// Read into `buf`; `Ok(0)` once the peer has closed its side.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, SocketError> {
        poll_fn(|cx| {
            self.with_socket(|socket| {
                if socket.can_recv() {
                    let n = socket.recv_slice(buf).map_err(|_| SocketError::Closed);
                    kick(); // a window update may be due
                    return Poll::Ready(n);
                }
                if !socket.may_recv() {
                    return Poll::Ready(if socket.state() == State::CloseWait {
                        Ok(0)
                    } else {
                        Err(SocketError::Closed)
                    });
                }
                socket.register_recv_waker(cx.waker());
                Poll::Pending
            })
        })
        .await
    }

    /// Close our side after everything written is sent, and release the socket once
    /// the peer has acknowledged (or reset).
    pub async fn close(self) {
        self.with_socket(tcp::Socket::close);
        kick();
        poll_fn(|cx| {
            self.with_socket(|socket| match socket.state() {
                // Our FIN is acknowledged; TIME-WAIT needs no socket of ours.
                State::Closed | State::TimeWait | State::FinWait2 => Poll::Ready(()),
                _ => {
                    socket.register_send_waker(cx.waker());
                    Poll::Pending
                }
            })
        })
        .await;
        // `Drop` releases the socket.
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        with_stack(|stack| {
            let socket = stack.sockets.get_mut::<tcp::Socket<'_>>(self.handle);
            if !matches!(
                socket.state(),
                State::Closed | State::TimeWait | State::FinWait2
            ) {
                // The peer's next segment finds no socket and gets a reset.
                socket.abort();
            }
            stack.sockets.remove(self.handle);
        });
    }
}
