//! Where a login's password is checked: the local users file or the LDAP directory.
//!
//! Local first: a name the users file has is checked there only (its argon2id hash decides,
//! whatever the directory says); any other name goes to the directory when the farm file
//! has an `[ldap]` section, else it is an unknown local user (a stand-in hash is still
//! checked). The shell asks [`Credentials::route`] to pick the thread the check runs on:
//! a slow or unreachable directory must never delay hash checks of local users.

use std::sync::Arc;

use super::auth::AuthOutcome;
use super::ldap::LdapDirectory;
use super::userdb::UserDb;

/// Which checker a login goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckRoute {
    /// The local users file (argon2id on the hash threads).
    Local,
    /// The LDAP directory (network, on a directory check thread).
    Directory,
}

/// The password checkers of one broker: replaced as a whole when the users file or the
/// farm file is reloaded, so a check in flight finishes against what it started with.
#[derive(Debug, Clone)]
pub struct Credentials {
    local: Arc<UserDb>,
    directory: Option<Arc<LdapDirectory>>,
}

impl Credentials {
    /// Checkers over `local` and, when the farm file has `[ldap]`, `directory`.
    pub fn new(local: Arc<UserDb>, directory: Option<Arc<LdapDirectory>>) -> Self {
        Self { local, directory }
    }

    /// Where `user`'s password is checked.
    pub fn route(&self, user: &str) -> CheckRoute {
        if self.directory.is_some() && self.local.user(user).is_none() {
            CheckRoute::Directory
        } else {
            CheckRoute::Local
        }
    }

    /// Checks `password` for `user` where [`Credentials::route`] says. Blocks: an argon2id
    /// hash, or directory round trips bounded by its timeout.
    pub fn check(&self, user: &str, password: &str) -> AuthOutcome {
        match (self.route(user), &self.directory) {
            (CheckRoute::Directory, Some(dir)) => dir.check(user, password),
            _ => self.local.verify(user, password),
        }
    }

    /// The local users.
    pub fn local(&self) -> &Arc<UserDb> {
        &self.local
    }

    /// The directory, if the farm file configures one.
    pub fn directory(&self) -> Option<&Arc<LdapDirectory>> {
        self.directory.as_ref()
    }

    /// The same local users with another directory (farm file reload).
    pub fn with_directory(&self, directory: Option<Arc<LdapDirectory>>) -> Self {
        Self {
            local: self.local.clone(),
            directory,
        }
    }

    /// The same directory with other local users (users file reload).
    pub fn with_local(&self, local: Arc<UserDb>) -> Self {
        Self {
            local,
            directory: self.directory.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::ldap::{GroupLookup, LdapSettings, UserLookup};

    fn directory() -> Arc<LdapDirectory> {
        Arc::new(LdapDirectory::new(LdapSettings {
            url: "ldap://127.0.0.1:1".into(),
            transport: crate::broker::ldap::Transport::Plain,
            ca_file: None,
            timeout: std::time::Duration::from_millis(300),
            service: None,
            lookup: UserLookup::Template("uid={user},dc=ex".into()),
            name_attribute: None,
            groups: GroupLookup {
                attribute: None,
                search: None,
            },
            max_pending: 1,
        }))
    }

    #[test]
    fn local_users_first_then_the_directory() {
        let mut db = UserDb::new(crate::broker::HashCost {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
        });
        db.add("alice", "right", vec!["staff".into()], &mut rand::rngs::OsRng)
            .unwrap();
        let only_local = Credentials::new(Arc::new(db), None);
        assert_eq!(only_local.route("bob"), CheckRoute::Local);
        assert_eq!(only_local.check("bob", "x"), AuthOutcome::UnknownUser);
        let both = only_local.with_directory(Some(directory()));
        assert_eq!(both.route("alice"), CheckRoute::Local);
        assert_eq!(both.route("bob"), CheckRoute::Directory);
        // A local user's wrong password is not retried against the directory.
        assert_eq!(both.check("alice", "wrong"), AuthOutcome::WrongPassword);
        assert!(matches!(
            both.check("alice", "right"),
            AuthOutcome::Accepted { .. }
        ));
        assert!(matches!(both.check("bob", "pw"), AuthOutcome::Unavailable(_)));
    }
}
