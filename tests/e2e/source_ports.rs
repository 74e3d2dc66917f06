//! Backend source ports: with `source_ports = "engine"` (the default) each connect to a
//! backend comes from the next 8-port window of the worker's slice of the ephemeral range;
//! `"kernel"` leaves the search to connect(2).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use super::common::*;

/// The kernel's ephemeral range.
fn ephemeral_range() -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let mut it = text.split_whitespace().map(|p| p.parse::<u16>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// Opens `n` connections through the proxy one after the other, each echoed once, and
/// returns the source ports the backend saw, with the connections (held open).
fn source_ports_seen(listen: SocketAddr, backend: &TcpListener, n: usize) -> (Vec<u16>, Vec<TcpStream>) {
    let mut ports = Vec::new();
    let mut held = Vec::new();
    for i in 0..n {
        let mut client = TcpStream::connect(listen).unwrap();
        client.write_all(&[i as u8]).unwrap();
        let (mut accepted, peer) = backend.accept().unwrap();
        accepted.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut byte = [0u8];
        accepted.read_exact(&mut byte).unwrap();
        assert_eq!(byte[0], i as u8);
        ports.push(peer.port());
        held.push(client);
        held.push(accepted);
    }
    (ports, held)
}

#[test]
fn backend_connects_walk_windows_of_the_ephemeral_range() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let (admin, listen) = addrs();
    let config = config_full(
        admin,
        listen,
        1,
        "",
        "",
        "",
        &[("b", backend.local_addr().unwrap(), "")],
    );
    let g = Gatehouse::start(&config, admin);
    let (lo, hi) = ephemeral_range();
    let (ports, _held) = source_ports_seen(listen, &backend, 4);
    println!("source ports seen by the backend: {ports:?} (range {lo}-{hi})");
    let windows = (u32::from(hi) - u32::from(lo) + 1) / 8;
    let window = |p: u16| (u32::from(p) - u32::from(lo)) / 8;
    for pair in ports.windows(2) {
        assert!(pair.iter().all(|p| (lo..=hi).contains(p)), "{ports:?}");
        // The next window, or the one after when another program held all of it.
        let step = (window(pair[1]) + windows - window(pair[0])) % windows;
        assert!((1..=2).contains(&step), "ports {ports:?}: window step {step}");
    }
    assert_eq!(g.metric("gatehouse_source_port_fallbacks_total"), 0.0);
}

#[test]
fn kernel_choice_carries_connections() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let (admin, listen) = addrs();
    let config = config_full(
        admin,
        listen,
        1,
        "source_ports = \"kernel\"",
        "",
        "",
        &[("b", backend.local_addr().unwrap(), "")],
    );
    let g = Gatehouse::start(&config, admin);
    // Which ports the kernel picks is its business (its steps can look like windows);
    // what is ours: the option is accepted and connections are carried.
    let (ports, _held) = source_ports_seen(listen, &backend, 4);
    println!("source ports seen by the backend: {ports:?}");
    assert_eq!(g.metric("gatehouse_source_port_fallbacks_total"), 0.0);
}
