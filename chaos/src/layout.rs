//! The Xenstore nodes of a domain and its devices, as data: what libxl writes for the
//! same guest (`libxl__domain_make` and `libxl__build_post` in `libxl_create.c` and
//! `libxl_dom.c`, `libxl__device_generic_add` in `libxl_device.c`, the nic, disk and
//! console back-end entries), with the same permissions — checked against `xenstore-ls
//! -fp` of a domain `xl create` made in the lab (the tests below) — so `xl list`,
//! `xl console`, xenconsoled and the kernel back ends treat a chaos domain like xl's.
//!
//! Pure: no I/O. [`crate::device`] writes the nodes in transactions.
//!
//! A new Xenstore node takes its parent's permissions, so a node carries `perms` only
//! where libxl's differ from what it would inherit, and a directory is written only if
//! it has permissions of its own or no children: one round trip fewer per node. (In the
//! lab, under TCG, a round trip to xenstored costs about 1 ms, and Xenstore is the
//! largest part of `chaos create`.)
//!
//! Left out on purpose: `/libxl/N` (libxl's private records of its own devices and
//! domain config; chaos keeps none, so `xl destroy` of a chaos domain removes the domain
//! but not its back ends: use `chaos destroy`).

use std::net::Ipv4Addr;

pub use xenhost::xs::{Node, Perm};

use crate::config::{Access, Mac};
use crate::uuid::Uuid;

/// The domain that runs every back end (and xenstored, xenconsoled).
pub const BACKEND_DOMID: u32 = 0;
/// xl's `memory/videoram` and the console's `limit` (xenconsoled's buffer, 1 MiB).
pub const CONSOLE_LIMIT: u32 = 1 << 20;
/// A vif's MTU as libxl writes it to the front end.
pub const MTU: u32 = 1500;
/// `XenbusStateInitialising`.
pub const STATE_INITIALISING: u32 = 1;

fn node(path: impl Into<String>, value: impl Into<String>) -> Node {
    Node {
        path: path.into(),
        value: value.into(),
        perms: None,
    }
}

fn node_with(path: impl Into<String>, value: impl Into<String>, perms: Vec<Perm>) -> Node {
    Node {
        path: path.into(),
        value: value.into(),
        perms: Some(perms),
    }
}

/// `/local/domain/N`.
pub fn dom_path(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// `/vm/UUID`.
pub fn vm_path(uuid: &Uuid) -> String {
    format!("/vm/{uuid}")
}

/// The kinds of device chaos makes, as Xenstore names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Vif,
    Vbd,
    Console,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Vif, Kind::Vbd, Kind::Console];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Vif => "vif",
            Kind::Vbd => "vbd",
            Kind::Console => "console",
        }
    }
}

/// `/local/domain/0/backend/KIND/N`: every back end of one kind of a domain.
pub fn backend_dir(kind: Kind, domid: u32) -> String {
    format!(
        "{}/backend/{}/{domid}",
        dom_path(BACKEND_DOMID),
        kind.as_str()
    )
}

/// `/local/domain/0/backend/KIND/N/DEVID`.
pub fn backend_path(kind: Kind, domid: u32, devid: u32) -> String {
    format!("{}/{devid}", backend_dir(kind, domid))
}

/// `/local/domain/N/device/KIND/DEVID` (the console's is `/local/domain/N/console`).
pub fn frontend_path(kind: Kind, domid: u32, devid: u32) -> String {
    match kind {
        Kind::Console => format!("{}/console", dom_path(domid)),
        _ => format!("{}/device/{}/{devid}", dom_path(domid), kind.as_str()),
    }
}

