//! Users from LDAP: a real slapd started by the test on a loopback port (mdb backend, the
//! memberof overlay), with users and groups loaded by the test; the broker binds as a
//! service account, searches the user, binds as the user and reads groups both ways
//! (`memberOf` and a `memberUid` group search); then the same over TLS, `ldaps://` and
//! StartTLS, verified against the test's CA. Needs slapd and ldap-utils.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use gatehouse_control::message::{Reply, ResourceInfo};

use super::common::{free_port, login, outcome, wait_for, Farm, Proc, TestCa};

const SUFFIX: &str = "dc=example,dc=org";

/// A private slapd, killed on drop.
struct Slapd {
    proc: Proc,
    url: String,
    /// Where it also speaks TLS from the first byte (started with a certificate).
    ldaps_url: Option<String>,
}

/// Whether the OpenLDAP tools are here. Under CI=true a missing one fails the test;
/// elsewhere the test is skipped loudly.
fn have_openldap(test: &str) -> bool {
    let missing = ["slapd", "slapadd", "slappasswd", "ldapadd"]
        .into_iter()
        .find(|t| which(t).is_none());
    let Some(tool) = missing else { return true };
    let why = format!("{tool} not installed (apt-get install slapd ldap-utils)");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: prerequisite missing under CI=true: {why}");
    }
    let bar = "#".repeat(70);
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n{bar}\n## SKIPPED {test}: {why}\n{bar}\n"
    );
    false
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(tool)).find(|p| p.is_file())
}

fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> String {
    run_with(tool, args, stdin, &[])
}

