//! Farm file tests: the model, filtering, and errors that name the key.

use super::*;

/// Two sites; site-a has three hosts in one pool, site-b one host.
pub(crate) const FARM: &str = r#"
[[site]]
name = "site-a"
default_pool = "pool-a"

[[site]]
name = "site-b"

[[gateway]]
name = "gw-a"
site = "site-a"

[[host]]
name = "rdsh-1"
address = "10.0.0.1"
site = "site-a"
session_limit = 10

[[host]]
name = "rdsh-2"
address = "10.0.0.2"
site = "site-a"
session_limit = 10

[[host]]
name = "rdsh-3"
address = "10.0.0.3"
port = 3390
site = "site-a"
session_limit = 2

[[host]]
name = "rdsh-b1"
address = "10.1.0.1"
site = "site-b"
session_limit = 10

[[pool]]
name = "pool-a"
site = "site-a"
hosts = ["rdsh-1", "rdsh-2", "rdsh-3"]

[[pool]]
name = "pool-b"
site = "site-b"
hosts = ["rdsh-b1"]

[[group]]
name = "staff"

[[group]]
name = "finance"
members = ["carol"]

[[resource]]
id = "desktop-a"
name = "Office desktop"
kind = "desktop"
pool = "pool-a"
groups = ["staff"]

[[resource]]
id = "ledger-app"
name = "Ledger"
kind = "application"
pool = "pool-a"
groups = ["finance"]

[[resource]]
id = "desktop-b"
name = "Branch desktop"
kind = "desktop"
pool = "pool-b"
groups = ["staff"]

[balancing]
host_down_after = "10s"

[login]
user_max_failures = 3
address_max_failures = 10
lockout = "5m"
"#;

fn err(text: &str) -> String {
    Farm::parse(text).expect_err("farm accepted").to_string()
}

#[test]
fn loads_the_model() {
    let farm = Farm::parse(FARM).unwrap();
    assert_eq!(farm.sites().len(), 2);
    assert_eq!(farm.site("site-a").unwrap().default_pool, Some(PoolId(0)));
    assert_eq!(farm.gateway("gw-a").unwrap().site, "site-a");
    let h3 = farm.host(farm.host_id("rdsh-3").unwrap());
    assert_eq!((h3.port, h3.session_limit, h3.weight), (3390, 2, 1));
    assert_eq!(farm.host(farm.host_id("rdsh-1").unwrap()).port, 3389);
    let desk = farm.resource("desktop-b").unwrap();
    assert_eq!((desk.site.as_str(), desk.kind), ("site-b", ResourceKind::Desktop));
    assert_eq!(farm.policy().login.user_max_failures, 3);
    assert_eq!(farm.policy().login.lockout, Duration::from_secs(300));
    assert_eq!(farm.policy().launch, LaunchPolicy::default());
}

#[test]
fn resources_are_filtered_by_site_and_group() {
    let farm = Farm::parse(FARM).unwrap();
    let staff = vec!["staff".to_string()];
    let ids = |list: Vec<ResourceInfo>| list.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(farm.resources_for("site-a", &staff)), ["desktop-a"]);
    assert_eq!(ids(farm.resources_for("site-b", &staff)), ["desktop-b"]);
    let carol = farm.effective_groups("carol", &staff);
    assert_eq!(carol, ["staff", "finance"]);
    assert_eq!(
        ids(farm.resources_for("site-a", &carol)),
        ["desktop-a", "ledger-app"]
    );
    assert!(farm.resources_for("site-a", &[]).is_empty());
}

#[test]
fn unknown_key_is_named() {
    let e = err("[[site]]\nname = \"a\"\ncolour = \"red\"\n");
    assert!(e.contains("colour"), "{e}");
    let e = err("[balancing]\ncpu_wieght = 2.0\n");
    assert!(e.contains("cpu_wieght"), "{e}");
}

#[test]
fn missing_and_mistyped_keys_are_named() {
    let e = err("[[site]]\nname = \"a\"\n[[host]]\nname = \"h\"\naddress = \"x\"\nsite = \"a\"\n");
    assert!(e.contains("session_limit"), "{e}");
    let e = err("[[site]]\nname = \"a\"\n[[host]]\nname = \"h\"\naddress = \"x\"\nsite = \"a\"\nsession_limit = \"ten\"\n");
    assert!(e.contains("session_limit"), "{e}");
    let e = err("[login]\nlockout = \"5 minutes\"\n");
    assert!(e.contains("lockout") || e.contains("invalid duration"), "{e}");
}

