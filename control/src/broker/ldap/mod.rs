//! Users from an LDAP directory (Active Directory, OpenLDAP), configured by the farm file's
//! `[ldap]` section (control/FARM.md §LDAP).
//!
//! [`LdapSettings`] is the validated section (part of the immutable [`super::Farm`]);
//! [`LdapDirectory::check`] is the blocking check the broker shell runs on a check thread,
//! turning a name and password into an [`super::AuthOutcome`] like the local user database
//! does. The escapes that keep a typed name from becoming filter or DN syntax live in
//! [`escape`]; the TLS client configuration (`ldaps://`, StartTLS) in `tls`. This module must not touch throttling, sessions or the audit log: the
//! broker's login flow applies them to directory users exactly as to local ones.

mod client;
pub mod escape;
mod settings;
mod tls;

pub use client::{LdapDirectory, MAX_GROUPS};
pub(crate) use settings::LdapEntry;
pub use settings::{
    GroupLookup, GroupSearch, LdapSettings, PasswordSource, ServiceAccount, Transport, UserLookup,
    MAX_PASSWORD_FILE_BYTES, MAX_TIMEOUT,
};
pub use tls::client_config;
