//! The keys and values, and the commands that act on them.
//!
//! Keys and values are binary-safe byte strings. Their memory is budgeted: each entry
//! costs its key and value plus [`ENTRY_OVERHEAD`], and a write that would take the
//! total over the budget is refused with Redis's `OOM` error (a write that shrinks is
//! always allowed). Replies and error texts follow Redis 7's, so that `redis-cli` and
//! client libraries work unchanged.
//!
//! Commands: `PING [msg]`, `ECHO msg`, `SET key value [NX|XX] [GET]`, `GET key`,
//! `DEL key…`, `EXISTS key…`, `INCR`/`DECR key`, `INCRBY`/`DECRBY key n`,
//! `APPEND key value`, `STRLEN key`, `DBSIZE`, `FLUSHALL [ASYNC|SYNC]`, `SAVE`,
//! `SELECT 0`, `COMMAND [COUNT|LIST|INFO…|DOCS…|HELP]`, `HELLO [2]`, `INFO [section…]`,
//! `QUIT`.
//! Keys do not expire: `SET`'s `EX`/`PX`/… options are refused by name.

use alloc::borrow::Cow;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::resp::{MAX_BULK, Reply, parse_i64};

/// What an entry costs beyond its key and value bytes (tree node, two vectors), as the
/// budget counts it.
pub const ENTRY_OVERHEAD: usize = 64;

/// What the caller does after [`Store::execute`].
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Send the reply; read the next request.
    Reply(Reply<'a>),
    /// `QUIT`: send `+OK` and close the connection.
    Quit,
    /// `SAVE`: write a snapshot (the caller has the disk), then reply.
    Save,
    /// `INFO [section…]`: the caller knows the connections and the disk; it replies
    /// with [`info_text`] of the sections it has and these names.
    Info(Vec<&'a [u8]>),
}

/// A client's connection, as the commands see it.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    /// The connection's number (`HELLO` reports it).
    pub id: u64,
}

/// Why a value could not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

/// The data set.
#[derive(Debug)]
pub struct Store {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    used: usize,
    budget: usize,
}

/// A command: its name (lower case) and what `COMMAND` says about it. `arity` counts
/// the name; negative means "at least".
#[derive(Debug)]
struct Spec {
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        keys,
    }
}

const NO_KEYS: (i64, i64, i64) = (0, 0, 0);
const ONE_KEY: (i64, i64, i64) = (1, 1, 1);
const ALL_KEYS: (i64, i64, i64) = (1, -1, 1);

const COMMANDS: &[Spec] = &[
    spec("append", 3, &["write", "denyoom", "fast"], ONE_KEY),
    spec("command", -1, &["loading", "stale"], NO_KEYS),
    spec("dbsize", 1, &["readonly", "fast"], NO_KEYS),
    spec("decr", 2, &["write", "denyoom", "fast"], ONE_KEY),
    spec("decrby", 3, &["write", "denyoom", "fast"], ONE_KEY),
    spec("del", -2, &["write"], ALL_KEYS),
    spec("echo", 2, &["fast"], NO_KEYS),
    spec("exists", -2, &["readonly", "fast"], ALL_KEYS),
    spec("flushall", -1, &["write"], NO_KEYS),
    spec("get", 2, &["readonly", "fast"], ONE_KEY),
    spec(
        "hello",
        -1,
        &["noscript", "loading", "stale", "fast"],
        NO_KEYS,
    ),
    spec("incr", 2, &["write", "denyoom", "fast"], ONE_KEY),
    spec("incrby", 3, &["write", "denyoom", "fast"], ONE_KEY),
    spec("info", -1, &["loading", "stale"], NO_KEYS),
    spec("ping", -1, &["fast"], NO_KEYS),
    spec(
        "quit",
        -1,
        &["noscript", "loading", "stale", "fast"],
        NO_KEYS,
    ),
    spec("save", 1, &["admin", "noscript"], NO_KEYS),
    spec("select", 2, &["loading", "stale", "fast"], NO_KEYS),
    spec("set", -3, &["write", "denyoom"], ONE_KEY),
    spec("strlen", 2, &["readonly", "fast"], ONE_KEY),
];

