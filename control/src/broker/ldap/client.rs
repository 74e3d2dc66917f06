//! The blocking directory check: one LDAP connection per login (RFC 4511), as directories
//! like Active Directory are used: bind as the service account, search the user, bind as
//! the user with the password, read the groups, unbind.
//!
//! Runs on a broker check thread, never on a connection thread or under the broker lock;
//! every network step is bounded by the section's `timeout`. Any failure to ask the
//! directory becomes [`AuthOutcome::Unavailable`] with a sentence for the log and the user.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use ldap3::{LdapConn, LdapConnSettings, LdapError, LdapResult, Scope, SearchEntry, SearchOptions};

use super::escape;
use super::settings::{LdapSettings, Transport, UserLookup};
use crate::broker::auth::AuthOutcome;
use crate::message::validate::check_text;
use crate::message::{MAX_RESOURCE_BYTES, MAX_USER_BYTES};

/// Groups kept per user at most; a directory that lists more is cut (and logged by the
/// caller through the outcome's size).
pub const MAX_GROUPS: usize = 256;

/// RFC 4511 §4.1.9 result codes the check tells apart.
mod rc {
    pub const SUCCESS: u32 = 0;
    pub const SIZE_LIMIT_EXCEEDED: u32 = 4;
    pub const NO_SUCH_OBJECT: u32 = 32;
    pub const INVALID_CREDENTIALS: u32 = 49;
}

/// A directory of users: the settings of one `[ldap]` section and, for a TLS directory,
/// the client configuration that verifies it. Cheap to clone; holds no connection between
/// logins.
#[derive(Debug, Clone)]
pub struct LdapDirectory {
    settings: LdapSettings,
    /// `Ok(None)`: clear text; `Err`: the CA could not be read (every check says why).
    tls: Result<Option<Arc<rustls::ClientConfig>>, Failure>,
}

impl PartialEq for LdapDirectory {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings
    }
}

impl Eq for LdapDirectory {}

/// Why the directory could not answer.
type Failure = String;

impl LdapDirectory {
    /// A directory for `settings`; a TLS directory's CA is read now (the farm loader has
    /// checked it already, see [`super::client_config`]).
    pub fn new(settings: LdapSettings) -> Self {
        let tls = super::tls::client_config(&settings).map_err(|e| format!("TLS set-up: {e}"));
        Self { settings, tls }
    }

    /// Its settings.
    pub fn settings(&self) -> &LdapSettings {
        &self.settings
    }

