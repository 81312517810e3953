//! misbehave: a NoXS guest that attacks its back ends on purpose.
//!
//! It connects its first vbd and vif through their control pages like an honest front
//! end, then writes what a broken or hostile guest could: requests with grant
//! references it never issued, segments past the end of a page or inverted, too many
//! segments, sectors past the disk's end, unknown operations, repeated ids, transmit
//! slots crossing a page or chained without end, receive buffers it never granted, a
//! producer index far ahead of the consumer, a storm of notifications, and state words
//! flapping through every value. The sysctl device gets an acknowledgement for a
//! request never made.
//!
//! With `flap=S` on its command line it does only this instead: for S seconds it
//! connects its sysctl device like an honest front end and closes it again, as fast
//! as the back end follows, then reports how many rounds it made (`misbehave: flapped
//! N times`): the lab test checks that the back end's log does not grow with them.
//!
//! It judges nothing about the back end's choices (an error response or a disconnect
//! are both fine); it reports what it saw, one line per attack, and ends with
//! `misbehave: done`, then idles until destroyed. The lab test checks that xendevd and
//! the other guests carry on (`xtask/src/test/noxs-lab.sh`).

#![no_std]
#![no_main]

extern crate alloc;

use core::time::Duration;

use kernel::events::EventChannel;
use kernel::grant::GrantedFrame;
use kernel::noxs::ControlPage;
use kernel::println;
use xenproto::noxs::{
    Area, Kind, SysctlFrontend, VbdBackend, VbdFrontend, VifBackend, VifFrontend,
    VifFrontendFeatures,
};
use xenproto::shared::SharedBytes;
use xenproto::xenstore::XenbusState;

kernel::main!(main);

/// The shared ring header: req_prod, req_event, rsp_prod, rsp_event, then padding.
const RING_HEADER: usize = 64;
const REQ_PROD: usize = 0;
const RSP_PROD: usize = 8;

/// blkif on x86_64: 112-byte slots (the request is the larger), 32 of them.
const BLK_SLOT: usize = 112;
const BLK_SLOTS: u32 = 32;
const BLKIF_OP_READ: u8 = 0;
const BLKIF_OP_INDIRECT: u8 = 6;

/// netif: tx slots of 12 bytes (256 of them), rx slots of 8 (256).
const TX_SLOT: usize = 12;
const RX_SLOT: usize = 8;
const NET_SLOTS: u32 = 256;
const NETTXF_MORE_DATA: u16 = 1 << 2;

/// A grant reference this guest never issued.
const BOGUS_GREF: u32 = 0x0fff_fff0;

/// How long to wait for the back end's answer to one attack.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

fn main(args: kernel::Args) -> Result<(), &'static str> {
    if kernel::noxs::block().is_none() {
        return Err("misbehave needs NoXS devices (chaos, dev_method noxs)");
    }
    if let Some(seconds) = args.value("flap") {
        let seconds = seconds.parse().map_err(|_| "flap=S takes whole seconds")?;
        let entry = kernel::noxs::entries(Kind::Sysctl)
            .into_iter()
            .next()
            .ok_or("flap needs a sysctl device")?;
        let rounds = kernel::executor::block_on(flap_for(&entry, Duration::from_secs(seconds)))?;
        println!("misbehave: flapped {rounds} times");
        return Ok(());
    }
    kernel::executor::block_on(async {
        match kernel::noxs::entries(Kind::Vbd).first() {
            Some(entry) => report("vbd", attack_vbd(entry).await),
            None => println!("misbehave: no vbd to attack"),
        }
        match kernel::noxs::entries(Kind::Vif).first() {
            Some(entry) => report("vif", attack_vif(entry).await),
            None => println!("misbehave: no vif to attack"),
        }
        match kernel::noxs::entries(Kind::Sysctl).first() {
            Some(entry) => report("sysctl", attack_sysctl(entry).await),
            None => println!("misbehave: no sysctl to attack"),
        }
    });
    println!("misbehave: done");
    // Stay, holding whatever the back ends still map, until the toolstack destroys us.
    loop {
        kernel::executor::sleep(Duration::from_secs(3600));
    }
}

fn report(device: &str, result: Result<(), &'static str>) {
    if let Err(why) = result {
        println!("misbehave: {device}: stopped: {why}");
    }
}

/// A ring page of ours, written raw: no ring code of ours stands between the attacks
/// and the back end.
struct RawRing {
    frame: GrantedFrame,
    slot: usize,
    slots: u32,
}

