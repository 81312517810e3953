//! Xen system time: nanoseconds since the host booted, from the TSC and the scaling
//! factors Xen publishes per vCPU (`vcpu_time_info`).

use core::sync::atomic::{Ordering, fence};

use volatile::access::Readable;
use volatile::{VolatilePtr, map_field};

/// A consistent copy of a `vcpu_time_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeInfo {
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
}

impl TimeInfo {
    /// System time in ns at TSC value `tsc`.
    pub fn system_time_at(&self, tsc: u64) -> u64 {
        let delta = tsc.wrapping_sub(self.tsc_timestamp);
        // A TSC read just before Xen's own stamp would be "negative": clamp to 0.
        let delta = if delta > i64::MAX as u64 { 0 } else { delta };
        self.system_time + scale_delta(delta, self.tsc_to_system_mul, self.tsc_shift)
    }
}

/// Convert a TSC delta to ns as Xen defines it (`xen.h`, `vcpu_time_info`):
/// `ns = ((delta << shift) * mul) >> 32`, with a negative shift meaning a right shift.
pub fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let shifted = if shift >= 0 {
        delta << shift
    } else {
        delta >> -shift
    };
    ((u128::from(shifted) * u128::from(mul)) >> 32) as u64
}

/// Read a `vcpu_time_info` consistently: Xen makes `version` odd while it updates the
/// record, so retry until it is even and unchanged across the copy.
pub fn read<A: Readable>(info: VolatilePtr<'_, xen_sys::vcpu_time_info, A>) -> TimeInfo {
    loop {
        let version = map_field!(info.version).read();
        fence(Ordering::Acquire);
        let copy = info.read();
        fence(Ordering::Acquire);
        if version & 1 == 0 && version == map_field!(info.version).read() {
            return TimeInfo {
                tsc_timestamp: copy.tsc_timestamp,
                system_time: copy.system_time,
                tsc_to_system_mul: copy.tsc_to_system_mul,
                tsc_shift: copy.tsc_shift,
            };
        }
        core::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_matches_xen_formula() {
        // 2 GHz TSC: Xen publishes mul = 2^31 (0.5 ns per tick) with shift 0.
        assert_eq!(scale_delta(2_000_000_000, 1 << 31, 0), 1_000_000_000);
        // 3 GHz: mul ≈ 2^32/3 << 1 with shift -1.
        let mul = ((1u64 << 33) / 3) as u32;
        let ns = scale_delta(3_000_000_000, mul, -1);
        assert!(ns.abs_diff(1_000_000_000) < 2, "{ns}");
        // A positive shift multiplies first (slow TSC, 500 MHz).
        assert_eq!(scale_delta(500, 1 << 31, 2), 1000);
        // No overflow for a day of 4 GHz ticks.
        let day = 4_000_000_000u64 * 86_400;
        assert_eq!(scale_delta(day, 1 << 30, 0), 86_400_000_000_000);
    }

    #[test]
    fn system_time_advances_from_the_stamp() {
        let info = TimeInfo {
            tsc_timestamp: 1_000,
            system_time: 5_000,
            tsc_to_system_mul: 1 << 31,
            tsc_shift: 1,
        };
        assert_eq!(info.system_time_at(1_000), 5_000);
        assert_eq!(info.system_time_at(1_100), 5_100);
        // A TSC read slightly before the stamp does not wrap around.
        assert_eq!(info.system_time_at(999), 5_000);
    }
}
