//! Random bytes that never wait for entropy, and the domain handles (UUIDs) made of them.
//!
//! libuuid blocks until the kernel's CRNG is initialised; in a dom0 without a hardware
//! RNG that is ~3 s per `xl create` (`shared/notes/xen-lab.md`). A domain handle needs
//! to be unique, not secret, so chaos asks `getrandom(2)` with `GRND_INSECURE` (Linux
//! 5.6+), then with `GRND_NONBLOCK`, and otherwise mixes the clock, the pid and a
//! counter: it never blocks.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// `GRND_INSECURE` (linux/random.h); libc may not name it on every target.
const GRND_INSECURE: libc::c_uint = 0x0004;

/// Fill `buf` with random bytes, without blocking.
pub fn random_bytes(buf: &mut [u8]) {
    for flags in [GRND_INSECURE, libc::GRND_NONBLOCK] {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
        let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), flags) };
        if usize::try_from(got).is_ok_and(|got| got == buf.len()) {
            return;
        }
    }
    fallback_bytes(buf);
}

/// Clock, pid, a counter and std's per-process random keys, through SipHash.
fn fallback_bytes(buf: &mut [u8]) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let state = std::collections::hash_map::RandomState::new();
    for chunk in buf.chunks_mut(8) {
        let mut hasher = state.build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        hasher.write_u32(std::process::id());
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let bytes = hasher.finish().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// A domain handle: 16 bytes, shown as a UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// A random (version 4, RFC 4122 variant) UUID.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        random_bytes(&mut bytes);
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Uuid(bytes)
    }

    /// Parse `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub fn parse(text: &str) -> Option<Self> {
        let hex: String = text.chars().filter(|&c| c != '-').collect();
        let dashes = [8, 13, 18, 23];
        if text.len() != 36
            || hex.len() != 32
            || !dashes.iter().all(|&at| text.as_bytes()[at] == b'-')
        {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Uuid(bytes))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_differ() {
        let a = Uuid::random();
        let b = Uuid::random();
        assert_ne!(a, b);
        let text = a.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4");
        assert!("89ab".contains(&text[19..20]), "{text}");
        assert_eq!(Uuid::parse(&text), Some(a));
        assert_eq!(
            Uuid::parse("714899b9-7e92-45a5-b024-4aa65bace637")
                .unwrap()
                .0[..2],
            [0x71, 0x48]
        );
        assert_eq!(Uuid::parse("714899b97e9245a5b0244aa65bace637"), None);
        assert_eq!(Uuid::parse("714899b9-7e92-45a5-b024-4aa65bace63g"), None);
    }

    #[test]
    fn the_fallback_fills_everything() {
        let mut a = [0u8; 13];
        let mut b = [0u8; 13];
        fallback_bytes(&mut a);
        fallback_bytes(&mut b);
        assert_ne!(a, b);
    }
}
