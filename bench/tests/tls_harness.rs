//! The TLS scenarios measure right: against an in-test rustls server in front of the
//! stand-ins, full mode does only full handshakes and resumed mode resumes (counted by the
//! server), TLS idle tunnels stay alive, TLS throughput checks every byte, and the RDP-like
//! profile runs inside TLS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::{HandshakeKind, ServerConfig, ServerConnection, StreamOwned};

use gatehouse_bench::scenario::{idle, rdp_profile, throughput, tls_handshake, Common};
use gatehouse_bench::standin::{Kind, StandIn, StandInHandle};
use gatehouse_bench::tls::{TlsVersion, Verify};

/// Handshakes the server saw, by kind.
#[derive(Default)]
struct Seen {
    full: AtomicU64,
    resumed: AtomicU64,
}

/// A TLS-terminating relay to `backend` (thread per connection, one direction at a time is
/// enough for the scenarios: it reads until the client's close_notify, then relays back).
/// Returns its address, the CA file and the handshake counts.
fn tls_relay(backend: SocketAddr, dir: &std::path::Path) -> (SocketAddr, std::path::PathBuf, Arc<Seen>) {
    let (config, ca) = self_signed(dir, "relay.pem");
    let seen = Arc::new(Seen::default());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let (config, counts) = (config.clone(), counts.clone());
            std::thread::spawn(move || relay_one(client, backend, config, &counts));
        }
    });
    (addr, ca, seen)
}

/// A server configuration for `localhost` and its certificate written to `dir/file`.
fn self_signed(dir: &std::path::Path, file: &str) -> (Arc<ServerConfig>, std::path::PathBuf) {
    let (config, pem) = gatehouse_bench::tls::self_signed_server("localhost").unwrap();
    let path = dir.join(file);
    std::fs::write(&path, pem).unwrap();
    (config, path)
}

