//! What a credential check concluded, whoever made it: the local user database today, an
//! LDAP directory later. The broker's login flow ([`super::Broker::begin_login`],
//! [`super::Broker::finish_login`]) takes this value, so a slow or remote check can run
//! off the broker's event loop and report back.

use crate::message::RefusalReason;

/// The result of checking one user's password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The password matches and the account may log in.
    Accepted {
        /// The user's name as the directory spells it (the name put in tickets).
        user: String,
        /// The groups the directory gives the user.
        groups: Vec<String>,
    },
    /// No such user. The checker still spends the time of a hash check, so the answer time
    /// does not tell which names exist.
    UnknownUser,
    /// The password does not match.
    WrongPassword,
    /// The password matches but the account is disabled.
    Disabled,
    /// The password matches but an administrator locked the account.
    Locked,
    /// The directory could not be asked (LDAP down); says why, for the log.
    Unavailable(String),
}

impl AuthOutcome {
    /// Whether the outcome counts as a failed guess for throttling: a wrong password or a
    /// name that does not exist. Disabled and locked accounts gave the right password;
    /// an unreachable directory is nobody's fault.
    pub fn is_failed_guess(&self) -> bool {
        matches!(self, Self::UnknownUser | Self::WrongPassword)
    }

    /// The refusal reason for a negative outcome; `None` for `Accepted`.
    pub fn refusal(&self) -> Option<RefusalReason> {
        match self {
            Self::Accepted { .. } => None,
            Self::UnknownUser => Some(RefusalReason::UnknownUser),
            Self::WrongPassword => Some(RefusalReason::WrongPassword),
            Self::Disabled => Some(RefusalReason::UserDisabled),
            Self::Locked => Some(RefusalReason::UserLocked),
            Self::Unavailable(_) => Some(RefusalReason::DirectoryUnavailable),
        }
    }
}
