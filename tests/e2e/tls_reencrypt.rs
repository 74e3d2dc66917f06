//! Re-encryption end to end: `openssl s_server` backends reached over TLS verified against a
//! CA bundle or a pinned certificate, behind an offloading listener (s_client and curl see
//! our certificate) and behind a plain one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::common::*;
use crate::tls_offload::{have_tool, s_client, subject};

/// An `openssl s_server` for `name` with extra arguments (`-rev`, `-WWW`), started in `cwd`.
fn s_server(ca: &TestCa, name: &str, extra: &[&str], cwd: &Path) -> (Proc, SocketAddr, std::path::PathBuf) {
    let (c, k) = ca.leaf(name);
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new("openssl")
        .arg("s_server")
        .arg("-accept")
        .arg(addr.to_string())
        .arg("-cert")
        .arg(&c)
        .arg("-key")
        .arg(&k)
        .args(extra)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let p = Proc { child };
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
        "s_server for {name} did not start"
    );
    (p, addr, c)
}

fn config(
    admin: SocketAddr,
    listen: SocketAddr,
    backend: SocketAddr,
    listener_extra: &str,
    pool_tls: &str,
    state: &Path,
) -> String {
    config_full(
        admin,
        listen,
        1,
        &format!("state_dir = \"{}\"", state.display()),
        &format!("tls = {{ {pool_tls} }}"),
        listener_extra,
        &[("tlsbe", backend, "")],
    )
}

fn certificate(ca: &TestCa, name: &str) -> String {
    let (c, k) = ca.leaf(name);
    format!(
        "tls = \"offload\"\ncertificates = [ {{ cert = \"{}\", key = \"{}\", default = true }} ]",
        c.display(),
        k.display()
    )
}

#[test]
fn s_client_sees_our_certificate_and_the_backend_is_reached_over_tls() {
    if !have_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "Reencrypt Test CA");
    let (_server, backend, _) = s_server(&ca, "backend.test", &["-rev"], dir.path());
    let (admin, listen) = addrs();
    let pool_tls = format!(
        "ca_file = \"{}\", server_name = \"backend.test\"",
        ca.ca_file.display()
    );
    let g = Gatehouse::start(
        &config(
            admin,
            listen,
            backend,
            &certificate(&ca, "front.test"),
            &pool_tls,
            dir.path(),
        ),
        admin,
    );
    let out = s_client(
        listen,
        &[
            "-servername",
            "front.test",
            "-CAfile",
            &ca.ca_file.display().to_string(),
        ],
        Some(b"reencrypted\n"),
    );
    assert!(
        out.stdout.contains("Verify return code: 0 (ok)"),
        "{}",
        out.stdout
    );
    assert!(
        subject(&out).contains("CN = front.test"),
        "we terminate: {}",
        subject(&out)
    );
    assert!(
        out.stdout.contains("detpyrcneer"),
        "the backend (s_server -rev) answered over TLS: {}\n{}",
        out.stdout,
        g.log()
    );
}

#[test]
fn curl_through_a_reencrypting_listener() {
    if !have_tool("openssl") || !have_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello over two TLS hops\n").unwrap();
    let ca = TestCa::new(dir.path(), "Curl Reencrypt CA");
    let (_server, backend, _) = s_server(&ca, "backend.test", &["-WWW"], &www);
    let (admin, listen) = addrs();
    let pool_tls = format!(
        "ca_file = \"{}\", server_name = \"backend.test\"",
        ca.ca_file.display()
    );
    let _g = Gatehouse::start(
        &config(
            admin,
            listen,
            backend,
            &certificate(&ca, "front.test"),
            &pool_tls,
            dir.path(),
        ),
        admin,
    );
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca.ca_file)
        .arg("--resolve")
        .arg(format!("front.test:{}:127.0.0.1", listen.port()))
        .arg(format!("https://front.test:{}/hello.txt", listen.port()))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello over two TLS hops\n");
}

