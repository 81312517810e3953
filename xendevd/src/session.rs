//! A [`Session`]: one API connection's protocol state, without the socket — request
//! lines in, response lines out, limits and deadlines. Pure code (time is passed in),
//! so the daemon's treatment of slow, silent, chatty and malformed clients is
//! host-tested. What breaks the protocol is a [`ProtocolError`].
//!
//! Rules:
//! - one request per line (`\n`; a `\r` before it is tolerated), answered in order;
//! - a malformed line gets `{"error": "..."}` and the connection goes on;
//! - a line longer than [`Limits::max_line`] gets an error and the connection is closed
//!   (there is no telling where the next request starts);
//! - a request line unfinished for [`Limits::request_timeout`] gets an error and the
//!   connection is closed; so does a connection silent for [`Limits::idle_timeout`];
//! - a client that does not read its answers (more than [`Limits::max_output`] bytes
//!   queued, or none taken for `request_timeout`) is dropped;
//! - at end of input, an unfinished line gets an error (if the client still reads).

use std::fmt;
use std::time::{Duration, Instant};

use crate::api::{Request, Response};

/// A request line that breaks the protocol, or a connection that does.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed request: not UTF-8 text (requests are JSON lines)")]
    NotUtf8,
    #[error(
        "malformed request: an empty line (expected a JSON object such as \
         {{\"op\":\"query\"}})"
    )]
    Empty,
    #[error("malformed request: not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("malformed request: {0}, not a JSON object with an \"op\" field")]
    NotObject(&'static str),
    #[error("malformed request: unknown field `{field}`: {op} takes no fields")]
    FieldOfFieldless { op: &'static str, field: String },
    /// JSON, but not a request of the API.
    #[error("malformed request: {0}")]
    NotRequest(serde_json::Error),
    #[error("request line longer than {0} bytes: closing the connection")]
    LineTooLong(usize),
    #[error(
        "request incomplete after {} s ({bytes} bytes without a newline): closing the \
         connection",
        after.as_secs_f64()
    )]
    Stalled { after: Duration, bytes: usize },
    #[error(
        "the connection ended in the middle of a request ({0} bytes without a newline): \
         each request must end with \\n"
    )]
    Unfinished(usize),
}

/// Limits for every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_line: usize,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_output: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line: 64 * 1024,
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_output: 4 << 20,
        }
    }
}

/// The requests that are their op alone (unit variants of [`Request`]).
const FIELDLESS_OPS: [&str; 2] = ["query", "list_domains"];

/// Parse one request line (without its `\n`), or say precisely what is wrong with it.
pub fn parse_request(line: &[u8]) -> Result<Request, ProtocolError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(text) = std::str::from_utf8(line) else {
        return Err(ProtocolError::NotUtf8);
    };
    if text.trim().is_empty() {
        return Err(ProtocolError::Empty);
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(ProtocolError::NotJson)?;
    let Some(object) = value.as_object() else {
        let kind = match value {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "a boolean",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::Object(_) => unreachable!("objects are handled above"),
        };
        return Err(ProtocolError::NotObject(kind));
    };
    // serde lets a unit variant through with extra fields: these ops take none.
    let op = object.get("op").and_then(|op| op.as_str());
    let fieldless = FIELDLESS_OPS.into_iter().find(|name| op == Some(*name));
    if let Some(op) = fieldless
        && let Some(field) = object.keys().find(|key| *key != "op")
    {
        return Err(ProtocolError::FieldOfFieldless {
            op,
            field: field.clone(),
        });
    }
    serde_json::from_value(value).map_err(ProtocolError::NotRequest)
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Taking requests.
    Open,
    /// A protocol error ended the conversation (its error is queued). Input is read and
    /// thrown away until the client closes its side, or for `request_timeout` at most:
    /// closing a Unix socket with unread input resets it, and the client could lose
    /// the error line that tells it why.
    Draining { since: Instant },
    /// Raw bytes follow the answer (a console stream); input is read until the client
    /// closes its side (`input_open` false: nothing more to read) — thrown away, or,
    /// for a client that asked to send input, taken by the daemon for the guest —
    /// and only a client that stops reading is dropped.
    Streaming { input_open: bool },
    /// No more input; the connection closes once the output is written.
    Closing,
    /// The client does not read: close now, whatever is queued.
    Dead,
}

