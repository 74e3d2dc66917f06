//! The hello exchange that opens every control connection (PROTOCOL.md §2).
//!
//! Both peers send a hello as soon as the connection (or its TLS session) is up, without
//! waiting for the other's, and each computes the outcome on its own from the two hellos:
//! the highest version both support, and whether the peer has the role this port expects.
//! Both sides therefore reach the same verdict and can log the same reason. This module owns
//! the hello's bytes and that verdict; it does not read sockets or enforce the hello timeout.

use std::fmt;

/// The four bytes that start every hello: "GHCP", gatehouse control protocol.
pub const HELLO_MAGIC: [u8; 4] = *b"GHCP";

/// The oldest protocol version this build speaks.
pub const PROTOCOL_VERSION_MIN: u16 = 1;

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION_MAX: u16 = 1;

/// Longest node name a hello may carry, in bytes.
pub const MAX_NODE_NAME_BYTES: usize = 64;

/// Magic (4) + version min (2) + version max (2) + role (1) + name length (1).
const HELLO_FIXED_BYTES: usize = 10;

/// What a node is in the farm; a port accepts one role (20002 gateways, 20003 host agents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    /// A gateway, connecting to a broker on 20002.
    Gateway = 1,
    /// A broker (publishing agent), accepting on 20002 and 20003.
    Broker = 2,
    /// A host agent beside an RD Session Host, connecting to a broker on 20003.
    HostAgent = 3,
}

impl Role {
    /// The role for a wire byte, or `None` if the byte names no role.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Gateway),
            2 => Some(Self::Broker),
            3 => Some(Self::HostAgent),
            _ => None,
        }
    }

    /// The wire byte of this role.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// The role's name in logs and config: `gateway`, `broker`, `host-agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Broker => "broker",
            Self::HostAgent => "host-agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A farm member's name as carried in the hello: 1 to 64 bytes of ASCII letters, digits,
/// `.`, `-` and `_`. The TLS shell will check it against the member's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(String);

impl NodeName {
    /// Validates a node name.
    pub fn new(name: impl Into<String>) -> Result<Self, HelloError> {
        let name = name.into();
        if Self::is_valid(name.as_bytes()) {
            Ok(Self(name))
        } else {
            Err(HelloError::BadNodeName)
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn is_valid(bytes: &[u8]) -> bool {
        !bytes.is_empty()
            && bytes.len() <= MAX_NODE_NAME_BYTES
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One side's hello: the version range it speaks, its role and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Oldest version the sender speaks (at least 1).
    pub version_min: u16,
    /// Newest version the sender speaks (at least `version_min`).
    pub version_max: u16,
    /// The sender's role.
    pub role: Role,
    /// The sender's node name.
    pub name: NodeName,
}

/// The outcome of a successful hello exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedHello {
    /// The version both sides now speak: the highest both support.
    pub version: u16,
    /// The peer's role (equal to the role this side expected).
    pub peer_role: Role,
    /// The peer's node name.
    pub peer_name: NodeName,
}

impl Hello {
    /// This build's hello for a node of `role` named `name`.
    pub fn new(role: Role, name: NodeName) -> Self {
        Self {
            version_min: PROTOCOL_VERSION_MIN,
            version_max: PROTOCOL_VERSION_MAX,
            role,
            name,
        }
    }

    /// Appends the hello's wire form to `out`. Called once, first thing on a connection.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&HELLO_MAGIC);
        out.extend_from_slice(&self.version_min.to_be_bytes());
        out.extend_from_slice(&self.version_max.to_be_bytes());
        out.push(self.role.to_byte());
        // NodeName guarantees at most 64 bytes.
        out.push(self.name.0.len() as u8);
        out.extend_from_slice(self.name.0.as_bytes());
    }

    /// Decides the exchange from this side's hello (`self`) and the peer's: the highest common
    /// version, provided the peer has `expected_peer_role`. Called when the peer's hello has
    /// been decoded; on error the shell logs the reason and closes without sending frames.
    pub fn negotiate(&self, peer: &Hello, expected_peer_role: Role) -> Result<NegotiatedHello, HelloError> {
        if peer.role != expected_peer_role {
            return Err(HelloError::UnexpectedRole {
                expected: expected_peer_role,
                got: peer.role,
            });
        }
        let low = self.version_min.max(peer.version_min);
        let high = self.version_max.min(peer.version_max);
        if low > high {
            return Err(HelloError::NoCommonVersion {
                ours: (self.version_min, self.version_max),
                theirs: (peer.version_min, peer.version_max),
            });
        }
        Ok(NegotiatedHello {
            version: high,
            peer_role: peer.role,
            peer_name: peer.name.clone(),
        })
    }
}

/// Why a hello was refused. The connection is closed; [`HelloError::reason`] names the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloError {
    /// The first bytes are not "GHCP": not a gatehouse control peer (or TLS mismatch).
    BadMagic,
    /// The version range is empty or starts at the reserved version 0.
    BadVersionRange {
        /// The announced oldest version.
        min: u16,
        /// The announced newest version.
        max: u16,
    },
    /// The role byte names no role.
    UnknownRole {
        /// The byte received.
        byte: u8,
    },
    /// The node name is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    BadNodeName,
    /// The two version ranges do not overlap.
    NoCommonVersion {
        /// This side's range (min, max).
        ours: (u16, u16),
        /// The peer's range (min, max).
        theirs: (u16, u16),
    },
    /// The peer's role is not the one this port serves.
    UnexpectedRole {
        /// The role this side expected.
        expected: Role,
        /// The role the peer announced.
        got: Role,
    },
}

