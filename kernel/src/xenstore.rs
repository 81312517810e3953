//! Xenstore client over the ring page Xen describes in `start_info` (`store_mfn`,
//! `store_evtchn`).
//!
//! Requests are written to the ring as whole messages (queued when the ring is full)
//! and matched to replies by request id, so several tasks may have requests in flight.
//! Watch events arrive unrequested and are queued per watch. Everything read from the
//! ring goes through the wire decoder of [`xenproto::xenstore`], which rejects oversize
//! or unknown messages.
//!
//! Paths without a leading `/` are relative to this domain's home
//! (`/local/domain/<domid>`), which xenstored resolves.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicU32, Ordering};
use core::task::{Context, Poll, Waker};

use spin::Once;
use xenproto::byte_ring::RingCorrupt;
use xenproto::xenstore::{self as wire, Decoder, Message, MsgType, RingPage, WireError, XsError};

use crate::events::{EventChannel, Port};
use crate::sync::VcpuMutex;

/// A Xenstore operation that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// xenstored answered with an error.
    Xs(XsError),
    /// A message broke the wire format; the connection cannot be trusted.
    Wire(WireError),
    /// The ring indices are corrupt.
    Ring(RingCorrupt),
    /// This domain has no Xenstore (dom0 in our smoke tests).
    Unavailable,
    /// A reply of the wrong type for the request.
    UnexpectedReply(MsgType),
    /// xenstored did not answer in time before a suspend.
    Busy,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Xs(err) => write!(f, "xenstore: {err}"),
            Self::Wire(err) => write!(f, "xenstore: {err}"),
            Self::Ring(err) => write!(f, "xenstore: {err}"),
            Self::Unavailable => f.write_str("xenstore: not available in this domain"),
            Self::UnexpectedReply(t) => write!(f, "xenstore: unexpected reply {t:?}"),
            Self::Busy => f.write_str("xenstore: requests still unanswered after 5 s"),
        }
    }
}

impl From<XsError> for Error {
    fn from(err: XsError) -> Self {
        Self::Xs(err)
    }
}

pub type Result<T> = core::result::Result<T, Error>;

struct Pending {
    reply: Option<Message>,
    waker: Option<Waker>,
}

struct WatchQueue {
    /// What is watched: registered again after a restore.
    path: String,
    events: VecDeque<String>,
    waker: Option<Waker>,
}

struct State {
    next_req_id: u32,
    next_token: u32,
    decoder: Decoder,
    /// Bytes of requests not yet on the ring.
    outgoing: VecDeque<u8>,
    pending: BTreeMap<u32, Pending>,
    /// Requests sent whose reply has not come, abandoned ones included: a suspend
    /// waits for 0 (xenstored keeps no request across a restore).
    unanswered: usize,
    watches: BTreeMap<String, WatchQueue>,
    /// Set once the connection broke; every later request fails with it.
    broken: Option<Error>,
}

struct Client {
    page: &'static RingPage,
    /// Changes when a restore gives the domain a new connection.
    port: AtomicU32,
    state: VcpuMutex<State>,
}

static CLIENT: Once<Client> = Once::new();

/// Connect to the ring (domUs; dom0 has no Xenstore here).
pub(crate) fn init(
    store_mfn: u64,
    store_evtchn: u32,
) -> core::result::Result<(), arch::errno::Errno> {
    let va = arch::mm::va_of_pfn(arch::mm::mfn_to_pfn(store_mfn));
    // SAFETY: the Xenstore page lies in the bootstrap region, mapped read-write for the
    // guest's lifetime, shared with xenstored only.
    let page = unsafe { RingPage::from_page(va.as_mut_ptr()) };
    let port = adopt(store_evtchn)?;
    CLIENT.call_once(|| Client {
        page,
        port: AtomicU32::new(port),
        state: VcpuMutex::new(State {
            next_req_id: 1,
            next_token: 0,
            decoder: Decoder::new(),
            outgoing: VecDeque::new(),
            pending: BTreeMap::new(),
            unanswered: 0,
            watches: BTreeMap::new(),
            broken: None,
        }),
    });
    Ok(())
}

/// Take over the Xenstore port the toolstack bound, for good.
fn adopt(port: Port) -> core::result::Result<Port, arch::errno::Errno> {
    let channel = EventChannel::adopt(port)?;
    channel.set_handler(|_| pump());
    Ok(channel.into_port())
}

