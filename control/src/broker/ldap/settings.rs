//! The farm file's `[ldap]` section (control/FARM.md §LDAP): its serde shape and the checks
//! that turn it into validated [`LdapSettings`], naming the offending key.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::escape;
use crate::broker::duration;

/// Largest bind password file read, in bytes.
pub const MAX_PASSWORD_FILE_BYTES: u64 = 4096;
/// Longest `timeout` accepted: a login waits at most about three of them.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// How the broker reaches and reads the directory: validated, immutable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapSettings {
    /// `ldap://HOST[:PORT]` or `ldaps://HOST[:PORT]` (RFC 4516 form, nothing after it).
    pub url: String,
    /// Whether and how the connection is encrypted.
    pub transport: Transport,
    /// PEM file of the CA certificates that verify the directory's certificate; `None`: the
    /// system's trust store. Read when the directory is set up (start, reload).
    pub ca_file: Option<PathBuf>,
    /// Bound on connecting and on each operation (bind, search).
    pub timeout: Duration,
    /// The service account that searches users and groups; `None`: anonymous searches.
    pub service: Option<ServiceAccount>,
    /// How a typed name becomes a DN.
    pub lookup: UserLookup,
    /// The attribute whose value is the user's name in sessions and tickets (e.g. `uid`,
    /// `sAMAccountName`); `None`: the name as typed.
    pub name_attribute: Option<String>,
    /// How the user's groups are read.
    pub groups: GroupLookup,
    /// Directory checks in flight at most; beyond, logins are refused
    /// `directory_unavailable` at once.
    pub max_pending: usize,
}

/// How the bytes of a directory connection travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// In clear (`ldap://`): passwords cross the network readable.
    Plain,
    /// `ldap://` upgraded with the StartTLS operation before any bind (RFC 4513 §3).
    StartTls,
    /// TLS from the first byte (`ldaps://`, port 636 by default).
    Ldaps,
}

impl Transport {
    /// Whether the connection is encrypted.
    pub fn is_tls(self) -> bool {
        !matches!(self, Transport::Plain)
    }
}

/// A bind DN and where its password is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// The service account's DN.
    pub dn: String,
    /// Where its password is read from, at each connection (so a rotated file needs no reload).
    pub password: PasswordSource,
}

/// Where a bind password is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// A file (one line; a trailing newline is dropped).
    File(PathBuf),
    /// An environment variable of the broker process.
    Env(String),
}

impl PasswordSource {
    /// Reads the password; the error says where it looked, never the password.
    pub fn read(&self) -> Result<String, String> {
        let password = match self {
            Self::File(path) => {
                let shown = path.display();
                let len = std::fs::metadata(path)
                    .map_err(|e| format!("bind_password_file {shown}: {e}"))?
                    .len();
                if len > MAX_PASSWORD_FILE_BYTES {
                    return Err(format!(
                        "bind_password_file {shown}: larger than {MAX_PASSWORD_FILE_BYTES} bytes"
                    ));
                }
                let text =
                    std::fs::read_to_string(path).map_err(|e| format!("bind_password_file {shown}: {e}"))?;
                text.trim_end_matches(['\r', '\n']).to_string()
            }
            Self::Env(var) => std::env::var(var)
                .map_err(|_| format!("bind_password_env {var}: not set in the environment"))?,
        };
        if password.is_empty() {
            // RFC 4513 §5.1.2: an empty password is an unauthenticated bind, which servers
            // answer with success without checking anything.
            return Err("the service account's password is empty".into());
        }
        Ok(password)
    }
}

/// How a typed user name becomes the DN to bind as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserLookup {
    /// Search `base_dn` (subtree) with `filter`, `{user}` escaped per RFC 4515; exactly one
    /// entry must match.
    Search {
        /// Where users live.
        base_dn: String,
        /// E.g. `(uid={user})`, `(&(objectClass=user)(sAMAccountName={user}))`.
        filter: String,
    },
    /// Fill `{user}` (escaped per RFC 4514) into a DN: no search needed.
    Template(String),
}

/// How a user's groups are read; both may be set, and the names are merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLookup {
    /// An attribute of the user's entry listing the groups' DNs (`memberOf`); each group's
    /// name is the value of its DN's first RDN.
    pub attribute: Option<String>,
    /// A search for group entries that name the user.
    pub search: Option<GroupSearch>,
}