impl RawRing {
    fn new(backend: u16, slot: usize, slots: u32) -> Result<Self, &'static str> {
        let frame = GrantedFrame::new(backend, false).map_err(|_| "cannot grant a ring page")?;
        Ok(Self { frame, slot, slots })
    }

    /// Our ring page, which the back end reads (and writes) concurrently: the point.
    fn page(&self) -> SharedBytes<'_> {
        let page = core::ptr::NonNull::new(self.frame.ptr()).expect("a mapped frame");
        // SAFETY: our own granted page, mapped while the frame lives; no references.
        unsafe { SharedBytes::new(page, 4096) }
    }

    fn put_u32(&self, at: usize, value: u32) {
        self.page().write_u32(at, value);
    }

    fn get_u32(&self, at: usize) -> u32 {
        self.page().read_u32(at)
    }

    /// Write `bytes` into slot `index` (modulo the ring).
    fn put_slot(&self, index: u32, bytes: &[u8]) {
        let at = RING_HEADER + (index % self.slots) as usize * self.slot;
        assert!(bytes.len() <= self.slot);
        self.page().copy_in(at, bytes);
    }

    fn get_slot(&self, index: u32, len: usize) -> [u8; 16] {
        let at = RING_HEADER + (index % self.slots) as usize * self.slot;
        let mut out = [0u8; 16];
        self.page().copy_out(at, &mut out[..len.min(16)]);
        out
    }

    fn publish(&self, req_prod: u32) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.put_u32(REQ_PROD, req_prod);
    }

    fn rsp_prod(&self) -> u32 {
        self.get_u32(RSP_PROD)
    }
}

/// Notify and wait (bounded) for the back end to produce past `seen` responses.
async fn answers(ring: &RawRing, channel: &EventChannel, seen: u32) -> u32 {
    let _ = channel.notify();
    let deadline = kernel::time::Instant::now().saturating_add(ANSWER_WAIT);
    loop {
        let produced = ring.rsp_prod();
        if produced != seen {
            return produced;
        }
        let left = deadline.saturating_duration_since(kernel::time::Instant::now());
        if left.is_zero()
            || kernel::executor::timeout(left, channel.wait())
                .await
                .is_err()
        {
            return ring.rsp_prod();
        }
    }
}

/// Connect like an honest front end: our area, Initialised, wait for Connected.
async fn connect(control: &ControlPage, area: &impl Area) -> Result<(), &'static str> {
    control
        .connect(area)
        .await
        .map_err(|_| "the back end did not connect")
}

/// Claim every state in a row, `rounds` times, scribbling over our area each time.
fn flap(control: &ControlPage, rounds: u32) {
    const STATES: [XenbusState; 6] = [
        XenbusState::Initialising,
        XenbusState::InitWait,
        XenbusState::Initialised,
        XenbusState::Connected,
        XenbusState::Closing,
        XenbusState::Closed,
    ];
    for round in 0..rounds {
        control.write_frontend_area(&round.wrapping_mul(0x9e37_79b9).to_le_bytes());
        control.set_state(STATES[(round % 6) as usize]);
    }
}

/// Connect and close the sysctl device, round after round, for `duration`; each round
/// waits for the back end to follow (connected, closed, offered again).
async fn flap_for(entry: &xenproto::noxs::Entry, duration: Duration) -> Result<u32, &'static str> {
    let (control, _) = ControlPage::offered::<xenproto::noxs::SysctlBackend>(entry)
        .await
        .map_err(|_| "the back end never offered the sysctl")?;
    let area = SysctlFrontend {
        ack_seq: 0,
        supported: 0,
    };
    let start = kernel::time::Instant::now();
    let mut rounds = 0;
    while start.elapsed() < duration {
        let round = async {
            connect(&control, &area).await?;
            control.set_state(XenbusState::Closed);
            // Our notifications may coalesce: the back end may have seen Closed twice
            // and offered the device again already.
            let seen = backend_reaches(&control, &[XenbusState::Closed, XenbusState::InitWait]);
            if seen.await? == XenbusState::Closed {
                // Closed again, as a front end starting over: the back end offers it anew.
                control.set_state(XenbusState::Closed);
                backend_reaches(&control, &[XenbusState::InitWait]).await?;
            }
            Ok(())
        };
        if let Err(why) = round.await {
            let state = control.header().map(|header| header.be_state);
            println!("misbehave: flap round {rounds}: {why} (back end {state:?})");
            return Err(why);
        }
        rounds += 1;
    }
    Ok(rounds)
}

/// Wait (at most 5 s) until the back end's state is one of `wanted`: which one.
async fn backend_reaches(
    control: &ControlPage,
    wanted: &[XenbusState],
) -> Result<XenbusState, &'static str> {
    let deadline = kernel::time::Instant::now().saturating_add(Duration::from_secs(5));
    loop {
        let state = control.header().map_err(|_| "a bad header")?.be_state;
        if wanted.contains(&state) {
            return Ok(state);
        }
        let left = deadline.saturating_duration_since(kernel::time::Instant::now());
        if left.is_zero() {
            return Err("the back end did not follow within 5 s");
        }
        let _ =
            kernel::executor::timeout(left.min(Duration::from_millis(10)), control.wait()).await;
    }
}