impl HelloError {
    /// A stable, short reason for logs and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadMagic => "hello_bad_magic",
            Self::BadVersionRange { .. } => "hello_bad_version_range",
            Self::UnknownRole { .. } => "hello_unknown_role",
            Self::BadNodeName => "hello_bad_node_name",
            Self::NoCommonVersion { .. } => "hello_no_common_version",
            Self::UnexpectedRole { .. } => "hello_unexpected_role",
        }
    }
}

impl fmt::Display for HelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic => f.write_str("peer did not open with the GHCP hello magic"),
            Self::BadVersionRange { min, max } => {
                write!(f, "peer announced an invalid version range {min}..={max}")
            }
            Self::UnknownRole { byte } => write!(f, "peer announced unknown role 0x{byte:02x}"),
            Self::BadNodeName => f.write_str("peer announced an invalid node name"),
            Self::NoCommonVersion { ours, theirs } => write!(
                f,
                "no common protocol version: ours {}..={}, peer's {}..={}",
                ours.0, ours.1, theirs.0, theirs.1
            ),
            Self::UnexpectedRole { expected, got } => {
                write!(f, "peer is a {got}, this port serves a {expected}")
            }
        }
    }
}

impl std::error::Error for HelloError {}

/// What [`HelloDecoder::feed`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloProgress {
    /// The hello is not complete yet; feed more bytes.
    NeedMore,
    /// The hello is complete. `consumed` bytes of the last input belonged to it; the rest
    /// are frames and go to a [`super::FrameDecoder`].
    Done {
        /// The peer's hello.
        hello: Hello,
        /// Bytes of the last `feed` input that the hello used.
        consumed: usize,
    },
}

/// Sans-IO decoder for the peer's hello. Buffers at most 74 bytes and refuses a wrong magic
/// as soon as the first differing byte arrives, so a stray TLS or HTTP client is dropped fast.
#[derive(Debug, Default)]
pub struct HelloDecoder {
    buf: Vec<u8>,
    failed: Option<HelloError>,
}

