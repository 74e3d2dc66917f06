//! Gratuitous ARP payloads announcing a VIP after a takeover (RFC 5798 §6.4.2, RFC 5227 §3).
//!
//! Builds the 28-byte ARP body only; the Linux shell sends it on an `AF_PACKET`/`SOCK_DGRAM`
//! socket to the broadcast MAC, and the kernel adds the Ethernet header.

use std::net::Ipv4Addr;

/// Length of an Ethernet/IPv4 ARP body.
pub const ARP_LEN: usize = 28;
/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// The Ethernet broadcast address gratuitous ARPs go to.
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// The VRRP virtual MAC for a VRID over IPv4: 00-00-5E-00-01-VRID (RFC 5798 §7.3).
pub fn virtual_mac_v4(vrid: u8) -> [u8; 6] {
    [0x00, 0x00, 0x5e, 0x00, 0x01, vrid]
}

/// A gratuitous ARP request for `vip` from `sender_mac`: sender IP = target IP = VIP, target MAC
/// zero, as keepalived and the Linux `arping -U` send it.
pub fn gratuitous_request(sender_mac: [u8; 6], vip: Ipv4Addr) -> [u8; ARP_LEN] {
    let mut p = [0u8; ARP_LEN];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol type: IPv4
    p[4] = 6; // hardware address length
    p[5] = 4; // protocol address length
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // operation: request
    p[8..14].copy_from_slice(&sender_mac);
    p[14..18].copy_from_slice(&vip.octets());
    // p[18..24]: target hardware address, zero.
    p[24..28].copy_from_slice(&vip.octets());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_request_layout() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let p = gratuitous_request(mac, Ipv4Addr::new(10, 213, 0, 100));
        let expect: [u8; 28] = [
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 10, 213, 0, 100, 0,
            0, 0, 0, 0, 0, 10, 213, 0, 100,
        ];
        assert_eq!(p, expect);
        assert_eq!(virtual_mac_v4(51), [0, 0, 0x5e, 0, 1, 51]);
    }
}
