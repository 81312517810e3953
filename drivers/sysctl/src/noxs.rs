//! Power requests through the NoXS sysctl device (`xenproto::noxs`): the handshake's
//! two halves are [`ControlPage`]'s; then each request is the back end's area with a
//! new `request_seq`, acknowledged by writing it back as `ack_seq`.
//!
//! When a restarted back end offers the device again, [`Requests::next`] does the
//! handshake again on the new page, whose `request_seq` counts from 0 again.

use alloc::rc::Rc;
use core::cell::{Cell, RefCell};

use kernel::executor::{Either, select};
use kernel::noxs::ControlPage;
use xenproto::noxs::{self, Entry, SysctlBackend, SysctlFrontend};

use crate::{Error, PowerRequest, Request};

/// Requests we handle: bit N for request value N (noxs-v1.md).
const SUPPORTED: u32 = (1 << noxs::Request::Poweroff as u32)
    | (1 << noxs::Request::Reboot as u32)
    | (1 << noxs::Request::Suspend as u32)
    | (1 << noxs::Request::Crash as u32);

/// The connected sysctl device.
#[derive(Debug)]
pub struct Requests {
    /// Replaced on a re-offer; shared with a `next` waiting on it meanwhile.
    control: RefCell<Rc<ControlPage>>,
    /// The last request sequence number acknowledged (on the current page).
    seen: Cell<u32>,
    /// The last block generation looked at for a re-offer (`kernel::noxs::next_reoffer`).
    handled: Cell<Option<u32>>,
}

impl Requests {
    /// Connect the sysctl device of `entry`.
    pub async fn connect(entry: &Entry) -> Result<Self, Error> {
        let (control, _) = ControlPage::offered::<SysctlBackend>(entry).await?;
        control.connect(&frontend(0)).await?;
        Ok(Self {
            control: RefCell::new(Rc::new(control)),
            seen: Cell::new(0),
            handled: Cell::new(None),
        })
    }

    /// The next request, acknowledged. Follows the device to a new control page when
    /// the back end offers it again.
    pub async fn next(&self) -> Result<Request, Error> {
        loop {
            if let Some(request) = self.take_request()? {
                return Ok(request);
            }
            let mut handled = self.handled.get();
            let event = {
                let control = self.control.borrow().clone();
                let entry = *control.entry();
                select(
                    control.wait(),
                    kernel::noxs::next_reoffer(&entry, &mut handled, "sysctl"),
                )
                .await
            };
            self.handled.set(handled);
            if let Either::Right((generation, entry)) = event {
                self.reconnect(generation, &entry).await;
            }
        }
    }

    /// A request not acknowledged yet, acknowledged now.
    fn take_request(&self) -> Result<Option<Request>, Error> {
        let control = self.control.borrow().clone();
        let area: SysctlBackend = control.backend()?;
        let Some(request) = area.request else {
            return Ok(None);
        };
        if area.request_seq == self.seen.get() {
            return Ok(None);
        }
        self.seen.set(area.request_seq);
        control.write_frontend(&frontend(area.request_seq))?;
        control.notify();
        Ok(Some(match request {
            noxs::Request::Poweroff => Request::Power(PowerRequest::Poweroff),
            noxs::Request::Reboot => Request::Power(PowerRequest::Reboot),
            noxs::Request::Suspend => Request::Suspend,
            noxs::Request::Crash => Request::Power(PowerRequest::Crash),
        }))
    }

    /// The handshake on the page of a re-offer; on failure the old page stays (dead)
    /// until the next re-offer.
    async fn reconnect(&self, generation: u32, entry: &Entry) {
        match kernel::noxs::reconnect::<SysctlBackend, _>(
            entry,
            &frontend(0),
            |_| Ok(()),
            async || {},
        )
        .await
        {
            Ok((control, _)) => {
                // The old page goes (unmapped, its port closed); the new back end
                // numbers its requests from 1 again.
                *self.control.borrow_mut() = Rc::new(control);
                self.seen.set(0);
                log::info!("sysctl: reconnected (generation {generation})");
            }
            Err(err) => log::error!(
                "sysctl: connecting again (generation {generation}): {err}; \
                 left disconnected until the next offer"
            ),
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
