//! Async UDP on the stack's socket set.

use alloc::vec;
use core::future::poll_fn;
use core::task::Poll;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp;
use smoltcp::wire::IpEndpoint;

use crate::SocketError;
use crate::stack::{kick, with_stack};

/// Datagrams [`UdpSocket::bind`] queues per direction, and their total bytes.
const PACKETS: usize = 16;
const BYTES: usize = 16 * 1024;

/// A UDP socket bound to a port; unbound when dropped.
#[derive(Debug)]
pub struct UdpSocket {
    handle: SocketHandle,
}

impl UdpSocket {
    /// Bind to `port` on every address of the interface, with room for 16 datagrams
    /// (16 KiB) waiting in each direction.
    pub fn bind(port: u16) -> Result<Self, SocketError> {
        Self::with_queue(port, PACKETS, BYTES)
    }

    /// Bind to `port` with room for `datagrams` datagrams, `bytes` in all, waiting in
    /// each direction: what arrives while the queue is full is dropped, so a server
    /// that many clients may ask at once wants a queue as deep as its TCP backlog.
    pub fn with_queue(port: u16, datagrams: usize, bytes: usize) -> Result<Self, SocketError> {
        if port == 0 {
            return Err(SocketError::InvalidPort);
        }
        let buffer = || {
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; datagrams.max(1)],
                vec![0; bytes],
            )
        };
        let mut socket = udp::Socket::new(buffer(), buffer());
        socket.bind(port).map_err(|_| SocketError::InvalidPort)?;
        Ok(Self {
            handle: with_stack(|stack| stack.sockets.add(socket)),
        })
    }

    fn with_socket<T>(&self, f: impl FnOnce(&mut udp::Socket<'static>) -> T) -> T {
        with_stack(|stack| f(stack.sockets.get_mut::<udp::Socket<'static>>(self.handle)))
    }

    /// Wait for a datagram; returns the bytes copied (the rest of a datagram longer
    /// than `buf` is dropped) and the sender.
    pub async fn recv_from(&self, buf: &mut [u8]) -> (usize, IpEndpoint) {
        poll_fn(|cx| {
            self.with_socket(|socket| match socket.recv() {
                Ok((payload, meta)) => {
                    let len = payload.len().min(buf.len());
                    buf[..len].copy_from_slice(&payload[..len]);
                    Poll::Ready((len, meta.endpoint))
                }
                Err(_) => {
                    socket.register_recv_waker(cx.waker());
                    Poll::Pending
                }
            })
        })
        .await
    }

    /// Send one datagram to `to`, waiting for buffer space if needed.
    pub async fn send_to(&self, data: &[u8], to: IpEndpoint) -> Result<(), SocketError> {
        poll_fn(|cx| {
            self.with_socket(|socket| match socket.send_slice(data, to) {
                Ok(()) => Poll::Ready(Ok(())),
                Err(udp::SendError::BufferFull) => {
                    socket.register_send_waker(cx.waker());
                    Poll::Pending
                }
                Err(udp::SendError::Unaddressable) => Poll::Ready(Err(SocketError::Unaddressable)),
            })
        })
        .await?;
        kick();
        Ok(())
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        with_stack(|stack| {
            stack.sockets.remove(self.handle);
        });
    }
}
