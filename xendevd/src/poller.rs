//! The daemon's readiness set: one epoll instance in which each descriptor is
//! registered once, with a [`Token`] that says what it is, and changed only when what
//! it waits for changes. A loop turn then costs what happened, not how many
//! descriptors there are: `poll` over a set rebuilt each turn cost 30 µs a turn with
//! 1000 idle pipes on the build host (`epoll_wait` 0.26 µs), and TCG multiplies that.
//!
//! Shared (`Rc`) by the daemon, which waits, and the NoXS back ends, which add and
//! take out their taps as vifs connect and disconnect.
//!
//! Level-triggered: a descriptor that stays ready is reported again next turn, so a
//! handler may stop at its budget and leave the rest for later. A descriptor that must
//! not wake the loop for a while (a connection waiting on a power request, a tap whose
//! vif is not connected) is taken out of the set, not left in with no events: epoll
//! reports hang-ups and errors whatever the events asked.

use std::cell::RefCell;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// What a registered descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// The signal fd (SIGTERM, SIGINT).
    Signal,
    /// The kernel's uevent socket.
    Uevent,
    /// The API's listening socket.
    Listen,
    /// The NoXS back ends' event-channel fd (every port).
    Evtchn,
    /// Xenstore's watch, when domain deaths come that way.
    Watch,
    /// The tap of a connected vif: device `index` of NoXS domain `domid`.
    Tap { domid: u32, index: u32 },
    /// An API connection, by its number.
    Connection(u64),
    /// The NoXS vbd workers' mailbox.
    Workers,
}

/// The token's kind in the top byte of epoll's 64-bit datum; the rest its fields.
const KIND_SHIFT: u32 = 56;
const FIELDS: u64 = (1 << KIND_SHIFT) - 1;

impl Token {
    /// Epoll's datum for this token. Domain ids are below 2^16 and device indices
    /// below 64 (a NoXS block's entries), connection numbers below 2^56: each fits.
    pub fn encode(self) -> u64 {
        let (kind, fields) = match self {
            Self::Signal => (0, 0),
            Self::Uevent => (1, 0),
            Self::Listen => (2, 0),
            Self::Evtchn => (3, 0),
            Self::Watch => (4, 0),
            Self::Tap { domid, index } => (5, (u64::from(domid) << 32) | u64::from(index)),
            Self::Connection(number) => (6, number),
            Self::Workers => (7, 0),
        };
        debug_assert!(fields <= FIELDS, "{self:?} does not fit a token");
        (kind << KIND_SHIFT) | (fields & FIELDS)
    }

    /// The token of a datum [`Token::encode`] made.
    pub fn decode(datum: u64) -> Option<Self> {
        let fields = datum & FIELDS;
        Some(match datum >> KIND_SHIFT {
            0 => Self::Signal,
            1 => Self::Uevent,
            2 => Self::Listen,
            3 => Self::Evtchn,
            4 => Self::Watch,
            5 => Self::Tap {
                domid: u32::try_from(fields >> 32).ok()?,
                index: u32::try_from(fields & u64::from(u32::MAX)).ok()?,
            },
            6 => Self::Connection(fields),
            7 => Self::Workers,
            _ => return None,
        })
    }
}

/// What a descriptor waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
}

impl Interest {
    pub const READ: Self = Self {
        read: true,
        write: false,
    };

    fn flags(self) -> EpollFlags {
        let mut flags = EpollFlags::empty();
        if self.read {
            flags |= EpollFlags::EPOLLIN;
        }
        if self.write {
            flags |= EpollFlags::EPOLLOUT;
        }
        flags
    }
}

/// What the kernel said about a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub token: Token,
    pub readable: bool,
    pub writable: bool,
    /// Hung up or in error: a read says what happened.
    pub hangup: bool,
}

impl Ready {
    /// Input, or an end that a read reports.
    pub fn input(&self) -> bool {
        self.readable || self.hangup
    }
}

/// At most this many ready descriptors are taken per turn; the rest stay ready for
/// the next (level-triggered).
const EVENTS_PER_TURN: usize = 256;

/// The epoll set.
#[derive(Debug)]
pub struct Poller {
    epoll: Epoll,
    /// `epoll_wait`'s buffer, kept between turns.
    events: RefCell<Vec<EpollEvent>>,
}

