//! Probe tests against real loopback sockets.

use std::time::{Duration, Instant};

use super::*;
use crate::health::spec::StatusMatch;
use crate::health::test_support::{
    answer_http, any_port, closed_port, say_nothing, Server, StuckListener, TestPki,
};

const TIMEOUT: Duration = Duration::from_millis(300);

fn http(expect: &str) -> CheckKind {
    CheckKind::Http {
        path: "/health".into(),
        host: None,
        expect: expect.parse::<StatusMatch>().expect("valid status match"),
        tls: None,
    }
}

fn http_server(response: &'static [u8]) -> Server {
    Server::start(any_port(), move |mut s| answer_http(&mut s, response))
}

/// Runs a probe and returns its outcome and how long it took.
fn timed(addr: SocketAddr, kind: &CheckKind, timeout: Duration) -> (ProbeOutcome, Duration) {
    let start = Instant::now();
    let outcome = probe(addr, kind, timeout);
    (outcome, start.elapsed())
}

/// A timed-out probe must end after its budget, but not long after.
fn assert_timeout(outcome: ProbeOutcome, took: Duration, stage: Stage) {
    println!("timeout at {stage}: {outcome} after {took:?}");
    assert_eq!(outcome, ProbeOutcome::Failed(ProbeFailure::Timeout(stage)));
    assert!(took >= TIMEOUT - Duration::from_millis(20), "{took:?}");
    assert!(took < TIMEOUT + Duration::from_millis(500), "{took:?}");
}

#[test]
fn tcp_ok_when_listening() {
    let server = Server::start(any_port(), |_| {});
    assert_eq!(probe(server.addr, &CheckKind::Tcp, TIMEOUT), ProbeOutcome::Ok);
}

#[test]
fn tcp_refused_when_nothing_listens() {
    let (outcome, took) = timed(closed_port(), &CheckKind::Tcp, TIMEOUT);
    assert_eq!(outcome, ProbeOutcome::Failed(ProbeFailure::Refused));
    assert!(took < TIMEOUT, "refusal is immediate, took {took:?}");
}

#[test]
fn tcp_times_out_when_accept_queue_is_full() {
    let stuck = StuckListener::new(true);
    let (outcome, took) = timed(stuck.addr, &CheckKind::Tcp, TIMEOUT);
    assert_timeout(outcome, took, Stage::Connect);
}

#[test]
fn http_ok_on_200() {
    let server = http_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(probe(server.addr, &http("200-399"), TIMEOUT), ProbeOutcome::Ok);
}

#[test]
fn http_fails_on_503() {
    let server = http_server(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        probe(server.addr, &http("200-399"), TIMEOUT),
        ProbeOutcome::Failed(ProbeFailure::HttpStatus(503))
    );
    // The same answer passes when the check expects it.
    assert_eq!(probe(server.addr, &http("200,503"), TIMEOUT), ProbeOutcome::Ok);
}

