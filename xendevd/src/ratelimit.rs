//! Rate limits: so much per period, what is over it refused and counted. A guest
//! decides how often its devices change state and how much its console writes; what
//! that costs dom0 (log lines, CPU) must not grow with it.

use std::time::{Duration, Instant};

/// `allowance` units per `period`, counted from the first unit taken in a period.
#[derive(Debug, Clone)]
pub struct Window {
    allowance: u64,
    period: Duration,
    start: Option<Instant>,
    used: u64,
    refused: u64,
}

impl Window {
    pub const fn new(allowance: u64, period: Duration) -> Self {
        Self {
            allowance,
            period,
            start: None,
            used: 0,
            refused: 0,
        }
    }

    /// Take up to `wanted` units at `now`: how many were granted (the rest is counted
    /// as refused).
    pub fn take(&mut self, now: Instant, wanted: u64) -> u64 {
        let granted = wanted.min(self.available(now));
        self.spend(granted);
        self.refused += wanted - granted;
        granted
    }

    /// How many units may be spent at `now`.
    pub fn available(&mut self, now: Instant) -> u64 {
        if self.start.is_none_or(|start| now >= start + self.period) {
            self.start = Some(now);
            self.used = 0;
        }
        self.allowance - self.used
    }

    /// Spend `n` units of what [`Window::available`] said.
    pub fn spend(&mut self, n: u64) {
        self.used = (self.used + n).min(self.allowance);
    }

    /// The units refused since the last call.
    pub fn take_refused(&mut self) -> u64 {
        std::mem::take(&mut self.refused)
    }

    /// While this period's allowance is spent: when the next period begins.
    pub fn spent_until(&self) -> Option<Instant> {
        self.start
            .filter(|_| self.used >= self.allowance)
            .map(|start| start + self.period)
    }
}

/// Log lines about one device (or guest): a few per minute, then a count of those
/// suppressed, said with the next line let through.
#[derive(Debug, Clone)]
pub struct LogLimit(Window);

impl Default for LogLimit {
    fn default() -> Self {
        Self(Window::new(LogLimit::LINES, LogLimit::PERIOD))
    }
}

impl LogLimit {
    pub const LINES: u64 = 10;
    pub const PERIOD: Duration = Duration::from_secs(60);

    /// Whether a line may be logged at `now`; if so, with how many were suppressed
    /// before it (to say first).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        (self.0.take(now, 1) == 1).then(|| self.0.take_refused())
    }

    /// Lines suppressed and not yet said (for a last word when the device goes).
    pub fn suppressed(&mut self) -> u64 {
        self.0.take_refused()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_grants_its_allowance_per_period() {
        let t0 = Instant::now();
        let mut window = Window::new(100, Duration::from_millis(10));
        assert_eq!(window.take(t0, 60), 60);
        assert_eq!(window.spent_until(), None);
        assert_eq!(window.take(t0, 60), 40);
        assert_eq!(window.spent_until(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(window.take(t0 + Duration::from_millis(9), 1), 0);
        assert_eq!(window.take_refused(), 21);
        assert_eq!(window.take_refused(), 0);
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(window.take(t1, 1000), 100);
        assert_eq!(window.take_refused(), 900);
    }

    #[test]
    fn log_lines_are_limited_and_the_rest_counted() {
        let t0 = Instant::now();
        let mut limit = LogLimit::default();
        let admitted = (0..1000)
            .filter(|&i| limit.admit(t0 + Duration::from_millis(i)).is_some())
            .count();
        assert_eq!(admitted, 10);
        // The next period's first line says how many were not.
        assert_eq!(limit.admit(t0 + LogLimit::PERIOD), Some(990));
        assert_eq!(limit.admit(t0 + LogLimit::PERIOD), Some(0));
        for _ in 0..20 {
            limit.admit(t0 + LogLimit::PERIOD);
        }
        assert_eq!(limit.suppressed(), 12);
    }
}
