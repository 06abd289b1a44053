//! Callback URLs: which ones may be called. A job's terminal record is POSTed
//! to its callback URL from inside the deployment, so a URL that resolves to
//! a private, loopback or link-local address would let a caller reach
//! internal services; those are refused unless explicitly allowed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The host and port of an `http(s)://` URL, checked for shape only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackTarget {
    pub host: String,
    pub port: u16,
}

impl CallbackTarget {
    /// Parses `url`; refuses other schemes, user info and empty hosts.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (rest, default_port) = if let Some(rest) = url.strip_prefix("https://") {
            (rest, 443)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (rest, 80)
        } else {
            return Err("callback_url must be an http:// or https:// URL".into());
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err("callback_url must not carry credentials".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or("callback_url has a bad host")?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => default_port,
            Some(p) => p.parse().map_err(|_| "callback_url has a bad port")?,
        };
        if host.is_empty() || url.len() > 2048 || url.chars().any(char::is_whitespace) {
            return Err("callback_url is not a valid URL".into());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

/// Whether `ip` is an address on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80) // link local
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_and_ports() {
        let t = CallbackTarget::parse("https://example.com/hook?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("example.com", 443));
        let t = CallbackTarget::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 9000));
        let t = CallbackTarget::parse("http://[::1]:81/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 81));
        for bad in [
            "ftp://x",
            "http://",
            "http://u:p@host/",
            "http://h:99999/",
            "x",
        ] {
            assert!(CallbackTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn private_addresses_are_not_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
