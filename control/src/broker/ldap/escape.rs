//! Putting a typed user name into LDAP text, and getting a group name out of a DN.
//!
//! Owns the two escapes (filter values, RFC 4515 §3; DN attribute values, RFC 4514 §2.4) and
//! the template fill that uses them, so a name such as `*)(uid=*` is always a literal value
//! and never filter or DN syntax. Pure functions; the directory client calls them.

/// Escapes `value` for use as an assertion value inside a search filter (RFC 4515 §3):
/// `*`, `(`, `)`, `\` and NUL become `\2a`, `\28`, `\29`, `\5c`, `\00`. Everything else,
/// UTF-8 included, is allowed as is in the string form.
pub fn filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes `value` for use as an attribute value of an RDN (RFC 4514 §2.4): a backslash
/// before `"`, `+`, `,`, `;`, `<`, `>`, `\` and `=` (the last is allowed unescaped but often
/// mis-parsed), before a leading space or `#` and a trailing space; NUL as `\00`.
pub fn dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '\0' => out.push_str("\\00"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            c => out.push(c),
        }
    }
    out
}

/// Replaces every `{NAME}` placeholder in `template` by its value from `values`, escaped
/// with `escape`. Unknown placeholders are left as written (the farm file check refuses
/// them before this is ever called).
pub fn fill(template: &str, values: &[(&str, &str)], escape: fn(&str) -> String) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let known = values.iter().find(|(name, _)| {
            after
                .strip_prefix('{')
                .and_then(|a| a.strip_prefix(name))
                .is_some_and(|a| a.starts_with('}'))
        });
        match known {
            Some((name, value)) => {
                out.push_str(&escape(value));
                rest = &after[name.len() + 2..];
            }
            None => {
                out.push('{');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The placeholders (`{user}`, `{dn}`) a template uses.
pub fn placeholders(template: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                found.push(&after[..end]);
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    found
}

/// The value of a DN's first RDN, unescaped (RFC 4514 §3): `Staff` for
/// `cn=Staff,ou=groups,dc=example,dc=org`, `Sales, East` for `CN=Sales\, East,OU=...`.
/// A value that is not a DN (no `=`) is returned as it is, so group attributes holding plain
/// names work too. `None` for an empty or hex-encoded (`#...`) value.
pub fn first_rdn_value(dn: &str) -> Option<String> {
    let Some(eq) = dn.find('=') else {
        let plain = dn.trim();
        return (!plain.is_empty()).then(|| plain.to_string());
    };
    let raw = &dn.as_bytes()[eq + 1..];
    if raw.first() == Some(&b'#') {
        return None;
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b',' | b'+' | b';' => break,
            b'\\' => {
                let hex = raw
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match (hex, raw.get(i + 1)) {
                    (Some(b), _) => {
                        bytes.push(b);
                        i += 3;
                    }
                    (None, Some(&c)) => {
                        bytes.push(c);
                        i += 2;
                    }
                    (None, None) => break,
                }
            }
            b => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    let value = String::from_utf8(bytes).ok()?;
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_cannot_break_out() {
        assert_eq!(filter_value("alice"), "alice");
        assert_eq!(filter_value("*)(uid=*"), "\\2a\\29\\28uid=\\2a");
        assert_eq!(filter_value("a\\b\0"), "a\\5cb\\00");
        assert_eq!(filter_value("Jürgen"), "Jürgen");
        let filter = fill("(uid={user})", &[("user", "*)(|(uid=*")], filter_value);
        assert_eq!(filter, "(uid=\\2a\\29\\28|\\28uid=\\2a)");
        // The filled filter is still one equality match that the client library parses.
        assert!(ldap3::parse_filter(&filter).is_ok());
    }

    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(dn_value("alice"), "alice");
        assert_eq!(dn_value("a,ou=admins"), "a\\,ou\\=admins");
        assert_eq!(dn_value(" #x "), "\\ #x\\ ");
        assert_eq!(dn_value("#x"), "\\#x");
        assert_eq!(dn_value("a+b\"<>;\\"), "a\\+b\\\"\\<\\>\\;\\\\");
        assert_eq!(
            fill("uid={user},ou=people,dc=ex", &[("user", "x,dc=evil")], dn_value),
            "uid=x\\,dc\\=evil,ou=people,dc=ex"
        );
    }

    #[test]
    fn fill_replaces_every_known_placeholder() {
        let values = [("user", "bob"), ("dn", "uid=bob,dc=ex")];
        assert_eq!(
            fill("(|(member={dn})(memberUid={user}){x}{user", &values, filter_value),
            "(|(member=uid=bob,dc=ex)(memberUid=bob){x}{user"
        );
        assert_eq!(placeholders("(&(a={user})(b={dn}))"), ["user", "dn"]);
        assert_eq!(placeholders("{user"), Vec::<&str>::new());
    }

    #[test]
    fn first_rdn_values() {
        assert_eq!(
            first_rdn_value("cn=staff,ou=groups,dc=ex").as_deref(),
            Some("staff")
        );
        assert_eq!(
            first_rdn_value("CN=Sales\\, East,OU=Groups").as_deref(),
            Some("Sales, East")
        );
        assert_eq!(
            first_rdn_value("cn=J\\c3\\bcrgen,dc=ex").as_deref(),
            Some("Jürgen")
        );
        assert_eq!(first_rdn_value("staff").as_deref(), Some("staff"));
        assert_eq!(first_rdn_value("cn=#04024869"), None);
        assert_eq!(first_rdn_value("cn=,dc=ex"), None);
        assert_eq!(first_rdn_value(""), None);
        assert_eq!(first_rdn_value("cn=a\\"), Some("a".into()));
    }

    proptest::proptest! {
        #[test]
        fn escaped_filters_always_parse(user in "\\PC{1,40}") {
            let filter = fill("(uid={user})", &[("user", &user)], filter_value);
            proptest::prop_assert!(ldap3::parse_filter(&filter).is_ok(), "{}", filter);
        }

        #[test]
        fn first_rdn_value_never_panics(dn in "\\PC{0,60}") {
            let _ = first_rdn_value(&dn);
        }
    }
}