fn error(text: &str) -> Reply<'static> {
    Reply::Error(String::from(text))
}

const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
const OVERFLOW: &str = "ERR increment or decrement would overflow";
const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";
const TOO_LONG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";
const SYNTAX: &str = "ERR syntax error";

/// Redis's reply to a command it does not know: the name and the first arguments
/// quoted, at most 128 bytes of each part.
fn unknown_command(args: &[&[u8]]) -> Reply<'static> {
    let mut quoted = String::new();
    for arg in &args[1..] {
        if quoted.len() >= 128 {
            break;
        }
        let room = 128 - quoted.len();
        let text = String::from_utf8_lossy(&arg[..arg.len().min(room)]);
        quoted.push_str(&format!("'{text}' "));
    }
    let name = String::from_utf8_lossy(&args[0][..args[0].len().min(128)]);
    Reply::Error(format!(
        "ERR unknown command '{name}', with args beginning with: {quoted}"
    ))
}

fn cost(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

impl Store {
    /// An empty store whose entries may take `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Self {
            map: BTreeMap::new(),
            used: 0,
            budget,
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes the entries take, as the budget counts them.
    pub fn used(&self) -> usize {
        self.used
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.map
            .iter()
            .map(|(key, value)| (key.as_slice(), value.as_slice()))
    }

    /// Set `key` to `value` if the budget allows (loading a snapshot).
    pub fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), OverBudget> {
        self.reserve(&key, value.len())?;
        self.put(key, value);
        Ok(())
    }

    /// Check that storing a value of `new_len` bytes under `key` keeps within the budget.
    fn reserve(&self, key: &[u8], new_len: usize) -> Result<(), OverBudget> {
        let old = self.map.get(key).map_or(0, |value| cost(key, value));
        let new = key.len() + new_len + ENTRY_OVERHEAD;
        if new > old && self.used - old + new > self.budget {
            return Err(OverBudget);
        }
        Ok(())
    }

    /// Store, after [`Store::reserve`] said yes; the value it replaced.
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Option<Vec<u8>> {
        let added = cost(&key, &value);
        let key_len = key.len();
        let old = self.map.insert(key, value);
        self.used += added;
        if let Some(old) = &old {
            self.used -= key_len + old.len() + ENTRY_OVERHEAD;
        }
        old
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        match self.map.remove_entry(key) {
            Some((key, value)) => {
                self.used -= cost(&key, &value);
                true
            }
            None => false,
        }
    }

    /// Run one request (its arguments, the command name first; never empty).
    pub fn execute<'a>(&'a mut self, session: &Session, args: &[&'a [u8]]) -> Outcome<'a> {
        let Some(&name) = args.first() else {
            return Outcome::Reply(error("ERR empty command"));
        };
        let Some(spec) = find(name) else {
            return Outcome::Reply(unknown_command(args));
        };
        let argc = args.len() as i64;
        if (spec.arity > 0 && argc != spec.arity) || (spec.arity < 0 && argc < -spec.arity) {
            return Outcome::Reply(Reply::Error(format!(
                "ERR wrong number of arguments for '{}' command",
                spec.name
            )));
        }
        let reply = match spec.name {
            "ping" => match args.get(1) {
                None => Reply::Simple("PONG"),
                Some(_) if args.len() > 2 => Reply::Error(String::from(
                    "ERR wrong number of arguments for 'ping' command",
                )),
                Some(message) => Reply::Bulk(Cow::Borrowed(message)),
            },
            "echo" => Reply::Bulk(Cow::Borrowed(args[1])),
            "set" => self.set(args),
            "get" => match self.map.get(args[1]) {
                Some(value) => Reply::Bulk(Cow::Borrowed(value)),
                None => Reply::Nil,
            },
            "del" => Reply::Integer(args[1..].iter().filter(|key| self.remove(key)).count() as i64),
            "exists" => Reply::Integer(
                args[1..]
                    .iter()
                    .filter(|key| self.map.contains_key(**key))
                    .count() as i64,
            ),
            "incr" => self.increment(args[1], 1),
            "decr" => self.increment(args[1], -1),
            "incrby" | "decrby" => match parse_i64(args[2]) {
                None => error(NOT_AN_INTEGER),
                Some(by) if spec.name == "incrby" => self.increment(args[1], by),
                Some(by) => match by.checked_neg() {
                    Some(by) => self.increment(args[1], by),
                    None => error("ERR decrement would overflow"),
                },
            },
            "append" => self.append(args[1], args[2]),
            "strlen" => Reply::Integer(self.map.get(args[1]).map_or(0, Vec::len) as i64),
            "dbsize" => Reply::Integer(self.map.len() as i64),
            "flushall" => match args.get(1) {
                Some(mode)
                    if args.len() > 2
                        || !(mode.eq_ignore_ascii_case(b"async")
                            || mode.eq_ignore_ascii_case(b"sync")) =>
                {
                    error(SYNTAX)
                }
                _ => {
                    self.map.clear();
                    self.used = 0;
                    Reply::Simple("OK")
                }
            },
            "save" => return Outcome::Save,
            "info" => return Outcome::Info(args[1..].to_vec()),
            "quit" => return Outcome::Quit,
            "select" => match parse_i64(args[1]) {
                None => error(NOT_AN_INTEGER),
                Some(0) => Reply::Simple("OK"),
                Some(_) => error("ERR DB index is out of range"),
            },
            "command" => command(args),
            "hello" => hello(session, args),
            other => unreachable!("command {other} is in the table but not dispatched"),
        };
        Outcome::Reply(reply)
    }

    fn set<'a>(&'a mut self, args: &[&'a [u8]]) -> Reply<'a> {
        let (key, value) = (args[1], args[2]);
        let (mut nx, mut xx, mut get) = (false, false, false);
        for option in &args[3..] {
            let upper = option.to_ascii_uppercase();
            match upper.as_slice() {
                b"NX" if !xx => nx = true,
                b"XX" if !nx => xx = true,
                b"GET" => get = true,
                b"EX" | b"PX" | b"EXAT" | b"PXAT" | b"KEEPTTL" => {
                    return Reply::Error(format!(
                        "ERR kvstore keeps no expiry times: SET option '{}' is not supported",
                        String::from_utf8_lossy(option)
                    ));
                }
                _ => return error(SYNTAX),
            }
        }
        let exists = self.map.contains_key(key);
        if (nx && exists) || (xx && !exists) {
            return if get {
                self.map
                    .get(key)
                    .map_or(Reply::Nil, |old| Reply::Bulk(Cow::Owned(old.clone())))
            } else {
                Reply::Nil
            };
        }
        if self.reserve(key, value.len()).is_err() {
            return error(OOM);
        }
        let old = self.put(key.to_vec(), value.to_vec());
        match (get, old) {
            (false, _) => Reply::Simple("OK"),
            (true, Some(old)) => Reply::Bulk(Cow::Owned(old)),
            (true, None) => Reply::Nil,
        }
    }

    fn increment(&mut self, key: &[u8], by: i64) -> Reply<'static> {
        let current = match self.map.get(key) {
            None => 0,
            Some(value) => match parse_i64(value) {
                Some(n) => n,
                None => return error(NOT_AN_INTEGER),
            },
        };
        let Some(next) = current.checked_add(by) else {
            return error(OVERFLOW);
        };
        let text = format!("{next}").into_bytes();
        if self.reserve(key, text.len()).is_err() {
            return error(OOM);
        }
        self.put(key.to_vec(), text);
        Reply::Integer(next)
    }

    fn append(&mut self, key: &[u8], tail: &[u8]) -> Reply<'static> {
        let len = self.map.get(key).map_or(0, Vec::len) + tail.len();
        if len > MAX_BULK {
            return error(TOO_LONG);
        }
        if self.reserve(key, len).is_err() {
            return error(OOM);
        }
        match self.map.get_mut(key) {
            Some(value) => {
                value.extend_from_slice(tail);
                self.used += tail.len();
            }
            None => {
                self.put(key.to_vec(), tail.to_vec());
            }
        }
        Reply::Integer(len as i64)
    }
}

