//! Kernel uevents, as they arrive on a `NETLINK_KOBJECT_UEVENT` socket bound to group 1
//! (the kernel's own events; udevd re-broadcasts on group 2 with a `libudev` header):
//! one datagram `ACTION@DEVPATH\0KEY=VALUE\0…` (`lib/kobject_uevent.c`). Pure code.
//!
//! What dom0's 6.1 kernel sends for a vif (measured in the lab, `busybox uevent` and
//! `xendevd monitor`), in this order when a backend directory appears:
//!
//! | action | subsystem | devpath | extra keys |
//! | --- | --- | --- | --- |
//! | add | xen-backend | /devices/vif-D-N | MODALIAS, XENBUS_TYPE=vif, XENBUS_PATH=backend/vif/D/N, XENBUS_BASE_PATH |
//! | add | net | /devices/vif-D-N/net/vifD.N | INTERFACE=vifD.N, IFINDEX |
//! | add | queues | …/queues/rx-0, tx-0 | |
//! | online | xen-backend | /devices/vif-D-N | as add, plus DRIVER=vif, script=…, vif=vifD.N |
//! | bind | xen-backend | /devices/vif-D-N | as online |
//!
//! and when the domain goes (its frontend directory disappears): `offline` (keys as
//! online), the queues' and the net device's `remove`, `unbind`, `remove`. netback sends
//! `online` from its probe (`backend_create_xenvif`), as soon as the backend directory
//! with `frontend`, `frontend-id`, `handle` and `script` exists; without `script` the
//! probe fails ("reading script", error -2) and no `online` comes.

use std::fmt;

/// One parsed uevent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub devpath: String,
    pub subsystem: String,
    pub seqnum: Option<u64>,
    /// Every `KEY=VALUE` field, in the kernel's order (ACTION, DEVPATH, … included).
    pub env: Vec<(String, String)>,
}

/// A datagram that is not a kernel uevent we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UeventError {
    #[error("empty datagram")]
    Empty,
    #[error("a udev daemon's message (libudev header), not the kernel's")]
    Libudev,
    #[error("the header {0:?} is not ACTION@DEVPATH")]
    BadHeader(String),
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("field {0:?} is not KEY=VALUE")]
    BadField(String),
    #[error("no {0} field")]
    Missing(&'static str),
    #[error("the header says {header:?} but the fields say {fields:?}")]
    HeaderMismatch { header: String, fields: String },
}

impl Uevent {
    /// Parse one datagram.
    pub fn parse(bytes: &[u8]) -> Result<Self, UeventError> {
        let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
        if bytes.is_empty() {
            return Err(UeventError::Empty);
        }
        let mut parts = bytes.split(|&b| b == 0);
        let header = parts.next().unwrap_or_default();
        let header = std::str::from_utf8(header).map_err(|_| UeventError::NotUtf8)?;
        if header == "libudev" {
            return Err(UeventError::Libudev);
        }
        let Some((head_action, head_devpath)) = header.split_once('@') else {
            return Err(UeventError::BadHeader(header.to_owned()));
        };
        let mut env = Vec::new();
        for part in parts {
            let field = std::str::from_utf8(part).map_err(|_| UeventError::NotUtf8)?;
            let Some((key, value)) = field.split_once('=') else {
                return Err(UeventError::BadField(field.to_owned()));
            };
            if key.is_empty() {
                return Err(UeventError::BadField(field.to_owned()));
            }
            env.push((key.to_owned(), value.to_owned()));
        }
        let get = |key: &'static str| {
            env.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .ok_or(UeventError::Missing(key))
        };
        let action = get("ACTION")?;
        let devpath = get("DEVPATH")?;
        let subsystem = get("SUBSYSTEM")?;
        if action != head_action || devpath != head_devpath {
            return Err(UeventError::HeaderMismatch {
                header: header.to_owned(),
                fields: format!("{action}@{devpath}"),
            });
        }
        let seqnum = get("SEQNUM").ok().and_then(|s| s.parse().ok());
        Ok(Self {
            action,
            devpath,
            subsystem,
            seqnum,
            env,
        })
    }

    /// The value of `key`, if the event has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Display for Uevent {
    /// `SEQNUM ACTION DEVPATH (SUBSYSTEM) KEY=VALUE …` without the keys already shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(seqnum) = self.seqnum {
            write!(f, "{seqnum} ")?;
        }
        write!(f, "{} {} ({})", self.action, self.devpath, self.subsystem)?;
        for (key, value) in &self.env {
            if !matches!(key.as_str(), "ACTION" | "DEVPATH" | "SUBSYSTEM" | "SEQNUM") {
                write!(f, " {key}={value}")?;
            }
        }
        Ok(())
    }
}

