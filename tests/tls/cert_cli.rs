//! `gatehouse cert ...` against OpenSSL: CSRs that `openssl req -verify` accepts, PFX files
//! from `openssl pkcs12 -export`, shuffled PEM bundles, and `cert show` on an expired cert.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use crate::common::{gatehouse, have_openssl, openssl, openssl_pki, subjects, text};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).expect("file exists").permissions().mode() & 0o777
}

#[test]
fn csr_verifies_with_openssl_and_carries_the_names() {
    if !have_openssl("csr_verifies_with_openssl_and_carries_the_names") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (csr, key) = (dir.path().join("gw.csr"), dir.path().join("gw.key"));
    let out = gatehouse(
        &[
            "cert",
            "csr",
            "--cn",
            "gw.example.test",
            "--san",
            "gw.example.test",
            "--san",
            "alt.example.test",
            "--san",
            "192.0.2.7",
            "--out-csr",
            csr.to_str().expect("utf-8"),
            "--out-key",
            key.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(mode(&key), 0o600);
    let verify = openssl(dir.path(), &["req", "-in", "gw.csr", "-verify", "-noout"], &[]);
    assert!(text(&verify).contains("verify OK"), "{}", text(&verify));
    let shown = text(&openssl(
        dir.path(),
        &["req", "-in", "gw.csr", "-noout", "-text"],
        &[],
    ));
    for want in [
        "CN = gw.example.test",
        "DNS:gw.example.test",
        "DNS:alt.example.test",
        "IP Address:192.0.2.7",
    ] {
        assert!(shown.contains(want), "missing {want}: {shown}");
    }
    // The key is the CSR's.
    let csr_pub = openssl(dir.path(), &["req", "-in", "gw.csr", "-noout", "-pubkey"], &[]).stdout;
    let key_pub = openssl(dir.path(), &["pkey", "-in", "gw.key", "-pubout"], &[]).stdout;
    assert_eq!(csr_pub, key_pub);
}

#[test]
fn pfx_from_openssl_imports_leaf_first() {
    if !have_openssl("pfx_from_openssl_imports_leaf_first") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    openssl_pki(dir.path());
    let chain = [
        std::fs::read_to_string(dir.path().join("root.crt")).expect("root"),
        std::fs::read_to_string(dir.path().join("inter.crt")).expect("inter"),
    ]
    .concat();
    std::fs::write(dir.path().join("cas.pem"), chain).expect("write cas");
    let pw = [("PFX_PASSWORD", "s3cret pass")];
    openssl(
        dir.path(),
        &[
            "pkcs12",
            "-export",
            "-inkey",
            "leaf.key",
            "-in",
            "leaf.crt",
            "-certfile",
            "cas.pem",
            "-passout",
            "env:PFX_PASSWORD",
            "-out",
            "leaf.pfx",
        ],
        &pw,
    );
    let (cert, key) = (dir.path().join("out.crt"), dir.path().join("out.key"));
    let args = |pfx: &str| {
        vec![
            "cert".to_string(),
            "import".into(),
            "--pfx".into(),
            dir.path().join(pfx).display().to_string(),
            "--password-env".into(),
            "PFX_PASSWORD".into(),
            "--out-cert".into(),
            cert.display().to_string(),
            "--out-key".into(),
            key.display().to_string(),
        ]
    };
    let owned = args("leaf.pfx");
    let argv: Vec<&str> = owned.iter().map(String::as_str).collect();
    let out = gatehouse(&argv, &pw);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        subjects(dir.path(), &cert),
        vec![
            "CN=leaf.example.test",
            "CN=OpenSSL Test Intermediate",
            "CN=OpenSSL Test Root"
        ]
    );
    assert_eq!(mode(&key), 0o600);
    let verify = openssl(
        dir.path(),
        &[
            "verify",
            "-CAfile",
            "root.crt",
            "-untrusted",
            "inter.crt",
            "out.crt",
        ],
        &[],
    );
    assert!(text(&verify).contains("out.crt: OK"), "{}", text(&verify));
    let cert_pub = openssl(dir.path(), &["x509", "-in", "out.crt", "-noout", "-pubkey"], &[]).stdout;
    let key_pub = openssl(dir.path(), &["pkey", "-in", "out.key", "-pubout"], &[]).stdout;
    assert_eq!(cert_pub, key_pub);

    // A wrong password is a clear error, and nothing is written.
    std::fs::remove_file(&cert).expect("rm");
    std::fs::remove_file(&key).expect("rm");
    let out = gatehouse(&argv, &[("PFX_PASSWORD", "wrong")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("wrong password"), "{}", text(&out));
    assert!(!cert.exists() && !key.exists());

    // The legacy encryption (3DES/RC2) of older Windows exports imports too.
    let legacy = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "pkcs12",
            "-export",
            "-legacy",
            "-inkey",
            "leaf.key",
            "-in",
            "leaf.crt",
            "-certfile",
            "cas.pem",
        ])
        .args(["-passout", "env:PFX_PASSWORD", "-out", "legacy.pfx"])
        .env("PFX_PASSWORD", "s3cret pass")
        .output()
        .expect("openssl runs");
    if legacy.status.success() {
        let owned = args("legacy.pfx");
        let argv: Vec<&str> = owned.iter().map(String::as_str).collect();
        let out = gatehouse(&argv, &pw);
        assert!(out.status.success(), "legacy PFX: {}", text(&out));
    } else {
        eprintln!(
            "note: this openssl cannot write -legacy PFX (no legacy provider); that case is not tested"
        );
    }
}

