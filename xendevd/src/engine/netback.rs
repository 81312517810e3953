//! The vif engine: the guest's transmit ring to frames for the tap, frames from the tap
//! into the guest's posted receive buffers. Pure: no Xen, no tap, so it is tested
//! against the guest's own ring code (`xenproto::netif`) and can be fuzzed with any ring
//! contents ([`transmit_snapshot`]).
//!
//! Transmit: a packet is a first slot (its `size` the whole packet's), then
//! `netif_extra_info` slots while `NETTXF_extra_info`/`XEN_NETIF_EXTRA_FLAG_MORE` say
//! so, then fragment slots while `NETTXF_more_data` says so. A packet may arrive in
//! pieces (the guest publishes slot by slot): the slots taken so far wait for the rest.
//! Every slot gets a response: `RSP_NULL` for extra-info slots, the packet's status for
//! the others. A slot past its page, sizes that do not add up, or a bad grant make the
//! packet fail (`RSP_ERROR`), not the device; a chain longer than any packet can be
//! (more than [`MAX_SLOTS`]) or an index that laps the ring is a protocol error, and
//! the caller disconnects the vif.
//!
//! What goes onto the bridge is the vif's own traffic only ([`TxFilter`]): a frame
//! whose source MAC address is not the vif's, or longer than its MTU allows while no
//! GSO was negotiated, is dropped (`RSP_DROPPED`, counted), as a switch port with
//! port security would: a guest must not pose as another host, nor feed the bridge
//! frames its other ports never agreed to take.

use xenproto::netif::{
    RSP_DROPPED, RSP_ERROR, RSP_OKAY, RxRequest, RxResponse, TxRequest, TxResponse,
};
use xenproto::ring::{BackRing, RingOverrun};

use super::memory::{Direction, GNTST_OKAY, GuestMemory, PAGE_SIZE, Span};

/// `XEN_NETBK_LEGACY_SLOTS_MAX`: slots one packet may take.
pub const MAX_SLOTS: usize = 18;
/// The largest packet (an IP datagram and its Ethernet header).
pub const MAX_PACKET: usize = 65535 + 14;
/// Smallest frame: an Ethernet header.
pub const ETH_HLEN: usize = 14;
/// `NETIF_RSP_NULL`: the response of an extra-info slot.
const RSP_NULL: i16 = 1;

/// `NETTXF_*`.
pub mod tx_flags {
    pub const CSUM_BLANK: u16 = 1 << 0;
    pub const DATA_VALIDATED: u16 = 1 << 1;
    pub const MORE_DATA: u16 = 1 << 2;
    pub const EXTRA_INFO: u16 = 1 << 3;
}
/// `XEN_NETIF_EXTRA_FLAG_MORE`.
const EXTRA_FLAG_MORE: u8 = 1;

/// The vif broke the protocol: disconnect it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NetbackError {
    #[error("{0}")]
    Ring(RingOverrun),
    #[error("a transmit packet of more than {MAX_SLOTS} slots")]
    TooManySlots,
}

impl From<RingOverrun> for NetbackError {
    fn from(err: RingOverrun) -> Self {
        Self::Ring(err)
    }
}

/// What a vif's guest may put on the bridge: frames from its own MAC address, of at
/// most `max_frame` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxFilter {
    pub mac: [u8; 6],
    /// Longest frame, Ethernet header included.
    pub max_frame: usize,
}

impl TxFilter {
    /// For a vif with address `mac` and `mtu`: frames of the MTU and an Ethernet
    /// header, or up to the largest packet when GSO was negotiated (the guest may then
    /// hand over segments-to-be of up to 64 KiB).
    pub fn new(mac: [u8; 6], mtu: u16, gso: bool) -> Self {
        Self {
            mac,
            max_frame: if gso {
                MAX_PACKET
            } else {
                ETH_HLEN + usize::from(mtu)
            },
        }
    }
}

/// Counters of one vif.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Packets that broke the protocol (bad slots, sizes, grants).
    pub tx_errors: u64,
    /// Frames dropped because their source MAC address is not the vif's.
    pub tx_spoofed: u64,
    /// Frames dropped because they are longer than [`TxFilter::max_frame`].
    pub tx_oversized: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames dropped: no buffer posted, too big, or the copy failed.
    pub rx_dropped: u64,
}

/// How a call of [`Netback::transmit`] went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub packets: usize,
    pub notify: bool,
    /// The budget ran out with requests left.
    pub more: bool,
}

/// What became of a frame offered to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Yes,
    /// No receive buffer posted (the guest will be asked to notify when it posts).
    NoBuffer,
    /// The frame cannot be delivered (too big, or the copy failed).
    Dropped,
}

