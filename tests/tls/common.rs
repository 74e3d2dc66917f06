//! Helpers: run the binary and openssl, make a small PKI with openssl.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `gatehouse ARGS` with extra environment variables.
pub fn gatehouse(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the gatehouse binary runs")
}

/// Whether openssl can be used. Under CI=true a missing openssl fails the test; elsewhere
/// the test is skipped with a loud message.
pub fn have_openssl(test: &str) -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: openssl is required under CI=true (apt-get install openssl)");
        }
        eprintln!("SKIPPED {test}: openssl not found; install it to run this test");
    }
    found
}

/// Runs openssl in `dir`; panics with its stderr when it fails.
pub fn openssl(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Text of stdout and stderr together.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An OpenSSL-made root CA, intermediate and leaf (`leaf.example.test`), each with its key,
/// in `dir`: root.crt/key, inter.crt/key, leaf.crt/key.
pub fn openssl_pki(dir: &Path) -> PathBuf {
    let ext = dir.join("ext.cnf");
    std::fs::write(
        &ext,
        "[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=keyCertSign,cRLSign\n\
         [leaf]\nbasicConstraints=CA:FALSE\nsubjectAltName=DNS:leaf.example.test\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext file");
    for name in ["root", "inter", "leaf"] {
        openssl(
            dir,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &format!("{name}.key"),
            ],
            &[],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "root.key",
            "-subj",
            "/CN=OpenSSL Test Root",
            "-days",
            "2",
            "-out",
            "root.crt",
        ],
        &[],
    );
    let sign = |name: &str, subject: &str, issuer: &str, section: &str| {
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                subject,
                "-out",
                &format!("{name}.csr"),
            ],
            &[],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{issuer}.crt"),
                "-CAkey",
                &format!("{issuer}.key"),
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "ext.cnf",
                "-extensions",
                section,
                "-out",
                &format!("{name}.crt"),
            ],
            &[],
        );
    };
    sign("inter", "/CN=OpenSSL Test Intermediate", "root", "ca");
    sign("leaf", "/CN=leaf.example.test", "inter", "leaf");
    dir.to_path_buf()
}

/// The subjects of a PEM file's certificates, in order, as openssl reads them.
pub fn subjects(dir: &Path, pem: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(pem).expect("read PEM");
    text.split_inclusive("-----END CERTIFICATE-----\n")
        .filter(|block| block.contains("BEGIN CERTIFICATE"))
        .map(|block| {
            let file = dir.join("one.pem");
            std::fs::write(&file, block).expect("write one cert");
            let out = openssl(
                dir,
                &[
                    "x509", "-in", "one.pem", "-noout", "-subject", "-nameopt", "RFC2253",
                ],
                &[],
            );
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .trim_start_matches("subject=")
                .to_string()
        })
        .collect()
}
