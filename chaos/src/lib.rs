//! chaos: the toolstack for our PV guests, replacing `xl` (LightVM's chaos and its
//! libh2, rewritten). It talks to Xen through Debian's libxenctrl, libxenguest and
//! libxenstore (the `xenffi` bindings) and to the device daemon xendevd.
//!
//! One module per concern:
//! - [`config`]: LightVM's JSON configuration, checked before anything is touched;
//! - [`layout`]: the Xenstore nodes of a domain and its devices, as libxl writes them
//!   (pure, unit-tested);
//! - [`domain`]: create, destroy, shut down, wait for the end, list;
//! - [`device`]: how a guest gets its devices ([`device::DeviceMethod`]): through
//!   Xenstore, or [`noxs`] (a device block in start_info, xendevd as every back end,
//!   no Xenstore at all);
//! - [`console`]: the guest's console through xenconsoled's pty, or xendevd's stream
//!   for NoXS guests;
//! - the C interfaces, each behind a safe wrapper that owns its handle: [`xc`]
//!   (libxenctrl), [`xcdom`] (libxenguest's domain builder), [`xs`] (libxenstore);
//! - [`uuid`] (random handles that never wait for entropy), [`elf`] (is the kernel a
//!   PV kernel?), [`vdev`] (disk names), [`signal`], [`host`], [`error`].

pub mod config;
pub mod console;
pub mod device;
pub mod domain;
pub mod elf;
pub mod error;
pub mod host;
pub mod layout;
pub mod noxs;
pub mod signal;
pub mod uuid;
pub mod vdev;
pub mod xc;
pub mod xcdom;
pub mod xs;
pub mod xswire;

pub use config::{Config, ConfigError};
pub use error::{Error, Result};
pub use host::{Host, Options};
