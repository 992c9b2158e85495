//! The rule for endpoints a tenant supplies (today the host of
//! `SENTRY_DSN`): they reach public vendors only, never the gateway's own
//! network. [`ip_not_public`] says whether an address is off limits and
//! why; [`host_not_public`] applies it to a host as written (an IP literal
//! or a well-known internal name), which is all the shim can check. The
//! gateway applies the same rule to every address a name resolves to, at
//! connect time, and lets its operator allow networks
//! (`--allow-endpoint-net`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The rule, as errors state it after the address's kind.
pub const RULE: &str = "a tenant-supplied endpoint must be a public address; \
    use the vendor's public host, or ask the gateway's operator to allow that network \
    with --allow-endpoint-net";

/// Why an address is not a public one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotPublic {
    Unspecified,
    Loopback,
    Private,
    /// Carrier-grade NAT space (100.64.0.0/10).
    Shared,
    LinkLocal,
    /// A cloud provider's instance metadata service.
    CloudMetadata,
    UniqueLocal,
    Multicast,
    /// Documentation, benchmarking, broadcast and reserved ranges.
    Reserved,
}

impl NotPublic {
    /// "a loopback address", ...
    pub fn describe(self) -> &'static str {
        match self {
            NotPublic::Unspecified => "an unspecified address",
            NotPublic::Loopback => "a loopback address",
            NotPublic::Private => "a private address",
            NotPublic::Shared => "a shared (carrier-grade NAT) address",
            NotPublic::LinkLocal => "a link-local address",
            NotPublic::CloudMetadata => "a cloud metadata address",
            NotPublic::UniqueLocal => "a unique-local address",
            NotPublic::Multicast => "a multicast address",
            NotPublic::Reserved => "a reserved address",
        }
    }
}

/// Instance metadata services: AWS, GCP and Azure (169.254.169.254), AWS
/// ECS task metadata (169.254.170.2), Alibaba (100.100.100.200) and Oracle
/// (192.0.0.192).
const METADATA_V4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(192, 0, 0, 192),
];
/// AWS's instance metadata service over IPv6.
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Why `ip` is not a public address, or `None` when it is. An IPv6 address
/// that carries an IPv4 one (IPv4-mapped, IPv4-compatible, NAT64) is judged
/// by the IPv4 address.
pub fn ip_not_public(ip: IpAddr) -> Option<NotPublic> {
    match ip {
        IpAddr::V4(v4) => v4_not_public(v4),
        IpAddr::V6(v6) => v6_not_public(v6),
    }
}

fn v4_not_public(ip: Ipv4Addr) -> Option<NotPublic> {
    let [a, b, c, _] = ip.octets();
    Some(if METADATA_V4.contains(&ip) {
        NotPublic::CloudMetadata
    } else if a == 0 {
        NotPublic::Unspecified
    } else if ip.is_loopback() {
        NotPublic::Loopback
    } else if ip.is_private() {
        NotPublic::Private
    } else if a == 100 && (64..128).contains(&b) {
        NotPublic::Shared
    } else if ip.is_link_local() {
        NotPublic::LinkLocal
    } else if ip.is_multicast() {
        NotPublic::Multicast
    } else if a >= 240                               // reserved, broadcast
        || (a == 192 && b == 0 && c == 0)           // IETF protocol assignments
        || ip.is_documentation()
        || (a == 198 && (b & 0xfe) == 18)
    // benchmarking
    {
        NotPublic::Reserved
    } else {
        return None;
    })
}

fn v6_not_public(ip: Ipv6Addr) -> Option<NotPublic> {
    let s = ip.segments();
    let embedded_v4 =
        || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    Some(if ip == METADATA_V6 {
        NotPublic::CloudMetadata
    } else if ip.is_unspecified() {
        NotPublic::Unspecified
    } else if ip.is_loopback() {
        NotPublic::Loopback
    } else if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_not_public(v4);
    } else if s[..6] == [0; 6] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // IPv4-compatible (deprecated) and NAT64: the IPv4 address decides.
        return v4_not_public(embedded_v4());
    } else if (s[0] & 0xfe00) == 0xfc00 {
        NotPublic::UniqueLocal
    } else if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 {
        // Link-local, and the deprecated site-local.
        NotPublic::LinkLocal
    } else if ip.is_multicast() {
        NotPublic::Multicast
    } else if (s[0] == 0x2001 && s[1] == 0x0db8) || s[..4] == [0x100, 0, 0, 0] {
        // Documentation, discard-only.
        NotPublic::Reserved
    } else {
        return None;
    })
}