    /// Checks `password` for `user` against the directory. Blocks for up to a few times
    /// `timeout`; call it on a check thread.
    pub fn check(&self, user: &str, password: &str) -> AuthOutcome {
        // RFC 4513 §5.1.2: a simple bind with a DN and an empty password is an
        // "unauthenticated bind" that many servers answer with success. Refuse it here,
        // before any bind is sent.
        if password.is_empty() {
            return AuthOutcome::WrongPassword;
        }
        // The client library panics on some malformed answers (`SearchEntry::construct`);
        // a broken directory must cost one refusal, not a check thread.
        let checked = std::panic::catch_unwind(AssertUnwindSafe(|| self.try_check(user, password)));
        match checked {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(why)) => AuthOutcome::Unavailable(format!("directory {}: {why}", self.settings.url)),
            Err(_) => AuthOutcome::Unavailable(format!("directory {}: malformed answer", self.settings.url)),
        }
    }

    fn try_check(&self, user: &str, password: &str) -> Result<AuthOutcome, Failure> {
        let s = &self.settings;
        let mut conn_settings = LdapConnSettings::new().set_conn_timeout(s.timeout);
        if let Some(config) = self.tls.clone()? {
            // For ldaps:// the client ignores starttls; for ldap:// it upgrades before any bind.
            conn_settings = conn_settings
                .set_config(config)
                .set_starttls(s.transport == Transport::StartTls);
        }
        let mut conn = LdapConn::with_settings(conn_settings, &s.url).map_err(|e| match &e {
            // The only operation of a connect: the StartTLS request.
            LdapError::LdapResult { result } => format!("StartTLS refused: {}", result_text(result)),
            _ => describe(&e, s),
        })?;
        let outcome = self.with_connection(&mut conn, user, password);
        let _ = conn.unbind();
        outcome
    }

    fn with_connection(
        &self,
        conn: &mut LdapConn,
        user: &str,
        password: &str,
    ) -> Result<AuthOutcome, Failure> {
        let s = &self.settings;
        let service_password = match &s.service {
            Some(svc) => Some(svc.password.read()?),
            None => None,
        };
        let bind_service = |conn: &mut LdapConn| -> Result<(), Failure> {
            if let (Some(svc), Some(pw)) = (&s.service, &service_password) {
                let r = conn
                    .with_timeout(s.timeout)
                    .simple_bind(&svc.dn, pw)
                    .map_err(|e| describe(&e, s))?;
                if r.rc != rc::SUCCESS {
                    return Err(format!("service account bind refused: {}", result_text(&r)));
                }
            }
            Ok(())
        };
        let attrs = self.entry_attributes();
        // 1. Find the user's DN.
        let (dn, mut entry) = match &s.lookup {
            UserLookup::Search { base_dn, filter } => {
                bind_service(conn)?;
                let filter = escape::fill(filter, &[("user", user)], escape::filter_value);
                let entries = search(conn, s, base_dn, Scope::Subtree, &filter, &attrs, 2)?;
                match entries.len() {
                    0 => return Ok(AuthOutcome::UnknownUser),
                    1 => {}
                    _ => return Err(format!("user_filter matched more than one entry for {user:?}")),
                }
                let entry = entries
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| unreachable!("one entry"));
                (entry.dn.clone(), Some(entry))
            }
            UserLookup::Template(template) => {
                (escape::fill(template, &[("user", user)], escape::dn_value), None)
            }
        };
        // 2. Bind as the user: this is the password check.
        let r = conn
            .with_timeout(s.timeout)
            .simple_bind(&dn, password)
            .map_err(|e| describe(&e, s))?;
        match r.rc {
            rc::SUCCESS => {}
            rc::INVALID_CREDENTIALS => return Ok(invalid_credentials(&r)),
            _ => return Err(format!("bind as the user refused: {}", result_text(&r))),
        }
        // 3. The entry's attributes, if the template gave only a DN.
        if entry.is_none() && !attrs.is_empty() {
            let entries = search(conn, s, &dn, Scope::Base, "(objectClass=*)", &attrs, 1)?;
            entry = entries.into_iter().next();
        }
        let name = match (&s.name_attribute, &entry) {
            (Some(a), Some(e)) => first_value(e, a)
                .filter(|v| check_text("user", v, MAX_USER_BYTES).is_ok())
                .unwrap_or_else(|| user.to_string()),
            _ => user.to_string(),
        };
        // 4. Groups.
        let mut groups: Vec<String> = Vec::new();
        if let (Some(a), Some(e)) = (&s.groups.attribute, &entry) {
            for value in values(e, a) {
                if let Some(g) = escape::first_rdn_value(value) {
                    push_group(&mut groups, g);
                }
            }
        }
        if let Some(gs) = &s.groups.search {
            // Group entries are the service account's to read when there is one.
            bind_service(conn)?;
            let filter = escape::fill(&gs.filter, &[("user", user), ("dn", &dn)], escape::filter_value);
            let found = search(
                conn,
                s,
                &gs.base_dn,
                Scope::Subtree,
                &filter,
                std::slice::from_ref(&gs.name_attribute),
                MAX_GROUPS,
            )?;
            for e in &found {
                let name = first_value(e, &gs.name_attribute).or_else(|| escape::first_rdn_value(&e.dn));
                if let Some(g) = name {
                    push_group(&mut groups, g);
                }
            }
        }
        Ok(AuthOutcome::Accepted { user: name, groups })
    }

    /// Attributes read from the user's entry.
    fn entry_attributes(&self) -> Vec<String> {
        let s = &self.settings;
        s.name_attribute
            .iter()
            .chain(&s.groups.attribute)
            .cloned()
            .collect()
    }
}

/// A subtree or base search returning at most `limit` entries (a server-side size limit;
/// `sizeLimitExceeded` with the entries so far is fine). Referrals are skipped.
fn search(
    conn: &mut LdapConn,
    s: &LdapSettings,
    base: &str,
    scope: Scope,
    filter: &str,
    attrs: &[String],
    limit: usize,
) -> Result<Vec<SearchEntry>, Failure> {
    // RFC 4511 §4.5.1.7: "1.1" asks for no attributes.
    let attrs: Vec<&str> = if attrs.is_empty() {
        vec!["1.1"]
    } else {
        attrs.iter().map(String::as_str).collect()
    };
    let limit_i32 = i32::try_from(limit).unwrap_or(i32::MAX);
    let timelimit = i32::try_from(s.timeout.as_secs().max(1)).unwrap_or(i32::MAX);
    let result = conn
        .with_timeout(s.timeout)
        .with_search_options(SearchOptions::new().sizelimit(limit_i32).timelimit(timelimit))
        .search(base, scope, filter, attrs)
        .map_err(|e| describe(&e, s))?;
    let (entries, done) = (result.0, result.1);
    match done.rc {
        rc::SUCCESS | rc::SIZE_LIMIT_EXCEEDED => {}
        rc::NO_SUCH_OBJECT => return Err(format!("search base {base:?} does not exist")),
        _ => return Err(format!("search refused: {}", result_text(&done))),
    }
    Ok(entries
        .into_iter()
        .filter(|e| !e.is_ref() && !e.is_intermediate())
        .take(limit)
        .map(SearchEntry::construct)
        .collect())
}

