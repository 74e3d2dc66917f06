//! The client against a fake gateway on loopback: a std listener thread answering the client
//! API of CLIENT-API.md (plain or inside rustls with a test-PKI certificate) whose tunnels
//! echo every byte back, so that checksums prove both directions.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use sha2::{Digest, Sha256};

use super::api::Resource;
use super::*;
use crate::tls::test_pki::Pki;

const PASSWORD: &str = "s3cret";

/// What the fake gateway serves.
struct FakeConfig {
    resources: Vec<Resource>,
    tls: Option<Arc<ServerConfig>>,
    /// Launches in direct mode answer this address.
    direct: Option<SocketAddr>,
    /// Sent right after the 101 head, in the same write.
    early: Vec<u8>,
}

struct FakeState {
    config: FakeConfig,
    /// Session tokens the gateway takes (one per login; cleared to expire them all).
    tokens: Mutex<HashSet<String>>,
    issued: Mutex<HashSet<String>>,
    next_ticket: AtomicUsize,
    logins: AtomicUsize,
    launches: AtomicUsize,
    tunnels: AtomicUsize,
}

struct FakeGateway {
    addr: SocketAddr,
    state: Arc<FakeState>,
}

fn desktop(id: &str) -> Resource {
    Resource {
        id: id.to_string(),
        name: format!("Desktop {id}"),
        kind: "desktop".to_string(),
    }
}

impl FakeGateway {
    fn start(config: FakeConfig) -> FakeGateway {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(FakeState {
            config,
            tokens: Mutex::new(HashSet::new()),
            issued: Mutex::new(HashSet::new()),
            next_ticket: AtomicUsize::new(1),
            logins: AtomicUsize::new(0),
            launches: AtomicUsize::new(0),
            tunnels: AtomicUsize::new(0),
        });
        let shared = state.clone();
        thread::spawn(move || {
            for sock in listener.incoming().flatten() {
                let state = shared.clone();
                thread::spawn(move || handle(&state, sock));
            }
        });
        FakeGateway { addr, state }
    }

    fn plain(resources: Vec<Resource>) -> FakeGateway {
        FakeGateway::start(FakeConfig {
            resources,
            tls: None,
            direct: None,
            early: b"HELLO-FROM-HOST;".to_vec(),
        })
    }
}

fn handle(state: &FakeState, sock: TcpStream) {
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    match &state.config.tls {
        None => {
            let mut s = sock;
            if serve_api(state, &mut s) {
                loop {
                    let mut chunk = [0u8; 8192];
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&chunk[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            }
        }
        Some(config) => {
            let conn = ServerConnection::new(config.clone()).unwrap();
            let mut s = StreamOwned::new(conn, sock);
            if serve_api(state, &mut s) {
                loop {
                    let mut chunk = [0u8; 8192];
                    // Ok(0): the client's close_notify.
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&chunk[..n]).and_then(|()| s.flush()).is_err() {
                                return;
                            }
                        }
                    }
                }
                s.conn.send_close_notify();
                let _ = s.flush();
                let _ = s.sock.shutdown(Shutdown::Write);
            }
        }
    }
}