impl HelloDecoder {
    /// A decoder waiting for the first byte.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes bytes read from the peer. After `Done` the shell switches to a frame decoder
    /// and does not call this again; an error is sticky.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<HelloProgress, HelloError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let mut consumed = 0;
        while consumed < bytes.len() {
            let need = match self.needed() {
                Ok(need) => need,
                Err(err) => return Err(self.fail(err)),
            };
            if self.buf.len() == need {
                break;
            }
            let take = (need - self.buf.len()).min(bytes.len() - consumed);
            self.buf.extend_from_slice(&bytes[consumed..consumed + take]);
            consumed += take;
        }
        match self.needed() {
            Err(err) => Err(self.fail(err)),
            Ok(need) if self.buf.len() < need => Ok(HelloProgress::NeedMore),
            Ok(_) => match self.parse() {
                Ok(hello) => Ok(HelloProgress::Done { hello, consumed }),
                Err(err) => Err(self.fail(err)),
            },
        }
    }

    fn fail(&mut self, err: HelloError) -> HelloError {
        self.failed = Some(err.clone());
        self.buf = Vec::new();
        err
    }

    /// How many bytes the hello has in total, as far as the buffered bytes tell; checks the
    /// fixed fields as soon as they arrive.
    fn needed(&self) -> Result<usize, HelloError> {
        let seen = self.buf.len().min(HELLO_MAGIC.len());
        if self.buf[..seen] != HELLO_MAGIC[..seen] {
            return Err(HelloError::BadMagic);
        }
        if let (Some(min), Some(max)) = (self.buf.get(4..6), self.buf.get(6..8)) {
            let min = u16::from_be_bytes([min[0], min[1]]);
            let max = u16::from_be_bytes([max[0], max[1]]);
            if min == 0 || min > max {
                return Err(HelloError::BadVersionRange { min, max });
            }
        }
        if let Some(&role) = self.buf.get(8) {
            Role::from_byte(role).ok_or(HelloError::UnknownRole { byte: role })?;
        }
        match self.buf.get(9) {
            None => Ok(HELLO_FIXED_BYTES),
            Some(&len) if len == 0 || usize::from(len) > MAX_NODE_NAME_BYTES => Err(HelloError::BadNodeName),
            Some(&len) => Ok(HELLO_FIXED_BYTES + usize::from(len)),
        }
    }

    fn parse(&self) -> Result<Hello, HelloError> {
        let b = &self.buf;
        let name = &b[HELLO_FIXED_BYTES..];
        if !NodeName::is_valid(name) {
            return Err(HelloError::BadNodeName);
        }
        let role = Role::from_byte(b[8]).ok_or(HelloError::UnknownRole { byte: b[8] })?;
        Ok(Hello {
            version_min: u16::from_be_bytes([b[4], b[5]]),
            version_max: u16::from_be_bytes([b[6], b[7]]),
            role,
            // Validated as ASCII just above.
            name: NodeName(String::from_utf8_lossy(name).into_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn gateway_hello() -> Hello {
        Hello::new(Role::Gateway, NodeName::new("gw-1").unwrap())
    }

    const GATEWAY_HELLO_BYTES: &[u8] = &[
        b'G', b'H', b'C', b'P', // magic
        0x00, 0x01, // version min 1
        0x00, 0x01, // version max 1
        0x01, // role: gateway
        0x04, b'g', b'w', b'-', b'1', // name
    ];

    #[test]
    fn hello_bytes() {
        let mut out = Vec::new();
        gateway_hello().encode(&mut out);
        assert_eq!(out, GATEWAY_HELLO_BYTES);
    }

    #[test]
    fn decodes_hello_and_reports_leftover() {
        let mut input = GATEWAY_HELLO_BYTES.to_vec();
        input.extend_from_slice(&[0, 0, 0, 9]); // start of the first frame
        let mut decoder = HelloDecoder::new();
        assert_eq!(
            decoder.feed(&input),
            Ok(HelloProgress::Done {
                hello: gateway_hello(),
                consumed: GATEWAY_HELLO_BYTES.len()
            })
        );
    }

    #[test]
    fn decodes_hello_one_byte_at_a_time() {
        let mut decoder = HelloDecoder::new();
        let last = GATEWAY_HELLO_BYTES.len() - 1;
        for (i, byte) in GATEWAY_HELLO_BYTES.iter().enumerate() {
            let progress = decoder.feed(std::slice::from_ref(byte)).unwrap();
            if i < last {
                assert_eq!(progress, HelloProgress::NeedMore, "byte {i}");
            } else {
                assert_eq!(
                    progress,
                    HelloProgress::Done {
                        hello: gateway_hello(),
                        consumed: 1
                    }
                );
            }
        }
    }

    #[test]
    fn bad_magic_is_refused_at_the_first_wrong_byte() {
        let mut decoder = HelloDecoder::new();
        // A TLS ClientHello record starts 0x16 0x03.
        assert_eq!(decoder.feed(&[0x16]), Err(HelloError::BadMagic));
        assert_eq!(decoder.feed(b"GHCP"), Err(HelloError::BadMagic), "sticky");
        let mut decoder = HelloDecoder::new();
        assert_eq!(decoder.feed(b"GH"), Ok(HelloProgress::NeedMore));
        let err = decoder.feed(b"TTP/1.1").unwrap_err();
        assert_eq!(err.reason(), "hello_bad_magic");
    }

    #[test]
    fn bad_version_range_is_refused() {
        let mut decoder = HelloDecoder::new();
        assert_eq!(
            decoder.feed(b"GHCP\x00\x03\x00\x02"),
            Err(HelloError::BadVersionRange { min: 3, max: 2 })
        );
        let mut decoder = HelloDecoder::new();
        assert_eq!(
            decoder.feed(b"GHCP\x00\x00\x00\x02"),
            Err(HelloError::BadVersionRange { min: 0, max: 2 })
        );
    }

    #[test]
    fn unknown_role_and_bad_names_are_refused() {
        let mut decoder = HelloDecoder::new();
        assert_eq!(
            decoder.feed(b"GHCP\x00\x01\x00\x01\x07"),
            Err(HelloError::UnknownRole { byte: 7 })
        );
        for bad in [
            &b"GHCP\x00\x01\x00\x01\x01\x00"[..],         // empty name
            &b"GHCP\x00\x01\x00\x01\x01\x41"[..],         // 65 bytes
            &b"GHCP\x00\x01\x00\x01\x01\x02a/"[..],       // bad character
            &b"GHCP\x00\x01\x00\x01\x01\x02\xc3\xa9"[..], // non-ASCII
        ] {
            let mut decoder = HelloDecoder::new();
            assert_eq!(decoder.feed(bad), Err(HelloError::BadNodeName), "{bad:?}");
        }
        assert_eq!(NodeName::new("a".repeat(65)), Err(HelloError::BadNodeName));
        assert!(NodeName::new("a".repeat(64)).is_ok());
    }

    #[test]
    fn negotiation_picks_highest_common_version() {
        let ours = Hello {
            version_min: 1,
            version_max: 3,
            role: Role::Broker,
            name: NodeName::new("broker-a").unwrap(),
        };
        let mut peer = gateway_hello();
        peer.version_min = 2;
        peer.version_max = 5;
        let done = ours.negotiate(&peer, Role::Gateway).unwrap();
        assert_eq!(done.version, 3);
        assert_eq!(done.peer_name.as_str(), "gw-1");
        // The peer reaches the same version on its side.
        assert_eq!(peer.negotiate(&ours, Role::Broker).unwrap().version, 3);
    }

    #[test]
    fn negotiation_refuses_disjoint_versions_and_wrong_role() {
        let ours = Hello::new(Role::Broker, NodeName::new("b").unwrap());
        let mut peer = gateway_hello();
        peer.version_min = 2;
        peer.version_max = 2;
        let err = ours.negotiate(&peer, Role::Gateway).unwrap_err();
        assert_eq!(
            err,
            HelloError::NoCommonVersion {
                ours: (1, 1),
                theirs: (2, 2)
            }
        );
        assert_eq!(err.reason(), "hello_no_common_version");
        // A host agent dialled the gateway port.
        let agent = Hello::new(Role::HostAgent, NodeName::new("rdsh-1").unwrap());
        let err = ours.negotiate(&agent, Role::Gateway).unwrap_err();
        assert_eq!(err.reason(), "hello_unexpected_role");
        assert_eq!(
            err.to_string(),
            "peer is a host-agent, this port serves a gateway"
        );
    }

    proptest! {
        #[test]
        fn hello_decoder_never_panics(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..32), 0..8),
            prefix in any::<bool>(),
        ) {
            let mut decoder = HelloDecoder::new();
            if prefix {
                let _ = decoder.feed(b"GHCP\x00\x01\x00\x01");
            }
            for chunk in &chunks {
                match decoder.feed(chunk) {
                    Ok(HelloProgress::Done { consumed, .. }) => {
                        prop_assert!(consumed <= chunk.len());
                        break;
                    }
                    Ok(HelloProgress::NeedMore) => {}
                    Err(_) => break,
                }
            }
            prop_assert!(decoder.buf.len() <= HELLO_FIXED_BYTES + MAX_NODE_NAME_BYTES);
        }

        #[test]
        fn hello_round_trips(
            name in "[A-Za-z0-9._-]{1,64}",
            role in 1u8..=3,
            min in 1u16..100,
            span in 0u16..100,
        ) {
            let hello = Hello {
                version_min: min,
                version_max: min + span,
                role: Role::from_byte(role).unwrap(),
                name: NodeName::new(name).unwrap(),
            };
            let mut wire = Vec::new();
            hello.encode(&mut wire);
            let mut decoder = HelloDecoder::new();
            prop_assert_eq!(
                decoder.feed(&wire),
                Ok(HelloProgress::Done { hello, consumed: wire.len() })
            );
        }
    }
}
