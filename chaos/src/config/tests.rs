//! The tables of good and bad configurations: each bad one must fail on the field it
//! names, with a one-line reason.

use std::path::Path;

use super::devices::{mask, parse_mac, same_subnet};
use super::files::check_target;
use super::*;

const GOOD: &str = r#"{
    "name": "daytime", "kernel": "/apps/daytime", "cmdline": "ip=10.0.2.16/24",
    "memory": 8, "vcpus": 1,
    "vifs": [{"ip": "10.0.2.16", "mac": "00:16:3e:0a:00:10", "bridge": "xenbr0"}, {}],
    "vbds": [{"target": "/disk.img", "type": "file", "vdev": "xvda", "access": "r"},
             {"target": "/dev/vda", "type": "phy", "vdev": "xvdb"}],
    "paused": true, "xen": {"dev_method": "xenstore"}
}"#;

#[test]
fn a_full_config_parses() {
    let config = Config::parse(GOOD).unwrap();
    assert_eq!(config.name, "daytime");
    assert_eq!(config.kernel, Path::new("/apps/daytime"));
    assert_eq!(config.ramdisk, None);
    assert_eq!(config.cmdline, "ip=10.0.2.16/24");
    assert_eq!((config.memory_mib, config.vcpus), (8, 1));
    assert_eq!(
        config.vifs,
        [
            Vif {
                mac: Some(Mac([0x00, 0x16, 0x3e, 0x0a, 0x00, 0x10])),
                ip: Some(Ipv4Addr::new(10, 0, 2, 16)),
                prefix_len: None,
                gateway: None,
                bridge: "xenbr0".into(),
            },
            Vif {
                mac: None,
                ip: None,
                prefix_len: None,
                gateway: None,
                bridge: DEFAULT_BRIDGE.into(),
            },
        ]
    );
    assert_eq!(config.vbds.len(), 2);
    assert_eq!(config.vbds[0].kind, VbdKind::File);
    assert_eq!(config.vbds[0].access, Access::Read);
    assert_eq!(config.vbds[0].vdev.number(), 51712);
    assert_eq!(config.vbds[1].kind, VbdKind::Phy);
    assert_eq!(config.vbds[1].access, Access::Write, "w by default");
    assert!(config.paused);
    assert_eq!(config.dev_method, DevMethod::Xenstore);
}

