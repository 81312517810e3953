//! RESP2, the Redis serialization protocol, as far as a server needs it: requests
//! (arrays of bulk strings, or inline commands: one line of words) and replies.
//!
//! [`parse`] takes the bytes a client has sent so far and returns the first request and
//! how many bytes it took, or `None` while the request is incomplete; the caller keeps
//! the rest for the next call (pipelining). Limits are checked as soon as a length is
//! read, before the bytes it announces arrive: a client announcing a 1 GiB value gets
//! [`ProtocolError::InvalidBulkLength`] at once. After a protocol error the connection
//! cannot be resynchronised: the server answers the error and closes it, as Redis does.
//! Error texts follow Redis's (`Protocol error: invalid bulk length`, …).

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The longest bulk string (one key, value or argument) a request may carry: 512 KiB
/// (Redis's `proto-max-bulk-len` is 512 MiB; a unikernel with tens of MiB is not Redis).
pub const MAX_BULK: usize = 512 * 1024;
/// The most bytes one request may take on the wire, framing included: a `SET` of a key
/// and a value of [`MAX_BULK`] each fits.
pub const MAX_REQUEST: usize = 2 * MAX_BULK + 1024;
/// The longest line of an inline command, and the longest `*N`/`$N` header line
/// (Redis's `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE: usize = 64 * 1024;
/// The most arguments of one request (each takes at least 6 bytes, so fewer than
/// [`MAX_REQUEST`] allows could ever fit anyway).
pub const MAX_ARGS: usize = 64 * 1024;

/// A request: its arguments, the command name first. Bulk strings are borrowed from
/// the client's buffer; inline words are unescaped copies.
pub type Args<'a> = Vec<Cow<'a, [u8]>>;

/// Why a client's bytes are not a request. Display gives Redis's text after `ERR `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The count of an array is not a number, or more than [`MAX_ARGS`].
    InvalidMultibulkLength,
    /// An element of an array is not a bulk string (the byte found instead of `$`).
    ExpectedBulk(u8),
    /// The length of a bulk string is not a number, negative, or more than [`MAX_BULK`].
    InvalidBulkLength,
    /// A bulk string's bytes are not followed by CR LF.
    UnterminatedBulk,
    /// No CR LF within [`MAX_INLINE`] bytes after `*`.
    TooBigMultibulkCount,
    /// No CR LF within [`MAX_INLINE`] bytes after `$`.
    TooBigBulkCount,
    /// No line end within [`MAX_INLINE`] bytes of an inline command.
    TooBigInline,
    /// An inline command with a quote that does not close, or a closing quote not
    /// followed by a space.
    UnbalancedQuotes,
    /// The request would take more than [`MAX_REQUEST`] bytes.
    TooBigRequest,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Protocol error: ")?;
        match self {
            Self::InvalidMultibulkLength => f.write_str("invalid multibulk length"),
            Self::ExpectedBulk(byte) => write!(f, "expected '$', got '{}'", char::from(*byte)),
            Self::InvalidBulkLength => f.write_str("invalid bulk length"),
            Self::UnterminatedBulk => f.write_str("bulk string not followed by CRLF"),
            Self::TooBigMultibulkCount => f.write_str("too big mbulk count string"),
            Self::TooBigBulkCount => f.write_str("too big bulk count string"),
            Self::TooBigInline => f.write_str("too big inline request"),
            Self::UnbalancedQuotes => f.write_str("unbalanced quotes in request"),
            Self::TooBigRequest => write!(f, "request larger than {MAX_REQUEST} bytes"),
        }
    }
}

/// The first request in `buf` and the bytes it took, or `None` if `buf` holds only part
/// of one. An empty request (`*0`, a blank line) comes back with no arguments: the
/// caller skips it, as Redis does.
pub fn parse(buf: &[u8]) -> Result<Option<(Args<'_>, usize)>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let parsed = if first == b'*' {
        parse_multibulk(buf)?
    } else {
        parse_inline(buf)?
    };
    if parsed.is_none() && buf.len() >= MAX_REQUEST {
        return Err(ProtocolError::TooBigRequest);
    }
    Ok(parsed)
}

