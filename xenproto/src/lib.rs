//! Shared-memory protocols between a Xen guest and its back ends.
//!
//! The guest's front ends and dom0's back ends both use this crate, so each side is
//! tested against the other on the host. Everything here is pure: no hypercalls, no
//! I/O. Indices and lengths read from a page the other domain can write are validated
//! before use; a broken peer yields an error, never a panic or an out-of-bounds access.

#![cfg_attr(not(test), no_std)]

pub mod console;
