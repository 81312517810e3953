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
        })
    }
}

#[cfg(target_os = "none")]
mod guest {
    use kernel::shutdown::{self, ShutdownReason};
    use kernel::xenstore::{self, Watch, Xs};

    use super::PowerRequest;

    impl PowerRequest {
        /// How the domain should end for this request (`None` for suspend).
        pub fn shutdown_reason(self) -> Option<ShutdownReason> {
            match self {
                Self::Poweroff => Some(ShutdownReason::Poweroff),
                Self::Reboot => Some(ShutdownReason::Reboot),
                Self::Suspend => None,
            }
        }
    }

    const NODE: &str = "control/shutdown";
    /// What we handle, written as `control/feature-NAME = 1`.
    const FEATURES: [&str; 2] = ["poweroff", "reboot"];

    /// Power requests, as they come.
    #[derive(Debug)]
    pub struct PowerControl {
        watch: Watch,
    }

    impl PowerControl {
        /// Advertise what we handle and start watching `control/shutdown`.
        pub async fn start() -> xenstore::Result<Self> {
            for feature in FEATURES {
                Xs::NONE
                    .write(&alloc::format!("control/feature-{feature}"), "1")
                    .await?;
            }
            Ok(Self {
                watch: Watch::new(NODE).await?,
            })
        }

        /// The next request, acknowledged. Unknown values are acknowledged and skipped;
        /// a suspend request is returned for the app to see, though nothing suspends.
        pub async fn next(&self) -> xenstore::Result<PowerRequest> {
            loop {
                self.watch.next().await?;
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
    }

    /// Answer power requests in the background with `handler`. Without Xenstore (as
    /// dom0) there is nothing to answer.
    pub fn spawn_with(mut handler: impl FnMut(PowerRequest) + 'static) {
        kernel::executor::spawn(async move {
            let control = match PowerControl::start().await {
                Ok(control) => control,
                Err(xenstore::Error::Unavailable) => return,
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
