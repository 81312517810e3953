//! Power control: the toolstack's requests to power off, reboot, suspend or crash.
//!
//! The requests arrive through Xenstore's `control/shutdown` node ([`xenbus`]) or
//! through the NoXS sysctl device's control page ([`noxs`]); each is acknowledged
//! before the app sees it.
//!
//! An app either awaits requests itself ([`PowerControl::next`]), for example to
//! close its connections first, registers a handler ([`spawn_with`]), or calls
//! [`spawn_default`]: power off or reboot at once.
//!
//! Suspend requests (saving, checkpointing or migrating the domain) never reach the
//! app: the driver suspends the domain ([`kernel::suspend`]) and, once it runs again,
//! waits for the next request. Suspend is advertised: `control/feature-suspend`
//! through Xenstore, bit 3 of the NoXS sysctl's `supported`.

#![cfg_attr(target_os = "none", no_std)]

#[cfg(target_os = "none")]
extern crate alloc;

use core::fmt;

#[cfg(target_os = "none")]
pub use guest::*;
#[cfg(target_os = "none")]
pub mod noxs;
#[cfg(target_os = "none")]
pub mod xenbus;

/// What the toolstack asks the app for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerRequest {
    Poweroff,
    Reboot,
    /// NoXS only: the toolstack asks the guest to crash (e.g. to get a dump).
    Crash,
}

/// What the toolstack asks for: the app's requests, and suspend, which the driver
/// handles itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Power(PowerRequest),
    Suspend,
}

impl Request {
    /// The request a `control/shutdown` value carries (`halt` is Linux's synonym for
    /// poweroff).
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "poweroff" | "halt" => Some(Self::Power(PowerRequest::Poweroff)),
            "reboot" => Some(Self::Power(PowerRequest::Reboot)),
            "suspend" => Some(Self::Suspend),
            _ => None,
        }
    }
}

impl fmt::Display for PowerRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Poweroff => "poweroff",
            Self::Reboot => "reboot",
            Self::Crash => "crash",
        })
    }
}

#[cfg(target_os = "none")]
mod guest {
    use alloc::collections::VecDeque;
    use alloc::rc::Rc;
    use core::cell::{Cell, RefCell};
    use core::fmt;
    use core::future::poll_fn;
    use core::task::{Poll, Waker};

    use kernel::devices::{self, Discovery, Method};
    use kernel::noxs::ControlError;
    use kernel::shutdown::{self, ShutdownReason};
    use kernel::suspend::Resumed;
    use kernel::xenstore;

    use super::{PowerRequest, Request};
    use crate::{noxs, xenbus};

    impl PowerRequest {
        /// How the domain should end for this request.
        pub fn shutdown_reason(self) -> ShutdownReason {
            match self {
                Self::Poweroff => ShutdownReason::Poweroff,
                Self::Reboot => ShutdownReason::Reboot,
                Self::Crash => ShutdownReason::Crash,
            }
        }
    }