/// The number on the header line at `buf[at..]` (after its `*` or `$`) and where the
/// next line starts; `None` if the line is not complete yet.
fn header_line(
    buf: &[u8],
    at: usize,
    too_long: ProtocolError,
    invalid: ProtocolError,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let rest = &buf[at..];
    // Looked for only as far as a line may go: a long run without one is not rescanned
    // in full each time more bytes arrive.
    let window = &rest[..rest.len().min(MAX_INLINE + 2)];
    let Some(end) = window.windows(2).position(|pair| pair == b"\r\n") else {
        if rest.len() > MAX_INLINE {
            return Err(too_long);
        }
        return Ok(None);
    };
    if end > MAX_INLINE {
        return Err(too_long);
    }
    let number = parse_i64(&rest[..end]).ok_or(invalid)?;
    Ok(Some((number, at + end + 2)))
}

fn parse_multibulk(buf: &[u8]) -> Result<Option<(Args<'_>, usize)>, ProtocolError> {
    let Some((count, mut at)) = header_line(
        buf,
        1,
        ProtocolError::TooBigMultibulkCount,
        ProtocolError::InvalidMultibulkLength,
    )?
    else {
        return Ok(None);
    };
    if count <= 0 {
        return Ok(Some((Vec::new(), at)));
    }
    if count as u64 > MAX_ARGS as u64 {
        return Err(ProtocolError::InvalidMultibulkLength);
    }
    let mut args = Vec::new();
    for _ in 0..count {
        let Some(&marker) = buf.get(at) else {
            return Ok(None);
        };
        if marker != b'$' {
            return Err(ProtocolError::ExpectedBulk(marker));
        }
        let Some((len, start)) = header_line(
            buf,
            at + 1,
            ProtocolError::TooBigBulkCount,
            ProtocolError::InvalidBulkLength,
        )?
        else {
            return Ok(None);
        };
        if !(0..=MAX_BULK as i64).contains(&len) {
            return Err(ProtocolError::InvalidBulkLength);
        }
        let end = start + len as usize;
        if end + 2 > MAX_REQUEST {
            return Err(ProtocolError::TooBigRequest);
        }
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::UnterminatedBulk);
        }
        args.push(Cow::Borrowed(&buf[start..end]));
        at = end + 2;
    }
    Ok(Some((args, at)))
}

fn parse_inline(buf: &[u8]) -> Result<Option<(Args<'_>, usize)>, ProtocolError> {
    let window = &buf[..buf.len().min(MAX_INLINE + 1)];
    let Some(newline) = window.iter().position(|&byte| byte == b'\n') else {
        if buf.len() > MAX_INLINE {
            return Err(ProtocolError::TooBigInline);
        }
        return Ok(None);
    };
    if newline > MAX_INLINE {
        return Err(ProtocolError::TooBigInline);
    }
    let line = buf[..newline]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..newline]);
    let words = split_args(line)?;
    Ok(Some((
        words.into_iter().map(Cow::Owned).collect(),
        newline + 1,
    )))
}

