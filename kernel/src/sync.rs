//! Locking for a kernel that runs on one vCPU.

use core::ops::Deref;

/// A mutex for data that is not `Send` (futures, wakers of `!Send` tasks). Such data
/// may still sit in a `static`, because the kernel runs on a single vCPU and the event
/// upcall never touches it: no two contexts can ever use it at once. The inner lock
/// still catches re-entrant use (a deadlock instead of aliasing).
#[derive(Debug)]
pub struct VcpuMutex<T>(spin::Mutex<T>);

impl<T> VcpuMutex<T> {
    pub const fn new(value: T) -> Self {
        Self(spin::Mutex::new(value))
    }
}

// SAFETY: see the type's documentation: one vCPU, no access from the upcall, so the
// value is never shared between threads of execution.
unsafe impl<T> Sync for VcpuMutex<T> {}

impl<T> Deref for VcpuMutex<T> {
    type Target = spin::Mutex<T>;
    fn deref(&self) -> &spin::Mutex<T> {
        &self.0
    }
}