#[test]
fn http_sends_path_host_and_close() {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let tx = std::sync::Mutex::new(tx);
    let server = Server::start(any_port(), move |mut s| {
        use std::io::{Read, Write};
        let mut buf = vec![0u8; 4096];
        let mut len = 0;
        while !buf[..len].ends_with(b"\r\n\r\n") && len < buf.len() {
            match s.read(&mut buf[len..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
        }
        let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
        let _ = tx.lock().expect("test mutex").send(buf[..len].to_vec());
    });
    assert_eq!(probe(server.addr, &http("204"), TIMEOUT), ProbeOutcome::Ok);
    let head = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("server saw a request");
    let head = String::from_utf8(head).expect("ascii request");
    assert!(head.starts_with("GET /health HTTP/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("\r\nHost: {}\r\n", server.addr)), "{head}");
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
}

#[test]
fn http_malformed_answer() {
    let server = http_server(b"SSH-2.0-OpenSSH_9.2\r\n");
    let outcome = probe(server.addr, &http("200"), TIMEOUT);
    assert!(
        matches!(outcome, ProbeOutcome::Failed(ProbeFailure::HttpMalformed(_))),
        "{outcome:?}"
    );
}

#[test]
fn http_closed_without_answer() {
    let server = Server::start(any_port(), |mut s| answer_http(&mut s, b""));
    assert_eq!(
        probe(server.addr, &http("200"), TIMEOUT),
        ProbeOutcome::Failed(ProbeFailure::Closed)
    );
}

#[test]
fn http_endless_header_is_bounded() {
    // 32 KiB with no line end: the probe stops at its 16 KiB bound.
    static BIG: [u8; 32 * 1024] = [b'a'; 32 * 1024];
    let server = http_server(&BIG);
    let outcome = probe(server.addr, &http("200"), TIMEOUT);
    assert!(
        matches!(outcome, ProbeOutcome::Failed(ProbeFailure::HttpMalformed(_))),
        "{outcome:?}"
    );
}

#[test]
fn http_times_out_when_backend_accepts_and_never_answers() {
    let server = Server::start(any_port(), say_nothing);
    let (outcome, took) = timed(server.addr, &http("200"), TIMEOUT);
    assert_timeout(outcome, took, Stage::Read);
}

#[test]
fn http_times_out_when_backend_is_stopped() {
    // A stopped process: the kernel completes the handshake into the queue, nobody reads.
    let stuck = StuckListener::new(false);
    let (outcome, took) = timed(stuck.addr, &http("200"), TIMEOUT);
    assert_timeout(outcome, took, Stage::Read);
}

#[test]
fn http_trickling_backend_is_bounded_by_the_total_timeout() {
    // One byte every 50 ms: every single read succeeds, the whole probe still times out.
    let server = Server::start(any_port(), |mut s| {
        use std::io::Write;
        for b in b"HTTP/1.1 200 OK\r\n".iter().cycle().take(200) {
            if s.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    // 17 bytes of status line take 850 ms; the budget is 300 ms.
    let (outcome, took) = timed(server.addr, &http("200"), TIMEOUT);
    assert_timeout(outcome, took, Stage::Read);
}

#[test]
fn tls_ok_with_ca_file_and_with_skip_verify() {
    let pki = TestPki::new();
    let server = pki.server(None);
    for (name, verify) in [
        (None, TlsVerify::CaFile(pki.ca_file.clone())),
        (Some("backend.test"), TlsVerify::CaFile(pki.ca_file.clone())),
        (Some("other.test"), TlsVerify::InsecureSkipVerify),
        (None, TlsVerify::InsecureSkipVerify),
    ] {
        let kind = CheckKind::Tls {
            server_name: name.map(str::to_string),
            verify,
        };
        assert_eq!(probe(server.addr, &kind, TIMEOUT), ProbeOutcome::Ok, "{kind:?}");
    }
}

#[test]
fn tls_fails_with_the_wrong_ca_or_name() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let server = pki.server(None);
    for (name, ca) in [
        (None, other.ca_file.clone()),
        (Some("other.test"), pki.ca_file.clone()),
    ] {
        let kind = CheckKind::Tls {
            server_name: name.map(str::to_string),
            verify: TlsVerify::CaFile(ca),
        };
        let outcome = probe(server.addr, &kind, TIMEOUT);
        println!("{kind:?}: {outcome}");
        assert!(
            matches!(&outcome, ProbeOutcome::Failed(ProbeFailure::Tls(msg)) if msg.contains("certificate")),
            "{outcome:?}"
        );
    }
}

#[test]
fn tls_fails_against_a_plain_server() {
    // A plain server that speaks first, as an HTTP or SSH server on the wrong port would.
    let server = Server::start(any_port(), |mut s| {
        use std::io::Write;
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        say_nothing(s);
    });
    let kind = CheckKind::Tls {
        server_name: None,
        verify: TlsVerify::InsecureSkipVerify,
    };
    let outcome = probe(server.addr, &kind, TIMEOUT);
    println!("{outcome}");
    assert!(
        matches!(outcome, ProbeOutcome::Failed(ProbeFailure::Tls(_))),
        "{outcome:?}"
    );
}

#[test]
fn tls_times_out_when_backend_is_stopped() {
    let stuck = StuckListener::new(false);
    let kind = CheckKind::Tls {
        server_name: None,
        verify: TlsVerify::InsecureSkipVerify,
    };
    let (outcome, took) = timed(stuck.addr, &kind, TIMEOUT);
    assert_timeout(outcome, took, Stage::Tls);
}

#[test]
fn https_ok_and_status_checked() {
    let pki = TestPki::new();
    let ok = pki.server(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    let down = pki.server(Some(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"));
    let kind = CheckKind::Http {
        path: "/".into(),
        host: None,
        expect: StatusMatch::default(),
        tls: Some((
            Some("backend.test".into()),
            TlsVerify::CaFile(pki.ca_file.clone()),
        )),
    };
    assert_eq!(probe(ok.addr, &kind, TIMEOUT), ProbeOutcome::Ok);
    assert_eq!(
        probe(down.addr, &kind, TIMEOUT),
        ProbeOutcome::Failed(ProbeFailure::HttpStatus(503))
    );
}

#[test]
fn missing_ca_file_fails_as_tls() {
    let server = Server::start(any_port(), |_| {});
    let kind = CheckKind::Tls {
        server_name: None,
        verify: TlsVerify::CaFile("/nonexistent/ca.pem".into()),
    };
    assert!(matches!(
        probe(server.addr, &kind, TIMEOUT),
        ProbeOutcome::Failed(ProbeFailure::Tls(_))
    ));
}

#[test]
fn invalid_http_path_fails_without_connecting() {
    // Nothing listens: a connect attempt would come back as Refused, not Io.
    let kind = CheckKind::Http {
        path: "/a\r\nX: y".into(),
        host: None,
        expect: StatusMatch::default(),
        tls: None,
    };
    assert!(matches!(
        probe(closed_port(), &kind, TIMEOUT),
        ProbeOutcome::Failed(ProbeFailure::Io(_))
    ));
}

#[test]
fn a_send_proxy_probe_starts_with_a_proxy_v2_local_header() {
    use crate::proxy_protocol::{parse, Parsed};
    // A backend that, like a gateway listener with accept_proxy_from, answers only after a
    // PROXY v2 header and closes on anything else.
    let server = Server::start(any_port(), |mut s| {
        let mut buf = [0u8; 16];
        if s.read_exact(&mut buf).is_err() {
            return;
        }
        match parse(&buf) {
            Ok(Parsed::Complete { header, .. }) if header.source().is_none() => {
                answer_http(&mut s, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            }
            _ => {}
        }
    });
    let kind = http("200");
    let with = probe_with(server.addr, &kind, None, TIMEOUT, true);
    let without = probe_with(server.addr, &kind, None, TIMEOUT, false);
    println!("send_proxy probe: with {with}, without {without}");
    assert_eq!(with, ProbeOutcome::Ok);
    assert_ne!(without, ProbeOutcome::Ok);
    server.stop();
}