fn run_with(tool: &str, args: &[&str], stdin: Option<&str>, env: &[(&str, &Path)]) -> String {
    let mut child = Command::new(which(tool).unwrap())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn ssha(password: &str) -> String {
    run("slappasswd", &["-s", password], None)
}

/// Starts slapd in `dir` with people (service account `svc`, carol, dave) loaded offline,
/// then groups added online so the memberof overlay fills `memberOf`: carol is in the
/// groupOfNames `staff`, dave in the posixGroup `finance` (memberUid). With `tls`, slapd
/// gets a certificate for 127.0.0.1 signed by that CA, answers StartTLS on its ldap:// port,
/// listens on an ldaps:// port too, and refuses simple binds that are not encrypted.
fn start_slapd(dir: &Path, tls: Option<&TestCa>) -> Slapd {
    let db = dir.join("slapd-db");
    std::fs::create_dir_all(&db).unwrap();
    let conf = dir.join("slapd.conf");
    let tls_conf = match tls {
        Some(ca) => {
            let (cert, key) = ca.leaf("127.0.0.1");
            format!(
                "TLSCertificateFile {}\nTLSCertificateKeyFile {}\nTLSCACertificateFile {}\n\
                 security simple_bind=128\n",
                cert.display(),
                key.display(),
                ca.ca_file.display()
            )
        }
        None => String::new(),
    };
    std::fs::write(
        &conf,
        format!(
            "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\ninclude /etc/ldap/schema/nis.schema\n\
             modulepath /usr/lib/ldap\nmoduleload back_mdb\nmoduleload memberof\n\
             pidfile {}\n{tls_conf}\ndatabase mdb\nmaxsize 10485760\nsuffix \"{SUFFIX}\"\n\
             rootdn \"cn=admin,{SUFFIX}\"\nrootpw admin-pw\ndirectory {}\noverlay memberof\n",
            dir.join("slapd.pid").display(),
            db.display()
        ),
    )
    .unwrap();
    let person = |uid: &str, pw: &str| {
        format!(
            "dn: uid={uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {}\n\n",
            ssha(pw)
        )
    };
    let people = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
         dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n\
         dn: cn=svc,{SUFFIX}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: svc\nuserPassword: {}\n\n{}{}",
        ssha("svc-pw"),
        person("carol", "carol-pw"),
        person("dave", "dave-pw"),
    );
    let ldif = dir.join("people.ldif");
    std::fs::write(&ldif, people).unwrap();
    run(
        "slapadd",
        &["-f", conf.to_str().unwrap(), "-l", ldif.to_str().unwrap()],
        None,
    );
    let port = free_port();
    let url = format!("ldap://127.0.0.1:{port}");
    let ldaps_url = tls.map(|_| format!("ldaps://127.0.0.1:{}", free_port()));
    let listen = match &ldaps_url {
        Some(ldaps) => format!("{url}/ {ldaps}/"),
        None => format!("{url}/"),
    };
    let log = dir.join("slapd.log");
    let child = Command::new(which("slapd").unwrap())
        .args(["-f", conf.to_str().unwrap(), "-h", &listen, "-d", "256"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let proc = Proc { child, log };
    assert!(
        wait_for(Duration::from_secs(10), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "slapd did not listen: {}",
        proc.log_text()
    );
    let groups = format!(
        "dn: cn=staff,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: staff\nmember: uid=carol,ou=people,{SUFFIX}\n\n\
         dn: cn=finance,ou=groups,{SUFFIX}\nobjectClass: posixGroup\ncn: finance\ngidNumber: 5001\nmemberUid: dave\n"
    );
    let admin = format!("cn=admin,{SUFFIX}");
    let mut args = vec!["-x", "-H", &url, "-D", &admin, "-w", "admin-pw"];
    let mut env = Vec::new();
    if let Some(ca) = tls {
        // This slapd takes binds only inside TLS.
        args.push("-ZZ");
        env.push(("LDAPTLS_CACERT", ca.ca_file.as_path()));
    }
    run_with("ldapadd", &args, Some(&groups), &env);
    Slapd { proc, url, ldaps_url }
}

/// The common farm plus a `finance` group and resource, and an `[ldap]` section for `url`
/// ending with `extra` (more keys of the section).
fn ldap_farm(farm: &Farm, url: &str, extra: &str) {
    let password_file = farm.path("ldap-svc-password");
    std::fs::write(&password_file, "svc-pw\n").unwrap();
    let mut text = std::fs::read_to_string(farm.path("farm.toml")).unwrap();
    text.push_str(&format!(
        "\n[[group]]\nname = \"finance\"\n\n\
         [[resource]]\nid = \"ledger-app\"\nname = \"Ledger\"\nkind = \"application\"\npool = \"pool-a\"\ngroups = [\"finance\"]\n\n\
         [ldap]\nurl = \"{url}\"\ntimeout = \"2s\"\nbind_dn = \"cn=svc,{SUFFIX}\"\nbind_password_file = \"{}\"\n\
         base_dn = \"ou=people,{SUFFIX}\"\nuser_filter = \"(&(objectClass=inetOrgPerson)(uid={{user}}))\"\n\
         name_attribute = \"uid\"\ngroup_attribute = \"memberOf\"\n\
         group_base_dn = \"ou=groups,{SUFFIX}\"\ngroup_filter = \"(&(objectClass=posixGroup)(memberUid={{user}}))\"\n{extra}",
        password_file.display()
    ));
    std::fs::write(farm.path("farm.toml"), text).unwrap();
}

fn resources(reply: &Reply) -> Vec<String> {
    match reply {
        Reply::LoginOk(ok) => ok.resources.iter().map(|r: &ResourceInfo| r.id.clone()).collect(),
        other => panic!("not logged in: {other:?}"),
    }
}

#[test]
fn ldap_users_log_in_with_their_groups_and_a_dead_directory_is_a_clear_refusal() {
    if !have_openldap("ldap_users_log_in_with_their_groups_and_a_dead_directory_is_a_clear_refusal") {
        return;
    }
    let farm = Farm::new();
    let slapd = start_slapd(farm.dir.path(), None);
    ldap_farm(&farm, &slapd.url, "");
    let broker = farm.start_broker("broker-1");
    let client = farm.client(&[broker.gw]);
    let call = |user: &str, password: &str| client.call(login(user, password)).unwrap().reply;

    // Groups from memberOf (staff) and from the memberUid group search (finance) map to the
    // farm's groups like a local user's do.
    assert_eq!(resources(&call("carol", "carol-pw")), ["desktop-a"]);
    assert_eq!(resources(&call("dave", "dave-pw")), ["ledger-app"]);
    // The local user is checked locally, next to the directory.
    assert_eq!(resources(&call("alice", "right")), ["desktop-a"]);

    assert_eq!(outcome(&call("carol", "wrong")), "wrong_password");
    assert_eq!(outcome(&call("nobody", "x")), "unknown_user");
    // Filter injection: escaped (RFC 4515), so these are literal names nobody has.
    assert_eq!(outcome(&call("*", "carol-pw")), "unknown_user");
    assert_eq!(outcome(&call("*)(uid=*", "carol-pw")), "unknown_user");
    assert_eq!(outcome(&call("carol)(|(uid=*", "carol-pw")), "unknown_user");
    let log = slapd.proc.log_text().to_lowercase();
    let searches: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("srch") && l.contains("filter="))
        .collect();
    assert!(
        searches.iter().any(|l| l.contains("\\2a")) && !searches.iter().any(|l| l.contains("(uid=*)")),
        "slapd did not see escaped values: {searches:#?}"
    );

    // The directory goes away: its users get a clear refusal, local users carry on.
    drop(slapd);
    let dead = call("carol", "carol-pw");
    assert_eq!(outcome(&dead), "directory_unavailable");
    let Reply::Refused(refused) = &dead else {
        unreachable!()
    };
    let detail = refused.detail.clone().unwrap_or_default();
    assert!(
        detail.contains("ldap://127.0.0.1:") && detail.contains("unreachable"),
        "{detail}"
    );
    assert_eq!(resources(&call("alice", "right")), ["desktop-a"]);

    // Throttling and the audit log treat directory users like local ones: an unreachable
    // directory is not a failed guess, and every attempt is recorded.
    let audit = std::fs::read_to_string(farm.path("broker-1-audit.log")).unwrap();
    let logins: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["action"] == "login")
        .collect();
    assert_eq!(logins.len(), 10, "{audit}");
    let results: Vec<String> = logins
        .iter()
        .map(|v| match &v["result"] {
            serde_json::Value::String(s) => s.clone(),
            other => other["refused"].as_str().unwrap_or("?").to_string(),
        })
        .collect();
    assert_eq!(
        results,
        [
            "ok",
            "ok",
            "ok",
            "wrong_password",
            "unknown_user",
            "unknown_user",
            "unknown_user",
            "unknown_user",
            "directory_unavailable",
            "ok"
        ]
    );
    assert_eq!(logins[0]["user"], "carol");
    assert!(!audit.contains("carol-pw"), "credentials in the audit log");
    let log = broker.proc.log_text();
    assert!(log.contains("directory unavailable"), "{log}");
    assert!(
        log.contains("LDAP directory in clear text"),
        "a clear-text directory is logged as such: {log}"
    );
}

#[test]
fn ldaps_and_starttls_verify_the_directory_against_its_ca() {
    if !have_openldap("ldaps_and_starttls_verify_the_directory_against_its_ca") {
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new(pki.path(), "LDAP Test CA");
    let other = TestCa::new(pki.path(), "Some Other CA");
    let first = Farm::new();
    let slapd = start_slapd(first.dir.path(), Some(&ca));
    let ldaps = slapd.ldaps_url.clone().unwrap();
    let ca_file = format!("ca_file = \"{}\"\n", ca.ca_file.display());
    let cases = [
        (&first, ldaps.clone(), ca_file.clone()),
        (
            &Farm::new(),
            slapd.url.clone(),
            format!("starttls = true\n{ca_file}"),
        ),
    ];
    for (farm, url, extra) in cases {
        ldap_farm(farm, &url, &extra);
        let broker = farm.start_broker("broker-1");
        let client = farm.client(&[broker.gw]);
        let call = |user: &str, password: &str| client.call(login(user, password)).unwrap().reply;
        assert_eq!(
            resources(&call("carol", "carol-pw")),
            ["desktop-a"],
            "{url} {extra}"
        );
        assert_eq!(
            resources(&call("dave", "dave-pw")),
            ["ledger-app"],
            "{url} {extra}"
        );
        assert_eq!(
            outcome(&call("carol", "wrong")),
            "wrong_password",
            "{url} {extra}"
        );
        let log = broker.proc.log_text();
        assert!(!log.contains("clear text"), "{log}");
    }
    let log = slapd.proc.log_text();
    assert!(
        log.contains("EXT oid=1.3.6.1.4.1.1466.20037"),
        "slapd saw StartTLS requests: {log}"
    );

    // The same directory in clear: slapd refuses the bind (confidentiality required), so
    // the cases above did encrypt.
    let clear = Farm::new();
    ldap_farm(&clear, &slapd.url, "");
    let broker = clear.start_broker("broker-1");
    let client = clear.client(&[broker.gw]);
    let refused = client.call(login("carol", "carol-pw")).unwrap().reply;
    assert_eq!(outcome(&refused), "directory_unavailable");

    // A directory whose certificate the configured CA did not sign: every directory user
    // is refused with the reason; nothing is sent in clear instead.
    let wrong = Farm::new();
    ldap_farm(
        &wrong,
        &ldaps,
        &format!("ca_file = \"{}\"\n", other.ca_file.display()),
    );
    let broker = wrong.start_broker("broker-1");
    let client = wrong.client(&[broker.gw]);
    let refused = client.call(login("carol", "carol-pw")).unwrap().reply;
    assert_eq!(outcome(&refused), "directory_unavailable");
    let Reply::Refused(refused) = &refused else {
        unreachable!()
    };
    let detail = refused.detail.clone().unwrap_or_default();
    println!("refusal with the wrong CA: {detail}");
    assert!(
        detail.contains("TLS with the directory failed") && detail.contains("certificate"),
        "{detail}"
    );
}