#[test]
fn pinned_certificate_is_required_and_enough() {
    if !have_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "Pin Test CA");
    let (_server, backend, cert) = s_server(&ca, "pinned.test", &["-rev"], dir.path());
    let pem = std::fs::read(&cert).unwrap();
    let der = rustls_pemfile::certs(&mut &pem[..]).next().unwrap().unwrap();
    let pin: Vec<String> = Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    let pin = pin.join(":");

    // The right pin: a plain client reaches the TLS backend.
    let (admin, listen) = addrs();
    let g = Gatehouse::start(
        &config(
            admin,
            listen,
            backend,
            "",
            &format!("pin_sha256 = \"{pin}\""),
            dir.path(),
        ),
        admin,
    );
    let mut c = connect_from(listen, None).unwrap();
    c.write_all(b"abc\n").unwrap();
    let mut back = [0u8; 4];
    c.read_exact(&mut back).expect("the backend's answer");
    assert_eq!(&back, b"cba\n");
    drop(c);
    drop(g);

    // A wrong pin: refused at the backend's handshake, counted.
    let (admin, listen) = addrs();
    let wrong = "00".repeat(32);
    let g = Gatehouse::start(
        &config(
            admin,
            listen,
            backend,
            "",
            &format!("pin_sha256 = \"{wrong}\""),
            dir.path(),
        ),
        admin,
    );
    let seen = send_and_see(listen, b"abc\n", Duration::from_secs(5));
    assert!(matches!(seen, Seen::Eof | Seen::Reset), "{seen:?}");
    assert_eq!(
        g.wait_metric(
            "gatehouse_connections_closed_total{reason=\"backend_tls_error\"}",
            1.0,
            Duration::from_secs(3)
        ),
        1.0,
        "{}",
        g.log()
    );
    assert!(g.log().contains("pin_sha256"), "the log says why");
}

/// A TLS echo backend (rustls, one thread per connection) with a certificate for `name`;
/// answers a close_notify with its own.
/// A rustls server configuration with a leaf for `name` signed by `ca`.
fn tls_server_config(ca: &TestCa, name: &str) -> std::sync::Arc<rustls::ServerConfig> {
    let (c, k) = ca.leaf(name);
    let certs: Vec<_> = rustls_pemfile::certs(&mut &std::fs::read(&c).unwrap()[..])
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pemfile::private_key(&mut &std::fs::read(&k).unwrap()[..])
        .unwrap()
        .unwrap();
    std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(gatehouse::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    )
}

fn tls_echo(ca: &TestCa, name: &str) -> SocketAddr {
    let config = tls_server_config(ca, name);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(sock) = conn else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut s = rustls::StreamOwned::new(conn, sock);
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                s.conn.send_close_notify();
                let _ = s.flush();
                let _ = s.sock.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

#[test]
fn twenty_megabytes_each_way_through_offload_and_reencryption() {
    const TOTAL: usize = 20 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "Double TLS CA");
    let backend = tls_echo(&ca, "echo.test");
    let (admin, listen) = addrs();
    let pool_tls = format!(
        "ca_file = \"{}\", server_name = \"echo.test\"",
        ca.ca_file.display()
    );
    let g = Gatehouse::start(
        &config(
            admin,
            listen,
            backend,
            &certificate(&ca, "front.test"),
            &pool_tls,
            dir.path(),
        ),
        admin,
    );
    let start = std::time::Instant::now();
    let (sent, got, received, clean) =
        crate::tls_offload::tls_pump(listen, &ca.ca_file, "front.test", TOTAL, 11);
    println!(
        "offload + re-encryption integrity: {} MB each way in {:.2} s, gatehouse CPU {:.2} s",
        TOTAL >> 20,
        start.elapsed().as_secs_f64(),
        g.proc.cpu_seconds()
    );
    assert_eq!(received, TOTAL, "bytes lost or added");
    assert_eq!(sent, got, "checksums differ");
    assert!(clean, "close_notify crossed both TLS hops");
    assert_eq!(g.closed("done"), 1.0, "{}", g.log());
    g.assert_nothing_held();
}

