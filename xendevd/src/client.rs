//! The caller's side of xendevd's API: a blocking [`Client`] with one method per
//! request, each answer checked against what the request expects, so a caller sees
//! values and errors, never raw [`Response`]s.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use xenproto::noxs;

use crate::api::{
    Disk, DomainSummary, NoxsDevice, NoxsDomain, Request, Response, ShellDevice, State,
};

/// Talking to the daemon failed, or it refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach xendevd at {path}: {source} (is xendevd running?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to xendevd: {0}")]
    Io(#[from] std::io::Error),
    #[error("xendevd sent an answer that is not JSON of the API: {0}")]
    BadAnswer(#[from] serde_json::Error),
    #[error("xendevd closed the connection without answering")]
    NoAnswer,
    /// xendevd answered with an error: its reason.
    #[error("xendevd refused: {0}")]
    Refused(String),
    /// xendevd cannot serve the request yet (its reason); it may a little later.
    #[error("xendevd cannot do it yet: {0}")]
    NotYet(String),
    /// xendevd answered, but not as the request expects.
    #[error("xendevd answered {request} with {answer:?}")]
    Unexpected {
        request: &'static str,
        answer: Box<Response>,
    },
}

impl ClientError {
    /// Whether xendevd could not be reached at all (nothing was asked of it).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }
}

/// xendevd at its socket; each request is one connection, answered within `timeout`.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

/// A connection whose answer was [`Response::Streaming`]: raw bytes follow until
/// xendevd closes it.
#[derive(Debug)]
pub struct Streaming {
    stream: UnixStream,
    /// Bytes of the stream that arrived with the answer line.
    pending: Vec<u8>,
}

impl Streaming {
    /// The connection (no timeouts left on it) and the stream's first bytes, read
    /// already with the answer.
    pub fn into_parts(self) -> (UnixStream, Vec<u8>) {
        (self.stream, self.pending)
    }
}

/// `answer`, unless it is xendevd's refusal or not what `request` expects.
fn expect<T>(
    request: &'static str,
    answer: Response,
    wanted: impl FnOnce(Response) -> Result<T, Response>,
) -> Result<T, ClientError> {
    match answer {
        Response::Error(message) => Err(ClientError::Refused(message)),
        Response::NotYet(message) => Err(ClientError::NotYet(message)),
        answer => wanted(answer).map_err(|answer| ClientError::Unexpected {
            request,
            answer: Box::new(answer),
        }),
    }
}

/// `Done`, as most requests are answered.
fn done(answer: Response) -> Result<(), Response> {
    match answer {
        Response::Done => Ok(()),
        other => Err(other),
    }
}

/// `Noxs`, as the NoXS requests that make devices are answered.
fn noxs_answer(answer: Response) -> Result<NoxsDomain, Response> {
    match answer {
        Response::Noxs(served) => Ok(served),
        other => Err(other),
    }
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Send one request and wait for its answer, whatever it is (for tools that print
    /// it).
    pub fn call(&self, request: &Request) -> Result<Response, ClientError> {
        let (response, _) = self.exchange(request, self.timeout)?;
        Ok(response)
    }

    /// Put a loop device in front of image `path` for domain `domid`.
    pub fn attach_disk(&self, path: &str, readonly: bool, domid: u32) -> Result<Disk, ClientError> {
        let request = Request::AttachDisk {
            path: path.to_owned(),
            readonly,
            domid,
        };
        expect("attach_disk", self.call(&request)?, |answer| match answer {
            Response::Disk(disk) => Ok(disk),
            other => Err(other),
        })
    }

    /// Detach a loop device attached with [`Client::attach_disk`].
    pub fn detach_disk(&self, device: &str) -> Result<(), ClientError> {
        let request = Request::DetachDisk {
            device: device.to_owned(),
        };
        expect("detach_disk", self.call(&request)?, done)
    }

    /// Release everything held for `domid`: loop devices, NoXS back ends, console.
    pub fn release_domain(&self, domid: u32) -> Result<(), ClientError> {
        let answer = self.call(&Request::ReleaseDomain { domid })?;
        expect("release_domain", answer, done)
    }

    /// What the daemon holds: loop devices, vifs, NoXS domains.
    pub fn query(&self) -> Result<State, ClientError> {
        expect(
            "query",
            self.call(&Request::Query)?,
            |answer| match answer {
                Response::State(state) => Ok(state),
                other => Err(other),
            },
        )
    }

    /// NoXS domain `domid`, if xendevd serves it.
    pub fn domain(&self, domid: u32) -> Result<Option<NoxsDomain>, ClientError> {
        let domains = self.domains_of("domain", &Request::Domain { domid })?;
        match <[NoxsDomain; 1]>::try_from(domains) {
            Ok([domain]) if domain.domid == domid => Ok(Some(domain)),
            Ok([other]) => Err(ClientError::Unexpected {
                request: "domain",
                answer: Box::new(Response::Domains(vec![other])),
            }),
            Err(none) if none.is_empty() => Ok(None),
            Err(several) => Err(ClientError::Unexpected {
                request: "domain",
                answer: Box::new(Response::Domains(several)),
            }),
        }
    }

    /// The NoXS domains xendevd serves under `name` (usually one or none).
    pub fn domains_named(&self, name: &str) -> Result<Vec<NoxsDomain>, ClientError> {
        let request = Request::DomainsNamed {
            name: name.to_owned(),
        };
        let domains = self.domains_of("domains_named", &request)?;
        if domains.iter().all(|domain| domain.name == name) {
            Ok(domains)
        } else {
            Err(ClientError::Unexpected {
                request: "domains_named",
                answer: Box::new(Response::Domains(domains)),
            })
        }
    }

    /// Every NoXS domain xendevd serves, in brief.
    pub fn list_domains(&self) -> Result<Vec<DomainSummary>, ClientError> {
        expect(
            "list_domains",
            self.call(&Request::ListDomains)?,
            |answer| match answer {
                Response::Listed(listed) => Ok(listed),
                other => Err(other),
            },
        )
    }

    fn domains_of(
        &self,
        request_name: &'static str,
        request: &Request,
    ) -> Result<Vec<NoxsDomain>, ClientError> {
        expect(request_name, self.call(request)?, |answer| match answer {
            Response::Domains(domains) => Ok(domains),
            other => Err(other),
        })
    }

    /// Be the back end of NoXS domain `domid` (built, still paused): its entries for
    /// the start_info block.
    pub fn noxs_create(
        &self,
        domid: u32,
        name: &str,
        console_port: u32,
        devices: &[NoxsDevice],
    ) -> Result<NoxsDomain, ClientError> {
        let request = Request::NoxsCreate {
            domid,
            name: name.to_owned(),
            console_port,
            devices: devices.to_vec(),
        };
        expect("noxs_create", self.call(&request)?, noxs_answer)
    }

    /// Make the devices of shell `domid` (created, not built): its entries for the
    /// start_info block, fixed from now on.
    pub fn noxs_shell(
        &self,
        domid: u32,
        name: &str,
        devices: &[ShellDevice],
    ) -> Result<NoxsDomain, ClientError> {
        let request = Request::NoxsShell {
            domid,
            name: name.to_owned(),
            devices: devices.to_vec(),
        };
        expect("noxs_shell", self.call(&request)?, noxs_answer)
    }

    /// Complete shell `domid` (now built, still paused) with its guest's name, console
    /// and devices: its entries for the start_info block.
    pub fn noxs_fill(
        &self,
        domid: u32,
        name: &str,
        console_port: u32,
        devices: &[NoxsDevice],
    ) -> Result<NoxsDomain, ClientError> {
        let request = Request::NoxsFill {
            domid,
            name: name.to_owned(),
            console_port,
            devices: devices.to_vec(),
        };
        expect("noxs_fill", self.call(&request)?, noxs_answer)
    }

    /// Have xendevd offer served NoXS domain `domid`'s devices again (a guest restored
    /// into it); [`ClientError::NotYet`] while the guest has not granted its start_info
    /// page.
    pub fn noxs_reoffer(&self, domid: u32) -> Result<(), ClientError> {
        expect(
            "noxs_reoffer",
            self.call(&Request::NoxsReoffer { domid })?,
            done,
        )
    }

    /// Give served NoXS domain `domid` the name `name`.
    pub fn noxs_rename(&self, domid: u32, name: &str) -> Result<(), ClientError> {
        let request = Request::NoxsRename {
            domid,
            name: name.to_owned(),
        };
        expect("noxs_rename", self.call(&request)?, done)
    }

    /// Ask NoXS domain `domid` to power off, reboot, suspend or crash; returns once the
    /// guest acknowledged, a refusal if it did not within `timeout` (the answer may
    /// take that long, and this client's own timeout on top).
    pub fn power(
        &self,
        domid: u32,
        action: noxs::Request,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let request = Request::Power {
            domid,
            action,
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        };
        let (answer, _) = self.exchange(&request, timeout + self.timeout)?;
        expect("power", answer, done)
    }

    /// NoXS domain `domid`'s console: what its log holds, then (with `follow`) its new
    /// output, until the log is done (without `follow`) or the domain is gone. With
    /// `input` (which needs `follow`) what is written to the stream goes to the guest's
    /// console; xendevd takes it as fast as the guest reads it.
    pub fn console(&self, domid: u32, follow: bool, input: bool) -> Result<Streaming, ClientError> {
        let request = Request::Console {
            domid,
            follow,
            input,
        };
        let (answer, reader) = self.exchange(&request, self.timeout)?;
        expect("console", answer, |answer| match answer {
            Response::Streaming => Ok(()),
            other => Err(other),
        })?;
        let pending = reader.buffer().to_vec();
        let stream = reader.into_inner();
        stream.set_read_timeout(None)?;
        stream.set_write_timeout(None)?;
        Ok(Streaming { stream, pending })
    }

    /// Connect, send `request`, read the answer line (waiting at most `timeout`); the
    /// reader holds whatever came after it.
    fn exchange(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<(Response, BufReader<UnixStream>), ClientError> {
        let stream = UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
            path: self.socket.display().to_string(),
            source,
        })?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        (&stream).write_all(line.as_bytes())?;
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        if reader.read_line(&mut answer)? == 0 {
            return Err(ClientError::NoAnswer);
        }
        Ok((serde_json::from_str(answer.trim_end())?, reader))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    /// A one-connection server answering with `reply` (bytes as given).
    fn serve_once(test: &str, reply: &'static [u8]) -> (PathBuf, std::thread::JoinHandle<String>) {
        let dir = std::env::temp_dir().join(format!("xendevd-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut request = String::new();
            BufReader::new(&stream).read_line(&mut request).unwrap();
            (&stream).write_all(reply).unwrap();
            request
        });
        (path, server)
    }

    #[test]
    fn a_stream_keeps_the_bytes_that_came_with_the_answer() {
        let (path, server) = serve_once("stream", b"\"streaming\"\nhello, console\nmore");
        let client = Client::new(&path, Duration::from_secs(5));
        let streaming = client.console(4, false, false).unwrap();
        let request_line = server.join().unwrap();
        assert_eq!(
            request_line,
            "{\"op\":\"console\",\"domid\":4,\"follow\":false}\n"
        );
        let (mut stream, mut bytes) = streaming.into_parts();
        stream.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes, b"hello, console\nmore");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_refusal_is_no_stream() {
        let (path, server) = serve_once("refusal", b"{\"error\":\"no NoXS domain 9\"}\n");
        let client = Client::new(&path, Duration::from_secs(5));
        let err = client.console(9, true, true).unwrap_err();
        server.join().unwrap();
        assert_eq!(err.to_string(), "xendevd refused: no NoXS domain 9");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// The per-domain and by-name queries: what they send, and an answer that is not
    /// about what was asked is refused.
    #[test]
    fn domain_queries_check_their_answers() {
        let served =
            br#"{"domains":[{"domid":7,"name":"noop-3","entries":[],"states":[],"created_ms":5}]}
"#;
        let (path, server) = serve_once("domain", served);
        let client = Client::new(&path, Duration::from_secs(5));
        let found = client.domain(7).unwrap().unwrap();
        assert_eq!((found.domid, found.name.as_str()), (7, "noop-3"));
        assert_eq!(server.join().unwrap(), "{\"op\":\"domain\",\"domid\":7}\n");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());

        let (path, server) = serve_once("domain-none", b"{\"domains\":[]}\n");
        let client = Client::new(&path, Duration::from_secs(5));
        assert_eq!(client.domain(8).unwrap(), None);
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());

        let (path, server) = serve_once("domain-other", served);
        let client = Client::new(&path, Duration::from_secs(5));
        let err = client.domain(8).unwrap_err();
        server.join().unwrap();
        assert!(
            err.to_string()
                .starts_with("xendevd answered domain with Domains("),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());

        let (path, server) = serve_once("named", served);
        let client = Client::new(&path, Duration::from_secs(5));
        assert_eq!(client.domains_named("noop-3").unwrap().len(), 1);
        assert_eq!(
            server.join().unwrap(),
            "{\"op\":\"domains_named\",\"name\":\"noop-3\"}\n"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());

        let (path, server) = serve_once("named-other", served);
        let client = Client::new(&path, Duration::from_secs(5));
        assert!(matches!(
            client.domains_named("noop-4").unwrap_err(),
            ClientError::Unexpected {
                request: "domains_named",
                ..
            }
        ));
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());

        let (path, server) = serve_once(
            "listed",
            b"{\"listed\":[{\"domid\":7,\"name\":\"a\",\"created_ms\":5}]}\n",
        );
        let client = Client::new(&path, Duration::from_secs(5));
        let listed = client.list_domains().unwrap();
        assert_eq!((listed[0].domid, listed[0].created_ms), (7, 5));
        assert_eq!(server.join().unwrap(), "{\"op\":\"list_domains\"}\n");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn answers_are_checked_against_the_request() {
        let (path, server) = serve_once("release", b"\"done\"\n");
        let client = Client::new(&path, Duration::from_secs(5));
        client.release_domain(3).unwrap();
        assert_eq!(
            server.join().unwrap(),
            "{\"op\":\"release_domain\",\"domid\":3}\n"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        let (path, server) = serve_once("unexpected", b"\"done\"\n");
        let client = Client::new(&path, Duration::from_secs(5));
        let err = client.query().unwrap_err();
        server.join().unwrap();
        assert_eq!(err.to_string(), "xendevd answered query with Done");
        assert!(!err.is_unreachable());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        let (path, server) = serve_once(
            "power",
            b"{\"error\":\"domain 5 (d) does not handle crash requests\"}\n",
        );
        let client = Client::new(&path, Duration::from_secs(5));
        let err = client
            .power(5, noxs::Request::Crash, Duration::from_millis(1500))
            .unwrap_err();
        assert_eq!(
            server.join().unwrap(),
            "{\"op\":\"power\",\"domid\":5,\"action\":\"crash\",\"timeout_ms\":1500}\n"
        );
        assert!(matches!(err, ClientError::Refused(why) if why.ends_with("crash requests")));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        let nowhere = Client::new("/nonexistent/xendevd.sock", Duration::from_secs(1));
        assert!(nowhere.query().unwrap_err().is_unreachable());
    }

    /// A re-offer put off is `NotYet` (chaos asks again), a refused one `Refused`, a
    /// done one done.
    #[test]
    fn a_reoffer_put_off_is_not_a_refusal() {
        for (test, reply, outcome) in [
            ("reoffer-done", &b"\"done\"\n"[..], None),
            (
                "reoffer-later",
                b"{\"not_yet\":\"not granted yet\"}\n",
                Some("xendevd cannot do it yet: not granted yet"),
            ),
            (
                "reoffer-refused",
                b"{\"error\":\"domain 5 is not served\"}\n",
                Some("xendevd refused: domain 5 is not served"),
            ),
        ] {
            let (path, server) = serve_once(test, reply);
            let client = Client::new(&path, Duration::from_secs(5));
            let answer = client.noxs_reoffer(5);
            assert_eq!(
                server.join().unwrap(),
                "{\"op\":\"noxs_reoffer\",\"domid\":5}\n"
            );
            assert_eq!(
                answer.as_ref().err().map(ToString::to_string).as_deref(),
                outcome
            );
            if test == "reoffer-later" {
                assert!(matches!(answer, Err(ClientError::NotYet(_))));
            }
            let _ = std::fs::remove_dir_all(path.parent().unwrap());
        }
    }
}