/// How long a suspend waits for xenstored to answer what was sent.
const QUIESCE_TIMEOUT: core::time::Duration = core::time::Duration::from_secs(5);

/// Before a suspend: wait until xenstored has answered every request (none may be
/// left in the ring or unanswered: a restored domain's new connection would never
/// answer them). Nothing else runs between this and the suspend itself.
pub(crate) async fn quiesce() -> Result<()> {
    let Ok(client) = client() else {
        return Ok(());
    };
    let deadline = crate::time::Instant::now().saturating_add(QUIESCE_TIMEOUT);
    loop {
        pump();
        {
            let state = client.state.lock();
            if let Some(err) = state.broken.clone() {
                return Err(err);
            }
            let drained = client.page.requests().is_drained().map_err(Error::Ring)?;
            if state.unanswered == 0 && state.outgoing.is_empty() && drained {
                return Ok(());
            }
        }
        if crate::time::Instant::now() >= deadline {
            return Err(Error::Busy);
        }
        crate::executor::after(core::time::Duration::from_millis(1)).await;
    }
}

/// After a suspend. In a new domain the connection is new: its port (from start_info),
/// a response ring emptied of what the old connection left, and every watch registered
/// again (each fires once, so watchers look again).
pub(crate) fn resume(new_domain: bool, port: Port) -> core::result::Result<(), arch::errno::Errno> {
    let Ok(client) = client() else {
        return Ok(());
    };
    if !new_domain {
        return Ok(());
    }
    client.port.store(adopt(port)?, Ordering::Relaxed);
    {
        let mut state = client.state.lock();
        state.decoder = Decoder::new();
        if let Err(err) = client.page.responses().discard() {
            state.broken = Some(Error::Ring(err));
        }
        let watches: Vec<(String, String)> = state
            .watches
            .iter()
            .map(|(token, queue)| (queue.path.clone(), token.clone()))
            .collect();
        for (path, token) in watches {
            queue_unawaited(
                &mut state,
                MsgType::Watch,
                &[path.as_bytes(), token.as_bytes()],
            );
        }
    }
    pump();
    Ok(())
}

/// Queue a request whose reply nobody waits for (it is dropped as abandoned).
fn queue_unawaited(state: &mut State, msg_type: MsgType, parts: &[&[u8]]) {
    let req_id = state.next_req_id;
    state.next_req_id = state.next_req_id.wrapping_add(1).max(1);
    let mut bytes = Vec::new();
    if wire::encode_request(msg_type, req_id, 0, parts, true, &mut bytes).is_ok() {
        state.outgoing.extend(bytes);
        state.unanswered += 1;
    }
}

/// Whether this domain talks to Xenstore (not as dom0, nor with NoXS).
pub fn is_available() -> bool {
    CLIENT.get().is_some()
}

fn client() -> Result<&'static Client> {
    CLIENT.get().ok_or(Error::Unavailable)
}

/// Move bytes between our queues and the ring, and route complete messages.
fn pump() {
    let Ok(client) = client() else { return };
    let mut state = client.state.lock();
    if state.broken.is_some() {
        return;
    }
    if let Err(err) = pump_locked(client, &mut state) {
        log::error!("{err}: Xenstore connection given up");
        state.broken = Some(err);
        for pending in state.pending.values_mut() {
            if let Some(waker) = pending.waker.take() {
                waker.wake();
            }
        }
    }
}

fn pump_locked(client: &Client, state: &mut State) -> Result<()> {
    let mut notify = false;
    // Requests out.
    let requests = client.page.requests();
    while !state.outgoing.is_empty() {
        let (front, _) = state.outgoing.as_slices();
        let written = requests.produce(front).map_err(Error::Ring)?;
        if written == 0 {
            break;
        }
        state.outgoing.drain(..written);
        notify = true;
    }
    // Replies and events in.
    let responses = client.page.responses();
    let mut buf = [0u8; 256];
    loop {
        let wanted = state.decoder.wanted().map_err(Error::Wire)?;
        let want = wanted.min(buf.len());
        let got = responses.consume(&mut buf[..want]).map_err(Error::Ring)?;
        if got == 0 {
            break;
        }
        notify = true;
        state.decoder.feed(&buf[..got]).map_err(Error::Wire)?;
        if let Some(message) = state.decoder.take().map_err(Error::Wire)? {
            route(state, message)?;
        }
    }
    if notify {
        let _ = arch::hypercall::evtchn_send(client.port.load(Ordering::Relaxed));
    }
    Ok(())
}