/// A section of `INFO`: its name and its `field:value` lines.
pub type InfoSection = (&'static str, Vec<(&'static str, String)>);

/// `INFO`'s text as Redis lays it out (`# Name` headers, `field:value` lines, CR LF, a
/// blank line between sections): the sections `requested` names (any case), or all of
/// them for none, `all`, `default` or `everything`; an unknown name adds nothing.
pub fn info_text(requested: &[&[u8]], sections: &[InfoSection]) -> Vec<u8> {
    let everything = requested.is_empty()
        || requested.iter().any(|name| {
            [&b"all"[..], b"default", b"everything"]
                .iter()
                .any(|all| name.eq_ignore_ascii_case(all))
        });
    let mut text = Vec::new();
    for (name, fields) in sections {
        if !everything
            && !requested
                .iter()
                .any(|wanted| wanted.eq_ignore_ascii_case(name.as_bytes()))
        {
            continue;
        }
        if !text.is_empty() {
            text.extend_from_slice(b"\r\n");
        }
        text.extend_from_slice(format!("# {name}\r\n").as_bytes());
        for (field, value) in fields {
            text.extend_from_slice(format!("{field}:{value}\r\n").as_bytes());
        }
    }
    text
}

/// `COMMAND`'s description of a command: name, arity, flags, first key, last key, step.
fn command_info(spec: &Spec) -> Reply<'static> {
    Reply::Array(vec![
        Reply::Bulk(Cow::Borrowed(spec.name.as_bytes())),
        Reply::Integer(spec.arity),
        Reply::Array(spec.flags.iter().map(|&flag| Reply::Simple(flag)).collect()),
        Reply::Integer(spec.keys.0),
        Reply::Integer(spec.keys.1),
        Reply::Integer(spec.keys.2),
    ])
}