/// A search for the user's group entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSearch {
    /// Where groups live.
    pub base_dn: String,
    /// E.g. `(member={dn})` (groupOfNames), `(memberUid={user})` (posixGroup); both
    /// placeholders are escaped per RFC 4515.
    pub filter: String,
    /// The attribute holding a group's name (`cn`).
    pub name_attribute: String,
}

/// `[ldap]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LdapEntry {
    url: String,
    #[serde(default)]
    starttls: bool,
    ca_file: Option<PathBuf>,
    #[serde(default = "default_timeout", deserialize_with = "duration::deserialize")]
    timeout: Duration,
    bind_dn: Option<String>,
    bind_password_file: Option<PathBuf>,
    bind_password_env: Option<String>,
    base_dn: Option<String>,
    user_filter: Option<String>,
    dn_template: Option<String>,
    name_attribute: Option<String>,
    group_attribute: Option<String>,
    group_base_dn: Option<String>,
    group_filter: Option<String>,
    #[serde(default = "default_group_name_attribute")]
    group_name_attribute: String,
    #[serde(default = "default_max_pending")]
    max_pending: usize,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_group_name_attribute() -> String {
    "cn".into()
}
fn default_max_pending() -> usize {
    64
}

/// A problem in `[ldap]`: the key (under `ldap.`) and what is wrong.
pub(crate) type Problem = (&'static str, String);

impl LdapEntry {
    /// Checks the section; the error names the key.
    pub(crate) fn build(self) -> Result<LdapSettings, Problem> {
        let (transport, rest) = match (self.url.split_once("://"), self.starttls) {
            (Some(("ldap", rest)), false) => (Transport::Plain, rest),
            (Some(("ldap", rest)), true) => (Transport::StartTls, rest),
            (Some(("ldaps", _)), true) => {
                return Err((
                    "starttls",
                    "is for ldap:// URLs; ldaps:// speaks TLS from the first byte".into(),
                ))
            }
            (Some(("ldaps", rest)), false) => (Transport::Ldaps, rest),
            _ => return Err(("url", "must start with ldap:// or ldaps://".into())),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', ' ', '@']) {
            return Err((
                "url",
                "must be ldap://HOST[:PORT] or ldaps://HOST[:PORT] with nothing after it".into(),
            ));
        }
        if transport.is_tls() && authority.starts_with('[') {
            // The LDAP client names the TLS server by the URL's host as written, and a
            // bracketed IPv6 literal is not a name rustls can verify.
            return Err((
                "url",
                "a TLS directory needs a DNS name or an IPv4 address, not an IPv6 literal".into(),
            ));
        }
        if self.ca_file.is_some() && !transport.is_tls() {
            return Err((
                "ca_file",
                "verifies a TLS directory: use an ldaps:// URL or starttls = true".into(),
            ));
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err((
                "timeout",
                format!("must be more than 0 and at most {MAX_TIMEOUT:?}"),
            ));
        }
        if self.max_pending == 0 {
            return Err(("max_pending", "must be at least 1".into()));
        }
        let service = match (self.bind_dn, self.bind_password_file, self.bind_password_env) {
            (None, None, None) => None,
            (None, _, _) => {
                return Err((
                    "bind_dn",
                    "bind_password_file or bind_password_env given without bind_dn".into(),
                ))
            }
            (Some(dn), Some(file), None) => Some(ServiceAccount {
                dn: nonempty("bind_dn", dn)?,
                password: PasswordSource::File(file),
            }),
            (Some(dn), None, Some(var)) => Some(ServiceAccount {
                dn: nonempty("bind_dn", dn)?,
                password: PasswordSource::Env(nonempty("bind_password_env", var)?),
            }),
            (Some(_), None, None) => {
                return Err(("bind_dn", "needs bind_password_file or bind_password_env".into()))
            }
            (Some(_), Some(_), Some(_)) => {
                return Err((
                    "bind_password_env",
                    "give bind_password_file or bind_password_env, not both".into(),
                ))
            }
        };
        let lookup = match (self.base_dn, self.user_filter, self.dn_template) {
            (Some(base_dn), filter, None) => {
                let filter = filter.unwrap_or_else(|| "(uid={user})".into());
                check_filter("user_filter", &filter, &["user"])?;
                UserLookup::Search {
                    base_dn: nonempty("base_dn", base_dn)?,
                    filter,
                }
            }
            (None, None, Some(template)) => {
                check_placeholders("dn_template", &template, &["user"])?;
                if !template.contains("{user}") {
                    return Err(("dn_template", "must contain {user}".into()));
                }
                UserLookup::Template(template)
            }
            (None, Some(_), None) => return Err(("user_filter", "needs base_dn".into())),
            (Some(_), _, Some(_)) | (None, Some(_), Some(_)) => {
                return Err((
                    "dn_template",
                    "give base_dn (search) or dn_template, not both".into(),
                ))
            }
            (None, None, None) => return Err(("base_dn", "give base_dn (search) or dn_template".into())),
        };
        let search = match (self.group_base_dn, self.group_filter) {
            (None, None) => None,
            (Some(base_dn), Some(filter)) => {
                check_filter("group_filter", &filter, &["user", "dn"])?;
                Some(GroupSearch {
                    base_dn: nonempty("group_base_dn", base_dn)?,
                    filter,
                    name_attribute: attribute("group_name_attribute", self.group_name_attribute)?,
                })
            }
            (Some(_), None) => return Err(("group_filter", "group_base_dn needs group_filter".into())),
            (None, Some(_)) => return Err(("group_base_dn", "group_filter needs group_base_dn".into())),
        };
        Ok(LdapSettings {
            url: self.url,
            transport,
            ca_file: self.ca_file,
            timeout: self.timeout,
            service,
            lookup,
            name_attribute: self
                .name_attribute
                .map(|a| attribute("name_attribute", a))
                .transpose()?,
            groups: GroupLookup {
                attribute: self
                    .group_attribute
                    .map(|a| attribute("group_attribute", a))
                    .transpose()?,
                search,
            },
            max_pending: self.max_pending,
        })
    }
}

fn nonempty(key: &'static str, value: String) -> Result<String, Problem> {
    if value.trim().is_empty() {
        return Err((key, "empty".into()));
    }
    if value.chars().any(char::is_control) {
        return Err((key, "control character".into()));
    }
    Ok(value)
}

/// An attribute description (RFC 4512 §2.5): a letter, then letters, digits and hyphens.
fn attribute(key: &'static str, value: String) -> Result<String, Problem> {
    let ok = value.len() <= 128
        && value.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !ok {
        return Err((key, format!("{value:?} is not an attribute name")));
    }
    Ok(value)
}

fn check_placeholders(key: &'static str, template: &str, allowed: &[&str]) -> Result<(), Problem> {
    for p in escape::placeholders(template) {
        if !allowed.contains(&p) {
            return Err((key, format!("unknown placeholder {{{p}}} (allowed: {allowed:?})")));
        }
    }
    Ok(())
}

/// A filter with placeholders: known placeholders only, at least one used, and a filter
/// the client parses once they are filled.
fn check_filter(key: &'static str, filter: &str, allowed: &[&str]) -> Result<(), Problem> {
    check_placeholders(key, filter, allowed)?;
    if escape::placeholders(filter).is_empty() {
        return Err((
            key,
            format!("must use a placeholder ({allowed:?}) to name the user"),
        ));
    }
    let sample: Vec<(&str, &str)> = allowed.iter().map(|&p| (p, "x")).collect();
    let filled = escape::fill(filter, &sample, escape::filter_value);
    if ldap3::parse_filter(&filled).is_err() {
        return Err((key, format!("{filter:?} is not an LDAP filter (RFC 4515)")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(text: &str) -> Result<LdapSettings, Problem> {
        let entry: LdapEntry = toml::from_str(text).map_err(|e| ("(toml)", e.to_string()))?;
        entry.build()
    }

    const SEARCH: &str = r#"
url = "ldap://127.0.0.1:3890"
bind_dn = "cn=svc,dc=ex"
bind_password_env = "LDAP_PW"
base_dn = "ou=people,dc=ex"
user_filter = "(&(objectClass=person)(uid={user}))"
group_attribute = "memberOf"
group_base_dn = "ou=groups,dc=ex"
group_filter = "(|(member={dn})(memberUid={user}))"
"#;

    #[test]
    fn search_mode_builds() {
        let s = build(SEARCH).unwrap();
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert_eq!(
            s.lookup,
            UserLookup::Search {
                base_dn: "ou=people,dc=ex".into(),
                filter: "(&(objectClass=person)(uid={user}))".into()
            }
        );
        assert_eq!(s.service.unwrap().password, PasswordSource::Env("LDAP_PW".into()));
        assert_eq!(s.groups.search.unwrap().name_attribute, "cn");
        assert_eq!(s.max_pending, 64);
    }

    #[test]
    fn template_mode_builds() {
        let s = build("url = \"ldap://h\"\ndn_template = \"uid={user},ou=people,dc=ex\"\n").unwrap();
        assert_eq!(
            s.lookup,
            UserLookup::Template("uid={user},ou=people,dc=ex".into())
        );
        assert!(s.service.is_none());
    }

    #[test]
    fn transports() {
        let t = |text: &str| {
            let s = build(&format!("{text}\ndn_template = \"uid={{user}}\"")).unwrap();
            (s.transport, s.ca_file)
        };
        assert_eq!(t("url = \"ldap://h\""), (Transport::Plain, None));
        assert_eq!(
            t("url = \"ldap://h\"\nstarttls = true"),
            (Transport::StartTls, None)
        );
        assert_eq!(t("url = \"ldaps://h:6360/\""), (Transport::Ldaps, None));
        assert_eq!(
            t("url = \"ldaps://h\"\nca_file = \"/etc/ca.pem\""),
            (Transport::Ldaps, Some(PathBuf::from("/etc/ca.pem")))
        );
        assert!(!Transport::Plain.is_tls() && Transport::StartTls.is_tls() && Transport::Ldaps.is_tls());
    }

    #[test]
    fn bad_sections_name_their_key() {
        let cases = [
            (
                "url = \"ldaps://h\"\nstarttls = true\ndn_template = \"uid={user}\"",
                "starttls",
            ),
            (
                "url = \"ldap://h\"\nca_file = \"/etc/ca.pem\"\ndn_template = \"uid={user}\"",
                "ca_file",
            ),
            ("url = \"ldap://admin@h\"\ndn_template = \"uid={user}\"", "url"),
            ("url = \"ldaps://\"\ndn_template = \"uid={user}\"", "url"),
            ("url = \"ldaps://[::1]:636\"\ndn_template = \"uid={user}\"", "url"),
            ("url = \"http://h\"\ndn_template = \"uid={user}\"", "url"),
            ("url = \"ldap://h/dc=x?uid\"\ndn_template = \"uid={user}\"", "url"),
            ("url = \"ldap://h\"", "base_dn"),
            ("url = \"ldap://h\"\ndn_template = \"uid=x\"", "dn_template"),
            ("url = \"ldap://h\"\ndn_template = \"uid={name}\"", "dn_template"),
            (
                "url = \"ldap://h\"\nbase_dn = \"dc=x\"\nuser_filter = \"(uid=x)\"",
                "user_filter",
            ),
            (
                "url = \"ldap://h\"\nbase_dn = \"dc=x\"\nuser_filter = \"uid={user}))\"",
                "user_filter",
            ),
            (
                "url = \"ldap://h\"\nbase_dn = \"dc=x\"\nbind_dn = \"cn=s\"",
                "bind_dn",
            ),
            (
                "url = \"ldap://h\"\nbase_dn = \"dc=x\"\nbind_password_env = \"X\"",
                "bind_dn",
            ),
            (
                "url = \"ldap://h\"\nbase_dn = \"dc=x\"\ntimeout = \"0s\"",
                "timeout",
            ),
            (
                "url = \"ldap://h\"\nbase_dn = \"dc=x\"\ngroup_filter = \"(member={dn})\"",
                "group_base_dn",
            ),
            (
                "url = \"ldap://h\"\nbase_dn = \"dc=x\"\ngroup_attribute = \"member of\"",
                "group_attribute",
            ),
            (
                "url = \"ldap://h\"\nbase_dn = \"dc=x\"\nmax_pending = 0",
                "max_pending",
            ),
        ];
        for (text, key) in cases {
            match build(text) {
                Err((k, _)) => assert_eq!(k, key, "{text}"),
                Ok(s) => panic!("accepted {text}: {s:?}"),
            }
        }
    }

    #[test]
    fn password_sources() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(PasswordSource::File(file.clone()).read().unwrap(), "s3cret");
        std::fs::write(&file, "\n").unwrap();
        assert!(PasswordSource::File(file.clone()).read().is_err());
        let err = PasswordSource::File(dir.path().join("missing"))
            .read()
            .unwrap_err();
        assert!(err.contains("bind_password_file"), "{err}");
        assert!(PasswordSource::Env("GATEHOUSE_TEST_SURELY_UNSET_VAR".into())
            .read()
            .is_err());
    }
}