/// One connection's state.
#[derive(Debug)]
pub struct Session {
    limits: Limits,
    phase: Phase,
    /// Bytes of the unfinished request line.
    partial: Vec<u8>,
    /// When the unfinished line got its first byte.
    partial_since: Option<Instant>,
    /// When the last byte came in, or the connection opened.
    last_input: Instant,
    /// Answers not yet written.
    output: Vec<u8>,
    /// When the client last took some output (or output began to queue).
    last_output: Instant,
}

impl Session {
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self {
            limits,
            phase: Phase::Open,
            partial: Vec::new(),
            partial_since: None,
            last_input: now,
            output: Vec::new(),
            last_output: now,
        }
    }

    /// Take bytes from the client; returns, in order, each complete line's request or
    /// the error to answer it with (the caller answers each with [`Session::respond`]).
    pub fn receive(&mut self, bytes: &[u8], now: Instant) -> Vec<Result<Request, ProtocolError>> {
        let mut out = Vec::new();
        if matches!(self.phase, Phase::Streaming { .. }) {
            self.last_input = now;
        }
        if self.phase != Phase::Open {
            return out;
        }
        self.last_input = now;
        let mut rest = bytes;
        while !rest.is_empty() {
            let (chunk, complete) = match rest.iter().position(|&b| b == b'\n') {
                Some(end) => (&rest[..end], Some(end + 1)),
                None => (rest, None),
            };
            if self.partial.len() + chunk.len() > self.limits.max_line {
                out.push(Err(ProtocolError::LineTooLong(self.limits.max_line)));
                self.stop(now);
                return out;
            }
            self.partial.extend_from_slice(chunk);
            match complete {
                Some(used) => {
                    out.push(parse_request(&self.partial));
                    self.partial.clear();
                    self.partial_since = None;
                    rest = &rest[used..];
                }
                None => {
                    self.partial_since.get_or_insert(now);
                    rest = &[];
                }
            }
        }
        out
    }

    /// End the conversation after a protocol error: drain, then close.
    fn stop(&mut self, now: Instant) {
        self.partial.clear();
        self.partial_since = None;
        self.phase = Phase::Draining { since: now };
    }

    /// The client closed its sending side. An unfinished line gets an error.
    pub fn end_of_input(&mut self) -> Option<ProtocolError> {
        let phase = self.phase;
        if let Phase::Streaming { .. } = phase {
            // A client may close its side and go on reading the stream; its socket
            // would report that end again and again, so it is not read any more.
            self.phase = Phase::Streaming { input_open: false };
            return None;
        }
        if matches!(phase, Phase::Open | Phase::Draining { .. }) {
            self.phase = Phase::Closing;
        }
        if phase != Phase::Open || self.partial.is_empty() {
            return None;
        }
        let error = ProtocolError::Unfinished(self.partial.len());
        self.partial.clear();
        self.partial_since = None;
        Some(error)
    }

    /// Queue an answer.
    pub fn respond(&mut self, response: Response, now: Instant) {
        if self.phase == Phase::Dead {
            return;
        }
        if self.output.is_empty() {
            self.last_output = now;
        }
        let mut line = serde_json::to_vec(&response)
            .unwrap_or_else(|_| br#"{"error":"xendevd could not encode its answer"}"#.to_vec());
        line.push(b'\n');
        self.output.extend_from_slice(&line);
        if self.output.len() > self.limits.max_output {
            // The client does not read its answers.
            self.abort();
        }
    }

    /// Queue the answer of a request that failed: `{"error": "<why>"}`.
    pub fn refuse(&mut self, why: &dyn fmt::Display, now: Instant) {
        self.respond(Response::Error(why.to_string()), now);
    }

    /// What is waiting to be written.
    pub fn pending_output(&self) -> &[u8] {
        &self.output
    }

    /// `n` bytes of the output were written.
    pub fn wrote(&mut self, n: usize, now: Instant) {
        self.output.drain(..n.min(self.output.len()));
        if n > 0 {
            self.last_output = now;
        }
    }

    /// When [`Session::check_time`] must next run.
    pub fn deadline(&self) -> Option<Instant> {
        let timeout = self.limits.request_timeout;
        let output = (!self.output.is_empty()).then(|| self.last_output + timeout);
        let input = match self.phase {
            Phase::Open => {
                let idle = self.last_input + self.limits.idle_timeout;
                Some(match self.partial_since {
                    Some(since) => idle.min(since + timeout),
                    None => idle,
                })
            }
            Phase::Draining { since } => Some(since + timeout),
            Phase::Streaming { .. } | Phase::Closing | Phase::Dead => None,
        };
        match (input, output) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Apply the timeouts at `now`: a stalled request gets an error and the connection
    /// closes; an idle or non-reading client is dropped.
    pub fn check_time(&mut self, now: Instant) {
        let timeout = self.limits.request_timeout;
        if !self.output.is_empty() && now >= self.last_output + timeout {
            // It has not taken any of its answers for that long.
            self.abort();
            return;
        }
        match self.phase {
            Phase::Open => {
                if self
                    .partial_since
                    .is_some_and(|since| now >= since + timeout)
                {
                    let error = ProtocolError::Stalled {
                        after: timeout,
                        bytes: self.partial.len(),
                    };
                    self.refuse(&error, now);
                    self.stop(now);
                } else if now >= self.last_input + self.limits.idle_timeout {
                    self.phase = Phase::Closing;
                }
            }
            Phase::Draining { since } if now >= since + timeout => self.phase = Phase::Closing,
            Phase::Draining { .. } | Phase::Streaming { .. } | Phase::Closing | Phase::Dead => {}
        }
    }

    /// After the answer that announces it: raw bytes follow ([`Session::send_raw`]) until
    /// [`Session::end_stream`].
    pub fn start_stream(&mut self) {
        if self.phase == Phase::Open {
            self.partial.clear();
            self.partial_since = None;
            self.phase = Phase::Streaming { input_open: true };
        }
    }

    /// Queue raw bytes of a stream.
    pub fn send_raw(&mut self, bytes: &[u8], now: Instant) {
        if !matches!(self.phase, Phase::Streaming { .. }) {
            return;
        }
        if self.output.is_empty() {
            self.last_output = now;
        }
        self.output.extend_from_slice(bytes);
        if self.output.len() > self.limits.max_output {
            self.abort();
        }
    }

    /// The stream is over: close once the output is written.
    pub fn end_stream(&mut self) {
        if matches!(self.phase, Phase::Streaming { .. }) {
            self.phase = Phase::Closing;
        }
    }

    /// The socket failed, or the client does not read: close without another word.
    pub fn abort(&mut self) {
        self.output.clear();
        self.phase = Phase::Dead;
    }

    /// Whether to read from the client (requests, or input to throw away).
    pub fn reading(&self) -> bool {
        matches!(
            self.phase,
            Phase::Open | Phase::Draining { .. } | Phase::Streaming { input_open: true }
        )
    }

    /// Whether the connection can be closed now.
    pub fn finished(&self) -> bool {
        match self.phase {
            Phase::Dead => true,
            Phase::Closing => self.output.is_empty(),
            Phase::Open | Phase::Draining { .. } | Phase::Streaming { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_line: 100,
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_output: 1000,
        }
    }

    const QUERY: &[u8] = b"{\"op\":\"query\"}\n";
    const ATTACH: &[u8] =
        b"{\"op\":\"attach_disk\",\"path\":\"/i\",\"readonly\":true,\"domid\":3}\r\n";

    /// Each result with its error as the answer's text.
    fn texts(
        results: impl IntoIterator<Item = Result<Request, ProtocolError>>,
    ) -> Vec<Result<Request, String>> {
        results
            .into_iter()
            .map(|result| result.map_err(|err| err.to_string()))
            .collect()
    }

    fn answers(session: &mut Session, now: Instant) -> String {
        let text = String::from_utf8(session.pending_output().to_vec()).unwrap();
        session.wrote(text.len(), now);
        text
    }

    #[test]
    fn whole_and_byte_by_byte() {
        let t0 = Instant::now();
        let input = [QUERY, ATTACH, b"{\"op\":\"query\"}\n"].concat();
        let mut whole = Session::new(limits(), t0);
        let at_once = texts(whole.receive(&input, t0));
        let mut bytewise = Session::new(limits(), t0);
        let one_by_one = texts(
            input
                .iter()
                .flat_map(|b| bytewise.receive(std::slice::from_ref(b), t0)),
        );
        assert_eq!(at_once, one_by_one);
        assert_eq!(
            at_once,
            [
                Ok(Request::Query),
                Ok(Request::AttachDisk {
                    path: "/i".into(),
                    readonly: true,
                    domid: 3
                }),
                Ok(Request::Query)
            ]
        );
        assert!(whole.reading() && !whole.finished());
        assert_eq!(whole.deadline(), Some(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn malformed_lines_get_errors_and_the_connection_goes_on() {
        let t0 = Instant::now();
        let mut session = Session::new(limits(), t0);
        let results = texts(session.receive(
            b"garbage\n\n{\"op\":\"format_disk\"}\n\xff\xfe\n{\"op\":\"release_domain\",\"domid\":-1}\n{\"op\":\"query\"}\n",
            t0,
        ));
        let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(errors.len(), 5, "{results:?}");
        assert!(
            errors[0].starts_with("malformed request: not JSON: expected value at line 1 column 1")
        );
        assert!(errors[1].contains("an empty line"));
        assert!(
            errors[2].contains("unknown variant `format_disk`, expected one of"),
            "{}",
            errors[2]
        );
        assert!(errors[3].contains("not UTF-8"));
        assert!(
            errors[4].contains("invalid value: integer `-1`"),
            "{}",
            errors[4]
        );
        assert_eq!(results[5], Ok(Request::Query));
        for result in results {
            match result {
                Ok(_) => session.respond(Response::Done, t0),
                Err(why) => session.refuse(&why, t0),
            }
        }
        let text = answers(&mut session, t0);
        assert_eq!(text.lines().count(), 6);
        assert!(text.starts_with("{\"error\":\"malformed request: not JSON: expected value"));
        assert!(text.ends_with("\"done\"\n"));
        assert!(session.reading());
    }

    #[test]
    fn what_is_wrong_with_a_request() {
        for (line, error) in [
            ("{}", "missing field `op`"),
            (
                r#"{"op":"format_disk"}"#,
                "unknown variant `format_disk`, expected one of `attach_disk`, `detach_disk`, \
                 `release_domain`, `query`",
            ),
            (
                r#"{"op":"attach_disk","path":"/x"}"#,
                "missing field `readonly`",
            ),
            (
                r#"{"op":"attach_disk","path":"/x","readonly":"yes","domid":1}"#,
                "invalid type: string \"yes\", expected a boolean",
            ),
            (
                r#"{"op":"release_domain","domid":-1}"#,
                "invalid value: integer `-1`, expected u32",
            ),
            (
                r#"{"op":"detach_disk","device":"/dev/loop0","extra":1}"#,
                "unknown field `extra`, expected `device`",
            ),
            (
                r#"{"op":"list_domains","all":true}"#,
                "unknown field `all`: list_domains takes no fields",
            ),
            (
                r#"{"op":"query","x":1}"#,
                "unknown field `x`: query takes no fields",
            ),
            ("[1,2]", "an array, not a JSON object with an \"op\" field"),
            ("\"query\"", "a string, not a JSON object"),
            ("null", "null, not a JSON object"),
            (
                "{\"op\":",
                "not JSON: EOF while parsing a value at line 1 column 6",
            ),
        ] {
            let err = parse_request(line.as_bytes()).unwrap_err().to_string();
            assert_eq!(
                err.strip_prefix("malformed request: ")
                    .map(|e| e.starts_with(error)),
                Some(true),
                "{line}: {err}"
            );
        }
        assert_eq!(
            parse_request(b" {\"op\":\"query\"} \r").unwrap(),
            Request::Query
        );
    }

    #[test]
    fn an_overlong_line_closes_the_connection() {
        let t0 = Instant::now();
        // Exactly the limit is fine, with or without the newline in the same chunk.
        let mut session = Session::new(limits(), t0);
        let line = [vec![b' '; 100 - QUERY.len() + 1], QUERY.to_vec()].concat();
        assert_eq!(texts(session.receive(&line, t0)), [Ok(Request::Query)]);
        // One more byte is not, whether it comes at once or a byte at a time.
        for chunked in [false, true] {
            let mut session = Session::new(limits(), t0);
            let long = vec![b'x'; 101];
            let results = texts(if chunked {
                long.iter()
                    .flat_map(|b| session.receive(std::slice::from_ref(b), t0))
                    .collect()
            } else {
                session.receive(&long, t0)
            });
            assert_eq!(
                results,
                [Err(
                    "request line longer than 100 bytes: closing the connection".into()
                )]
            );
            // Nothing more is taken: the rest is read and thrown away until the client
            // closes its side, so it gets the error line and a clean end.
            assert!(session.reading());
            assert!(session.receive(QUERY, t0).is_empty());
            session.refuse(&results[0].as_ref().unwrap_err(), t0);
            answers(&mut session, t0);
            assert!(!session.finished());
            assert!(session.end_of_input().is_none());
            assert!(!session.reading());
            assert!(session.finished());
        }
        // A client that never closes its side is closed after the request timeout.
        let mut session = Session::new(limits(), t0);
        session.receive(&[b'x'; 101], t0);
        assert_eq!(session.deadline(), Some(t0 + Duration::from_secs(5)));
        session.check_time(t0 + Duration::from_secs(5));
        assert!(!session.reading());
        assert!(session.finished());
    }

    #[test]
    fn a_stalled_request_times_out() {
        let t0 = Instant::now();
        let mut session = Session::new(limits(), t0);
        let t1 = t0 + Duration::from_secs(1);
        assert!(session.receive(b"{\"op\":", t1).is_empty());
        assert_eq!(session.deadline(), Some(t1 + Duration::from_secs(5)));
        // More bytes do not extend it: the line must finish in time.
        assert!(
            session
                .receive(b"\"qu", t1 + Duration::from_secs(3))
                .is_empty()
        );
        assert_eq!(session.deadline(), Some(t1 + Duration::from_secs(5)));
        session.check_time(t1 + Duration::from_millis(4999));
        assert!(session.reading());
        session.check_time(t1 + Duration::from_secs(5));
        assert_eq!(
            answers(&mut session, t1),
            "{\"error\":\"request incomplete after 5 s (9 bytes without a newline): closing the connection\"}\n"
        );
        // What comes after is thrown away; the client's end closes the connection.
        assert!(session.receive(b"\"query\"}\n", t1).is_empty());
        assert!(!session.finished());
        session.end_of_input();
        assert!(session.finished());
    }

    #[test]
    fn idle_and_deaf_clients_are_dropped() {
        let t0 = Instant::now();
        let mut idle = Session::new(limits(), t0);
        idle.check_time(t0 + Duration::from_secs(59));
        assert!(idle.reading());
        idle.check_time(t0 + Duration::from_secs(60));
        assert!(idle.finished());
        // Answers the client never takes: dropped after the request timeout…
        let mut deaf = Session::new(limits(), t0);
        deaf.respond(Response::Done, t0);
        assert_eq!(deaf.deadline(), Some(t0 + Duration::from_secs(5)));
        deaf.check_time(t0 + Duration::from_secs(5));
        assert!(deaf.finished());
        // …or once too much is queued.
        let mut flood = Session::new(limits(), t0);
        for _ in 0..200 {
            flood.respond(Response::Done, t0);
        }
        assert!(flood.finished());
    }

    #[test]
    fn end_of_input() {
        let t0 = Instant::now();
        let mut clean = Session::new(limits(), t0);
        assert_eq!(clean.receive(QUERY, t0).len(), 1);
        assert!(clean.end_of_input().is_none());
        assert!(clean.finished());
        let mut cut = Session::new(limits(), t0);
        assert!(cut.receive(b"{\"op\":\"query\"}", t0).is_empty());
        assert_eq!(
            cut.end_of_input().unwrap().to_string(),
            "the connection ended in the middle of a request (14 bytes without a newline): \
             each request must end with \\n"
        );
        assert!(cut.end_of_input().is_none());
    }

    /// A console follower may close its side and go on reading; from then on its
    /// socket is not read (it would report that end on every turn), and the stream
    /// goes on until it ends.
    #[test]
    fn a_stream_outlives_the_end_of_input() {
        let t0 = Instant::now();
        let mut session = Session::new(limits(), t0);
        assert_eq!(session.receive(QUERY, t0).len(), 1);
        session.respond(Response::Streaming, t0);
        session.start_stream();
        assert!(session.reading());
        assert!(session.end_of_input().is_none());
        assert!(!session.reading());
        assert!(!session.finished());
        session.send_raw(b"console", t0);
        assert!(session.pending_output().ends_with(b"console"));
        session.end_stream();
        let all = session.pending_output().len();
        session.wrote(all, t0);
        assert!(session.finished());
    }
}