#[test]
fn the_smallest_config() {
    let config = Config::parse(r#"{"name": "n", "kernel": "k", "memory": 4, "vcpus": 1}"#).unwrap();
    assert_eq!(config.cmdline, "");
    assert!(config.vifs.is_empty() && config.vbds.is_empty() && !config.paused);
}

/// Each bad configuration fails on the field it names, with a one-line reason.
#[test]
fn bad_configs_name_the_field() {
    let base = r#""name": "g", "kernel": "/k", "memory": 8, "vcpus": 1"#;
    let cases: &[(String, &str, &str)] = &[
        (
            "{".into(),
            "",
            "not valid JSON: EOF while parsing an object (line 1, column 1)",
        ),
        ("[1]".into(), "", "must be a JSON object"),
        (
            format!("{{{base}, \"memroy\": 8}}"),
            "memroy",
            "unknown key (known keys: name, kernel",
        ),
        (
            r#"{"kernel": "/k", "memory": 8, "vcpus": 1}"#.into(),
            "name",
            "missing: it is required",
        ),
        (
            r#"{"name": "g", "memory": 8, "vcpus": 1}"#.into(),
            "kernel",
            "missing",
        ),
        (
            r#"{"name": "g", "kernel": "/k", "vcpus": 1}"#.into(),
            "memory",
            "missing",
        ),
        (
            r#"{"name": "g", "kernel": "/k", "memory": 8}"#.into(),
            "vcpus",
            "missing",
        ),
        (
            r#"{"name": 5, "kernel": "/k", "memory": 8, "vcpus": 1}"#.into(),
            "name",
            "invalid type: integer `5`, expected a string",
        ),
        (
            r#"{"name": "a b", "kernel": "/k", "memory": 8, "vcpus": 1}"#.into(),
            "name",
            "has the character ' '",
        ),
        (
            r#"{"name": "42", "kernel": "/k", "memory": 8, "vcpus": 1}"#.into(),
            "name",
            "all digits",
        ),
        (
            r#"{"name": "chaos-shell-7", "kernel": "/k", "memory": 8, "vcpus": 1}"#.into(),
            "name",
            "the chaos daemon's shells",
        ),
        (
            r#"{"name": "", "kernel": "/k", "memory": 8, "vcpus": 1}"#.into(),
            "name",
            "empty",
        ),
        (
            r#"{"name": "g", "kernel": "", "memory": 8, "vcpus": 1}"#.into(),
            "kernel",
            "empty",
        ),
        (
            r#"{"name": "g", "kernel": "/k", "memory": 3, "vcpus": 1}"#.into(),
            "memory",
            "3 MiB is too little",
        ),
        (
            r#"{"name": "g", "kernel": "/k", "memory": -1, "vcpus": 1}"#.into(),
            "memory",
            "a whole number of MiB",
        ),
        (
            r#"{"name": "g", "kernel": "/k", "memory": "8", "vcpus": 1}"#.into(),
            "memory",
            "invalid type: string \"8\"",
        ),
        (
            r#"{"name": "g", "kernel": "/k", "memory": 2000000, "vcpus": 1}"#.into(),
            "memory",
            "more than",
        ),
        (
            r#"{"name": "g", "kernel": "/k", "memory": 8, "vcpus": 0}"#.into(),
            "vcpus",
            "at least one vCPU",
        ),
        (
            r#"{"name": "g", "kernel": "/k", "memory": 8, "vcpus": 500}"#.into(),
            "vcpus",
            "more than 128",
        ),
        (
            format!("{{{base}, \"cmdline\": \"{}\"}}", "x".repeat(1024)),
            "cmdline",
            "1024 bytes long",
        ),
        (
            format!("{{{base}, \"vifs\": {{}}}}"),
            "vifs",
            "must be a list",
        ),
        (
            format!("{{{base}, \"vifs\": [{{\"mac\": \"00:16:3e:0a:00\"}}]}}"),
            "vifs[0].mac",
            "is not a MAC address",
        ),
        (
            format!("{{{base}, \"vifs\": [{{\"mac\": \"zz:16:3e:0a:00:10\"}}]}}"),
            "vifs[0].mac",
            "is not a MAC address",
        ),
        (
            format!("{{{base}, \"vifs\": [{{\"mac\": \"01:16:3e:0a:00:10\"}}]}}"),
            "vifs[0].mac",
            "multicast",
        ),
        (
            format!(
                "{{{base}, \"vifs\": [{{\"mac\": \"00:16:3e:0a:00:10\"}}, {{\"mac\": \"00:16:3E:0A:00:10\"}}]}}"
            ),
            "vifs[1].mac",
            "is vifs[0]'s MAC address too",
        ),
        (
            format!("{{{base}, \"vifs\": [{{}}, {{\"ip\": \"10.0.2\"}}]}}"),
            "vifs[1].ip",
            "\"10.0.2\" is not an IPv4 address",
        ),
        (
            format!("{{{base}, \"vifs\": [{{\"bridge\": \"a/b\"}}]}}"),
            "vifs[0].bridge",
            "not a network interface name",
        ),
        (
            format!("{{{base}, \"vifs\": [{{\"ipaddr\": \"10.0.2.16\"}}]}}"),
            "vifs[0]",
            "unknown key `ipaddr`, expected one of `ip`, `gateway`, `mac`, `bridge`",
        ),
        (
            format!("{{{base}, \"vbds\": [{{\"target\": \"/i\", \"type\": \"file\"}}]}}"),
            "vbds[0]",
            "missing field `vdev`",
        ),
        (
            format!(
                "{{{base}, \"vbds\": [{{\"target\": \"/i\", \"type\": \"qcow\", \"vdev\": \"xvda\"}}]}}"
            ),
            "vbds[0].type",
            "\"qcow\" is not a disk type",
        ),
        (
            format!(
                "{{{base}, \"vbds\": [{{\"target\": \"/i\", \"type\": \"file\", \"vdev\": \"xvd1\"}}]}}"
            ),
            "vbds[0].vdev",
            "\"xvd1\" is not a virtual disk name",
        ),
        (
            format!(
                "{{{base}, \"vbds\": [{{\"target\": \"/i\", \"type\": \"file\", \"vdev\": \"xvda\"}}, {{\"target\": \"/j\", \"type\": \"phy\", \"vdev\": \"d0p0\"}}]}}"
            ),
            "vbds[1].vdev",
            "d0p0 is the same disk as vbds[0]'s xvda (device 51712)",
        ),
        (
            format!(
                "{{{base}, \"vbds\": [{{\"target\": \"/i\", \"type\": \"file\", \"vdev\": \"xvda\", \"access\": \"rw\"}}]}}"
            ),
            "vbds[0].access",
            "\"rw\" is not an access mode",
        ),
        (
            format!(
                "{{{base}, \"vbds\": [{{\"target\": \"\", \"type\": \"file\", \"vdev\": \"xvda\"}}]}}"
            ),
            "vbds[0].target",
            "empty",
        ),
        (
            format!("{{{base}, \"paused\": \"yes\"}}"),
            "paused",
            "invalid type: string \"yes\", expected a boolean",
        ),
        (
            format!("{{{base}, \"vifs\": [{{\"ip\": \"10.0.2.16/33\"}}]}}"),
            "vifs[0].ip",
            "the prefix length \"33\" is not a number from 1 to 32",
        ),
        (
            format!("{{{base}, \"vifs\": [{{\"ip\": \"10.0.2.16/\"}}]}}"),
            "vifs[0].ip",
            "the prefix length \"\" is not a number",
        ),
        (
            format!("{{{base}, \"vifs\": [{{\"ip\": \"10.0.2.0/24\"}}]}}"),
            "vifs[0].ip",
            "10.0.2.0 is the network address of 10.0.2.0/24's network",
        ),
        (
            format!("{{{base}, \"vifs\": [{{\"ip\": \"10.0.2.255\"}}]}}"),
            "vifs[0].ip",
            "10.0.2.255 is the broadcast address",
        ),
        (
            format!("{{{base}, \"vifs\": [{{\"ip\": \"127.0.0.2\"}}]}}"),
            "vifs[0].ip",
            "127.0.0.2 cannot be a guest's address",
        ),
        (
            format!(
                "{{{base}, \"xen\": {{\"dev_method\": \"noxs\"}}, \"vifs\": [{{\"gateway\": \"10.0.2.2\"}}]}}"
            ),
            "vifs[0].gateway",
            "a gateway needs the vif's own address",
        ),
        (
            format!(
                "{{{base}, \"xen\": {{\"dev_method\": \"noxs\"}}, \"vifs\": [{{\"ip\": \"10.0.2.16/24\", \"gateway\": \"10.0.3.1\"}}]}}"
            ),
            "vifs[0].gateway",
            "10.0.3.1 is not another address of 10.0.2.16/24's network",
        ),
        (
            format!(
                "{{{base}, \"xen\": {{\"dev_method\": \"noxs\"}}, \"vifs\": [{{\"ip\": \"10.0.2.16\", \"gateway\": \"10.0.2.16\"}}]}}"
            ),
            "vifs[0].gateway",
            "is not another address",
        ),
        (
            format!(
                "{{{base}, \"xen\": {{\"dev_method\": \"noxs\"}}, \"vifs\": [{{\"ip\": \"10.0.2.16\", \"gateway\": \"gw\"}}]}}"
            ),
            "vifs[0].gateway",
            "\"gw\" is not an IPv4 address",
        ),
        (
            format!("{{{base}, \"vifs\": [{{\"ip\": \"10.0.2.16\", \"gateway\": \"10.0.2.2\"}}]}}"),
            "vifs[0].gateway",
            "only a NoXS guest",
        ),
        (
            format!("{{{base}, \"xen\": {{\"dev_method\": \"carrier-pigeon\"}}}}"),
            "xen.dev_method",
            "not a device method",
        ),
        (
            format!("{{{base}, \"xen\": {{\"pvh\": true}}}}"),
            "xen",
            "unknown key `pvh`, expected `dev_method`",
        ),
    ];
    for (text, field, why) in cases {
        let err = Config::parse(text)
            .err()
            .unwrap_or_else(|| panic!("accepted, but should fail on {field}: {text}"));
        assert_eq!(&err.field, field, "{text}: {err}");
        assert!(err.message.contains(why), "{text}: {err}");
        assert!(!err.to_string().contains('\n'), "one line: {err}");
    }
}

#[test]
fn noxs_vifs_carry_prefix_and_gateway() {
    let config = Config::parse(
        r#"{"name": "d", "kernel": "/k", "memory": 8, "vcpus": 1,
            "xen": {"dev_method": "noxs"},
            "vifs": [{"ip": "10.0.2.16/16", "gateway": "10.0.9.1"},
                     {"ip": "192.168.1.7"},
                     {"ip": "10.1.0.1/31"},
                     {}]}"#,
    )
    .unwrap();
    assert_eq!(config.dev_method, DevMethod::Noxs);
    assert_eq!(config.dev_method.as_str(), "noxs");
    let addresses: Vec<_> = config
        .vifs
        .iter()
        .map(|vif| (vif.ip, vif.prefix_len, vif.gateway))
        .collect();
    assert_eq!(
        addresses,
        [
            (
                Some(Ipv4Addr::new(10, 0, 2, 16)),
                Some(16),
                Some(Ipv4Addr::new(10, 0, 9, 1))
            ),
            (Some(Ipv4Addr::new(192, 168, 1, 7)), None, None),
            (Some(Ipv4Addr::new(10, 1, 0, 1)), Some(31), None),
            (None, None, None),
        ]
    );
    // The Xenstore method takes "/prefix" too (its back-end record keeps the address).
    let xenstore = Config::parse(
        r#"{"name": "d", "kernel": "/k", "memory": 8, "vcpus": 1,
            "vifs": [{"ip": "10.0.2.16/24"}]}"#,
    )
    .unwrap();
    assert_eq!(xenstore.dev_method, DevMethod::Xenstore);
    assert_eq!(xenstore.vifs[0].ip, Some(Ipv4Addr::new(10, 0, 2, 16)));
    assert!(same_subnet(
        Ipv4Addr::new(10, 0, 2, 16),
        Ipv4Addr::new(10, 0, 2, 2),
        24
    ));
    assert!(!same_subnet(
        Ipv4Addr::new(10, 0, 2, 16),
        Ipv4Addr::new(10, 0, 3, 2),
        24
    ));
    assert_eq!(mask(32), u32::MAX);
    assert_eq!(mask(1), 0x8000_0000);
}

