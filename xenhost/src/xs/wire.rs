//! xenstored's Unix socket, spoken directly (`xs_wire.h`, with the codec of
//! `xenproto::xenstore`): to write many nodes in one transaction without waiting for
//! each reply.
//!
//! libxenstore sends a request and waits for its reply before the next, so writing a
//! domain's ~70 nodes is ~70 round trips, each two context switches on dom0's vCPU
//! (about 1.5 ms each under TCG in the lab, which made Xenstore the largest part of
//! `chaos create`). xenstored answers a connection's requests in order, so [`Wire`]
//! sends the transaction's whole batch of `WRITE`s and `SET_PERMS` at once and then
//! reads the replies: three round trips (start, batch, end) instead of one per node.
//!
//! Only for that: reads, watches, introductions and the rest stay with libxenstore
//! ([`super::Xs`]). Without the socket (xenstored in a stub domain, reachable only
//! through `/dev/xen/xenbus`) a caller writes through libxenstore instead
//! ([`super::Xs::write_nodes_at_once`]).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[cfg(test)]
use xenproto::xenstore::Decoder;
use xenproto::xenstore::{self as wire, Header, Message, MsgType, XsError};

use super::{MAX_ATTEMPTS, Node, connect_socket, too_many_conflicts};
use crate::error::{Error, Result};

/// How long xenstored may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to xenstored's socket.
#[derive(Debug)]
pub struct Wire {
    stream: UnixStream,
    path: PathBuf,
    next_id: u32,
    /// Bytes read but not yet taken as a message.
    inbuf: Vec<u8>,
}

/// The errno a Xenstore error name stands for.
fn errno(err: &XsError) -> io::Error {
    let code = match err {
        XsError::Einval => libc::EINVAL,
        XsError::Eacces => libc::EACCES,
        XsError::Eexist => libc::EEXIST,
        XsError::Eisdir => libc::EISDIR,
        XsError::Enoent => libc::ENOENT,
        XsError::Enomem => libc::ENOMEM,
        XsError::Enospc => libc::ENOSPC,
        XsError::Eio => libc::EIO,
        XsError::Enotempty => libc::ENOTEMPTY,
        XsError::Enosys => libc::ENOSYS,
        XsError::Erofs => libc::EROFS,
        XsError::Ebusy => libc::EBUSY,
        XsError::Eagain => libc::EAGAIN,
        XsError::Eisconn => libc::EISCONN,
        XsError::E2big => libc::E2BIG,
        XsError::Eperm => libc::EPERM,
        XsError::Other(name) => {
            return io::Error::other(format!("xenstored error {name}"));
        }
    };
    io::Error::from_raw_os_error(code)
}

fn wire_error(op: &'static str, path: &str, err: wire::WireError) -> Error {
    Error::xs(
        op,
        path,
        io::Error::new(io::ErrorKind::InvalidData, err.to_string()),
    )
}

impl Wire {
    /// Connect to xenstored's socket ([`Error::NoXenstored`] if none accepts).
    pub fn connect() -> Result<Self> {
        let (stream, path) = connect_socket()?;
        Self::over(stream, &path)
            .map_err(|err| Error::xs("connect", &path.display().to_string(), err))
    }

    fn over(stream: UnixStream, path: &Path) -> io::Result<Self> {
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(Self {
            stream,
            path: path.to_owned(),
            next_id: 1,
            inbuf: Vec::new(),
        })
    }

    fn io_error(&self, op: &'static str, source: io::Error) -> Error {
        Error::xs(op, &self.path.display().to_string(), source)
    }

