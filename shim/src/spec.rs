//! From a task's OCI runtime spec (the bundle's `config.json`) to the guest to boot:
//! which kernel, its command line, memory, vCPUs, device method and network. Pure: the
//! files it names are looked at by the caller.
//!
//! Precedence, as the README says: the kernel is the image's `/lightvm/kernel`, the
//! guest's command line `process.args` (without the entrypoint, which names the
//! kernel); memory comes
//! from the spec's memory limit (`ctr run --memory-limit`, a Kubernetes limit), then the
//! annotation `lightvm.io/memory-mib`, then the image's `lightvm.json`; vCPUs from the
//! CPU quota and period (`--cpus`), then `lightvm.io/vcpus`, then `lightvm.json`; the
//! device method from `lightvm.io/dev-method`, then `lightvm.json`.

use std::path::{Path, PathBuf};

use chaos::config::{DEFAULT_BRIDGE, DevMethod, MIN_MEMORY_MIB};
use lightvm_image::KERNEL_PATH;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::podnet::PodInterface;

/// Annotations the shim reads (`ctr run --annotation K=V`; under Kubernetes, pod
/// annotations containerd's `pod_annotations` lets through).
pub const MEMORY_ANNOTATION: &str = "lightvm.io/memory-mib";
pub const VCPUS_ANNOTATION: &str = "lightvm.io/vcpus";
pub const DEV_METHOD_ANNOTATION: &str = "lightvm.io/dev-method";

/// The most vCPUs a guest is given (a PV guest's start_info has room for more, but
/// our kernel runs on one; a sanity bound on a quota/period ratio).
const MAX_VCPUS: u32 = 128;

/// What the image says, from its `lightvm.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    pub memory_mib: u32,
    pub vcpus: u32,
    pub dev_method: DevMethod,
}

impl Defaults {
    /// An image without `lightvm.json`: what `cargo xtask run` gives a guest.
    pub const WITHOUT_FILE: Self = Self {
        memory_mib: 32,
        vcpus: 1,
        dev_method: DevMethod::Xenstore,
    };
}

/// Where the guest's network is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// No network namespace in the spec (`ctr run --net-host`): a vif on dom0's
    /// default bridge.
    Host,
    /// A namespace to make for the task (`ctr run` without `--net-host`: CNI, if any,
    /// fills it between create and start).
    NewNamespace,
    /// An existing namespace (`--with-ns network:PATH`, a Kubernetes pod's).
    Namespace(PathBuf),
}

/// The guest a task boots (its kernel is the image's `/lightvm/kernel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestPlan {
    /// The guest's arguments: `process.args`, without the image's entrypoint.
    pub args: Vec<String>,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub dev_method: DevMethod,
    pub network: Network,
}

/// Why a spec cannot be run, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0} is not supported by the lightvm runtime: {1}")]
    Unsupported(&'static str, &'static str),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The guest `spec` asks for, given the image's `defaults`.