impl Poller {
    pub fn new() -> nix::Result<Self> {
        Ok(Self {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            events: RefCell::new(vec![EpollEvent::empty(); EVENTS_PER_TURN]),
        })
    }

    /// Watch `fd` for `interest`, reported as `token`.
    pub fn add(&self, fd: BorrowedFd<'_>, token: Token, interest: Interest) -> nix::Result<()> {
        self.epoll
            .add(fd, EpollEvent::new(interest.flags(), token.encode()))
    }

    /// Watch `fd` (registered already) for `interest` instead.
    pub fn modify(&self, fd: BorrowedFd<'_>, token: Token, interest: Interest) -> nix::Result<()> {
        self.epoll
            .modify(fd, &mut EpollEvent::new(interest.flags(), token.encode()))
    }

    /// Stop watching `fd` (before it closes, or while it must not wake the loop).
    pub fn delete(&self, fd: BorrowedFd<'_>) -> nix::Result<()> {
        self.epoll.delete(fd)
    }

    /// Wait at most `timeout` (`None`: until something happens) for ready descriptors.
    pub fn wait(&self, timeout: Option<Duration>) -> nix::Result<Vec<Ready>> {
        let timeout = match timeout {
            None => EpollTimeout::NONE,
            Some(wait) => EpollTimeout::try_from(wait).unwrap_or(EpollTimeout::MAX),
        };
        let mut events = self.events.borrow_mut();
        let count = match self.epoll.wait(&mut events, timeout) {
            Ok(count) => count,
            Err(Errno::EINTR) => 0,
            Err(errno) => return Err(errno),
        };
        Ok(events[..count]
            .iter()
            .filter_map(|event| {
                let flags = event.events();
                Some(Ready {
                    token: Token::decode(event.data())?,
                    readable: flags.contains(EpollFlags::EPOLLIN),
                    writable: flags.contains(EpollFlags::EPOLLOUT),
                    hangup: flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn tokens_round_trip() {
        for token in [
            Token::Signal,
            Token::Uevent,
            Token::Listen,
            Token::Evtchn,
            Token::Watch,
            Token::Tap {
                domid: 0x7fef,
                index: 63,
            },
            Token::Tap { domid: 1, index: 0 },
            Token::Connection(0),
            Token::Connection(FIELDS),
            Token::Workers,
        ] {
            assert_eq!(Token::decode(token.encode()), Some(token), "{token:?}");
        }
        assert_eq!(Token::decode(8 << KIND_SHIFT), None);
        assert_eq!(Token::decode(u64::MAX), None);
    }

    /// A real epoll set over pipes: only what is ready comes back, by its token, and
    /// a descriptor taken out stays quiet.
    #[test]
    fn only_the_ready_come_back() {
        let poller = Poller::new().unwrap();
        let pipes: Vec<_> = (0..50).map(|_| nix::unistd::pipe().unwrap()).collect();
        for (index, (read, _)) in (0u32..).zip(&pipes) {
            let token = Token::Tap { domid: 7, index };
            poller.add(read.as_fd(), token, Interest::READ).unwrap();
        }
        assert!(poller.wait(Some(Duration::ZERO)).unwrap().is_empty());
        nix::unistd::write(&pipes[42].1, b"x").unwrap();
        let ready = poller.wait(Some(Duration::ZERO)).unwrap();
        assert_eq!(
            ready,
            [Ready {
                token: Token::Tap {
                    domid: 7,
                    index: 42
                },
                readable: true,
                writable: false,
                hangup: false,
            }]
        );
        // Level-triggered: still there until read.
        assert_eq!(poller.wait(Some(Duration::ZERO)).unwrap().len(), 1);
        poller.delete(pipes[42].0.as_fd()).unwrap();
        assert!(poller.wait(Some(Duration::ZERO)).unwrap().is_empty());
        // A write end: writable when asked for.
        let (_, write) = &pipes[3];
        poller
            .add(write.as_fd(), Token::Connection(9), Interest::default())
            .unwrap();
        assert!(poller.wait(Some(Duration::ZERO)).unwrap().is_empty());
        let writing = Interest {
            read: false,
            write: true,
        };
        poller
            .modify(write.as_fd(), Token::Connection(9), writing)
            .unwrap();
        let ready = poller.wait(Some(Duration::ZERO)).unwrap();
        assert_eq!(ready.len(), 1);
        assert!(ready[0].writable && ready[0].token == Token::Connection(9));
    }
}