#[test]
fn shuffled_pem_bundle_imports_leaf_first_and_show_reports_the_order() {
    if !have_openssl("shuffled_pem_bundle_imports_leaf_first_and_show_reports_the_order") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    openssl_pki(dir.path());
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect("read");
    // Intermediate, root, key, leaf: nothing where it belongs.
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(
        &bundle,
        [
            read("inter.crt"),
            read("root.crt"),
            read("leaf.key"),
            read("leaf.crt"),
        ]
        .concat(),
    )
    .expect("write bundle");
    let (cert, key) = (dir.path().join("out.crt"), dir.path().join("out.key"));
    let out = gatehouse(
        &[
            "cert",
            "import",
            "--pem",
            bundle.to_str().expect("utf-8"),
            "--out-cert",
            cert.to_str().expect("utf-8"),
            "--out-key",
            key.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        subjects(dir.path(), &cert),
        vec![
            "CN=leaf.example.test",
            "CN=OpenSSL Test Intermediate",
            "CN=OpenSSL Test Root"
        ]
    );
    let verify = openssl(
        dir.path(),
        &[
            "verify",
            "-CAfile",
            "root.crt",
            "-untrusted",
            "inter.crt",
            "out.crt",
        ],
        &[],
    );
    assert!(text(&verify).contains("OK"));

    let shown = gatehouse(&["cert", "show", bundle.to_str().expect("utf-8")], &[]);
    let shown_text = text(&shown);
    assert!(shown.status.success(), "{shown_text}");
    assert!(
        shown_text
            .contains("chain order problem: chain order: the leaf (CN=leaf.example.test) is certificate #3"),
        "{shown_text}"
    );
    assert!(
        shown_text.contains("SANs:     DNS:leaf.example.test"),
        "{shown_text}"
    );
    let shown = gatehouse(&["cert", "show", cert.to_str().expect("utf-8")], &[]);
    assert!(text(&shown).contains("chain order: ok"), "{}", text(&shown));

    // A key that belongs to none of the certificates is refused.
    std::fs::write(
        &bundle,
        [read("inter.crt"), read("root.key"), read("leaf.crt")].concat(),
    )
    .expect("write");
    let out = gatehouse(
        &[
            "cert",
            "import",
            "--pem",
            bundle.to_str().expect("utf-8"),
            "--out-cert",
            "/dev/null",
            "--out-key",
            "/dev/null",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("does not belong"), "{}", text(&out));
}

#[test]
fn show_says_an_expired_certificate_is_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut params = rcgen::CertificateParams::new(vec!["old.example.test".to_string()]).expect("names");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "old.example.test");
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(30 * 86_400)).into();
    params.not_after = (now - Duration::from_secs(86_400)).into();
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let file = dir.path().join("old.pem");
    std::fs::write(&file, cert.pem()).expect("write");
    let out = gatehouse(&["cert", "show", file.to_str().expect("utf-8")], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("(EXPIRED)"), "{}", text(&out));
    assert!(
        text(&out).contains("subject:  CN=old.example.test"),
        "{}",
        text(&out)
    );
    // And import refuses it unless forced.
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&file, [cert.pem(), key.serialize_pem()].concat()).expect("write");
    let argv = [
        "cert",
        "import",
        "--pem",
        file.to_str().expect("utf-8"),
        "--out-cert",
        c.to_str().expect("utf-8"),
        "--out-key",
        k.to_str().expect("utf-8"),
    ];
    let out = gatehouse(&argv, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("error: expired"), "{}", text(&out));
    let mut forced = argv.to_vec();
    forced.push("--force");
    assert!(gatehouse(&forced, &[]).status.success());
}

