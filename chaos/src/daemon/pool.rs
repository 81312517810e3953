//! The daemon's pools: per [`PoolSpec`], the shells ready to become guests and those
//! whose devices are still coming up, refilled one shell at a time between requests
//! ([`Pools::step`]). A pool whose shells cannot be made waits before it tries again,
//! longer after each failure ([`backoff`]), and says why in the status.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::host::Host;
use crate::shape::{PoolSpec, Shape};

use super::records::Records;
use super::shell::{self, Shell};
use super::wire::PoolStatus;

/// How often a warming shell's devices are looked at.
const WARM_POLL: Duration = Duration::from_millis(50);
/// The longest a pool waits before it tries again to make a shell.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How long a pool waits after `failures` failures in a row (1 s, 2 s, 4 s, … 60 s).
pub fn backoff(failures: u32) -> Duration {
    let doubled = Duration::from_secs(1).saturating_mul(1 << failures.saturating_sub(1).min(6));
    doubled.min(MAX_BACKOFF)
}

/// A shell whose devices are not up yet.
#[derive(Debug)]
struct Warming<'h> {
    shell: Shell<'h>,
    since: Instant,
    next_look: Instant,
}

/// One pool.
#[derive(Debug)]
struct Pool<'h> {
    spec: PoolSpec,
    ready: VecDeque<Shell<'h>>,
    warming: Vec<Warming<'h>>,
    /// Failures in a row, the last one's reason, and when to try again.
    failures: u32,
    problem: Option<String>,
    retry_at: Option<Instant>,
}

impl Pool<'_> {
    /// Shells it lacks.
    fn missing(&self) -> usize {
        self.spec
            .size
            .saturating_sub(self.ready.len() + self.warming.len())
    }

    /// Whether it needs a shell made: it lacks one, or with `urgent_only` it has none.
    fn lacks(&self, urgent_only: bool) -> bool {
        if urgent_only {
            self.spec.size > 0 && self.ready.is_empty() && self.warming.is_empty()
        } else {
            self.missing() > 0
        }
    }

    fn failed(&mut self, why: String, now: Instant) {
        self.failures += 1;
        let wait = backoff(self.failures);
        eprintln!(
            "chaos daemon: pool {}: {why}; trying again in {} s",
            self.spec,
            wait.as_secs()
        );
        self.problem = Some(why);
        self.retry_at = Some(now + wait);
    }
}

/// Every pool.
#[derive(Debug)]
pub struct Pools<'h> {
    pools: Vec<Pool<'h>>,
    /// How long a shell's devices may take to come up.
    device_timeout: Duration,
}

impl<'h> Pools<'h> {
    pub fn new(specs: &[PoolSpec], device_timeout: Duration) -> Self {
        Self {
            pools: specs
                .iter()
                .map(|spec| Pool {
                    spec: spec.clone(),
                    ready: VecDeque::new(),
                    warming: Vec::new(),
                    failures: 0,
                    problem: None,
                    retry_at: None,
                })
                .collect(),
            device_timeout,
        }
    }

    /// Whether a shell of `shape` is ready.
    pub fn has(&self, shape: &Shape) -> bool {
        self.pools
            .iter()
            .any(|pool| pool.spec.shape == *shape && !pool.ready.is_empty())
    }

