//! The sysctl device (power control, `noxs-v1.md` §2 and §3.5): the back end writes a
//! request and its sequence number; the guest acknowledges by copying the number into
//! its area, then acts. A [`PowerWait`] follows one `power` request from the API until
//! the guest acknowledged it, refused it, or let it time out.

use std::time::{Duration, Instant};

use log::info;
use xenproto::noxs::{self, NoxsError, SysctlBackend, SysctlFrontend};
use xenproto::xenstore::XenbusState;

use super::control::Control;
use super::error::DeviceError;
use super::{DeviceBackend, Guest};

/// Every power request, in their wire order.
const REQUESTS: [noxs::Request; 4] = [
    noxs::Request::Poweroff,
    noxs::Request::Reboot,
    noxs::Request::Suspend,
    noxs::Request::Crash,
];

/// A power request's name, as the API spells it.
pub fn request_name(request: noxs::Request) -> &'static str {
    match request {
        noxs::Request::Poweroff => "poweroff",
        noxs::Request::Reboot => "reboot",
        noxs::Request::Suspend => "suspend",
        noxs::Request::Crash => "crash",
    }
}

/// The requests a front end's `supported` word names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Supported(pub u32);

impl Supported {
    fn has(self, request: noxs::Request) -> bool {
        self.0 & (1 << request as u32) != 0
    }
}

impl std::fmt::Display for Supported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = REQUESTS
            .into_iter()
            .filter(|request| self.has(*request))
            .map(request_name)
            .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

/// The front end's state word as a report shows it: the state, or why it is none.
fn show_state(state: &Result<XenbusState, NoxsError>) -> String {
    match state {
        Ok(state) => format!("{state:?}"),
        Err(err) => err.to_string(),
    }
}

/// A power request that could not be delivered or was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error(
        "domain {domid} ({name}) has no sysctl device: it cannot be asked to {}",
        request_name(*action)
    )]
    NoSysctl {
        domid: u32,
        name: String,
        action: noxs::Request,
    },
    #[error(
        "domain {domid} ({name}) has shut down already: it cannot be asked to {}",
        request_name(*action)
    )]
    ShutDown {
        domid: u32,
        name: String,
        action: noxs::Request,
    },
    #[error(
        "domain {domid} is gone (released) before it acknowledged the {} request",
        request_name(*action)
    )]
    Released { domid: u32, action: noxs::Request },
    #[error(
        "domain {domid} ({name}) does not handle {} requests (its power control handles: \
         {supported})",
        request_name(*action)
    )]
    Unsupported {
        domid: u32,
        name: String,
        action: noxs::Request,
        supported: Supported,
    },
    #[error(
        "domain {domid} ({name}): its power control (sysctl) did not connect within \
         {timeout_ms} ms (front end state {})",
        show_state(frontend)
    )]
    NotConnected {
        domid: u32,
        name: String,
        timeout_ms: u32,
        frontend: Result<XenbusState, NoxsError>,
    },
    #[error(
        "domain {domid} ({name}) did not acknowledge the {} request within {timeout_ms} ms",
        request_name(*action)
    )]
    NoAck {
        domid: u32,
        name: String,
        action: noxs::Request,
        timeout_ms: u32,
    },
}

/// A sysctl back end.
#[derive(Debug, Default)]
pub struct Sysctl {
    /// What the front end handles, once it connected.
    supported: Option<Supported>,
    request_seq: u32,
}

impl Sysctl {
    /// A new back end and its area for the control page (no request yet).
    pub fn create() -> (Self, Vec<u8>) {
        let mut area = vec![0; SysctlBackend::LEN];
        SysctlBackend::default().encode(&mut area).expect("fits");
        (Self::default(), area)
    }
}

impl DeviceBackend for Sysctl {
    fn connect(&mut self, _guest: &Guest<'_>, frontend: &[u8]) -> Result<(), DeviceError> {
        let frontend = SysctlFrontend::decode(frontend).map_err(DeviceError::Frontend)?;
        self.supported = Some(Supported(frontend.supported));
        Ok(())
    }

    fn disconnect(&mut self) {
        self.supported = None;
    }

    fn summary(&self) -> String {
        "sysctl".into()
    }
}

/// The longest a power request waits for its guest's acknowledgement, whatever the
/// client asked: a waiting request holds one of the daemon's connections.
pub const MAX_POWER_TIMEOUT_MS: u32 = 5 * 60 * 1000;

/// A `power` request waiting for the guest.
#[derive(Debug, Clone)]
pub struct PowerWait {
    pub domid: u32,
    action: noxs::Request,
    timeout_ms: u32,
    deadline: Instant,
    /// The sequence number sent, once sent.
    sent: Option<u32>,
}

