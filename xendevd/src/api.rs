//! Requests and responses, as JSON: one request line, one response line.
//!
//! The NoXS requests (`noxs_create`, `power`, `console`) serve chaos's NoXS device
//! method (`shared/design/noxs-v1.md` §3): xendevd is the back end of every device of
//! such a domain, console included, and no Xenstore is involved. `noxs_shell` and
//! `noxs_fill` split `noxs_create` in two for the chaos daemon's shells: the devices
//! made before the guest is known, then completed with its configuration.
//!
//! The NoXS words are xenproto's, the guest's own: a device's [`noxs::Kind`], its
//! block [`noxs::Entry`], a power request ([`noxs::Request`]) and a vif's [`Mac`]
//! (through xenproto's `serde` feature), so chaos, xendevd and the guest share one
//! vocabulary.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
pub use xenproto::netif::Mac;
use xenproto::noxs;

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
    /// Release everything held for a domain: its loop devices, its NoXS back ends and
    /// console (the console log stays on disk).
    ReleaseDomain { domid: u32 },
    /// What the daemon holds, all of it (answered with [`Response::State`]; its size
    /// grows with the guests: a caller that wants one domain asks [`Request::Domain`]
    /// or [`Request::DomainsNamed`], one that lists them [`Request::ListDomains`]).
    Query,
    /// NoXS domain `domid`, if it is served: [`Response::Domains`] with it, or empty.
    Domain { domid: u32 },
    /// The NoXS domains served under `name`: [`Response::Domains`], usually with one
    /// or none (a dying domain not yet released may share its name with a new one).
    DomainsNamed { name: String },
    /// Every NoXS domain served, in brief ([`Response::Listed`]): a few dozen bytes
    /// each, so that a list of every possible domain fits in one answer.
    ListDomains,
    /// Be the back end of a NoXS domain that is built but not yet unpaused: map its
    /// console ring (grant entry 0, seeded by the domain builder) and bind
    /// `console_port` (the guest's console port, allocated unbound for dom0); for each
    /// device grant a control page and reserve an event channel. Answered with
    /// [`Response::Noxs`], whose entries chaos writes into the guest's start_info.
    /// On an error nothing of the domain is kept.
    NoxsCreate {
        domid: u32,
        name: String,
        console_port: u32,
        devices: Vec<NoxsDevice>,
    },
    /// Make the devices of a NoXS domain whose guest is not known yet (a chaos daemon's
    /// *shell*: created, its memory populated, no kernel yet): per device a control
    /// page granted and an event channel reserved, and each vif's tap on its bridge; no
    /// console and no disk yet. [`Request::NoxsFill`] completes it. Answered with
    /// [`Response::Noxs`], whose entries stay the domain's. On an error nothing of the
    /// domain is kept.
    NoxsShell {
        domid: u32,
        name: String,
        devices: Vec<ShellDevice>,
    },
    /// Complete a shell made by `NoxsShell`, now built and not yet unpaused: the guest's
    /// name, its console (as for `NoxsCreate`), and its devices' configuration, one for
    /// one the shell's devices (a vif on the shell's bridge). Answered like
    /// `NoxsCreate`, with the shell's entries. On an error nothing of the domain is
    /// kept.
    NoxsFill {
        domid: u32,
        name: String,
        console_port: u32,
        devices: Vec<NoxsDevice>,
    },
    /// Offer the devices of served NoXS domain `domid` again (NoXS v1.1,
    /// `xenproto::noxs::reoffer`), as a restarted xendevd does: for a guest restored
    /// into a new domain, whose restored start_info page still names its old control
    /// pages. xendevd maps the guest's start_info page (grant 2), writes the entries of
    /// the control pages it made for `noxs_create`, bumps the generation and notifies
    /// the guest's re-offer port. Answered `Done`; [`Response::NotYet`] while the
    /// running guest has not granted its page yet (it does so early in its resume: ask
    /// again); an error otherwise.
    NoxsReoffer { domid: u32 },
    /// Give served NoXS domain `domid` the name `name` (a migration's two ends swap
    /// names this way). Answered `Done`.
    NoxsRename { domid: u32, name: String },
    /// Ask a NoXS domain, through its sysctl device, to power off, reboot, suspend or
    /// crash; answered `Done` once the guest acknowledged (`ack_seq`), or an error when
    /// it did not within `timeout_ms` (at most 5 minutes: longer is clamped). Waiting
    /// for the domain to shut down is the
    /// caller's part.
    Power {
        domid: u32,
        action: noxs::Request,
        timeout_ms: u32,
    },
    /// A NoXS domain's console: answered with `Response::Streaming`, then the
    /// connection carries the raw console bytes — what the log holds, then (with
    /// `follow`) new output — and closes when the log is done (without `follow`) or the
    /// domain is gone.
    ///
    /// With `input` (and `follow`) what the client sends after the request line goes
    /// to the guest's console as typed input, raw; without it (the default, as older
    /// clients ask) what the client sends is read and thrown away. Input is taken as
    /// fast as the guest reads it: past a few KiB that the guest has not read
    /// (`noxs::console::INPUT_LIMIT` beyond its ring) xendevd stops reading the client
    /// until it does. Closing the sending side ends the input, not the stream.
    Console {
        domid: u32,
        follow: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        input: bool,
    },
}