/// Serves API requests; `true` when the connection became a tunnel (101 sent).
fn serve_api<S: Read + Write>(state: &FakeState, s: &mut S) -> bool {
    let mut buf = Vec::new();
    loop {
        let Some((method, path, bearer, body)) = read_request(s, &mut buf) else {
            return false;
        };
        let json = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
        let token_ok = bearer
            .as_deref()
            .is_some_and(|t| state.tokens.lock().unwrap().contains(t));
        let (status, answer) = match (method.as_str(), path.as_str()) {
            ("POST", "/api/v1/login") => {
                let n = state.logins.fetch_add(1, Ordering::SeqCst) + 1;
                if json["user"] == "alice" && json["password"] == PASSWORD {
                    let token = format!("gw~tok-alice-{n}");
                    state.tokens.lock().unwrap().insert(token.clone());
                    (
                        200,
                        serde_json::json!({"session_token": token, "resources": state.config.resources}),
                    )
                } else {
                    (
                        401,
                        serde_json::json!({"error": "wrong_password", "message": "the broker refused the password"}),
                    )
                }
            }
            ("GET", "/api/v1/resources") if token_ok => {
                (200, serde_json::json!({"resources": state.config.resources}))
            }
            ("POST", "/api/v1/launch") if token_ok => {
                state.launches.fetch_add(1, Ordering::SeqCst);
                let known = state
                    .config
                    .resources
                    .iter()
                    .any(|r| json["resource"] == r.id.as_str());
                match (known, json["mode"].as_str(), state.config.direct) {
                    (false, _, _) => (
                        404,
                        serde_json::json!({"error": "unknown_resource", "message": "no such"}),
                    ),
                    (true, Some("gateway"), _) => {
                        let ticket = format!("t-{}", state.next_ticket.fetch_add(1, Ordering::SeqCst));
                        state.issued.lock().unwrap().insert(ticket.clone());
                        (200, serde_json::json!({"mode": "gateway", "ticket": ticket}))
                    }
                    (true, Some("direct"), Some(addr)) => (
                        200,
                        serde_json::json!({"mode": "direct", "host": addr.ip().to_string(), "port": addr.port()}),
                    ),
                    _ => (
                        400,
                        serde_json::json!({"error": "unsupported_mode", "message": "no"}),
                    ),
                }
            }
            ("GET", "/api/v1/tunnel") => {
                let redeemed = bearer.is_some_and(|t| state.issued.lock().unwrap().remove(&t));
                if redeemed {
                    state.tunnels.fetch_add(1, Ordering::SeqCst);
                    let mut out =
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: gatehouse-tunnel\r\nConnection: Upgrade\r\n\r\n"
                            .to_vec();
                    out.extend_from_slice(&state.config.early);
                    let _ = s.write_all(&out).and_then(|()| s.flush());
                    // Bytes the client sent after its head are part of the tunnel.
                    if !buf.is_empty() {
                        let _ = s.write_all(&buf);
                    }
                    return true;
                }
                (
                    403,
                    serde_json::json!({"error": "ticket_replayed", "message": "used"}),
                )
            }
            _ => (
                401,
                serde_json::json!({"error": "session_invalid", "message": "bad token"}),
            ),
        };
        let body = answer.to_string();
        let close = if status == 200 { "keep-alive" } else { "close" };
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {close}\r\n\r\n",
            body.len()
        );
        if s.write_all(head.as_bytes())
            .and_then(|()| s.write_all(body.as_bytes()))
            .and_then(|()| s.flush())
            .is_err()
            || status != 200
        {
            return false;
        }
    }
}

/// Reads one request: method, path, bearer token, body. `None` at the end of the stream.
fn read_request<S: Read>(s: &mut S, buf: &mut Vec<u8>) -> Option<(String, String, Option<String>, Vec<u8>)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = req.parse(buf) {
            let method = req.method?.to_string();
            let path = req.path?.to_string();
            let mut bearer = None;
            let mut length = 0;
            for h in req.headers.iter() {
                let v = std::str::from_utf8(h.value).ok()?;
                if h.name.eq_ignore_ascii_case("authorization") {
                    bearer = v.strip_prefix("Bearer ").map(str::to_string);
                } else if h.name.eq_ignore_ascii_case("content-length") {
                    length = v.parse().ok()?;
                }
            }
            while buf.len() < n + length {
                fill(s, buf)?;
            }
            let body = buf[n..n + length].to_vec();
            buf.drain(..n + length);
            return Some((method, path, bearer, body));
        }
        if buf.len() > 8192 {
            return None;
        }
        fill(s, buf)?;
    }
}

