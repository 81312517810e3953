//! kvstore: an in-memory key-value server speaking a subset of Redis's protocol (RESP2)
//! on TCP port 6379, so that `redis-cli` and Redis client libraries talk to it. The
//! protocol, the commands and the snapshot format are `kvstore-core`
//! (`apps/kvstore/core`, tested on the host); this is the loop of sockets and disk
//! requests around them.
//!
//! Arguments: `ip=ADDR/PREFIX gw=GATEWAY` (else DHCP), `port=N` (default 6379).
//!
//! Commands: PING, ECHO, SET (NX, XX, GET), GET, DEL, EXISTS, INCR, DECR, INCRBY,
//! DECRBY, APPEND, STRLEN, DBSIZE, FLUSHALL, SAVE, SELECT 0, COMMAND, HELLO 2, INFO
//! (Redis's field names where Redis has the field: `used_memory`, `maxmemory`,
//! `connected_clients`, …; `connection_buffers` is the pool below), QUIT;
//! requests as RESP arrays or inline lines, pipelined, from any number of clients at
//! once (a task each).
//!
//! Memory is bounded, whatever clients send:
//! - a key, value or argument is at most 512 KiB and a request at most about 1 MiB
//!   (`kvstore_core::resp::MAX_BULK`, `MAX_REQUEST`); a client announcing more gets
//!   `-ERR Protocol error: …` and is disconnected, before the bytes arrive;
//! - the data may take half of the heap (`OOM` errors beyond, as Redis's `maxmemory`);
//! - the buffers of all connections together may take a quarter of it: a client whose
//!   request or reply does not fit gets an error and is disconnected;
//! - the rest is for the network stack, the disk and `SAVE`'s chunks.
//!
//! Persistence: with a disk (the first vbd, found as blkcheck finds its disk) kvstore
//! loads the snapshot on it at boot and `SAVE` writes one there (blocking other clients
//! meanwhile, as Redis's SAVE does). A blank disk, or one without a valid snapshot,
//! means an empty start, with a console line saying why. Without a disk, `SAVE` answers
//! an error saying there is none.
//!
//! It runs until the toolstack asks it to power off or reboot.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::future::poll_fn;
use core::task::{Poll, Waker};
use core::time::Duration;

use blkfront::{BlockDevice, SECTOR_SIZE};
use kernel::executor::{Either, block_on, select, spawn, timeout};
use kernel::println;
use kernel::shutdown::ShutdownReason;
use kernel::time::{Instant, since_boot};
use kvstore_core::buffers::{Buffer, BufferError, Pool};
use kvstore_core::resp::{self, Reply};
use kvstore_core::snapshot::{self, Header, Reader, SnapshotError, Writer};
use kvstore_core::store::{InfoSection, Outcome, Session, Store, info_text};
use net::{TcpListener, TcpStream};
use sysctl::{PowerControl, PowerRequest};

kernel::main!(main);

/// Redis's port.
const DEFAULT_PORT: u16 = 6379;
/// Listening sockets kept ready: this many clients can connect at the same instant.
const BACKLOG: usize = 64;
/// Bytes taken from a socket at a time.
const READ_CHUNK: usize = 4096;
/// Replies are sent once this many bytes wait (and when no whole request is left).
const SEND_AT: usize = 16 * 1024;
/// How long a departing client has to take its last reply and the close.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes per disk request when saving and loading.
const DISK_CHUNK: usize = 64 * 1024;

fn main(args: kernel::Args) -> Result<ShutdownReason, String> {
    let port: u16 = match args.value("port") {
        Some(text) => text
            .parse()
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| format!("port={text}: not a port number (1 to 65535)"))?,
        None => DEFAULT_PORT,
    };
    let heap = kernel::mem::heap_bytes() as usize;
    block_on(async {
        let disk = BlockDevice::probe_all().await.into_iter().next();
        let store = match &disk {
            Some(disk) => load(disk, heap / 2).await,
            None => {
                println!("kvstore: no disk: starting empty; SAVE will be refused");
                Store::new(heap / 2)
            }
        };
        let info = net::start(&args)
            .await
            .map_err(|err| format!("network: {err}"))?;
        let power = PowerControl::start()
            .await
            .map_err(|err| format!("power control: {err}"))?;
        let mut listener =
            TcpListener::bind(port, BACKLOG).map_err(|err| format!("tcp port {port}: {err}"))?;
        let boot = since_boot();
        println!(
            "kvstore: listening on {}:{port}, {} keys, {} KiB for data, {} KiB for connections, {} ms after boot",
            info.address.address(),
            store.len(),
            store.budget() >> 10,
            (heap / 4) >> 10,
            boot.as_millis()
        );
        let server = Rc::new(Server {
            store: RefCell::new(store),
            disk,
            saving: Gate::default(),
            buffers: Pool::new(heap / 4),
            clients: Cell::new(0),
            connected: Cell::new(0),
            port,
        });
        let request = serve_until_stopped(&server, &mut listener, &power).await?;
        println!("kvstore: shutting down ({request})");
        drop(listener);
        Ok(request.shutdown_reason())
    })
}