/// A node with a plain listener in front of `backend` reached over TLS without verification.
fn plain_to_unverified_tls(
    backend: SocketAddr,
    connect_timeout: &str,
    state: &Path,
) -> (Gatehouse, SocketAddr) {
    let (admin, listen) = addrs();
    let listener = format!("connect_timeout = \"{connect_timeout}\"");
    let text = config(
        admin,
        listen,
        backend,
        &listener,
        "insecure_skip_verify = true",
        state,
    );
    (Gatehouse::start(&text, admin), listen)
}

/// Sends `request` through `listen`; what the client then saw, and after how long.
fn one_request(listen: SocketAddr, request: &[u8], wait: Duration) -> (Seen, Duration) {
    let start = std::time::Instant::now();
    let mut c = connect_from(listen, None).unwrap();
    c.write_all(request).unwrap();
    let seen = read_outcome(&mut c, wait);
    (seen, start.elapsed())
}

#[test]
fn a_silent_tls_backend_is_bounded_by_the_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // Accepts, then never answers the ClientHello.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = silent.local_addr().unwrap();
    let held = std::thread::spawn(move || silent.accept().map(|(s, _)| s));
    let (g, listen) = plain_to_unverified_tls(backend, "300ms", dir.path());
    let (seen, waited) = one_request(listen, b"anyone there?\n", Duration::from_secs(5));
    assert!(matches!(seen, Seen::Eof | Seen::Reset), "{seen:?}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(g.closed("backend_tls_error"), 1.0, "{}", g.log());
    drop(held);
}

#[test]
fn a_backend_that_closes_during_the_handshake_is_a_tls_error_at_once() {
    // Reads the ClientHello and closes (not TLS, or it refused us): the client must not see
    // a clean end, and the session must not wait for the connect timeout to say why.
    let dir = tempfile::tempdir().unwrap();
    let closer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = closer.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = closer.accept() {
            let _ = s.read(&mut [0u8; 4096]);
        }
    });
    let (g, listen) = plain_to_unverified_tls(backend, "5s", dir.path());
    let (seen, waited) = one_request(listen, b"request\n", Duration::from_secs(8));
    println!("backend closed during the handshake: client saw {seen:?} after {waited:?}");
    assert_eq!(seen, Seen::Reset, "a clean end would say the request was served");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert_eq!(g.closed("backend_tls_error"), 1.0, "{}", g.log());
    assert!(g.log().contains("closed during the TLS handshake"), "{}", g.log());
}

#[test]
fn a_tls_backend_that_ends_without_close_notify_is_not_vouched_for() {
    // Offload and re-encryption: the backend's stream ends with a FIN and no close_notify (a
    // crash, a cut). The client must not get a close_notify that says the answer is whole.
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "Truncation CA");
    let server = tls_server_config(&ca, "cut.test");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((sock, _)) = listener.accept() {
            let conn = rustls::ServerConnection::new(server).unwrap();
            let mut s = rustls::StreamOwned::new(conn, sock);
            let mut b = [0u8; 5];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(b"partial answer");
                let _ = s.flush();
            }
            let _ = s.sock.shutdown(std::net::Shutdown::Write);
            let _ = s.sock.read_to_end(&mut Vec::new());
        }
    });
    let (admin, listen) = addrs();
    let pool_tls = format!(
        "ca_file = \"{}\", server_name = \"cut.test\"",
        ca.ca_file.display()
    );
    let g = Gatehouse::start(
        &config(
            admin,
            listen,
            backend,
            &certificate(&ca, "front.test"),
            &pool_tls,
            dir.path(),
        ),
        admin,
    );
    let sock = TcpStream::connect(listen).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut s = rustls::StreamOwned::new(crate::tls_offload::tls_client(&ca.ca_file, "front.test"), sock);
    s.write_all(b"hello").unwrap();
    s.flush().unwrap();
    let mut got = Vec::new();
    let end = s.read_to_end(&mut got);
    println!("backend ended without close_notify: client got {got:?}, then {end:?}");
    assert_eq!(got, b"partial answer");
    let err = end.expect_err("a close_notify vouched for a stream cut short");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    drop(s);
    g.assert_nothing_held();
}