pub fn plan(spec: &Spec, defaults: &Defaults) -> Result<GuestPlan, SpecError> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process", "missing: the spec names no process"))?;
    if process.terminal().unwrap_or(false) {
        return Err(SpecError::Unsupported(
            "a terminal (ctr run -t, tty: true)",
            "a guest's console is its stdout; run without -t",
        ));
    }
    let mut args = process.args().clone().unwrap_or_default();
    // The image's entrypoint names the kernel; `ctr run IMAGE ID ARGS…` replaces the
    // whole of process.args with ARGS, Kubernetes' `args:` only the image's Cmd.
    let entrypoint = args
        .first()
        .is_some_and(|first| first.trim_start_matches('/') == KERNEL_PATH);
    if entrypoint {
        args.remove(0);
    }
    for (index, arg) in args.iter().enumerate() {
        if arg.is_empty() || arg.contains(char::is_whitespace) || arg.contains('\0') {
            return Err(invalid(
                format!("process.args[{}]", index + usize::from(entrypoint)),
                format!(
                    "{arg:?}: a guest argument may not be empty or hold whitespace (the \
                     guest's command line is its arguments joined by spaces)"
                ),
            ));
        }
    }
    let annotations = spec.annotations().clone().unwrap_or_default();
    let annotation = |key: &str| annotations.get(key).map(String::as_str);
    let linux = spec.linux().as_ref();
    let resources = linux.and_then(|linux| linux.resources().as_ref());

    let memory_mib = match resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|memory| memory.limit())
    {
        // -1 is "no limit" in the runtime spec.
        Some(limit) if limit > 0 => {
            let mib = u64::try_from(limit).unwrap_or(0) / (1024 * 1024);
            let mib = u32::try_from(mib).map_err(|_| {
                invalid(
                    "linux.resources.memory.limit",
                    format!("{limit} bytes is more than a guest can have"),
                )
            })?;
            check_memory(
                "linux.resources.memory.limit",
                mib,
                &format!("{limit} bytes"),
            )?
        }
        _ => match annotation(MEMORY_ANNOTATION) {
            Some(text) => {
                let field = format!("annotations.{MEMORY_ANNOTATION}");
                let mib = text.parse::<u32>().map_err(|_| {
                    invalid(&field, format!("{text:?} is not a whole number of MiB"))
                })?;
                check_memory(&field, mib, &format!("{mib} MiB"))?
            }
            None => check_memory("lightvm.json memory_mib", defaults.memory_mib, "it")?,
        },
    };

    let cpu = resources.and_then(|r| r.cpu().as_ref());
    let vcpus = match (cpu.and_then(|c| c.quota()), cpu.and_then(|c| c.period())) {
        (Some(quota), Some(period)) if quota > 0 && period > 0 => {
            let vcpus = u64::try_from(quota).unwrap_or(0).div_ceil(period);
            u32::try_from(vcpus)
                .ok()
                .filter(|&n| n <= MAX_VCPUS)
                .ok_or_else(|| {
                    invalid(
                        "linux.resources.cpu.quota",
                        format!("{quota}/{period} asks for more than {MAX_VCPUS} vCPUs"),
                    )
                })?
        }
        _ => match annotation(VCPUS_ANNOTATION) {
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|&n| (1..=MAX_VCPUS).contains(&n))
                .ok_or_else(|| {
                    invalid(
                        format!("annotations.{VCPUS_ANNOTATION}"),
                        format!("{text:?}: a number of vCPUs from 1 to {MAX_VCPUS}"),
                    )
                })?,
            None => defaults.vcpus,
        },
    };

    let dev_method = match annotation(DEV_METHOD_ANNOTATION) {
        Some("xenstore") => DevMethod::Xenstore,
        Some("noxs") => DevMethod::Noxs,
        Some(other) => {
            return Err(invalid(
                format!("annotations.{DEV_METHOD_ANNOTATION}"),
                format!("{other:?}: \"xenstore\" or \"noxs\""),
            ));
        }
        None => defaults.dev_method,
    };

    let network = network(spec);

    Ok(GuestPlan {
        args,
        memory_mib,
        vcpus,
        dev_method,
        network,
    })
}

/// Where the task's network is: the spec's network namespace, if any.
pub fn network(spec: &Spec) -> Network {
    let namespace = spec
        .linux()
        .as_ref()
        .and_then(|linux| linux.namespaces().as_ref())
        .and_then(|namespaces| {
            namespaces
                .iter()
                .find(|ns| ns.typ() == LinuxNamespaceType::Network)
        });
    match namespace {
        None => Network::Host,
        Some(ns) => match ns.path() {
            Some(path) if !path.as_os_str().is_empty() => Network::Namespace(path.clone()),
            _ => Network::NewNamespace,
        },
    }
}

/// `mib` from `field` (`what` says it as given), if a guest can boot in it.
fn check_memory(field: &str, mib: u32, what: &str) -> Result<u32, SpecError> {
    if mib < MIN_MEMORY_MIB {
        return Err(invalid(
            field,
            format!(
                "{what} is under a guest's minimum of {MIN_MEMORY_MIB} MiB (Xen's PV domain \
                 builder needs at least that)"
            ),
        ));
    }
    Ok(mib)
}

