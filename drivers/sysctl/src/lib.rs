//! Power control: the toolstack's requests to power off, reboot or suspend.
//!
//! With the Xenstore method, `xl shutdown` writes `poweroff` to the guest's
//! `control/shutdown` node, `xl reboot` writes `reboot`, and saving a guest writes
//! `suspend`. A guest acknowledges by clearing the node, as Linux does, and advertises
//! what it handles as `control/feature-*`.
//!
//! An app either awaits requests itself ([`PowerControl::next`]), for example to
//! close its connections first, registers a handler ([`spawn_with`]), or calls
//! [`spawn_default`]: power off or reboot at once. **Suspend is not implemented yet** (save/restore comes later): a suspend
//! request is acknowledged and logged, and the guest runs on; `feature-suspend` is not
//! advertised, so toolstacks do not expect it to work.

#![cfg_attr(target_os = "none", no_std)]

#[cfg(target_os = "none")]
extern crate alloc;

use core::fmt;

#[cfg(target_os = "none")]
pub use guest::*;

/// What the toolstack asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerRequest {
    Poweroff,
    Reboot,
    Suspend,
    /// NoXS only: the toolstack asks the guest to crash (e.g. to get a dump).
    Crash,
}

impl PowerRequest {
    /// The request a `control/shutdown` value carries (`halt` is Linux's synonym for
    /// poweroff).
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "poweroff" | "halt" => Some(Self::Poweroff),
            "reboot" => Some(Self::Reboot),
            "suspend" => Some(Self::Suspend),
            _ => None,
        }
    }
}

impl fmt::Display for PowerRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Poweroff => "poweroff",
            Self::Reboot => "reboot",
            Self::Suspend => "suspend",
            Self::Crash => "crash",
        })
    }
}

#[cfg(target_os = "none")]
mod guest {
    use core::cell::Cell;
    use core::fmt;

    use kernel::noxs::{ControlError, ControlPage};
    use kernel::shutdown::{self, ShutdownReason};
    use kernel::xenstore::{self, Watch, Xs};
    use xenproto::noxs::{self, Kind, SysctlBackend, SysctlFrontend};
    use xenproto::xenstore::XenbusState;

    use super::PowerRequest;

    impl PowerRequest {
        /// How the domain should end for this request (`None` for suspend).
        pub fn shutdown_reason(self) -> Option<ShutdownReason> {
            match self {
                Self::Poweroff => Some(ShutdownReason::Poweroff),
                Self::Reboot => Some(ShutdownReason::Reboot),
                Self::Crash => Some(ShutdownReason::Crash),
                Self::Suspend => None,
            }
        }
    }

