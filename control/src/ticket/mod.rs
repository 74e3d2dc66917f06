//! Launch tickets: the broker's signed permission for one user to open one tunnel to one
//! host, once, within tens of seconds (PROTOCOL.md §7).
//!
//! A ticket is HMAC-SHA256 (RFC 2104, FIPS 180-4) over a compact binary payload, under a
//! farm key named by a key id so keys can rotate ([`KeyRing`]). The gateway verifies tag,
//! expiry and binding ([`VerifiedTicket::check_binding`]), then redeems the ticket at its
//! issuer, whose [`NonceLedger`] accepts each nonce once. This module owns the format and
//! those checks; it reads no clock and no random source (both are passed in).

mod codec;
mod keyring;
mod ledger;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::{CryptoRng, RngCore};

pub use codec::MAX_TICKET_CHARS;
pub use keyring::{FarmKey, KeyId, KeyRing, KeyRingError, FARM_KEY_BYTES};
pub use ledger::NonceLedger;

/// A wall-clock instant in milliseconds since the Unix epoch: tickets cross machines, so
/// their expiry is wall time, not a monotonic `Instant`. Farm clocks are kept in step by NTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// The instant `time` (before the epoch counts as 0). The shell reads the clock.
    pub fn from_system_time(time: SystemTime) -> Self {
        let ms = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Self(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// This instant plus `duration`, saturating.
    pub fn saturating_add(self, duration: Duration) -> Self {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(ms))
    }
}

/// A ticket's 128-bit random nonce: what makes it single use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nonce(pub [u8; 16]);

impl Nonce {
    /// A fresh nonce from a cryptographic random source.
    pub fn random<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }
}

impl fmt::Display for Nonce {
    /// Lower-case hex, for audit logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// What a ticket binds. Every string is 1 to 255 bytes of UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketClaims {
    /// Node name of the broker that issued it, where it must be redeemed.
    pub issuer: String,
    /// The user it was issued to.
    pub user: String,
    /// The session host the tunnel may reach.
    pub host: String,
    /// The host's RDP port.
    pub port: u16,
    /// The site of the host (and of the gateways that may carry the tunnel).
    pub site: String,
    /// The first instant at which the ticket is no longer valid.
    pub expires_at: UnixMillis,
    /// Random, unique per ticket.
    pub nonce: Nonce,
}

/// A ticket whose tag and expiry checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedTicket {
    /// The key that signed it.
    pub key_id: KeyId,
    /// What it binds.
    pub claims: TicketClaims,
}

/// Which bound value differed in [`VerifiedTicket::check_binding`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingField {
    /// The host.
    Host,
    /// The port.
    Port,
    /// The site.
    Site,
    /// The issuing broker.
    Issuer,
}

impl BindingField {
    /// The field's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Port => "port",
            Self::Site => "site",
            Self::Issuer => "issuer",
        }
    }
}

impl VerifiedTicket {
    /// Checks that the ticket is used where it was issued for: `host`:`port` in `site`.
    /// The gateway calls it with its own site and the destination it is about to connect to.
    pub fn check_binding(&self, host: &str, port: u16, site: &str) -> Result<(), TicketError> {
        let c = &self.claims;
        let mismatch = if c.site != site {
            Some(BindingField::Site)
        } else if c.host != host {
            Some(BindingField::Host)
        } else if c.port != port {
            Some(BindingField::Port)
        } else {
            None
        };
        mismatch.map_or(Ok(()), |field| Err(TicketError::BindingMismatch(field)))
    }

    /// Checks that this broker, named `broker`, issued the ticket; called before redeeming.
    pub fn check_issuer(&self, broker: &str) -> Result<(), TicketError> {
        if self.claims.issuer == broker {
            Ok(())
        } else {
            Err(TicketError::BindingMismatch(BindingField::Issuer))
        }
    }
}

/// Why a ticket cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedTicket {
    /// Longer than [`MAX_TICKET_CHARS`].
    TooLong,
    /// Not base64url without padding.
    NotBase64,
    /// Shorter than its layout requires.
    Truncated,
    /// A format version this build does not know.
    UnknownVersion(u8),
    /// A string field of length zero.
    EmptyField(&'static str),
    /// A string field that is not UTF-8.
    BadUtf8(&'static str),
    /// Bytes after the last field.
    TrailingBytes,
}

/// Why a ticket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketError {
    /// It cannot be decoded.
    Malformed(MalformedTicket),
    /// Its key id names no key in the ring (retired, or not yet deployed here).
    UnknownKey(KeyId),
    /// The tag does not match: altered or not made with the farm key.
    Forged,
    /// Past its expiry.
    Expired {
        /// When it expired.
        expired_at: UnixMillis,
        /// The time of the check.
        now: UnixMillis,
    },
    /// Used for another host, port, site or issuer than it binds.
    BindingMismatch(BindingField),
    /// Its nonce was already redeemed.
    Replayed,
    /// The nonce ledger is at capacity with unexpired entries; fail closed.
    LedgerFull,
}

impl TicketError {
    /// A stable, short reason for logs and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "ticket_malformed",
            Self::UnknownKey(_) => "ticket_unknown_key",
            Self::Forged => "ticket_forged",
            Self::Expired { .. } => "ticket_expired",
            Self::BindingMismatch(BindingField::Issuer) => "ticket_wrong_issuer",
            Self::BindingMismatch(_) => "ticket_binding_mismatch",
            Self::Replayed => "ticket_replayed",
            Self::LedgerFull => "ticket_ledger_full",
        }
    }
}

impl fmt::Display for TicketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(m) => write!(f, "malformed ticket: {m:?}"),
            Self::UnknownKey(id) => write!(f, "ticket signed under unknown key id {id}"),
            Self::Forged => f.write_str("ticket tag does not match"),
            Self::Expired { expired_at, now } => {
                write!(f, "ticket expired {} ms ago", now.0.saturating_sub(expired_at.0))
            }
            Self::BindingMismatch(field) => {
                write!(f, "ticket is bound to another {}", field.as_str())
            }
            Self::Replayed => f.write_str("ticket already redeemed"),
            Self::LedgerFull => f.write_str("nonce ledger full"),
        }
    }
}

impl std::error::Error for TicketError {}

/// A claim that cannot be signed: empty or longer than 255 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidClaim {
    /// The offending field.
    pub field: &'static str,
}

impl fmt::Display for InvalidClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ticket claim {} must be 1 to 255 bytes", self.field)
    }
}

impl std::error::Error for InvalidClaim {}

#[cfg(test)]
mod tests;
