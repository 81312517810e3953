//! `chaos migrate` and `chaos receive`: a guest of either device method moved live to
//! another host's chaos receiver over TCP (`shared/reference/save-restore.md`, point
//! 11).
//!
//! The connection carries what a save file holds ([`crate::savefile`]: header with no
//! stream length, configuration, libxc's stream, sent with `XCFLAGS_LIVE`: memory is
//! copied while the guest runs, then it is suspended for the last dirty pages), then a
//! handshake, one line each way, so that the guest never runs on both hosts and is not
//! lost on either:
//!
//! 1. receiver, once the guest is restored (paused, under `NAME--incoming`, its devices
//!    ready): `ready` — or `error MESSAGE`, having destroyed what it made;
//! 2. sender: renames the source `NAME--migratedaway`, answers `go`;
//! 3. receiver: renames its domain `NAME`, unpauses it (a NoXS guest's devices are
//!    offered again once it runs, as after `chaos restore`), answers `done`;
//! 4. sender: destroys the source.
//!
//! The two names are xl's (`xl migrate`), and let a guest migrate to the same host. On
//! any failure before `go` the source is resumed in place (`xc_domain_resume`, fast)
//! and runs on; the receiver destroys what it made when the sender goes away before
//! `go`. After `go`, a receiver that does not confirm leaves the source suspended (it
//! may run on the receiver): the error says so.
//!
//! There is no authentication: a receiver makes whatever guest a sender describes
//! (kernel, disks of its host's files), as `xl migrate-receive` does behind the ssh that
//! xl puts in front of it. Run it on a trusted network only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::time::Duration;

use crate::config::{Config, DevMethod};
use crate::domain::{self, Created};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::noxs;
use crate::save;
use crate::savefile::{self, HEADER_LEN};
use crate::signal;
use xenhost::save::SaveError;

/// The port a receiver listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 8002;
/// How long connecting to a receiver may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one side waits for the other's next line or bytes: beyond a restore's
/// device setup and the suspend's two 60 s waits.
const PEER_TIMEOUT: Duration = Duration::from_secs(180);
/// The longest handshake line read.
const MAX_LINE: usize = 4096;

/// The name the guest has on the receiver until the sender lets it go, and on the
/// sender once it did.
pub fn incoming_name(name: &str) -> String {
    format!("{name}--incoming")
}
pub fn away_name(name: &str) -> String {
    format!("{name}--migratedaway")
}

/// One handshake line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Ready,
    Go,
    Done,
    Error(String),
}

impl Line {
    pub fn encode(&self) -> String {
        match self {
            Line::Ready => "ready\n".into(),
            Line::Go => "go\n".into(),
            Line::Done => "done\n".into(),
            // One line: the message's own line breaks become spaces.
            Line::Error(message) => format!("error {}\n", message.replace(['\n', '\r'], " ")),
        }
    }

    /// A line as received (without its `\n`); what it is, or why it is none.
    pub fn decode(text: &str) -> std::result::Result<Line, String> {
        match text {
            "ready" => Ok(Line::Ready),
            "go" => Ok(Line::Go),
            "done" => Ok(Line::Done),
            _ => match text.strip_prefix("error ") {
                Some(message) => Ok(Line::Error(message.to_owned())),
                None => Err(format!(
                    "{:?} is not a line of chaos's migration handshake",
                    text.chars().take(80).collect::<String>()
                )),
            },
        }
    }
}

/// Read one handshake line, byte by byte (nothing after it is consumed).
fn read_line(stream: &mut TcpStream) -> std::result::Result<Line, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err("the connection was closed".into()),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_LINE => return Err("a line too long".into()),
            Ok(_) => line.push(byte[0]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err.to_string()),
        }
    }
    Line::decode(&String::from_utf8_lossy(&line))
}

/// `HOST` or `HOST:PORT` (the port defaults to [`DEFAULT_PORT`]).
pub fn target_address(target: &str) -> Result<SocketAddr> {
    let with_port = if target
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        target.to_owned()
    } else {
        format!("{target}:{DEFAULT_PORT}")
    };
    with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| Error::Save(format!("{target}: not a host (HOST or HOST:PORT)")))
}

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub name: String,
}

