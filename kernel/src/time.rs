//! Time: a monotonic clock from Xen system time and UTC from Xen's wall clock. Waiting
//! for time to pass (sleep, timers, timeouts) belongs to the executor, which reads this
//! clock.
//!
//! Xen system time counts nanoseconds since the host booted; each vCPU extrapolates
//! it from the TSC with factors Xen publishes (see [`arch::time`]). The wall clock in
//! `shared_info` is the UTC time at system time 0, so UTC now = wall clock + system
//! time.

use core::fmt;
use core::time::Duration;

/// A point on the monotonic clock, in ns: Xen system time, plus an offset that keeps
/// it going on from where it was when the guest is restored or migrated (another host's
/// system time may be behind ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// From nanoseconds on this clock.
    pub const fn from_nanos(ns: u64) -> Self {
        Self(ns)
    }

    /// Nanoseconds on this clock.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self` (zero if `earlier` is later).
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating at the end of time.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }
}

/// A UTC time: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UtcTime {
    pub secs: u64,
    pub nanos: u32,
}

/// A calendar date and time of day (proleptic Gregorian, UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl UtcTime {
    /// The wall clock `wc` (UTC at system time 0) plus `system_ns`.
    pub fn from_wallclock(wc_secs: u64, wc_nanos: u32, system_ns: u64) -> Self {
        let total = u128::from(wc_nanos) + u128::from(system_ns);
        Self {
            secs: wc_secs + (total / 1_000_000_000) as u64,
            nanos: (total % 1_000_000_000) as u32,
        }
    }

    /// Calendar fields.
    pub fn civil(&self) -> Civil {
        let days = (self.secs / 86_400) as i64;
        let rem = (self.secs % 86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
        }
    }
}

/// RFC 3339 with microseconds: `2026-11-24T03:12:48.123456Z`.
impl fmt::Display for UtcTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.civil();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            c.year,
            c.month,
            c.day,
            c.hour,
            c.minute,
            c.second,
            self.nanos / 1000
        )
    }
}

/// Year, month, day of the day `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, exact for the whole range).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(target_os = "none")]
pub use guest::*;

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU64, Ordering};

    use volatile::map_field;

    use super::*;

    static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
    /// Monotonic time minus Xen system time (wrapping): 0 until a restore.
    static OFFSET: AtomicU64 = AtomicU64::new(0);
    /// The monotonic time when the guest last suspended.
    static SUSPENDED_AT: AtomicU64 = AtomicU64::new(0);
    /// The monotonic time of the guest's first instruction, once it first suspends
    /// (0 before): a restored domain's TSC says nothing about the boot.
    static BOOTED_AT: AtomicU64 = AtomicU64::new(0);

    const UNMAPPED: &str = "time used before shared_info is mapped";

    /// The current vCPU time record.
    fn time_info() -> arch::time::TimeInfo {
        let vcpu = arch::mm::vcpu_info().expect(UNMAPPED);
        arch::time::read(map_field!(vcpu.time))
    }

    /// Xen system time now.
    fn system_time_now() -> u64 {
        time_info().system_time_at(arch::cpu::rdtsc())
    }

    impl Instant {
        /// Now.
        pub fn now() -> Self {
            Self(system_time_now().wrapping_add(OFFSET.load(Ordering::Relaxed)))
        }

        /// Xen system time at this instant, for Xen's timer and poll deadlines.
        pub fn system_time(self) -> u64 {
            self.0.wrapping_sub(OFFSET.load(Ordering::Relaxed))
        }

        /// Time since `self`.
        pub fn elapsed(self) -> Duration {
            Self::now().saturating_duration_since(self)
        }
    }

    /// The current UTC time, from Xen's wall clock.
    pub fn utc_now() -> UtcTime {
        let si = arch::mm::shared_info().expect(UNMAPPED);
        // Xen makes wc_version odd while it updates the wall clock: a read bracketed
        // by two equal even versions is consistent.
        loop {
            let version = map_field!(si.wc_version).read();
            core::sync::atomic::fence(Ordering::Acquire);
            let sec = map_field!(si.wc_sec).read();
            let sec_hi = map_field!(si.wc_sec_hi).read();
            let nsec = map_field!(si.wc_nsec).read();
            let now = system_time_now();
            core::sync::atomic::fence(Ordering::Acquire);
            let again = map_field!(si.wc_version).read();
            if version & 1 == 0 && version == again {
                let wc = u64::from(sec) | u64::from(sec_hi) << 32;
                return UtcTime::from_wallclock(wc, nsec, now);
            }
        }
    }

    pub(crate) fn set_boot_tsc(tsc: u64) {
        BOOT_TSC.store(tsc, Ordering::Relaxed);
    }

    /// Time from the guest's first instruction until now, on the monotonic clock.
    pub fn since_boot() -> Duration {
        match BOOTED_AT.load(Ordering::Relaxed) {
            0 => {
                let info = time_info();
                let boot = info.system_time_at(BOOT_TSC.load(Ordering::Relaxed));
                Duration::from_nanos(system_time_now().saturating_sub(boot))
            }
            booted => Instant::now().saturating_duration_since(Instant(booted)),
        }
    }

    /// Before a suspend: note where the monotonic clock is.
    pub(crate) fn suspend() {
        let now = Instant::now();
        if BOOTED_AT.load(Ordering::Relaxed) == 0 {
            let booted = now.0.saturating_sub(since_boot().as_nanos() as u64).max(1);
            BOOTED_AT.store(booted, Ordering::Relaxed);
        }
        SUSPENDED_AT.store(now.0, Ordering::Relaxed);
    }

    /// After a suspend in a new domain: go on from where the clock stopped, so that
    /// neither the time saved nor another host's system time shows (as Linux does with
    /// `xen_sched_clock_offset`). Wall-clock time follows the new host's.
    pub(crate) fn resume(new_domain: bool) {
        if new_domain {
            let offset = SUSPENDED_AT
                .load(Ordering::Relaxed)
                .wrapping_sub(system_time_now());
            OFFSET.store(offset, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(secs: u64, nanos: u32) -> String {
        UtcTime { secs, nanos }.to_string()
    }

    #[test]
    fn formats_rfc3339_with_microseconds() {
        assert_eq!(utc(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(utc(951_782_400, 999_999_999), "2000-02-29T00:00:00.999999Z");
        assert_eq!(
            utc(1_798_082_568, 123_456_000),
            "2026-12-24T03:22:48.123456Z"
        );
        assert_eq!(utc(4_102_444_799, 0), "2099-12-31T23:59:59.000000Z");
    }

    #[test]
    fn civil_dates_round_the_leap_rules() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        // 1900 is not a leap year, 2000 is.
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(-25_508), (1900, 3, 1));
        assert_eq!(civil_from_days(-25_509), (1900, 2, 28));
    }

    #[test]
    fn wallclock_plus_system_time_carries_nanoseconds() {
        let t = UtcTime::from_wallclock(1_000, 900_000_000, 2_200_000_000);
        assert_eq!(
            t,
            UtcTime {
                secs: 1_003,
                nanos: 100_000_000
            }
        );
    }

    #[test]
    fn instants_saturate() {
        let a = Instant::from_nanos(5);
        let b = Instant::from_nanos(3_000_000_005);
        assert_eq!(b.saturating_duration_since(a), Duration::from_secs(3));
        assert_eq!(a.saturating_duration_since(b), Duration::ZERO);
        assert_eq!(b.saturating_add(Duration::MAX).as_nanos(), u64::MAX);
    }
}
