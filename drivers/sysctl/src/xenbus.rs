//! Power requests through Xenstore.
//!
//! `xl shutdown` writes `poweroff` to the guest's `control/shutdown` node, `xl reboot`
//! writes `reboot`, and saving a guest writes `suspend`. A guest acknowledges by
//! clearing the node, as Linux does, and advertises what it handles as
//! `control/feature-*`.

use kernel::xenstore::{self, Watch, Xs};

use crate::{Error, Request};

const NODE: &str = "control/shutdown";
/// What we handle, written as `control/feature-NAME = 1`.
const FEATURES: [&str; 3] = ["poweroff", "reboot", "suspend"];

/// The watch on `control/shutdown`.
#[derive(Debug)]
pub struct Requests {
    watch: Watch,
}

impl Requests {
    /// Advertise what we handle and watch for requests.
    pub async fn start() -> Result<Self, Error> {
        let requests = Self {
            watch: Watch::new(NODE).await?,
        };
        requests.advertise().await?;
        Ok(requests)
    }

    /// Write `control/feature-*` (again in a restored domain, whose Xenstore
    /// directory is new).
    pub async fn advertise(&self) -> Result<(), Error> {
        for feature in FEATURES {
            Xs::NONE
                .write(&alloc::format!("control/feature-{feature}"), "1")
                .await?;
        }
        Ok(())
    }

    /// The next request, acknowledged (unknown values are acknowledged and skipped).
    pub async fn next(&self) -> Result<Request, Error> {
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
            match Request::parse(&value) {
                Some(request) => return Ok(request),
                None => log::warn!("sysctl: ignoring unknown request {value:?}"),
            }
        }
    }
}
