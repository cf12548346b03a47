//! CIDRs and `MqttFirewall` specs.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::crd::firewall::{MqttFirewallSpec, Peer};

use super::{FieldError, broker_ref, quote};

/// Ranges that never count as "the public internet" (the list in the MqttFirewall CEL rule).
const NON_PUBLIC: [&str; 9] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
    "::1/128",
];

/// CEL message of the public-internet rule.
const PUBLIC_MESSAGE: &str = "a CIDR covering the public internet (0.0.0.0/0, ::/0, a public range broader than /16 \
                              for IPv4 or /32 for IPv6, or the NAT64 prefix 64:ff9b::/96 broader than /112) requires \
                              allowPublicInternet: true";

/// Parses an IPv4 or IPv6 CIDR exactly as the apiserver's CEL `isCIDR()`/`cidr()` do (Go's
/// `netip.ParsePrefix`: dotted-quad IPv4 without leading zeros, RFC 4291 IPv6, a decimal prefix
/// length without sign or leading zeros, no zone; IPv4-mapped IPv6 addresses are refused) and
/// returns the **normalized** network: host bits cleared (`10.1.2.3/8` → `10.0.0.0/8`).
pub fn cidr(text: &str) -> Result<IpNet, String> {
    let Some((addr, bits)) = text.rsplit_once('/') else {
        return Err(format!("{} is not a CIDR: missing '/<prefix length>'", quote(text)));
    };
    let addr: IpAddr =
        addr.parse().map_err(|_| format!("{} is not a CIDR: {} is not an IP address", quote(text), quote(addr)))?;
    let max = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let digits_ok = !bits.is_empty() && bits.len() <= 3 && bits.bytes().all(|b| b.is_ascii_digit());
    let canonical = bits == "0" || !bits.starts_with('0');
    let len: u8 = match bits.parse() {
        Ok(n) if digits_ok && canonical && n <= max => n,
        _ => {
            return Err(format!(
                "{} is not a CIDR: the prefix length must be a number from 0 to {max} without leading zeros",
                quote(text)
            ));
        }
    };
    if let IpAddr::V6(v6) = addr
        && v6.to_ipv4_mapped().is_some()
    {
        return Err(format!(
            "{} is an IPv4-mapped IPv6 address, which is not allowed; write the IPv4 CIDR",
            quote(text)
        ));
    }
    let net = IpNet::new(addr, len).map_err(|_| format!("{} is not a CIDR", quote(text)))?;
    Ok(net.trunc())
}

/// True when `net` needs `allowPublicInternet: true`: its prefix is shorter than /16 (IPv4) or
/// /32 (IPv6) and it does not lie inside a private, CGNAT, loopback or link-local range
/// (10/8, 172.16/12, 192.168/16, 100.64/10, 127/8, 169.254/16, fc00::/7, fe80::/10, ::1/128); or
/// it holds the NAT64 prefix 64:ff9b::/96, or lies in it with a prefix shorter than /112.
/// Same rule as the MqttFirewall CEL validation.
pub fn covers_public_internet(net: &IpNet) -> bool {
    // NAT64 (RFC 6052): 64:ff9b::/96 carries the whole IPv4 internet; a range in it is as public
    // as the IPv4 range it embeds (broader than /16 there = shorter than /112 here)
    let nat64: IpNet = "64:ff9b::/96".parse().expect("the NAT64 prefix is valid");
    if matches!(net, IpNet::V6(_)) && (net.contains(&nat64) || (nat64.contains(net) && net.prefix_len() < 112)) {
        return true;
    }
    let min = match net {
        IpNet::V4(_) => 16,
        IpNet::V6(_) => 32,
    };
    if net.prefix_len() >= min {
        return false;
    }
    !NON_PUBLIC.iter().any(|range| {
        let range: IpNet = range.parse().expect("the built-in ranges are valid");
        range.contains(net)
    })
}

/// The valid peer CIDRs of a firewall spec that cover part of the public internet.
pub fn public_cidrs(spec: &MqttFirewallSpec) -> Vec<IpNet> {
    spec.ingress
        .iter()
        .flat_map(|r| &r.from)
        .filter_map(|p| p.cidr.as_deref())
        .filter_map(|c| cidr(c).ok())
        .filter(covers_public_internet)
        .collect()
}

/// Validates an `MqttFirewall` spec as the apiserver does: list sizes, listener name lengths,
/// every peer (`cidr` xor selectors, `except` only with `cidr` and strictly inside it in the same
/// family), and the public-internet rule.
pub fn firewall_spec(spec: &MqttFirewallSpec) -> Result<(), FieldError> {
    broker_ref(&spec.broker_ref.name)?;
    if spec.ingress.is_empty() || spec.ingress.len() > 16 {
        return Err(FieldError::new("spec.ingress", "must hold 1 to 16 rules"));
    }
    for (i, rule) in spec.ingress.iter().enumerate() {
        let at = format!("spec.ingress[{i}]");
        if rule.from.is_empty() || rule.from.len() > 32 {
            return Err(FieldError::new(format!("{at}.from"), "must hold 1 to 32 peers"));
        }
        if rule.listeners.len() > 8 {
            return Err(FieldError::new(format!("{at}.listeners"), "at most 8 listeners"));
        }
        for (k, listener) in rule.listeners.iter().enumerate() {
            let n = listener.chars().count();
            if !(1..=15).contains(&n) {
                return Err(FieldError::new(format!("{at}.listeners[{k}]"), "must be 1 to 15 characters long"));
            }
        }
        for (j, peer_spec) in rule.from.iter().enumerate() {
            peer(&format!("{at}.from[{j}]"), peer_spec, spec.allow_public_internet)?;
        }
    }
    Ok(())
}