    /// Power control is not available, or broke.
    #[derive(Debug)]
    pub enum Error {
        /// No Xenstore and no NoXS sysctl device (e.g. as dom0).
        Unavailable,
        Xenstore(xenstore::Error),
        Control(ControlError),
    }

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Self::Unavailable => {
                    f.write_str("no power control device (no Xenstore, no NoXS sysctl)")
                }
                Self::Xenstore(err) => write!(f, "{err}"),
                Self::Control(err) => write!(f, "{err}"),
            }
        }
    }

    impl From<xenstore::Error> for Error {
        fn from(err: xenstore::Error) -> Self {
            match err {
                xenstore::Error::Unavailable => Self::Unavailable,
                other => Self::Xenstore(other),
            }
        }
    }

    impl From<ControlError> for Error {
        fn from(err: ControlError) -> Self {
            Self::Control(err)
        }
    }

    const NODE: &str = "control/shutdown";
    /// What we handle, written as `control/feature-NAME = 1`.
    const FEATURES: [&str; 2] = ["poweroff", "reboot"];

    /// Power requests, as they come: from Xenstore's `control/shutdown`, or from the
    /// NoXS sysctl control page.
    #[derive(Debug)]
    pub struct PowerControl {
        source: Source,
    }

    #[derive(Debug)]
    enum Source {
        Xenstore(Watch),
        Noxs {
            control: ControlPage,
            seen: Cell<u32>,
        },
    }

    impl PowerControl {
        /// Connect to the toolstack's power requests: the NoXS sysctl device when the
        /// guest has one, else Xenstore (advertising what we handle).
        pub async fn start() -> Result<Self, Error> {
            if let Some(entry) = kernel::noxs::entries(Kind::Sysctl).first() {
                let control = ControlPage::open(entry)?;
                control.wait_backend(XenbusState::InitWait).await?;
                // Requests we handle: bit N for request value N (noxs-v1.md).
                let supported = (1 << noxs::Request::Poweroff as u32)
                    | (1 << noxs::Request::Reboot as u32)
                    | (1 << noxs::Request::Crash as u32);
                control.write_frontend(&SysctlFrontend {
                    ack_seq: 0,
                    supported,
                })?;
                control.set_state(XenbusState::Initialised);
                control.wait_backend(XenbusState::Connected).await?;
                control.set_state(XenbusState::Connected);
                return Ok(Self {
                    source: Source::Noxs {
                        control,
                        seen: Cell::new(0),
                    },
                });
            }
            if kernel::noxs::block().is_some() {
                return Err(Error::Unavailable);
            }
            for feature in FEATURES {
                Xs::NONE
                    .write(&alloc::format!("control/feature-{feature}"), "1")
                    .await?;
            }
            Ok(Self {
                source: Source::Xenstore(Watch::new(NODE).await?),
            })
        }

        /// The next request, acknowledged. With Xenstore, unknown values are
        /// acknowledged and skipped; a suspend request is returned for the app to see,
        /// though nothing suspends.
        pub async fn next(&self) -> Result<PowerRequest, Error> {
            match &self.source {
                Source::Xenstore(watch) => next_from_xenstore(watch).await,
                Source::Noxs { control, seen } => next_from_noxs(control, seen).await,
            }
        }
    }

    async fn next_from_xenstore(watch: &Watch) -> Result<PowerRequest, Error> {
        loop {
            watch.next().await?;
            // Read and clear in one transaction, so a request written meanwhile is not
            // lost by our clearing it.
            let value = xenstore::transaction(async |tx| {
                let value = tx.try_read(NODE).await?.unwrap_or_default();
                if !value.is_empty() {
                    tx.write(NODE, "").await?;
                }
                Ok(value)
            })
            .await?;
            if value.is_empty() {
                continue;
            }
            match PowerRequest::parse(&value) {
                Some(request) => return Ok(request),
                None => log::warn!("sysctl: ignoring unknown request {value:?}"),
            }
        }
    }

    async fn next_from_noxs(
        control: &ControlPage,
        seen: &Cell<u32>,
    ) -> Result<PowerRequest, Error> {
        loop {
            let area: SysctlBackend = control.backend()?;
            if let Some(request) = area.request
                && area.request_seq != seen.get()
            {
                seen.set(area.request_seq);
                let mut ack = [0u8; 4];
                ack.copy_from_slice(&area.request_seq.to_le_bytes());
                control.write_frontend_area(&ack);
                control.notify();
                return Ok(match request {
                    noxs::Request::Poweroff => PowerRequest::Poweroff,
                    noxs::Request::Reboot => PowerRequest::Reboot,
                    noxs::Request::Suspend => PowerRequest::Suspend,
                    noxs::Request::Crash => PowerRequest::Crash,
                });
            }
            control.wait().await;
        }
    }

    /// Answer power requests in the background with `handler`. Without a way to
    /// receive them (as dom0) there is nothing to answer.
    pub fn spawn_with(mut handler: impl FnMut(PowerRequest) + 'static) {
        kernel::executor::spawn(async move {
            let control = match PowerControl::start().await {
                Ok(control) => control,
                Err(Error::Unavailable) => return,
                Err(err) => {
                    log::error!("sysctl: {err}");
                    return;
                }
            };
            loop {
                match control.next().await {
                    Ok(request) => handler(request),
                    Err(err) => {
                        log::error!("sysctl: {err}");
                        return;
                    }
                }
            }
        });
    }

    /// Answer power requests in the background as [`act_on`] does.
    pub fn spawn_default() {
        spawn_with(act_on);
    }

    /// What [`spawn_default`] does with a request.
    pub fn act_on(request: PowerRequest) {
        match request.shutdown_reason() {
            Some(reason) => {
                log::info!("sysctl: {request} requested");
                shutdown::exit(reason);
            }
            None => log::warn!(
                "sysctl: suspend requested, but suspend is not implemented yet: running on"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_as_linux_reads_them() {
        assert_eq!(
            PowerRequest::parse("poweroff"),
            Some(PowerRequest::Poweroff)
        );
        assert_eq!(PowerRequest::parse("halt"), Some(PowerRequest::Poweroff));
        assert_eq!(PowerRequest::parse("reboot\n"), Some(PowerRequest::Reboot));
        assert_eq!(PowerRequest::parse("suspend"), Some(PowerRequest::Suspend));
        assert_eq!(PowerRequest::parse(""), None);
        assert_eq!(PowerRequest::parse("crash"), None);
        assert_eq!(PowerRequest::Reboot.to_string(), "reboot");
    }
}
