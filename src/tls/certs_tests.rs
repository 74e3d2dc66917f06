//! Tests of certificate loading, ordering, validation and generation, on rcgen-made chains.

use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::tls::test_pki::Pki;

const DAY: Duration = Duration::from_secs(86_400);

fn pem_file(dir: &Path, name: &str, blocks: &[String]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, blocks.concat()).expect("write test file");
    path
}

fn cert_pem(der: &CertificateDer<'_>) -> String {
    pem_block("CERTIFICATE", der)
}

fn subjects(chain: &[CertificateDer<'_>]) -> Vec<String> {
    chain
        .iter()
        .map(|c| CertInfo::parse(c, 0).expect("test cert parses").subject)
        .collect()
}

#[test]
fn all_in_one_pem_in_any_order_loads_leaf_first() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["gw.example.test"]);
    let bundle = pki.bundle(&leaf);
    let dir = tempfile::tempdir().expect("tempdir");
    // root, key, leaf, intermediate: nothing in its place.
    let path = pem_file(
        dir.path(),
        "all.pem",
        &[
            cert_pem(&bundle.chain[2]),
            bundle.key_pem(),
            cert_pem(&bundle.chain[0]),
            cert_pem(&bundle.chain[1]),
        ],
    );
    let loaded = load_pem_bundle(&path).expect("bundle loads");
    assert_eq!(
        subjects(&loaded.chain),
        vec!["CN=gw.example.test", "CN=Test Intermediate CA", "CN=Test Root CA"]
    );
    assert!(loaded.unrelated.is_empty());
    assert!(loaded.certified_key().is_ok());
    assert_eq!(
        loaded
            .problems(SystemTime::now(), &["gw.example.test".into()])
            .expect("parses"),
        vec![]
    );
}

#[test]
fn unrelated_certificates_are_set_aside_and_reported() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["a.test"]);
    let other = pki.root_signed_leaf(&["other.test"]);
    let chain = vec![
        other.cert.clone(),
        pki.intermediate.der().clone(),
        leaf.cert.clone(),
    ];
    let bundle = CertBundle::from_parts(chain, leaf.key.clone_key()).expect("loads");
    assert_eq!(bundle.chain.len(), 2);
    assert_eq!(bundle.unrelated, vec![other.cert]);
    let problems = bundle.problems(SystemTime::now(), &[]).expect("parses");
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, CertProblem::Unrelated { .. })),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, CertProblem::IncompleteChain { .. })),
        "{problems:?}"
    );
    assert!(!problems.iter().any(CertProblem::is_fatal));
}