    /// The oldest ready shell of `shape`, if there is one.
    pub fn take(&mut self, shape: &Shape) -> Option<Shell<'h>> {
        self.pools
            .iter_mut()
            .filter(|pool| pool.spec.shape == *shape)
            .find_map(|pool| pool.ready.pop_front())
    }

    /// Put back a shell [`Self::take`] gave, untouched, as the next to be taken.
    pub fn give_back(&mut self, shell: Shell<'h>) {
        if let Some(pool) = self
            .pools
            .iter_mut()
            .find(|pool| pool.spec.shape == shell.shape)
        {
            pool.ready.push_front(shell);
        }
    }

    /// When there is refill work to do (now, or later), if any; with `urgent_only`,
    /// only for pools with no shell ready or warming.
    pub fn next_work(&self, now: Instant, urgent_only: bool) -> Option<Instant> {
        self.pools
            .iter()
            .flat_map(|pool| {
                let make = pool
                    .lacks(urgent_only)
                    .then(|| pool.retry_at.unwrap_or(now));
                pool.warming.iter().map(|w| w.next_look).chain(make)
            })
            .min()
    }

    /// One piece of refill work, if one is due: look at the warming shells due for a
    /// look, else make one shell for the first pool that lacks one (with
    /// `urgent_only`, that has none ready or warming).
    pub fn step(&mut self, host: &'h Host, records: &Records, urgent_only: bool) {
        let now = Instant::now();
        let device_timeout = self.device_timeout;
        for pool in &mut self.pools {
            let mut index = 0;
            let mut looked = false;
            while index < pool.warming.len() {
                if pool.warming[index].next_look > now {
                    index += 1;
                    continue;
                }
                looked = true;
                let warming = &mut pool.warming[index];
                match warming.shell.ready(host) {
                    Ok(true) => {
                        let warming = pool.warming.remove(index);
                        eprintln!(
                            "chaos daemon: shell {} ready ({}) after {:.0} ms",
                            warming.shell.domid,
                            pool.spec.shape,
                            (warming.shell.took + warming.since.elapsed()).as_secs_f64() * 1e3
                        );
                        pool.ready.push_back(warming.shell);
                        pool.failures = 0;
                        pool.problem = None;
                    }
                    Ok(false) if warming.since.elapsed() < device_timeout => {
                        warming.next_look = now + WARM_POLL;
                        index += 1;
                    }
                    outcome => {
                        let warming = pool.warming.remove(index);
                        let domid = warming.shell.domid;
                        let why = match outcome {
                            Err(err) => format!("shell {domid}'s devices failed: {err}"),
                            _ => format!(
                                "shell {domid}'s devices were not up within {} s",
                                device_timeout.as_secs()
                            ),
                        };
                        if let Err(err) = warming.shell.destroy(host, records) {
                            eprintln!("chaos daemon: destroying shell {domid}: {err}");
                        }
                        pool.failed(why, now);
                    }
                }
            }
            if looked {
                return;
            }
        }
        let Some(pool) = self
            .pools
            .iter_mut()
            .find(|pool| pool.lacks(urgent_only) && pool.retry_at.is_none_or(|at| at <= now))
        else {
            return;
        };
        match shell::make(host, &pool.spec.shape, records) {
            Ok(shell) => {
                let took = shell.took;
                let domid = shell.domid;
                pool.retry_at = None;
                match shell.ready(host) {
                    Ok(true) => {
                        eprintln!(
                            "chaos daemon: shell {domid} ready ({}) after {:.0} ms",
                            pool.spec.shape,
                            took.as_secs_f64() * 1e3
                        );
                        pool.ready.push_back(shell);
                        pool.failures = 0;
                        pool.problem = None;
                    }
                    _ => pool.warming.push(Warming {
                        shell,
                        since: Instant::now(),
                        next_look: Instant::now() + WARM_POLL,
                    }),
                }
            }
            Err(err) => pool.failed(format!("cannot make a shell: {err}"), now),
        }
    }

    /// The pools as `status` shows them.
    pub fn status(&self) -> Vec<PoolStatus> {
        self.pools
            .iter()
            .map(|pool| PoolStatus {
                pool: pool.spec.to_string(),
                ready: pool.ready.iter().map(|shell| shell.domid).collect(),
                warming: pool.warming.iter().map(|w| w.shell.domid).collect(),
                problem: pool.problem.clone(),
            })
            .collect()
    }

    /// Destroy every shell (the daemon stops): how many went.
    pub fn destroy_all(&mut self, host: &Host, records: &Records) -> usize {
        let mut destroyed = 0;
        for pool in &mut self.pools {
            let shells = pool
                .ready
                .drain(..)
                .chain(pool.warming.drain(..).map(|w| w.shell));
            for shell in shells {
                let domid = shell.domid;
                match shell.destroy(host, records) {
                    Ok(()) => destroyed += 1,
                    Err(err) => eprintln!("chaos daemon: destroying shell {domid}: {err}"),
                }
            }
        }
        destroyed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn work_is_due_for_pools_that_lack_shells() {
        let spec = |text: &str| text.parse::<PoolSpec>().unwrap();
        let mut pools = Pools::new(
            &[spec("memory=4,size=1"), spec("memory=8,method=noxs,size=2")],
            Duration::from_secs(20),
        );
        let now = Instant::now();
        assert_eq!(pools.next_work(now, false), Some(now), "empty pools: now");
        assert_eq!(
            pools.next_work(now, true),
            Some(now),
            "empty pools are urgent"
        );
        let later = now + Duration::from_secs(3);
        for pool in &mut pools.pools {
            pool.retry_at = Some(later);
        }
        assert_eq!(pools.next_work(now, false), Some(later), "both waiting");
        pools.pools[1].retry_at = None;
        assert_eq!(pools.next_work(now, false), Some(now));
        let shape = spec("memory=8,method=noxs").shape;
        assert!(!pools.has(&shape));
        assert!(pools.take(&shape).is_none());
        assert_eq!(
            pools.status()[1].pool,
            "method=noxs,memory=8,vcpus=1,size=2"
        );
    }
}