fn peer(at: &str, p: &Peer, allow_public_internet: bool) -> Result<(), FieldError> {
    let has_selector = p.namespace_selector.is_some() || p.pod_selector.is_some();
    if p.cidr.is_some() == has_selector {
        return Err(FieldError::new(at, "a peer sets either cidr or namespaceSelector/podSelector"));
    }
    let Some(text) = &p.cidr else {
        if p.except.is_some() {
            return Err(FieldError::new(format!("{at}.except"), "except is only valid with cidr"));
        }
        return Ok(());
    };
    let field = format!("{at}.cidr");
    let n = text.chars().count();
    if !(2..=49).contains(&n) {
        return Err(FieldError::new(field, "must be 2 to 49 characters long"));
    }
    let net =
        cidr(text).map_err(|m| FieldError::new(&field, format!("cidr must be a valid IPv4 or IPv6 CIDR: {m}")))?;
    if let Some(except) = &p.except {
        if except.len() > 32 {
            return Err(FieldError::new(format!("{at}.except"), "at most 32 entries"));
        }
        for (k, e) in except.iter().enumerate() {
            let field = format!("{at}.except[{k}]");
            let n = e.chars().count();
            if !(2..=49).contains(&n) {
                return Err(FieldError::new(field, "must be 2 to 49 characters long"));
            }
            let inner = cidr(e).map_err(|m| FieldError::new(&field, m))?;
            // IpNet::contains is false across families, as the CEL family check requires
            if !(net.contains(&inner) && inner.prefix_len() > net.prefix_len()) {
                return Err(FieldError::new(field, "every except entry must be a CIDR strictly inside cidr"));
            }
        }
    }
    if !allow_public_internet && covers_public_internet(&net) {
        return Err(FieldError::new(field, PUBLIC_MESSAGE));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::common::BrokerRef;
    use crate::crd::firewall::IngressRule;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn cidr_peer(c: &str, except: Option<&[&str]>) -> Peer {
        Peer {
            cidr: Some(c.into()),
            except: except.map(|e| e.iter().map(|s| s.to_string()).collect()),
            namespace_selector: None,
            pod_selector: None,
        }
    }

    fn selector_peer() -> Peer {
        Peer { cidr: None, except: None, namespace_selector: Some(LabelSelector::default()), pod_selector: None }
    }

    fn spec(from: Vec<Peer>, allow_public_internet: bool) -> MqttFirewallSpec {
        MqttFirewallSpec {
            broker_ref: BrokerRef { name: "prod".into() },
            ingress: vec![IngressRule { from, listeners: vec![] }],
            allow_public_internet,
        }
    }

    #[test]
    fn cidr_normalizes_host_bits() {
        assert_eq!(cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(cidr("192.168.1.77/24").unwrap().to_string(), "192.168.1.0/24");
        assert_eq!(cidr("10.20.0.0/16").unwrap().to_string(), "10.20.0.0/16");
        assert_eq!(cidr("fd00:10::1/64").unwrap().to_string(), "fd00:10::/64");
        assert_eq!(cidr("FD00:10::ABCD/48").unwrap().to_string(), "fd00:10::/48");
        assert_eq!(cidr("1.2.3.4/32").unwrap().to_string(), "1.2.3.4/32");
        assert_eq!(cidr("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(cidr("::/0").unwrap().to_string(), "::/0");
        assert_eq!(cidr("::1.2.3.4/128").unwrap().to_string(), "::102:304/128", "IPv4-compatible is plain IPv6");
    }

    #[test]
    fn cidr_rejects_what_go_netip_rejects() {
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/08",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8 ",
            " 10.0.0.0/8",
            "10.0.0/8",
            "10.0.0.0.0/8",
            "010.0.0.0/8",
            "10.0.0.256/32",
            "10.0.0.0/8/8",
            "fe80::1%eth0/64",
            "::ffff:10.0.0.0/104",
            "::ffff:a00:0/104",
            "1:2:3:4:5:6:7:8:9/64",
            "1::2::3/64",
            "12345::/16",
            "example.com/8",
            "10.0.0.0/8\n",
        ] {
            assert!(cidr(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn public_internet_detection() {
        // NAT64 (red team 12): 64:ff9b::/96 is the whole IPv4 internet, /104 a /8 of it
        let public = [
            "0.0.0.0/0",
            "::/0",
            "8.0.0.0/8",
            "1.2.0.0/15",
            "2001:db8::/31",
            "2000::/3",
            "172.0.0.0/8",
            "64:ff9b::/96",
            "64:ff9b::/64",
            "64:ff9b::800:0/104",
        ];
        for p in public {
            assert!(covers_public_internet(&cidr(p).unwrap()), "{p}");
        }
        let fine = [
            "1.2.0.0/16",
            "203.0.113.7/32",
            "2001:db8::/32",
            "10.0.0.0/8",
            "10.128.0.0/9",
            "172.16.0.0/12",
            "172.20.0.0/14",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "fc00::/7",
            "fd00::/8",
            "fe80::/10",
            "::1/128",
            "64:ff9b::102:0/112",
            "64:ff9b::1.2.3.4/128",
        ];
        for p in fine {
            assert!(!covers_public_internet(&cidr(p).unwrap()), "{p}");
        }
    }

    #[test]
    fn public_internet_needs_allow_public_internet() {
        let e = firewall_spec(&spec(vec![cidr_peer("0.0.0.0/0", None)], false)).unwrap_err();
        assert_eq!(e.field, "spec.ingress[0].from[0].cidr");
        assert!(e.message.contains("allowPublicInternet"));
        assert!(firewall_spec(&spec(vec![cidr_peer("::/0", None)], false)).is_err());
        assert_eq!(firewall_spec(&spec(vec![cidr_peer("0.0.0.0/0", None)], true)), Ok(()));
        assert_eq!(firewall_spec(&spec(vec![cidr_peer("::/0", None)], true)), Ok(()));
        assert_eq!(firewall_spec(&spec(vec![cidr_peer("10.0.0.0/8", None)], false)), Ok(()));
        assert_eq!(firewall_spec(&spec(vec![cidr_peer("203.0.113.0/24", None)], false)), Ok(()));
    }

    #[test]
    fn peer_is_cidr_xor_selectors() {
        assert_eq!(firewall_spec(&spec(vec![selector_peer()], false)), Ok(()));
        let mut both = selector_peer();
        both.cidr = Some("10.0.0.0/8".into());
        assert_eq!(firewall_spec(&spec(vec![both], false)).unwrap_err().field, "spec.ingress[0].from[0]");
        let neither = Peer { cidr: None, except: None, namespace_selector: None, pod_selector: None };
        assert_eq!(firewall_spec(&spec(vec![neither], false)).unwrap_err().field, "spec.ingress[0].from[0]");
        let mut except_without_cidr = selector_peer();
        except_without_cidr.except = Some(vec![]);
        assert_eq!(
            firewall_spec(&spec(vec![selector_peer(), except_without_cidr], false)).unwrap_err().field,
            "spec.ingress[0].from[1].except"
        );
    }

    #[test]
    fn except_must_be_strictly_inside_in_the_same_family() {
        let ok = cidr_peer("10.0.0.0/8", Some(&["10.1.0.0/16", "10.2.3.4/32"]));
        assert_eq!(firewall_spec(&spec(vec![ok], false)), Ok(()));
        for (bad, idx) in [
            (&["10.0.0.0/8"][..], 0),             // equal, not strictly inside
            (&["10.1.0.0/16", "11.0.0.0/16"], 1), // outside
            (&["fd00::/64"], 0),                  // other family
            (&["10.0.0.0/7"], 0),                 // wider
            (&["10.1.0.0/16", "not-a-cidr"], 1),  // invalid
        ] {
            let e = firewall_spec(&spec(vec![cidr_peer("10.0.0.0/8", Some(bad))], false)).unwrap_err();
            assert_eq!(e.field, format!("spec.ingress[0].from[0].except[{idx}]"), "{bad:?}");
        }
        // containment is decided on the masked networks, as CEL containsCIDR does
        let masked = cidr_peer("10.9.9.9/8", Some(&["10.1.2.3/16"]));
        assert_eq!(firewall_spec(&spec(vec![masked], false)), Ok(()));
    }

    #[test]
    fn bad_cidrs_are_named() {
        let e =
            firewall_spec(&spec(vec![cidr_peer("10.0.0.0/8", None), cidr_peer("10.0.0.1", None)], false)).unwrap_err();
        assert_eq!(e.field, "spec.ingress[0].from[1].cidr");
        assert!(e.message.contains("valid IPv4 or IPv6 CIDR"));
        let long = format!("{}/64", "0:".repeat(24));
        assert!(firewall_spec(&spec(vec![cidr_peer(&long, None)], false)).unwrap_err().message.contains("49"));
    }

    #[test]
    fn list_and_listener_limits() {
        let mut s = spec(vec![selector_peer()], false);
        s.ingress[0].listeners = vec!["mqtts".into(), "a-very-long-listener-name".into()];
        assert_eq!(firewall_spec(&s).unwrap_err().field, "spec.ingress[0].listeners[1]");
        s.ingress[0].listeners = vec![];
        s.ingress[0].from = vec![];
        assert_eq!(firewall_spec(&s).unwrap_err().field, "spec.ingress[0].from");
        s.ingress = vec![];
        assert_eq!(firewall_spec(&s).unwrap_err().field, "spec.ingress");
    }
}