fn route(state: &mut State, message: Message) -> Result<()> {
    if message.header.msg_type == MsgType::WatchEvent {
        let (path, token) = wire::parse_watch_event(&message.payload).map_err(Error::Wire)?;
        // Events for a watch already dropped are ignored.
        if let Some(queue) = state.watches.get_mut(token) {
            queue.events.push_back(path.to_string());
            if let Some(waker) = queue.waker.take() {
                waker.wake();
            }
        }
        return Ok(());
    }
    state.unanswered = state.unanswered.saturating_sub(1);
    match state.pending.get_mut(&message.header.req_id) {
        Some(pending) => {
            if let Some(waker) = pending.waker.take() {
                waker.wake();
            }
            pending.reply = Some(message);
        }
        // The caller went away (a dropped watch's unwatch, a cancelled future):
        // nobody wants the reply.
        None => log::debug!(
            "xenstore: reply to abandoned request {}",
            message.header.req_id
        ),
    }
    Ok(())
}

/// Move what the ring holds, then the client's state, unless the connection broke.
fn pumped_state() -> Result<spin::MutexGuard<'static, State>> {
    pump();
    let state = client()?.state.lock();
    match state.broken.clone() {
        Some(err) => Err(err),
        None => Ok(state),
    }
}

/// A request in flight (its entry in `pending` goes when it is dropped).
struct Request {
    req_id: u32,
}

impl Future for Request {
    type Output = Result<Message>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = match pumped_state() {
            Ok(state) => state,
            Err(err) => return Poll::Ready(Err(err)),
        };
        let pending = state
            .pending
            .get_mut(&self.req_id)
            .expect("request registered");
        match pending.reply.take() {
            Some(reply) => {
                state.pending.remove(&self.req_id);
                Poll::Ready(Ok(reply))
            }
            None => {
                pending.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        // A request abandoned mid-way: its reply, when it comes, is dropped.
        if let Ok(client) = client() {
            client.state.lock().pending.remove(&self.req_id);
        }
    }
}

/// Send a request and wait for its reply; an `XS_ERROR` reply becomes `Err`.
async fn request(
    msg_type: MsgType,
    tx_id: u32,
    parts: &[&[u8]],
    last_nul: bool,
) -> Result<Message> {
    let client = client()?;
    let req_id = {
        let mut state = client.state.lock();
        if let Some(err) = state.broken.clone() {
            return Err(err);
        }
        let req_id = state.next_req_id;
        state.next_req_id = state.next_req_id.wrapping_add(1).max(1);
        let mut bytes = Vec::new();
        wire::encode_request(msg_type, req_id, tx_id, parts, last_nul, &mut bytes)
            .map_err(Error::Wire)?;
        state.outgoing.extend(bytes);
        state.unanswered += 1;
        state.pending.insert(
            req_id,
            Pending {
                reply: None,
                waker: None,
            },
        );
        req_id
    };
    let reply = Request { req_id }.await?;
    match reply.header.msg_type {
        MsgType::Error => Err(Error::Xs(XsError::from_payload(&reply.payload))),
        t if t == msg_type => Ok(reply),
        t => Err(Error::UnexpectedReply(t)),
    }
}

/// Xenstore operations, outside any transaction ([`Xs::NONE`]) or inside one.
#[derive(Debug, Clone, Copy)]
pub struct Xs {
    tx_id: u32,
}

impl Xs {
    /// Operations outside a transaction.
    pub const NONE: Self = Self { tx_id: 0 };

    /// The value at `path`.
    pub async fn read(&self, path: &str) -> Result<String> {
        let reply = request(MsgType::Read, self.tx_id, &[path.as_bytes()], true).await?;
        wire::parse_value(&reply.payload)
            .map(ToString::to_string)
            .map_err(Error::Wire)
    }

