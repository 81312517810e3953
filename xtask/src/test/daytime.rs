//! The host's daytime clients for the lab cases: one TCP or UDP client, and a crowd of
//! 100 of each at once, each answer checked against the host's clock.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};

use crate::run::Ports;

/// How far a daytime answer may be from the host's clock: the guest reads Xen's wall
/// clock, which Xen set from QEMU's RTC, which follows the host (to the second).
const DAYTIME_SKEW: Duration = Duration::from_secs(2);

/// Connect to the guest's port 13: one RFC 3339 line, then the connection closes.
pub fn daytime_tcp(ports: &Ports) -> Result<()> {
    daytime_tcp_at(ports.addr(13)?)
}

fn daytime_tcp_at(addr: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .with_context(|| format!("reading from {addr} (tcp)"))?;
    check_daytime(&answer).with_context(|| format!("tcp answer from {addr}"))
}

/// Clients of [`daytime_crowd`]: as many as a load generator's first burst.
const CROWD: usize = 100;

/// [`CROWD`] TCP clients on the host connect at the same moment and each gets its line;
/// then as many UDP clients each send one datagram at the same moment and each gets
/// its answer, with no second try.
pub fn daytime_crowd(ports: &Ports) -> Result<()> {
    let addr = ports.addr(13)?;
    let start = Barrier::new(CROWD);
    let tcp: Vec<Result<()>> = thread::scope(|scope| {
        let clients: Vec<_> = (0..CROWD)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    daytime_tcp_at(addr)
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|client| {
                client
                    .join()
                    .unwrap_or_else(|_| bail!("the client panicked"))
            })
            .collect()
    });
    crowd_verdict("TCP", tcp)?;

    let sockets = (0..CROWD)
        .map(|_| {
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            socket.set_read_timeout(Some(Duration::from_secs(10)))?;
            Ok(socket)
        })
        .collect::<Result<Vec<_>>>()?;
    for socket in &sockets {
        socket.send_to(b"what time is it?\n", addr)?;
    }
    let udp = sockets
        .iter()
        .map(|socket| {
            let mut buf = [0u8; 512];
            let (len, _) = socket
                .recv_from(&mut buf)
                .with_context(|| format!("no udp answer from {addr}"))?;
            check_daytime(&String::from_utf8_lossy(&buf[..len]))
                .with_context(|| format!("udp answer from {addr}"))
        })
        .collect();
    crowd_verdict("UDP", udp)
}

/// All of a crowd's clients must have succeeded; else how many did not, and why.
fn crowd_verdict(proto: &str, results: Vec<Result<()>>) -> Result<()> {
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|result| result.err().map(|err| format!("{err:#}")))
        .collect();
    ensure!(
        failures.is_empty(),
        "{} of {CROWD} {proto} clients failed, e.g. {}",
        failures.len(),
        failures[..failures.len().min(3)].join("; ")
    );
    Ok(())
}

/// A datagram to the guest's port 13 comes back as one RFC 3339 line (a few tries: UDP
/// may lose one).
pub fn daytime_udp(ports: &Ports) -> Result<()> {
    let addr = ports.addr(13)?;
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 512];
    let mut last = None;
    for _ in 0..3 {
        socket.send_to(b"what time is it?\n", addr)?;
        match socket.recv_from(&mut buf) {
            Ok((len, _)) => {
                let answer = String::from_utf8_lossy(&buf[..len]);
                return check_daytime(&answer).with_context(|| format!("udp answer from {addr}"));
            }
            Err(err) => last = Some(err),
        }
    }
    Err(anyhow::Error::from(last.expect("three tries")))
        .with_context(|| format!("no udp answer from {addr} in 3 tries"))
}

/// `2026-11-24T03:12:48.123456Z` and CR LF, close to the host's time.
fn check_daytime(answer: &str) -> Result<()> {
    let Some(line) = answer.strip_suffix("\r\n") else {
        bail!("{answer:?} does not end with CR LF");
    };
    let time = parse_utc(line).with_context(|| format!("{line:?} is not RFC 3339 UTC"))?;
    let now = SystemTime::now();
    let skew = now
        .duration_since(time)
        .or_else(|_| time.duration_since(now))
        .unwrap_or_default();
    if skew > DAYTIME_SKEW {
        bail!(
            "{line:?} is {:.0} s away from the host's clock",
            skew.as_secs_f64()
        );
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS[.frac]Z` as a time.
fn parse_utc(text: &str) -> Result<SystemTime> {
    let bytes = text.as_bytes();
    let shape_ok = bytes.len() >= 20
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':'
        && bytes[bytes.len() - 1] == b'Z';
    if !shape_ok {
        bail!("not shaped YYYY-MM-DDTHH:MM:SS[.frac]Z");
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64> {
        let digits = &text[range];
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            bail!("{digits:?} is not a number");
        }
        Ok(digits.parse()?)
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let fraction = &text[19..text.len() - 1];
    let nanos = match fraction.strip_prefix('.') {
        None if fraction.is_empty() => 0,
        Some(digits) if (1..=9).contains(&digits.len()) => {
            number(20..20 + digits.len())? * 10_i64.pow(9 - digits.len() as u32)
        }
        _ => bail!("bad fraction of a second {fraction:?}"),
    };
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        bail!("a field is out of range");
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    let secs = u64::try_from(secs).context("before 1970")?;
    Ok(SystemTime::UNIX_EPOCH + Duration::new(secs, u32::try_from(nanos)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        let epoch = |text| {
            parse_utc(text)
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
        };
        assert_eq!(epoch("1970-01-01T00:00:00Z"), Duration::ZERO);
        // `date -u -d 2026-11-24T03:12:48Z +%s`
        assert_eq!(
            epoch("2026-11-24T03:12:48.123456Z"),
            Duration::new(1_795_489_968, 123_456_000)
        );
        assert_eq!(
            epoch("2000-02-29T12:00:00.5Z"),
            Duration::new(951_825_600, 500_000_000)
        );
        for bad in [
            "2026-11-24 03:12:48Z",
            "2026-11-24T03:12:48",
            "2026-13-24T03:12:48Z",
            "2026-11-24T03:12:48.Z",
            "2026-11-24T03:12:48.1234567890Z",
            "2026-1x-24T03:12:48Z",
        ] {
            assert!(parse_utc(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn daytime_lines() {
        let now = humantime_now();
        check_daytime(&format!("{now}\r\n")).unwrap();
        assert!(check_daytime(&now).is_err(), "no CR LF");
        let err = check_daytime("2001-01-01T00:00:00Z\r\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("away from the host's clock"), "{err}");
    }

    /// The host's time now as RFC 3339, by `date`.
    fn humantime_now() -> String {
        let out = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}
