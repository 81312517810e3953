//! iproute2's JSON (`ip -j addr show`, `ip -j route show`, `tc -j qdisc show`) read into
//! what [`podnet`](super) needs: pure, tested on output captured in the lab's dom0
//! (Debian bookworm's iproute2 6.1).

use std::net::Ipv4Addr;

use serde::Deserialize;

use super::PodInterface;

/// The device a pod's network namespace hands over: CNI names it eth0.
pub const ETH0: &str = "eth0";

/// iproute2 printed what these functions cannot read, or a device lacks what the guest
/// needs from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not the JSON iproute2 prints: {0}")]
    Json(String),
    #[error("{dev} has no MAC address (link type {link_type:?}): the guest needs one")]
    NoMac { dev: String, link_type: String },
    #[error("{dev}'s address {value:?} is not a MAC address")]
    Mac { dev: String, value: String },
    #[error("{dev}'s IPv4 address {value:?} is not one")]
    Address { dev: String, value: String },
    #[error("{dev}'s IPv4 address {address} has no prefix length, or one over 32 ({prefix_len:?})")]
    Prefix {
        dev: String,
        address: Ipv4Addr,
        prefix_len: Option<u32>,
    },
    #[error("{dev} has no IPv4 address: the guest would have none")]
    NoIpv4 { dev: String },
    #[error("the gateway {value:?} of {dev}'s default route is not an IPv4 address")]
    Gateway { dev: String, value: String },
}

/// A network device, as `ip -j link show` or `ip -j addr show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub mtu: u32,
}

#[derive(Debug, Deserialize)]
struct JsonLink {
    ifname: String,
    mtu: u32,
    #[serde(default)]
    link_type: String,
    address: Option<String>,
    /// Only in `ip addr show`'s output.
    #[serde(default)]
    addr_info: Vec<JsonAddr>,
}

