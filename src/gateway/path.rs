//! The gateway path of a forwarded connection: the ids of the forwarding gateways it has
//! passed, carried in a PROXY v2 TLV of the custom range (haproxy proxy-protocol.txt §2.2.7,
//! PP2_TYPE_MIN_CUSTOM..PP2_TYPE_MAX_CUSTOM), so that a chain that loops back on itself or
//! grows too long is refused.
//!
//! Owns the TLV value's byte format and the loop/length rule. The PROXY v2 header itself is
//! `crate::proxy_protocol`'s; the shell takes this TLV from a header that came from a trusted
//! forwarder, calls [`GatewayPath::enter`] with its own id, and puts the returned path in the
//! header it sends to its next hop.
//!
//! Value format: a version byte (1), then per id one length byte (1 to [`MAX_ID_BYTES`]) and
//! that many printable ASCII bytes (0x21-0x7E); at most [`MAX_PATH_ENTRIES`] ids.

use std::fmt;

/// PROXY v2 TLV type (custom range 0xE0-0xEF) carrying the ids of the gateways a connection
/// has passed.
pub const PP2_TYPE_GATEWAY_PATH: u8 = 0xE0;
/// The value format version this build writes and reads.
pub const PATH_VERSION: u8 = 1;
/// Longest gateway id, in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// Most ids a path may hold, whatever the configured limit.
pub const MAX_PATH_ENTRIES: usize = 16;
/// Longest encoded value: version byte plus the longest ids.
pub const MAX_VALUE_BYTES: usize = 1 + MAX_PATH_ENTRIES * (1 + MAX_ID_BYTES);

/// The gateways a connection has passed, oldest first. Holds only valid, distinct ids.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GatewayPath {
    ids: Vec<String>,
}

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// This id appears twice, or is this gateway's own: the chain loops.
    Loop(String),
    /// The path holds this many ids, at or over the limit.
    TooLong(usize),
    /// The value is not a valid encoding.
    Malformed(&'static str),
}

impl GatewayPath {
    /// The path of a connection that has passed no forwarding gateway.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The ids, oldest first.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Whether `id` may name a gateway: 1 to [`MAX_ID_BYTES`] printable ASCII bytes without
    /// spaces. The config check refuses other ids.
    pub fn is_valid_id(id: &str) -> bool {
        !id.is_empty() && id.len() <= MAX_ID_BYTES && id.bytes().all(|b| b.is_ascii_graphic())
    }

    /// Decodes a TLV value. A repeated id is [`PathError::Loop`], more than
    /// [`MAX_PATH_ENTRIES`] ids [`PathError::TooLong`].
    pub fn decode(value: &[u8]) -> Result<Self, PathError> {
        let Some((&version, mut rest)) = value.split_first() else {
            return Err(PathError::Malformed("empty value"));
        };
        if version != PATH_VERSION {
            return Err(PathError::Malformed("unknown version"));
        }
        let mut ids: Vec<String> = Vec::new();
        while let Some((&len, after)) = rest.split_first() {
            if ids.len() == MAX_PATH_ENTRIES {
                return Err(PathError::TooLong(ids.len() + 1));
            }
            let len = usize::from(len);
            if len == 0 || len > MAX_ID_BYTES {
                return Err(PathError::Malformed("id length out of range"));
            }
            let Some(id) = after.get(..len) else {
                return Err(PathError::Malformed("truncated id"));
            };
            if !id.iter().all(u8::is_ascii_graphic) {
                return Err(PathError::Malformed("id is not printable ASCII"));
            }
            // Checked to be ASCII just above.
            let id: String = id.iter().map(|&b| char::from(b)).collect();
            if ids.contains(&id) {
                return Err(PathError::Loop(id));
            }
            ids.push(id);
            rest = &after[len..];
        }
        Ok(Self { ids })
    }

    /// The TLV value for this path.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.ids.iter().map(|id| 1 + id.len()).sum::<usize>());
        out.push(PATH_VERSION);
        for id in &self.ids {
            // Every id held was checked by `decode` or `enter` to be 1..=64 bytes.
            out.push(id.len() as u8);
            out.extend_from_slice(id.as_bytes());
        }
        out
    }

    /// Checks that `own_id` is not in the path and that the path holds fewer than `max` ids
    /// (`max` is clamped to [`MAX_PATH_ENTRIES`]); returns the path with `own_id` appended,
    /// what to send to the next hop. An invalid `own_id` is [`PathError::Malformed`].
    pub fn enter(&self, own_id: &str, max: usize) -> Result<GatewayPath, PathError> {
        if !Self::is_valid_id(own_id) {
            return Err(PathError::Malformed("own id is not a valid gateway id"));
        }
        if self.ids.iter().any(|id| id == own_id) {
            return Err(PathError::Loop(own_id.to_owned()));
        }
        if self.ids.len() >= max.min(MAX_PATH_ENTRIES) {
            return Err(PathError::TooLong(self.ids.len()));
        }
        let mut ids = self.ids.clone();
        ids.push(own_id.to_owned());
        Ok(Self { ids })
    }
}

impl PathError {
    /// A stable snake_case reason for logs and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Loop(_) => "forwarding_loop",
            Self::TooLong(_) => "path_too_long",
            Self::Malformed(_) => "path_malformed",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Loop(id) => write!(f, "forwarding loop: gateway {id} is already on the path"),
            Self::TooLong(n) => write!(f, "gateway path of {n} hops is at the limit"),
            Self::Malformed(why) => write!(f, "malformed gateway path: {why}"),
        }
    }
}