/// One slot of a packet being assembled.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Data(TxRequest),
    Extra(TxRequest),
}

/// Why a transmitted packet does not go out.
#[derive(Debug)]
enum Refused {
    /// It breaks the protocol: `RSP_ERROR`.
    Broken(String),
    /// It is longer than the filter allows: `RSP_DROPPED`.
    Oversized(usize),
    /// Its source address is not the vif's: `RSP_DROPPED`.
    Spoofed([u8; 6]),
}

/// One vif's rings, served.
#[derive(Debug)]
pub struct Netback {
    tx: BackRing<TxRequest, TxResponse>,
    rx: BackRing<RxRequest, RxResponse>,
    filter: TxFilter,
    /// Slots of a packet whose end is not published yet.
    partial: Vec<Slot>,
    frame: Vec<u8>,
    spans: Vec<Span>,
    status: Vec<i16>,
    pub stats: Stats,
}

impl Netback {
    /// Serve the rings in `tx_page` and `rx_page`; transmitted frames pass `filter`.
    ///
    /// # Safety
    /// Both must be page-aligned, readable and writable pages (the guest's ring pages,
    /// mapped) that stay mapped as long as the `Netback` lives.
    pub unsafe fn new(tx_page: *mut u8, rx_page: *mut u8, filter: TxFilter) -> Self {
        Self {
            // SAFETY: guaranteed by the caller.
            tx: unsafe { BackRing::new(tx_page) },
            // SAFETY: as above.
            rx: unsafe { BackRing::new(rx_page) },
            filter,
            partial: Vec::new(),
            frame: Vec::new(),
            spans: Vec::new(),
            status: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Take up to `budget` packets off the transmit ring; each good one goes to `send`.
    pub fn transmit(
        &mut self,
        memory: &mut impl GuestMemory,
        send: &mut impl FnMut(&[u8]),
        budget: usize,
    ) -> Result<Progress, NetbackError> {
        let mut progress = Progress::default();
        loop {
            while progress.packets < budget {
                if !self.gather()? {
                    break;
                }
                self.finish_packet(memory, send);
                progress.packets += 1;
            }
            progress.notify |= self.tx.push_responses();
            if progress.packets >= budget {
                progress.more = self.tx.unconsumed_requests()? > 0;
                return Ok(progress);
            }
            if !self.tx.final_check_for_requests()? {
                return Ok(progress);
            }
        }
    }

    /// Take slots until a packet is complete (`true`) or the published ones run out.
    fn gather(&mut self) -> Result<bool, NetbackError> {
        loop {
            let wants_more = match self.partial.last() {
                None => true,
                Some(Slot::Extra(extra)) => {
                    // After the last extra slot come the fragments, if the first slot
                    // said so.
                    extra_flags(extra) & EXTRA_FLAG_MORE != 0
                        || self.first_flags() & tx_flags::MORE_DATA != 0
                }
                Some(Slot::Data(data)) => {
                    let first = self.partial.len() == 1;
                    (first && data.flags & tx_flags::EXTRA_INFO != 0)
                        || data.flags & tx_flags::MORE_DATA != 0
                }
            };
            if !wants_more {
                return Ok(true);
            }
            if self.partial.len() >= MAX_SLOTS {
                return Err(NetbackError::TooManySlots);
            }
            let Some(request) = self.tx.take_request()? else {
                return Ok(false);
            };
            let slot = match self.partial.last() {
                Some(Slot::Data(first))
                    if self.partial.len() == 1 && first.flags & tx_flags::EXTRA_INFO != 0 =>
                {
                    Slot::Extra(request)
                }
                Some(Slot::Extra(extra)) if extra_flags(extra) & EXTRA_FLAG_MORE != 0 => {
                    Slot::Extra(request)
                }
                _ => Slot::Data(request),
            };
            self.partial.push(slot);
        }
    }

    fn first_flags(&self) -> u16 {
        match self.partial.first() {
            Some(Slot::Data(first)) => first.flags,
            _ => 0,
        }
    }

    /// Copy a complete packet out, hand it on, answer its slots.
    fn finish_packet(&mut self, memory: &mut impl GuestMemory, send: &mut impl FnMut(&[u8])) {
        let slots = std::mem::take(&mut self.partial);
        let status = match self.copy_packet(&slots, memory) {
            Ok(()) => {
                if self.first_flags_of(&slots) & tx_flags::CSUM_BLANK != 0 {
                    complete_checksum(&mut self.frame);
                }
                send(&self.frame);
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += self.frame.len() as u64;
                RSP_OKAY
            }
            Err(Refused::Broken(why)) => {
                log::debug!("vif transmit: {why}");
                self.stats.tx_errors += 1;
                RSP_ERROR
            }
            Err(Refused::Oversized(len)) => {
                log::debug!(
                    "vif transmit: a {len}-byte frame dropped (at most {} without GSO)",
                    self.filter.max_frame
                );
                self.stats.tx_oversized += 1;
                RSP_DROPPED
            }
            Err(Refused::Spoofed(source)) => {
                log::debug!(
                    "vif transmit: a frame from {} dropped (the vif is {})",
                    mac_text(source),
                    mac_text(self.filter.mac)
                );
                self.stats.tx_spoofed += 1;
                RSP_DROPPED
            }
        };
        let first_id = match slots.first() {
            Some(Slot::Data(first)) => first.id,
            _ => 0,
        };
        for slot in &slots {
            let response = match slot {
                Slot::Data(data) => TxResponse {
                    id: data.id,
                    status,
                },
                Slot::Extra(_) => TxResponse {
                    id: first_id,
                    status: RSP_NULL,
                },
            };
            // Every taken slot frees one response slot.
            let _ = self.tx.queue_response(response);
        }
        self.partial = slots;
        self.partial.clear();
    }

    fn first_flags_of(&self, slots: &[Slot]) -> u16 {
        match slots.first() {
            Some(Slot::Data(first)) => first.flags,
            _ => 0,
        }
    }

    /// Check a packet's slots and copy its bytes into `self.frame`, if the filter lets
    /// it pass: its length is known before the copy, its source address after.
    fn copy_packet(
        &mut self,
        slots: &[Slot],
        memory: &mut impl GuestMemory,
    ) -> Result<(), Refused> {
        let broken = Refused::Broken;
        let data: Vec<TxRequest> = slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::Data(data) => Some(*data),
                Slot::Extra(_) => None,
            })
            .collect();
        let Some((first, fragments)) = data.split_first() else {
            return Err(broken("a packet without data".into()));
        };
        let total = usize::from(first.size);
        let in_fragments: usize = fragments.iter().map(|f| usize::from(f.size)).sum();
        let Some(in_first) = total.checked_sub(in_fragments) else {
            return Err(broken(format!(
                "packet of {total} bytes whose fragments hold {in_fragments}"
            )));
        };
        if !(ETH_HLEN..=MAX_PACKET).contains(&total) {
            return Err(broken(format!("packet of {total} bytes")));
        }
        self.spans.clear();
        let mut at = 0;
        for (i, (request, len)) in std::iter::once((first, in_first))
            .chain(fragments.iter().map(|f| (f, usize::from(f.size))))
            .enumerate()
        {
            if usize::from(request.offset) + len > PAGE_SIZE {
                return Err(broken(format!(
                    "slot {i}: {len} bytes at offset {} run past the page",
                    request.offset
                )));
            }
            if len == 0 {
                continue;
            }
            self.spans.push(Span {
                gref: request.gref,
                offset: request.offset,
                len: len as u16,
                local: at,
            });
            at += len;
        }
        if total > self.filter.max_frame {
            return Err(Refused::Oversized(total));
        }
        self.frame.resize(total, 0);
        memory.copy(
            Direction::FromGuest,
            &self.spans,
            &mut self.frame,
            &mut self.status,
        );
        if self.status.len() < self.spans.len() || self.status.iter().any(|&s| s != GNTST_OKAY) {
            return Err(broken("grant copy failed".into()));
        }
        // At least an Ethernet header (checked above): destination, then source.
        let source: [u8; 6] = self.frame[6..12].try_into().expect("6 bytes");
        if source != self.filter.mac {
            return Err(Refused::Spoofed(source));
        }
        Ok(())
    }