/// The domain's nodes before it is built (`libxl__domain_make`): its directory and
/// `/vm/UUID` readable by the domain, `control/` and the directories the guest writes
/// (`data`, `error`, …) owned by it.
pub fn domain(domid: u32, uuid: &Uuid, name: &str) -> Vec<Node> {
    let dom = dom_path(domid);
    let vm = vm_path(uuid);
    let readable = vec![Perm::none(0), Perm::read(domid)];
    let guest_owned = || vec![Perm::none(domid)];
    let mut nodes = vec![
        node_with(&dom, "", readable.clone()),
        node_with(&vm, "", readable),
        node(format!("{dom}/vm"), &vm),
        node(format!("{dom}/name"), name),
        node(format!("{vm}/name"), name),
        node(format!("{vm}/uuid"), uuid.to_string()),
        // `cpu/`, `memory/`, `device/` and `control/` come into being with their first
        // child (xenstored makes missing parents with their parent's permissions, which
        // is what libxl gives them explicitly): one round trip fewer each.
        node_with(
            format!("{dom}/device/suspend/event-channel"),
            "",
            guest_owned(),
        ),
    ];
    for control in [
        "shutdown",
        "feature-poweroff",
        "feature-reboot",
        "feature-suspend",
        "sysrq",
    ] {
        nodes.push(node_with(
            format!("{dom}/control/{control}"),
            "",
            guest_owned(),
        ));
    }
    nodes.push(node(
        format!("{dom}/control/platform-feature-multiprocessor-suspend"),
        "1",
    ));
    nodes.push(node(
        format!("{dom}/control/platform-feature-xs_reset_watches"),
        "1",
    ));
    for dir in ["data", "drivers", "feature", "attr", "error"] {
        nodes.push(node_with(format!("{dom}/{dir}"), "", guest_owned()));
    }
    nodes
}

/// What the PV build produced and what the domain runs, for [`built`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub memory_kib: u64,
    pub vcpus: u32,
    pub store_port: u32,
    pub store_mfn: u64,
    pub console_port: u32,
    pub console_mfn: u64,
    pub kernel: String,
    pub ramdisk: Option<String>,
    pub cmdline: String,
    /// `/vm/UUID/start_time`: seconds since the epoch, two decimals (xl's format).
    pub start_time: String,
}

/// The nodes after the build (`libxl__build_post`, the primary console): memory,
/// vCPUs, the Xenstore ring and the console ring that xenconsoled maps.
pub fn built(domid: u32, uuid: &Uuid, b: &Built) -> Vec<Node> {
    let dom = dom_path(domid);
    let vm = vm_path(uuid);
    let mut nodes = vec![
        node(format!("{dom}/memory/static-max"), b.memory_kib.to_string()),
        node(format!("{dom}/memory/target"), b.memory_kib.to_string()),
        node(format!("{dom}/memory/videoram"), "0"),
        node(format!("{dom}/domid"), domid.to_string()),
        node(format!("{dom}/store/port"), b.store_port.to_string()),
        node(format!("{dom}/store/ring-ref"), b.store_mfn.to_string()),
    ];
    for vcpu in 0..b.vcpus {
        nodes.push(node(format!("{dom}/cpu/{vcpu}/availability"), "online"));
    }
    // The console: front end in the domain's directory, read-only to the guest except
    // `backend-id` (libxl's "console 0" special case of libxl__device_generic_add).
    let front = frontend_path(Kind::Console, domid, 0);
    let back = backend_path(Kind::Console, domid, 0);
    nodes.extend([
        node(format!("{front}/backend"), &back),
        node_with(
            format!("{front}/backend-id"),
            BACKEND_DOMID.to_string(),
            vec![Perm::none(domid), Perm::read(BACKEND_DOMID)],
        ),
        node(format!("{front}/limit"), CONSOLE_LIMIT.to_string()),
        node(format!("{front}/type"), "xenconsoled"),
        node(format!("{front}/output"), "pty"),
        node(format!("{front}/port"), b.console_port.to_string()),
        node(format!("{front}/ring-ref"), b.console_mfn.to_string()),
    ]);
    nodes.extend(backend_nodes(
        Kind::Console,
        domid,
        0,
        &[("protocol", "vt100".into())],
    ));
    nodes.extend([
        node(format!("{vm}/image/ostype"), "linux"),
        node(format!("{vm}/image/kernel"), &b.kernel),
        node(format!("{vm}/image/cmdline"), &b.cmdline),
    ]);
    if let Some(ramdisk) = &b.ramdisk {
        nodes.push(node(format!("{vm}/image/ramdisk"), ramdisk));
    }
    nodes.push(node(format!("{vm}/start_time"), &b.start_time));
    nodes
}

