//! In-memory handshakes between a rustls client and configurations built here: no sockets,
//! the two sides exchange bytes through vectors.

use std::time::SystemTime;

use rustls::pki_types::ServerName;
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, ProtocolVersion, RootCertStore, ServerConnection,
};

use super::*;
use crate::tls::test_pki::Pki;
use crate::tls::ticket_keys::{KeyFileRole, TicketKeyFile, TicketKeySchedule};

/// What the client saw.
#[derive(Debug)]
struct Outcome {
    leaf_subject: String,
    version: Option<ProtocolVersion>,
    alpn: Option<Vec<u8>>,
    kind: Option<HandshakeKind>,
    suite: Option<String>,
}

fn client_config(
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&str],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.root.der().clone()).expect("root parses");
    let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Runs a handshake plus one application round trip (so TLS 1.3 tickets reach the client).
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>, name: &str) -> Result<Outcome, String> {
    let name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let mut c = ClientConnection::new(client.clone(), name).map_err(|e| e.to_string())?;
    let mut s = ServerConnection::new(server.clone()).map_err(|e| e.to_string())?;
    use std::io::{Read, Write};
    c.writer().write_all(b"ping").map_err(|e| e.to_string())?;
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).map_err(|e| e.to_string())?;
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).map_err(|e| e.to_string())?;
        }
        let server_result = s.process_new_packets();
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).map_err(|e| e.to_string())?;
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).map_err(|e| e.to_string())?;
        }
        let client_result = c.process_new_packets();
        server_result.map_err(|e| format!("server: {e}"))?;
        client_result.map_err(|e| format!("client: {e}"))?;
        let mut got = [0u8; 4];
        if !s.is_handshaking() && s.reader().read_exact(&mut got).is_ok() {
            assert_eq!(&got, b"ping");
            s.writer().write_all(b"pong").map_err(|e| e.to_string())?;
        }
        if !c.is_handshaking() && c.reader().read_exact(&mut got).is_ok() {
            let leaf = c
                .peer_certificates()
                .and_then(|certs| certs.first().cloned())
                .ok_or("no peer cert")?;
            return Ok(Outcome {
                leaf_subject: crate::tls::certs::CertInfo::parse(&leaf, 1)
                    .map_err(|e| e.to_string())?
                    .subject,
                version: c.protocol_version(),
                alpn: c.alpn_protocol().map(<[u8]>::to_vec),
                kind: s.handshake_kind(),
                suite: c.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())),
            });
        }
    }
    Err("handshake did not finish".into())
}

fn entry(pki: &Pki, names: &[&str], default: bool) -> CertEntry {
    CertEntry {
        bundle: pki.bundle(&pki.leaf(names)),
        names: Vec::new(),
        default,
    }
}

fn two_cert_settings(pki: &Pki, default_b: bool) -> ServerTlsSettings {
    ServerTlsSettings {
        certificates: vec![
            entry(pki, &["a.example.test"], false),
            entry(pki, &["*.b.example.test"], default_b),
        ],
        session_cache_size: 256,
        ..Default::default()
    }
}

const BOTH: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

#[test]
fn sni_picks_the_certificate_and_unknown_names_get_the_default() {
    let pki = Pki::new();
    let tls = ServerTls::build(&two_cert_settings(&pki, true)).expect("builds");
    let client = client_config(&pki, BOTH, &[]);
    let a = handshake(&client, &tls.config, "a.example.test").expect("a");
    assert_eq!(a.leaf_subject, "CN=a.example.test");
    let b = handshake(&client, &tls.config, "x.b.example.test").expect("wildcard");
    assert_eq!(b.leaf_subject, "CN=*.b.example.test");
    // An unknown name gets the default certificate, which the client then refuses.
    let err = handshake(&client, &tls.config, "unknown.example.test").expect_err("name mismatch");
    assert!(err.contains("client:"), "{err}");
    assert_eq!(
        tls.resolver
            .choose(Some("unknown.example.test"))
            .map(|k| k.cert[0].clone())
            .ok(),
        tls.resolver
            .choose(Some("x.b.example.test"))
            .map(|k| k.cert[0].clone())
            .ok()
    );
    // No SNI: the default.
    assert!(tls.resolver.choose(None).is_ok());
}