/// What every connection shares.
#[derive(Debug)]
struct Server {
    store: RefCell<Store>,
    disk: Option<BlockDevice>,
    /// Closed while `SAVE` writes: the store is read across disk requests then, and
    /// no command may change it.
    saving: Gate,
    buffers: Pool,
    /// Connections accepted so far (each one's `HELLO` id).
    clients: Cell<u64>,
    /// Connections open now.
    connected: Cell<usize>,
    port: u16,
}

async fn serve_until_stopped(
    server: &Rc<Server>,
    listener: &mut TcpListener,
    power: &PowerControl,
) -> Result<PowerRequest, String> {
    loop {
        match select(power.next(), listener.accept()).await {
            Either::Left(Ok(request)) => return Ok(request),
            Either::Left(Err(err)) => return Err(format!("power control: {err}")),
            Either::Right(stream) => {
                let id = server.clients.get() + 1;
                server.clients.set(id);
                spawn(serve(server.clone(), stream, Session { id }));
            }
        }
    }
}

/// A gate tasks wait at while it is closed.
#[derive(Debug, Default)]
struct Gate {
    closed: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Gate {
    async fn pass(&self) {
        poll_fn(|cx| {
            if self.closed.get() {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }

    /// Close the gate until the guard is dropped.
    fn close(&self) -> GateGuard<'_> {
        self.closed.set(true);
        GateGuard(self)
    }
}

struct GateGuard<'a>(&'a Gate);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.0.closed.set(false);
        for waker in self.0.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

/// Why a connection ends early.
enum Ending {
    /// The client closed its side: close ours.
    Closed,
    /// The connection broke.
    Gone,
    /// Send this error (its code first) and close.
    Error(String),
}

impl From<BufferError> for Ending {
    fn from(err: BufferError) -> Self {
        Self::Error(format!("ERR kvstore: {err}: connection dropped"))
    }
}

async fn serve(server: Rc<Server>, mut stream: TcpStream, session: Session) {
    server.connected.set(server.connected.get() + 1);
    let peer = stream.peer();
    let mut input = Buffer::new(&server.buffers);
    let mut output = Buffer::new(&server.buffers);
    let ending = converse(&server, &mut stream, session, &mut input, &mut output).await;
    drop(input);
    // The error's few bytes are the one thing written outside the pool.
    let mut error = Vec::new();
    let last_words = match ending {
        Ok(()) => Some(output.bytes.as_slice()),
        Err(Ending::Closed) => Some(&[][..]),
        Err(Ending::Gone) => None,
        Err(Ending::Error(text)) => {
            log::debug!("kvstore: client {peer:?}: {text}");
            Reply::Error(text).encode(&mut error);
            Some(error.as_slice())
        }
    };
    // A client that takes neither its last reply nor the close does not keep the task.
    if let Some(last_words) = last_words {
        let goodbye = async {
            if stream.write_all(last_words).await.is_ok() {
                stream.close().await;
            }
        };
        let _ = timeout(GOODBYE_TIMEOUT, goodbye).await;
    }
    drop(output);
    server.connected.set(server.connected.get() - 1);
}

/// Serve one client until it quits (`Ok`: the output holds the last reply) or must go.
async fn converse(
    server: &Server,
    stream: &mut TcpStream,
    session: Session,
    input: &mut Buffer<'_>,
    output: &mut Buffer<'_>,
) -> Result<(), Ending> {
    // The read buffer too comes out of the pool: a connection costs at least this.
    let mut chunk = Buffer::new(input.pool());
    chunk.reserve(READ_CHUNK)?;
    chunk.bytes.resize(READ_CHUNK, 0);
    loop {
        let mut taken = 0;
        loop {
            let (args, used) = match resp::parse(&input.bytes[taken..]) {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(err) => {
                    send(stream, output).await?;
                    return Err(Ending::Error(format!("ERR {err}")));
                }
            };
            taken += used;
            if args.is_empty() {
                continue;
            }
            server.saving.pass().await;
            let argv: Vec<&[u8]> = args.iter().map(|arg| arg.as_ref()).collect();
            match execute(server, &session, &argv, output)? {
                Next::Replied => {}
                Next::Quit => {
                    let reply = Reply::Simple("OK");
                    output.reserve(reply.encoded_len())?;
                    reply.encode(&mut output.bytes);
                    return Ok(());
                }
                Next::Save => {
                    let reply = save_command(server).await;
                    output.reserve(reply.encoded_len())?;
                    reply.encode(&mut output.bytes);
                }
            }
            if output.bytes.len() >= SEND_AT {
                send(stream, output).await?;
            }
        }
        // Only now: the requests above borrowed from the input.
        input.bytes.drain(..taken);
        send(stream, output).await?;
        input.shrink();
        output.shrink();
        let read = stream
            .read(&mut chunk.bytes)
            .await
            .map_err(|_| Ending::Gone)?;
        if read == 0 {
            return Err(Ending::Closed);
        }
        input.reserve(read)?;
        input.bytes.extend_from_slice(&chunk.bytes[..read]);
    }
}

/// What a request leaves to the connection's loop.
enum Next {
    /// Its reply is in the output.
    Replied,
    Quit,
    Save,
}

/// Run one request on the store and put its reply into `output` (into memory the pool
/// allowed, or not at all). Not async: the store is borrowed only here.
fn execute(
    server: &Server,
    session: &Session,
    argv: &[&[u8]],
    output: &mut Buffer<'_>,
) -> Result<Next, BufferError> {
    let mut store = server.store.borrow_mut();
    match store.execute(session, argv) {
        Outcome::Reply(reply) => {
            output.reserve(reply.encoded_len())?;
            reply.encode(&mut output.bytes);
            Ok(Next::Replied)
        }
        Outcome::Quit => Ok(Next::Quit),
        Outcome::Save => Ok(Next::Save),
        Outcome::Info(requested) => {
            // Copied: the names borrow from the store's borrow of the request.
            let requested: Vec<Vec<u8>> = requested.into_iter().map(<[u8]>::to_vec).collect();
            let names: Vec<&[u8]> = requested.iter().map(Vec::as_slice).collect();
            let text = info_text(&names, &info_sections(server, &store));
            let reply = Reply::Bulk(text.into());
            output.reserve(reply.encoded_len())?;
            reply.encode(&mut output.bytes);
            Ok(Next::Replied)
        }
    }
}

/// What `INFO` reports: Redis's field names where Redis has the field.
fn info_sections(server: &Server, store: &Store) -> [InfoSection; 5] {
    let number = |n: usize| format!("{n}");
    [
        (
            "Server",
            vec![
                ("kvstore_version", String::from(env!("CARGO_PKG_VERSION"))),
                ("uptime_in_seconds", format!("{}", since_boot().as_secs())),
                ("tcp_port", format!("{}", server.port)),
            ],
        ),
        (
            "Clients",
            vec![
                ("connected_clients", number(server.connected.get())),
                (
                    "total_connections_received",
                    format!("{}", server.clients.get()),
                ),
            ],
        ),
        (
            "Memory",
            vec![
                ("used_memory", number(store.used())),
                ("maxmemory", number(store.budget())),
                ("connection_buffers", number(server.buffers.used())),
                ("connection_buffers_limit", number(server.buffers.limit())),
            ],
        ),
        (
            "Persistence",
            vec![(
                "disk",
                server
                    .disk
                    .as_ref()
                    .map_or(String::from("none"), BlockDevice::name),
            )],
        ),
        (
            "Keyspace",
            if store.is_empty() {
                Vec::new()
            } else {
                vec![("db0", format!("keys={},expires=0,avg_ttl=0", store.len()))]
            },
        ),
    ]
}

async fn send(stream: &mut TcpStream, output: &mut Buffer<'_>) -> Result<(), Ending> {
    if !output.bytes.is_empty() {
        stream
            .write_all(&output.bytes)
            .await
            .map_err(|_| Ending::Gone)?;
        output.bytes.clear();
    }
    Ok(())
}

/// `SAVE`: write a snapshot to the disk, with the other clients held at the gate.
#[expect(
    clippy::await_holding_refcell_ref,
    reason = "the gate is closed while the store is read: no client borrows it mutably until it opens"
)]
async fn save_command(server: &Server) -> Reply<'static> {
    let Some(disk) = &server.disk else {
        return Reply::Error(String::from(
            "ERR no disk to save to: this kvstore was started without a disk (give the guest a vbd)",
        ));
    };
    server.saving.pass().await;
    let _closed = server.saving.close();
    let store = server.store.borrow();
    let started = Instant::now();
    match save(disk, &store).await {
        Ok(bytes) => {
            println!(
                "kvstore: saved {} keys ({bytes} bytes) to disk {} in {} ms",
                store.len(),
                disk.name(),
                started.elapsed().as_millis()
            );
            Reply::Simple("OK")
        }
        Err(why) => {
            println!("kvstore: SAVE failed: {why}");
            Reply::Error(format!("ERR SAVE failed: {why}"))
        }
    }
}

