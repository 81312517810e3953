//! Grant copies with `/dev/xen/gntdev`: the daemon's [`GuestMemory`], over
//! `xenhost`'s [`GrantCopier`].

use std::rc::Rc;

use xendevd::engine::memory::{Direction, GuestMemory, Span};
use xenhost::gnttab::{CopyDirection, Gnttab, GrantCopier, GrantCopy};

/// Grant copies for one domain.
#[derive(Debug)]
pub struct Copier {
    copier: GrantCopier,
    domid: u16,
}

impl Copier {
    pub fn new(gnttab: Rc<Gnttab>, domid: u16) -> Self {
        Self {
            copier: GrantCopier::new(gnttab, domid),
            domid,
        }
    }
}

impl GuestMemory for Copier {
    fn copy(
        &mut self,
        direction: Direction,
        spans: &[Span],
        buf: &mut [u8],
        status: &mut Vec<i16>,
    ) {
        let direction = match direction {
            Direction::FromGuest => CopyDirection::FromGuest,
            Direction::ToGuest => CopyDirection::ToGuest,
        };
        let copies = spans.iter().map(|span| GrantCopy {
            gref: span.gref,
            offset: span.offset,
            len: span.len,
            local: span.local,
        });
        if let Err(err) = self.copier.copy(direction, copies, buf, status) {
            log::warn!(
                "grant copy of {} span(s) for domain {}: {err}",
                spans.len(),
                self.domid
            );
        }
    }
}