#[test]
fn a_key_of_another_certificate_is_a_mismatch() {
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let b = pki.leaf(&["b.test"]);
    let err = CertBundle::from_parts(vec![a.cert], b.key).expect_err("mismatch");
    assert!(matches!(err, CertError::KeyMismatch), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = pem_file(dir.path(), "c.pem", &[cert_pem(&pki.leaf(&["c.test"]).cert)]);
    let key = pem_file(
        dir.path(),
        "k.pem",
        &[pki.bundle(&pki.leaf(&["d.test"])).key_pem()],
    );
    assert!(matches!(load_pem_pair(&cert, &key), Err(CertError::KeyMismatch)));
}

#[test]
fn file_errors_are_specific() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["a.test"]);
    let bundle = pki.bundle(&leaf);
    let dir = tempfile::tempdir().expect("tempdir");
    let no_key = pem_file(dir.path(), "nokey.pem", &[cert_pem(&leaf.cert)]);
    assert!(matches!(
        load_pem_bundle(&no_key),
        Err(CertError::NoPrivateKey { .. })
    ));
    let no_cert = pem_file(dir.path(), "nocert.pem", &[bundle.key_pem()]);
    let e = load_pem_bundle(&no_cert).unwrap_err();
    assert!(matches!(e, CertError::NoCertificate { .. }));
    assert!(
        e.to_string().ends_with(
            "no certificate found: it holds a private key only (the certificate must be in another file)"
        ),
        "{e}"
    );
    // A DER certificate and other bytes say what they seem to be.
    let der = dir.path().join("leaf.der");
    fs::write(&der, leaf.cert.as_ref()).expect("write");
    let e = read_pem_certs(&der).unwrap_err().to_string();
    assert!(
        e.contains("it is a DER certificate; convert it with `openssl x509 -inform der"),
        "{e}"
    );
    let blob = dir.path().join("blob.pfx");
    fs::write(&blob, [0x30, 0x82, 0x01, 0x00, 0x02, 0x01, 0x03]).expect("write");
    let e = read_pem_certs(&blob).unwrap_err().to_string();
    assert!(e.contains("it is binary (PKCS#12/PFX?"), "{e}");
    let text = pem_file(dir.path(), "text.pem", &["hello\n".to_string()]);
    let e = read_pem_certs(&text).unwrap_err().to_string();
    assert!(
        e.ends_with("no certificate found (no -----BEGIN CERTIFICATE----- block)"),
        "{e}"
    );
    let two_keys = pem_file(
        dir.path(),
        "two.pem",
        &[cert_pem(&leaf.cert), bundle.key_pem(), bundle.key_pem()],
    );
    assert!(matches!(
        load_pem_bundle(&two_keys),
        Err(CertError::SeveralPrivateKeys { .. })
    ));
    let encrypted = pem_file(
        dir.path(),
        "enc.pem",
        &["-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n".into()],
    );
    assert!(matches!(
        load_pem_bundle(&encrypted),
        Err(CertError::EncryptedKey { .. })
    ));
    let missing = dir.path().join("missing.pem");
    let err = load_pem_bundle(&missing).expect_err("missing file");
    assert!(err.to_string().contains("missing.pem"), "{err}");
}