fn find(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .find(|spec| spec.name.as_bytes().eq_ignore_ascii_case(name))
}

fn command<'a>(args: &[&'a [u8]]) -> Reply<'a> {
    let Some(sub) = args.get(1) else {
        return Reply::Array(COMMANDS.iter().map(command_info).collect());
    };
    let sub_upper = sub.to_ascii_uppercase();
    let arity_error = || {
        Reply::Error(format!(
            "ERR wrong number of arguments for 'command|{}' command",
            String::from_utf8_lossy(&sub.to_ascii_lowercase())
        ))
    };
    match sub_upper.as_slice() {
        b"COUNT" if args.len() == 2 => Reply::Integer(COMMANDS.len() as i64),
        b"LIST" if args.len() == 2 => Reply::Array(
            COMMANDS
                .iter()
                .map(|spec| Reply::Bulk(Cow::Borrowed(spec.name.as_bytes())))
                .collect(),
        ),
        b"COUNT" | b"LIST" | b"HELP" if args.len() != 2 => arity_error(),
        b"INFO" if args.len() == 2 => Reply::Array(COMMANDS.iter().map(command_info).collect()),
        b"INFO" => Reply::Array(
            args[2..]
                .iter()
                .map(|name| find(name).map_or(Reply::Nil, command_info))
                .collect(),
        ),
        // kvstore has no documentation to give; an empty map is a valid answer, and
        // redis-cli asks for it at start.
        b"DOCS" => Reply::Array(Vec::new()),
        b"HELP" => Reply::Array(
            [
                "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "(no subcommand)",
                "    Return details about all commands.",
                "COUNT",
                "    Return the total number of commands.",
                "LIST",
                "    Return the names of all commands.",
                "INFO [<command-name> ...]",
                "    Return details about the given commands, or all of them.",
                "DOCS [<command-name> ...]",
                "    kvstore has no documentation: an empty reply.",
                "HELP",
                "    Print this help.",
            ]
            .into_iter()
            .map(Reply::Simple)
            .collect(),
        ),
        _ => Reply::Error(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(&sub[..sub.len().min(128)])
        )),
    }
}

