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
    /// A request meant to stream was answered otherwise (`Error` carries xendevd's
    /// reason).
    #[error("xendevd refused: {0}")]
    Refused(String),
    #[error("xendevd answered {0:?} where a stream was to begin")]
    NotStreaming(Box<Response>),
}

/// Send one request and wait (at most `timeout`) for its response.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let (response, _) = exchange(socket, request, timeout)?;
    Ok(response)
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

/// Send a request answered with a stream (`Console`); wait at most `timeout` for the
/// answer. Any other answer is an error: [`ClientError::Refused`] with xendevd's
/// reason, or [`ClientError::NotStreaming`].
pub fn call_streaming(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Streaming, ClientError> {
    let (response, reader) = exchange(socket, request, timeout)?;
    match response {
        Response::Streaming => {
            let pending = reader.buffer().to_vec();
            let stream = reader.into_inner();
            stream.set_read_timeout(None)?;
            stream.set_write_timeout(None)?;
            Ok(Streaming { stream, pending })
        }
        Response::Error(message) => Err(ClientError::Refused(message)),
        other => Err(ClientError::NotStreaming(Box::new(other))),
    }
}

/// Connect, send `request`, read the answer line; the reader holds whatever came after
/// it.
fn exchange(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<(Response, BufReader<UnixStream>), ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    /// A one-connection server answering with `reply` (bytes as given).
    fn serve_once(
        test: &str,
        reply: &'static [u8],
    ) -> (std::path::PathBuf, std::thread::JoinHandle<String>) {
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
        let request = Request::Console {
            domid: 4,
            follow: false,
        };
        let streaming = call_streaming(&path, &request, Duration::from_secs(5)).unwrap();
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
        let request = Request::Console {
            domid: 9,
            follow: true,
        };
        let err = call_streaming(&path, &request, Duration::from_secs(5)).unwrap_err();
        server.join().unwrap();
        assert_eq!(err.to_string(), "xendevd refused: no NoXS domain 9");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