#[test]
fn validity_and_names_are_checked() {
    let pki = Pki::new();
    let now = SystemTime::now();
    let expired = pki.leaf_between(&["old.test"], now - 10 * DAY, now - DAY);
    let problems = pki.bundle(&expired).problems(now, &[]).expect("parses");
    assert!(matches!(problems[0], CertProblem::Expired { .. }), "{problems:?}");
    assert!(problems[0].is_fatal());
    assert!(
        problems[0].to_string().starts_with("expired: CN=old.test"),
        "{}",
        problems[0]
    );

    let future = pki.leaf_between(&["new.test"], now + DAY, now + 10 * DAY);
    let problems = pki.bundle(&future).problems(now, &[]).expect("parses");
    assert!(
        matches!(problems[0], CertProblem::NotYetValid { .. }),
        "{problems:?}"
    );

    let wildcard = pki.leaf(&["*.example.test", "10.0.0.1"]);
    let bundle = pki.bundle(&wildcard);
    let names = [
        "a.example.test",
        "A.EXAMPLE.TEST",
        "10.0.0.1",
        "example.test",
        "a.b.example.test",
        "10.0.0.2",
    ];
    let problems = bundle
        .problems(now, &names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("parses");
    let uncovered: Vec<_> = problems
        .iter()
        .filter_map(|p| match p {
            CertProblem::NameNotCovered { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(uncovered, vec!["example.test", "a.b.example.test", "10.0.0.2"]);
}

#[test]
fn chain_order_problems_name_what_is_misplaced() {
    let pki = Pki::new();
    let leaf = pki.leaf(&["a.test"]);
    let bundle = pki.bundle(&leaf);
    let infos = |order: &[usize]| -> Vec<CertInfo> {
        order
            .iter()
            .map(|&i| CertInfo::parse(&bundle.chain[i], i + 1).expect("parses"))
            .collect()
    };
    assert_eq!(chain_order_problems(&infos(&[0, 1, 2])), vec![]);
    assert_eq!(chain_order_problems(&infos(&[0, 1])), vec![]);
    let shuffled = chain_order_problems(&infos(&[2, 0, 1]));
    assert!(!shuffled.is_empty());
    assert!(
        shuffled[0]
            .to_string()
            .contains("the leaf (CN=a.test) is certificate #2"),
        "{}",
        shuffled[0]
    );
    let swapped = chain_order_problems(&infos(&[0, 2, 1]));
    assert_eq!(swapped.len(), 2, "{swapped:?}");
    assert!(
        swapped[0]
            .to_string()
            .contains("certificate #1 (CN=a.test) is issued by #3"),
        "{}",
        swapped[0]
    );
}

#[test]
fn self_signed_is_generated_once_with_a_private_key_file_and_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("node.crt"), dir.path().join("node.key"));
    let names = vec!["gw1.example.test".to_string(), "127.0.0.1".to_string()];
    let now = SystemTime::now();
    let (first, outcome) = ensure_self_signed(&cert, &key, &names, now).expect("generated");
    assert!(matches!(outcome, SelfSignedOutcome::Generated { .. }));
    assert_eq!(
        fs::metadata(&key).expect("key written").permissions().mode() & 0o777,
        0o600
    );
    let leaf = first.leaf().expect("parses");
    assert!(leaf.covers("gw1.example.test") && leaf.covers("127.0.0.1"));
    assert!(!leaf.is_ca);
    assert!(first.certified_key().is_ok());

    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
    let (second, outcome) = ensure_self_signed(&cert, &key, &names, now + DAY).expect("reused");
    assert_eq!(outcome, SelfSignedOutcome::Reused);
    assert_eq!(second.chain, first.chain);
    assert_eq!(
        fs::metadata(&key).expect("key").permissions().mode() & 0o777,
        0o600
    );

    // Near expiry, or for another name, a new one is made.
    let late = now + SELF_SIGNED_VALIDITY - DAY;
    let (third, outcome) = ensure_self_signed(&cert, &key, &names, late).expect("renewed");
    assert!(
        matches!(&outcome, SelfSignedOutcome::Generated { why } if why.contains("expired")),
        "{outcome:?}"
    );
    assert_ne!(third.chain, first.chain);
    let more = vec!["gw2.example.test".to_string()];
    let (_, outcome) = ensure_self_signed(&cert, &key, &more, late).expect("renewed");
    assert!(
        matches!(&outcome, SelfSignedOutcome::Generated { why } if why.contains("gw2.example.test")),
        "{outcome:?}"
    );
}

/// Subject and SANs of a CSR, parsed back with x509-parser.
fn csr_fields(pem_text: &str) -> (String, Vec<String>) {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::ParsedExtension;
    let der = pem::parse(pem_text).expect("CSR is PEM").into_contents();
    let (_, csr) = X509CertificationRequest::from_der(&der).expect("CSR parses");
    let mut sans = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                if let GeneralName::DNSName(d) = name {
                    sans.push(d.to_string());
                }
            }
        }
    }
    (csr.certification_request_info.subject.to_string(), sans)
}

#[test]
fn csr_has_the_cn_and_sans_and_a_new_key() {
    let csr = generate_csr(
        "gw.example.test",
        &["gw.example.test".into(), "alt.example.test".into()],
    )
    .expect("csr");
    assert!(csr.csr_pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    assert!(csr.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(
        csr_fields(&csr.csr_pem),
        (
            "CN=gw.example.test".to_string(),
            vec!["gw.example.test".to_string(), "alt.example.test".to_string()]
        )
    );
    // The CN is added to the SANs when missing.
    let csr = generate_csr("cn.example.test", &["other.example.test".into()]).expect("csr");
    assert_eq!(
        csr_fields(&csr.csr_pem).1,
        vec!["cn.example.test".to_string(), "other.example.test".to_string()]
    );
}

#[test]
fn writes_are_atomic_and_keep_the_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("k");
    write_atomic(&path, b"one", 0o600).expect("write");
    write_atomic(&path, b"two", 0o600).expect("overwrite");
    assert_eq!(fs::read(&path).expect("read"), b"two");
    assert_eq!(
        fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::read_dir(dir.path()).expect("list").count(),
        1,
        "no temporary file left"
    );
}

#[test]
fn dates_format_in_utc() {
    assert_eq!(format_unix(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(format_unix(1_700_000_000), "2023-11-14 22:13:20 UTC");
}
