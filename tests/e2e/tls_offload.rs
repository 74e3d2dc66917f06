//! TLS offload end to end: `openssl s_client` (TLS 1.2 and 1.3, SNI, chain verification)
//! and `curl` through an offloading listener, the first-start self-signed certificate, the
//! refusals counted by reason, a 20 MB checksummed transfer each way with TLS half-close,
//! `gatehouse check` on an expired certificate, and SIGHUP swapping certificates.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::common::*;

/// Whether an external tool is installed; under CI=true a missing tool fails the test,
/// elsewhere the test is skipped loudly.
pub fn have_tool(name: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{name} is required under CI=true but is not installed");
        }
        eprintln!("SKIPPED: {name} is not installed");
    }
    found
}

/// What one `openssl s_client` run printed and how it ended.
pub struct SClient {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `openssl s_client` against `addr` with `args`, sends `input` (if any), waits a moment
/// for the answer, then closes stdin (s_client then sends close_notify and exits).
pub fn s_client(addr: SocketAddr, args: &[&str], input: Option<&[u8]>) -> SClient {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start openssl s_client");
    {
        let mut stdin = child.stdin.take().unwrap();
        if let Some(bytes) = input {
            let _ = stdin.write_all(bytes);
            std::thread::sleep(Duration::from_millis(700));
        }
    }
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let start = Instant::now();
    while !waiter.is_finished() {
        if start.elapsed() > Duration::from_secs(15) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = waiter.join().unwrap().expect("s_client output");
    SClient {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The `subject=` line s_client printed.
pub fn subject(out: &SClient) -> String {
    out.stdout
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_string()
}

fn offload_config(
    admin: SocketAddr,
    listen: SocketAddr,
    backend: SocketAddr,
    listener_extra: &str,
    state: &Path,
) -> String {
    config_full(
        admin,
        listen,
        2,
        &format!("state_dir = \"{}\"", state.display()),
        "",
        &format!("tls = \"offload\"\nhandshake_timeout = \"2s\"\n{listener_extra}"),
        &[("be", backend, "")],
    )
}

fn two_certs(ca: &TestCa) -> String {
    let (ac, ak) = ca.leaf("a.test");
    let (bc, bk) = ca.leaf("b.test");
    format!(
        "certificates = [\n  {{ cert = \"{}\", key = \"{}\", default = true }},\n  {{ cert = \"{}\", key = \"{}\" }},\n]",
        ac.display(),
        ak.display(),
        bc.display(),
        bk.display()
    )
}

#[test]
fn s_client_tls12_tls13_sni_and_verify_through_offload() {
    if !have_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "Offload Test CA");
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let g = Gatehouse::start(
        &offload_config(admin, listen, echo.addr, &two_certs(&ca), dir.path()),
        admin,
    );
    let ca_file = ca.ca_file.display().to_string();
    for (version, name, proto) in [
        ("-tls1_2", "a.test", "TLSv1.2"),
        ("-tls1_3", "a.test", "TLSv1.3"),
        ("-tls1_2", "b.test", "TLSv1.2"),
        ("-tls1_3", "b.test", "TLSv1.3"),
    ] {
        let marker = format!("ping-{version}-{name}\n");
        let out = s_client(
            listen,
            &[
                version,
                "-servername",
                name,
                "-CAfile",
                &ca_file,
                "-verify_return_error",
                "-verify_hostname",
                name,
            ],
            Some(marker.as_bytes()),
        );
        assert!(
            out.success,
            "{version} {name}: s_client failed\n{}\n{}",
            out.stdout, out.stderr
        );
        assert!(
            out.stdout.contains("Verify return code: 0 (ok)"),
            "{version} {name}: {}",
            out.stdout
        );
        assert!(
            subject(&out).contains(&format!("CN = {name}")),
            "{version}: {}",
            subject(&out)
        );
        assert!(
            out.stdout.contains(proto),
            "{version}: protocol not {proto}: {}",
            out.stdout
        );
        assert!(
            out.stdout.contains(marker.trim()),
            "{version} {name}: the echo did not come back: {}",
            out.stdout
        );
    }
    // No SNI: the default certificate.
    let out = s_client(listen, &["-noservername", "-CAfile", &ca_file], None);
    assert!(subject(&out).contains("CN = a.test"), "{}", subject(&out));
    assert!(
        g.wait_metric(
            "gatehouse_connections_closed_total{reason=\"done\"}",
            5.0,
            Duration::from_secs(5)
        ) >= 5.0
    );
    g.assert_nothing_held();
}

#[test]
fn the_server_picks_aes128_unless_the_client_leads_with_chacha20() {
    if !have_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "Suite Test CA");
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let _g = Gatehouse::start(
        &offload_config(admin, listen, echo.addr, &two_certs(&ca), dir.path()),
        admin,
    );
    // OpenSSL's client leads with AES-256 (TLS_AES_256_GCM_SHA384, ECDHE-*-AES256-GCM-SHA384).
    for (args, cipher) in [
        (&["-tls1_3"][..], "Cipher is TLS_AES_128_GCM_SHA256"),
        (&["-tls1_2"][..], "AES128-GCM-SHA256"),
        (
            &[
                "-tls1_3",
                "-ciphersuites",
                "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
            ][..],
            "Cipher is TLS_CHACHA20_POLY1305_SHA256",
        ),
        (
            &[
                "-tls1_2",
                "-cipher",
                "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256",
            ][..],
            "CHACHA20-POLY1305",
        ),
    ] {
        let mut all = vec!["-servername", "a.test"];
        all.extend_from_slice(args);
        let out = s_client(listen, &all, Some(b"suite-ping\n"));
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains("Cipher is"))
            .unwrap_or("no cipher line");
        println!("{args:?}: {line}");
        assert!(
            out.success && line.contains(cipher),
            "{args:?}: want {cipher}\n{}\n{}",
            out.stdout,
            out.stderr
        );
    }
}

#[test]
fn curl_through_offload_to_http_backend() {
    if !have_tool("curl") || !have_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello from the http backend\n").unwrap();
    let port = free_port();
    let backend: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let http = Proc {
        child: Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()])
            .current_dir(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server"),
    };
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect(backend).is_ok()),
        "http.server did not start"
    );
    let ca = TestCa::new(dir.path(), "Curl Test CA");
    let (admin, listen) = addrs();
    let g = Gatehouse::start(
        &offload_config(admin, listen, backend, &two_certs(&ca), dir.path()),
        admin,
    );
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca.ca_file)
        .arg("--resolve")
        .arg(format!("b.test:{}:127.0.0.1", listen.port()))
        .arg(format!("https://b.test:{}/hello.txt", listen.port()))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the http backend\n"
    );
    drop(http);
    drop(g);
}

