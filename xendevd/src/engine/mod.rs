//! The pure ring engines of xendevd's NoXS back ends: blkif and netif requests in,
//! grant copies and responses out, with no Xen and no I/O of their own. They live in
//! the library so that fuzz targets can drive them with arbitrary ring pages
//! ([`blkback::serve_snapshot`], [`netback::transmit_snapshot`]).

pub mod blkback;
pub mod memory;
pub mod netback;