/// For `skip_serializing_if`: a flag that is off is left out, so that requests without
/// it are byte for byte what older clients send.
fn is_false(flag: &bool) -> bool {
    !*flag
}

/// A device of a NoXS domain, as chaos asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NoxsDevice {
    /// Power control (one per domain).
    Sysctl,
    /// A network interface: a tap device on `bridge`.
    Vif {
        devid: u32,
        /// `00:16:3e:xx:xx:xx`: a unicast address ([`station_mac`]).
        mac: Mac,
        bridge: String,
        /// The guest's address, given to it in the control page; none: it asks DHCP.
        ip: Option<Ipv4Addr>,
        prefix_len: Option<u8>,
        gateway: Option<Ipv4Addr>,
    },
    /// A disk: an image file or a block device.
    Vbd {
        devid: u32,
        target: String,
        readonly: bool,
    },
}

impl NoxsDevice {
    /// The device as a shell has it before its guest is known.
    pub fn shell(&self) -> ShellDevice {
        match self {
            Self::Sysctl => ShellDevice::Sysctl,
            Self::Vif { devid, bridge, .. } => ShellDevice::Vif {
                devid: *devid,
                bridge: bridge.clone(),
            },
            Self::Vbd { devid, .. } => ShellDevice::Vbd { devid: *devid },
        }
    }
}

/// A device of a NoXS shell ([`Request::NoxsShell`]): what is made before the guest's
/// configuration is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ShellDevice {
    Sysctl,
    /// A vif's tap on `bridge`; its MAC and address come with the guest.
    Vif {
        devid: u32,
        bridge: String,
    },
    /// A disk; its target comes with the guest.
    Vbd {
        devid: u32,
    },
}

/// Why a MAC address cannot be a vif's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StationMacError {
    #[error("{0} is a multicast address (the first byte is odd): a vif needs a unicast one")]
    Multicast(Mac),
    #[error("{0} is not a usable MAC address")]
    Zero(Mac),
}

/// `mac`, if it can be a station's (a vif's) address: unicast, not all zeros.
pub fn station_mac(mac: Mac) -> Result<Mac, StationMacError> {
    if mac.0[0] & 1 != 0 {
        Err(StationMacError::Multicast(mac))
    } else if mac.0 == [0; 6] {
        Err(StationMacError::Zero(mac))
    } else {
        Ok(mac)
    }
}

/// A NoXS domain the daemon serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoxsDomain {
    pub domid: u32,
    pub name: String,
    /// One per device, for the start_info block (`backend`: xendevd's domain, 0).
    pub entries: Vec<noxs::Entry>,
    /// Each device's state words, in `entries`' order: (back end, front end), Xenbus
    /// values.
    #[serde(default)]
    pub states: Vec<(u32, u32)>,
    /// When xendevd set the domain's back ends up (just before the toolstack unpaused
    /// it), in milliseconds since the Unix epoch: Xen keeps no creation time, and
    /// without Xenstore there is no `/vm/UUID/start_time` either.
    #[serde(default)]
    pub created_ms: u64,
    /// The devices as `noxs_create` (or `noxs_fill`) asked for them, in its order: what
    /// `chaos save` records of a NoXS guest so that its restore asks for the same
    /// (none for a shell, and from an older xendevd).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<NoxsDevice>,
}