#[test]
fn first_start_makes_a_self_signed_certificate_and_reuses_it() {
    if !have_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let config = offload_config(admin, listen, echo.addr, "", &state);
    let g = Gatehouse::start(&config, admin);
    let cert = state.join("front.crt");
    let key = state.join("front.key");
    assert!(
        cert.exists() && key.exists(),
        "no certificate in {}",
        state.display()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let first = std::fs::read(&cert).unwrap();
    let out = s_client(listen, &["-servername", "localhost"], Some(b"self-signed-ping\n"));
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("self-signed-ping"), "{}", out.stdout);
    assert!(out.stdout.contains("gatehouse self-signed"), "{}", out.stdout);
    drop(g);
    let (admin2, listen2) = addrs();
    let config2 = offload_config(admin2, listen2, echo.addr, "", &state);
    let g2 = Gatehouse::start(&config2, admin2);
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        first,
        "the certificate was not reused"
    );
    assert!(
        g2.log().contains("reusing the self-signed certificate"),
        "{}",
        g2.log()
    );
}

/// Bytes of a ClientHello's start: a handshake record of 200 bytes announcing a ClientHello.
const HELLO_START: [u8; 11] = [0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03];

fn refused(g: &Gatehouse, reason: &str) -> f64 {
    g.metric(&format!("gatehouse_tls_refused_total{{reason=\"{reason}\"}}"))
}