#[test]
fn cross_reference_errors_name_the_key() {
    let cases = [
        (
            FARM.replace("pool = \"pool-b\"", "pool = \"pool-x\""),
            "resource[2].pool",
        ),
        (
            FARM.replace("groups = [\"finance\"]", "groups = [\"fnance\"]"),
            "resource[1].groups[0]",
        ),
        (
            FARM.replace("hosts = [\"rdsh-b1\"]", "hosts = [\"rdsh-1\"]"),
            "pool[1].hosts[0]",
        ),
        (
            FARM.replace("default_pool = \"pool-a\"", "default_pool = \"pool-b\""),
            "site[0].default_pool",
        ),
        (
            FARM.replace("name = \"rdsh-2\"", "name = \"rdsh-1\""),
            "host[1].name",
        ),
        (
            FARM.replace("session_limit = 2", "session_limit = 0"),
            "host[2].session_limit",
        ),
        (
            FARM.replace(
                "site = \"site-b\"\nsession_limit",
                "site = \"site-c\"\nsession_limit",
            ),
            "host[3].site",
        ),
        (
            FARM.replace("address = \"10.0.0.2\"", "address = \"10.0 .0.2\""),
            "host[1].address",
        ),
        (
            FARM.replace("host_down_after = \"10s\"", "host_down_after = \"0s\""),
            "balancing.host_down_after",
        ),
        (
            FARM.replace("user_max_failures = 3", "user_max_failures = 0"),
            "login.user_max_failures",
        ),
    ];
    for (text, key) in cases {
        let e = err(&text);
        assert!(e.contains(key), "expected {key} in: {e}");
    }
}

#[test]
fn load_reads_a_file_and_reports_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("farm.toml");
    std::fs::write(&path, FARM).unwrap();
    assert_eq!(Farm::load(&path).unwrap().hosts().len(), 4);
    let missing = Farm::load(&dir.path().join("nope.toml")).unwrap_err();
    assert!(matches!(missing, FarmError::Read { .. }), "{missing}");
}

#[test]
fn ldap_section_is_part_of_the_farm() {
    let farm = Farm::parse(&format!(
        "{FARM}\n[ldap]\nurl = \"ldap://127.0.0.1:3890\"\nbase_dn = \"ou=people,dc=ex\"\nuser_filter = \"(uid={{user}})\"\n"
    ))
    .unwrap();
    let ldap = farm.ldap().unwrap();
    assert_eq!(ldap.url, "ldap://127.0.0.1:3890");
    assert!(Farm::parse(FARM).unwrap().ldap().is_none());
    let e = Farm::parse(&format!(
        "{FARM}\n[ldap]\nurl = \"ldap://h\"\nbase_dn = \"x\"\nuser_filter = \"(uid=x)\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("ldap.user_filter"), "{e}");
}

#[test]
fn load_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("farm.toml");
    let shown = path.display().to_string();
    let line_of = |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;

    let text = FARM.replace("session_limit = 2", "session_limit = 0");
    std::fs::write(&path, &text).unwrap();
    let e = Farm::load(&path).unwrap_err().to_string();
    let line = line_of(&text, "session_limit = 0");
    assert!(
        e.starts_with(&format!("farm file {shown}:{line}:1: host[2].session_limit: ")),
        "{e}"
    );

    let text = FARM.replace("kind = \"application\"", "kind = \"app\"");
    std::fs::write(&path, &text).unwrap();
    let e = Farm::load(&path).unwrap_err().to_string();
    let line = line_of(&text, "kind = \"app\"");
    assert!(e.starts_with(&format!("farm file {shown}:{line}:")), "{e}");

    let text = format!("{FARM}\n[ldap]\nurl = \"ldap://h\"\nbase_dn = \"dc=x\"\nbind_dn = \"cn=s\"\nbind_password_file = \"{}\"\n", dir.path().join("missing").display());
    std::fs::write(&path, &text).unwrap();
    let e = Farm::load(&path).unwrap_err().to_string();
    let line = line_of(&text, "bind_password_file");
    assert!(
        e.starts_with(&format!("farm file {shown}:{line}:1: ldap.bind_password_file: ")),
        "{e}"
    );

    // A TLS directory's CA file: missing, then without a certificate.
    let ca = dir.path().join("ldap-ca.pem");
    let text = format!(
        "{FARM}\n[ldap]\nurl = \"ldaps://dc1.example\"\nca_file = \"{}\"\nbase_dn = \"dc=x\"\n",
        ca.display()
    );
    std::fs::write(&path, &text).unwrap();
    let line = line_of(&text, "ca_file");
    let e = Farm::load(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "farm file {shown}:{line}:1: ldap.ca_file: {}: ",
            ca.display()
        )),
        "{e}"
    );
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let e = Farm::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("ldap.ca_file") && e.contains("no PEM certificate"),
        "{e}"
    );
}
