//! When a port that fired is unmasked: at once if its event brought work; later if the
//! guest fires it without work again and again (Linux's "lateeoi", the fix of
//! XSA-332: each such event would otherwise cost dom0 a turn, as often as the guest
//! likes), or when the guest is over its rate. While a port is masked its events
//! coalesce into one, delivered when it is unmasked: nothing is lost.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// What handling an event found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Work,
    /// Nothing to do: a spurious event.
    Idle,
    /// The guest is over its rate until then.
    Throttled(Instant),
}

/// The longest an unmask is put off for spurious events.
pub const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// The ports with a run of spurious events, and the unmasks put off.
#[derive(Debug, Default)]
pub struct Eoi {
    spurious: HashMap<u32, u32>,
    deferred: BTreeSet<(Instant, u32)>,
}

impl Eoi {
    /// After `port`'s event was handled: `None` to unmask it now, or when to (the
    /// port is then given back by [`Eoi::due`]). The second spurious event in a row
    /// waits 1 ms, each next one twice as long, up to [`MAX_BACKOFF`].
    pub fn after(&mut self, port: u32, outcome: Outcome, now: Instant) -> Option<Instant> {
        let at = match outcome {
            Outcome::Work => {
                self.spurious.remove(&port);
                return None;
            }
            Outcome::Throttled(until) => until,
            Outcome::Idle => {
                let run = self.spurious.entry(port).or_default();
                *run = run.saturating_add(1);
                if *run < 2 {
                    return None;
                }
                let shift = (*run - 2).min(16);
                now + Duration::from_millis(1 << shift).min(MAX_BACKOFF)
            }
        };
        self.deferred.insert((at, port));
        Some(at)
    }

    /// The ports whose unmask is due at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<u32> {
        let mut due = Vec::new();
        while let Some(&(at, port)) = self.deferred.first() {
            if at > now {
                break;
            }
            self.deferred.pop_first();
            due.push(port);
        }
        due
    }

    /// When the next put-off unmask is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.deferred.first().map(|&(at, _)| at)
    }

    /// `port` is unbound: nothing more about it (its number may be given again).
    pub fn forget(&mut self, port: u32) {
        self.spurious.remove(&port);
        self.deferred.retain(|&(_, deferred)| deferred != port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spurious_events_back_off_and_work_resets() {
        let t0 = Instant::now();
        let mut eoi = Eoi::default();
        assert_eq!(eoi.after(5, Outcome::Idle, t0), None);
        let waits: Vec<_> = (0..12)
            .map(|_| eoi.after(5, Outcome::Idle, t0).unwrap() - t0)
            .collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(waits[..4], [ms(1), ms(2), ms(4), ms(8)]);
        assert_eq!(waits[11], MAX_BACKOFF);
        assert_eq!(eoi.next_due(), Some(t0 + ms(1)));
        assert_eq!(eoi.due(t0 + ms(4)).len(), 3);
        assert_eq!(eoi.after(5, Outcome::Work, t0), None);
        assert_eq!(eoi.after(5, Outcome::Idle, t0), None);
        // Other ports are not held back by this one.
        assert_eq!(eoi.after(6, Outcome::Idle, t0), None);
        eoi.forget(5);
        assert_eq!(eoi.next_due(), None);
    }

    #[test]
    fn a_throttled_port_waits_for_its_next_period() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_millis(100);
        let mut eoi = Eoi::default();
        assert_eq!(eoi.after(9, Outcome::Throttled(until), t0), Some(until));
        assert!(eoi.due(until - Duration::from_millis(1)).is_empty());
        assert_eq!(eoi.due(until), [9]);
    }
}
