//! How the interface gets its address: `ip=ADDR/PREFIX` (and optionally
//! `gw=GATEWAY`) on the command line, else the address the toolstack assigned through
//! NoXS, else DHCP.

use alloc::string::String;
use core::fmt;

use kernel::Args;
use smoltcp::wire::{Ipv4Address, Ipv4Cidr};

/// The interface's IPv4 configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Config {
    Static {
        address: Ipv4Cidr,
        gateway: Option<Ipv4Address>,
    },
    Dhcp,
}

/// A network argument that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// `ip=` is not `a.b.c.d/prefix`.
    BadAddress(String),
    /// `gw=` is not `a.b.c.d`.
    BadGateway(String),
    /// `gw=` without `ip=`.
    GatewayWithoutAddress,
    /// The gateway is not on the interface's subnet.
    GatewayOffSubnet {
        gateway: Ipv4Address,
        address: Ipv4Cidr,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadAddress(value) => write!(
                f,
                "ip={value}: expected ADDRESS/PREFIX such as 10.0.2.16/24"
            ),
            Self::BadGateway(value) => {
                write!(f, "gw={value}: expected an IPv4 address such as 10.0.2.2")
            }
            Self::GatewayWithoutAddress => {
                f.write_str("gw= needs ip= too (without ip= the address comes from DHCP)")
            }
            Self::GatewayOffSubnet { gateway, address } => {
                write!(f, "gw={gateway} is not on the subnet of ip={address}")
            }
        }
    }
}

impl Config {
    /// Read `ip=` and `gw=` from the app's arguments.
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let gateway = match args.value("gw") {
            Some(text) => Some(
                text.parse::<Ipv4Address>()
                    .map_err(|_| ConfigError::BadGateway(text.into()))?,
            ),
            None => None,
        };
        let Some(text) = args.value("ip") else {
            return match gateway {
                Some(_) => Err(ConfigError::GatewayWithoutAddress),
                None => Ok(Self::Dhcp),
            };
        };
        // Insist on an explicit prefix: a bare address would silently mean /32.
        let address = text
            .contains('/')
            .then(|| text.parse::<Ipv4Cidr>().ok())
            .flatten()
            .filter(|cidr| cidr.prefix_len() <= 32 && !cidr.address().is_unspecified())
            .ok_or_else(|| ConfigError::BadAddress(text.into()))?;
        if let Some(gateway) = gateway
            && !address.contains_addr(&gateway)
        {
            return Err(ConfigError::GatewayOffSubnet { gateway, address });
        }
        Ok(Self::Static { address, gateway })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Config, ConfigError> {
        Config::from_args(&Args::parse(line).unwrap())
    }

    #[test]
    fn static_address_with_gateway() {
        assert_eq!(
            parse("ip=10.0.2.16/24 gw=10.0.2.2"),
            Ok(Config::Static {
                address: Ipv4Cidr::new(Ipv4Address::new(10, 0, 2, 16), 24),
                gateway: Some(Ipv4Address::new(10, 0, 2, 2)),
            })
        );
        assert_eq!(
            parse("ip=192.168.1.5/16"),
            Ok(Config::Static {
                address: Ipv4Cidr::new(Ipv4Address::new(192, 168, 1, 5), 16),
                gateway: None
            })
        );
    }

    #[test]
    fn no_address_means_dhcp() {
        assert_eq!(parse(""), Ok(Config::Dhcp));
        assert_eq!(parse("port=13"), Ok(Config::Dhcp));
    }

    #[test]
    fn bad_values_are_named() {
        for bad in [
            "ip=10.0.2.16",
            "ip=10.0.2.300/24",
            "ip=10.0.2.16/33",
            "ip=banana/24",
            "ip=0.0.0.0/0",
        ] {
            let value = bad.strip_prefix("ip=").unwrap();
            assert_eq!(
                parse(bad),
                Err(ConfigError::BadAddress(value.into())),
                "{bad}"
            );
        }
        assert_eq!(
            parse("ip=10.0.2.16/24 gw=10.0.2"),
            Err(ConfigError::BadGateway("10.0.2".into()))
        );
        assert_eq!(
            parse("gw=10.0.2.2"),
            Err(ConfigError::GatewayWithoutAddress)
        );
        let err = parse("ip=10.0.2.16/24 gw=10.0.3.2").unwrap_err();
        assert_eq!(
            err.to_string(),
            "gw=10.0.3.2 is not on the subnet of ip=10.0.2.16/24"
        );
    }
}
