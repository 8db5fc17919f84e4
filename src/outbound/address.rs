//! The address policy: which IP addresses batchlens may connect to on a tenant's behalf.
//! Pure; knows nothing of URLs, names or sockets.
//!
//! Refused IPv4 ranges (the table below, first match names the reason):
//! 0.0.0.0/8 unspecified, 10/8 private, 100.64/10 shared (CGNAT), 127/8 loopback,
//! 169.254/16 link-local (cloud metadata at 169.254.169.254), 172.16/12 private,
//! 192.0.0/24 IETF protocol assignments, 192.0.2/24 documentation, 192.88.99/24 the retired
//! 6to4 relay anycast, 192.168/16 private, 198.18/15 benchmarking, 198.51.100/24 and
//! 203.0.113/24 documentation, 224/4 multicast, 255.255.255.255 broadcast, 240/4 reserved.
//!
//! IPv6: `::` and `::1`; the forms that embed an IPv4 address are judged by it
//! (IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96` and IPv4-translated
//! `::ffff:0:0:0/96`, both refused even when the embedded address is public since nothing
//! routes them, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`, Teredo `2001::/32` by its server and
//! its client); 64:ff9b:1::/48 local-use NAT64, 100::/64 discard-only, fc00::/7 unique local,
//! fec0::/10 site-local, fe80::/10 link-local, ff00::/8 multicast, 2001:db8::/32 and
//! 3fff::/20 documentation, 2001:2::/48 benchmarking, 2001:10::/28 and 2001:20::/28 ORCHID;
//! and everything outside global unicast 2000::/3 that is not NAT64.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unspecified,
    Loopback,
    Private,
    LinkLocal,
    /// 100.64.0.0/10, carrier-grade NAT.
    Shared,
    Multicast,
    Broadcast,
    Documentation,
    Benchmarking,
    Reserved,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Unspecified => "an unspecified address",
            Refusal::Loopback => "a loopback address",
            Refusal::Private => "a private address",
            Refusal::LinkLocal => "a link-local address",
            Refusal::Shared => "a shared (CGNAT) address",
            Refusal::Multicast => "a multicast address",
            Refusal::Broadcast => "a broadcast address",
            Refusal::Documentation => "a documentation address",
            Refusal::Benchmarking => "a benchmarking address",
            Refusal::Reserved => "a reserved address",
        })
    }
}

impl std::error::Error for Refusal {}

/// Refused IPv4 networks as (address, prefix length, reason); the first match wins, so the
/// broadcast address comes before 240/4.
const V4_REFUSED: &[([u8; 4], u8, Refusal)] = &[
    ([0, 0, 0, 0], 8, Refusal::Unspecified),
    ([10, 0, 0, 0], 8, Refusal::Private),
    ([100, 64, 0, 0], 10, Refusal::Shared),
    ([127, 0, 0, 0], 8, Refusal::Loopback),
    ([169, 254, 0, 0], 16, Refusal::LinkLocal),
    ([172, 16, 0, 0], 12, Refusal::Private),
    ([192, 0, 0, 0], 24, Refusal::Reserved),
    ([192, 0, 2, 0], 24, Refusal::Documentation),
    ([192, 88, 99, 0], 24, Refusal::Reserved),
    ([192, 168, 0, 0], 16, Refusal::Private),
    ([198, 18, 0, 0], 15, Refusal::Benchmarking),
    ([198, 51, 100, 0], 24, Refusal::Documentation),
    ([203, 0, 113, 0], 24, Refusal::Documentation),
    ([224, 0, 0, 0], 4, Refusal::Multicast),
    ([255, 255, 255, 255], 32, Refusal::Broadcast),
    ([240, 0, 0, 0], 4, Refusal::Reserved),
];

/// Refused IPv6 networks that embed no IPv4 address, as (address, prefix length, reason).
const V6_REFUSED: &[(u128, u8, Refusal)] = &[
    (0x0064_ff9b_0001 << 80, 48, Refusal::Private),
    (0x0100 << 112, 64, Refusal::Reserved),
    (0xfc00 << 112, 7, Refusal::Private),
    (0xfec0 << 112, 10, Refusal::Private),
    (0xfe80 << 112, 10, Refusal::LinkLocal),
    (0xff00 << 112, 8, Refusal::Multicast),
    (0x2001_0db8 << 96, 32, Refusal::Documentation),
    (0x3fff << 112, 20, Refusal::Documentation),
    (0x2001_0002 << 96, 48, Refusal::Benchmarking),
    (0x2001_0010 << 96, 28, Refusal::Reserved),
    (0x2001_0020 << 96, 28, Refusal::Reserved),
];

const NAT64: u128 = 0x0064_ff9b << 96;
const MAPPED: u128 = 0xffff << 32;
const TRANSLATED: u128 = 0xffff << 48;
const TEREDO: u128 = 0x2001_0000 << 96;
const SIX_TO_FOUR: u128 = 0x2002 << 112;

/// Whether batchlens may connect to `ip`.
pub fn check(ip: IpAddr) -> Result<(), Refusal> {
    match ip {
        IpAddr::V4(v4) => check_v4(v4),
        IpAddr::V6(v6) => check_v6(v6),
    }
}

fn check_v4(ip: Ipv4Addr) -> Result<(), Refusal> {
    let bits = u32::from(ip);
    for &(net, len, why) in V4_REFUSED {
        if in_v4(bits, u32::from_be_bytes(net), len) {
            return Err(why);
        }
    }
    Ok(())
}

