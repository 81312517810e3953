//! Requests and responses, as JSON.

use serde::{Deserialize, Serialize};

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Put a loop device in front of a disk image file, for domain `domid`.
    AttachDisk {
        path: String,
        readonly: bool,
        domid: u32,
    },
    /// Detach a loop device attached with `AttachDisk`.
    DetachDisk { device: String },
    /// Release everything held for a domain (its loop devices).
    ReleaseDomain { domid: u32 },
    /// What the daemon holds.
    Query,
}

/// A loop device the daemon attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// `/dev/loopN`.
    pub device: String,
    pub major: u32,
    pub minor: u32,
    /// The image file.
    pub path: String,
    pub readonly: bool,
    pub domid: u32,
}

/// A vif the daemon set up on a bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vif {
    /// `vifD.N`.
    pub name: String,
    pub bridge: String,
    pub domid: u32,
}

/// Everything the daemon holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub disks: Vec<Disk>,
    pub vifs: Vec<Vif>,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// `AttachDisk` succeeded.
    Disk(Disk),
    /// `Query`'s answer.
    State(State),
    /// `DetachDisk` or `ReleaseDomain` succeeded.
    Done,
    /// The request failed or was malformed; the message says why.
    Error(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes_are_stable() {
        let request = Request::AttachDisk {
            path: "/img".into(),
            readonly: true,
            domid: 3,
        };
        let line = serde_json::to_string(&request).unwrap();
        assert_eq!(
            line,
            r#"{"op":"attach_disk","path":"/img","readonly":true,"domid":3}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), request);
        assert_eq!(
            serde_json::to_string(&Request::Query).unwrap(),
            r#"{"op":"query"}"#
        );
        assert_eq!(serde_json::to_string(&Response::Done).unwrap(), r#""done""#);
        assert_eq!(
            serde_json::to_string(&Response::Error("no".into())).unwrap(),
            r#"{"error":"no"}"#
        );
    }

    #[test]
    fn malformed_requests_are_refused() {
        for bad in [
            "",
            "{}",
            r#"{"op":"format_disk"}"#,
            r#"{"op":"attach_disk","path":"/img"}"#,
            r#"{"op":"detach_disk","device":"/dev/loop0","extra":1}"#,
            r#"{"op":"release_domain","domid":-1}"#,
            "[1,2,3]",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }
}