/// The guest's command line: for a guest in a pod's namespace that uses Xenstore, the
/// address it takes over first (a NoXS guest has it in its vif's control page), then
/// the task's arguments.
fn cmdline(args: &[String], address: Option<&str>) -> String {
    address
        .into_iter()
        .map(str::to_owned)
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// chaos's configuration (JSON, which chaos checks as it checks a file) for guest
/// `plan` named `name`: in a network namespace (`in_namespace`), a vif that takes over
/// its eth0 (`pod`: MAC, address; the gateway in the vif for a NoXS guest, on the
/// command line for a Xenstore one), or none if it has no eth0; otherwise a vif on
/// dom0's default bridge.
pub fn guest_config(
    name: &str,
    kernel: &Path,
    plan: &GuestPlan,
    in_namespace: bool,
    pod: Option<&PodInterface>,
) -> String {
    let mut address = None;
    let vifs = match pod {
        // A namespace without eth0 (plain `ctr run`, no CNI): the guest is as cut off
        // as a container there would be.
        None if in_namespace => serde_json::json!([]),
        None => serde_json::json!([{ "bridge": DEFAULT_BRIDGE }]),
        Some(pod) => {
            let cidr = format!("{}/{}", pod.address, pod.prefix_len);
            let mut vif = serde_json::json!({
                "mac": pod.mac.map(|b| format!("{b:02x}")).join(":"),
                "ip": cidr,
                "bridge": DEFAULT_BRIDGE,
            });
            match (plan.dev_method, pod.gateway) {
                (DevMethod::Noxs, Some(gateway)) => vif["gateway"] = gateway.to_string().into(),
                (DevMethod::Xenstore, Some(gateway)) => {
                    address = Some(format!("ip={cidr} gw={gateway}"));
                }
                (DevMethod::Xenstore, None) => address = Some(format!("ip={cidr}")),
                (DevMethod::Noxs, None) => {}
            }
            serde_json::json!([vif])
        }
    };
    serde_json::json!({
        "name": name,
        "kernel": kernel,
        "cmdline": cmdline(&plan.args, address.as_deref()),
        "memory": plan.memory_mib,
        "vcpus": plan.vcpus,
        "vifs": vifs,
        "xen": { "dev_method": plan.dev_method.as_str() },
    })
    .to_string()
}

/// A domain name for task `id` of containerd namespace `namespace`: `namespace-id`
/// (xendevd takes letters, digits, `-`, `_` and `.`, as containerd's names have),
/// shortened with a hash of the whole if longer than chaos allows (containerd allows
/// 76-character ids).
pub fn domain_name(namespace: &str, id: &str) -> String {
    let name = format!("{namespace}-{id}");
    if name.len() <= chaos::config::MAX_NAME {
        return name;
    }
    // FNV-1a: stable across runs and builds (unlike std's hasher).
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    let keep = chaos::config::MAX_NAME - 17;
    format!("{}-{hash:016x}", &name[..keep])
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Defaults = Defaults {
        memory_mib: 32,
        vcpus: 1,
        dev_method: DevMethod::Xenstore,
    };

    /// A spec as containerd 1.6's `ctr run` writes it, with `extra` merged in.
    fn spec(extra: serde_json::Value) -> Spec {
        let mut base = serde_json::json!({
            "ociVersion": "1.0.2-dev",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": ["/lightvm/kernel", "alpha", "beta"],
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/"
            },
            "root": {"path": "rootfs"},
            "linux": {
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                               {"type": "mount"}, {"type": "network"}]
            }
        });
        merge(&mut base, extra);
        serde_json::from_value(base).expect("a valid spec")
    }

    fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
        match (base, extra) {
            (serde_json::Value::Object(base), serde_json::Value::Object(extra)) => {
                for (key, value) in extra {
                    merge(base.entry(key).or_insert(serde_json::Value::Null), value);
                }
            }
            (base, extra) => *base = extra,
        }
    }

    fn error(extra: serde_json::Value) -> String {
        plan(&spec(extra), &DEFAULTS).unwrap_err().to_string()
    }

    #[test]
    fn ctr_run_defaults() {
        let plan = plan(&spec(serde_json::json!({})), &DEFAULTS).unwrap();
        assert_eq!(
            plan,
            GuestPlan {
                args: vec!["alpha".into(), "beta".into()],
                memory_mib: 32,
                vcpus: 1,
                dev_method: DevMethod::Xenstore,
                network: Network::NewNamespace,
            }
        );
        assert_eq!(cmdline(&plan.args, None), "alpha beta");
        assert_eq!(
            cmdline(&plan.args, Some("ip=10.9.0.2/24 gw=10.9.0.1")),
            "ip=10.9.0.2/24 gw=10.9.0.1 alpha beta"
        );
    }

    #[test]
    fn memory_precedence() {
        let limit = serde_json::json!({"linux": {"resources": {"memory": {"limit": 64 * 1024 * 1024}}},
                                        "annotations": {MEMORY_ANNOTATION: "48"}});
        assert_eq!(plan(&spec(limit), &DEFAULTS).unwrap().memory_mib, 64);
        let annotated = serde_json::json!({"annotations": {MEMORY_ANNOTATION: "48"}});
        assert_eq!(plan(&spec(annotated), &DEFAULTS).unwrap().memory_mib, 48);
        // No limit (-1) falls through to the image.
        let unlimited = serde_json::json!({"linux": {"resources": {"memory": {"limit": -1}}}});
        assert_eq!(plan(&spec(unlimited), &DEFAULTS).unwrap().memory_mib, 32);
    }

    #[test]
    fn memory_under_the_minimum() {
        let err = error(
            serde_json::json!({"linux": {"resources": {"memory": {"limit": 2 * 1024 * 1024}}}}),
        );
        assert_eq!(
            err,
            "linux.resources.memory.limit: 2097152 bytes is under a guest's minimum of 4 MiB \
             (Xen's PV domain builder needs at least that)"
        );
        let err = error(serde_json::json!({"annotations": {MEMORY_ANNOTATION: "lots"}}));
        assert_eq!(
            err,
            "annotations.lightvm.io/memory-mib: \"lots\" is not a whole number of MiB"
        );
        let small = Defaults {
            memory_mib: 1,
            ..DEFAULTS
        };
        let err = plan(&spec(serde_json::json!({})), &small).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("lightvm.json memory_mib: it is under"),
            "{err}"
        );
    }

    #[test]
    fn vcpus_and_dev_method() {
        let cpus = serde_json::json!({"linux": {"resources": {"cpu": {"quota": 150_000, "period": 100_000}}},
                                       "annotations": {DEV_METHOD_ANNOTATION: "noxs"}});
        let plan = plan(&spec(cpus), &DEFAULTS).unwrap();
        assert_eq!((plan.vcpus, plan.dev_method), (2, DevMethod::Noxs));
        let err = error(serde_json::json!({"annotations": {VCPUS_ANNOTATION: "0"}}));
        assert!(
            err.starts_with("annotations.lightvm.io/vcpus: \"0\""),
            "{err}"
        );
        let err = error(serde_json::json!({"annotations": {DEV_METHOD_ANNOTATION: "xs"}}));
        assert_eq!(
            err,
            "annotations.lightvm.io/dev-method: \"xs\": \"xenstore\" or \"noxs\""
        );
    }

    #[test]
    fn networks() {
        let host = serde_json::json!({"linux": {"namespaces": [{"type": "pid"}]}});
        assert_eq!(plan(&spec(host), &DEFAULTS).unwrap().network, Network::Host);
        let joined = serde_json::json!({"linux": {"namespaces": [
            {"type": "network", "path": "/var/run/netns/t0"}]}});
        assert_eq!(
            plan(&spec(joined), &DEFAULTS).unwrap().network,
            Network::Namespace("/var/run/netns/t0".into())
        );
    }

    #[test]
    fn bad_processes() {
        let err = error(serde_json::json!({"process": {"terminal": true}}));
        assert!(
            err.starts_with("a terminal (ctr run -t, tty: true) is not supported"),
            "{err}"
        );
        let err = error(serde_json::json!({"process": {"args": ["/lightvm/kernel", "a b"]}}));
        assert!(
            err.starts_with("process.args[1]: \"a b\": a guest argument"),
            "{err}"
        );
    }

    #[test]
    fn arguments_with_and_without_the_entrypoint() {
        // `ctr run IMAGE ID alpha beta`: ctr's arguments are the whole of process.args.
        let given = serde_json::json!({"process": {"args": ["alpha", "beta"]}});
        assert_eq!(
            plan(&spec(given), &DEFAULTS).unwrap().args,
            ["alpha", "beta"]
        );
        let none = serde_json::json!({"process": {"args": ["/lightvm/kernel"]}});
        assert!(plan(&spec(none), &DEFAULTS).unwrap().args.is_empty());
        let empty = serde_json::json!({"process": {"args": []}});
        assert!(plan(&spec(empty), &DEFAULTS).unwrap().args.is_empty());
    }

    /// The configuration for `plan`, as chaos's own parser reads it.
    fn config(plan: &GuestPlan, in_namespace: bool, pod: Option<&PodInterface>) -> chaos::Config {
        let text = guest_config("default-t1", Path::new("/k"), plan, in_namespace, pod);
        chaos::Config::parse(&text).unwrap_or_else(|err| panic!("{err}: {text}"))
    }

    #[test]
    fn guest_configs() {
        let mut plan = plan(&spec(serde_json::json!({})), &DEFAULTS).unwrap();
        let on_bridge = config(&plan, false, None);
        assert_eq!(on_bridge.name, "default-t1");
        assert_eq!((on_bridge.memory_mib, on_bridge.vcpus), (32, 1));
        assert_eq!(on_bridge.cmdline, "alpha beta");
        assert_eq!(on_bridge.vifs.len(), 1);
        assert_eq!(on_bridge.vifs[0].bridge, DEFAULT_BRIDGE);
        assert_eq!(on_bridge.vifs[0].mac, None);
        assert!(config(&plan, true, None).vifs.is_empty());

        let pod = PodInterface {
            mac: [0x02, 0x42, 0x0a, 0x09, 0x00, 0x02],
            address: "10.9.0.2".parse().unwrap(),
            prefix_len: 24,
            gateway: Some("10.9.0.1".parse().unwrap()),
            mtu: 1500,
        };
        let xenstore = config(&plan, true, Some(&pod));
        assert_eq!(xenstore.cmdline, "ip=10.9.0.2/24 gw=10.9.0.1 alpha beta");
        assert_eq!(
            xenstore.vifs[0].mac.map(|mac| mac.to_string()).as_deref(),
            Some("02:42:0a:09:00:02")
        );
        assert_eq!(xenstore.vifs[0].ip, Some("10.9.0.2".parse().unwrap()));
        assert_eq!(xenstore.vifs[0].gateway, None);

        plan.dev_method = DevMethod::Noxs;
        let noxs = config(&plan, true, Some(&pod));
        assert_eq!(noxs.cmdline, "alpha beta");
        assert_eq!(noxs.vifs[0].prefix_len, Some(24));
        assert_eq!(noxs.vifs[0].gateway, Some("10.9.0.1".parse().unwrap()));
        assert_eq!(noxs.dev_method, DevMethod::Noxs);
    }

    #[test]
    fn domain_names() {
        assert_eq!(domain_name("default", "t1"), "default-t1");
        let long = domain_name("k8s.io", &"a".repeat(76));
        assert_eq!(long.len(), chaos::config::MAX_NAME);
        assert_ne!(long, domain_name("k8s.io", &format!("{}b", "a".repeat(75))));
    }
}