#[test]
fn bad_clients_are_refused_with_counted_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "Refusal Test CA");
    let (bc, bk) = ca.leaf("b.test");
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    // Only b.test, and strict_sni: no default, so any other name is refused.
    let extra = format!(
        "strict_sni = true\ncertificates = [ {{ cert = \"{}\", key = \"{}\" }} ]",
        bc.display(),
        bk.display()
    );
    let config = offload_config(admin, listen, echo.addr, &extra, dir.path())
        .replace("handshake_timeout = \"2s\"", "handshake_timeout = \"300ms\"");
    let g = Gatehouse::start(&config, admin);

    // Plain bytes to a TLS port.
    let mut s = connect_from(listen, None).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let seen = read_outcome(&mut s, Duration::from_secs(3));
    assert!(matches!(seen, Seen::Eof | Seen::Reset), "plain bytes: {seen:?}");
    assert_eq!(
        g.wait_metric(
            "gatehouse_tls_refused_total{reason=\"not_tls\"}",
            1.0,
            Duration::from_secs(3)
        ),
        1.0
    );

    // A truncated ClientHello (FIN in the middle).
    let mut s = connect_from(listen, None).unwrap();
    s.write_all(&HELLO_START).unwrap();
    s.write_all(&[0u8; 20]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let seen = read_outcome(&mut s, Duration::from_secs(3));
    assert!(matches!(seen, Seen::Eof | Seen::Reset), "truncated: {seen:?}");
    assert_eq!(
        g.wait_metric(
            "gatehouse_tls_refused_total{reason=\"truncated_hello\"}",
            1.0,
            Duration::from_secs(3)
        ),
        1.0
    );

    // An oversized ClientHello (announces 20 KiB).
    let mut s = connect_from(listen, None).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x50, 0x00, 0x03, 0x03])
        .unwrap();
    let seen = read_outcome(&mut s, Duration::from_secs(3));
    assert!(matches!(seen, Seen::Eof | Seen::Reset), "oversized: {seen:?}");
    assert_eq!(
        g.wait_metric(
            "gatehouse_tls_refused_total{reason=\"hello_too_large\"}",
            1.0,
            Duration::from_secs(3)
        ),
        1.0
    );

    // A slow ClientHello: half of it, then nothing until the handshake timeout.
    let started = Instant::now();
    let mut s = connect_from(listen, None).unwrap();
    s.write_all(&HELLO_START).unwrap();
    let seen = read_outcome(&mut s, Duration::from_secs(3));
    let waited = started.elapsed();
    assert!(matches!(seen, Seen::Eof | Seen::Reset), "slow: {seen:?}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "closed after {waited:?}"
    );
    assert_eq!(
        g.wait_metric(
            "gatehouse_tls_refused_total{reason=\"handshake_timeout\"}",
            1.0,
            Duration::from_secs(3)
        ),
        1.0
    );
    assert!(g.closed("handshake_timeout") >= 1.0);

    // An unknown server name with no default certificate.
    if have_tool("openssl") {
        let out = s_client(listen, &["-servername", "nobody.test"], None);
        assert!(
            !out.success || !out.stdout.contains("CN = b.test"),
            "{}",
            out.stdout
        );
        assert_eq!(
            g.wait_metric(
                "gatehouse_tls_refused_total{reason=\"unknown_sni\"}",
                1.0,
                Duration::from_secs(3)
            ),
            1.0
        );
        // The known name still works.
        let out = s_client(
            listen,
            &[
                "-servername",
                "b.test",
                "-CAfile",
                &ca.ca_file.display().to_string(),
            ],
            None,
        );
        assert!(
            out.stdout.contains("Verify return code: 0 (ok)"),
            "{}",
            out.stdout
        );
    }
    assert!(
        g.closed("tls_refused") >= 4.0,
        "tls_refused closes: {}",
        g.closed("tls_refused")
    );
    assert!(g.log().contains("not_tls"), "the refusal is logged");
    assert_eq!(refused(&g, "not_tls"), 1.0);
    g.assert_nothing_held();
}

/// A rustls client connection trusting the CA in `ca_file`, for `name`.
pub fn tls_client(ca_file: &Path, name: &str) -> rustls::ClientConnection {
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    rustls::ClientConnection::new(Arc::new(tls_client_config(ca_file)), server_name).unwrap()
}

