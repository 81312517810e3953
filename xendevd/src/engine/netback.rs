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
const ETH_HLEN: usize = 14;
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

/// Counters of one vif.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
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

/// One vif's rings, served.
#[derive(Debug)]
pub struct Netback {
    tx: BackRing<TxRequest, TxResponse>,
    rx: BackRing<RxRequest, RxResponse>,
    /// Slots of a packet whose end is not published yet.
    partial: Vec<Slot>,
    frame: Vec<u8>,
    spans: Vec<Span>,
    status: Vec<i16>,
    pub stats: Stats,
}

impl Netback {
    /// Serve the rings in `tx_page` and `rx_page`.
    ///
    /// # Safety
    /// Both must be page-aligned, readable and writable pages (the guest's ring pages,
    /// mapped) that stay mapped as long as the `Netback` lives.
    pub unsafe fn new(tx_page: *mut u8, rx_page: *mut u8) -> Self {
        Self {
            // SAFETY: guaranteed by the caller.
            tx: unsafe { BackRing::new(tx_page) },
            // SAFETY: as above.
            rx: unsafe { BackRing::new(rx_page) },
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
            Err(why) => {
                log::debug!("vif transmit: {why}");
                self.stats.tx_errors += 1;
                RSP_ERROR
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

    /// Check a packet's slots and copy its bytes into `self.frame`.
    fn copy_packet(&mut self, slots: &[Slot], memory: &mut impl GuestMemory) -> Result<(), String> {
        let data: Vec<TxRequest> = slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::Data(data) => Some(*data),
                Slot::Extra(_) => None,
            })
            .collect();
        let Some((first, fragments)) = data.split_first() else {
            return Err("a packet without data".into());
        };
        let total = usize::from(first.size);
        let in_fragments: usize = fragments.iter().map(|f| usize::from(f.size)).sum();
        let Some(in_first) = total.checked_sub(in_fragments) else {
            return Err(format!(
                "packet of {total} bytes whose fragments hold {in_fragments}"
            ));
        };
        if !(ETH_HLEN..=MAX_PACKET).contains(&total) {
            return Err(format!("packet of {total} bytes"));
        }
        self.spans.clear();
        let mut at = 0;
        for (i, (request, len)) in std::iter::once((first, in_first))
            .chain(fragments.iter().map(|f| (f, usize::from(f.size))))
            .enumerate()
        {
            if usize::from(request.offset) + len > PAGE_SIZE {
                return Err(format!(
                    "slot {i}: {len} bytes at offset {} run past the page",
                    request.offset
                ));
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
        self.frame.resize(total, 0);
        memory.copy(
            Direction::FromGuest,
            &self.spans,
            &mut self.frame,
            &mut self.status,
        );
        if self.status.len() < self.spans.len() || self.status.iter().any(|&s| s != GNTST_OKAY) {
            return Err("grant copy failed".into());
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
        let Some(request) = self.rx.take_request()? else {
            self.stats.rx_dropped += 1;
            // Ask the guest to notify us when it posts buffers again.
            if self.rx.final_check_for_requests()? {
                return self.receive(memory, frame);
            }
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

    /// Publish receive responses; whether to notify the guest.
    pub fn push_rx(&mut self) -> bool {
        self.rx.push_responses()
    }
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

/// Fuzzing entry point: serve a copy of a transmit ring page, as the daemon would.
/// Returns the frames sent and the responses' `(id, status)`, or the protocol error.
pub fn transmit_snapshot(
    tx_page: &[u8; PAGE_SIZE],
    memory: &mut impl GuestMemory,
    budget: usize,
) -> Result<(Vec<Vec<u8>>, usize), NetbackError> {
    let mut tx = Box::new(Page(*tx_page));
    let mut rx = Box::new(Page([0; PAGE_SIZE]));
    // SAFETY: both pages are ours, aligned, and outlive the engine.
    let mut engine = unsafe { Netback::new(tx.0.as_mut_ptr(), rx.0.as_mut_ptr()) };
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
    // SAFETY: both pages are ours, aligned, and outlive the engine.
    let mut engine = unsafe { Netback::new(tx.0.as_mut_ptr(), rx.0.as_mut_ptr()) };
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

    fn rig() -> Rig {
        let mut tx_page = Box::new(Page([0xaa; PAGE_SIZE]));
        let mut rx_page = Box::new(Page([0xaa; PAGE_SIZE]));
        let (t, r) = (tx_page.0.as_mut_ptr(), rx_page.0.as_mut_ptr());
        // SAFETY: the pages outlive both ends (kept in the rig).
        let (tx, rx, back) = unsafe { (TxFront::new(t), RxFront::new(r), Netback::new(t, r)) };
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
        rig.guest.grant(1)[100..160].fill(1);
        rig.guest.grant(2)[..40].fill(2);
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
        assert_eq!(frames[0], vec![1u8; 60]);
        assert_eq!(frames[1], [vec![2u8; 40], vec![3u8; 20]].concat());
        assert_eq!(
            rig.tx_responses(),
            [(7, RSP_OKAY), (8, RSP_OKAY), (8, RSP_NULL), (9, RSP_OKAY)]
        );
    }

    #[test]
    fn a_packet_published_in_pieces_waits_for_its_end() {
        let mut rig = rig();
        rig.guest.grant(1).fill(1);
        rig.guest.grant(2).fill(2);
        rig.send(&[req(1, 0, tx_flags::MORE_DATA, 1, 100)]);
        assert!(rig.transmit().unwrap().is_empty());
        assert!(rig.tx_responses().is_empty());
        rig.send(&[req(2, 0, 0, 2, 30)]);
        let frames = rig.transmit().unwrap();
        assert_eq!(frames, [[vec![1u8; 70], vec![2u8; 30]].concat()]);
        assert_eq!(rig.tx_responses(), [(1, RSP_OKAY), (2, RSP_OKAY)]);
    }

    #[test]
    fn bad_packets_fail_alone() {
        let mut rig = rig();
        rig.guest.grant(1);
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
            if let Ok((frames, packets)) = transmit_snapshot(&page, &mut guest, 64) {
                assert!(frames.len() <= packets && packets <= 64);
            }
            assert!(guest.misfits.is_empty(), "{:?}", guest.misfits);
        }
    }
}