fn check_v6(ip: Ipv6Addr) -> Result<(), Refusal> {
    let bits = u128::from(ip);
    let low_v4 = Ipv4Addr::from(bits as u32);
    if bits == 0 {
        return Err(Refusal::Unspecified);
    }
    if bits == 1 {
        return Err(Refusal::Loopback);
    }
    if in_v6(bits, MAPPED, 96) {
        return check_v4(low_v4);
    }
    if in_v6(bits, 0, 96) || in_v6(bits, TRANSLATED, 96) {
        check_v4(low_v4)?;
        return Err(Refusal::Reserved);
    }
    if in_v6(bits, NAT64, 96) {
        return check_v4(low_v4);
    }
    if in_v6(bits, SIX_TO_FOUR, 16) {
        return check_v4(Ipv4Addr::from((bits >> 80) as u32));
    }
    if in_v6(bits, TEREDO, 32) {
        check_v4(Ipv4Addr::from((bits >> 64) as u32))?;
        return check_v4(Ipv4Addr::from(!(bits as u32)));
    }
    for &(net, len, why) in V6_REFUSED {
        if in_v6(bits, net, len) {
            return Err(why);
        }
    }
    if !in_v6(bits, 0x2000 << 112, 3) {
        return Err(Refusal::Reserved);
    }
    Ok(())
}

fn in_v4(bits: u32, net: u32, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    bits & mask == net & mask
}

fn in_v6(bits: u128, net: u128, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    bits & mask == net & mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use Refusal::*;

    fn verdict(ip: &str) -> Result<(), Refusal> {
        check(ip.parse().unwrap_or_else(|_| panic!("{ip} is an address")))
    }

    #[test]
    fn refused_ipv4() {
        let table = [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("100.64.0.1", Shared),
            ("100.127.255.254", Shared),
            ("127.0.0.1", Loopback),
            ("127.0.0.2", Loopback),
            ("127.255.255.255", Loopback),
            ("169.254.169.254", LinkLocal),
            ("169.254.0.1", LinkLocal),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.0.0.170", Reserved),
            ("192.0.2.1", Documentation),
            ("192.88.99.1", Reserved),
            ("192.168.0.1", Private),
            ("192.168.255.255", Private),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("240.0.0.1", Reserved),
            ("255.255.255.254", Reserved),
            ("255.255.255.255", Broadcast),
        ];
        for (ip, why) in table {
            assert_eq!(verdict(ip), Err(why), "{ip}");
        }
    }

    #[test]
    fn allowed_ipv4_including_the_edges_of_refused_ranges() {
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
        ] {
            assert_eq!(verdict(ip), Ok(()), "{ip}");
        }
    }

    #[test]
    fn refused_ipv6() {
        let table = [
            ("::", Unspecified),
            ("::1", Loopback),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("fec0::1", Private),
            ("fe80::1", LinkLocal),
            ("febf:ffff::1", LinkLocal),
            ("ff02::1", Multicast),
            ("ff0e::1", Multicast),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("2001:2::1", Benchmarking),
            ("2001:10::1", Reserved),
            ("2001:20::1", Reserved),
            ("64:ff9b:1::1", Private),
            ("100::1", Reserved),
            // Outside global unicast 2000::/3.
            ("4000::1", Reserved),
            ("1::1", Reserved),
            ("e000::1", Reserved),
        ];
        for (ip, why) in table {
            assert_eq!(verdict(ip), Err(why), "{ip}");
        }
    }

    #[test]
    fn refused_ipv4_ranges_embedded_in_ipv6() {
        let table = [
            // IPv4-mapped.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:7f00:1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:100.64.0.1", Shared),
            ("::ffff:0.0.0.0", Unspecified),
            ("::ffff:255.255.255.255", Broadcast),
            // IPv4-compatible (deprecated).
            ("::127.0.0.1", Loopback),
            ("::192.168.1.1", Private),
            ("::8.8.8.8", Reserved),
            // IPv4-translated (SIIT).
            ("::ffff:0:127.0.0.1", Loopback),
            ("::ffff:0:8.8.8.8", Reserved),
            // NAT64 well-known prefix.
            ("64:ff9b::127.0.0.1", Loopback),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b::10.0.0.1", Private),
            // 6to4: 2002:AABB:CCDD::/48 embeds AA.BB.CC.DD.
            ("2002:7f00:1::1", Loopback),
            ("2002:a9fe:a9fe::", LinkLocal),
            ("2002:c0a8:101::1", Private),
            // Teredo: the server in bits 32..64, the client inverted in the last 32.
            ("2001:0:7f00:1::1", Loopback),
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", Loopback),
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", Private),
        ];
        for (ip, why) in table {
            assert_eq!(verdict(ip), Err(why), "{ip}");
        }
    }

    #[test]
    fn allowed_ipv6() {
        for ip in [
            "2606:4700::1",
            "2a00:1450:4001:81c::200e",
            "2001:4860:4860::8888",
            // NAT64 and 6to4 of public addresses, as DNS64 answers on IPv6-only hosts.
            "64:ff9b::93.184.216.34",
            "2002:5db8:d822::1",
            // Teredo with a public server and client (client 93.184.216.34 inverted).
            "2001:0:4136:e378:8000:63bf:a247:27dd",
        ] {
            assert_eq!(verdict(ip), Ok(()), "{ip}");
        }
    }

    #[test]
    fn reasons_read_as_a_sentence() {
        assert_eq!(LinkLocal.to_string(), "a link-local address");
        assert_eq!(Shared.to_string(), "a shared (CGNAT) address");
    }
}