/// A back-end directory (owned by dom0, readable by the guest) with `frontend`,
/// `frontend-id`, `online` and `state` first, then `extra`.
fn backend_nodes(kind: Kind, domid: u32, devid: u32, extra: &[(&str, String)]) -> Vec<Node> {
    let back = backend_path(kind, domid, devid);
    let mut nodes = vec![
        node_with(
            &back,
            "",
            vec![Perm::none(BACKEND_DOMID), Perm::read(domid)],
        ),
        node(
            format!("{back}/frontend"),
            frontend_path(kind, domid, devid),
        ),
        node(format!("{back}/frontend-id"), domid.to_string()),
        node(format!("{back}/online"), "1"),
        node(format!("{back}/state"), STATE_INITIALISING.to_string()),
    ];
    for (key, value) in extra {
        nodes.push(node(format!("{back}/{key}"), value));
    }
    nodes
}

/// A front-end directory (owned by the guest, readable by dom0) with `backend`,
/// `backend-id` and `state` first, then `extra`.
fn frontend_nodes(kind: Kind, domid: u32, devid: u32, extra: &[(&str, String)]) -> Vec<Node> {
    let front = frontend_path(kind, domid, devid);
    let mut nodes = vec![
        node_with(
            &front,
            "",
            vec![Perm::none(domid), Perm::read(BACKEND_DOMID)],
        ),
        node(format!("{front}/backend"), backend_path(kind, domid, devid)),
        node(format!("{front}/backend-id"), BACKEND_DOMID.to_string()),
        node(format!("{front}/state"), STATE_INITIALISING.to_string()),
    ];
    for (key, value) in extra {
        nodes.push(node(format!("{front}/{key}"), value));
    }
    nodes
}

/// A vif's description for [`vif`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VifSpec {
    pub devid: u32,
    pub mac: Mac,
    pub ip: Option<Ipv4Addr>,
    pub bridge: String,
    /// The back end's `script` node: netback refuses a back end without one (it reads it
    /// at probe time for its uevents); xendevd, not a script, does the hotplug work.
    pub script: String,
}

/// The value chaos writes to a vif back end's `toolstack` node: xendevd attaches a vif
/// to its bridge only if it finds this.
pub const TOOLSTACK: &str = "chaos";

/// A vif's front and back end (`libxl__set_xenstore_nic`), with `toolstack = "chaos"`
/// so xendevd does its hotplug (bridge, `hotplug-status`).
pub fn vif(domid: u32, spec: &VifSpec) -> Vec<Node> {
    let devid = spec.devid;
    let mut nodes = frontend_nodes(
        Kind::Vif,
        domid,
        devid,
        &[
            ("handle", devid.to_string()),
            ("mac", spec.mac.to_string()),
            ("trusted", "1".into()),
        ],
    );
    // libxl writes `mtu` read-only to the guest.
    nodes.push(node_with(
        format!("{}/mtu", frontend_path(Kind::Vif, domid, devid)),
        MTU.to_string(),
        vec![Perm::none(BACKEND_DOMID), Perm::read(domid)],
    ));
    let mut back = vec![
        ("script", spec.script.clone()),
        ("mac", spec.mac.to_string()),
    ];
    if let Some(ip) = spec.ip {
        back.push(("ip", ip.to_string()));
    }
    back.extend([
        ("bridge", spec.bridge.clone()),
        ("handle", devid.to_string()),
        ("type", "vif".to_owned()),
        ("toolstack", TOOLSTACK.to_owned()),
    ]);
    nodes.extend(backend_nodes(Kind::Vif, domid, devid, &back));
    nodes
}

/// What makes a chaos daemon's shell (written with [`domain`] under the shell's name,
/// and [`vif`] with placeholder MACs and no addresses) its guest: the name, each vif's
/// MAC (front and back end) and address. With [`vbd`] and [`built`] after it, the same
/// nodes as a guest built in full (the tests say so).
pub fn shell_filled(domid: u32, uuid: &Uuid, name: &str, vifs: &[VifSpec]) -> Vec<Node> {
    let dom = dom_path(domid);
    let mut nodes = vec![
        node(format!("{dom}/name"), name),
        node(format!("{}/name", vm_path(uuid)), name),
    ];
    for spec in vifs {
        let back = backend_path(Kind::Vif, domid, spec.devid);
        nodes.push(node(
            format!("{}/mac", frontend_path(Kind::Vif, domid, spec.devid)),
            spec.mac.to_string(),
        ));
        nodes.push(node(format!("{back}/mac"), spec.mac.to_string()));
        if let Some(ip) = spec.ip {
            nodes.push(node(format!("{back}/ip"), ip.to_string()));
        }
    }
    nodes
}