/// The configuration of [`tls_client`]: trusts the certificates of `ca_file`.
pub fn tls_client_config(ca_file: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca_file).unwrap();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = gatehouse::tls::provider();
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A TLS client (rustls) that sends `total` seeded bytes while reading the echo, then sends
/// close_notify and reads until the proxy's close_notify. Returns (sent sha, received sha,
/// received bytes, whether close_notify ended the stream).
pub fn tls_pump(
    addr: SocketAddr,
    ca_file: &Path,
    name: &str,
    total: usize,
    seed: u64,
) -> (Vec<u8>, Vec<u8>, usize, bool) {
    let mut conn = tls_client(ca_file, name);
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_nonblocking(true).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut sent_hash, mut recv_hash) = (Sha256::new(), Sha256::new());
    let mut left = total;
    let mut closed_sent = false;
    let mut received = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "transfer stuck after {received} bytes received"
        );
        let mut progress = false;
        if !conn.is_handshaking() && !conn.wants_write() {
            if left > 0 {
                let n = left.min(16 * 1024);
                rng.fill_bytes(&mut chunk[..n]);
                sent_hash.update(&chunk[..n]);
                conn.writer().write_all(&chunk[..n]).unwrap();
                left -= n;
                progress = true;
            } else if !closed_sent {
                conn.send_close_notify();
                closed_sent = true;
                progress = true;
            }
        }
        while conn.wants_write() {
            match conn.write_tls(&mut sock) {
                Ok(_) => progress = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        match conn.read_tls(&mut sock) {
            Ok(0) => {
                let clean = matches!(conn.reader().read(&mut buf), Ok(0));
                return (
                    sent_hash.finalize().to_vec(),
                    recv_hash.finalize().to_vec(),
                    received,
                    clean,
                );
            }
            Ok(_) => {
                progress = true;
                conn.process_new_packets().expect("TLS from the proxy");
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read after {received} bytes: {e}"),
        }
        loop {
            match conn.reader().read(&mut buf) {
                Ok(0) => {
                    return (
                        sent_hash.finalize().to_vec(),
                        recv_hash.finalize().to_vec(),
                        received,
                        true,
                    );
                }
                Ok(n) => {
                    recv_hash.update(&buf[..n]);
                    received += n;
                    progress = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("plaintext read: {e}"),
            }
        }
        if !progress {
            std::thread::sleep(Duration::from_micros(300));
        }
    }
}

#[test]
fn twenty_megabytes_each_way_through_offload_with_tls_half_close() {
    const TOTAL: usize = 20 * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "Integrity Test CA");
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let g = Gatehouse::start(
        &offload_config(admin, listen, echo.addr, &two_certs(&ca), dir.path()),
        admin,
    );
    let start = Instant::now();
    let (sent, got, received, clean) = tls_pump(listen, &ca.ca_file, "a.test", TOTAL, 7);
    println!(
        "tls offload integrity: {} MB each way in {:.2} s, gatehouse CPU {:.2} s",
        TOTAL >> 20,
        start.elapsed().as_secs_f64(),
        g.proc.cpu_seconds()
    );
    assert_eq!(received, TOTAL, "bytes lost or added");
    assert_eq!(sent, got, "checksums differ");
    // The client's close_notify reached the echo as a FIN, the echo's FIN came back as a
    // close_notify: TLS half-close both ways, nothing lost after it.
    assert!(clean, "the stream did not end with close_notify");
    assert_eq!(
        g.wait_metric(
            "gatehouse_bytes_total{direction=\"up\"}",
            TOTAL as f64,
            Duration::from_secs(5)
        ),
        TOTAL as f64
    );
    assert_eq!(g.closed("done"), 1.0);
    g.assert_nothing_held();
}

/// Segments the kernel has received on `sock` (TCP_INFO `tcpi_segs_in`).
fn segments_in(sock: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a tcp_info of `len` bytes and the descriptor is open.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_segs_in
}

#[test]
fn a_backend_fin_reaches_the_client_as_close_notify_and_fin_in_one_segment() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "FIN Test CA");
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let (admin, listen) = addrs();
    let g = Gatehouse::start(
        &offload_config(admin, listen, backend_addr, &two_certs(&ca), dir.path()),
        admin,
    );
    let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
    let host = std::thread::spawn(move || {
        let (mut s, _) = backend.accept().unwrap();
        let mut hi = [0u8; 2];
        s.read_exact(&mut hi).unwrap();
        s.write_all(&hi).unwrap();
        end_rx.recv().unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let mut conn = tls_client(&ca.ca_file, "a.test");
    let mut sock = TcpStream::connect(listen).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(b"hi").unwrap();
    let mut echo = [0u8; 2];
    tls.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"hi");
    // Whatever was due (delayed ACKs) has arrived before the count starts.
    std::thread::sleep(Duration::from_millis(300));
    let before = segments_in(&sock);
    end_tx.send(()).unwrap();
    let mut rest = Vec::new();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let n = tls.read_to_end(&mut rest).expect("a clean end (close_notify)");
    assert_eq!(n, 0, "nothing after the echo");
    std::thread::sleep(Duration::from_millis(100));
    let segments = segments_in(&sock) - before;
    println!("the end of the stream came in {segments} segment(s)");
    assert_eq!(
        segments, 1,
        "close_notify and the FIN should share a segment (one wake-up for the client)"
    );
    drop(conn);
    drop(sock);
    host.join().unwrap();
    let done = "gatehouse_connections_closed_total{reason=\"done\"}";
    assert_eq!(g.wait_metric(done, 1.0, Duration::from_secs(5)), 1.0);
    g.assert_nothing_held();
}