    /// Append a request; its id.
    fn encode(
        &mut self,
        msg_type: MsgType,
        tx: u32,
        parts: &[&[u8]],
        last_nul: bool,
        out: &mut Vec<u8>,
        path: &str,
    ) -> Result<u32> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        wire::encode_request(msg_type, id, tx, parts, last_nul, out)
            .map_err(|err| wire_error("encode", path, err))?;
        Ok(id)
    }

    /// The next message from xenstored, from what was read already or the socket.
    fn next_message(&mut self) -> Result<Message> {
        loop {
            if self.inbuf.len() >= wire::HEADER_LEN {
                let header_bytes: [u8; wire::HEADER_LEN] = self.inbuf[..wire::HEADER_LEN]
                    .try_into()
                    .expect("HEADER_LEN bytes");
                let header =
                    Header::decode(&header_bytes).map_err(|err| wire_error("reply", "/", err))?;
                let end = wire::HEADER_LEN + header.len as usize;
                if self.inbuf.len() >= end {
                    let payload = self.inbuf[wire::HEADER_LEN..end].to_vec();
                    self.inbuf.drain(..end);
                    return Ok(Message { header, payload });
                }
            }
            let mut buf = [0u8; 8192];
            let n = self
                .stream
                .read(&mut buf)
                .map_err(|err| self.io_error("read", err))?;
            if n == 0 {
                return Err(self.io_error(
                    "read",
                    io::Error::new(io::ErrorKind::UnexpectedEof, "xenstored closed the socket"),
                ));
            }
            self.inbuf.extend_from_slice(&buf[..n]);
        }
    }

    /// The reply to request `id` (replies come in order): its payload, or xenstored's
    /// error.
    fn reply(&mut self, id: u32) -> Result<Result<Vec<u8>, XsError>> {
        let message = self.next_message()?;
        if message.header.req_id != id {
            return Err(self.io_error(
                "reply",
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "xenstored answered request {} where {id} was due",
                        message.header.req_id
                    ),
                ),
            ));
        }
        Ok(match message.header.msg_type {
            MsgType::Error => Err(XsError::from_payload(&message.payload)),
            _ => Ok(message.payload),
        })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .map_err(|err| self.io_error("write", err))
    }

    /// Write `nodes` (values, then permissions where given) in one transaction, sent
    /// as one batch. `Ok(false)`: another transaction got in the way (EAGAIN) and
    /// nothing was written; run it again. On an error the transaction is aborted.
    pub fn write_nodes_once(&mut self, nodes: &[Node]) -> Result<bool> {
        let mut out = Vec::new();
        let id = self.encode(MsgType::TransactionStart, 0, &[b""], true, &mut out, "/")?;
        self.send(&out)?;
        let tx = match self.reply(id)? {
            Ok(payload) => wire::parse_transaction_id(&payload)
                .map_err(|err| wire_error("transaction_start", "/", err))?,
            Err(err) => return Err(Error::xs("transaction_start", "/", errno(&err))),
        };
        out.clear();
        // (request id, operation, path) of each request of the batch.
        let mut sent: Vec<(u32, &'static str, &str)> = Vec::new();
        for node in nodes {
            let id = self.encode(
                MsgType::Write,
                tx,
                &[node.path.as_bytes(), node.value.as_bytes()],
                false,
                &mut out,
                &node.path,
            )?;
            sent.push((id, "write", &node.path));
            if let Some(perms) = &node.perms {
                let perms: Vec<String> = perms.iter().map(ToString::to_string).collect();
                let mut parts: Vec<&[u8]> = vec![node.path.as_bytes()];
                parts.extend(perms.iter().map(|p| p.as_bytes()));
                let id = self.encode(MsgType::SetPerms, tx, &parts, true, &mut out, &node.path)?;
                sent.push((id, "set_permissions", &node.path));
            }
        }
        self.send(&out)?;
        let mut first_error = None;
        for (id, op, path) in sent {
            if let Err(err) = self.reply(id)?
                && first_error.is_none()
            {
                first_error = Some(Error::xs(op, path, errno(&err)));
            }
        }
        out.clear();
        let commit: &[u8] = if first_error.is_some() { b"F" } else { b"T" };
        let id = self.encode(MsgType::TransactionEnd, tx, &[commit], true, &mut out, "/")?;
        self.send(&out)?;
        let end = self.reply(id)?;
        if let Some(err) = first_error {
            return Err(err);
        }
        match end {
            Ok(_) => Ok(true),
            Err(XsError::Eagain) => Ok(false),
            Err(err) => Err(Error::xs("transaction_end", "/", errno(&err))),
        }
    }

    /// [`Self::write_nodes_once`] again while another transaction gets in the way, at
    /// most [`MAX_ATTEMPTS`] times.
    pub fn write_nodes(&mut self, nodes: &[Node]) -> Result<()> {
        for _ in 0..MAX_ATTEMPTS {
            if self.write_nodes_once(nodes)? {
                return Ok(());
            }
        }
        Err(too_many_conflicts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xs::Perm;

    /// A stand-in xenstored on one end of a socket pair: it reads every request,
    /// records it (type, transaction, payload) and answers like xenstored, failing
    /// writes under `/fail` with EACCES and the first commit with EAGAIN when asked.
    fn fake_xenstored(
        stream: UnixStream,
        conflict_once: bool,
    ) -> std::thread::JoinHandle<Vec<(MsgType, u32, Vec<u8>)>> {
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut seen = Vec::new();
            let mut decoder = Decoder::new();
            let mut conflicted = false;
            let mut buf = [0u8; 1];
            loop {
                // One byte at a time: the batch must not depend on how reads split it.
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return seen,
                    Ok(_) => {}
                }
                decoder.feed(&buf).unwrap();
                let Some(message) = decoder.take().unwrap() else {
                    continue;
                };
                let h = message.header;
                seen.push((h.msg_type, h.tx_id, message.payload.clone()));
                let (msg_type, payload): (MsgType, &[u8]) = match h.msg_type {
                    MsgType::TransactionStart => (h.msg_type, b"7\0"),
                    MsgType::TransactionEnd if conflict_once && !conflicted => {
                        conflicted = true;
                        (MsgType::Error, b"EAGAIN\0")
                    }
                    _ if message.payload.starts_with(b"/fail") => (MsgType::Error, b"EACCES\0"),
                    _ => (h.msg_type, b"OK\0"),
                };
                let mut out = Vec::new();
                let parts: &[&[u8]] = &[payload.strip_suffix(b"\0").unwrap()];
                wire::encode_request(msg_type, h.req_id, h.tx_id, parts, true, &mut out).unwrap();
                stream.write_all(&out).unwrap();
            }
        })
    }

    fn nodes() -> Vec<Node> {
        vec![
            Node {
                path: "/local/domain/5".into(),
                value: String::new(),
                perms: Some(vec![Perm::none(0), Perm::read(5)]),
            },
            Node {
                path: "/local/domain/5/name".into(),
                value: "guest".into(),
                perms: None,
            },
        ]
    }

    #[test]
    fn a_batch_in_one_transaction() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = fake_xenstored(theirs, false);
        let mut wire = Wire::over(ours, Path::new("test")).unwrap();
        wire.write_nodes(&nodes()).unwrap();
        drop(wire);
        let seen = server.join().unwrap();
        let expected: Vec<(MsgType, u32, Vec<u8>)> = vec![
            (MsgType::TransactionStart, 0, b"\0".to_vec()),
            (MsgType::Write, 7, b"/local/domain/5\0".to_vec()),
            (MsgType::SetPerms, 7, b"/local/domain/5\0n0\0r5\0".to_vec()),
            (MsgType::Write, 7, b"/local/domain/5/name\0guest".to_vec()),
            (MsgType::TransactionEnd, 7, b"T\0".to_vec()),
        ];
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_conflict_runs_it_again() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = fake_xenstored(theirs, true);
        let mut wire = Wire::over(ours, Path::new("test")).unwrap();
        wire.write_nodes(&nodes()).unwrap();
        drop(wire);
        let seen = server.join().unwrap();
        let starts = seen
            .iter()
            .filter(|(t, _, _)| *t == MsgType::TransactionStart)
            .count();
        assert_eq!(starts, 2);
        assert_eq!(seen.len(), 10);
    }

    #[test]
    fn an_error_aborts_and_names_the_node() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = fake_xenstored(theirs, false);
        let mut wire = Wire::over(ours, Path::new("test")).unwrap();
        let mut batch = nodes();
        batch.insert(
            1,
            Node {
                path: "/fail/here".into(),
                value: "x".into(),
                perms: None,
            },
        );
        let err = wire.write_nodes(&batch).unwrap_err().to_string();
        assert!(err.starts_with("Xenstore write /fail/here: "), "{err}");
        drop(wire);
        let seen = server.join().unwrap();
        // Every request was still answered in order, then the transaction aborted.
        assert_eq!(
            seen.last().unwrap(),
            &(MsgType::TransactionEnd, 7, b"F\0".to_vec())
        );
    }
}
