//! What `chaos` and the chaos daemon say to each other: one JSON request line, one
//! JSON answer line per connection on the daemon's socket (`RUN_DIR/daemon.sock`), as
//! with xendevd. [`ask`] is the client's side; it needs nothing of Xen, so the thin
//! `chaos` binary uses it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{DevMethod, Mac};

/// Where chaos keeps the claims of creates under way, and the daemon its socket, its
/// lock and the records of its shells.
pub const RUN_DIR: &str = "/run/chaos";

/// chaos's files in its run directory.
#[derive(Debug, Clone)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn socket(&self) -> PathBuf {
        self.0.join("daemon.sock")
    }

    /// Held (`flock`) by the running daemon.
    pub fn lock(&self) -> PathBuf {
        self.0.join("daemon.lock")
    }

    /// One record per shell (`records`).
    pub fn shells(&self) -> PathBuf {
        self.0.join("shells")
    }

    /// One claim per create under way (`crate::claim`).
    pub fn claims(&self) -> PathBuf {
        self.0.join("creating")
    }
}

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Create these guests in order, each a configuration as JSON ([`crate::Config::to_json`]
    /// of one the client checked), stopping at the first that fails. `paused`: leave
    /// every one paused, whatever its configuration says. `wait` (one guest): once it
    /// has ended, destroy it and answer a second line, [`Response::Ended`].
    Create {
        guests: Vec<Value>,
        paused: bool,
        #[serde(default)]
        wait: bool,
    },
    /// Destroy a guest the daemon made (a client that waited for it was interrupted).
    Destroy { domid: u32 },
    /// The pools and their shells.
    Status,
    /// Destroy every shell and stop.
    Stop,
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// What `Create` made, in order, and the failure that stopped it, if one did.
    Created {
        guests: Vec<Made>,
        failure: Option<Failure>,
    },
    Status(Status),
    /// `Stop`: the shells are gone; the daemon exits.
    Stopped {
        shells_destroyed: usize,
    },
    /// How a guest created with `wait` ended (it is destroyed): the shutdown reason's
    /// code, or none if it was destroyed before it shut down; the daemon's steps from
    /// its first answer on.
    Ended {
        shutdown_code: Option<u32>,
        #[serde(default)]
        steps: Vec<Step>,
    },
    /// `Destroy` is done.
    Destroyed,
    /// The request could not be read or done; why.
    Refused(String),
}

/// A guest the daemon created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Made {
    pub domid: u32,
    pub name: String,
    pub uuid: String,
    /// Whether it was left paused.
    pub paused: bool,
    /// Its vifs' MAC addresses, in order (random ones included).
    pub macs: Vec<Mac>,
    pub dev_method: DevMethod,
    /// Whether a shell became it (`false`: no shell fitted; it was built in full).
    pub from_shell: bool,
    /// The daemon's steps for it, in order.
    pub steps: Vec<Step>,
}

/// One step the daemon took, and how long it took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    pub ms: f64,
}

/// Why a create failed: as `chaos create` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Failure {
    /// The configuration cannot be (a taken name, too much memory): exit status 2.
    Config { field: String, message: String },
    /// Something failed on the way (nothing of the guest is left).
    Failed(String),
}

/// The daemon's pools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub pid: u32,
    pub pools: Vec<PoolStatus>,
    /// Guests made from shells, and built in full, since the daemon started.
    pub from_shells: u64,
    pub in_full: u64,
}

/// One pool: its specification, and its shells by domain id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolStatus {
    /// The pool as `--pool` takes it (`method=noxs,memory=16,…,size=2`).
    pub pool: String,
    /// Shells ready to become guests.
    pub ready: Vec<u32>,
    /// Shells whose devices are still coming up.
    pub warming: Vec<u32>,
    /// Why the last shell could not be made, while the pool waits to try again.
    pub problem: Option<String>,
}

/// Asking the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// Nothing listens on the socket (no daemon, or one that died): nothing was asked.
    #[error("no chaos daemon listens on {}: {source}", socket.display())]
    NotRunning {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the chaos daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("the chaos daemon answered something that is not its API's JSON: {0}")]
    BadAnswer(#[from] serde_json::Error),
    #[error("the chaos daemon closed the connection without answering (did it die?)")]
    NoAnswer,
}