/// A vbd's description for [`vbd`]: the block device of dom0 that blkback opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VbdSpec {
    /// The device number (`51712` for xvda) and the name (`xvda`).
    pub devid: u32,
    pub vdev: String,
    /// What the configuration named: the image file or the block device.
    pub params: String,
    /// The block device blkback opens (the loop device for an image file).
    pub device: String,
    pub major: u32,
    pub minor: u32,
    pub access: Access,
}

/// A vbd's front and back end (`libxl__device_disk_add`). chaos writes
/// `physical-device` itself (libxl's block script would), so blkback opens the device
/// as soon as it probes the back end.
pub fn vbd(domid: u32, spec: &VbdSpec) -> Vec<Node> {
    let devid = spec.devid;
    let mut nodes = frontend_nodes(
        Kind::Vbd,
        domid,
        devid,
        &[
            ("virtual-device", devid.to_string()),
            ("device-type", "disk".into()),
            ("trusted", "1".into()),
        ],
    );
    nodes.extend(backend_nodes(
        Kind::Vbd,
        domid,
        devid,
        &[
            ("params", spec.params.clone()),
            ("removable", "0".into()),
            ("bootable", "1".into()),
            ("dev", spec.vdev.clone()),
            ("type", "phy".into()),
            ("mode", spec.access.mode().into()),
            ("device-type", "disk".into()),
            ("discard-enable", "1".into()),
            ("specification", "xen".into()),
            // blkback parses "%x:%x".
            (
                "physical-device",
                format!("{:x}:{:x}", spec.major, spec.minor),
            ),
            ("physical-device-path", spec.device.clone()),
            ("toolstack", TOOLSTACK.into()),
        ],
    ));
    nodes
}

/// A vbd front end's `protocol` (`x86_64-abi`), for frontends too old to write their
/// own (libxl writes it for PV guests); known once the build has parsed the kernel.
pub fn vbd_protocol(domid: u32, devid: u32, protocol: &str) -> Vec<Node> {
    vec![node(
        format!("{}/protocol", frontend_path(Kind::Vbd, domid, devid)),
        protocol,
    )]
}

/// What to remove when a domain goes: every back end of each kind, the domain's
/// directory (front ends included) and `/vm/UUID`. Removing a back end's directory is
/// what makes netback and blkback let go (unregister the vif, close the device).
pub fn teardown(domid: u32, uuid: Option<&Uuid>) -> Vec<String> {
    let mut paths: Vec<String> = Kind::ALL
        .iter()
        .map(|&kind| backend_dir(kind, domid))
        .collect();
    paths.push(dom_path(domid));
    if let Some(uuid) = uuid {
        paths.push(vm_path(uuid));
    }
    paths
}