impl PowerWait {
    /// Start a request to domain `domid` (called `name`), checked now: it needs a sysctl
    /// device, and a guest that has shut down acknowledges nothing (say so now, not at
    /// the timeout). It is sent once the sysctl is connected. `timeout_ms` is clamped
    /// to [`MAX_POWER_TIMEOUT_MS`].
    pub fn start(
        domid: u32,
        name: &str,
        has_sysctl: bool,
        shut_down: bool,
        action: noxs::Request,
        timeout_ms: u32,
    ) -> Result<Self, PowerError> {
        let name = name.to_owned();
        if !has_sysctl {
            return Err(PowerError::NoSysctl {
                domid,
                name,
                action,
            });
        }
        if shut_down {
            return Err(PowerError::ShutDown {
                domid,
                name,
                action,
            });
        }
        let timeout_ms = timeout_ms.min(MAX_POWER_TIMEOUT_MS);
        Ok(Self {
            domid,
            action,
            timeout_ms,
            deadline: Instant::now() + Duration::from_millis(timeout_ms.into()),
            sent: None,
        })
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The error for a domain released before it acknowledged.
    pub fn released(&self) -> PowerError {
        PowerError::Released {
            domid: self.domid,
            action: self.action,
        }
    }

    /// Move the request on with the domain's sysctl device: `Some` once it is answered
    /// (acknowledged or failed).
    pub fn poll(
        &mut self,
        sysctl: &mut Sysctl,
        control: &Control,
        name: &str,
        now: Instant,
    ) -> Option<Result<(), PowerError>> {
        let (domid, action) = (self.domid, self.action);
        let Some(seq) = self.sent else {
            let Some(supported) = sysctl.supported else {
                return (now >= self.deadline).then(|| {
                    Err(PowerError::NotConnected {
                        domid,
                        name: name.to_owned(),
                        timeout_ms: self.timeout_ms,
                        frontend: control.frontend_state(),
                    })
                });
            };
            if !supported.has(action) {
                return Some(Err(PowerError::Unsupported {
                    domid,
                    name: name.to_owned(),
                    action,
                    supported,
                }));
            }
            sysctl.request_seq = sysctl.request_seq.wrapping_add(1);
            let mut area = [0u8; SysctlBackend::LEN];
            SysctlBackend {
                request: Some(action),
                request_seq: sysctl.request_seq,
            }
            .encode(&mut area)
            .expect("fits");
            control.write_area(&area);
            control.notify();
            self.sent = Some(sysctl.request_seq);
            info!(
                "domain {domid} ({name}): {} requested (#{})",
                request_name(action),
                sysctl.request_seq
            );
            return None;
        };
        let acked = SysctlFrontend::decode(&control.frontend_area())
            .is_ok_and(|frontend| (frontend.ack_seq.wrapping_sub(seq) as i32) >= 0);
        if acked {
            info!(
                "domain {domid} ({name}) acknowledged {} (#{seq})",
                request_name(action)
            );
            Some(Ok(()))
        } else if now >= self.deadline {
            Some(Err(PowerError::NoAck {
                domid,
                name: name.to_owned(),
                action,
                timeout_ms: self.timeout_ms,
            }))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_requests_by_name() {
        assert_eq!(Supported(0).to_string(), "none");
        assert_eq!(Supported(0b0110).to_string(), "poweroff, reboot");
        assert_eq!(
            Supported(0b11110).to_string(),
            "poweroff, reboot, suspend, crash"
        );
        assert!(!Supported(0b0110).has(noxs::Request::Crash));
    }

    #[test]
    fn requests_are_checked_before_they_wait() {
        let err = PowerWait::start(4, "d", false, false, noxs::Request::Reboot, 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "domain 4 (d) has no sysctl device: it cannot be asked to reboot"
        );
        let err = PowerWait::start(4, "d", true, true, noxs::Request::Poweroff, 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "domain 4 (d) has shut down already: it cannot be asked to poweroff"
        );
        let asked = Instant::now();
        let wait = PowerWait::start(4, "d", true, false, noxs::Request::Crash, u32::MAX).unwrap();
        let longest = Duration::from_millis(MAX_POWER_TIMEOUT_MS.into());
        assert!(wait.deadline() <= Instant::now() + longest && wait.deadline() >= asked + longest);
        assert_eq!(
            wait.released().to_string(),
            "domain 4 is gone (released) before it acknowledged the crash request"
        );
        let err = PowerError::NotConnected {
            domid: 4,
            name: "d".into(),
            timeout_ms: 10,
            frontend: Ok(XenbusState::Initialising),
        };
        assert!(err.to_string().ends_with("(front end state Initialising)"));
    }
}
