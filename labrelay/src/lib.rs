//! The lab relay: how `cargo xtask run --forward HOST:GUEST` reaches a guest in the Xen
//! lab from the host.
//!
//! QEMU's user-network port forwarding listens with a backlog of one, so a burst of
//! clients waits in SYN back-off and some time out. Instead, xtask listens on the host
//! port itself ([`host`], backlog [`host::BACKLOG`]) and carries every connection and
//! every UDP client as a stream over one virtio-serial channel into dom0, where the
//! `labrelay` program ([`dom0`]) connects each stream to the guest over the lab's
//! bridge. Both ends run the same engine ([`mux`]) on the same frames ([`wire`]).

pub mod dom0;
pub mod host;
pub mod mux;
pub mod wire;