#[test]
fn too_many_devices() {
    let base = r#""name": "g", "kernel": "/k", "memory": 8, "vcpus": 1"#;
    let vifs = vec!["{}"; MAX_VIFS + 1].join(",");
    let err = Config::parse(&format!("{{{base}, \"vifs\": [{vifs}]}}")).unwrap_err();
    assert_eq!(err.to_string(), "vifs: 16 vifs: at most 15");
}

#[test]
fn macs() {
    let mac = parse_mac("00:16:3E:0a:00:10").unwrap();
    assert_eq!(mac.to_string(), "00:16:3e:0a:00:10");
    assert_eq!(random_mac([0xff, 1, 2]).to_string(), "00:16:3e:7f:01:02");
    for bad in [
        "",
        "00:16:3e:0a:00",
        "00:16:3e:0a:00:10:11",
        "0:16:3e:0a:00:10",
        "00-16-3e-0a-00-10",
        "+a:16:3e:0a:00:10",
    ] {
        assert!(parse_mac(bad).is_err(), "{bad}");
    }
    assert!(parse_mac("00:00:00:00:00:00").is_err());
}

#[test]
fn numbered_copies() {
    let config =
        Config::parse(r#"{"name": "n", "kernel": "/k", "memory": 4, "vcpus": 1, "vifs": [{}]}"#)
            .unwrap();
    assert_eq!(config.numbered(0, 1).unwrap().name, "n");
    assert_eq!(config.numbered(2, 3).unwrap().name, "n-2");
    let fixed = Config::parse(GOOD).unwrap();
    let err = fixed.numbered(0, 3).unwrap_err();
    assert_eq!(err.field, "vifs[0].mac");
    assert!(
        err.message
            .contains("-n 3 would give 3 domains the same MAC"),
        "{err}"
    );
}

#[test]
fn files_are_checked() {
    let dir = std::env::temp_dir().join(format!("chaos-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("text");
    std::fs::write(&text, "not a kernel\n").unwrap();
    let image = dir.join("disk.img");
    std::fs::write(&image, vec![0u8; 1024]).unwrap();
    let odd = dir.join("odd.img");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    let config = |kernel: &Path, vbd: &str| {
        Config::parse(&format!(
            r#"{{"name": "g", "kernel": "{}", "memory": 8, "vcpus": 1, "vbds": [{vbd}]}}"#,
            kernel.display()
        ))
        .unwrap()
    };
    let file_vbd = |path: &Path, kind: &str| {
        format!(
            r#"{{"target": "{}", "type": "{kind}", "vdev": "xvda"}}"#,
            path.display()
        )
    };
    for (mut config, field, why) in [
        (
            config(&dir.join("nope"), ""),
            "kernel",
            "nope: no such file",
        ),
        (config(&dir, ""), "kernel", "is not a regular file"),
        (config(&text, ""), "kernel", "is not an ELF file"),
    ] {
        let err = config.check_files().unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.contains(why), "{err}");
    }
    // A real kernel is needed past the kernel check: this test binary is an ELF
    // file, but not a PV kernel; so check the targets directly.
    for (vbd, why) in [
        (
            file_vbd(&dir.join("missing.img"), "file"),
            "missing.img: no such file",
        ),
        (file_vbd(&image, "phy"), "is not a block device"),
        (file_vbd(&dir, "file"), "is not a regular file"),
        (
            file_vbd(&odd, "file"),
            "is 1000 bytes, not a whole number of 512-byte sectors",
        ),
    ] {
        let config = config(&text, &vbd);
        let err = check_target("vbds[0].target", &config.vbds[0]).unwrap_err();
        assert!(err.message.contains(why), "{err}");
    }
    check_target(
        "vbds[0].target",
        &config(&text, &file_vbd(&image, "file")).vbds[0],
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A saved NoXS guest's configuration has no kernel (chaos keeps none of it, a restore
/// needs none), and writes back without one; anywhere else the kernel stays required.
#[test]
fn only_a_saved_noxs_configuration_may_lack_its_kernel() {
    let noxs = r#"{"name": "kv", "memory": 32, "vcpus": 1, "xen": {"dev_method": "noxs"}}"#;
    let saved = Config::parse_saved(noxs).unwrap();
    assert_eq!(saved.kernel, Path::new(""));
    assert_eq!(saved.dev_method, DevMethod::Noxs);
    let json = saved.to_json().unwrap();
    assert!(json.get("kernel").is_none(), "{json}");
    assert_eq!(Config::parse_saved(&json.to_string()).unwrap(), saved);
    let err = Config::parse(noxs).unwrap_err();
    assert_eq!(err.field, "kernel");
    assert!(err.message.contains("missing"), "{err}");
    let xenstore = r#"{"name": "kv", "memory": 32, "vcpus": 1}"#;
    let err = Config::parse_saved(xenstore).unwrap_err();
    assert_eq!(err.field, "kernel");
    assert!(
        err.message
            .contains("Xenstore guest's configuration names its kernel"),
        "{err}"
    );
    // A kernel that is given is kept, saved or not.
    let named = r#"{"name": "kv", "kernel": "/apps/kvstore", "memory": 32, "vcpus": 1}"#;
    assert_eq!(
        Config::parse_saved(named).unwrap(),
        Config::parse(named).unwrap()
    );
}
