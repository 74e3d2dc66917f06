//! Half-close and reset carried through the proxy.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::common::*;

const ANSWER: usize = 1024 * 1024;
/// Connections of the answer-then-reset tests (the race lost 12 of 20 before the fix).
const ROUNDS: usize = 20;

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn node_for(addr: SocketAddr, splice: bool) -> (Gatehouse, SocketAddr) {
    let (admin, listen) = addrs();
    let extra = format!("splice = {splice}");
    let g = Gatehouse::start(&simple_config(admin, listen, "", &extra, &[("b", addr)]), admin);
    (g, listen)
}

fn client_fin_then_backend_answers_after_eof(splice: bool) {
    let answer = random(ANSWER, 7);
    let expected = Sha256::digest(&answer).to_vec();
    let (addr, got) = backend(move |mut s| {
        let mut request = Vec::new();
        s.read_to_end(&mut request)
            .expect("backend reads the request to EOF");
        s.write_all(&answer).expect("backend answers");
        request
    });
    let (_g, listen) = node_for(addr, splice);
    let mut c = connect_from(listen, None).unwrap();
    c.write_all(b"GET /report HTTP/1.0\r\n\r\n").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let start = Instant::now();
    let mut received = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.read_to_end(&mut received)
        .expect("client reads the answer to EOF");
    println!(
        "half-close splice={splice} client->backend: {} bytes answered after the client's FIN, in {:?}",
        received.len(),
        start.elapsed()
    );
    let request = got
        .recv_timeout(Duration::from_secs(10))
        .expect("backend saw EOF");
    assert_eq!(
        request, b"GET /report HTTP/1.0\r\n\r\n",
        "backend got the request"
    );
    assert_eq!(received.len(), ANSWER, "client got the whole answer");
    assert_eq!(Sha256::digest(&received).to_vec(), expected, "answer intact");
}

fn backend_fin_while_client_keeps_sending(splice: bool) {
    let (addr, got) = backend(|mut s| {
        s.write_all(b"bye\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all)
            .expect("backend keeps reading after its FIN");
        all
    });
    let (_g, listen) = node_for(addr, splice);
    let mut c = connect_from(listen, None).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    c.read_to_end(&mut head).expect("client sees the backend's FIN");
    assert_eq!(head, b"bye\n");
    let data = random(ANSWER, 8);
    c.write_all(&data)
        .expect("client keeps sending after the backend's FIN");
    c.shutdown(Shutdown::Write).unwrap();
    let all = got
        .recv_timeout(Duration::from_secs(10))
        .expect("backend read to EOF");
    println!(
        "half-close splice={splice} backend->client: backend received {} bytes after its own FIN",
        all.len()
    );
    assert_eq!(all.len(), data.len(), "backend got every byte");
    assert!(all == data, "bytes intact");
}

fn backend_reset_reaches_the_client(splice: bool) {
    let (addr, got) = backend(|mut s| {
        let mut b = [0u8; 5];
        let _ = s.read_exact(&mut b);
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
        true
    });
    let (g, listen) = node_for(addr, splice);
    let mut c = connect_from(listen, None).unwrap();
    c.write_all(b"hello").unwrap();
    assert!(
        got.recv_timeout(Duration::from_secs(5)).is_ok(),
        "backend got the bytes"
    );
    let start = Instant::now();
    let seen = read_outcome(&mut c, Duration::from_secs(5));
    println!(
        "reset splice={splice}: client saw {seen:?} after {:?}",
        start.elapsed()
    );
    assert_eq!(seen, Seen::Reset, "client sees ECONNRESET");
    let n = g.wait_metric(
        "gatehouse_connections_closed_total{reason=\"backend_reset\"}",
        1.0,
        Duration::from_secs(3),
    );
    assert_eq!(n, 1.0, "closed{{reason=backend_reset}}");
}

/// A backend that answers and resets at once: its answer and its RST arrive together, and
/// the answer must still reach the client before the reset does (as it would directly).
fn answer_then_reset_arrives_whole(splice: bool) {
    let (addr, answer) = answer_then_reset_backend(ROUNDS);
    let (g, listen) = node_for(addr, splice);
    let cut = (0..ROUNDS)
        .filter(|_| {
            let mut c = connect_from(listen, None).unwrap();
            c.write_all(b"hello").unwrap();
            let got = read_until_end(&mut c);
            got != answer
        })
        .count();
    println!("answer then reset (splice={splice}): {cut} of {ROUNDS} answers cut short");
    assert_eq!(cut, 0, "answers cut short by the reset; log:\n{}", g.log());
}

#[test]
fn answer_then_reset_arrives_whole_copy() {
    answer_then_reset_arrives_whole(false);
}

#[test]
fn answer_then_reset_arrives_whole_splice() {
    answer_then_reset_arrives_whole(true);
}

#[test]
fn client_fin_then_backend_answers_after_eof_splice() {
    client_fin_then_backend_answers_after_eof(true);
}

#[test]
fn client_fin_then_backend_answers_after_eof_copy() {
    client_fin_then_backend_answers_after_eof(false);
}

#[test]
fn backend_fin_while_client_keeps_sending_splice() {
    backend_fin_while_client_keeps_sending(true);
}

#[test]
fn backend_fin_while_client_keeps_sending_copy() {
    backend_fin_while_client_keeps_sending(false);
}

#[test]
fn backend_reset_reaches_the_client_splice() {
    backend_reset_reaches_the_client(true);
}

#[test]
fn backend_reset_reaches_the_client_copy() {
    backend_reset_reaches_the_client(false);
}

#[test]
fn client_reset_reaches_the_backend() {
    let (addr, got) = backend(|mut s| {
        s.write_all(b"ready\n").unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return "eof".to_string(),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return "reset".to_string(),
                Err(e) => return format!("error: {e}"),
            }
        }
    });
    let (g, listen) = node_for(addr, true);
    let mut c = connect_from(listen, None).unwrap();
    let mut ready = [0u8; 6];
    c.read_exact(&mut ready).unwrap();
    c.write_all(b"some bytes").unwrap();
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    let seen = got
        .recv_timeout(Duration::from_secs(5))
        .expect("backend saw the end");
    println!("reset: client reset, backend saw {seen}");
    assert_eq!(seen, "reset", "backend sees ECONNRESET");
    assert_eq!(
        g.wait_metric(
            "gatehouse_connections_closed_total{reason=\"client_reset\"}",
            1.0,
            Duration::from_secs(3)
        ),
        1.0
    );
}