/// The address a well-known internal name stands for: `localhost` and its
/// subdomains (RFC 6761), and cloud metadata names. Case and a trailing dot
/// are ignored.
pub fn well_known_internal_name(host: &str) -> Option<IpAddr> {
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
    } else if matches!(
        name.as_str(),
        "metadata.google.internal" | "metadata" | "metadata.goog" | "instance-data"
    ) || name.starts_with("instance-data.")
    {
        Some(IpAddr::V4(METADATA_V4[0]))
    } else {
        None
    }
}

/// The address a host stands for as written: an IPv4 literal, an IPv6
/// literal (with or without brackets) or a well-known internal name;
/// `None` for any other name, which only resolving can judge.
pub fn literal_address(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>()
        .ok()
        .or_else(|| well_known_internal_name(host))
}

/// Why `host`, as written, is not a public endpoint ([`literal_address`],
/// then [`ip_not_public`]). A name that is not well known passes: only
/// resolving it can tell.
pub fn host_not_public(host: &str) -> Option<NotPublic> {
    literal_address(host).and_then(ip_not_public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_internal_address_family_is_refused_with_its_kind() {
        let cases = [
            ("0.0.0.0", NotPublic::Unspecified),
            ("[::]", NotPublic::Unspecified),
            ("127.0.0.1", NotPublic::Loopback),
            ("127.255.0.9", NotPublic::Loopback),
            ("[::1]", NotPublic::Loopback),
            ("[::ffff:127.0.0.1]", NotPublic::Loopback),
            ("[::ffff:7f00:1]", NotPublic::Loopback),
            ("[::127.0.0.1]", NotPublic::Loopback),
            ("[64:ff9b::a00:1]", NotPublic::Private),
            ("localhost", NotPublic::Loopback),
            ("LocalHost.", NotPublic::Loopback),
            ("api.localhost", NotPublic::Loopback),
            ("10.1.2.3", NotPublic::Private),
            ("172.16.0.1", NotPublic::Private),
            ("192.168.1.1", NotPublic::Private),
            ("[::ffff:192.168.1.1]", NotPublic::Private),
            ("100.64.0.1", NotPublic::Shared),
            ("169.254.1.1", NotPublic::LinkLocal),
            ("[fe80::1]", NotPublic::LinkLocal),
            ("169.254.169.254", NotPublic::CloudMetadata),
            ("[::ffff:169.254.169.254]", NotPublic::CloudMetadata),
            ("169.254.170.2", NotPublic::CloudMetadata),
            ("100.100.100.200", NotPublic::CloudMetadata),
            ("[fd00:ec2::254]", NotPublic::CloudMetadata),
            ("metadata.google.internal", NotPublic::CloudMetadata),
            ("METADATA.GOOGLE.INTERNAL.", NotPublic::CloudMetadata),
            ("[fc00::1]", NotPublic::UniqueLocal),
            ("[fd12:3456::1]", NotPublic::UniqueLocal),
            ("224.0.0.1", NotPublic::Multicast),
            ("[ff02::1]", NotPublic::Multicast),
            ("255.255.255.255", NotPublic::Reserved),
            ("192.0.2.1", NotPublic::Reserved),
            ("[2001:db8::1]", NotPublic::Reserved),
        ];
        for (host, kind) in cases {
            assert_eq!(host_not_public(host), Some(kind), "{host}");
        }
    }

    #[test]
    fn public_addresses_and_ordinary_names_pass() {
        for host in [
            "8.8.8.8",
            "34.120.195.249",
            "[2606:4700::1111]",
            "[::ffff:8.8.8.8]",
            "o1.ingest.sentry.io",
            "sentry.example.com",
            "localhost.example.com",
            "172.32.0.1",
        ] {
            assert_eq!(host_not_public(host), None, "{host}");
        }
    }
}