fn fill<S: Read>(s: &mut S, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk) {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// A TLS gateway certificate from a test PKI, and that PKI's root as a CA file.
struct TlsFixture {
    config: Arc<ServerConfig>,
    leaf_sha256: [u8; 32],
    ca_file: tempfile::NamedTempFile,
}

fn tls_fixture() -> TlsFixture {
    let pki = Pki::new();
    let leaf = pki.leaf(&["127.0.0.1", "gateway.test"]);
    let bundle = pki.bundle(&leaf);
    let config = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(bundle.chain.clone(), leaf.key.clone_key())
        .unwrap();
    let mut ca_file = tempfile::NamedTempFile::new().unwrap();
    ca_file.write_all(pki.root.pem().as_bytes()).unwrap();
    TlsFixture {
        config: Arc::new(config),
        leaf_sha256: Sha256::digest(leaf.cert.as_ref()).into(),
        ca_file,
    }
}

fn tls_gateway(fixture: &TlsFixture, resources: Vec<Resource>) -> FakeGateway {
    FakeGateway::start(FakeConfig {
        resources,
        tls: Some(fixture.config.clone()),
        direct: None,
        early: b"TLS-HOST-BANNER;".to_vec(),
    })
}

fn options(gateway: &str, mode: Mode) -> Options {
    let mut o = Options::new(gateway, "alice", Password::new(PASSWORD));
    o.mode = mode;
    o.connect_timeout = Duration::from_secs(2);
    o
}

/// An address where nothing listens (a port just released).
fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

/// `clients` local RDP clients at once, each sending its own random bytes and half-closing;
/// each must get back `early` then exactly its bytes (checked by SHA-256), then the end.
fn exercise(local: SocketAddr, clients: usize, bytes: usize, early: &[u8]) {
    let workers: Vec<_> = (0..clients)
        .map(|i| {
            let early = early.to_vec();
            thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64 + 1);
                let payload: Vec<u8> = (0..bytes).map(|_| rng.gen()).collect();
                let sent_sum = Sha256::digest(&payload);
                let mut sock = TcpStream::connect(local).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut writer = sock.try_clone().unwrap();
                let send = thread::spawn(move || {
                    for part in payload.chunks(7_919) {
                        writer.write_all(part).unwrap();
                    }
                    writer.shutdown(Shutdown::Write).unwrap();
                });
                let mut back = Vec::new();
                sock.read_to_end(&mut back).unwrap();
                send.join().unwrap();
                assert!(back.starts_with(&early), "client {i}: early bytes first");
                let echoed = &back[early.len()..];
                assert_eq!(echoed.len(), bytes, "client {i}: byte count");
                assert_eq!(Sha256::digest(echoed), sent_sum, "client {i}: checksum");
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn login_and_list() {
    let gw = FakeGateway::plain(vec![desktop("desktop-a"), desktop("desktop-b")]);
    let found = list(&options(&gw.addr.to_string(), Mode::Gateway)).unwrap();
    assert_eq!(found, vec![desktop("desktop-a"), desktop("desktop-b")]);
    assert_eq!(gw.state.logins.load(Ordering::SeqCst), 1);
}

#[test]
fn refused_login_shows_the_gateways_code_and_message() {
    let gw = FakeGateway::plain(vec![desktop("d")]);
    let mut o = options(&gw.addr.to_string(), Mode::Gateway);
    o.password = Password::new("wrong");
    let err = start(o).err().expect("a wrong password must fail");
    assert_eq!(
        err.to_string(),
        "gateway refused: wrong_password: the broker refused the password"
    );
    assert_eq!(err.exit_code(), 4);
}

#[test]
fn resource_choice() {
    let gw = FakeGateway::plain(vec![desktop("a"), desktop("b")]);
    let err = start(options(&gw.addr.to_string(), Mode::Gateway)).err().unwrap();
    assert!(
        matches!(err, ConnectError::Resource(ref m) if m.contains("a (desktop, Desktop a)")),
        "{err}"
    );
    let mut o = options(&gw.addr.to_string(), Mode::Gateway);
    o.resource = Some("zzz".into());
    assert_eq!(start(o).err().unwrap().exit_code(), 6);
    let mut o = options(&gw.addr.to_string(), Mode::Gateway);
    o.resource = Some("Desktop b".into());
    assert_eq!(start(o).unwrap().resource().id, "b");
}

#[test]
fn gateway_mode_tunnels_carry_checksummed_bytes_concurrently() {
    let gw = FakeGateway::plain(vec![desktop("desktop-a")]);
    let running = start(options(&gw.addr.to_string(), Mode::Gateway)).unwrap();
    assert!(running
        .describe()
        .contains(&format!("xfreerdp /v:{}", running.local_addr())));
    let t = Instant::now();
    exercise(running.local_addr(), 4, 300_000, &gw.state.config.early);
    println!("4 tunnels x 300 kB both ways in {:?}", t.elapsed());
    // One launch and one single-use ticket per local connection, all redeemed.
    assert_eq!(gw.state.launches.load(Ordering::SeqCst), 4);
    assert_eq!(gw.state.tunnels.load(Ordering::SeqCst), 4);
    assert!(gw.state.issued.lock().unwrap().is_empty());
    // Login and the launches shared kept-alive connections: one login only.
    assert_eq!(gw.state.logins.load(Ordering::SeqCst), 1);
    running.stop();
}

#[test]
fn an_expired_session_token_means_one_new_login_not_failed_tunnels() {
    let gw = FakeGateway::plain(vec![desktop("desktop-a")]);
    let running = start(options(&gw.addr.to_string(), Mode::Gateway)).unwrap();
    exercise(running.local_addr(), 1, 10_000, &gw.state.config.early);
    assert_eq!(gw.state.logins.load(Ordering::SeqCst), 1);
    // The broker forgets the session (it expired, or the broker restarted).
    gw.state.tokens.lock().unwrap().clear();
    exercise(running.local_addr(), 3, 10_000, &gw.state.config.early);
    assert_eq!(
        gw.state.logins.load(Ordering::SeqCst),
        2,
        "three connections meeting the stale token log in again once"
    );
    assert_eq!(gw.state.tunnels.load(Ordering::SeqCst), 4);
    running.stop();
}

#[test]
fn gateway_ssl_with_ca_file_tunnels_bytes() {
    let fixture = tls_fixture();
    let gw = tls_gateway(&fixture, vec![desktop("desktop-a")]);
    let mut o = options(&gw.addr.to_string(), Mode::GatewaySsl);
    o.trust = Trust::CaFile(fixture.ca_file.path().to_path_buf());
    let running = start(o).unwrap();
    exercise(running.local_addr(), 3, 200_000, &gw.state.config.early);
    assert_eq!(gw.state.tunnels.load(Ordering::SeqCst), 3);
    running.stop();
}

#[test]
fn once_serves_one_connection_then_ends() {
    let gw = FakeGateway::plain(vec![desktop("desktop-a")]);
    let mut o = options(&gw.addr.to_string(), Mode::Gateway);
    o.once = true;
    let running = start(o).unwrap();
    exercise(running.local_addr(), 1, 10_000, &gw.state.config.early);
    running.wait().unwrap();
}

#[test]
fn untrusted_certificate_is_refused_with_its_fingerprint() {
    let fixture = tls_fixture();
    let other = tls_fixture();
    let gw = tls_gateway(&fixture, vec![desktop("d")]);
    let mut o = options(&gw.addr.to_string(), Mode::GatewaySsl);
    o.trust = Trust::CaFile(other.ca_file.path().to_path_buf());
    let err = list(&o).unwrap_err();
    let expected = trust::fingerprint(&[]).len(); // 64 hex digits
    match &err {
        ConnectError::Untrusted { fingerprint, .. } => {
            let fp = fingerprint.as_deref().expect("fingerprint fetched");
            assert_eq!(fp.len(), expected);
            assert_eq!(trust::parse_pin(fp).unwrap(), fixture.leaf_sha256);
        }
        other => panic!("expected Untrusted, got {other:?}"),
    }
    assert_eq!(err.exit_code(), 5);
    assert!(err.to_string().contains("--pin-sha256"), "{err}");
    assert_eq!(gw.state.logins.load(Ordering::SeqCst), 0, "no credentials sent");

    // The name is checked too: a CA-issued certificate for another name is refused.
    let mut o = options(&gw.addr.to_string(), Mode::GatewaySsl);
    o.trust = Trust::CaFile(fixture.ca_file.path().to_path_buf());
    o.server_name = Some("other.test".into());
    assert!(matches!(list(&o), Err(ConnectError::Untrusted { .. })));
}

#[test]
fn pinned_certificate_ok_and_mismatch() {
    let fixture = tls_fixture();
    let gw = tls_gateway(&fixture, vec![desktop("d")]);
    let mut o = options(&gw.addr.to_string(), Mode::GatewaySsl);
    o.trust = Trust::Pinned(fixture.leaf_sha256);
    // A pin does not depend on the name.
    o.server_name = Some("whatever.test".into());
    assert_eq!(list(&o).unwrap(), vec![desktop("d")]);

    let mut wrong = fixture.leaf_sha256;
    wrong[0] ^= 1;
    o.trust = Trust::Pinned(wrong);
    match list(&o) {
        Err(ConnectError::Untrusted { fingerprint, .. }) => {
            assert_eq!(
                fingerprint.map(|f| trust::parse_pin(&f).unwrap()),
                Some(fixture.leaf_sha256)
            )
        }
        other => panic!("expected Untrusted, got {other:?}"),
    }
    o.trust = Trust::Insecure;
    assert!(list(&o).is_ok());
    assert_eq!(gw.state.logins.load(Ordering::SeqCst), 2);
}

#[test]
fn primary_refused_uses_secondary() {
    let secondary = FakeGateway::plain(vec![desktop("desktop-a")]);
    let mut o = options(&closed_port(), Mode::Gateway);
    o.gateways.push(secondary.addr.to_string());
    let running = start(o).unwrap();
    assert_eq!(running.login_gateway().1, "secondary");
    exercise(running.local_addr(), 2, 50_000, &secondary.state.config.early);
    assert_eq!(secondary.state.tunnels.load(Ordering::SeqCst), 2);
    running.stop();
}

#[test]
fn both_gateways_down_is_unreachable() {
    let mut o = options(&closed_port(), Mode::Gateway);
    o.gateways.push(closed_port());
    let err = list(&o).unwrap_err();
    assert!(
        matches!(err, ConnectError::Unreachable(ref a) if a.len() == 2),
        "{err}"
    );
    assert_eq!(err.exit_code(), 3);
}

#[test]
fn hung_primary_is_noticed_by_the_timeout() {
    let fixture = tls_fixture();
    for mode in [Mode::Gateway, Mode::GatewaySsl] {
        // Accepts (the kernel completes the handshake) and never answers.
        let hung = TcpListener::bind("127.0.0.1:0").unwrap();
        let secondary = match mode {
            Mode::GatewaySsl => tls_gateway(&fixture, vec![desktop("desktop-a")]),
            _ => FakeGateway::plain(vec![desktop("desktop-a")]),
        };
        let mut o = options(&hung.local_addr().unwrap().to_string(), mode);
        o.trust = Trust::CaFile(fixture.ca_file.path().to_path_buf());
        o.connect_timeout = Duration::from_millis(700);
        o.gateways.push(secondary.addr.to_string());
        let t = Instant::now();
        let running = start(o).unwrap();
        let took = t.elapsed();
        println!("{mode}: hung primary, logged in through the secondary after {took:?} (timeout 700ms)");
        assert_eq!(running.login_gateway().1, "secondary");
        assert!(
            took >= Duration::from_millis(600),
            "the timeout was waited for: {took:?}"
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
        // Later tunnels go to the gateway that answered, without waiting for the hung one.
        let t = Instant::now();
        exercise(running.local_addr(), 1, 20_000, &secondary.state.config.early);
        assert!(t.elapsed() < Duration::from_millis(600), "{:?}", t.elapsed());
        running.stop();
        drop(hung);
    }
}

/// Echoes every connection until its end, then half-closes.
fn echo_host() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut reader = sock.try_clone().unwrap();
                let mut writer = sock;
                let _ = std::io::copy(&mut reader, &mut writer);
                let _ = writer.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

#[test]
fn direct_modes_carry_the_session_to_the_named_host() {
    let fixture = tls_fixture();
    for mode in [Mode::Direct, Mode::DirectSsl] {
        let host = echo_host();
        let gw = FakeGateway::start(FakeConfig {
            resources: vec![desktop("desktop-a")],
            tls: mode.tls().then(|| fixture.config.clone()),
            direct: Some(host),
            early: Vec::new(),
        });
        let mut o = options(&gw.addr.to_string(), mode);
        o.trust = Trust::CaFile(fixture.ca_file.path().to_path_buf());
        let running = start(o).unwrap();
        assert_eq!(
            running.target(),
            &Target::Direct {
                host: "127.0.0.1".into(),
                port: host.port()
            }
        );
        assert!(
            running.describe().contains(&format!("session host {host}")),
            "{}",
            running.describe()
        );
        exercise(running.local_addr(), 3, 100_000, b"");
        // One launch at the start; no tunnel.
        assert_eq!(gw.state.launches.load(Ordering::SeqCst), 1);
        assert_eq!(gw.state.tunnels.load(Ordering::SeqCst), 0);
        running.stop();
    }
}