#[test]
fn unknown_sni_without_default_fails_the_handshake_with_a_reason() {
    let pki = Pki::new();
    let tls = ServerTls::build(&two_cert_settings(&pki, false)).expect("builds");
    let client = client_config(&pki, BOTH, &[]);
    assert!(handshake(&client, &tls.config, "a.example.test").is_ok());
    let err = handshake(&client, &tls.config, "nope.example.test").expect_err("no certificate");
    assert!(err.starts_with("server:"), "{err}");
    let why = tls
        .resolver
        .choose(Some("NOPE.example.test"))
        .expect_err("no cert");
    assert_eq!(why, NoCertificate::UnknownServerName("nope.example.test".into()));
    assert_eq!(why.reason(), "unknown_sni");
    assert_eq!(
        tls.resolver.choose(None).expect_err("no default").reason(),
        "no_sni_no_default"
    );
    // A wildcard covers one label only.
    assert!(tls.resolver.choose(Some("y.x.b.example.test")).is_err());
}

#[test]
fn minimum_version_is_enforced() {
    let pki = Pki::new();
    let tls12_client = client_config(&pki, &[&rustls::version::TLS12], &[]);
    let default = ServerTls::build(&two_cert_settings(&pki, true)).expect("builds");
    let out = handshake(&tls12_client, &default.config, "a.example.test").expect("1.2 accepted by default");
    assert_eq!(out.version, Some(ProtocolVersion::TLSv1_2));
    let tls13_only = ServerTls::build(&ServerTlsSettings {
        min_version: "1.3".parse().expect("valid"),
        ..two_cert_settings(&pki, true)
    })
    .expect("builds");
    let err = handshake(&tls12_client, &tls13_only.config, "a.example.test").expect_err("1.2 refused");
    assert!(err.contains("server:"), "{err}");
    let out = handshake(
        &client_config(&pki, BOTH, &[]),
        &tls13_only.config,
        "a.example.test",
    )
    .expect("1.3");
    assert_eq!(out.version, Some(ProtocolVersion::TLSv1_3));
}

