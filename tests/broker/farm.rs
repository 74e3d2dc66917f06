//! Farm PKI: `farm init` / `farm issue` files, and peers without a farm certificate refused
//! by the broker with a log line while farm members are served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use super::common::{run_cli, wait_for, Farm};

#[test]
fn farm_files_and_modes() {
    let farm = Farm::new();
    farm.issue("halb-1", "halb");
    for (file, mode) in [
        ("farm-ca.key", 0o600),
        ("farm-keys.toml", 0o600),
        ("gw-a.key", 0o600),
        ("halb-1.key", 0o600),
    ] {
        let m = std::fs::metadata(farm.path(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, mode, "{file}");
    }
    let keys = std::fs::read_to_string(farm.path("farm-keys.toml")).unwrap();
    assert!(
        keys.contains("id = 1") && keys.contains("current = true"),
        "{keys}"
    );
    // A second init refuses to overwrite the CA.
    let d = farm.dir.path().to_str().unwrap();
    let out = run_cli(&["farm", "init", "--dir", d], None);
    assert!(!out.status.success());
    // A bad role is refused.
    let out = run_cli(&["farm", "issue", "x", "--dir", d, "--role", "mayor"], None);
    assert!(!out.status.success());
}

#[test]
fn peers_without_a_farm_certificate_are_refused() {
    let farm = Farm::new();
    let broker = farm.start_broker("broker-1");

    // 1. Plain TCP speaking the hello without TLS.
    let mut plain = TcpStream::connect(broker.gw).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    plain.write_all(b"GHCP\x00\x01\x00\x01\x01\x04gw-a").unwrap();
    let mut buf = [0u8; 64];
    // The broker answers with a TLS alert or just closes; never with a hello.
    let n = plain.read(&mut buf).unwrap_or(0);
    assert!(n == 0 || buf[0] == 0x15, "unexpected answer {:?}", &buf[..n]);

    // 2. TLS without a client certificate (the client trusts the farm CA).
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(farm.path("farm-ca.pem")).unwrap();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let no_cert = rustls::ClientConfig::builder_with_provider(gatehouse::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    assert!(
        handshake_refused(broker.gw, Arc::new(no_cert)),
        "a client without a certificate was accepted"
    );

    // 3. TLS with a certificate of another farm (trusting ours, so only the broker decides).
    let other = Farm::new();
    let mut foreign = other.tls("gw-a");
    foreign.ca_file = farm.path("farm-ca.pem");
    assert!(
        handshake_refused(broker.gw, foreign.client_config().unwrap()),
        "a foreign certificate was accepted"
    );

    let refusals = |needle: &str| {
        broker
            .proc
            .log_text()
            .lines()
            .filter(|l| l.contains("refused farm peer") && l.contains(needle))
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(5), || refusals("corrupt message") >= 1
            && refusals("no certificates") >= 1
            && refusals("UnknownIssuer") >= 1),
        "refusals not logged: {}",
        broker.proc.log_text()
    );
    // A farm member is still served.
    let client = farm.client(&[broker.gw]);
    let a = client.call(super::common::login("alice", "right")).unwrap();
    assert_eq!(super::common::outcome(&a.reply), "login_ok");
}

#[test]
fn one_address_holding_handshakes_open_does_not_keep_members_out() {
    // Sockets that connect and say nothing hold a broker thread each until the hello
    // timeout. One address may hold 32 such on a port; past that the broker closes its new
    // connections at once, logging a line a second rather than one per refusal.
    let farm = Farm::new();
    let broker = farm.start_broker("broker-1");
    let silent: Vec<TcpStream> = (0..40)
        .map(|_| {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 2], 0)).into())
                .unwrap();
            sock.connect(&broker.gw.into()).unwrap();
            TcpStream::from(sock)
        })
        .collect();
    // The broker accepts them in order; those it refuses are closed by the time it logged.
    assert!(
        wait_for(Duration::from_secs(3), || broker
            .proc
            .log_text()
            .contains("connection refused")),
        "no refusal logged: {}",
        broker.proc.log_text()
    );
    std::thread::sleep(Duration::from_millis(200));
    let closed_at_once = silent
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            match (&mut &**s).read(&mut b) {
                Ok(0) => true,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                Ok(_) => false,
            }
        })
        .count();
    assert_eq!(
        closed_at_once, 8,
        "the broker should hold 32 of 40 silent connections"
    );
    // A member from another address still gets in and is served.
    let client = farm.client(&[broker.gw]);
    let a = client.call(super::common::login("alice", "right")).unwrap();
    assert_eq!(super::common::outcome(&a.reply), "login_ok");
    let log = broker.proc.log_text();
    let lines = log.lines().filter(|l| l.contains("connection refused")).count();
    assert!(
        log.contains("connection refused: 32 connections from 127.0.0.2 still in their handshake"),
        "{log}"
    );
    assert!(lines <= 2, "{lines} log lines for 8 refusals:\n{log}");
    drop(silent);
}

/// Runs a TLS handshake as a client and then reads: true when the broker refused (an error
/// or a close before any application data).
fn handshake_refused(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>) -> bool {
    let name = rustls::pki_types::ServerName::try_from("broker-1").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        if conn.complete_io(&mut sock).is_err() {
            return true;
        }
    }
    // TLS 1.3: the client finishes first; the server's verdict on our certificate arrives
    // as an alert on the next read. A member would get the broker's hello here instead.
    let mut stream = rustls::Stream::new(&mut conn, &mut sock);
    let mut b = [0u8; 16];
    !matches!(stream.read(&mut b), Ok(n) if n > 0)
}
