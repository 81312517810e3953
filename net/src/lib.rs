//! Networking for apps: smoltcp on the first vif, with async TCP and UDP sockets.
//!
//! ```ignore
//! let info = kernel::executor::block_on(net::start(&args))?;   // ip=/gw= or DHCP
//! let mut listener = net::TcpListener::bind(13, 64)?;
//! let stream = listener.accept().await;
//! ```
//!
//! One background task polls the interface. It runs when the vif's event channel
//! fires, when a socket operation wants frames sent, or when smoltcp's own timers are
//! due (`poll_delay`), and sleeps otherwise: an idle guest costs no CPU.

#![cfg_attr(target_os = "none", no_std)]

extern crate alloc;

pub mod config;
#[cfg(target_os = "none")]
mod stack;
#[cfg(target_os = "none")]
mod tcp;
#[cfg(target_os = "none")]
mod udp;

pub use config::{Config, ConfigError};

/// A socket operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketError {
    /// The peer reset or closed the connection.
    Closed,
    /// Port 0 cannot be bound.
    InvalidPort,
    /// No route to the destination (no address or gateway yet).
    Unaddressable,
}

impl core::fmt::Display for SocketError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Closed => f.write_str("connection closed"),
            Self::InvalidPort => f.write_str("port 0 cannot be bound"),
            Self::Unaddressable => f.write_str("destination unreachable"),
        }
    }
}
#[cfg(target_os = "none")]
pub use stack::{NetError, NetInfo, counters, start};
#[cfg(target_os = "none")]
pub use tcp::{TcpListener, TcpStream};
#[cfg(target_os = "none")]
pub use udp::UdpSocket;
