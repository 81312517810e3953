//! Safe, owning handles on the Xen interfaces a userspace back end needs, one module per
//! interface: event channels (`/dev/xen/evtchn`), grant mapping and copying
//! (`/dev/xen/gntdev`), granting our pages (`/dev/xen/gntalloc`), and domain states
//! (libxenctrl). Every binding, mapping and shared page is released on drop.
//!
//! The handles are shared by the resources made from them through `Rc`: xendevd is one
//! thread, and a port or a mapping must outlive nothing but its handle.

pub mod evtchn;
pub mod gntshr;
pub mod gnttab;
pub mod xc;

/// Map a libxen call's `-1`/`NULL` failure to the errno it left.
fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}