    /// Offer one frame to the guest; call [`Netback::push_rx`] after a batch.
    pub fn receive(
        &mut self,
        memory: &mut impl GuestMemory,
        frame: &[u8],
    ) -> Result<Delivered, NetbackError> {
        if frame.len() > PAGE_SIZE || frame.len() < ETH_HLEN {
            self.stats.rx_dropped += 1;
            return Ok(Delivered::Dropped);
        }
        let Some(request) = self.take_rx_buffer()? else {
            self.stats.rx_dropped += 1;
            return Ok(Delivered::NoBuffer);
        };
        self.spans.clear();
        self.spans.push(Span {
            gref: request.gref,
            offset: 0,
            len: frame.len() as u16,
            local: 0,
        });
        self.frame.clear();
        self.frame.extend_from_slice(frame);
        memory.copy(
            Direction::ToGuest,
            &self.spans,
            &mut self.frame,
            &mut self.status,
        );
        let copied = self.status.first() == Some(&GNTST_OKAY);
        let response = RxResponse {
            id: request.id,
            offset: 0,
            flags: 0,
            status: if copied {
                frame.len() as i16
            } else {
                RSP_DROPPED
            },
        };
        let _ = self.rx.queue_response(response);
        if copied {
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += frame.len() as u64;
            Ok(Delivered::Yes)
        } else {
            self.stats.rx_dropped += 1;
            Ok(Delivered::Dropped)
        }
    }

