//! Stable hashing for backend identities and client addresses.
//!
//! Everything here must give the same numbers in every process on every machine (HALB pair
//! failover relies on both nodes hashing alike), so it uses fixed constants only: FNV-1a
//! over the bytes, then the 64-bit finalizer of MurmurHash3 to spread FNV's weak low bits.
//! Never `std::collections::hash_map::RandomState`.

use std::net::IpAddr;

/// The stable identity of a backend for source hashing, from its configured name or
/// address. Same input, same key, in any process on any machine.
pub fn backend_key(identity: &str) -> u64 {
    fmix64(fnv1a(FNV_OFFSET, identity.as_bytes()))
}

/// Hash of a client address, IPv4-mapped IPv6 folded to IPv4 so a client hashes alike on
/// an IPv4 and a dual-stack listener.
pub(super) fn client_hash(client: IpAddr) -> u64 {
    match client.to_canonical() {
        IpAddr::V4(a) => fmix64(fnv1a(fnv1a(FNV_OFFSET, &[4]), &a.octets())),
        IpAddr::V6(a) => fmix64(fnv1a(fnv1a(FNV_OFFSET, &[6]), &a.octets())),
    }
}

/// A well-spread 64-bit value for one (client, backend) pair.
pub(super) fn pair_hash(client_hash: u64, key: u64) -> u64 {
    // Re-mixing the key (with a constant so key 0 is not a fixed point) makes the pair hash
    // non-linear in both inputs.
    fmix64(client_hash ^ fmix64(key ^ 0x9e37_79b9_7f4a_7c15))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        state ^= u64::from(b);
        state = state.wrapping_mul(FNV_PRIME);
    }
    state
}

/// MurmurHash3's 64-bit finalizer: a bijection with full avalanche.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_published_vectors() {
        // FNV-1a 64 test vectors from the FNV reference (draft-eastlake-fnv).
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn keys_are_pinned() {
        // Pinned so a change to the hash (which would reshuffle every sticky client after an
        // upgrade, and split a HALB pair running two versions) fails loudly.
        assert_eq!(backend_key(""), fmix64(0xcbf2_9ce4_8422_2325));
        assert_eq!(backend_key("a"), fmix64(0xaf63_dc4c_8601_ec8c));
        // Computed independently (Python) from the FNV-1a and fmix64 definitions.
        assert_eq!(backend_key("rdsh-01"), 0x64d6_c2c2_3f0b_1001);
        assert_ne!(backend_key("rdsh-01"), backend_key("rdsh-02"));
        assert_eq!(fmix64(0), 0);
        assert_eq!(fmix64(1), 0xb456_bcfc_34c2_cb2c);
    }

    #[test]
    fn mapped_clients_hash_like_ipv4() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let compat: IpAddr = "::c000:207".parse().unwrap();
        assert_eq!(client_hash(v4), client_hash(mapped));
        assert_ne!(client_hash(v4), client_hash(compat));
    }
}