fn blk_request(op: u8, segments: u8, id: u64, sector: u64, segs: &[(u32, u8, u8)]) -> [u8; 112] {
    let mut req = [0u8; 112];
    req[0] = op;
    req[1] = segments;
    req[8..16].copy_from_slice(&id.to_le_bytes());
    req[16..24].copy_from_slice(&sector.to_le_bytes());
    for (i, &(gref, first, last)) in segs.iter().enumerate().take(11) {
        let at = 24 + i * 8;
        req[at..at + 4].copy_from_slice(&gref.to_le_bytes());
        req[at + 4] = first;
        req[at + 5] = last;
    }
    req
}

async fn attack_vbd(entry: &xenproto::noxs::Entry) -> Result<(), &'static str> {
    let (control, _) = ControlPage::offered::<VbdBackend>(entry)
        .await
        .map_err(|_| "the back end never offered the vbd")?;
    let ring = RawRing::new(entry.backend, BLK_SLOT, BLK_SLOTS)?;
    let data = GrantedFrame::new(entry.backend, false).map_err(|_| "cannot grant a page")?;
    let channel = EventChannel::alloc_unbound(entry.backend).map_err(|_| "no event channel")?;
    let area = VbdFrontend {
        ring_ref: ring.frame.gref(),
        data_port: channel.port(),
        protocol: VbdFrontend::PROTOCOL_X86_64,
        features: 0,
    };
    connect(&control, &area).await?;
    println!("misbehave: vbd: connected");

    let good = data.gref();
    let attacks: [(&str, [u8; 112]); 9] = [
        (
            "honest read",
            blk_request(BLKIF_OP_READ, 1, 1, 0, &[(good, 0, 7)]),
        ),
        (
            "grant never issued",
            blk_request(BLKIF_OP_READ, 1, 2, 0, &[(BOGUS_GREF, 0, 7)]),
        ),
        (
            "inverted segment",
            blk_request(BLKIF_OP_READ, 1, 3, 0, &[(good, 7, 2)]),
        ),
        (
            "segment past its page",
            blk_request(BLKIF_OP_READ, 1, 4, 0, &[(good, 0, 200)]),
        ),
        (
            "200 segments",
            blk_request(BLKIF_OP_READ, 200, 5, 0, &[(good, 0, 7)]),
        ),
        ("no segments", blk_request(BLKIF_OP_READ, 0, 6, 0, &[])),
        (
            "sector past the disk",
            blk_request(BLKIF_OP_READ, 1, 7, u64::MAX - 3, &[(good, 0, 7)]),
        ),
        (
            "unknown operation",
            blk_request(0x77, 1, 8, 0, &[(good, 0, 7)]),
        ),
        (
            "indirect with bogus pages",
            blk_request(BLKIF_OP_INDIRECT, 255, 9, 0, &[(BOGUS_GREF, 0, 0)]),
        ),
    ];
    let mut produced = 0u32;
    let mut consumed = 0u32;
    for (what, request) in &attacks {
        ring.put_slot(produced, request);
        produced = produced.wrapping_add(1);
        ring.publish(produced);
        let now = answers(&ring, &channel, consumed).await;
        if now == consumed {
            println!("misbehave: vbd: {what}: no answer");
            continue;
        }
        let rsp = ring.get_slot(consumed, 16);
        let id = u64::from_le_bytes(rsp[0..8].try_into().unwrap_or_default());
        let status = i16::from_le_bytes([rsp[10], rsp[11]]);
        println!("misbehave: vbd: {what}: answered id {id} status {status}");
        consumed = now;
    }

    // The same id twice, then the producer a million slots ahead of the consumer.
    let twice = blk_request(BLKIF_OP_READ, 1, 42, 0, &[(good, 0, 7)]);
    ring.put_slot(produced, &twice);
    ring.put_slot(produced.wrapping_add(1), &twice);
    produced = produced.wrapping_add(2);
    ring.publish(produced);
    let now = answers(&ring, &channel, consumed).await;
    println!(
        "misbehave: vbd: one id twice: {} answers",
        now.wrapping_sub(consumed)
    );
    ring.publish(produced.wrapping_add(1_000_000));
    let _ = answers(&ring, &channel, ring.rsp_prod()).await;
    let state = control.header().map(|h| h.be_state);
    println!("misbehave: vbd: producer far ahead: back end now {state:?}");

    flood(&channel, "vbd");
    flap(&control, 3000);
    println!("misbehave: vbd: 3000 state flaps sent");
    Ok(())
}