/// Migrate domain `domid` live to the receiver at `target`; see the module's
/// documentation.
pub fn migrate(host: &Host, domid: u32, target: &str) -> Result<Migrated> {
    let (uuid, config) = save::saveable(host, domid)?;
    let name = config.name.clone();
    let dev_method = config.dev_method;
    let config_json = config.to_json()?.to_string();
    let address = target_address(target)?;
    let mut stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).map_err(|err| {
        Error::Save(format!(
            "cannot reach a chaos receiver at {address}: {err}; {name} (domain {domid}) runs on"
        ))
    })?;
    let _ = stream.set_nodelay(true);
    let io = |what: &str, err: std::io::Error| {
        Error::Save(format!("{what} the receiver at {address}: {err}"))
    };
    stream
        .set_read_timeout(Some(PEER_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PEER_TIMEOUT)))
        .map_err(|err| io("setting up the connection to", err))?;
    let header = savefile::encode_header(config_json.len(), 0)
        .map_err(|err| Error::Save(format!("the configuration to send: {err}")))?;
    let sent = stream
        .write_all(&header)
        .and_then(|()| stream.write_all(config_json.as_bytes()))
        .map_err(|err| io("sending the configuration to", err));
    let sent = sent.and_then(|()| {
        let mut suspend = || save::request_suspend(host, domid, &uuid, dev_method);
        host.timed("xc_domain_save (live)", || {
            host.xc
                .domain_save(stream.as_fd(), domid, true, &mut suspend)
                .map_err(|err| match err {
                    SaveError::Suspend(err) => err,
                    SaveError::Xen(err) => Error::Save(format!(
                        "sending {name} to the receiver at {address}: {err}"
                    )),
                })
        })
    });
    if let Err(err) = sent {
        // The receiver may have said why it gave up.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let err = match read_line(&mut stream) {
            Ok(Line::Error(message)) => {
                Error::Save(format!("the receiver at {address} failed: {message}"))
            }
            _ => err,
        };
        return Err(save::resume_after_failure(host, domid, err));
    }
    // The receiver restores, then says whether it holds the guest.
    let answer = host.timed("the receiver restores", || Ok(read_line(&mut stream)));
    let answer = answer.unwrap_or_else(|err| Err(err.to_string()));
    let refused = match answer {
        Ok(Line::Ready) => None,
        Ok(Line::Error(message)) => Some(format!("the receiver at {address} failed: {message}")),
        Ok(other) => Some(format!(
            "the receiver at {address} answered {:?} instead of ready",
            other.encode().trim_end()
        )),
        Err(err) => Some(format!(
            "no answer from the receiver at {address} after the stream: {err}"
        )),
    };
    if let Some(refused) = refused {
        return Err(save::resume_after_failure(
            host,
            domid,
            Error::Save(refused),
        ));
    }
    let away = away_name(&name);
    let source = (&uuid, dev_method);
    if let Err(err) = save::rename(host, domid, source, &away).and_then(|()| {
        stream
            .write_all(Line::Go.encode().as_bytes())
            .map_err(|err| io("clearing", err))
    }) {
        let _ = save::rename(host, domid, source, &name);
        return Err(save::resume_after_failure(host, domid, err));
    }
    match read_line(&mut stream) {
        Ok(Line::Done) => {}
        other => {
            let why = match other {
                Ok(Line::Error(message)) => message,
                Ok(line) => format!("it answered {:?}", line.encode().trim_end()),
                Err(err) => err,
            };
            return Err(Error::Save(format!(
                "the receiver at {address} did not confirm that it runs {name} ({why}); the \
                 source, domain {domid}, stays suspended as {away}, so that {name} never runs \
                 twice: see what the receiver has (`chaos destroy {domid}` removes the source)"
            )));
        }
    }
    host.timed("destroy the source", || {
        domain::destroy_known(host, domid, Some(&uuid), dev_method)
    })?;
    Ok(Migrated { name })
}

/// Listen on `port` and receive guests, one connection at a time; with `once`, return
/// after the first (its outcome). Each guest received is printed (its domain id on
/// stdout); a failed one is reported on stderr and the next is awaited. SIGINT, SIGTERM
/// or SIGHUP ends the wait.
pub fn receive(host: &Host, port: u16, once: bool) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port))
        .map_err(|err| Error::Save(format!("cannot listen on port {port}: {err}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|err| Error::Save(format!("port {port}: {err}")))?;
    eprintln!("chaos: receiving guests on port {port}");
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                signal::check()?;
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(err) => return Err(Error::Save(format!("accepting on port {port}: {err}"))),
        };
        match receive_one(host, stream) {
            Ok(made) => {
                println!("{}", made.domid);
                eprintln!(
                    "chaos: received {} from {peer}: domain {}",
                    made.name, made.domid
                );
                if once {
                    return Ok(());
                }
            }
            Err(err) if once => {
                return Err(Error::Save(format!("receiving from {peer}: {err}")));
            }
            Err(err) => eprintln!("chaos: receiving from {peer}: {err}"),
        }
    }
}

/// How long a receiver that gave up reads on, so that the sender, still writing its
/// stream, gets to read why.
const DRAIN: Duration = Duration::from_secs(30);

