//! Target `noxs-pages`: the NoXS block (written by the toolstack, read by the guest) and
//! control pages (each side reads the other's area), decoded from bytes shaped like
//! valid ones and then mutated.
//!
//! Property: decoding never panics; what decodes is consistent (entries within the
//! limit, no duplicate device, the header of the kind asked for) and survives an
//! encode → decode round trip unchanged.

use std::time::Duration;

use proptest::prelude::*;
use xenproto::noxs::{
    BACKEND_AREA, BLOCK_OFFSET, Block, Entry, FRONTEND_AREA, Header, Kind, SysctlBackend,
    SysctlFrontend, VbdBackend, VbdFrontend, VifBackend, VifFrontend,
};

/// Bytes of the start_info page from the block's offset on.
const BLOCK_BYTES: usize = 4096 - BLOCK_OFFSET;

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Sysctl),
        Just(Kind::Console),
        Just(Kind::Vif),
        Just(Kind::Vbd)
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (kind(), any::<u16>(), 0u32..4, any::<u32>(), any::<u32>()).prop_map(
        |(kind, backend, devid, ctrl_gref, ctrl_port)| Entry {
            kind,
            backend,
            devid,
            ctrl_gref,
            ctrl_port,
        },
    )
}

/// `(offset, value)` byte overwrites applied after encoding.
fn mutations(len: usize) -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((0..len, any::<u8>()), 0..8)
}

/// A block: a valid encoding of up to 70 entries (more than fit: encoding refuses,
/// and the bytes stay random), then mutated.
fn block_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(entry(), 0..70),
        crate::sim::noise(BLOCK_BYTES),
        mutations(BLOCK_BYTES),
    )
        .prop_map(|(entries, mut bytes, mutations)| {
            let _ = Block {
                entries,
                generation: 0,
            }
            .encode(&mut bytes);
            for (at, value) in mutations {
                bytes[at] = value;
            }
            bytes
        })
}

/// A control page: a valid header of some kind and random areas, then mutated.
fn control_page() -> impl Strategy<Value = Vec<u8>> {
    (
        kind(),
        0u32..10,
        0u32..10,
        crate::sim::noise(4096),
        mutations(4096),
    )
        .prop_map(|(kind, be, fe, mut page, mutations)| {
            let _ = Header::init(&mut page, kind);
            page[8..12].copy_from_slice(&be.to_le_bytes());
            page[12..16].copy_from_slice(&fe.to_le_bytes());
            for (at, value) in mutations {
                page[at] = value;
            }
            page
        })
}

/// Decode `bytes` as an area; if it decodes, it must encode and decode to itself.
macro_rules! area_round_trip {
    ($area:ty, $bytes:expr) => {
        if let Ok(decoded) = <$area>::decode($bytes) {
            let mut again = vec![0u8; <$area>::LEN];
            decoded.encode(&mut again).map_err(|err| {
                TestCaseError::fail(format!("{}: re-encoding: {err:?}", stringify!($area)))
            })?;
            let round = <$area>::decode(&again).map_err(|err| {
                TestCaseError::fail(format!("{}: re-decoding: {err:?}", stringify!($area)))
            })?;
            prop_assert_eq!(round, decoded);
        }
    };
}

fn check_block(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(Some(block)) = Block::decode(bytes) else {
        return Ok(());
    };
    prop_assert!(block.entries.len() <= 64);
    for (i, a) in block.entries.iter().enumerate() {
        for b in &block.entries[i + 1..] {
            prop_assert!(a.kind != b.kind || a.devid != b.devid, "duplicate {a:?}");
        }
    }
    let mut again = vec![0u8; BLOCK_BYTES];
    block
        .encode(&mut again)
        .map_err(|err| TestCaseError::fail(format!("re-encoding the block: {err:?}")))?;
    prop_assert_eq!(Block::decode(&again), Ok(Some(block)));
    Ok(())
}

fn check_control_page(page: &[u8]) -> Result<(), TestCaseError> {
    for kind in [Kind::Sysctl, Kind::Console, Kind::Vif, Kind::Vbd] {
        if let Ok(header) = Header::decode(&page[..16], kind) {
            prop_assert_eq!(header.kind, kind);
        }
    }
    let backend = &page[BACKEND_AREA];
    let frontend = &page[FRONTEND_AREA];
    area_round_trip!(VifBackend, backend);
    area_round_trip!(VbdBackend, backend);
    area_round_trip!(SysctlBackend, backend);
    area_round_trip!(VifFrontend, frontend);
    area_round_trip!(VbdFrontend, frontend);
    area_round_trip!(SysctlFrontend, frontend);
    // Truncated copies: a short read must be an error, never a panic.
    for len in [0, 3, 15] {
        let _ = Header::decode(&page[..len], Kind::Vif);
        let _ = VifFrontend::decode(&frontend[..len]);
        let _ = VbdBackend::decode(&backend[..len]);
    }
    Ok(())
}

pub fn run(time: Duration) -> Result<u64, String> {
    let strategy = (block_bytes(), control_page());
    crate::run_for(time, &strategy, |(block, page)| {
        check_block(&block)?;
        check_control_page(&page)
    })
}