    /// The next receive buffer the guest posted. When there is none, ask the guest to
    /// notify us when it posts one, and look once more: a buffer posted between the two
    /// looks would otherwise wait for a notification that never comes. Two looks at
    /// most, whatever the guest does to its index meanwhile (it cannot keep us here).
    fn take_rx_buffer(&mut self) -> Result<Option<RxRequest>, NetbackError> {
        for look in 0..2 {
            if let Some(request) = self.rx.take_request()? {
                return Ok(Some(request));
            }
            if look == 0 && !self.rx.final_check_for_requests()? {
                break;
            }
        }
        Ok(None)
    }

    /// Publish receive responses; whether to notify the guest.
    pub fn push_rx(&mut self) -> bool {
        self.rx.push_responses()
    }
}

/// `aa:bb:cc:dd:ee:ff`.
fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|byte| format!("{byte:02x}")).join(":")
}

/// An extra-info slot's flags (`struct netif_extra_info`: type, flags, …, over the
/// slot's first bytes).
fn extra_flags(slot: &TxRequest) -> u8 {
    slot.gref.to_le_bytes()[1]
}

/// Fill in the TCP or UDP checksum the guest left blank (`NETTXF_csum_blank`): the field
/// holds the pseudo-header sum, as Linux's CHECKSUM_PARTIAL leaves it; only IPv4 is
/// handled (the frame is sent as it is otherwise).
pub fn complete_checksum(frame: &mut [u8]) {
    if frame.len() < ETH_HLEN + 20 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    let ip = &frame[ETH_HLEN..];
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4 || header_len < 20 || total < header_len || ETH_HLEN + total > frame.len() {
        return;
    }
    let field = match ip[9] {
        6 => 16,
        17 => 6,
        _ => return,
    };
    let l4 = ETH_HLEN + header_len;
    let end = ETH_HLEN + total;
    if l4 + field + 2 > end {
        return;
    }
    let mut sum = 0u32;
    for pair in frame[l4..end].chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut checksum = !(sum as u16);
    if checksum == 0 && ip[9] == 17 {
        checksum = 0xffff;
    }
    frame[l4 + field..l4 + field + 2].copy_from_slice(&checksum.to_be_bytes());
}

/// Ring pages, aligned as the ring code wants them.
#[repr(C, align(4096))]
struct Page([u8; PAGE_SIZE]);

/// Fuzzing entry point: serve a copy of a transmit ring page through `filter`, as the
/// daemon would. Returns the frames sent and the packets taken, or the protocol error.
pub fn transmit_snapshot(
    tx_page: &[u8; PAGE_SIZE],
    filter: TxFilter,
    memory: &mut impl GuestMemory,
    budget: usize,
) -> Result<(Vec<Vec<u8>>, usize), NetbackError> {
    let mut tx = Box::new(Page(*tx_page));
    let mut rx = Box::new(Page([0; PAGE_SIZE]));
    // SAFETY: both pages are ours, aligned, and outlive the engine.
    let mut engine = unsafe { Netback::new(tx.0.as_mut_ptr(), rx.0.as_mut_ptr(), filter) };
    let mut frames = Vec::new();
    let progress = engine.transmit(
        memory,
        &mut |frame: &[u8]| frames.push(frame.to_vec()),
        budget,
    )?;
    Ok((frames, progress.packets))
}