/// Tell the sender why this end gave up, then read (and drop) what it still sends, up
/// to its end or [`DRAIN`]: closing at once would reset the connection under the
/// sender's writes, and the reason would be lost with it.
fn refuse(stream: &mut TcpStream, why: &Error) {
    if stream
        .write_all(Line::Error(why.to_string()).encode().as_bytes())
        .is_err()
    {
        return;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let until = std::time::Instant::now() + DRAIN;
    let mut sink = vec![0u8; 64 * 1024];
    while std::time::Instant::now() < until {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// One guest from `stream`; see the module's documentation.
fn receive_one(host: &Host, mut stream: TcpStream) -> Result<Created> {
    let io = |err: std::io::Error| Error::Save(format!("the sender: {err}"));
    stream.set_nonblocking(false).map_err(io)?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(PEER_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PEER_TIMEOUT)))
        .map_err(io)?;
    let config = match read_config(&mut stream) {
        Ok(config) => config,
        Err(err) => {
            refuse(&mut stream, &err);
            return Err(err);
        }
    };
    let name = config.name.clone();
    let mut incoming = config;
    incoming.name = incoming_name(&name);
    let made = match save::restore_stream(host, &incoming, stream.as_fd(), true) {
        Ok(made) => made,
        Err(err) => {
            refuse(&mut stream, &err);
            return Err(err);
        }
    };
    let destroy = |why: String| match domain::destroy_known(
        host,
        made.domid,
        Some(&made.uuid),
        made.dev_method,
    ) {
        Ok(()) => Error::Save(format!("{why}; domain {} destroyed", made.domid)),
        Err(err) => Error::Save(format!(
            "{why}; destroying domain {} failed too: {err}",
            made.domid
        )),
    };
    if let Err(err) = stream.write_all(Line::Ready.encode().as_bytes()) {
        return Err(destroy(format!(
            "telling the sender {name} is ready: {err}"
        )));
    }
    match read_line(&mut stream) {
        Ok(Line::Go) => {}
        Ok(Line::Error(message)) => return Err(destroy(format!("the sender gave up: {message}"))),
        Ok(line) => {
            return Err(destroy(format!(
                "the sender answered {:?} instead of go",
                line.encode().trim_end()
            )));
        }
        Err(err) => return Err(destroy(format!("no go from the sender: {err}"))),
    }
    // The sender renamed its source: the name is free (on this host too).
    let finished = save::rename(host, made.domid, (&made.uuid, made.dev_method), &name)
        .and_then(|()| domain::run_unless(host, made.domid, false))
        .and_then(|()| {
            if made.dev_method != DevMethod::Noxs {
                return Ok(());
            }
            host.timed("xendevd noxs_reoffer", || {
                noxs::reoffer_restored(host, made.domid, noxs::REOFFER_TIMEOUT)
            })
        });
    if let Err(err) = finished {
        let _ = stream.write_all(Line::Error(err.to_string()).encode().as_bytes());
        return Err(destroy(format!("starting {name}: {err}")));
    }
    let _ = stream.write_all(Line::Done.encode().as_bytes());
    Ok(Created {
        name,
        paused: false,
        ..made
    })
}

/// The header and the configuration at the start of a migration's stream.
fn read_config(stream: &mut TcpStream) -> Result<Config> {
    let mut head = [0u8; HEADER_LEN];
    stream
        .read_exact(&mut head)
        .map_err(|err| Error::Save(format!("reading the header: {err}")))?;
    let header = savefile::decode_header(&head)
        .map_err(|err| Error::Save(format!("the sender's stream: {err}")))?;
    let mut text = vec![0u8; header.config_len as usize];
    stream
        .read_exact(&mut text)
        .map_err(|err| Error::Save(format!("reading the configuration: {err}")))?;
    let text = String::from_utf8(text)
        .map_err(|_| Error::Save("the sender's configuration is not UTF-8".into()))?;
    let config = Config::parse_saved(&text)
        .map_err(|err| Error::Save(format!("the sender's configuration: {err}")))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_lines_round_trip() {
        for line in [
            Line::Ready,
            Line::Go,
            Line::Done,
            Line::Error("no room\nfor it".into()),
        ] {
            let text = line.encode();
            assert!(
                text.ends_with('\n') && text.matches('\n').count() == 1,
                "{text:?}"
            );
            let decoded = Line::decode(text.trim_end_matches('\n')).unwrap();
            match line {
                Line::Error(_) => assert_eq!(decoded, Line::Error("no room for it".into())),
                other => assert_eq!(decoded, other),
            }
        }
        assert!(Line::decode("GET / HTTP/1.1").is_err());
        assert!(Line::decode("").is_err());
    }

    #[test]
    fn targets_default_to_the_receivers_port() {
        assert_eq!(
            target_address("127.0.0.1").unwrap(),
            SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))
        );
        assert_eq!(
            target_address("127.0.0.1:9000").unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 9000))
        );
        assert!(target_address("no such host!").is_err());
    }

    #[test]
    fn both_ends_names_are_xls() {
        assert_eq!(incoming_name("linux"), "linux--incoming");
        assert_eq!(away_name("linux"), "linux--migratedaway");
    }
}