    /// The value at `path`, or `None` if there is no such node.
    pub async fn try_read(&self, path: &str) -> Result<Option<String>> {
        match self.read(path).await {
            Ok(value) => Ok(Some(value)),
            Err(Error::Xs(XsError::Enoent)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Write `value` at `path`, creating the node and its parents.
    pub async fn write(&self, path: &str, value: &str) -> Result<()> {
        request(
            MsgType::Write,
            self.tx_id,
            &[path.as_bytes(), value.as_bytes()],
            false,
        )
        .await
        .map(drop)
    }

    /// The names of the children of `path`.
    pub async fn directory(&self, path: &str) -> Result<Vec<String>> {
        let reply = request(MsgType::Directory, self.tx_id, &[path.as_bytes()], true).await?;
        let names = wire::parse_directory(&reply.payload).map_err(Error::Wire)?;
        Ok(names.into_iter().map(ToString::to_string).collect())
    }

    /// Create a node (and its parents) without a value.
    pub async fn mkdir(&self, path: &str) -> Result<()> {
        request(MsgType::Mkdir, self.tx_id, &[path.as_bytes()], true)
            .await
            .map(drop)
    }

    /// Remove a node and everything below it.
    pub async fn rm(&self, path: &str) -> Result<()> {
        request(MsgType::Rm, self.tx_id, &[path.as_bytes()], true)
            .await
            .map(drop)
    }
}

/// Run `body` in a transaction, starting over while xenstored reports a conflict
/// (`EAGAIN` at commit). An error from `body` aborts the transaction.
pub async fn transaction<T>(mut body: impl AsyncFnMut(&Xs) -> Result<T>) -> Result<T> {
    loop {
        let reply = request(MsgType::TransactionStart, 0, &[b""], true).await?;
        let tx = Xs {
            tx_id: wire::parse_transaction_id(&reply.payload).map_err(Error::Wire)?,
        };
        let outcome = body(&tx).await;
        let commit = outcome.is_ok();
        let end = request(
            MsgType::TransactionEnd,
            tx.tx_id,
            &[if commit { b"T" } else { b"F" }],
            true,
        )
        .await;
        match (outcome, end) {
            (Ok(value), Ok(_)) => return Ok(value),
            (Ok(_), Err(Error::Xs(XsError::Eagain))) => continue,
            (Ok(_), Err(err)) => return Err(err),
            (Err(err), _) => return Err(err),
        }
    }
}

/// A watch on a path and everything below it; removed when dropped.
#[derive(Debug)]
pub struct Watch {
    path: String,
    token: String,
}

impl Watch {
    /// Watch `path`. xenstored fires the watch once at once.
    pub async fn new(path: &str) -> Result<Self> {
        let client = client()?;
        let token = {
            let mut state = client.state.lock();
            let token = format!("w{}", state.next_token);
            state.next_token += 1;
            state.watches.insert(
                token.clone(),
                WatchQueue {
                    path: path.to_string(),
                    events: VecDeque::new(),
                    waker: None,
                },
            );
            token
        };
        let watch = Self {
            path: path.to_string(),
            token,
        };
        request(
            MsgType::Watch,
            0,
            &[path.as_bytes(), watch.token.as_bytes()],
            true,
        )
        .await?;
        Ok(watch)
    }

    /// The next path that changed.
    pub async fn next(&self) -> Result<String> {
        core::future::poll_fn(|cx| {
            let mut state = match pumped_state() {
                Ok(state) => state,
                Err(err) => return Poll::Ready(Err(err)),
            };
            let queue = state
                .watches
                .get_mut(&self.token)
                .expect("watch registered");
            match queue.events.pop_front() {
                Some(path) => Poll::Ready(Ok(path)),
                None => {
                    queue.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let Ok(client) = client() else { return };
        let mut state = client.state.lock();
        state.watches.remove(&self.token);
        // Unwatch without waiting for the reply (which is then dropped as unknown).
        let parts: [&[u8]; 2] = [self.path.as_bytes(), self.token.as_bytes()];
        queue_unawaited(&mut state, MsgType::Unwatch, &parts);
        drop(state);
        pump();
    }
}

/// Wait until the node at `path` satisfies `done` (given its value, `None` if it does
/// not exist), and return that value.
pub async fn wait_for(path: &str, done: impl Fn(Option<&str>) -> bool) -> Result<Option<String>> {
    let watch = Watch::new(path).await?;
    loop {
        let value = Xs::NONE.try_read(path).await?;
        if done(value.as_deref()) {
            return Ok(value);
        }
        watch.next().await?;
    }
}