/// What an `invalidCredentials` bind means. Active Directory adds a reason in the message
/// (`... data 775, ...`); the codes it documents for a right password on an unusable
/// account map to disabled and locked, everything else is a wrong password.
fn invalid_credentials(r: &LdapResult) -> AuthOutcome {
    let code = r
        .text
        .split_once(" data ")
        .map(|(_, rest)| rest.split(|c: char| !c.is_ascii_hexdigit()).next().unwrap_or(""));
    match code {
        Some("533") | Some("701") => AuthOutcome::Disabled,
        Some("775") => AuthOutcome::Locked,
        _ => AuthOutcome::WrongPassword,
    }
}

fn values<'a>(e: &'a SearchEntry, attribute: &str) -> &'a [String] {
    find_attr(&e.attrs, attribute).map_or(&[], Vec::as_slice)
}

fn first_value(e: &SearchEntry, attribute: &str) -> Option<String> {
    values(e, attribute).first().cloned()
}

/// Attribute descriptions compare case-insensitively (RFC 4512 §2.5).
fn find_attr<'a>(attrs: &'a HashMap<String, Vec<String>>, name: &str) -> Option<&'a Vec<String>> {
    attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn push_group(groups: &mut Vec<String>, group: String) {
    if groups.len() < MAX_GROUPS
        && check_text("group", &group, MAX_RESOURCE_BYTES).is_ok()
        && !groups.contains(&group)
    {
        groups.push(group);
    }
}

fn result_text(r: &LdapResult) -> String {
    let text = r.text.trim();
    if text.is_empty() {
        format!("result code {}", r.rc)
    } else {
        format!("result code {} ({text})", r.rc)
    }
}

/// A client error as a sentence: unreachable, timed out, TLS refused, or closed.
fn describe(e: &LdapError, s: &LdapSettings) -> Failure {
    match e {
        LdapError::Io { source } if source.kind() == std::io::ErrorKind::TimedOut => {
            format!("no answer within {:?}", s.timeout)
        }
        LdapError::Io { source } => match source.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(tls) => format!("TLS with the directory failed: {tls}"),
            None => format!("unreachable: {source}"),
        },
        LdapError::Timeout { .. } => format!("no answer within {:?}", s.timeout),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::ldap::settings::GroupLookup;

    fn settings(url: &str) -> LdapSettings {
        LdapSettings {
            url: url.into(),
            transport: crate::broker::ldap::Transport::Plain,
            ca_file: None,
            timeout: std::time::Duration::from_millis(500),
            service: None,
            lookup: UserLookup::Template("uid={user},dc=ex".into()),
            name_attribute: None,
            groups: GroupLookup {
                attribute: None,
                search: None,
            },
            max_pending: 4,
        }
    }

    #[test]
    fn empty_password_is_refused_before_connecting() {
        // Nothing listens on port 1; an attempt to connect would be `Unavailable`.
        let dir = LdapDirectory::new(settings("ldap://127.0.0.1:1"));
        assert_eq!(dir.check("alice", ""), AuthOutcome::WrongPassword);
    }

    #[test]
    fn unreachable_directory_is_unavailable_with_a_reason() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = LdapDirectory::new(settings(&format!("ldap://127.0.0.1:{port}")));
        match dir.check("alice", "pw") {
            AuthOutcome::Unavailable(why) => {
                assert!(
                    why.contains("unreachable") && why.contains(&port.to_string()),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_silent_directory_times_out() {
        // Accepts the TCP connection and never answers the bind.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ldap://{}", listener.local_addr().unwrap());
        let dir = LdapDirectory::new(settings(&url));
        let started = std::time::Instant::now();
        let outcome = dir.check("alice", "pw");
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
        match outcome {
            AuthOutcome::Unavailable(why) => assert!(why.contains("no answer within"), "{why}"),
            other => panic!("{other:?}"),
        }
        drop(listener);
    }

    #[test]
    fn active_directory_bind_reasons() {
        let r = |text: &str| LdapResult {
            rc: 49,
            matched: String::new(),
            text: text.into(),
            refs: vec![],
            ctrls: vec![],
        };
        let ad = |code: &str| {
            r(&format!(
                "80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data {code}, v4563"
            ))
        };
        assert_eq!(invalid_credentials(&ad("52e")), AuthOutcome::WrongPassword);
        assert_eq!(invalid_credentials(&ad("533")), AuthOutcome::Disabled);
        assert_eq!(invalid_credentials(&ad("775")), AuthOutcome::Locked);
        assert_eq!(invalid_credentials(&r("")), AuthOutcome::WrongPassword);
    }
}