#[test]
fn self_signed_writes_a_private_key_and_openssl_reads_the_names() {
    if !have_openssl("self_signed_writes_a_private_key_and_openssl_reads_the_names") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("n.crt"), dir.path().join("n.key"));
    let out = gatehouse(
        &[
            "cert",
            "self-signed",
            "--name",
            "gw1.example.test",
            "--name",
            "127.0.0.1",
            "--out-cert",
            cert.to_str().expect("utf-8"),
            "--out-key",
            key.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(mode(&key), 0o600);
    let shown = text(&openssl(
        dir.path(),
        &["x509", "-in", "n.crt", "-noout", "-text"],
        &[],
    ));
    assert!(
        shown.contains("DNS:gw1.example.test") && shown.contains("IP Address:127.0.0.1"),
        "{shown}"
    );
    let verify = openssl(dir.path(), &["verify", "-CAfile", "n.crt", "n.crt"], &[]);
    assert!(text(&verify).contains("OK"));
}

#[test]
fn ticket_keys_command_creates_a_private_key_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tickets.keys");
    let out = gatehouse(
        &["cert", "ticket-keys", "--file", file.to_str().expect("utf-8")],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(mode(&file), 0o600);
    assert!(text(&out).starts_with("key active from "), "{}", text(&out));
    assert!(std::fs::read_to_string(&file)
        .expect("read")
        .starts_with("gatehouse-ticket-keys v1\n"));
}

#[test]
fn generating_commands_refuse_bad_names_zero_days_and_existing_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("n.crt"), dir.path().join("n.key"));
    let (c, k) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
    let self_signed = |extra: &[&str]| {
        let mut argv = vec!["cert", "self-signed", "--out-cert", c, "--out-key", k];
        argv.extend_from_slice(extra);
        gatehouse(&argv, &[])
    };
    let refused = [
        (
            &["--name", "bad name!"][..],
            2,
            "error: --name \"bad name!\" is not a DNS name or IP address",
        ),
        (&["--name=-gw.test"][..], 2, "is not a DNS name"),
        (
            &["--name", "gw.test", "--days", "0"][..],
            2,
            "0 is not in 1..=36500",
        ),
    ];
    for (extra, code, says) in refused {
        let out = self_signed(extra);
        println!(
            "self-signed {extra:?}: {:?} {}",
            out.status.code(),
            text(&out).trim()
        );
        assert_eq!(out.status.code(), Some(code), "{extra:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{extra:?}: {}", text(&out));
        assert!(!cert.exists() && !key.exists(), "{extra:?} wrote files");
    }
    let out = self_signed(&["--name", "*.gw.test", "--name", "::1"]);
    assert!(out.status.success(), "{}", text(&out));
    let first = std::fs::read(&cert).expect("written");
    // A second run does not replace a certificate in use unless told to.
    let out = self_signed(&["--name", "other.test"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("exists (use --force to replace it)"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(&cert).expect("kept"), first);
    assert!(self_signed(&["--name", "other.test", "--force"]).status.success());
    assert_ne!(std::fs::read(&cert).expect("replaced"), first);

    let csr = dir.path().join("r.csr");
    let csr_argv = |cn: &'static str| {
        vec![
            "cert".to_string(),
            "csr".into(),
            "--cn".into(),
            cn.into(),
            "--out-csr".into(),
            csr.display().to_string(),
            "--out-key".into(),
            dir.path().join("r.key").display().to_string(),
        ]
    };
    let run = |argv: Vec<String>| gatehouse(&argv.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let out = run(csr_argv(""));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("error: --cn \"\" is not a DNS name"),
        "{}",
        text(&out)
    );
    assert!(run(csr_argv("gw.example.test")).status.success());
    let out = run(csr_argv("gw.example.test"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("exists (use --force"), "{}", text(&out));
}