fn tx_request(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> [u8; 12] {
    let mut req = [0u8; 12];
    req[0..4].copy_from_slice(&gref.to_le_bytes());
    req[4..6].copy_from_slice(&offset.to_le_bytes());
    req[6..8].copy_from_slice(&flags.to_le_bytes());
    req[8..10].copy_from_slice(&id.to_le_bytes());
    req[10..12].copy_from_slice(&size.to_le_bytes());
    req
}

async fn attack_vif(entry: &xenproto::noxs::Entry) -> Result<(), &'static str> {
    let (control, _) = ControlPage::offered::<VifBackend>(entry)
        .await
        .map_err(|_| "the back end never offered the vif")?;
    let tx = RawRing::new(entry.backend, TX_SLOT, NET_SLOTS)?;
    let rx = RawRing::new(entry.backend, RX_SLOT, NET_SLOTS)?;
    let data = GrantedFrame::new(entry.backend, true).map_err(|_| "cannot grant a page")?;
    let channel = EventChannel::alloc_unbound(entry.backend).map_err(|_| "no event channel")?;
    let area = VifFrontend {
        tx_ring_ref: tx.frame.gref(),
        rx_ring_ref: rx.frame.gref(),
        data_port: channel.port(),
        features: VifFrontendFeatures::REQUEST_RX_COPY,
    };
    connect(&control, &area).await?;
    println!("misbehave: vif: connected");

    // Receive buffers we never granted, all 256 of them: whatever the bridge floods
    // to us must fail to land, per buffer.
    for id in 0..NET_SLOTS {
        let mut req = [0u8; 8];
        req[0..2].copy_from_slice(&(id as u16).to_le_bytes());
        req[4..8].copy_from_slice(&BOGUS_GREF.wrapping_add(id).to_le_bytes());
        rx.put_slot(id, &req);
    }
    rx.publish(NET_SLOTS);

    let good = data.gref();
    let attacks: [(&str, &[[u8; 12]]); 6] = [
        ("grant never issued", &[tx_request(BOGUS_GREF, 0, 0, 1, 60)]),
        (
            "slot crossing its page",
            &[tx_request(good, 4000, 0, 2, 200)],
        ),
        (
            "65535-byte frame in one slot",
            &[tx_request(good, 0, 0, 3, 0xffff)],
        ),
        (
            "frame shorter than a header",
            &[tx_request(good, 0, 0, 4, 3)],
        ),
        (
            "chain that never ends",
            &[
                tx_request(good, 0, NETTXF_MORE_DATA, 5, 1000),
                tx_request(good, 0, NETTXF_MORE_DATA, 6, 100),
                tx_request(good, 100, NETTXF_MORE_DATA, 7, 100),
            ],
        ),
        (
            "one id twice",
            &[tx_request(good, 0, 0, 9, 60), tx_request(good, 0, 0, 9, 60)],
        ),
    ];
    let mut produced = 0u32;
    let mut consumed = 0u32;
    for (what, slots) in &attacks {
        for slot in *slots {
            tx.put_slot(produced, slot);
            produced = produced.wrapping_add(1);
        }
        tx.publish(produced);
        let now = answers(&tx, &channel, consumed).await;
        let mut statuses = alloc::vec::Vec::new();
        while consumed != now && statuses.len() < 8 {
            let rsp = tx.get_slot(consumed, 4);
            statuses.push(i16::from_le_bytes([rsp[2], rsp[3]]));
            consumed = consumed.wrapping_add(1);
        }
        consumed = now;
        println!("misbehave: vif: {what}: statuses {statuses:?}");
    }
    tx.publish(produced.wrapping_add(1_000_000));
    rx.publish(NET_SLOTS.wrapping_add(5_000_000));
    let _ = answers(&tx, &channel, tx.rsp_prod()).await;
    let state = control.header().map(|h| h.be_state);
    println!("misbehave: vif: producers far ahead: back end now {state:?}");

    flood(&channel, "vif");
    flap(&control, 3000);
    println!("misbehave: vif: 3000 state flaps sent");
    Ok(())
}

async fn attack_sysctl(entry: &xenproto::noxs::Entry) -> Result<(), &'static str> {
    let control = ControlPage::open(entry).map_err(|_| "cannot open the control page")?;
    // An acknowledgement of a request never made, and every request "supported".
    control
        .write_frontend(&SysctlFrontend {
            ack_seq: 0xffff_fff0,
            supported: u32::MAX,
        })
        .map_err(|_| "encoding our area")?;
    control.set_state(XenbusState::Connected);
    flap(&control, 3000);
    println!("misbehave: sysctl: bogus acknowledgement, 3000 state flaps sent");
    Ok(())
}

/// 100 000 notifications in a row on the data channel.
fn flood(channel: &EventChannel, device: &str) {
    for _ in 0..100_000 {
        let _ = channel.notify();
    }
    println!("misbehave: {device}: 100000 notifications sent");
}