/// Directories that the removals above may leave empty, deepest first; libxl removes
/// them when empty too (`libxl__xs_path_cleanup`), so a create and a destroy leave
/// Xenstore as they found it.
pub fn cleanup_parents() -> Vec<String> {
    let backend = format!("{}/backend", dom_path(BACKEND_DOMID));
    let mut dirs: Vec<String> = Kind::ALL
        .iter()
        .map(|kind| format!("{backend}/{}", kind.as_str()))
        .collect();
    dirs.push(backend);
    // The parent of every `/vm/UUID`, which the first domain's records make.
    dirs.push("/vm".to_owned());
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Apply `nodes` to an empty store with xenstored's inheritance (a new node gets its
    /// parent's permissions; `/` and `/local…` are dom0's), and print it the way
    /// `xenstore-ls -fp` does, in the order the nodes were created.
    fn effective(nodes: &[Node]) -> String {
        let mut store: Vec<(String, String, Vec<Perm>)> = Vec::new();
        fn perms_of(store: &[(String, String, Vec<Perm>)], path: &str) -> Vec<Perm> {
            store
                .iter()
                .find(|(p, _, _)| p == path)
                .map_or_else(|| vec![Perm::none(0)], |(_, _, perms)| perms.clone())
        }
        for n in nodes {
            // Create missing ancestors first, as xenstored does for a write.
            let mut at = 0;
            while let Some(slash) = n.path[at + 1..].find('/') {
                let ancestor = &n.path[..at + 1 + slash];
                at += 1 + slash;
                if !store.iter().any(|(p, _, _)| p == ancestor) {
                    let parent = &ancestor[..ancestor.rfind('/').unwrap()];
                    let perms = perms_of(&store, parent);
                    store.push((ancestor.to_owned(), String::new(), perms));
                }
            }
            let parent = &n.path[..n.path.rfind('/').unwrap()];
            let perms = n.perms.clone().unwrap_or_else(|| perms_of(&store, parent));
            match store.iter_mut().find(|(p, _, _)| *p == n.path) {
                Some(existing) => {
                    existing.1 = n.value.clone();
                    if n.perms.is_some() {
                        existing.2 = perms;
                    }
                }
                None => store.push((n.path.clone(), n.value.clone(), perms)),
            }
        }
        store
            .iter()
            .map(|(path, value, perms)| {
                let perms: Vec<String> = perms.iter().map(ToString::to_string).collect();
                format!("{path} = \"{value}\"   ({})\n", perms.join(","))
            })
            .collect()
    }

    fn uuid() -> Uuid {
        Uuid::parse("714899b9-7e92-45a5-b024-4aa65bace637").unwrap()
    }

    /// `layout-xl.txt`: what `xl create` wrote for the same guest in the lab, as
    /// `xenstore-ls -fp` lists it (the file's header says how it was normalised).
    const XL_CREATED: &str = include_str!("layout-xl.txt");

    #[test]
    fn the_domain_matches_xl() {
        let mut nodes = domain(1, &uuid(), "obs");
        nodes.extend(vbd(
            1,
            &VbdSpec {
                devid: 51712,
                vdev: "xvda".into(),
                params: "/dev/loop0".into(),
                device: "/dev/loop0".into(),
                major: 7,
                minor: 0,
                access: Access::Write,
            },
        ));
        nodes.extend(vbd_protocol(1, 51712, "x86_64-abi"));
        nodes.extend(vif(
            1,
            &VifSpec {
                devid: 0,
                mac: "00:16:3e:0a:00:10".parse().unwrap(),
                ip: None,
                bridge: "xenbr0".into(),
                script: "/etc/xen/scripts/vif-bridge".into(),
            },
        ));
        nodes.extend(built(
            1,
            &uuid(),
            &Built {
                memory_kib: 8192,
                vcpus: 1,
                store_port: 1,
                store_mfn: 498_233,
                console_port: 2,
                console_mfn: 498_234,
                kernel: "/apps/hello".into(),
                ramdisk: None,
                cmdline: "sleep=60000".into(),
                start_time: "1795498212.69".into(),
            },
        ));
        let ours = effective(&nodes);
        let mut ours: Vec<&str> = ours.lines().collect();
        let mut xl: Vec<&str> = XL_CREATED
            .lines()
            .filter(|line| !line.starts_with('#'))
            .collect();
        ours.sort_unstable();
        xl.sort_unstable();
        let extra: Vec<&&str> = ours.iter().filter(|line| !xl.contains(line)).collect();
        let missing: Vec<&&str> = xl.iter().filter(|line| !ours.contains(line)).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "chaos writes, xl did not:\n{extra:#?}\nxl wrote, chaos does not:\n{missing:#?}"
        );
    }

    /// A shell and its fill come to the nodes of the same guest made in one go.
    #[test]
    fn a_filled_shell_is_the_guest() {
        let u = uuid();
        let spec = |devid, mac: &str, ip| VifSpec {
            devid,
            mac: mac.parse().unwrap(),
            ip,
            bridge: "xenbr0".into(),
            script: "xendevd".into(),
        };
        let guest = [
            spec(0, "00:16:3e:0a:00:10", Some(Ipv4Addr::new(10, 0, 2, 16))),
            spec(1, "00:16:3e:0a:00:11", None),
        ];
        let mut whole = domain(4, &u, "daytime");
        for vif_spec in &guest {
            whole.extend(vif(4, vif_spec));
        }
        let mut shelled = domain(4, &u, "chaos-shell-4");
        for devid in [0, 1] {
            shelled.extend(vif(4, &spec(devid, "00:16:3e:7f:7f:7f", None)));
        }
        shelled.extend(shell_filled(4, &u, "daytime", &guest));
        let sorted = |nodes: &[Node]| {
            let mut lines: Vec<String> = effective(nodes).lines().map(str::to_owned).collect();
            lines.sort();
            lines
        };
        assert_eq!(sorted(&shelled), sorted(&whole));
    }

    #[test]
    fn teardown_covers_everything_written() {
        let u = uuid();
        let mut nodes = domain(3, &u, "x");
        nodes.extend(vif(
            3,
            &VifSpec {
                devid: 0,
                mac: "00:16:3e:00:00:01".parse().unwrap(),
                ip: Some(Ipv4Addr::new(10, 0, 2, 16)),
                bridge: "xenbr0".into(),
                script: "xendevd".into(),
            },
        ));
        let gone = teardown(3, Some(&u));
        for n in &nodes {
            assert!(
                gone.iter().any(|root| n.path.starts_with(root.as_str())),
                "{} survives a teardown",
                n.path
            );
        }
        // Another domain's nodes are not touched.
        assert!(
            !gone
                .iter()
                .any(|root| "/local/domain/30".starts_with(root.as_str())
                    && root != "/local/domain/3")
        );
        assert!(gone.contains(&"/local/domain/3".to_owned()));
        assert!(!gone.iter().any(|p| p == "/local/domain/30"));
    }

    /// Every directory a domain's nodes bring into being (xenstored makes missing
    /// parents) goes with its teardown or, once empty, with [`cleanup_parents`]: a
    /// create and a destroy leave Xenstore as they found it (`/vm` stayed behind).
    #[test]
    fn teardown_leaves_no_parent_behind() {
        let u = uuid();
        let mut nodes = domain(3, &u, "x");
        nodes.extend(vif(
            3,
            &VifSpec {
                devid: 0,
                mac: "00:16:3e:00:00:01".parse().unwrap(),
                ip: None,
                bridge: "xenbr0".into(),
                script: "xendevd".into(),
            },
        ));
        nodes.extend(built(
            3,
            &u,
            &Built {
                memory_kib: 4096,
                vcpus: 1,
                store_port: 1,
                store_mfn: 2,
                console_port: 3,
                console_mfn: 4,
                kernel: "/k".into(),
                ramdisk: None,
                cmdline: String::new(),
                start_time: "0.00".into(),
            },
        ));
        let gone = teardown(3, Some(&u));
        let parents = cleanup_parents();
        // What a Xen host has before any guest.
        let always = ["/local", "/local/domain", "/local/domain/0"];
        for n in &nodes {
            let mut at = 0;
            while let Some(slash) = n.path[at + 1..].find('/') {
                at += 1 + slash;
                let dir = &n.path[..at];
                let removed = gone
                    .iter()
                    .any(|root| dir == root || dir.starts_with(&format!("{root}/")));
                assert!(
                    removed || always.contains(&dir) || parents.iter().any(|p| p == dir),
                    "{dir} (a parent of {}) outlives its domain",
                    n.path
                );
            }
        }
    }

    #[test]
    fn vif_back_end_for_xendevd() {
        let nodes = vif(
            7,
            &VifSpec {
                devid: 1,
                mac: "00:16:3e:0a:00:10".parse().unwrap(),
                ip: Some(Ipv4Addr::new(10, 0, 2, 16)),
                bridge: "xenbr0".into(),
                script: "xendevd".into(),
            },
        );
        let get = |path: &str| {
            nodes
                .iter()
                .find(|n| n.path == path)
                .map(|n| n.value.as_str())
        };
        let back = "/local/domain/0/backend/vif/7/1";
        assert_eq!(get(&format!("{back}/toolstack")), Some("chaos"));
        assert_eq!(get(&format!("{back}/bridge")), Some("xenbr0"));
        assert_eq!(get(&format!("{back}/ip")), Some("10.0.2.16"));
        assert_eq!(
            get(&format!("{back}/frontend")),
            Some("/local/domain/7/device/vif/1")
        );
        assert_eq!(get("/local/domain/7/device/vif/1/backend"), Some(back));
        assert_eq!(get("/local/domain/7/device/vif/1/handle"), Some("1"));
    }
}