/// Write `store`'s snapshot: the payload from sector 1, then the header in sector 0.
/// The payload's bytes.
async fn save(disk: &BlockDevice, store: &Store) -> Result<u64, String> {
    let name = disk.name();
    let info = disk.info();
    if info.readonly {
        return Err(format!("disk {name} is read-only"));
    }
    let bytes: u64 = store
        .entries()
        .map(|(key, value)| snapshot::entry_len(key, value))
        .sum();
    let room = info.bytes().saturating_sub(SECTOR_SIZE as u64);
    if bytes > room {
        return Err(format!(
            "the snapshot takes {bytes} bytes, disk {name} has room for {room}"
        ));
    }
    let mut writer = Writer::new();
    let mut sector = 1;
    for (key, value) in store.entries() {
        writer.push(key, value);
        while let Some(chunk) = writer.take_chunk(DISK_CHUNK) {
            write(disk, sector, &chunk).await?;
            sector += (chunk.len() / SECTOR_SIZE) as u64;
        }
    }
    let (tail, header) = writer.finish();
    if !tail.is_empty() {
        write(disk, sector, &tail).await?;
    }
    disk.flush()
        .await
        .map_err(|err| format!("flushing disk {name}: {err}"))?;
    write(disk, 0, &header.encode()).await?;
    disk.flush()
        .await
        .map_err(|err| format!("flushing disk {name}: {err}"))?;
    Ok(header.payload_len)
}

