//! Power requests through the NoXS sysctl device (`xenproto::noxs`): the handshake's
//! two halves are [`ControlPage`]'s; then each request is the back end's area with a
//! new `request_seq`, acknowledged by writing it back as `ack_seq`.

use core::cell::Cell;

use kernel::noxs::ControlPage;
use xenproto::noxs::{self, Entry, SysctlBackend, SysctlFrontend};

use crate::{Error, PowerRequest};

/// Requests we handle: bit N for request value N (noxs-v1.md).
const SUPPORTED: u32 = (1 << noxs::Request::Poweroff as u32)
    | (1 << noxs::Request::Reboot as u32)
    | (1 << noxs::Request::Crash as u32);

/// The connected sysctl device.
#[derive(Debug)]
pub struct Requests {
    control: ControlPage,
    /// The last request sequence number acknowledged.
    seen: Cell<u32>,
}

impl Requests {
    /// Connect the sysctl device of `entry`.
    pub async fn connect(entry: &Entry) -> Result<Self, Error> {
        let (control, _) = ControlPage::offered::<SysctlBackend>(entry).await?;
        control.connect(&frontend(0)).await?;
        Ok(Self {
            control,
            seen: Cell::new(0),
        })
    }

    /// The next request, acknowledged.
    pub async fn next(&self) -> Result<PowerRequest, Error> {
        loop {
            let area: SysctlBackend = self.control.backend()?;
            if let Some(request) = area.request
                && area.request_seq != self.seen.get()
            {
                self.seen.set(area.request_seq);
                self.control.write_frontend(&frontend(area.request_seq))?;
                self.control.notify();
                return Ok(match request {
                    noxs::Request::Poweroff => PowerRequest::Poweroff,
                    noxs::Request::Reboot => PowerRequest::Reboot,
                    noxs::Request::Suspend => PowerRequest::Suspend,
                    noxs::Request::Crash => PowerRequest::Crash,
                });
            }
            self.control.wait().await;
        }
    }
}

/// Our area, acknowledging request `ack_seq`.
fn frontend(ack_seq: u32) -> SysctlFrontend {
    SysctlFrontend {
        ack_seq,
        supported: SUPPORTED,
    }
}
