//! Shared-memory protocols between a Xen guest and its back ends: byte rings (console,
//! Xenstore), request/response rings (netif, blkif), the Xenstore wire format, NoXS v1
//! (the device block and control pages), and [`shared`], the one way to touch memory
//! another domain maps.
//!
//! The guest's front ends and dom0's back ends both use this crate, so each side is
//! tested against the other on the host. Everything here is pure: no hypercalls, no
//! I/O. Indices and lengths read from a page the other domain can write are validated
//! before use; a broken peer yields an error, never a panic or an out-of-bounds access.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod blkif;
pub mod byte_ring;
pub mod console;
pub mod netif;
pub mod noxs;
pub mod ring;
#[cfg(feature = "serde")]
mod serde_impls;
pub mod shared;
pub mod xenstore;