/// Fuzzing entry point: offer `frames` to the guest through a copy of a receive ring
/// page, as the daemon would, then publish. Returns what became of each frame and the
/// responses written, or the protocol error.
pub fn receive_snapshot(
    rx_page: &[u8; PAGE_SIZE],
    memory: &mut impl GuestMemory,
    frames: &[Vec<u8>],
) -> Result<(Vec<Delivered>, Vec<RxResponse>), NetbackError> {
    let mut tx = Box::new(Page([0; PAGE_SIZE]));
    let mut rx = Box::new(Page(*rx_page));
    // rsp_prod is the back end's to write (the engine never reads it); zero, so that
    // what it says afterwards is what the engine produced.
    rx.0[8..12].fill(0);
    // The transmit filter plays no part in receiving.
    let filter = TxFilter::new([0; 6], 1500, false);
    // SAFETY: both pages are ours, aligned, and outlive the engine.
    let mut engine = unsafe { Netback::new(tx.0.as_mut_ptr(), rx.0.as_mut_ptr(), filter) };
    let mut delivered = Vec::new();
    for frame in frames {
        delivered.push(engine.receive(memory, frame)?);
    }
    engine.push_rx();
    drop(engine);
    let produced = u32::from_le_bytes(rx.0[8..12].try_into().expect("4 bytes"));
    let slots = BackRing::<RxRequest, RxResponse>::SIZE;
    let responses = (0..produced.min(slots))
        .map(|index| {
            let at = 64 + index as usize * size_of::<RxResponse>();
            let bytes = &rx.0[at..at + 8];
            RxResponse {
                id: u16::from_le_bytes([bytes[0], bytes[1]]),
                offset: u16::from_le_bytes([bytes[2], bytes[3]]),
                flags: u16::from_le_bytes([bytes[4], bytes[5]]),
                status: i16::from_le_bytes([bytes[6], bytes[7]]),
            }
        })
        .collect();
    Ok((delivered, responses))
}

#[cfg(test)]
mod tests {
    use xenproto::netif::{RxFront, TxFront};

    use super::super::memory::fake::{FakeGuest, Noise};
    use super::*;

    struct Rig {
        _pages: (Box<Page>, Box<Page>),
        tx: TxFront,
        rx: RxFront,
        back: Netback,
        guest: FakeGuest,
    }

