//! xendevd's API: what chaos (or anyone) asks the device daemon over its Unix socket.
//!
//! The protocol is newline-delimited JSON: one [`Request`] per line, answered by one
//! [`Response`] line. A malformed line gets an error response; the daemon goes on.

pub mod api;
pub mod client;
pub mod engine;

/// Where xendevd listens.
pub const SOCKET_PATH: &str = "/run/xendevd.sock";