/// What a vif backend's `online`/`offline` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VifAction {
    Online,
    Offline,
}

/// An `online` or `offline` of a vif backend device (`xen-backend`, `vif-D-N`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VifEvent {
    pub action: VifAction,
    pub domid: u32,
    pub devid: u32,
    /// `XENBUS_PATH`: the backend directory relative to dom0's home
    /// (`backend/vif/D/N`), which is how dom0's Xenstore connection can name it.
    pub backend: String,
    /// The backend network device (`vif=`), `vifD.N` unless renamed.
    pub vif: String,
    pub seqnum: Option<u64>,
}

/// What xendevd makes of a uevent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relevant {
    /// A vif backend came online or goes offline.
    Vif(VifEvent),
    /// A network device went away (`net` `remove`): forget it if it was ours.
    NetRemoved(String),
    /// Anything else.
    Other,
}

/// A vif event whose fields do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("vif uevent {devpath} {action}: {why}")]
pub struct BadVifEvent {
    pub devpath: String,
    pub action: String,
    pub why: String,
}

/// Sort a uevent: a vif backend's online/offline, a removed network device, or other.
pub fn classify(event: &Uevent) -> Result<Relevant, BadVifEvent> {
    if event.subsystem == "net" && event.action == "remove" {
        return Ok(match event.get("INTERFACE") {
            Some(name) => Relevant::NetRemoved(name.to_owned()),
            None => Relevant::Other,
        });
    }
    if event.subsystem != "xen-backend" || event.get("XENBUS_TYPE") != Some("vif") {
        return Ok(Relevant::Other);
    }
    let action = match event.action.as_str() {
        "online" => VifAction::Online,
        "offline" => VifAction::Offline,
        _ => return Ok(Relevant::Other),
    };
    let bad = |why: String| BadVifEvent {
        devpath: event.devpath.clone(),
        action: event.action.clone(),
        why,
    };
    let backend = event
        .get("XENBUS_PATH")
        .ok_or_else(|| bad("no XENBUS_PATH".into()))?;
    let (domid, devid) = backend_ids(backend).ok_or_else(|| {
        bad(format!(
            "XENBUS_PATH {backend:?} is not backend/vif/DOMID/DEVID"
        ))
    })?;
    // The device is named `vif-DOMID-DEVID` (xenbus_probe_backend.c, backend_bus_id).
    let expected = format!("/devices/vif-{domid}-{devid}");
    if event.devpath != expected {
        return Err(bad(format!(
            "DEVPATH does not match XENBUS_PATH {backend:?} (expected {expected})"
        )));
    }
    let vif = event
        .get("vif")
        .ok_or_else(|| bad("no vif= (netback had no network device)".into()))?;
    crate::vif::check_ifname(vif).map_err(|why| bad(format!("vif={vif:?}: {why}")))?;
    Ok(Relevant::Vif(VifEvent {
        action,
        domid,
        devid,
        backend: backend.to_owned(),
        vif: vif.to_owned(),
        seqnum: event.seqnum,
    }))
}