/// A served NoXS domain in brief, for lists: what `chaos list` shows of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSummary {
    pub domid: u32,
    pub name: String,
    /// As [`NoxsDomain::created_ms`].
    pub created_ms: u64,
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
    /// The NoXS domains served (absent when none: the shape older clients know).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<NoxsDomain>,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// `AttachDisk` succeeded.
    Disk(Disk),
    /// `Query`'s answer.
    State(State),
    /// `NoxsCreate`, `NoxsShell` or `NoxsFill` succeeded.
    Noxs(NoxsDomain),
    /// `Domain` or `DomainsNamed`: the served domains that match.
    Domains(Vec<NoxsDomain>),
    /// `ListDomains`.
    Listed(Vec<DomainSummary>),
    /// `Console`: raw console bytes follow on the connection.
    Streaming,
    /// `DetachDisk`, `ReleaseDomain`, `NoxsReoffer` or `NoxsRename` succeeded.
    Done,
    /// The request cannot be served yet, for the reason given; the same request may
    /// succeed a little later (`NoxsReoffer` before the guest granted its page).
    NotYet(String),
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
            serde_json::to_string(&Response::State(State::default())).unwrap(),
            r#"{"state":{"disks":[],"vifs":[]}}"#
        );
        let create = Request::NoxsCreate {
            domid: 7,
            name: "daytime".into(),
            console_port: 2,
            devices: vec![
                NoxsDevice::Sysctl,
                NoxsDevice::Vif {
                    devid: 0,
                    mac: Mac([0x00, 0x16, 0x3e, 0, 0, 1]),
                    bridge: "xenbr0".into(),
                    ip: Some(Ipv4Addr::new(10, 0, 2, 16)),
                    prefix_len: Some(24),
                    gateway: None,
                },
            ],
        };
        let line = serde_json::to_string(&create).unwrap();
        assert_eq!(
            line,
            r#"{"op":"noxs_create","domid":7,"name":"daytime","console_port":2,"devices":[{"kind":"sysctl"},{"kind":"vif","devid":0,"mac":"00:16:3e:00:00:01","bridge":"xenbr0","ip":"10.0.2.16","prefix_len":24,"gateway":null}]}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), create);
        let shell = Request::NoxsShell {
            domid: 7,
            name: "chaos-shell-7".into(),
            devices: vec![
                ShellDevice::Sysctl,
                ShellDevice::Vif {
                    devid: 0,
                    bridge: "xenbr0".into(),
                },
                ShellDevice::Vbd { devid: 0 },
            ],
        };
        let line = serde_json::to_string(&shell).unwrap();
        assert_eq!(
            line,
            r#"{"op":"noxs_shell","domid":7,"name":"chaos-shell-7","devices":[{"kind":"sysctl"},{"kind":"vif","devid":0,"bridge":"xenbr0"},{"kind":"vbd","devid":0}]}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), shell);
        let Request::NoxsCreate { devices, .. } = &create else {
            unreachable!()
        };
        let fill = Request::NoxsFill {
            domid: 7,
            name: "daytime".into(),
            console_port: 2,
            devices: devices.clone(),
        };
        let line = serde_json::to_string(&fill).unwrap();
        assert!(line.starts_with(r#"{"op":"noxs_fill","domid":7,"name":"daytime","console_port":2,"devices":[{"kind":"sysctl"},"#), "{line}");
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), fill);
        assert_eq!(
            devices.iter().map(NoxsDevice::shell).collect::<Vec<_>>(),
            [
                ShellDevice::Sysctl,
                ShellDevice::Vif {
                    devid: 0,
                    bridge: "xenbr0".into()
                }
            ]
        );
        assert_eq!(
            serde_json::to_string(&Request::Power {
                domid: 7,
                action: noxs::Request::Poweroff,
                timeout_ms: 5000
            })
            .unwrap(),
            r#"{"op":"power","domid":7,"action":"poweroff","timeout_ms":5000}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::Streaming).unwrap(),
            r#""streaming""#
        );
        // A console request without input is what older clients send, and they are
        // understood as before; input is a flag of its own.
        for (request, line) in [
            (
                Request::Console {
                    domid: 4,
                    follow: true,
                    input: false,
                },
                r#"{"op":"console","domid":4,"follow":true}"#,
            ),
            (
                Request::Console {
                    domid: 4,
                    follow: true,
                    input: true,
                },
                r#"{"op":"console","domid":4,"follow":true,"input":true}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&request).unwrap(), line);
            assert_eq!(serde_json::from_str::<Request>(line).unwrap(), request);
        }
        assert_eq!(
            serde_json::from_str::<Request>(
                r#"{"op":"console","domid":4,"follow":false,"input":false}"#
            )
            .unwrap(),
            Request::Console {
                domid: 4,
                follow: false,
                input: false
            }
        );
        assert_eq!(
            serde_json::to_string(&Response::Error("no".into())).unwrap(),
            r#"{"error":"no"}"#
        );
    }

    /// The per-domain, by-name and list queries: their requests and answers on the
    /// wire, and an empty answer as it looks.
    #[test]
    fn domain_queries_are_stable() {
        for (request, line) in [
            (Request::Domain { domid: 7 }, r#"{"op":"domain","domid":7}"#),
            (
                Request::DomainsNamed {
                    name: "noop-3".into(),
                },
                r#"{"op":"domains_named","name":"noop-3"}"#,
            ),
            (Request::ListDomains, r#"{"op":"list_domains"}"#),
        ] {
            assert_eq!(serde_json::to_string(&request).unwrap(), line);
            assert_eq!(serde_json::from_str::<Request>(line).unwrap(), request);
        }
        let served = NoxsDomain {
            domid: 7,
            name: "noop-3".into(),
            entries: vec![noxs::Entry {
                kind: noxs::Kind::Sysctl,
                backend: 0,
                devid: 0,
                ctrl_gref: 9,
                ctrl_port: 4,
            }],
            states: vec![(2, 0)],
            created_ms: 1_700_000_000_123,
            devices: Vec::new(),
        };
        for (answer, line) in [
            (Response::Domains(Vec::new()), r#"{"domains":[]}"#),
            (
                Response::Domains(vec![served]),
                r#"{"domains":[{"domid":7,"name":"noop-3","entries":[{"kind":"sysctl","devid":0,"backend":0,"ctrl_gref":9,"ctrl_port":4}],"states":[[2,0]],"created_ms":1700000000123}]}"#,
            ),
            (
                Response::Listed(vec![DomainSummary {
                    domid: 7,
                    name: "noop-3".into(),
                    created_ms: 1_700_000_000_123,
                }]),
                r#"{"listed":[{"domid":7,"name":"noop-3","created_ms":1700000000123}]}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&answer).unwrap(), line);
            assert_eq!(serde_json::from_str::<Response>(line).unwrap(), answer);
        }
        for bad in [
            r#"{"op":"domain"}"#,
            r#"{"op":"domain","domid":"7"}"#,
            r#"{"op":"domains_named","name":7}"#,
            r#"{"op":"domains_named","name":"a","domid":1}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    /// What a restore asks (a re-offer, a rename) and what a save reads (the devices a
    /// served domain was created with), on the wire; an older xendevd's answer
    /// without devices still parses.
    #[test]
    fn restore_requests_and_devices_are_stable() {
        for (request, line) in [
            (
                Request::NoxsReoffer { domid: 9 },
                r#"{"op":"noxs_reoffer","domid":9}"#,
            ),
            (
                Request::NoxsRename {
                    domid: 9,
                    name: "kv--incoming".into(),
                },
                r#"{"op":"noxs_rename","domid":9,"name":"kv--incoming"}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&request).unwrap(), line);
            assert_eq!(serde_json::from_str::<Request>(line).unwrap(), request);
        }
        let not_yet = Response::NotYet("not granted yet".into());
        let line = serde_json::to_string(&not_yet).unwrap();
        assert_eq!(line, r#"{"not_yet":"not granted yet"}"#);
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), not_yet);
        let served = NoxsDomain {
            domid: 9,
            name: "kv".into(),
            entries: Vec::new(),
            states: Vec::new(),
            created_ms: 5,
            devices: vec![
                NoxsDevice::Sysctl,
                NoxsDevice::Vbd {
                    devid: 0,
                    target: "/i".into(),
                    readonly: true,
                },
            ],
        };
        let line = serde_json::to_string(&served).unwrap();
        assert_eq!(
            line,
            r#"{"domid":9,"name":"kv","entries":[],"states":[],"created_ms":5,"devices":[{"kind":"sysctl"},{"kind":"vbd","devid":0,"target":"/i","readonly":true}]}"#
        );
        assert_eq!(serde_json::from_str::<NoxsDomain>(&line).unwrap(), served);
        let older: NoxsDomain =
            serde_json::from_str(r#"{"domid":9,"name":"kv","entries":[],"created_ms":5}"#).unwrap();
        assert!(older.devices.is_empty());
        for bad in [
            r#"{"op":"noxs_reoffer"}"#,
            r#"{"op":"noxs_reoffer","domid":9,"name":"x"}"#,
            r#"{"op":"noxs_rename","domid":9}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    /// The longest brief a list can hold (a domain name of 64 bytes, every domain id
    /// Xen hands out) fits in one answer under the daemon's 4 MiB output limit.
    #[test]
    fn a_list_of_every_domain_fits_in_one_answer() {
        let listed: Vec<DomainSummary> = (1..0x7ff0)
            .map(|domid| DomainSummary {
                domid,
                name: "n".repeat(64),
                created_ms: u64::MAX,
            })
            .collect();
        let line = serde_json::to_string(&Response::Listed(listed)).unwrap();
        assert!(line.len() < 4 << 20, "{} bytes", line.len());
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
            r#"{"op":"power","domid":1,"action":"halt","timeout_ms":1}"#,
            r#"{"op":"noxs_create","domid":1,"name":"x","console_port":1,"devices":[{"kind":"tape"}]}"#,
            r#"{"op":"noxs_create","domid":1,"name":"x","console_port":1,"devices":[{"kind":"vbd","devid":0,"target":"/i","readonly":false,"x":1}]}"#,
            r#"{"op":"noxs_create","domid":1,"name":"x","console_port":1,"devices":[{"kind":"vif","devid":0,"mac":"00:16:3e:zz:00:10","bridge":"xenbr0","ip":null,"prefix_len":null,"gateway":null}]}"#,
            r#"{"op":"noxs_create","domid":1,"name":"x","console_port":1,"devices":[{"kind":"vif","devid":0,"mac":"00:16:3e:0a:00","bridge":"xenbr0","ip":null,"prefix_len":null,"gateway":null}]}"#,
            r#"{"op":"noxs_shell","domid":1,"name":"x","devices":[{"kind":"vif","devid":0}]}"#,
            r#"{"op":"noxs_shell","domid":1,"name":"x","devices":[{"kind":"vbd","devid":0,"target":"/i"}]}"#,
            r#"{"op":"noxs_fill","domid":1,"name":"x","devices":[]}"#,
            r#"{"op":"console","domid":1,"follow":true,"input":"yes"}"#,
            r#"{"op":"console","domid":1,"input":true}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
        let err = serde_json::from_str::<Mac>(r#""00-16-3e-0a-00-10""#).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "invalid value: string \"00-16-3e-0a-00-10\", expected a MAC address (six hex pairs"
            ),
            "{err}"
        );
    }

    /// The answer chaos writes into the guest's block, byte for byte as before the
    /// entries were xenproto's own type.
    #[test]
    fn noxs_answers_are_stable() {
        let entry = |kind, devid, gref, port| noxs::Entry {
            kind,
            backend: 0,
            devid,
            ctrl_gref: gref,
            ctrl_port: port,
        };
        let answer = Response::Noxs(NoxsDomain {
            domid: 7,
            name: "daytime".into(),
            entries: vec![
                entry(noxs::Kind::Sysctl, 0, 9, 4),
                entry(noxs::Kind::Vif, 0, 10, 5),
                entry(noxs::Kind::Vbd, 1, 14, 9),
            ],
            states: vec![(2, 0), (4, 4), (2, 1)],
            created_ms: 1_700_000_000_123,
            devices: Vec::new(),
        });
        let line = serde_json::to_string(&answer).unwrap();
        assert_eq!(
            line,
            r#"{"noxs":{"domid":7,"name":"daytime","entries":[{"kind":"sysctl","devid":0,"backend":0,"ctrl_gref":9,"ctrl_port":4},{"kind":"vif","devid":0,"backend":0,"ctrl_gref":10,"ctrl_port":5},{"kind":"vbd","devid":1,"backend":0,"ctrl_gref":14,"ctrl_port":9}],"states":[[2,0],[4,4],[2,1]],"created_ms":1700000000123}}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), answer);
        for bad in [
            r#"{"kind":"tape","devid":0,"backend":0,"ctrl_gref":9,"ctrl_port":4}"#,
            r#"{"kind":"vif","devid":0,"backend":0,"ctrl_gref":9}"#,
            r#"{"kind":"vif","devid":0,"backend":0,"ctrl_gref":9,"ctrl_port":4,"x":1}"#,
        ] {
            assert!(serde_json::from_str::<noxs::Entry>(bad).is_err(), "{bad}");
        }
        for (action, name) in [
            (noxs::Request::Poweroff, "poweroff"),
            (noxs::Request::Reboot, "reboot"),
            (noxs::Request::Suspend, "suspend"),
            (noxs::Request::Crash, "crash"),
        ] {
            assert_eq!(
                serde_json::to_string(&action).unwrap(),
                format!("\"{name}\"")
            );
        }
    }

    #[test]
    fn station_macs() {
        let mac = |text: &str| text.parse::<Mac>().unwrap();
        assert_eq!(
            station_mac(mac("00:16:3E:0a:00:10")).unwrap().to_string(),
            "00:16:3e:0a:00:10"
        );
        assert_eq!(
            station_mac(mac("01:16:3e:0a:00:10"))
                .unwrap_err()
                .to_string(),
            "01:16:3e:0a:00:10 is a multicast address (the first byte is odd): a vif needs a \
             unicast one"
        );
        assert_eq!(
            station_mac(mac("00:00:00:00:00:00")).unwrap_err(),
            StationMacError::Zero(Mac([0; 6]))
        );
    }
}