/// The words of an inline command, as Redis's `sdssplitargs` splits them: separated by
/// white space; `"…"` with the escapes `\n \r \t \b \a \\ \" \xHH`, `'…'` with `\'`;
/// a closing quote must be followed by white space or the end of the line.
pub fn split_args(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let is_space = |byte: u8| matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let mut words = Vec::new();
    let mut at = 0;
    loop {
        while at < line.len() && is_space(line[at]) {
            at += 1;
        }
        if at == line.len() {
            return Ok(words);
        }
        let mut word = Vec::new();
        let mut double = false;
        let mut single = false;
        loop {
            let byte = line.get(at).copied();
            let next = line.get(at + 1).copied();
            if double {
                match (byte, next) {
                    (None, _) => return Err(ProtocolError::UnbalancedQuotes),
                    (Some(b'\\'), Some(b'x'))
                        if line.len() > at + 3
                            && hex(line[at + 2]).is_some()
                            && hex(line[at + 3]).is_some() =>
                    {
                        let high = hex(line[at + 2]).unwrap_or(0);
                        let low = hex(line[at + 3]).unwrap_or(0);
                        word.push(high << 4 | low);
                        at += 3;
                    }
                    (Some(b'\\'), Some(escaped)) => {
                        word.push(match escaped {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                        at += 1;
                    }
                    (Some(b'"'), next) => {
                        if next.is_some_and(|next| !is_space(next)) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        at += 1;
                        break;
                    }
                    (Some(other), _) => word.push(other),
                }
            } else if single {
                match (byte, next) {
                    (None, _) => return Err(ProtocolError::UnbalancedQuotes),
                    (Some(b'\\'), Some(b'\'')) => {
                        word.push(b'\'');
                        at += 1;
                    }
                    (Some(b'\''), next) => {
                        if next.is_some_and(|next| !is_space(next)) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        at += 1;
                        break;
                    }
                    (Some(other), _) => word.push(other),
                }
            } else {
                match byte {
                    None | Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(b'"') => double = true,
                    Some(b'\'') => single = true,
                    Some(other) => word.push(other),
                }
            }
            at += 1;
        }
        words.push(word);
    }
}

fn hex(byte: u8) -> Option<u8> {
    char::from(byte).to_digit(16).map(|digit| digit as u8)
}

/// A decimal integer as Redis's `string2ll` reads it: an optional `-`, then digits
/// without leading zeros (`0` alone is fine), no spaces or `+`, within `i64`.
pub fn parse_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    match digits {
        [] => return None,
        [b'0'] if !negative => return Some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    if digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Accumulate negatively: i64::MIN has no positive counterpart.
    let mut value: i64 = 0;
    for &digit in digits {
        value = value
            .checked_mul(10)?
            .checked_sub(i64::from(digit - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

/// A reply to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `+TEXT`: a status; the text has no CR or LF.
    Simple(&'static str),
    /// `-TEXT`: an error, its code first (`ERR …`, `OOM …`); CR and LF in the text
    /// (which may quote a client's bytes) become spaces, as Redis makes them.
    Error(String),
    /// `:N`.
    Integer(i64),
    /// `$LEN` and the bytes.
    Bulk(Cow<'a, [u8]>),
    /// `$-1`: no value.
    Nil,
    /// `*N` and N replies.
    Array(Vec<Reply<'a>>),
}

impl Reply<'_> {
    /// The bytes [`Reply::encode`] appends, to reserve before encoding.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Simple(text) => 3 + text.len(),
            Self::Error(text) => 3 + text.len(),
            Self::Integer(n) => 3 + decimal_len(*n),
            Self::Bulk(bytes) => 5 + decimal_len(bytes.len() as i64) + bytes.len(),
            Self::Nil => 5,
            Self::Array(items) => {
                3 + decimal_len(items.len() as i64)
                    + items.iter().map(Reply::encoded_len).sum::<usize>()
            }
        }
    }

    /// Append the reply's wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Simple(text) => line(out, b'+', text.as_bytes()),
            Self::Error(text) => {
                out.push(b'-');
                out.extend(text.bytes().map(|byte| match byte {
                    b'\r' | b'\n' => b' ',
                    other => other,
                }));
                out.extend_from_slice(b"\r\n");
            }
            Self::Integer(n) => {
                out.push(b':');
                push_decimal(out, *n);
                out.extend_from_slice(b"\r\n");
            }
            Self::Bulk(bytes) => {
                out.push(b'$');
                push_decimal(out, bytes.len() as i64);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Self::Nil => out.extend_from_slice(b"$-1\r\n"),
            Self::Array(items) => {
                out.push(b'*');
                push_decimal(out, items.len() as i64);
                out.extend_from_slice(b"\r\n");
                for item in items {
                    item.encode(out);
                }
            }
        }
    }
}

/// The reply to a request that is not one: `-ERR Protocol error: …`.
pub fn protocol_error_reply(err: &ProtocolError) -> Reply<'static> {
    Reply::Error(alloc::format!("ERR {err}"))
}

fn line(out: &mut Vec<u8>, marker: u8, text: &[u8]) {
    out.push(marker);
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n");
}

fn decimal_len(n: i64) -> usize {
    let mut len = usize::from(n < 0) + 1;
    let mut rest = n.unsigned_abs() / 10;
    while rest > 0 {
        len += 1;
        rest /= 10;
    }
    len
}

fn push_decimal(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    let mut digits = [0u8; 20];
    let mut rest = n.unsigned_abs();
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn words<'a>(args: &'a Args<'a>) -> Vec<&'a [u8]> {
        args.iter().map(|arg| arg.as_ref()).collect()
    }

    fn parsed(buf: &[u8]) -> (Vec<Vec<u8>>, usize) {
        let (args, used) = parse(buf).unwrap().expect("a whole request");
        (args.into_iter().map(Cow::into_owned).collect(), used)
    }

    #[test]
    fn arrays_of_bulk_strings() {
        let buf = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        let (args, used) = parse(buf).unwrap().unwrap();
        assert_eq!(words(&args), [&b"SET"[..], b"k", b"hello"]);
        assert_eq!(used, buf.len());
    }

    #[test]
    fn every_prefix_of_a_request_needs_more() {
        let buf = b"*2\r\n$4\r\nECHO\r\n$11\r\nhello world\r\n";
        for end in 0..buf.len() {
            assert_eq!(parse(&buf[..end]), Ok(None), "prefix of {end} bytes");
        }
        assert_eq!(parsed(buf).1, buf.len());
    }

    #[test]
    fn pipelined_requests_come_one_at_a_time() {
        let buf = b"*1\r\n$4\r\nPING\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$3\r\nDBS";
        let mut at = 0;
        let mut seen = Vec::new();
        while let Some((args, used)) = parse(&buf[at..]).unwrap() {
            seen.push(words(&args).iter().map(|w| w.to_vec()).collect::<Vec<_>>());
            at += used;
        }
        assert_eq!(
            seen,
            [
                vec![b"PING".to_vec()],
                vec![b"PING".to_vec()],
                vec![b"GET".to_vec(), b"k".to_vec()]
            ]
        );
        assert_eq!(&buf[at..], b"*1\r\n$3\r\nDBS", "the incomplete rest stays");
    }

    #[test]
    fn bulk_strings_are_binary_safe() {
        let value: Vec<u8> = (0..=255u8).chain(*b"\r\n\r\n$3\r\n*1\r\n\0").collect();
        let mut buf = format!("*2\r\n$4\r\nECHO\r\n${}\r\n", value.len()).into_bytes();
        buf.extend_from_slice(&value);
        buf.extend_from_slice(b"\r\n");
        let (args, used) = parsed(&buf);
        assert_eq!(args[1], value);
        assert_eq!(used, buf.len());
    }

    #[test]
    fn empty_requests_are_skipped() {
        assert_eq!(parsed(b"*0\r\n"), (vec![], 4));
        assert_eq!(parsed(b"*-1\r\nPING\r\n"), (vec![], 5));
        assert_eq!(parsed(b"\r\n"), (vec![], 2));
        assert_eq!(parsed(b"   \n"), (vec![], 4));
        assert_eq!(parsed(b"*1\r\n$0\r\n\r\n"), (vec![vec![]], 10));
    }

    #[test]
    fn malformed_arrays_get_precise_errors() {
        use ProtocolError::*;
        let cases: [(&[u8], ProtocolError); 10] = [
            (b"*x\r\n", InvalidMultibulkLength),
            (b"*1x\r\n", InvalidMultibulkLength),
            (b"*+1\r\n", InvalidMultibulkLength),
            (b"*65537\r\n", InvalidMultibulkLength),
            (b"*99999999999999999999\r\n", InvalidMultibulkLength),
            (b"*1\r\n:1\r\n", ExpectedBulk(b':')),
            (b"*1\r\n$-1\r\n", InvalidBulkLength),
            (b"*1\r\n$abc\r\n", InvalidBulkLength),
            (b"*1\r\n$3\r\nabcd\r\n", UnterminatedBulk),
            (b"*1\r\n$1073741824\r\n", InvalidBulkLength),
        ];
        for (buf, expected) in cases {
            assert_eq!(
                parse(buf),
                Err(expected.clone()),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
        assert_eq!(
            ExpectedBulk(b':').to_string(),
            "Protocol error: expected '$', got ':'"
        );
        assert_eq!(
            InvalidBulkLength.to_string(),
            "Protocol error: invalid bulk length"
        );
    }

    #[test]
    fn a_huge_bulk_is_refused_before_its_bytes_arrive() {
        // Only the header of a 1 GiB value: refused at once, nothing buffered for it.
        assert_eq!(
            parse(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1073741824\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        // The largest value is fine, and waits for its bytes.
        let header = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${MAX_BULK}\r\n");
        assert_eq!(parse(header.as_bytes()), Ok(None));
        assert_eq!(
            parse(format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", MAX_BULK + 1).as_bytes()),
            Err(ProtocolError::InvalidBulkLength)
        );
    }

    #[test]
    fn a_request_over_the_limit_is_refused() {
        // Three arguments of MAX_BULK each cannot fit in MAX_REQUEST.
        let mut buf = b"*3\r\n".to_vec();
        for _ in 0..2 {
            buf.extend_from_slice(format!("${MAX_BULK}\r\n").as_bytes());
            buf.extend(core::iter::repeat_n(b'v', MAX_BULK));
            buf.extend_from_slice(b"\r\n");
        }
        assert_eq!(parse(&buf), Ok(None));
        buf.extend_from_slice(format!("${MAX_BULK}\r\n").as_bytes());
        assert_eq!(parse(&buf), Err(ProtocolError::TooBigRequest));
    }

    #[test]
    fn header_lines_without_an_end_are_bounded() {
        let mut buf = b"*".to_vec();
        buf.extend(core::iter::repeat_n(b'1', MAX_INLINE));
        assert_eq!(parse(&buf), Ok(None));
        buf.push(b'1');
        assert_eq!(parse(&buf), Err(ProtocolError::TooBigMultibulkCount));
        let mut buf = b"*1\r\n$".to_vec();
        buf.extend(core::iter::repeat_n(b'1', MAX_INLINE + 1));
        assert_eq!(parse(&buf), Err(ProtocolError::TooBigBulkCount));
    }

    #[test]
    fn inline_commands() {
        assert_eq!(
            parsed(b"SET  k\tv\r\nGET k\r\n"),
            (vec![b"SET".to_vec(), b"k".to_vec(), b"v".to_vec()], 10)
        );
        assert_eq!(parsed(b"PING\n"), (vec![b"PING".to_vec()], 5));
        assert_eq!(parse(b"PING"), Ok(None));
        let mut long = vec![b'a'; MAX_INLINE];
        assert_eq!(parse(&long), Ok(None));
        long.push(b'a');
        assert_eq!(parse(&long), Err(ProtocolError::TooBigInline));
        assert_eq!(
            ProtocolError::TooBigInline.to_string(),
            "Protocol error: too big inline request"
        );
    }

    #[test]
    fn inline_quotes_and_escapes() {
        assert_eq!(
            split_args(br#"set "a b" 'c d' "\x41\n\"\\" 'it\'s' """#).unwrap(),
            [&b"set"[..], b"a b", b"c d", b"A\n\"\\", b"it's", b""]
        );
        for bad in [&br#"get "k"#[..], b"get 'k", br#"get "a"b"#, b"get 'a'b"] {
            assert_eq!(
                split_args(bad),
                Err(ProtocolError::UnbalancedQuotes),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse(b"GET \"k\r\n"), Err(ProtocolError::UnbalancedQuotes));
    }

    #[test]
    fn integers_as_redis_reads_them() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b" 1",
            b"1 ",
            b"01",
            b"-0",
            b"1.5",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn replies_encode_as_resp2() {
        let cases: [(Reply<'_>, &[u8]); 8] = [
            (Reply::Simple("OK"), b"+OK\r\n"),
            (Reply::Error("ERR a\r\nb".into()), b"-ERR a  b\r\n"),
            (Reply::Integer(-42), b":-42\r\n"),
            (Reply::Integer(i64::MIN), b":-9223372036854775808\r\n"),
            (Reply::Bulk(Cow::Borrowed(b"a\r\nb")), b"$4\r\na\r\nb\r\n"),
            (Reply::Bulk(Cow::Borrowed(b"")), b"$0\r\n\r\n"),
            (Reply::Nil, b"$-1\r\n"),
            (
                Reply::Array(vec![Reply::Integer(1), Reply::Array(vec![]), Reply::Nil]),
                b"*3\r\n:1\r\n*0\r\n$-1\r\n",
            ),
        ];
        for (reply, wire) in cases {
            let mut out = Vec::new();
            reply.encode(&mut out);
            assert_eq!(out, wire, "{reply:?}: {:?}", String::from_utf8_lossy(&out));
            assert_eq!(reply.encoded_len(), wire.len(), "{reply:?}");
        }
        for n in [0, 9, 10, 99, 100, -1, -10, i64::MAX] {
            assert_eq!(Reply::Integer(n).encoded_len(), format!(":{n}\r\n").len());
        }
    }
}