impl std::error::Error for PathError {}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn path(ids: &[&str]) -> GatewayPath {
        ids.iter()
            .try_fold(GatewayPath::empty(), |p, id| p.enter(id, MAX_PATH_ENTRIES))
            .expect("valid test path")
    }

    #[test]
    fn known_encoding() {
        let p = path(&["fw-1", "gw-a"]);
        assert_eq!(p.encode(), b"\x01\x04fw-1\x04gw-a");
        assert_eq!(GatewayPath::decode(b"\x01\x04fw-1\x04gw-a"), Ok(p));
        assert_eq!(GatewayPath::empty().encode(), [PATH_VERSION]);
        assert_eq!(GatewayPath::decode(&[1]), Ok(GatewayPath::empty()));
        let custom =
            crate::proxy_protocol::tlv_kind::CUSTOM_MIN..=crate::proxy_protocol::tlv_kind::CUSTOM_MAX;
        assert!(custom.contains(&PP2_TYPE_GATEWAY_PATH));
    }

    #[test]
    fn every_truncation_is_malformed() {
        let full = path(&["fw-1", "gw-a"]).encode();
        assert_eq!(
            GatewayPath::decode(&full[..0]),
            Err(PathError::Malformed("empty value"))
        );
        for cut in 1..full.len() {
            let got = GatewayPath::decode(&full[..cut]);
            // Cuts at an id boundary are shorter valid paths; all others are truncated ids.
            match cut {
                1 => assert_eq!(got, Ok(GatewayPath::empty())),
                6 => assert_eq!(got, Ok(path(&["fw-1"]))),
                _ => assert_eq!(got, Err(PathError::Malformed("truncated id")), "cut {cut}"),
            }
        }
    }

    #[test]
    fn malformed_values() {
        assert_eq!(
            GatewayPath::decode(b"\x02\x01a"),
            Err(PathError::Malformed("unknown version"))
        );
        assert_eq!(
            GatewayPath::decode(b"\x01\x00"),
            Err(PathError::Malformed("id length out of range"))
        );
        let mut long = vec![1, 65];
        long.extend_from_slice(&[b'a'; 65]);
        assert_eq!(
            GatewayPath::decode(&long),
            Err(PathError::Malformed("id length out of range"))
        );
        for bad in [
            &b"\x01\x02a "[..],
            b"\x01\x01\x00",
            b"\x01\x01\x7f",
            b"\x01\x01\xc3",
        ] {
            assert_eq!(
                GatewayPath::decode(bad),
                Err(PathError::Malformed("id is not printable ASCII")),
                "{bad:?}"
            );
        }
        let mut max_id = vec![1, 64];
        max_id.extend_from_slice(&[b'z'; 64]);
        assert_eq!(GatewayPath::decode(&max_id).map(|p| p.ids()[0].len()), Ok(64));
    }

    #[test]
    fn loops_are_refused() {
        let p = path(&["fw-1", "fw-2"]);
        assert_eq!(p.enter("fw-1", 8), Err(PathError::Loop("fw-1".into())));
        assert_eq!(p.enter("fw-2", 8), Err(PathError::Loop("fw-2".into())));
        // A decoded value that already repeats an id is a loop too.
        assert_eq!(
            GatewayPath::decode(b"\x01\x01a\x01b\x01a"),
            Err(PathError::Loop("a".into()))
        );
        let next = p.enter("gw-a", 8).unwrap();
        assert_eq!(next.ids(), ["fw-1", "fw-2", "gw-a"]);
        // `enter` does not change the path it was called on.
        assert_eq!(p.ids().len(), 2);
    }

    #[test]
    fn length_limits() {
        let p = path(&["a", "b", "c"]);
        assert_eq!(p.enter("d", 3), Err(PathError::TooLong(3)));
        assert_eq!(p.enter("d", 4).map(|n| n.ids().len()), Ok(4));
        assert_eq!(GatewayPath::empty().enter("a", 0), Err(PathError::TooLong(0)));
        // The hard bound holds whatever the configured limit.
        let ids: Vec<String> = (0..MAX_PATH_ENTRIES).map(|i| format!("g{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let full = path(&refs);
        assert_eq!(
            full.enter("x", usize::MAX),
            Err(PathError::TooLong(MAX_PATH_ENTRIES))
        );
        let mut over = full.encode();
        over.extend_from_slice(b"\x01x");
        assert_eq!(
            GatewayPath::decode(&over),
            Err(PathError::TooLong(MAX_PATH_ENTRIES + 1))
        );
        assert_eq!(GatewayPath::decode(&full.encode()), Ok(full));
    }

    #[test]
    fn own_id_must_be_valid() {
        for bad in ["", "a b", "é", &"x".repeat(MAX_ID_BYTES + 1)] {
            assert_eq!(
                GatewayPath::empty().enter(bad, 4),
                Err(PathError::Malformed("own id is not a valid gateway id")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reasons_and_messages() {
        let errors = [
            PathError::Loop("a".into()),
            PathError::TooLong(3),
            PathError::Malformed("x"),
        ];
        let reasons: std::collections::HashSet<_> = errors.iter().map(PathError::reason).collect();
        assert_eq!(reasons.len(), 3);
        assert!(errors[0].to_string().contains("gateway a"));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            if let Ok(p) = GatewayPath::decode(&bytes) {
                prop_assert!(p.ids().len() <= MAX_PATH_ENTRIES);
                prop_assert_eq!(p.encode(), bytes);
            }
        }

        #[test]
        fn round_trips(ids in proptest::collection::btree_set("[!-~]{1,64}", 0..=MAX_PATH_ENTRIES)) {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let p = path(&refs);
            let encoded = p.encode();
            prop_assert!(encoded.len() <= MAX_VALUE_BYTES);
            prop_assert_eq!(GatewayPath::decode(&encoded), Ok(p));
        }
    }
}
