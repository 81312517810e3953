//! A small single-vCPU async executor, and timers.
//!
//! **Why an executor and not threads.** Drivers and apps wait for two things only: an
//! event channel firing and a deadline passing. Futures express both without stacks
//! per thread or a preemptive scheduler, and smoltcp's poll loop fits in one task.
//! Apps may still be written as straight-line code: [`block_on`] runs the executor
//! until one future completes, and blocking calls such as [`sleep`] are `block_on` of a
//! future, so background tasks keep running while the caller waits.
//!
//! **Time.** The executor keeps the timers: [`after`], [`sleep`] and [`timeout`] wait
//! on the clock of [`crate::time`], which knows nothing of them.
//!
//! **How waiting works.** Events stay masked (`evtchn_upcall_mask = 1`) all the time,
//! except inside `SCHEDOP_block`, which unmasks atomically with its check for pending
//! events. When no task is ready, the executor arms Xen's one-shot timer for the
//! earliest deadline and blocks. An event or the timer wakes the vCPU; the upcall (or
//! the loop itself) moves pending ports to [`crate::events`], whose dispatch wakes the
//! waiting tasks. Nothing busy-polls, and no code ever runs in interrupt context
//! except the upcall's few atomic operations.
//!
//! [`spawn`] starts a background task. A task that is being polled is taken out of the
//! task table, so a blocking call inside a task (a nested [`block_on`]) runs the other
//! tasks and never re-enters the caller.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::future::Future;
use core::task::{Poll, Waker};

use crate::time::Instant;

/// Pending timers, ordered by deadline.
#[derive(Debug, Default)]
pub struct TimerQueue {
    entries: BTreeMap<(Instant, u64), Waker>,
    next_id: u64,
}

/// Identifies one armed timer.
pub type TimerKey = (Instant, u64);

impl TimerQueue {
    pub const fn new() -> Self {
        Self {
            entries: BTreeMap::new(),
            next_id: 0,
        }
    }

    /// Arm a timer that wakes `waker` at `deadline`.
    pub fn insert(&mut self, deadline: Instant, waker: Waker) -> TimerKey {
        let key = (deadline, self.next_id);
        self.next_id += 1;
        self.entries.insert(key, waker);
        key
    }

    /// Replace the waker of a timer that is still armed.
    pub fn update(&mut self, key: TimerKey, waker: &Waker) {
        if let Some(old) = self.entries.get_mut(&key)
            && !old.will_wake(waker)
        {
            old.clone_from(waker);
        }
    }

    /// Disarm a timer (no-op if it already fired).
    pub fn remove(&mut self, key: TimerKey) {
        self.entries.remove(&key);
    }

    /// Take the wakers of every timer due at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Waker> {
        let later = self.entries.split_off(&(now, u64::MAX));
        let due = core::mem::replace(&mut self.entries, later);
        due.into_values().collect()
    }

    /// The earliest deadline, if any timer is armed.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.keys().next().map(|&(deadline, _)| deadline)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Which of two futures finished first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Wait for whichever of `a` and `b` completes first (`a` is polled first); the other
/// is dropped.
pub async fn select<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let (mut a, mut b) = (core::pin::pin!(a), core::pin::pin!(b));
    core::future::poll_fn(|cx| {
        if let Poll::Ready(output) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(output));
        }
        b.as_mut().poll(cx).map(Either::Right)
    })
    .await
}

#[cfg(target_os = "none")]
pub use guest::*;

#[cfg(target_os = "none")]
mod guest {
    use alloc::boxed::Box;
    use alloc::collections::VecDeque;
    use alloc::sync::Arc;
    use alloc::task::Wake;
    use core::pin::Pin;
    use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use core::task::Context;
    use core::time::Duration;

    use spin::Mutex;

    use super::*;
    use crate::sync::VcpuMutex;

    type Task = Pin<Box<dyn Future<Output = ()>>>;

    static TIMERS: Mutex<TimerQueue> = Mutex::new(TimerQueue::new());
    static TASKS: VcpuMutex<BTreeMap<u64, Task>> = VcpuMutex::new(BTreeMap::new());
    static READY: Mutex<VecDeque<u64>> = Mutex::new(VecDeque::new());
    static NEXT_TASK: AtomicU64 = AtomicU64::new(0);