#[test]
fn check_reports_an_expired_certificate_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "Expired Test CA");
    let now = SystemTime::now();
    let (c, k) = ca.leaf_between(
        "old.test",
        now - Duration::from_secs(10 * 86_400),
        now - Duration::from_secs(86_400),
    );
    let (admin, listen) = addrs();
    let extra = format!(
        "certificates = [ {{ cert = \"{}\", key = \"{}\", default = true }} ]",
        c.display(),
        k.display()
    );
    let config = offload_config(admin, listen, "127.0.0.1:9".parse().unwrap(), &extra, dir.path())
        .replace(&format!("\"{listen}\""), "\"127.0.0.1:4433\"")
        .replace(&format!("\"{admin}\""), "\"127.0.0.1:9900\"");
    let path = dir.path().join("expired.toml");
    std::fs::write(&path, &config).unwrap();
    let out = Command::new(bin())
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check accepted an expired certificate");
    let line = config
        .lines()
        .position(|l| l.starts_with("certificates"))
        .unwrap()
        + 1;
    assert!(
        stderr.contains(&format!("{}:{line}:", path.display()))
            && stderr.contains("halb.listener[0].certificates[0].cert")
            && stderr.contains("expired"),
        "{stderr}"
    );
    // A key that belongs to another certificate.
    let (_, other_key) = ca.leaf("other.test");
    let mismatched = config.replace(&k.display().to_string(), &other_key.display().to_string());
    std::fs::write(&path, &mismatched).unwrap();
    let out = Command::new(bin())
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("does not belong"), "{stderr}");
}

#[test]
fn sighup_swaps_certificates_without_touching_sessions() {
    if !have_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "Reload Test CA");
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let (ac, ak) = ca.leaf("a.test");
    let (bc, bk) = ca.leaf("b.test");
    let one = |c: &Path, k: &Path| {
        format!(
            "certificates = [ {{ cert = \"{}\", key = \"{}\", default = true }} ]",
            c.display(),
            k.display()
        )
    };
    let g = Gatehouse::start(
        &offload_config(admin, listen, echo.addr, &one(&ac, &ak), dir.path()),
        admin,
    );
    let out = s_client(listen, &["-noservername"], None);
    assert!(subject(&out).contains("CN = a.test"), "{}", subject(&out));
    // A session established before the reload keeps working after it.
    let sock = TcpStream::connect(listen).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut before = rustls::StreamOwned::new(tls_client(&ca.ca_file, "a.test"), sock);
    before.write_all(b"before reload\n").unwrap();
    let mut back = [0u8; 14];
    before.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"before reload\n");
    g.rewrite_config(&offload_config(
        admin,
        listen,
        echo.addr,
        &one(&bc, &bk),
        dir.path(),
    ));
    g.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        g.wait_metric(
            "gatehouse_reloads_total{result=\"ok\"}",
            1.0,
            Duration::from_secs(5)
        ) >= 1.0
    );
    let out = s_client(listen, &["-noservername"], None);
    assert!(
        subject(&out).contains("CN = b.test"),
        "after reload: {}",
        subject(&out)
    );
    before.write_all(b"after reload!\n").unwrap();
    before.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"after reload!\n", "the established session was touched");
    assert_eq!(g.metric("gatehouse_connections_active"), 1.0);
}

