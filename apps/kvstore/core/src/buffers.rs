//! The connections' buffers and the one budget they share.
//!
//! Each client has an input and an output buffer (and a read chunk); their capacities
//! are charged to a [`Pool`] with a fixed limit, so that many clients, or a few
//! hoarding unfinished requests, cannot take the guest's memory: a buffer that would
//! take the pool over its limit is refused ([`BufferError::PoolFull`]) and the client
//! is dropped. The heap's own refusal (`try_reserve`) is an error too, not an abort.

use alloc::vec::Vec;
use core::cell::Cell;
use core::fmt;

use crate::resp::MAX_REQUEST;

/// A buffer grows by doubling, but never beyond this unless a single reservation asks
/// for more: a whole request and one more read.
pub const GROWTH_CAP: usize = MAX_REQUEST + 4096;
/// A buffer larger than this is shrunk back to it once (nearly) empty: an idle client
/// keeps little memory.
pub const KEEP_CAPACITY: usize = 16 * 1024;

/// The bytes all connection buffers may take together.
#[derive(Debug)]
pub struct Pool {
    limit: usize,
    used: Cell<usize>,
}

impl Pool {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: Cell::new(0),
        }
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Why a buffer could not grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferError {
    /// The pool would go over its limit (bytes charged now, and the limit).
    PoolFull { used: usize, limit: usize },
    /// The heap refused.
    OutOfMemory,
}

impl fmt::Display for BufferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PoolFull { used, limit } => write!(
                f,
                "the buffers of all connections are full ({} of {} KiB)",
                used >> 10,
                limit >> 10
            ),
            Self::OutOfMemory => f.write_str("out of memory"),
        }
    }
}

/// A byte buffer whose capacity is charged to a [`Pool`]. Grow it only through
/// [`Buffer::reserve`]; what it was charged is remembered, so that even growth that
/// bypassed `reserve` is given back exactly when it is dropped.
#[derive(Debug)]
pub struct Buffer<'a> {
    pool: &'a Pool,
    pub bytes: Vec<u8>,
    /// What the pool was last charged for this buffer: its capacity then.
    charged: usize,
}

impl<'a> Buffer<'a> {
    pub fn new(pool: &'a Pool) -> Self {
        Self {
            pool,
            bytes: Vec::new(),
            charged: 0,
        }
    }

    /// The pool this buffer is charged to.
    pub fn pool(&self) -> &'a Pool {
        self.pool
    }

    /// Charge the pool for the buffer's capacity now.
    fn recharge(&mut self) {
        let capacity = self.bytes.capacity();
        self.pool
            .used
            .set(self.pool.used.get() - self.charged + capacity);
        self.charged = capacity;
    }

    /// Make room for `extra` more bytes, if the pool and the heap allow.
    pub fn reserve(&mut self, extra: usize) -> Result<(), BufferError> {
        let needed = self.bytes.len() + extra;
        let before = self.bytes.capacity();
        if needed <= before {
            return Ok(());
        }
        let capacity = needed.max((before * 2).min(GROWTH_CAP));
        let others = self.pool.used.get() - self.charged;
        if others + capacity > self.pool.limit {
            return Err(BufferError::PoolFull {
                used: self.pool.used.get(),
                limit: self.pool.limit,
            });
        }
        self.bytes
            .try_reserve_exact(capacity - self.bytes.len())
            .map_err(|_| BufferError::OutOfMemory)?;
        self.recharge();
        Ok(())
    }

    /// Give memory back once the buffer is (nearly) drained.
    pub fn shrink(&mut self) {
        if self.bytes.capacity() > KEEP_CAPACITY && self.bytes.len() <= KEEP_CAPACITY / 2 {
            self.bytes.shrink_to(KEEP_CAPACITY);
            self.recharge();
        }
    }
}

impl Drop for Buffer<'_> {
    fn drop(&mut self) {
        self.pool.used.set(self.pool.used.get() - self.charged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_counts_capacities_and_refuses_beyond_its_limit() {
        let pool = Pool::new(100 * 1024);
        let mut a = Buffer::new(&pool);
        let mut b = Buffer::new(&pool);
        a.reserve(60 * 1024).unwrap();
        assert_eq!(pool.used(), a.bytes.capacity());
        assert_eq!(
            b.reserve(50 * 1024),
            Err(BufferError::PoolFull {
                used: 60 * 1024,
                limit: 100 * 1024
            })
        );
        assert_eq!(b.bytes.capacity(), 0, "nothing allocated for a refusal");
        b.reserve(40 * 1024).unwrap();
        assert_eq!(pool.used(), 100 * 1024);
        drop(a);
        assert_eq!(pool.used(), 40 * 1024);
        drop(b);
        assert_eq!(pool.used(), 0);
        assert_eq!(
            BufferError::PoolFull {
                used: 60 * 1024,
                limit: 100 * 1024
            }
            .to_string(),
            "the buffers of all connections are full (60 of 100 KiB)"
        );
    }

    #[test]
    fn growth_doubles_up_to_the_cap() {
        let pool = Pool::new(usize::MAX / 2);
        let mut buffer = Buffer::new(&pool);
        buffer.reserve(1000).unwrap();
        buffer.bytes.resize(1000, 0);
        buffer.reserve(1).unwrap();
        assert_eq!(buffer.bytes.capacity(), 2000);
        buffer.bytes.resize(GROWTH_CAP - 10, 0);
        buffer.reserve(5).unwrap();
        buffer.bytes.resize(GROWTH_CAP - 5, 0);
        buffer.reserve(10).unwrap();
        assert_eq!(
            buffer.bytes.capacity(),
            GROWTH_CAP + 5,
            "no doubling past the cap"
        );
        assert_eq!(pool.used(), buffer.bytes.capacity());
    }

    #[test]
    fn growth_that_bypassed_reserve_is_given_back_exactly() {
        let pool = Pool::new(1 << 20);
        let mut other = Buffer::new(&pool);
        other.reserve(100).unwrap();
        let charged = pool.used();
        {
            let mut buffer = Buffer::new(&pool);
            buffer.reserve(10).unwrap();
            // A reply written without reserve (what QUIT and error replies once did).
            buffer.bytes.extend_from_slice(&[0; 5000]);
            assert!(buffer.bytes.capacity() >= 5000);
        }
        assert_eq!(pool.used(), charged, "the pool did not drift");
        let mut buffer = Buffer::new(&pool);
        buffer.bytes.extend_from_slice(&[0; 5000]);
        buffer.reserve(1).unwrap();
        assert_eq!(pool.used(), charged + buffer.bytes.capacity(), "recharged");
    }

    #[test]
    fn drained_buffers_shrink() {
        let pool = Pool::new(1 << 30);
        let mut buffer = Buffer::new(&pool);
        buffer.reserve(512 * 1024).unwrap();
        buffer.bytes.resize(100, 0);
        buffer.shrink();
        assert_eq!(buffer.bytes.capacity(), KEEP_CAPACITY);
        assert_eq!(pool.used(), KEEP_CAPACITY);
        buffer.bytes.resize(KEEP_CAPACITY, 0);
        buffer.shrink();
        assert_eq!(pool.used(), KEEP_CAPACITY);
    }
}