/// `backend/vif/DOMID/DEVID` (optionally absolute, `/local/domain/0/backend/…`).
fn backend_ids(path: &str) -> Option<(u32, u32)> {
    let relative = path.strip_prefix("/local/domain/0/").unwrap_or(path);
    let mut parts = relative.split('/');
    let (Some("backend"), Some("vif"), Some(domid), Some(devid), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    Some((number(domid)?, number(devid)?))
}

/// A decimal number as Xenstore and the kernel write it: digits only, no sign, no
/// leading zero.
pub fn number(text: &str) -> Option<u32> {
    if text.is_empty()
        || !text.bytes().all(|b| b.is_ascii_digit())
        || (text.len() > 1 && text.starts_with('0'))
    {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Datagrams as dom0's kernel (Debian 6.1) sent them in the lab (`xendevd monitor
    /// --raw`), for a vif whose backend directory was written by hand for domain 1,
    /// chaos's way (`script=/bin/true`), then for a vif of xl's (domain 2).
    pub(crate) const ONLINE: &[u8] = b"online@/devices/vif-1-0\x00ACTION=online\x00DEVPATH=/devices/vif-1-0\x00SUBSYSTEM=xen-backend\x00DRIVER=vif\x00MODALIAS=xen-backend:vif\x00XENBUS_TYPE=vif\x00XENBUS_PATH=backend/vif/1/0\x00XENBUS_BASE_PATH=backend\x00script=/bin/true\x00vif=vif1.0\x00SEQNUM=724\x00";
    const OFFLINE: &[u8] = b"offline@/devices/vif-1-0\x00ACTION=offline\x00DEVPATH=/devices/vif-1-0\x00SUBSYSTEM=xen-backend\x00DRIVER=vif\x00MODALIAS=xen-backend:vif\x00XENBUS_TYPE=vif\x00XENBUS_PATH=backend/vif/1/0\x00XENBUS_BASE_PATH=backend\x00script=/bin/true\x00vif=vif1.0\x00SEQNUM=741\x00";
    const ADD: &[u8] = b"add@/devices/vif-1-0\x00ACTION=add\x00DEVPATH=/devices/vif-1-0\x00SUBSYSTEM=xen-backend\x00MODALIAS=xen-backend:vif\x00XENBUS_TYPE=vif\x00XENBUS_PATH=backend/vif/1/0\x00XENBUS_BASE_PATH=backend\x00SEQNUM=720\x00";
    const BIND: &[u8] = b"bind@/devices/vif-1-0\x00ACTION=bind\x00DEVPATH=/devices/vif-1-0\x00SUBSYSTEM=xen-backend\x00DRIVER=vif\x00MODALIAS=xen-backend:vif\x00XENBUS_TYPE=vif\x00XENBUS_PATH=backend/vif/1/0\x00XENBUS_BASE_PATH=backend\x00script=/bin/true\x00vif=vif1.0\x00SEQNUM=725\x00";
    const NET_ADD: &[u8] = b"add@/devices/vif-1-0/net/vif1.0\x00ACTION=add\x00DEVPATH=/devices/vif-1-0/net/vif1.0\x00SUBSYSTEM=net\x00INTERFACE=vif1.0\x00IFINDEX=4\x00SEQNUM=721\x00";
    const NET_REMOVE: &[u8] = b"remove@/devices/vif-1-0/net/vif1.0\x00ACTION=remove\x00DEVPATH=/devices/vif-1-0/net/vif1.0\x00SUBSYSTEM=net\x00INTERFACE=vif1.0\x00IFINDEX=4\x00SEQNUM=744\x00";
    const QUEUE_ADD: &[u8] = b"add@/devices/vif-1-0/net/vif1.0/queues/rx-0\x00ACTION=add\x00DEVPATH=/devices/vif-1-0/net/vif1.0/queues/rx-0\x00SUBSYSTEM=queues\x00SEQNUM=722\x00";
    const CONSOLE_ADD: &[u8] = b"add@/devices/console-1-0\x00ACTION=add\x00DEVPATH=/devices/console-1-0\x00SUBSYSTEM=xen-backend\x00MODALIAS=xen-backend:console\x00XENBUS_TYPE=console\x00XENBUS_PATH=backend/console/1/0\x00XENBUS_BASE_PATH=backend\x00SEQNUM=719\x00";
    const XL_ONLINE: &[u8] = b"online@/devices/vif-2-0\x00ACTION=online\x00DEVPATH=/devices/vif-2-0\x00SUBSYSTEM=xen-backend\x00DRIVER=vif\x00MODALIAS=xen-backend:vif\x00XENBUS_TYPE=vif\x00XENBUS_PATH=backend/vif/2/0\x00XENBUS_BASE_PATH=backend\x00script=/etc/xen/scripts/vif-bridge\x00vif=vif2.0\x00SEQNUM=731\x00";

    #[test]
    fn online_of_a_vif() {
        let event = Uevent::parse(ONLINE).unwrap();
        assert_eq!(event.action, "online");
        assert_eq!(event.devpath, "/devices/vif-1-0");
        assert_eq!(event.subsystem, "xen-backend");
        assert_eq!(event.seqnum, Some(724));
        assert_eq!(event.get("script"), Some("/bin/true"));
        assert_eq!(event.get("nothing"), None);
        assert_eq!(
            classify(&event).unwrap(),
            Relevant::Vif(VifEvent {
                action: VifAction::Online,
                domid: 1,
                devid: 0,
                backend: "backend/vif/1/0".into(),
                vif: "vif1.0".into(),
                seqnum: Some(724),
            })
        );
        assert_eq!(
            event.to_string(),
            "724 online /devices/vif-1-0 (xen-backend) DRIVER=vif MODALIAS=xen-backend:vif \
             XENBUS_TYPE=vif XENBUS_PATH=backend/vif/1/0 XENBUS_BASE_PATH=backend \
             script=/bin/true vif=vif1.0"
        );
    }

    #[test]
    fn offline_add_and_net_remove() {
        let Relevant::Vif(offline) = classify(&Uevent::parse(OFFLINE).unwrap()).unwrap() else {
            panic!("offline is a vif event");
        };
        assert_eq!(offline.action, VifAction::Offline);
        // xl's vif looks the same but for its script: the toolstack node tells them apart.
        let Relevant::Vif(xl) = classify(&Uevent::parse(XL_ONLINE).unwrap()).unwrap() else {
            panic!("xl's online is a vif event");
        };
        assert_eq!((xl.domid, xl.vif.as_str()), (2, "vif2.0"));
        for other in [ADD, BIND, NET_ADD, QUEUE_ADD, CONSOLE_ADD] {
            assert_eq!(
                classify(&Uevent::parse(other).unwrap()).unwrap(),
                Relevant::Other,
                "{}",
                other.escape_ascii()
            );
        }
        assert_eq!(
            classify(&Uevent::parse(NET_REMOVE).unwrap()).unwrap(),
            Relevant::NetRemoved("vif1.0".into())
        );
        // Without the trailing NUL it parses the same.
        assert_eq!(
            Uevent::parse(&ONLINE[..ONLINE.len() - 1]).unwrap(),
            Uevent::parse(ONLINE).unwrap()
        );
    }

    #[test]
    fn malformed_datagrams() {
        for (bytes, error) in [
            (&b""[..], UeventError::Empty),
            (b"\0", UeventError::Empty),
            (b"libudev\0\xfe\xed\xca\xfe", UeventError::Libudev),
            (
                b"online /devices/x\0ACTION=online\0",
                UeventError::BadHeader("online /devices/x".into()),
            ),
            (b"a@b\0\xff\0", UeventError::NotUtf8),
            (b"a@b\0ACTION\0", UeventError::BadField("ACTION".into())),
            (b"a@b\0=x\0", UeventError::BadField("=x".into())),
            (
                b"a@b\0ACTION=a\0DEVPATH=b\0",
                UeventError::Missing("SUBSYSTEM"),
            ),
            (
                b"add@/x\0ACTION=remove\0DEVPATH=/x\0SUBSYSTEM=net\0",
                UeventError::HeaderMismatch {
                    header: "add@/x".into(),
                    fields: "remove@/x".into(),
                },
            ),
        ] {
            assert_eq!(Uevent::parse(bytes), Err(error), "{bytes:?}");
        }
        // A value may hold `=` and `@`.
        let event = Uevent::parse(b"a@/b\0ACTION=a\0DEVPATH=/b\0SUBSYSTEM=s\0K=x=y@z\0").unwrap();
        assert_eq!(event.get("K"), Some("x=y@z"));
        assert_eq!(event.seqnum, None);
    }

    #[test]
    fn vif_events_that_do_not_fit() {
        let with = |from: &str, to: &str| {
            let text = String::from_utf8(ONLINE.to_vec())
                .unwrap()
                .replace(from, to);
            classify(&Uevent::parse(text.as_bytes()).unwrap())
        };
        for (from, to, why) in [
            (
                "XENBUS_PATH=backend/vif/1/0",
                "XENBUS_PATH=backend/vif/1",
                "is not backend/vif/DOMID/DEVID",
            ),
            (
                "XENBUS_PATH=backend/vif/1/0",
                "XENBUS_PATH=backend/vif/01/0",
                "is not backend/vif/DOMID/DEVID",
            ),
            (
                "XENBUS_PATH=backend/vif/1/0",
                "XENBUS_PATH=backend/vif/3/0",
                "DEVPATH does not match",
            ),
            ("XENBUS_PATH=backend/vif/1/0", "X=y", "no XENBUS_PATH"),
            ("\0vif=vif1.0", "", "no vif="),
            ("vif=vif1.0", "vif=a/b", "vif=\"a/b\""),
        ] {
            let err = with(from, to).unwrap_err().to_string();
            assert!(err.contains(why), "{from} → {to}: {err}");
        }
        // Events of other backends are not ours to judge.
        assert_eq!(
            with("XENBUS_TYPE=vif", "XENBUS_TYPE=vbd").unwrap(),
            Relevant::Other
        );
        assert_eq!(backend_ids("/local/domain/0/backend/vif/7/1"), Some((7, 1)));
    }

    #[test]
    fn numbers() {
        assert_eq!(number("0"), Some(0));
        assert_eq!(number("32751"), Some(32751));
        for bad in ["", "-1", "+1", "01", "1a", "99999999999"] {
            assert_eq!(number(bad), None, "{bad}");
        }
    }
}