#[test]
fn check_reports_unknown_cipher_and_group_names() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[node]\nstate_dir = \"{}\"\n[halb]\n[[halb.listener]]\nname = \"f\"\nbind = \"127.0.0.1:4433\"\npool = \"p\"\ntls = \"offload\"\nciphers = [\"TLS_AES_128_GCM_SHA256\", \"TLS_NOPE\"]\nkx_groups = [\"X25519\"]\n[[halb.pool]]\nname = \"p\"\nbackends = [ {{ address = \"127.0.0.1:9\" }} ]\n",
        dir.path().display()
    );
    let path = dir.path().join("ciphers.toml");
    std::fs::write(&path, &config).unwrap();
    let out = Command::new(bin())
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unknown cipher passed check");
    assert!(
        stderr.contains("halb.listener[0].ciphers") && stderr.contains("TLS_NOPE"),
        "{stderr}"
    );
    std::fs::write(
        &path,
        config
            .replace("\"TLS_NOPE\"", "\"TLS_AES_256_GCM_SHA384\"")
            .replace("X25519", "X99"),
    )
    .unwrap();
    let out = Command::new(bin())
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("halb.listener[0].kx_groups"), "{stderr}");
    std::fs::write(&path, config.replace(", \"TLS_NOPE\"", "")).unwrap();
    let out = Command::new(bin())
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_silent_untrusted_client_gets_one_handshake_timeout_not_two() {
    let dir = tempfile::tempdir().unwrap();
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    // 127.0.0.1 must send PROXY headers; 127.0.0.2 is an ordinary client that says nothing.
    let config = offload_config(
        admin,
        listen,
        echo.addr,
        "accept_proxy_from = [\"127.0.0.1/32\"]",
        dir.path(),
    )
    .replace("handshake_timeout = \"2s\"", "handshake_timeout = \"700ms\"");
    let g = Gatehouse::start(&config, admin);
    let started = Instant::now();
    let mut s = connect_from(listen, Some("127.0.0.2".parse().unwrap())).unwrap();
    let seen = read_outcome(&mut s, Duration::from_secs(5));
    let waited = started.elapsed();
    println!("silent untrusted client: {seen:?} after {waited:?} (handshake_timeout 700ms)");
    assert!(matches!(seen, Seen::Eof | Seen::Reset), "{seen:?}");
    assert!(
        waited >= Duration::from_millis(650) && waited < Duration::from_millis(1300),
        "closed after {waited:?}, want one 700 ms budget"
    );
    assert!(g.closed("handshake_timeout") >= 1.0);
}

#[test]
fn without_default_the_first_certificate_serves_clients_without_sni() {
    if !have_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "First Default CA");
    let (ac, ak) = ca.leaf("a.test");
    let (bc, bk) = ca.leaf("b.test");
    // b.test listed first, no `default = true`: it is the default, as in HAProxy.
    let list = format!(
        "certificates = [ {{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }} ]",
        bc.display(),
        bk.display(),
        ac.display(),
        ak.display()
    );
    let echo = EchoServer::start(None);
    let ca_file = ca.ca_file.display().to_string();
    for strict in [false, true] {
        let (admin, listen) = addrs();
        let extra = if strict {
            format!("strict_sni = true\n{list}")
        } else {
            list.clone()
        };
        let g = Gatehouse::start(
            &offload_config(admin, listen, echo.addr, &extra, dir.path()),
            admin,
        );
        let out = s_client(listen, &["-noservername", "-CAfile", &ca_file], None);
        println!("strict_sni = {strict}, no SNI: {}", subject(&out));
        if strict {
            assert!(!subject(&out).contains("CN ="), "served {}", subject(&out));
            assert_eq!(
                g.wait_metric(
                    "gatehouse_tls_refused_total{reason=\"no_sni_no_default\"}",
                    1.0,
                    Duration::from_secs(3)
                ),
                1.0
            );
        } else {
            assert!(subject(&out).contains("CN = b.test"), "{}", subject(&out));
            assert!(
                out.stdout.contains("Verify return code: 0 (ok)"),
                "{}",
                out.stdout
            );
        }
        // A named client still gets its own certificate either way.
        let out = s_client(listen, &["-servername", "a.test", "-CAfile", &ca_file], None);
        assert!(subject(&out).contains("CN = a.test"), "{}", subject(&out));
    }
}