#[derive(Debug, Deserialize)]
struct JsonAddr {
    family: String,
    local: Option<String>,
    prefixlen: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct JsonRoute {
    dst: String,
    gateway: Option<String>,
    dev: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JsonQdisc {
    kind: String,
}

fn json<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, ParseError> {
    serde_json::from_str(text).map_err(|err| ParseError::Json(err.to_string()))
}

fn find(links: Vec<JsonLink>, dev: &str) -> Option<JsonLink> {
    links.into_iter().find(|link| link.ifname == dev)
}

/// Device `dev` of `ip -j link show` (or `addr show`) output, if it is there.
pub fn link(json_text: &str, dev: &str) -> Result<Option<Link>, ParseError> {
    Ok(find(json(json_text)?, dev).map(|link| Link { mtu: link.mtu }))
}

/// eth0 of a namespace from `ip -j addr show` (every device) and `ip -j -4 route show
/// default`: None if there is no eth0. Its first IPv4 address is the guest's; the
/// gateway is that of a default route through eth0.
pub fn pod_interface(
    addr_json: &str,
    route_json: &str,
) -> Result<Option<PodInterface>, ParseError> {
    let Some(eth0) = find(json(addr_json)?, ETH0) else {
        return Ok(None);
    };
    let dev = || ETH0.to_owned();
    let mac_text = eth0.address.ok_or_else(|| ParseError::NoMac {
        dev: dev(),
        link_type: eth0.link_type.clone(),
    })?;
    let mac = mac(&mac_text).ok_or_else(|| ParseError::Mac {
        dev: dev(),
        value: mac_text.clone(),
    })?;
    let inet = eth0
        .addr_info
        .iter()
        .find(|addr| addr.family == "inet")
        .ok_or_else(|| ParseError::NoIpv4 { dev: dev() })?;
    let local = inet.local.clone().unwrap_or_default();
    let address: Ipv4Addr = local.parse().map_err(|_| ParseError::Address {
        dev: dev(),
        value: local.clone(),
    })?;
    let prefix_len = inet
        .prefixlen
        .filter(|&len| len <= 32)
        .ok_or(ParseError::Prefix {
            dev: dev(),
            address,
            prefix_len: inet.prefixlen,
        })?;
    let gateway = default_gateway(route_json, ETH0)?;
    Ok(Some(PodInterface {
        mac,
        address,
        prefix_len: u8::try_from(prefix_len).expect("at most 32"),
        gateway,
        mtu: eth0.mtu,
    }))
}

/// The gateway of the first default route through `dev` in `ip -j route show` output.
pub fn default_gateway(json_text: &str, dev: &str) -> Result<Option<Ipv4Addr>, ParseError> {
    let routes: Vec<JsonRoute> = json(json_text)?;
    let Some(route) = routes
        .into_iter()
        .find(|route| route.dst == "default" && route.dev.as_deref() == Some(dev))
    else {
        return Ok(None);
    };
    route
        .gateway
        .map(|gateway| {
            gateway.parse().map_err(|_| ParseError::Gateway {
                dev: dev.to_owned(),
                value: gateway.clone(),
            })
        })
        .transpose()
}

/// Whether `tc -j qdisc show dev DEV` lists an ingress qdisc.
pub fn has_ingress(json_text: &str) -> Result<bool, ParseError> {
    let qdiscs: Vec<JsonQdisc> = json(json_text)?;
    Ok(qdiscs.iter().any(|qdisc| qdisc.kind == "ingress"))
}

/// `aa:bb:cc:dd:ee:ff` (two hex digits each).
pub fn mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ip -j addr show` in the lab's pod namespace t0 (podnet-lab.sh): lo, and eth0 (a
    /// veth, 10.9.0.2/24).
    const ADDR_T0: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"qdisc":"noqueue","operstate":"UNKNOWN","group":"default","txqlen":1000,"link_type":"loopback","address":"00:00:00:00:00:00","broadcast":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"::1","prefixlen":128,"scope":"host","valid_life_time":4294967295,"preferred_life_time":4294967295}]},{"ifindex":2,"link_index":4,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"02:00:0a:09:00:02","broadcast":"ff:ff:ff:ff:ff:ff","link_netnsid":0,"addr_info":[{"family":"inet","local":"10.9.0.2","prefixlen":24,"scope":"global","label":"eth0","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"fe80::aff:fe09:2","prefixlen":64,"scope":"link","tentative":true,"valid_life_time":4294967295,"preferred_life_time":4294967295}]}]"#;

    /// `ip -j -4 route show default` there.
    const ROUTE_T0: &str = r#"[{"dst":"default","gateway":"10.9.0.1","dev":"eth0","flags":[]}]"#;

    #[test]
    fn eth0_of_a_pod() {
        assert_eq!(
            pod_interface(ADDR_T0, ROUTE_T0),
            Ok(Some(PodInterface {
                mac: [0x02, 0x00, 0x0a, 0x09, 0x00, 0x02],
                address: Ipv4Addr::new(10, 9, 0, 2),
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(10, 9, 0, 1)),
                mtu: 1500,
            }))
        );
    }

    #[test]
    fn no_eth0_no_interface() {
        let lo_only = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK"],"mtu":65536,"qdisc":"noop","operstate":"DOWN","group":"default","txqlen":1000,"link_type":"loopback","address":"00:00:00:00:00:00","broadcast":"00:00:00:00:00:00","addr_info":[]}]"#;
        assert_eq!(pod_interface(lo_only, "[]"), Ok(None));
        assert_eq!(pod_interface("[]", "[]"), Ok(None));
    }

    #[test]
    fn no_default_route_no_gateway() {
        let eth0 = pod_interface(ADDR_T0, "[]").unwrap().unwrap();
        assert_eq!(eth0.gateway, None);
        // A default route through another device is not eth0's.
        let other = r#"[{"dst":"default","gateway":"10.1.0.1","dev":"eth1","flags":[]}]"#;
        assert_eq!(
            pod_interface(ADDR_T0, other).unwrap().unwrap().gateway,
            None
        );
        // One without a gateway (a device route).
        let direct = r#"[{"dst":"default","dev":"eth0","scope":"link","flags":[]}]"#;
        assert_eq!(
            pod_interface(ADDR_T0, direct).unwrap().unwrap().gateway,
            None
        );
    }

    #[test]
    fn eth0_without_ipv4_is_an_error() {
        let v6_only = ADDR_T0.replace(
            r#"{"family":"inet","local":"10.9.0.2","prefixlen":24,"scope":"global","label":"eth0","valid_life_time":4294967295,"preferred_life_time":4294967295},"#,
            "",
        );
        assert_ne!(v6_only, ADDR_T0);
        let err = pod_interface(&v6_only, ROUTE_T0).unwrap_err();
        assert_eq!(err, ParseError::NoIpv4 { dev: "eth0".into() });
        assert_eq!(
            err.to_string(),
            "eth0 has no IPv4 address: the guest would have none"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let bad_mac = ADDR_T0.replace("02:00:0a:09:00:02", "02:00:0a:09:00");
        assert_eq!(
            pod_interface(&bad_mac, ROUTE_T0),
            Err(ParseError::Mac {
                dev: "eth0".into(),
                value: "02:00:0a:09:00".into()
            })
        );
        let bad_prefix = ADDR_T0.replace(r#""prefixlen":24"#, r#""prefixlen":33"#);
        assert_eq!(
            pod_interface(&bad_prefix, ROUTE_T0),
            Err(ParseError::Prefix {
                dev: "eth0".into(),
                address: Ipv4Addr::new(10, 9, 0, 2),
                prefix_len: Some(33)
            })
        );
        let bad_gateway = ROUTE_T0.replace("10.9.0.1", "fe80::1");
        assert_eq!(
            pod_interface(ADDR_T0, &bad_gateway),
            Err(ParseError::Gateway {
                dev: "eth0".into(),
                value: "fe80::1".into()
            })
        );
        assert!(matches!(
            pod_interface("Device \"eth0\" does not exist.", ROUTE_T0),
            Err(ParseError::Json(_))
        ));
    }

    #[test]
    fn links() {
        // `ip -j link show dev vif1.0` in the lab's dom0: netback's vif on xenbr0, its
        // guest paused.
        let vif = r#"[{"ifindex":5,"ifname":"vif1.0","flags":["NO-CARRIER","BROADCAST","MULTICAST","UP"],"mtu":1500,"qdisc":"fq_codel","master":"xenbr0","operstate":"DOWN","linkmode":"DEFAULT","group":"default","txqlen":1000,"link_type":"ether","address":"fe:ff:ff:ff:ff:ff","broadcast":"ff:ff:ff:ff:ff:ff"}]"#;
        assert_eq!(link(vif, "vif1.0"), Ok(Some(Link { mtu: 1500 })));
        assert_eq!(link(vif, "vif1.1"), Ok(None));
        assert_eq!(link(ADDR_T0, "eth0"), Ok(Some(Link { mtu: 1500 })));
    }

    #[test]
    fn ingress_qdiscs() {
        assert_eq!(
            has_ingress(
                r#"[{"kind":"noqueue","handle":"0:","root":true,"refcnt":2,"options":{}}]"#
            ),
            Ok(false)
        );
        assert_eq!(
            has_ingress(
                r#"[{"kind":"noqueue","handle":"0:","root":true,"refcnt":2,"options":{}},{"kind":"ingress","handle":"ffff:","parent":"ffff:fff1","options":{}}]"#
            ),
            Ok(true)
        );
        assert_eq!(has_ingress("[]"), Ok(false));
        assert!(matches!(
            has_ingress("Cannot find device \"eth0\""),
            Err(ParseError::Json(_))
        ));
    }

    #[test]
    fn macs() {
        assert_eq!(
            mac("fe:ff:ff:ff:ff:0a"),
            Some([0xfe, 0xff, 0xff, 0xff, 0xff, 0x0a])
        );
        for bad in [
            "",
            "fe:ff:ff:ff:ff",
            "fe:ff:ff:ff:ff:ff:00",
            "f:ff:ff:ff:ff:fff",
            "gg:ff:ff:ff:ff:ff",
            "+f:ff:ff:ff:ff:ff",
        ] {
            assert_eq!(mac(bad), None, "{bad}");
        }
    }
}
