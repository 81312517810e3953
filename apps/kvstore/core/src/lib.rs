//! The pure core of `apps/kvstore`, an in-memory key-value server speaking a subset of
//! Redis's protocol: [`resp`] parses requests (RESP2 arrays and inline commands) and
//! encodes replies, [`store`] holds the keys and runs the commands, [`snapshot`] is the
//! on-disk format that `SAVE` writes and boot loads, [`buffers`] keeps the connections'
//! buffers within one budget.
//!
//! Nothing here does I/O, so the guest app stays a thin loop of sockets and disk
//! requests, and everything a client or a disk can send is tested on the host.
//! Everything read from a client or a disk is hostile: lengths are checked against
//! [`resp::MAX_BULK`] and [`resp::MAX_REQUEST`] before anything is allocated for them.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod buffers;
pub mod resp;
pub mod snapshot;
pub mod store;

#[cfg(test)]
mod properties;
