//! Properties over generated input: whatever a client or a disk sends, the parsers
//! neither panic nor overrun, and what the encoders write reads back the same.

use alloc::vec::Vec;

use proptest::collection::vec;
use proptest::prelude::*;

use crate::resp::{self, MAX_BULK, Reply};
use crate::snapshot::{Header, Reader, SECTOR, Writer};
use crate::store::{ENTRY_OVERHEAD, Outcome, Session, Store};

/// RESP array encoding of `args`, as clients send requests.
fn encode_request(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

proptest! {
    /// Arbitrary bytes: an error, "need more", or a request that took some of them.
    #[test]
    fn parse_takes_what_it_says(bytes in vec(any::<u8>(), 0..300)) {
        if let Ok(Some((_, used))) = resp::parse(&bytes) {
            prop_assert!(used > 0 && used <= bytes.len());
        }
    }

    /// Bytes that look like requests, with one byte changed: still no panic, and the
    /// parse of a prefix never claims more than the prefix.
    #[test]
    fn mutated_requests(
        args in vec(vec(any::<u8>(), 0..20), 1..5),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut wire = encode_request(&args);
        let at = at.index(wire.len());
        wire[at] = byte;
        for end in 0..=wire.len() {
            if let Ok(Some((_, used))) = resp::parse(&wire[..end]) {
                prop_assert!(used <= end);
            }
        }
    }

    /// A pipeline of arbitrary binary requests parses back request by request, and each
    /// prefix short of a whole request needs more.
    #[test]
    fn pipelines_round_trip(requests in vec(vec(vec(any::<u8>(), 0..40), 1..4), 1..5)) {
        let wire: Vec<u8> = requests.iter().flat_map(|args| encode_request(args)).collect();
        let mut at = 0;
        for args in &requests {
            let one = encode_request(args).len();
            for end in at..at + one {
                prop_assert_eq!(resp::parse(&wire[at..end]), Ok(None));
            }
            let (got, used) = resp::parse(&wire[at..]).unwrap().unwrap();
            prop_assert_eq!(used, one);
            let got: Vec<Vec<u8>> = got.into_iter().map(|arg| arg.into_owned()).collect();
            prop_assert_eq!(&got, args);
            at += used;
        }
        prop_assert_eq!(at, wire.len());
    }

    /// Replies' lengths are what `encoded_len` says, so the pool charge is exact.
    #[test]
    fn reply_lengths(n in any::<i64>(), bytes in vec(any::<u8>(), 0..50)) {
        let reply = Reply::Array(alloc::vec![
            Reply::Integer(n),
            Reply::Bulk(bytes.clone().into()),
            Reply::Error(String::from_utf8_lossy(&bytes).into_owned()),
            Reply::Nil,
        ]);
        let mut out = Vec::new();
        reply.encode(&mut out);
        prop_assert_eq!(out.len(), reply.encoded_len());
    }

    /// Whatever the entries and the chunk sizes, a snapshot reads back as written.
    #[test]
    fn snapshots_round_trip(
        entries in vec((vec(any::<u8>(), 0..30), vec(any::<u8>(), 0..700)), 0..12),
        chunk_sectors in 1usize..4,
        read_chunk in 1usize..2000,
    ) {
        let mut writer = Writer::new();
        let mut payload = Vec::new();
        for (key, value) in &entries {
            writer.push(key, value);
            while let Some(chunk) = writer.take_chunk(chunk_sectors * SECTOR) {
                payload.extend(chunk);
            }
        }
        let (tail, header) = writer.finish();
        payload.extend(tail);
        let sector = header.encode();
        let header = Header::decode(&sector, (SECTOR + payload.len()) as u64).unwrap();
        let mut reader = Reader::new(header);
        let mut got = Vec::new();
        for bytes in payload.chunks(read_chunk) {
            got.extend(reader.feed(bytes).unwrap());
        }
        prop_assert_eq!(reader.finish(), Ok(entries.len() as u64));
        prop_assert_eq!(got, entries);
    }

    /// An arbitrary payload under a header that checks out: errors, never a panic or an
    /// allocation beyond the limits.
    #[test]
    fn arbitrary_payloads(payload in vec(any::<u8>(), 0..400), count in 0u64..50) {
        let header = Header { count: count.min(payload.len() as u64 / 8), payload_len: payload.len() as u64, payload_crc: 0 };
        let mut reader = Reader::new(header);
        if let Ok(entries) = reader.feed(&payload) {
            prop_assert!(entries.iter().all(|(k, v)| k.len() <= MAX_BULK && v.len() <= MAX_BULK));
            let _ = reader.finish();
        }
    }

    /// Any sequence of writes keeps the budget's count equal to what the entries take,
    /// and within the budget.
    #[test]
    fn the_budget_counts_what_is_stored(
        ops in vec((0u8..7, 0u8..4, vec(any::<u8>(), 0..40)), 1..60),
        budget in 0usize..1000,
    ) {
        let mut store = Store::new(budget);
        let session = Session { id: 1 };
        for (op, key, value) in ops {
            let key = [b'k', b'0' + key];
            let args: Vec<&[u8]> = match op {
                0 => alloc::vec![b"SET", &key, &value],
                1 => alloc::vec![b"APPEND", &key, &value],
                2 => alloc::vec![b"DEL", &key],
                3 => alloc::vec![b"INCR", &key],
                4 => alloc::vec![b"SET", &key, &value, b"GET"],
                5 => alloc::vec![b"SET", &key, &value, b"NX"],
                _ => alloc::vec![b"FLUSHALL"],
            };
            prop_assert!(matches!(store.execute(&session, &args), Outcome::Reply(_)));
            let counted: usize = store.entries().map(|(k, v)| k.len() + v.len() + ENTRY_OVERHEAD).sum();
            prop_assert_eq!(store.used(), counted);
            prop_assert!(store.used() <= budget);
        }
    }
}