/// A request sent to the daemon, and its answers as they come.
#[derive(Debug)]
pub struct Conversation {
    reader: BufReader<UnixStream>,
    /// What has come of the next line so far (a read may time out halfway).
    partial: String,
}

impl Conversation {
    /// Connect to the daemon at `socket` ([`AskError::NotRunning`] if none listens).
    pub fn connect(socket: &Path) -> Result<Self, AskError> {
        let stream = UnixStream::connect(socket).map_err(|source| AskError::NotRunning {
            socket: socket.to_owned(),
            source,
        })?;
        Ok(Self {
            reader: BufReader::new(stream),
            partial: String::new(),
        })
    }

    /// Send the request (one per connection).
    pub fn send(&mut self, request: &Request) -> Result<(), AskError> {
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        self.reader.get_ref().write_all(line.as_bytes())?;
        Ok(())
    }

    /// The next answer, waiting at most `timeout` (`None`: as long as it takes);
    /// `Ok(None)` if the time passed first.
    pub fn answer(&mut self, timeout: Option<Duration>) -> Result<Option<Response>, AskError> {
        self.reader.get_ref().set_read_timeout(timeout)?;
        match self.reader.read_line(&mut self.partial) {
            Ok(0) => Err(AskError::NoAnswer),
            Ok(_) => {
                let line = std::mem::take(&mut self.partial);
                Ok(Some(serde_json::from_str(line.trim_end())?))
            }
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(err) => Err(err.into()),
        }
    }
}

/// Ask the daemon at `socket` and wait for its (first) answer.
pub fn ask(socket: &Path, request: &Request) -> Result<Response, AskError> {
    let mut talk = Conversation::connect(socket)?;
    talk.send(request)?;
    talk.answer(None)?.ok_or(AskError::NoAnswer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_on_the_wire() {
        for (request, line) in [
            (
                Request::Create {
                    guests: vec![json!({"name": "noop"})],
                    paused: false,
                    wait: true,
                },
                r#"{"op":"create","guests":[{"name":"noop"}],"paused":false,"wait":true}"#,
            ),
            (
                Request::Destroy { domid: 7 },
                r#"{"op":"destroy","domid":7}"#,
            ),
            (Request::Status, r#"{"op":"status"}"#),
            (Request::Stop, r#"{"op":"stop"}"#),
        ] {
            assert_eq!(serde_json::to_string(&request).unwrap(), line);
            assert_eq!(serde_json::from_str::<Request>(line).unwrap(), request);
        }
        for bad in [
            "",
            "{}",
            r#"{"op":"create","guests":[]}"#,
            r#"{"op":"restart"}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_on_the_wire() {
        let made = Response::Created {
            guests: vec![Made {
                domid: 5,
                name: "daytime".into(),
                uuid: "0e1f…".into(),
                paused: false,
                macs: vec![Mac([0, 0x16, 0x3e, 0, 0, 1])],
                dev_method: DevMethod::Noxs,
                from_shell: true,
                steps: vec![Step {
                    name: "xc_dom: build".into(),
                    ms: 3.5,
                }],
            }],
            failure: Some(Failure::Config {
                field: "name".into(),
                message: "taken".into(),
            }),
        };
        let line = serde_json::to_string(&made).unwrap();
        assert_eq!(
            line,
            r#"{"created":{"guests":[{"domid":5,"name":"daytime","uuid":"0e1f…","paused":false,"macs":["00:16:3e:00:00:01"],"dev_method":"noxs","from_shell":true,"steps":[{"name":"xc_dom: build","ms":3.5}]}],"failure":{"config":{"field":"name","message":"taken"}}}}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), made);
        let status = Response::Status(Status {
            pid: 77,
            pools: vec![PoolStatus {
                pool: "method=noxs,memory=4,vcpus=1,size=2".into(),
                ready: vec![3],
                warming: vec![],
                problem: None,
            }],
            from_shells: 1,
            in_full: 0,
        });
        let line = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), status);
        assert_eq!(
            serde_json::to_string(&Response::Refused("no".into())).unwrap(),
            r#"{"refused":"no"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::Stopped {
                shells_destroyed: 2
            })
            .unwrap(),
            r#"{"stopped":{"shells_destroyed":2}}"#
        );
    }
}