    /// Wakes a task by queueing it once.
    struct TaskWaker {
        id: u64,
        queued: AtomicBool,
        /// Its queue entry was taken while the task was out being polled.
        deferred: AtomicBool,
    }

    impl Wake for TaskWaker {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            if !self.queued.swap(true, Ordering::AcqRel) {
                READY.lock().push_back(self.id);
            }
        }
    }

    /// Wakes a [`block_on`] caller: just a flag its loop checks.
    struct FlagWaker(AtomicBool);

    impl Wake for FlagWaker {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Release);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.store(true, Ordering::Release);
        }
    }

    /// Start `future` as a background task.
    pub fn spawn(future: impl Future<Output = ()> + 'static) {
        let id = NEXT_TASK.fetch_add(1, Ordering::Relaxed);
        TASKS.lock().insert(id, Box::pin(future));
        READY.lock().push_back(id);
    }

    /// The wakers of background tasks live here, so a task keeps one waker.
    static WAKERS: Mutex<BTreeMap<u64, Arc<TaskWaker>>> = Mutex::new(BTreeMap::new());

    /// Poll once every background task that is ready now. A task woken meanwhile (one
    /// that yields, or is woken by another) waits for the next round, after events and
    /// timers have been dispatched: else a task that keeps yielding (the network stack
    /// under a stream of frames) would keep every other waiting on an event from
    /// running — a power request, a Xenstore watch.
    fn run_ready_tasks() {
        let round = READY.lock().len();
        for _ in 0..round {
            let Some(id) = READY.lock().pop_front() else {
                return;
            };
            // Taken out while polled: a nested block_on cannot re-enter it.
            let Some(mut task) = TASKS.lock().remove(&id) else {
                // Being polled further up the stack: let that poll requeue it.
                if let Some(waker) = WAKERS.lock().get(&id) {
                    waker.deferred.store(true, Ordering::Release);
                }
                continue;
            };
            let waker = WAKERS
                .lock()
                .entry(id)
                .or_insert_with(|| {
                    Arc::new(TaskWaker {
                        id,
                        queued: AtomicBool::new(true),
                        deferred: AtomicBool::new(false),
                    })
                })
                .clone();
            waker.queued.store(false, Ordering::Release);
            let waker_flag = waker.clone();
            let waker = Waker::from(waker);
            if task
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
            {
                WAKERS.lock().remove(&id);
                continue;
            }
            TASKS.lock().insert(id, task);
            if waker_flag.deferred.swap(false, Ordering::AcqRel) {
                READY.lock().push_back(id);
            }
        }
    }

    /// Run the executor until `future` completes, and return its output.
    pub fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = core::pin::pin!(future);
        let flag = Arc::new(FlagWaker(AtomicBool::new(true)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        loop {
            if flag.0.swap(false, Ordering::AcqRel)
                && let Poll::Ready(output) = future.as_mut().poll(&mut cx)
            {
                return output;
            }
            run_ready_tasks();
            if flag.0.load(Ordering::Acquire) {
                continue;
            }
            crate::events::poll_pending();
            let woke_events = crate::events::dispatch();
            let woke_timers = fire_timers();
            if woke_events
                || woke_timers
                || !READY.lock().is_empty()
                || flag.0.load(Ordering::Acquire)
            {
                continue;
            }
            crate::events::block_until(TIMERS.lock().next_deadline());
        }
    }

    /// Wake every timer that is due. Returns whether any was.
    fn fire_timers() -> bool {
        let due = TIMERS.lock().expire(Instant::now());
        let any = !due.is_empty();
        for waker in due {
            waker.wake();
        }
        any
    }

    /// A future that completes at a deadline.
    #[derive(Debug)]
    pub struct Sleep {
        deadline: Instant,
        key: Option<TimerKey>,
    }

    impl Sleep {
        /// Completes once the monotonic clock reaches `deadline`.
        pub fn until(deadline: Instant) -> Self {
            Self {
                deadline,
                key: None,
            }
        }
    }

    impl Future for Sleep {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if Instant::now() >= self.deadline {
                if let Some(key) = self.key.take() {
                    TIMERS.lock().remove(key);
                }
                return Poll::Ready(());
            }
            match self.key {
                Some(key) => TIMERS.lock().update(key, cx.waker()),
                None => self.key = Some(TIMERS.lock().insert(self.deadline, cx.waker().clone())),
            }
            Poll::Pending
        }
    }

    impl Drop for Sleep {
        fn drop(&mut self) {
            if let Some(key) = self.key.take() {
                TIMERS.lock().remove(key);
            }
        }
    }

    /// Block the caller for `duration`, running other tasks meanwhile.
    pub fn sleep(duration: Duration) {
        block_on(after(duration));
    }

    /// A future that completes `duration` from now.
    pub fn after(duration: Duration) -> Sleep {
        Sleep::until(Instant::now().saturating_add(duration))
    }

    /// `future` did not complete in time.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Elapsed;

    /// Run `future` for at most `duration`.
    pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
        match select(future, after(duration)).await {
            Either::Left(output) => Ok(output),
            Either::Right(()) => Err(Elapsed),
        }
    }

    /// Let other ready tasks run once before continuing.
    pub async fn yield_now() {
        let mut yielded = false;
        core::future::poll_fn(|cx| {
            if yielded {
                Poll::Ready(())
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use alloc::sync::Arc;
    use alloc::task::Wake;
    use core::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Counter(AtomicUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counter() -> (Arc<Counter>, Waker) {
        let c = Arc::new(Counter(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    fn at(ns: u64) -> Instant {
        Instant::from_nanos(ns)
    }

    #[test]
    fn timers_fire_in_deadline_order_and_only_when_due() {
        let mut q = TimerQueue::new();
        let (c, w) = counter();
        q.insert(at(300), w.clone());
        q.insert(at(100), w.clone());
        q.insert(at(100), w.clone());
        q.insert(at(200), w);
        assert_eq!(q.next_deadline(), Some(at(100)));
        assert!(q.expire(at(99)).is_empty());
        let due = q.expire(at(100));
        assert_eq!(due.len(), 2);
        due.into_iter().for_each(Waker::wake);
        assert_eq!(c.0.load(Ordering::Relaxed), 2);
        assert_eq!(q.next_deadline(), Some(at(200)));
        assert_eq!(q.expire(at(1000)).len(), 2);
        assert!(q.is_empty());
    }

    #[test]
    fn select_takes_the_first_ready_future() {
        let poll_once = |future: core::pin::Pin<&mut dyn Future<Output = Either<u8, u16>>>| {
            let (_, waker) = counter();
            future.poll(&mut core::task::Context::from_waker(&waker))
        };
        let both_ready = core::pin::pin!(select(async { 1u8 }, async { 2u16 }));
        assert_eq!(poll_once(both_ready), Poll::Ready(Either::Left(1)));
        let right_only = core::pin::pin!(select(core::future::pending::<u8>(), async { 2u16 }));
        assert_eq!(poll_once(right_only), Poll::Ready(Either::Right(2)));
        let neither = core::pin::pin!(select(
            core::future::pending::<u8>(),
            core::future::pending::<u16>()
        ));
        assert_eq!(poll_once(neither), Poll::Pending);
    }

    #[test]
    fn removed_timers_never_fire_and_updates_replace_the_waker() {
        let mut q = TimerQueue::new();
        let (first, w1) = counter();
        let (second, w2) = counter();
        let a = q.insert(at(10), w1.clone());
        let b = q.insert(at(20), w1);
        q.remove(a);
        q.remove(a);
        q.update(b, &w2);
        q.expire(at(50)).into_iter().for_each(Waker::wake);
        assert_eq!(first.0.load(Ordering::Relaxed), 0);
        assert_eq!(second.0.load(Ordering::Relaxed), 1);
        assert_eq!(q.len(), 0);
        assert_eq!(q.next_deadline(), None);
    }
}