    /// The vif's address.
    const MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x12, 0x34, 0x56];

    fn rig() -> Rig {
        rig_with(TxFilter::new(MAC, 1500, false))
    }

    fn rig_with(filter: TxFilter) -> Rig {
        let mut tx_page = Box::new(Page([0xaa; PAGE_SIZE]));
        let mut rx_page = Box::new(Page([0xaa; PAGE_SIZE]));
        let (t, r) = (tx_page.0.as_mut_ptr(), rx_page.0.as_mut_ptr());
        // SAFETY: the pages outlive both ends (kept in the rig).
        let (tx, rx, back) =
            unsafe { (TxFront::new(t), RxFront::new(r), Netback::new(t, r, filter)) };
        Rig {
            _pages: (tx_page, rx_page),
            tx,
            rx,
            back,
            guest: FakeGuest::default(),
        }
    }

    fn req(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> TxRequest {
        TxRequest {
            gref,
            offset,
            flags,
            id,
            size,
        }
    }

    /// `len` bytes of `fill` with the vif's address as their source, as a frame's start.
    fn from_vif(len: usize, fill: u8) -> Vec<u8> {
        let mut bytes = vec![fill; len];
        bytes[6..12].copy_from_slice(&MAC);
        bytes
    }

    /// Each frame's length and source address, for short assertion messages.
    fn summary(frames: &[Vec<u8>]) -> Vec<(usize, [u8; 6])> {
        frames
            .iter()
            .map(|frame| (frame.len(), frame[6..12].try_into().unwrap()))
            .collect()
    }

    impl Rig {
        fn send(&mut self, requests: &[TxRequest]) {
            for r in requests {
                self.tx.queue_request(*r).unwrap();
            }
            self.tx.push_requests();
        }

        fn transmit(&mut self) -> Result<Vec<Vec<u8>>, NetbackError> {
            let mut frames = Vec::new();
            self.back
                .transmit(&mut self.guest, &mut |f: &[u8]| frames.push(f.to_vec()), 64)?;
            Ok(frames)
        }

        fn tx_responses(&mut self) -> Vec<(u16, i16)> {
            let mut out = Vec::new();
            while let Some(r) = self.tx.take_response().unwrap() {
                out.push((r.id, r.status));
            }
            out
        }
    }

    #[test]
    fn single_and_multi_slot_packets_with_extra_info() {
        let mut rig = rig();
        rig.guest.grant(1)[100..160].copy_from_slice(&from_vif(60, 1));
        rig.guest.grant(2)[..40].copy_from_slice(&from_vif(40, 2));
        rig.guest.grant(3)[..20].fill(3);
        // One slot; then 60 bytes over two slots with an extra-info slot between.
        let mut extra = req(0, 0, 0, 0, 0);
        extra.gref = 1; // type 1 (GSO), flags 0
        rig.send(&[
            req(1, 100, 0, 7, 60),
            req(2, 0, tx_flags::EXTRA_INFO | tx_flags::MORE_DATA, 8, 60),
            extra,
            req(3, 0, 0, 9, 20),
        ]);
        let frames = rig.transmit().unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], from_vif(60, 1));
        assert_eq!(frames[1], [from_vif(40, 2), vec![3u8; 20]].concat());
        assert_eq!(
            rig.tx_responses(),
            [(7, RSP_OKAY), (8, RSP_OKAY), (8, RSP_NULL), (9, RSP_OKAY)]
        );
    }

    #[test]
    fn a_packet_published_in_pieces_waits_for_its_end() {
        let mut rig = rig();
        rig.guest.grant(1)[..70].copy_from_slice(&from_vif(70, 1));
        rig.guest.grant(2).fill(2);
        rig.send(&[req(1, 0, tx_flags::MORE_DATA, 1, 100)]);
        assert!(rig.transmit().unwrap().is_empty());
        assert!(rig.tx_responses().is_empty());
        rig.send(&[req(2, 0, 0, 2, 30)]);
        let frames = rig.transmit().unwrap();
        assert_eq!(frames, [[from_vif(70, 1), vec![2u8; 30]].concat()]);
        assert_eq!(rig.tx_responses(), [(1, RSP_OKAY), (2, RSP_OKAY)]);
    }

    #[test]
    fn bad_packets_fail_alone() {
        let mut rig = rig();
        rig.guest.grant(1)[6..12].copy_from_slice(&MAC);
        rig.send(&[
            req(1, 4090, 0, 1, 60),                // past the page
            req(99, 0, 0, 2, 60),                  // no such grant
            req(1, 0, tx_flags::MORE_DATA, 3, 10), // fragments larger than the packet
            req(1, 0, 0, 4, 20),
            req(1, 0, 0, 5, 4),  // shorter than an Ethernet header
            req(1, 0, 0, 6, 60), // fine
        ]);
        let frames = rig.transmit().unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(
            rig.tx_responses(),
            [
                (1, RSP_ERROR),
                (2, RSP_ERROR),
                (3, RSP_ERROR),
                (4, RSP_ERROR),
                (5, RSP_ERROR),
                (6, RSP_OKAY)
            ]
        );
        assert_eq!(rig.back.stats.tx_errors, 4);
    }

    #[test]
    fn frames_from_other_addresses_are_dropped() {
        let mut rig = rig();
        // Another host's address, the broadcast address, the vif's with one bit off.
        let mut other = MAC;
        other[5] ^= 1;
        for (gref, source) in [(1, [0x00, 0x16, 0x3e, 0, 0, 1]), (2, [0xff; 6]), (3, other)] {
            rig.guest.grant(gref)[6..12].copy_from_slice(&source);
        }
        rig.guest.grant(4)[..60].copy_from_slice(&from_vif(60, 4));
        rig.send(&[
            req(1, 0, 0, 1, 60),
            req(4, 0, 0, 2, 60),
            req(2, 0, 0, 3, 60),
            req(3, 0, 0, 4, 60),
        ]);
        let frames = rig.transmit().unwrap();
        assert_eq!(frames.len(), 1, "{:?}", summary(&frames));
        assert_eq!(frames[0], from_vif(60, 4));
        assert_eq!(
            rig.tx_responses(),
            [
                (1, RSP_DROPPED),
                (2, RSP_OKAY),
                (3, RSP_DROPPED),
                (4, RSP_DROPPED)
            ]
        );
        let stats = rig.back.stats;
        assert_eq!(
            (stats.tx_spoofed, stats.tx_packets, stats.tx_errors),
            (3, 1, 0)
        );
    }

    #[test]
    fn frames_longer_than_the_mtu_are_dropped_unless_gso_was_negotiated() {
        // 1514 bytes (the MTU and an Ethernet header) in one slot; 1515 in one slot;
        // 3000 over two slots.
        let send = |rig: &mut Rig| {
            rig.guest.grant(1)[..2000].copy_from_slice(&from_vif(2000, 1));
            rig.guest.grant(2).fill(2);
            rig.send(&[
                req(1, 0, 0, 1, 1514),
                req(1, 0, 0, 2, 1515),
                req(1, 0, tx_flags::MORE_DATA, 3, 3000),
                req(2, 0, 0, 4, 1000),
            ]);
            rig.transmit().unwrap()
        };
        let mut rig = rig();
        let frames = send(&mut rig);
        assert_eq!(summary(&frames), [(1514, MAC)]);
        assert_eq!(frames[0], from_vif(1514, 1));
        assert_eq!(
            rig.tx_responses(),
            [
                (1, RSP_OKAY),
                (2, RSP_DROPPED),
                (3, RSP_DROPPED),
                (4, RSP_DROPPED)
            ]
        );
        let stats = rig.back.stats;
        assert_eq!((stats.tx_oversized, stats.tx_packets), (2, 1));
        // Dropped before their bytes are copied: one copy, the good frame's.
        assert_eq!(rig.guest.copies, 1);

        // With GSO, a packet may be as large as an IP datagram.
        let mut rig = rig_with(TxFilter::new(MAC, 1500, true));
        let frames = send(&mut rig);
        assert_eq!(summary(&frames), [(1514, MAC), (1515, MAC), (3000, MAC)]);
        assert_eq!(rig.back.stats.tx_oversized, 0);
    }

    #[test]
    fn endless_chains_are_a_protocol_error() {
        let mut rig = rig();
        rig.guest.grant(1);
        let chain: Vec<TxRequest> = (0..20)
            .map(|i| req(1, 0, tx_flags::MORE_DATA, i, 100))
            .collect();
        rig.send(&chain);
        assert_eq!(rig.transmit(), Err(NetbackError::TooManySlots));
    }

    #[test]
    fn frames_go_into_posted_buffers_or_are_dropped() {
        let mut rig = rig();
        for id in 0..2u16 {
            let gref = 10 + u32::from(id);
            rig.guest.grant(gref);
            rig.rx
                .queue_request(RxRequest { id, pad: 0, gref })
                .unwrap();
        }
        rig.rx.push_requests();
        let frame: Vec<u8> = (0..100u8).collect();
        assert_eq!(rig.back.receive(&mut rig.guest, &frame), Ok(Delivered::Yes));
        assert_eq!(
            rig.back.receive(&mut rig.guest, &[0; 5000]),
            Ok(Delivered::Dropped)
        );
        assert_eq!(rig.back.receive(&mut rig.guest, &frame), Ok(Delivered::Yes));
        assert_eq!(
            rig.back.receive(&mut rig.guest, &frame),
            Ok(Delivered::NoBuffer)
        );
        assert!(rig.back.push_rx());
        let mut seen = Vec::new();
        while let Some(rsp) = rig.rx.take_response().unwrap() {
            let checked = rsp.check(2).unwrap();
            seen.push((checked.id, checked.len));
        }
        assert_eq!(seen, [(0, 100), (1, 100)]);
        assert_eq!(&rig.guest.grant(11)[..100], &frame[..]);
        // A buffer posted with a bad grant: the frame is dropped, the slot answered.
        rig.rx
            .queue_request(RxRequest {
                id: 0,
                pad: 0,
                gref: 999,
            })
            .unwrap();
        rig.rx.push_requests();
        assert_eq!(
            rig.back.receive(&mut rig.guest, &frame),
            Ok(Delivered::Dropped)
        );
        rig.back.push_rx();
        let rsp = rig.rx.take_response().unwrap().unwrap();
        assert!(rsp.check(2).is_err());
        assert_eq!(rig.back.stats.rx_dropped, 3);
    }

    /// Frame after frame, over several laps of the ring: each goes into the next posted
    /// buffer; with none posted it is reported and counted once, and the guest is asked
    /// to notify when it posts again.
    #[test]
    fn many_frames_over_many_laps_of_the_ring() {
        let mut rig = rig();
        rig.guest.grant(1);
        let slots = BackRing::<RxRequest, RxResponse>::SIZE as u16;
        let frame = from_vif(60, 9);
        let (mut next_id, mut delivered, mut refused) = (0u16, 0u64, 0u64);
        for batch in [100u16, 256, 1, 200, 256, 3] {
            assert!(batch <= slots);
            for _ in 0..batch {
                let request = RxRequest {
                    id: next_id,
                    pad: 0,
                    gref: 1,
                };
                rig.rx.queue_request(request).unwrap();
                next_id = next_id.wrapping_add(1);
            }
            // The back end asked to be told (it found the ring empty last time; at
            // first, the ring's initial event index asks).
            assert!(rig.rx.push_requests());
            for _ in 0..batch {
                assert_eq!(rig.back.receive(&mut rig.guest, &frame), Ok(Delivered::Yes));
                delivered += 1;
            }
            for _ in 0..2 {
                assert_eq!(
                    rig.back.receive(&mut rig.guest, &frame),
                    Ok(Delivered::NoBuffer)
                );
                refused += 1;
            }
            rig.back.push_rx();
            let first = next_id.wrapping_sub(batch);
            for n in 0..batch {
                let response = rig.rx.take_response().unwrap().unwrap();
                let checked = response.check(u16::MAX).unwrap();
                assert_eq!((checked.id, checked.len), (first.wrapping_add(n), 60));
            }
            assert!(rig.rx.take_response().unwrap().is_none());
        }
        assert_eq!(delivered, 816);
        let stats = rig.back.stats;
        assert_eq!((stats.rx_packets, stats.rx_dropped), (delivered, refused));
    }

    /// A guest posting receive buffers on another CPU while the back end offers frames
    /// without pause: buffers posted while the back end looks (between its first look
    /// and its final check) are taken, and a frame delivered so is not counted as
    /// dropped as well.
    #[test]
    fn buffers_posted_while_the_back_end_looks_are_taken_and_counted_once() {
        use std::sync::Barrier;
        use std::time::{Duration, Instant};

        const BUFFERS: u16 = 2000;
        let mut tx_page = Box::new(Page([0; PAGE_SIZE]));
        let mut rx_page = Box::new(Page([0; PAGE_SIZE]));
        let tx_at = tx_page.0.as_mut_ptr();
        // Handed to the guest's thread as an address (pointers are not Send).
        let rx_at = rx_page.0.as_mut_ptr() as usize;
        let (ready, served) = (Barrier::new(2), Barrier::new(2));
        std::thread::scope(|scope| {
            let guest = scope.spawn(|| {
                // SAFETY: the page outlives the scope; the back end attaches after
                // `ready`, and reads only what the ring protocol publishes.
                let mut front = unsafe { RxFront::new(rx_at as *mut u8) };
                ready.wait();
                let mut ids = Vec::new();
                for id in 0..BUFFERS {
                    // Over several laps of the ring: make room first.
                    while front.free_requests() == 0 {
                        while let Some(response) = front.take_response().unwrap() {
                            ids.push(response.check(BUFFERS).unwrap().id);
                        }
                    }
                    let request = RxRequest {
                        id,
                        pad: 0,
                        gref: 1,
                    };
                    front.queue_request(request).unwrap();
                    front.push_requests();
                    // A pause of a different length each time, so that posts land at
                    // every point of the back end's looks.
                    for _ in 0..(u32::from(id) * 7919 % 3000) {
                        std::hint::spin_loop();
                    }
                }
                served.wait();
                while let Some(response) = front.take_response().unwrap() {
                    ids.push(response.check(BUFFERS).unwrap().id);
                }
                ids
            });
            ready.wait();
            let filter = TxFilter::new(MAC, 1500, false);
            // SAFETY: both pages outlive the engine (dropped in this scope); the guest
            // initialised the receive ring before `ready`.
            let mut back = unsafe { Netback::new(tx_at, rx_at as *mut u8, filter) };
            let mut memory = FakeGuest::default();
            memory.grant(1);
            let frame = from_vif(60, 7);
            let (mut delivered, mut no_buffer) = (0u64, 0u64);
            let deadline = Instant::now() + Duration::from_secs(60);
            while delivered < u64::from(BUFFERS) {
                assert!(Instant::now() < deadline, "{delivered} frames delivered");
                match back.receive(&mut memory, &frame).unwrap() {
                    Delivered::Yes => {
                        delivered += 1;
                        back.push_rx();
                    }
                    Delivered::NoBuffer => no_buffer += 1,
                    Delivered::Dropped => panic!("a 60-byte frame dropped"),
                }
            }
            back.push_rx();
            served.wait();
            let ids = guest.join().unwrap();
            assert_eq!(ids, (0..BUFFERS).collect::<Vec<_>>());
            assert_eq!(back.stats.rx_packets, delivered);
            assert_eq!(
                back.stats.rx_dropped, no_buffer,
                "frames counted as dropped, of {no_buffer} offered without a buffer"
            );
        });
    }

    #[test]
    fn blank_checksums_are_completed() {
        // An IPv4 UDP packet 10.0.0.1:1 → 10.0.0.2:2 with 4 bytes of payload.
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = [
            0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&[0, 1, 0, 2, 0, 12, 0, 0, b'a', b'b', b'c', b'd']);
        // The pseudo-header sum: addresses, protocol, UDP length.
        let pseudo: u32 = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + 12;
        frame[40..42].copy_from_slice(&(pseudo as u16).to_be_bytes());
        complete_checksum(&mut frame);
        // Verify: the sum over pseudo-header and datagram is 0xffff.
        let mut sum = pseudo;
        for pair in frame[34..].chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }

    #[test]
    fn random_rings_are_survived() {
        let mut noise = Noise(0x0bad_cafe_dead_beef);
        for round in 0..2000 {
            let mut page = noise.page();
            if round % 4 != 0 {
                page[0..4].copy_from_slice(&((noise.word() % 300) as u32).to_le_bytes());
            }
            let mut guest = FakeGuest::default();
            for gref in 0..4 {
                guest.grant(gref);
            }
            let filter = TxFilter::new(MAC, 1500, round % 2 == 0);
            if let Ok((frames, packets)) = transmit_snapshot(&page, filter, &mut guest, 64) {
                assert!(frames.len() <= packets && packets <= 64);
            }
            assert!(guest.misfits.is_empty(), "{:?}", guest.misfits);
        }
    }
}
