//! Integrity: random bytes through the proxy both ways at once, checksums compared.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::common::*;

const BIG: usize = 100 * 1024 * 1024;

/// What one connection carried.
struct Pumped {
    sent_sha: Vec<u8>,
    received_sha: Vec<u8>,
    received: usize,
}

/// Sends `total` seeded random bytes to `target` while reading the echo back at the same
/// time; half-closes after sending and reads to EOF.
fn pump(target: SocketAddr, total: usize, seed: u64) -> Pumped {
    let stream = connect_from(target, None).expect("connect through gatehouse");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut hash = Sha256::new();
        let mut chunk = vec![0u8; 256 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len());
            rng.fill_bytes(&mut chunk[..n]);
            hash.update(&chunk[..n]);
            writer.write_all(&chunk[..n]).expect("write through gatehouse");
            left -= n;
        }
        writer.shutdown(Shutdown::Write).unwrap();
        hash.finalize().to_vec()
    });
    let mut reader = stream;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                received += n;
            }
            Err(e) => panic!("read through gatehouse after {received} bytes: {e}"),
        }
    }
    Pumped {
        sent_sha: sender.join().expect("sender thread"),
        received_sha: hash.finalize().to_vec(),
        received,
    }
}

fn big_transfer(splice: bool) {
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let extra = format!("splice = {splice}");
    let g = Gatehouse::start(
        &simple_config(admin, listen, "", &extra, &[("echo", echo.addr)]),
        admin,
    );
    let start = Instant::now();
    let p = pump(listen, BIG, 42);
    let secs = start.elapsed().as_secs_f64();
    let spliced = g.metric("gatehouse_spliced_bytes_total");
    println!(
        "integrity splice={splice}: {} MB each way in {secs:.2} s ({:.0} MB/s each way), spliced bytes {spliced}, gatehouse CPU {:.2} s",
        BIG >> 20,
        (BIG >> 20) as f64 / secs,
        g.proc.cpu_seconds()
    );
    assert_eq!(p.received, BIG, "bytes echoed back");
    assert_eq!(p.sent_sha, p.received_sha, "SHA-256 of sent and received differ");
    if splice {
        assert!(spliced > 0.0, "splice = true moved no bytes with splice(2)");
    } else {
        assert_eq!(spliced, 0.0, "splice = false still used splice(2)");
    }
    let up = g.metric("gatehouse_bytes_total{direction=\"up\"}");
    let down = g.metric("gatehouse_bytes_total{direction=\"down\"}");
    println!("integrity splice={splice}: metrics bytes up {up}, down {down}");
}

#[test]
fn hundred_mb_each_way_with_splice() {
    big_transfer(true);
}

#[test]
fn hundred_mb_each_way_without_splice() {
    big_transfer(false);
}

#[test]
fn fifty_concurrent_connections_two_mb_each_way() {
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let g = Gatehouse::start(
        &simple_config(admin, listen, "", "", &[("echo", echo.addr)]),
        admin,
    );
    let start = Instant::now();
    let threads: Vec<_> = (0..50u64)
        .map(|i| std::thread::spawn(move || pump(listen, 2 * 1024 * 1024, 1000 + i)))
        .collect();
    let mut bad = 0;
    for (i, t) in threads.into_iter().enumerate() {
        let p = t.join().expect("connection thread");
        if p.received != 2 * 1024 * 1024 || p.sent_sha != p.received_sha {
            eprintln!(
                "connection {i}: received {} bytes, checksum match {}",
                p.received,
                p.sent_sha == p.received_sha
            );
            bad += 1;
        }
    }
    println!(
        "integrity concurrent: 50 x 2 MB each way in {:.2} s, {bad} bad",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(bad, 0, "connections with wrong bytes");
    assert!(
        g.wait_metric(
            "gatehouse_connections_closed_total{reason=\"done\"}",
            50.0,
            Duration::from_secs(5)
        ) >= 50.0,
        "50 sessions closed as done"
    );
    g.assert_nothing_held();
}