async fn write(disk: &BlockDevice, sector: u64, bytes: &[u8]) -> Result<(), String> {
    disk.write(sector, bytes)
        .await
        .map_err(|err| format!("writing disk {} at sector {sector}: {err}", disk.name()))
}

/// The store the disk's snapshot holds; an empty one (saying why) if it holds none.
async fn load(disk: &BlockDevice, budget: usize) -> Store {
    let name = disk.name();
    let started = Instant::now();
    match read_snapshot(disk, budget).await {
        Ok(store) => {
            println!(
                "kvstore: loaded {} keys ({} bytes) from disk {name} in {} ms",
                store.len(),
                store.used(),
                started.elapsed().as_millis()
            );
            store
        }
        Err(Unloaded::Blank) => {
            println!("kvstore: disk {name} is blank: starting empty");
            Store::new(budget)
        }
        Err(Unloaded::Invalid(why)) => {
            println!("kvstore: disk {name} holds no valid snapshot ({why}): starting empty");
            Store::new(budget)
        }
    }
}

enum Unloaded {
    Blank,
    Invalid(String),
}

impl From<SnapshotError> for Unloaded {
    fn from(err: SnapshotError) -> Self {
        match err {
            SnapshotError::Blank => Self::Blank,
            other => Self::Invalid(format!("{other}")),
        }
    }
}

async fn read_snapshot(disk: &BlockDevice, budget: usize) -> Result<Store, Unloaded> {
    let read = async |sector: u64, buf: &mut [u8]| {
        disk.read(sector, buf)
            .await
            .map_err(|err| Unloaded::Invalid(format!("reading sector {sector}: {err}")))
    };
    let mut first = [0u8; snapshot::SECTOR];
    read(0, &mut first).await?;
    let header = Header::decode(&first, disk.info().bytes())?;
    let mut reader = Reader::new(header);
    let mut store = Store::new(budget);
    let mut chunk = vec![0u8; DISK_CHUNK];
    let mut sector = 1;
    while reader.remaining() > 0 {
        let bytes = (reader.remaining() as usize)
            .min(DISK_CHUNK)
            .next_multiple_of(SECTOR_SIZE);
        read(sector, &mut chunk[..bytes]).await?;
        sector += (bytes / SECTOR_SIZE) as u64;
        for (key, value) in reader.feed(&chunk[..bytes])? {
            store.insert(key, value).map_err(|_| {
                Unloaded::Invalid(format!(
                    "it holds more than the {budget} bytes of memory for data"
                ))
            })?;
        }
    }
    reader.finish()?;
    Ok(store)
}