#[test]
fn suites_groups_and_alpn_by_name() {
    let pki = Pki::new();
    let settings = ServerTlsSettings {
        cipher_suites: vec![
            "TLS_CHACHA20_POLY1305_SHA256".into(),
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".into(),
        ],
        kx_groups: vec!["P-256".into()],
        alpn: vec!["h2".into(), "http/1.1".into()],
        ..two_cert_settings(&pki, true)
    };
    let tls = ServerTls::build(&settings).expect("builds");
    let out = handshake(
        &client_config(&pki, BOTH, &["http/1.1"]),
        &tls.config,
        "a.example.test",
    )
    .expect("ok");
    assert_eq!(out.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let unknown = ServerTlsSettings {
        cipher_suites: vec!["TLS_RSA_WITH_RC4_128_MD5".into()],
        ..two_cert_settings(&pki, true)
    };
    let err = ServerTls::build(&unknown).expect_err("unknown suite");
    assert!(
        err.to_string().contains("TLS_AES_128_GCM_SHA256"),
        "lists the known ones: {err}"
    );
    let unknown = ServerTlsSettings {
        kx_groups: vec!["ffdhe9999".into()],
        ..two_cert_settings(&pki, true)
    };
    assert!(matches!(
        ServerTls::build(&unknown),
        Err(TlsSetupError::UnknownKxGroup(_))
    ));
    // TLS 1.3 only with TLS 1.2 suites only: refused at build time.
    let impossible = ServerTlsSettings {
        min_version: MinVersion::Tls13,
        cipher_suites: vec!["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".into()],
        ..two_cert_settings(&pki, true)
    };
    assert!(matches!(
        ServerTls::build(&impossible),
        Err(TlsSetupError::Rustls(_))
    ));
}

#[test]
fn settings_errors() {
    let pki = Pki::new();
    assert!(matches!(
        ServerTls::build(&ServerTlsSettings::default()),
        Err(TlsSetupError::NoCertificate)
    ));
    let two_defaults = ServerTlsSettings {
        certificates: vec![entry(&pki, &["a.test"], true), entry(&pki, &["b.test"], true)],
        ..Default::default()
    };
    assert!(matches!(
        ServerTls::build(&two_defaults),
        Err(TlsSetupError::SeveralDefaults)
    ));
    let same_name = ServerTlsSettings {
        certificates: vec![entry(&pki, &["a.test"], true), entry(&pki, &["a.test"], false)],
        ..Default::default()
    };
    assert!(matches!(
        ServerTls::build(&same_name),
        Err(TlsSetupError::DuplicateName(_))
    ));
}

/// Two gateways behind one HALB share a ticket key file: a client resumes on either.
fn resumption_across_nodes(versions: &[&'static rustls::SupportedProtocolVersion]) {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = |role| TicketKeyFile {
        path: dir.path().join("tickets.keys"),
        schedule: TicketKeySchedule::default(),
        role,
    };
    let now = SystemTime::now();
    let ticketer_a = key_file(KeyFileRole::Rotate).open(now).expect("created");
    let ticketer_b = key_file(KeyFileRole::Follow).open(now).expect("read");
    let certs = two_cert_settings(&pki, true).certificates;
    let node = |tickets| {
        ServerTls::build(&ServerTlsSettings {
            certificates: certs.clone(),
            session_cache_size: 0,
            tickets,
            ..Default::default()
        })
        .expect("builds")
    };
    let (a, b) = (
        node(Tickets::Shared(ticketer_a)),
        node(Tickets::Shared(ticketer_b)),
    );
    let client = client_config(&pki, versions, &[]);
    let first = handshake(&client, &a.config, "a.example.test").expect("full");
    assert_eq!(first.kind, Some(HandshakeKind::Full));
    let second = handshake(&client, &b.config, "a.example.test").expect("resumed");
    assert_eq!(
        second.kind,
        Some(HandshakeKind::Resumed),
        "resumed on the other node"
    );
    assert_eq!(second.version, Some(versions[0].version));
    // A node with its own keys cannot open those tickets: a full handshake, not an error.
    let loner = node(Tickets::Local);
    let client = client_config(&pki, versions, &[]);
    handshake(&client, &a.config, "a.example.test").expect("full");
    let third = handshake(&client, &loner.config, "a.example.test").expect("full again");
    assert_eq!(third.kind, Some(HandshakeKind::Full));
}

#[test]
fn tls13_resumes_across_two_configs_sharing_a_key_file() {
    resumption_across_nodes(&[&rustls::version::TLS13]);
}

#[test]
fn tls12_resumes_across_two_configs_sharing_a_key_file() {
    resumption_across_nodes(&[&rustls::version::TLS12]);
}

#[test]
fn tls12_resumes_by_session_id_on_one_node() {
    let pki = Pki::new();
    let tls = ServerTls::build(&ServerTlsSettings {
        tickets: Tickets::Off,
        ..two_cert_settings(&pki, true)
    })
    .expect("builds");
    let client = client_config(&pki, &[&rustls::version::TLS12], &[]);
    handshake(&client, &tls.config, "a.example.test").expect("full");
    let again = handshake(&client, &tls.config, "a.example.test").expect("resumed");
    assert_eq!(again.kind, Some(HandshakeKind::Resumed));
}

/// A client whose suites come in `order` (names as rustls spells them), like a client
/// without AES instructions that leads with ChaCha20.
fn client_with_suites(pki: &Pki, order: &[&str]) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = order
        .iter()
        .map(|name| {
            *provider
                .cipher_suites
                .iter()
                .find(|s| format!("{:?}", s.suite()) == *name)
                .expect("a ring suite")
        })
        .collect();
    let mut roots = RootCertStore::empty();
    roots.add(pki.root.der().clone()).expect("root parses");
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(BOTH)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

#[test]
fn the_server_order_decides_except_for_a_chacha20_client() {
    let pki = Pki::new();
    let tls = ServerTls::build(&two_cert_settings(&pki, true)).expect("builds");
    // rustls' (and OpenSSL's) clients lead with AES-256: the server's AES-128 wins.
    let aes_first = client_with_suites(
        &pki,
        &[
            "TLS13_AES_256_GCM_SHA384",
            "TLS13_AES_128_GCM_SHA256",
            "TLS13_CHACHA20_POLY1305_SHA256",
        ],
    );
    let out = handshake(&aes_first, tls.for_hello(false), "a.example.test").expect("ok");
    assert_eq!(out.suite.as_deref(), Some("TLS13_AES_128_GCM_SHA256"));
    // A client that leads with ChaCha20 gets it.
    let chacha_first = client_with_suites(
        &pki,
        &["TLS13_CHACHA20_POLY1305_SHA256", "TLS13_AES_256_GCM_SHA384"],
    );
    let out = handshake(&chacha_first, tls.for_hello(true), "a.example.test").expect("ok");
    assert_eq!(out.suite.as_deref(), Some("TLS13_CHACHA20_POLY1305_SHA256"));
    // The configurations share the ticket keys: the same client (whose hello picks the same
    // configuration) resumes; rustls resumes only into the suite the session was made with.
    let again = handshake(&chacha_first, tls.for_hello(true), "a.example.test").expect("resumed");
    assert_eq!(again.kind, Some(rustls::HandshakeKind::Resumed));
    assert_eq!(again.suite.as_deref(), Some("TLS13_CHACHA20_POLY1305_SHA256"));
}