fn relay_one(client: TcpStream, backend: SocketAddr, config: Arc<ServerConfig>, seen: &Seen) {
    let Ok(conn) = ServerConnection::new(config) else {
        return;
    };
    let mut tls = StreamOwned::new(conn, client);
    let Ok(mut up) = TcpStream::connect(backend) else {
        return;
    };
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            return;
        }
    }
    match tls.conn.handshake_kind() {
        Some(HandshakeKind::Resumed) => seen.resumed.fetch_add(1, Ordering::Relaxed),
        _ => seen.full.fetch_add(1, Ordering::Relaxed),
    };
    let _ = tls.sock.set_read_timeout(Some(Duration::from_millis(5)));
    let _ = up.set_read_timeout(Some(Duration::from_millis(5)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut client_done = false;
    loop {
        match tls.read(&mut buf) {
            Ok(0) if !client_done => {
                client_done = true;
                let _ = up.shutdown(std::net::Shutdown::Write);
            }
            Ok(0) => {}
            Ok(n) => {
                if up.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
            }
            Err(_) => return,
        }
        match up.read(&mut buf) {
            Ok(0) => {
                tls.conn.send_close_notify();
                let _ = tls.flush();
                return;
            }
            Ok(n) => {
                if tls.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
            }
            Err(_) => return,
        }
    }
}

fn standin(kind: Kind) -> StandInHandle {
    StandIn::bind(kind, "127.0.0.1:0".parse().unwrap())
        .unwrap()
        .spawn()
}

fn common(target: SocketAddr) -> Common {
    Common {
        target,
        duration: Duration::from_secs(5),
        warmup: Duration::ZERO,
        sources: 1,
        pids: vec![],
    }
}

fn handshakes(ca: &std::path::Path, mode: tls_handshake::Mode, version: TlsVersion) -> tls_handshake::Params {
    tls_handshake::Params {
        connections: 40,
        concurrency: 2,
        payload: 64,
        mode,
        version,
        verify: Verify::CaFile(ca.to_path_buf()),
        server_name: "localhost".into(),
        rate: None,
    }
}

#[test]
fn full_mode_never_resumes_and_resumed_mode_does() {
    let tmp = tempfile_dir();
    let dir = tmp.path();
    let echo = standin(Kind::Echo);
    let (addr, ca, seen) = tls_relay(echo.local_addr(), dir);
    let r = tls_handshake::run(
        &common(addr),
        &handshakes(&ca, tls_handshake::Mode::Full, TlsVersion::Tls13),
    )
    .unwrap();
    assert_eq!(r.results.connections, 40);
    assert_eq!(r.parameters["resumed"], 0);
    assert_eq!(
        seen.resumed.load(Ordering::Relaxed),
        0,
        "the server saw no resumption"
    );
    for version in [TlsVersion::Tls13, TlsVersion::Tls12] {
        let before = seen.resumed.load(Ordering::Relaxed);
        let r = tls_handshake::run(
            &common(addr),
            &handshakes(&ca, tls_handshake::Mode::Resumed, version),
        )
        .unwrap();
        assert_eq!(r.results.connections, 40, "{version:?}");
        let resumed = r.parameters["resumed"].as_u64().unwrap();
        assert_eq!(resumed, 40, "{version:?}: every measured handshake resumed");
        assert_eq!(
            seen.resumed.load(Ordering::Relaxed) - before,
            resumed,
            "{version:?}: the server agrees"
        );
    }
}

#[test]
fn a_wrong_ca_fails_with_the_certificate_error() {
    let tmp = tempfile_dir();
    let dir = tmp.path();
    let echo = standin(Kind::Echo);
    let (addr, _, _) = tls_relay(echo.local_addr(), dir);
    let (_, other_ca, _) = tls_relay(echo.local_addr(), &dir.join("other"));
    let e = tls_handshake::run(
        &common(addr),
        &handshakes(&other_ca, tls_handshake::Mode::Full, TlsVersion::Tls13),
    )
    .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

#[test]
fn tls_idle_tunnels_and_tls_throughput_check_their_bytes() {
    let tmp = tempfile_dir();
    let dir = tmp.path();
    let echo = standin(Kind::Echo);
    let sink = standin(Kind::Sink);
    let (echo_tls, ca, _) = tls_relay(echo.local_addr(), dir);
    let (sink_tls, _, _) = tls_relay(sink.local_addr(), &dir.join("sink"));
    let client = |ca: &std::path::Path| {
        Some(
            gatehouse_bench::tls::TlsClient::new(
                &Verify::CaFile(ca.to_path_buf()),
                "localhost",
                TlsVersion::Tls13,
                false,
            )
            .unwrap(),
        )
    };
    let r = idle::run(
        &common(echo_tls),
        &idle::Params {
            connections: 20,
            hold: Duration::from_millis(100),
            concurrency: 2,
            tls: client(&ca),
        },
    )
    .unwrap();
    assert_eq!(r.results.alive_after_hold, Some(20));
    let r = throughput::run(
        &common(sink_tls),
        &throughput::Params {
            streams: 2,
            direction: throughput::Direction::Both,
            bytes_per_stream: 3_000_000,
            tls: client(&dir.join("sink").join("relay.pem")),
        },
    )
    .unwrap();
    assert_eq!(r.results.bytes_match, Some(true));
    assert_eq!(r.results.bytes_up, 3_000_000, "stream 0 went up");
    assert_eq!(r.results.bytes_down, 3_000_000, "stream 1 came down");
}

#[test]
fn the_office_profile_runs_inside_tls() {
    let tmp = tempfile_dir();
    let (config, ca) = self_signed(tmp.path(), "rdp.pem");
    let rdp = StandIn::bind(Kind::Rdp, "127.0.0.1:0".parse().unwrap())
        .unwrap()
        .with_tls(config)
        .unwrap()
        .spawn();
    let client =
        gatehouse_bench::tls::TlsClient::new(&Verify::CaFile(ca), "localhost", TlsVersion::Tls13, false)
            .unwrap();
    let mut office = rdp_profile::Params::office(10);
    office.burst_interval = Duration::from_millis(400);
    office.stagger = Duration::from_millis(100);
    let common = Common {
        duration: Duration::from_millis(800),
        warmup: Duration::from_millis(300),
        ..common(rdp.local_addr())
    };
    let r = rdp_profile::run(&common, &office, &rdp_profile::Transport::Tls(client)).unwrap();
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["parameters"]["tls"], true);
    assert_eq!(r.results.connections, 10);
    assert_eq!(r.results.errors, 0);
    // 10 sessions x 10 events/s over 0.8 s: about 80 updates, each answered.
    assert!(r.results.operations >= 40, "{:?}", r.results);
    assert!(r.results.bytes_down > r.results.bytes_up, "{:?}", r.results);
}

fn tempfile_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    std::fs::create_dir_all(dir.path().join("sink")).unwrap();
    dir
}
