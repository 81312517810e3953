//! xenhost: the one place dom0's tools (chaos, xendevd) call Xen's C libraries, through
//! the checked-in bindings of `xenffi`. One module per interface, each a safe handle
//! that owns what it opened and releases it on drop (krata's `crates/xen/*` layout,
//! with our `// SAFETY:` comments and tests):
//!
//! - [`xc`]: libxenctrl — domain create, destroy, pause, information and lists, host
//!   facts, unbound event channels;
//! - [`xcdom`]: libxenguest's PV domain builder (`xc_dom_*`);
//! - [`save`]: libxenguest's save, restore and resume of a domain (`xc_domain_save`,
//!   `xc_domain_restore`, `xc_domain_resume`), with the callback trampolines;
//! - [`xs`]: libxenstore — reads, writes, transactions, watches, domain introduction —
//!   and [`xs::wire`], xenstored's socket spoken directly to write a batch of nodes in
//!   one go;
//! - [`evtchn`]: event channels (`/dev/xen/evtchn`, libxenevtchn);
//! - [`gnttab`]: mapping and copying a guest's grants (`/dev/xen/gntdev`);
//! - [`gntshr`]: granting our own pages to a guest (`/dev/xen/gntalloc`).
//!
//! Every failure is an [`Error`] that names the call and keeps the errno it left.
//!
//! Not here yet: foreign memory (`libxenforeignmemory`), which nothing uses today (a
//! NoXS restore, which rewrites the guest's start_info, will need it).

pub mod error;
pub mod evtchn;
pub mod gntshr;
pub mod gnttab;
pub mod save;
pub mod xc;
pub mod xcdom;
pub mod xs;

pub use error::{Error, Result};