/// `HELLO [protover]`: RESP2 only, no users or client names.
fn hello<'a>(session: &Session, args: &[&'a [u8]]) -> Reply<'a> {
    if let Some(version) = args.get(1) {
        match parse_i64(version) {
            None => return error("ERR Protocol version is not an integer or out of range"),
            Some(2) => {}
            Some(_) => return error("NOPROTO unsupported protocol version"),
        }
    }
    if let Some(option) = args.get(2) {
        return Reply::Error(format!(
            "ERR kvstore has no users or client names: HELLO option '{}' is not supported",
            String::from_utf8_lossy(&option[..option.len().min(128)])
        ));
    }
    let text = |text: &'static str| Reply::Bulk(Cow::Borrowed(text.as_bytes()));
    Reply::Array(vec![
        text("server"),
        text("kvstore"),
        text("version"),
        text(env!("CARGO_PKG_VERSION")),
        text("proto"),
        Reply::Integer(2),
        text("id"),
        Reply::Integer(session.id as i64),
        text("mode"),
        text("standalone"),
        text("role"),
        text("master"),
        text("modules"),
        Reply::Array(Vec::new()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: Session = Session { id: 7 };

    /// The wire bytes of the reply to `args`, as text; `QUIT`/`SAVE` for those outcomes.
    fn run(store: &mut Store, args: &[&[u8]]) -> String {
        match store.execute(&SESSION, args) {
            Outcome::Reply(reply) => {
                let mut out = Vec::new();
                reply.encode(&mut out);
                assert_eq!(out.len(), reply.encoded_len(), "{args:?}");
                String::from_utf8_lossy(&out).into_owned()
            }
            Outcome::Quit => String::from("QUIT"),
            Outcome::Save => String::from("SAVE"),
            Outcome::Info(sections) => format!(
                "INFO [{}]",
                sections
                    .iter()
                    .map(|name| String::from_utf8_lossy(name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn words(line: &str) -> Vec<&[u8]> {
        line.split(' ').map(str::as_bytes).collect()
    }

    /// Run each `(request, expected reply)` in order on `store`.
    fn expect(store: &mut Store, script: &[(&str, &str)]) {
        for (request, expected) in script {
            assert_eq!(run(store, &words(request)), *expected, "{request}");
        }
    }

    #[test]
    fn set_get_del_exists_dbsize() {
        let mut store = Store::new(1 << 20);
        expect(
            &mut store,
            &[
                ("PING", "+PONG\r\n"),
                ("ping hi", "$2\r\nhi\r\n"),
                ("GET k", "$-1\r\n"),
                ("SET k v1", "+OK\r\n"),
                ("get k", "$2\r\nv1\r\n"),
                ("SET k value2", "+OK\r\n"),
                ("GET k", "$6\r\nvalue2\r\n"),
                ("SET other x", "+OK\r\n"),
                ("DBSIZE", ":2\r\n"),
                ("EXISTS k other missing k", ":3\r\n"),
                ("DEL k missing other k", ":2\r\n"),
                ("DBSIZE", ":0\r\n"),
                ("ECHO hello", "$5\r\nhello\r\n"),
                ("SAVE", "SAVE"),
                ("QUIT", "QUIT"),
                ("INFO", "INFO []"),
                ("info memory Clients", "INFO [memory, Clients]"),
                ("SELECT 0", "+OK\r\n"),
                ("SELECT 1", "-ERR DB index is out of range\r\n"),
            ],
        );
        assert_eq!(store.used(), 0, "every entry's cost was given back");
    }

    #[test]
    fn set_options() {
        let mut store = Store::new(1 << 20);
        expect(
            &mut store,
            &[
                ("SET k a NX", "+OK\r\n"),
                ("SET k b NX", "$-1\r\n"),
                ("SET k b NX GET", "$1\r\na\r\n"),
                ("SET k c XX GET", "$1\r\na\r\n"),
                ("SET new c XX", "$-1\r\n"),
                ("SET new c get", "$-1\r\n"),
                ("GET new", "$1\r\nc\r\n"),
                ("SET k v NX XX", "-ERR syntax error\r\n"),
                ("SET k v FOO", "-ERR syntax error\r\n"),
                (
                    "SET k v EX 10",
                    "-ERR kvstore keeps no expiry times: SET option 'EX' is not supported\r\n",
                ),
                ("GET k", "$1\r\nc\r\n"),
            ],
        );
    }

    #[test]
    fn counters() {
        let mut store = Store::new(1 << 20);
        expect(
            &mut store,
            &[
                ("INCR n", ":1\r\n"),
                ("INCR n", ":2\r\n"),
                ("INCRBY n 40", ":42\r\n"),
                ("DECRBY n 50", ":-8\r\n"),
                ("DECR n", ":-9\r\n"),
                ("GET n", "$2\r\n-9\r\n"),
                ("SET s abc", "+OK\r\n"),
                ("INCR s", "-ERR value is not an integer or out of range\r\n"),
                ("SET s 01", "+OK\r\n"),
                ("INCR s", "-ERR value is not an integer or out of range\r\n"),
                (
                    "INCRBY n x",
                    "-ERR value is not an integer or out of range\r\n",
                ),
                ("SET big 9223372036854775807", "+OK\r\n"),
                ("INCR big", "-ERR increment or decrement would overflow\r\n"),
                (
                    "DECRBY n -9223372036854775808",
                    "-ERR decrement would overflow\r\n",
                ),
                ("GET big", "$19\r\n9223372036854775807\r\n"),
                ("APPEND a xy", ":2\r\n"),
                ("APPEND a z", ":3\r\n"),
                ("STRLEN a", ":3\r\n"),
                ("STRLEN nothing", ":0\r\n"),
            ],
        );
    }

    #[test]
    fn errors_word_for_word_as_redis() {
        let mut store = Store::new(1 << 20);
        expect(
            &mut store,
            &[
                (
                    "FOO bar baz",
                    "-ERR unknown command 'FOO', with args beginning with: 'bar' 'baz' \r\n",
                ),
                (
                    "nosuch",
                    "-ERR unknown command 'nosuch', with args beginning with: \r\n",
                ),
                (
                    "GET",
                    "-ERR wrong number of arguments for 'get' command\r\n",
                ),
                (
                    "get a b",
                    "-ERR wrong number of arguments for 'get' command\r\n",
                ),
                (
                    "SET k",
                    "-ERR wrong number of arguments for 'set' command\r\n",
                ),
                (
                    "DEL",
                    "-ERR wrong number of arguments for 'del' command\r\n",
                ),
                (
                    "PING a b",
                    "-ERR wrong number of arguments for 'ping' command\r\n",
                ),
                (
                    "DBSIZE x",
                    "-ERR wrong number of arguments for 'dbsize' command\r\n",
                ),
                (
                    "SAVE now",
                    "-ERR wrong number of arguments for 'save' command\r\n",
                ),
                (
                    "COMMAND BOGUS",
                    "-ERR unknown subcommand 'BOGUS'. Try COMMAND HELP.\r\n",
                ),
                ("HELLO 3", "-NOPROTO unsupported protocol version\r\n"),
                (
                    "HELLO x",
                    "-ERR Protocol version is not an integer or out of range\r\n",
                ),
            ],
        );
        // An unknown command quotes at most about 128 bytes of its arguments, and no
        // line break of the client's gets into the reply.
        let long = [b'a'; 300];
        let reply = run(&mut store, &[b"X\r\nY", &long, b"more"]);
        assert!(reply.starts_with("-ERR unknown command 'X  Y', with args beginning with: 'aaa"));
        assert!(!reply.contains("more") && reply.len() < 200, "{reply}");
        assert_eq!(reply.matches("\r\n").count(), 1, "{reply:?}");
    }

    #[test]
    fn values_are_binary_safe() {
        let mut store = Store::new(1 << 20);
        let key: Vec<u8> = vec![0, 0xff, b'\r', b'\n', b' '];
        let value: Vec<u8> = (0..=255).collect();
        assert_eq!(run(&mut store, &[b"SET", &key, &value]), "+OK\r\n");
        match store.execute(&SESSION, &[b"GET", &key]) {
            Outcome::Reply(Reply::Bulk(got)) => assert_eq!(*got, value),
            other => panic!("{other:?}"),
        }
        assert_eq!(store.entries().next(), Some((&key[..], &value[..])));
    }

    #[test]
    fn the_budget_refuses_growth_but_not_shrinking() {
        let mut store = Store::new(2 * ENTRY_OVERHEAD + 21);
        expect(
            &mut store,
            &[
                ("SET a 0123456789", "+OK\r\n"),
                ("SET b 012345678", "+OK\r\n"),
                (
                    "SET c x",
                    "-OOM command not allowed when used memory > 'maxmemory'.\r\n",
                ),
                (
                    "APPEND a x",
                    "-OOM command not allowed when used memory > 'maxmemory'.\r\n",
                ),
                ("SET a 1", "+OK\r\n"),
                ("INCR a", ":2\r\n"),
                ("APPEND b 9", ":10\r\n"),
                ("DEL b", ":1\r\n"),
                ("SET c x", "+OK\r\n"),
            ],
        );
        assert_eq!(store.used(), 2 * ENTRY_OVERHEAD + 2 + 2);
        assert_eq!(store.insert(b"d".to_vec(), vec![0; 100]), Err(OverBudget));
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn append_stops_at_the_largest_value() {
        let mut store = Store::new(4 << 20);
        let half = vec![b'x'; MAX_BULK / 2];
        assert_eq!(
            run(&mut store, &[b"APPEND", b"k", &half]),
            format!(":{}\r\n", MAX_BULK / 2)
        );
        assert_eq!(
            run(&mut store, &[b"APPEND", b"k", &half]),
            format!(":{MAX_BULK}\r\n")
        );
        assert_eq!(
            run(&mut store, &[b"APPEND", b"k", b"y"]),
            "-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n"
        );
    }

    #[test]
    fn command_and_hello_for_clients() {
        let mut store = Store::new(1 << 20);
        assert_eq!(run(&mut store, &words("COMMAND DOCS")), "*0\r\n");
        assert_eq!(
            run(&mut store, &words("command count")),
            format!(":{}\r\n", COMMANDS.len())
        );
        assert_eq!(
            run(&mut store, &words("COMMAND INFO get nosuch")),
            "*2\r\n*6\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n$-1\r\n"
        );
        let all = run(&mut store, &words("COMMAND"));
        assert!(
            all.starts_with(&format!("*{}\r\n", COMMANDS.len())),
            "{all}"
        );
        assert_eq!(
            run(&mut store, &words("COMMAND COUNT x")),
            "-ERR wrong number of arguments for 'command|count' command\r\n"
        );
        let hello = run(&mut store, &words("HELLO 2"));
        assert!(
            hello.starts_with("*14\r\n$6\r\nserver\r\n$7\r\nkvstore\r\n"),
            "{hello}"
        );
        assert!(
            hello.contains("$5\r\nproto\r\n:2\r\n$2\r\nid\r\n:7\r\n"),
            "{hello}"
        );
        assert_eq!(run(&mut store, &words("HELLO")), hello);
        // Every command in the table is dispatched (none hits the unreachable arm).
        for spec in COMMANDS {
            let mut args = vec![spec.name.as_bytes()];
            args.resize(spec.arity.unsigned_abs() as usize, b"0".as_slice());
            let _ = run(&mut store, &args);
        }
    }

    #[test]
    fn info_lays_out_sections_as_redis() {
        let sections: [InfoSection; 2] = [
            ("Server", vec![("kvstore_version", String::from("0.1.0"))]),
            (
                "Memory",
                vec![
                    ("used_memory", String::from("10")),
                    ("maxmemory", String::from("20")),
                ],
            ),
        ];
        let all = "# Server\r\nkvstore_version:0.1.0\r\n\r\n# Memory\r\nused_memory:10\r\nmaxmemory:20\r\n";
        assert_eq!(info_text(&[], &sections), all.as_bytes());
        assert_eq!(info_text(&[b"ALL"], &sections), all.as_bytes());
        assert_eq!(
            info_text(&[b"memory"], &sections),
            b"# Memory\r\nused_memory:10\r\nmaxmemory:20\r\n"
        );
        assert_eq!(info_text(&[b"nosuch"], &sections), b"");
    }

    #[test]
    fn flushall_empties_the_store() {
        let mut store = Store::new(1 << 20);
        expect(
            &mut store,
            &[
                ("SET a 1", "+OK\r\n"),
                ("FLUSHALL now", "-ERR syntax error\r\n"),
                ("DBSIZE", ":1\r\n"),
                ("FLUSHALL SYNC", "+OK\r\n"),
                ("DBSIZE", ":0\r\n"),
            ],
        );
        assert_eq!(store.used(), 0);
    }
}
