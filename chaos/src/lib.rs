//! chaos: the toolstack for our PV guests, replacing `xl` (LightVM's chaos and its
//! libh2, rewritten). It talks to Xen through Debian's libxenctrl, libxenguest and
//! libxenstore (the safe handles of `xenhost`) and to the device daemon xendevd
//! (`xendevd::client`).
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
//! - [`host`]: the handles of one run (`xenhost`'s libxenctrl and Xenstore) and its
//!   step timings;
//! - [`savefile`]: the file `chaos save` writes (header, configuration, libxc's
//!   stream; pure, unit-tested), [`recorded`]: a running guest's configuration read
//!   back from its Xenstore records, [`save`]: save, restore, [`migrate`]: live
//!   migration to a chaos receiver over TCP;
//! - [`claim`]: a create's claim on its name, from before the domain exists to the
//!   end: one create per name, and what a killed chaos left is found (orphans);
//! - [`uuid`] (random handles that never wait for entropy), [`elf`] (is the kernel a
//!   PV kernel?), [`vdev`] (disk names), [`signal`], [`error`].

pub mod claim;
pub mod cli;
pub mod config;
pub mod console;
pub mod daemon;
pub mod device;
pub mod domain;
pub mod elf;
pub mod error;
pub mod host;
pub mod layout;
pub mod migrate;
pub mod noxs;
pub mod recorded;
pub mod save;
pub mod savefile;
pub mod shape;
pub mod signal;
pub mod uuid;
pub mod vdev;

pub use config::{Config, ConfigError};
pub use error::{Error, Result};
pub use host::{Host, Options};
