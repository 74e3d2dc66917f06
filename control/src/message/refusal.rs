//! Why the broker refused a request: one enum, one stable string per reason (PROTOCOL.md §6.8).
//!
//! The strings are part of the protocol and appear in audit logs and metrics labels: never
//! rename one, only add. A reason a newer peer sends that this build does not know decodes
//! as [`RefusalReason::Unrecognized`] instead of failing the whole response.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ticket::{BindingField, TicketError};

/// The reason in a `refused` response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// Login: no such user in the local database or directory.
    UnknownUser,
    /// Login: the password does not match. Gateways show clients the same text for this and
    /// `unknown_user`, so user names cannot be probed; the audit log keeps the difference.
    WrongPassword,
    /// Login: a second factor is required and none was given.
    SecondFactorRequired,
    /// Login: the second factor was wrong.
    SecondFactorWrong,
    /// Login: too many failures for this user; locked out for a while.
    UserLocked,
    /// Login: the account is disabled.
    UserDisabled,
    /// Login: too many failures from this client address; throttled for a while.
    AddressThrottled,
    /// Login: the user directory (LDAP) or second-factor server cannot be reached.
    DirectoryUnavailable,
    /// The session token is unknown, expired or not valid at this broker.
    SessionInvalid,
    /// Launch: no such published resource.
    UnknownResource,
    /// Launch: the user's groups may not launch this resource.
    NotPermitted,
    /// Launch or choose-host: every host of the pool is down or at its session limit.
    NoHostAvailable,
    /// The request names a site this gateway does not serve.
    WrongSite,
    /// Ticket: cannot be decoded.
    TicketMalformed,
    /// Ticket: the tag does not match; not signed with the farm key.
    TicketForged,
    /// Ticket: signed under a key id this node does not hold (retired or not yet deployed).
    TicketUnknownKey,
    /// Ticket: past its expiry.
    TicketExpired,
    /// Ticket: its nonce was already redeemed.
    TicketReplayed,
    /// Ticket: host, port or site differ from where it is being used.
    TicketBindingMismatch,
    /// Ticket: issued by another broker; redeem it at its issuer.
    TicketWrongIssuer,
    /// Host report: the host is not in any pool of this broker.
    UnknownHost,
    /// The request body is malformed or fails validation.
    BadRequest,
    /// This broker is shutting down; send the request to another broker.
    Draining,
    /// The broker hit an internal error; the request may be retried.
    Internal,
    /// A reason this build does not know (sent by a newer peer).
    #[serde(other)]
    Unrecognized,
}

impl RefusalReason {
    /// Every reason, in declaration order.
    pub const ALL: [RefusalReason; 25] = [
        Self::UnknownUser,
        Self::WrongPassword,
        Self::SecondFactorRequired,
        Self::SecondFactorWrong,
        Self::UserLocked,
        Self::UserDisabled,
        Self::AddressThrottled,
        Self::DirectoryUnavailable,
        Self::SessionInvalid,
        Self::UnknownResource,
        Self::NotPermitted,
        Self::NoHostAvailable,
        Self::WrongSite,
        Self::TicketMalformed,
        Self::TicketForged,
        Self::TicketUnknownKey,
        Self::TicketExpired,
        Self::TicketReplayed,
        Self::TicketBindingMismatch,
        Self::TicketWrongIssuer,
        Self::UnknownHost,
        Self::BadRequest,
        Self::Draining,
        Self::Internal,
        Self::Unrecognized,
    ];

    /// The stable wire string of this reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownUser => "unknown_user",
            Self::WrongPassword => "wrong_password",
            Self::SecondFactorRequired => "second_factor_required",
            Self::SecondFactorWrong => "second_factor_wrong",
            Self::UserLocked => "user_locked",
            Self::UserDisabled => "user_disabled",
            Self::AddressThrottled => "address_throttled",
            Self::DirectoryUnavailable => "directory_unavailable",
            Self::SessionInvalid => "session_invalid",
            Self::UnknownResource => "unknown_resource",
            Self::NotPermitted => "not_permitted",
            Self::NoHostAvailable => "no_host_available",
            Self::WrongSite => "wrong_site",
            Self::TicketMalformed => "ticket_malformed",
            Self::TicketForged => "ticket_forged",
            Self::TicketUnknownKey => "ticket_unknown_key",
            Self::TicketExpired => "ticket_expired",
            Self::TicketReplayed => "ticket_replayed",
            Self::TicketBindingMismatch => "ticket_binding_mismatch",
            Self::TicketWrongIssuer => "ticket_wrong_issuer",
            Self::UnknownHost => "unknown_host",
            Self::BadRequest => "bad_request",
            Self::Draining => "draining",
            Self::Internal => "internal",
            Self::Unrecognized => "unrecognized",
        }
    }

    /// Whether the gateway client should send the same request to its next broker instead
    /// of passing the refusal to the user.
    pub fn retry_elsewhere(self) -> bool {
        matches!(self, Self::Draining | Self::Internal)
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&TicketError> for RefusalReason {
    fn from(err: &TicketError) -> Self {
        match err {
            TicketError::Malformed(_) => Self::TicketMalformed,
            TicketError::Forged => Self::TicketForged,
            TicketError::UnknownKey(_) => Self::TicketUnknownKey,
            TicketError::Expired { .. } => Self::TicketExpired,
            TicketError::Replayed => Self::TicketReplayed,
            TicketError::BindingMismatch(BindingField::Issuer) => Self::TicketWrongIssuer,
            TicketError::BindingMismatch(_) => Self::TicketBindingMismatch,
            TicketError::LedgerFull => Self::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn strings_are_stable_unique_and_match_serde() {
        let mut seen = HashSet::new();
        for reason in RefusalReason::ALL {
            assert!(seen.insert(reason.as_str()), "duplicate {reason}");
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
            let back: RefusalReason = serde_json::from_str(&json).unwrap();
            assert_eq!(back, reason);
        }
        // Pinned spellings: these are the protocol.
        assert_eq!(RefusalReason::TicketReplayed.as_str(), "ticket_replayed");
        assert_eq!(RefusalReason::WrongPassword.as_str(), "wrong_password");
    }

    #[test]
    fn unknown_reason_from_newer_peer_decodes() {
        let back: RefusalReason = serde_json::from_str("\"quota_exceeded\"").unwrap();
        assert_eq!(back, RefusalReason::Unrecognized);
    }
}
