//! A blocking client for the daemon's socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::api::{Request, Response};

/// Talking to the daemon failed.
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
}

/// Send one request and wait (at most `timeout`) for its response.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    let mut answer = String::new();
    if BufReader::new(&stream).read_line(&mut answer)? == 0 {
        return Err(ClientError::NoAnswer);
    }
    Ok(serde_json::from_str(answer.trim_end())?)
}