    /// Power control is not available, or broke.
    #[derive(Debug)]
    pub enum Error {
        /// No Xenstore and no NoXS sysctl device (e.g. as dom0).
        Unavailable,
        Xenstore(xenstore::Error),
        Control(ControlError),
    }

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Self::Unavailable => {
                    f.write_str("no power control device (no Xenstore, no NoXS sysctl)")
                }
                Self::Xenstore(err) => write!(f, "{err}"),
                Self::Control(err) => write!(f, "{err}"),
            }
        }
    }

    impl From<xenstore::Error> for Error {
        fn from(err: xenstore::Error) -> Self {
            match err {
                xenstore::Error::Unavailable => Self::Unavailable,
                other => Self::Xenstore(other),
            }
        }
    }

    impl From<ControlError> for Error {
        fn from(err: ControlError) -> Self {
            Self::Control(err)
        }
    }

    /// Power requests, as they come: from Xenstore's `control/shutdown`, or from the
    /// NoXS sysctl control page. A task of its own takes them (and suspends when asked)
    /// and queues the app's: [`Self::next`] may be dropped at any point (in a `select`
    /// with the app's clients) without losing a request or a suspend half done.
    #[derive(Debug)]
    pub struct PowerControl {
        queue: Rc<Queue>,
    }

    /// The app's requests the task took, not yet returned by [`PowerControl::next`];
    /// `Err` ends the queue.
    #[derive(Default)]
    struct Queue {
        requests: RefCell<VecDeque<Result<PowerRequest, Error>>>,
        waker: Cell<Option<Waker>>,
    }

    impl fmt::Debug for Queue {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Queue")
                .field("requests", &self.requests.borrow().len())
                .finish_non_exhaustive()
        }
    }

    impl Queue {
        fn push(&self, request: Result<PowerRequest, Error>) {
            self.requests.borrow_mut().push_back(request);
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
    }

    #[derive(Debug)]
    enum Source {
        Xenstore(xenbus::Requests),
        Noxs(noxs::Requests),
    }

    impl PowerControl {
        /// Connect to the toolstack's power requests: the NoXS sysctl device when the
        /// guest has one, else Xenstore (advertising what we handle).
        pub async fn start() -> Result<Self, Error> {
            let devices = devices::list("sysctl").await?;
            let source = match (devices.first().map(|d| &d.method), devices::discovery()) {
                (Some(Method::Noxs(entry)), _) => {
                    Source::Noxs(noxs::Requests::connect(entry).await?)
                }
                (_, Discovery::Xenstore) => Source::Xenstore(xenbus::Requests::start().await?),
                _ => return Err(Error::Unavailable),
            };
            let queue = Rc::new(Queue::default());
            kernel::executor::spawn(take_requests(source, queue.clone()));
            Ok(Self { queue })
        }

        /// The next request for the app, acknowledged. With Xenstore, unknown values
        /// are acknowledged and skipped. Suspend requests never come here: the domain
        /// suspends (and perhaps runs on another host) meanwhile. Cancel-safe.
        pub async fn next(&self) -> Result<PowerRequest, Error> {
            poll_fn(|cx| match self.queue.requests.borrow_mut().pop_front() {
                Some(request) => Poll::Ready(request),
                None => {
                    self.queue.waker.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            })
            .await
        }
    }

    /// The task behind a [`PowerControl`]: take each request, suspend when asked, queue
    /// the others for the app; the first error ends it (and is queued).
    async fn take_requests(source: Source, queue: Rc<Queue>) {
        let outcome: Result<(), Error> = async {
            loop {
                let request = match &source {
                    Source::Xenstore(requests) => requests.next().await?,
                    Source::Noxs(requests) => requests.next().await?,
                };
                match request {
                    Request::Power(request) => queue.push(Ok(request)),
                    Request::Suspend => suspend(&source).await?,
                }
            }
        }
        .await;
        if let Err(err) = outcome {
            queue.push(Err(err));
        }
    }

    /// Suspend the domain, as the toolstack asked; a failure is logged (the toolstack
    /// sees the domain did not suspend) and the domain runs on.
    async fn suspend(source: &Source) -> Result<(), Error> {
        log::info!("sysctl: suspending");
        match kernel::suspend::suspend().await {
            Ok(Resumed::SameDomain) => log::info!("sysctl: resumed in the same domain"),
            Ok(Resumed::NewDomain) => {
                // A new domain's Xenstore has none of what we wrote; a NoXS sysctl
                // connects again when its re-offer comes.
                if let Source::Xenstore(requests) = source {
                    requests.advertise().await?;
                }
            }
            Err(err) => log::error!("sysctl: suspend failed, running on: {err}"),
        }
        Ok(())
    }

    /// Answer power requests in the background with `handler`. Without a way to
    /// receive them (as dom0) there is nothing to answer.
    pub fn spawn_with(mut handler: impl FnMut(PowerRequest) + 'static) {
        kernel::executor::spawn(async move {
            let control = match PowerControl::start().await {
                Ok(control) => control,
                Err(Error::Unavailable) => return,
                Err(err) => {
                    log::error!("sysctl: {err}");
                    return;
                }
            };
            loop {
                match control.next().await {
                    Ok(request) => handler(request),
                    Err(err) => {
                        log::error!("sysctl: {err}");
                        return;
                    }
                }
            }
        });
    }

    /// Answer power requests in the background as [`act_on`] does.
    pub fn spawn_default() {
        spawn_with(act_on);
    }

    /// What [`spawn_default`] does with a request.
    pub fn act_on(request: PowerRequest) {
        log::info!("sysctl: {request} requested");
        shutdown::exit(request.shutdown_reason());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_as_linux_reads_them() {
        let power = |request| Some(Request::Power(request));
        assert_eq!(Request::parse("poweroff"), power(PowerRequest::Poweroff));
        assert_eq!(Request::parse("halt"), power(PowerRequest::Poweroff));
        assert_eq!(Request::parse("reboot\n"), power(PowerRequest::Reboot));
        assert_eq!(Request::parse("suspend"), Some(Request::Suspend));
        assert_eq!(Request::parse(""), None);
        assert_eq!(Request::parse("crash"), None);
        assert_eq!(PowerRequest::Reboot.to_string(), "reboot");
    }
}
