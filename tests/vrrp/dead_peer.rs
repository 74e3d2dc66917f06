//! A cut link between the HALB and a backend or a client, with a tunnel open: the HALB
//! notices it by TCP keepalive when the tunnel is idle and by its user timeout when bytes are in flight,
//! and closes the client's side, instead of holding a dead tunnel for 12 to 15 minutes
//! (the kernel's defaults). The lab's HALB runs without VRRP here.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::common::{ip, link_up, ready, spawn_in_ns, wait_until, Gatehouse, HalbSpec, Lab, CLIENT, IFACE};

const HALB: &str = "10.213.0.1:3391";
const BACKEND: &str = "10.213.0.11:3392";
/// The most either case may take; the settings below give about 3 to 4 s.
const BOUND: Duration = Duration::from_secs(10);

/// An echo server in `ns` on [`BACKEND`], one thread per connection.
fn echo_in(ns: &str) {
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_in_ns(ns, move || {
        let listener = TcpListener::bind(BACKEND).expect("bind the backend");
        let _ = tx.send(());
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(2))
        .expect("backend listening");
}

/// A tunnel through the HALB at `target`, with one echo through it.
fn open_tunnel(target: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"hello\n").unwrap();
    let mut back = [0u8; 6];
    s.read_exact(&mut back).expect("echo before the cut");
    assert_eq!(&back, b"hello\n");
    s
}

/// How long after `cut` the client's side of `s` was closed, writing `chunk` every 100 ms
/// meanwhile when given one (bytes in flight toward the cut link).
fn closed_after(mut s: TcpStream, cut: Instant, chunk: Option<&[u8]>) -> Option<Duration> {
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 4096];
    while cut.elapsed() < BOUND {
        if let Some(chunk) = chunk {
            if s.write_all(chunk).is_err() {
                return Some(cut.elapsed());
            }
        }
        match s.read(&mut buf) {
            Ok(0) => return Some(cut.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(cut.elapsed()),
        }
    }
    None
}

#[test]
fn a_cut_backend_link_closes_the_tunnel_idle_or_busy() {
    if !ready("a_cut_backend_link_closes_the_tunnel_idle_or_busy", &[]) {
        return;
    }
    let client = format!("{CLIENT}/24");
    let lab = Lab::create(
        'd',
        &[
            ("a", &["10.213.0.1/24"]),
            ("c", &[client.as_str()]),
            ("g", &["10.213.0.11/24"]),
        ],
    );
    let ns_g = lab.ns("g");
    echo_in(&ns_g);
    let mut spec = HalbSpec::new(100);
    spec.vrrp = false;
    spec.extra = format!(
        "\n[[halb.listener]]\nname = \"dp\"\nbind = \"{HALB}\"\npool = \"echo\"\n\
         tcp_keepalive = \"1s\"\ntcp_keepalive_interval = \"1s\"\ntcp_keepalive_probes = 2\n\
         tcp_user_timeout = \"3s\"\n\n[[halb.pool]]\nname = \"echo\"\nbackends = [{{ address = \"{BACKEND}\" }}]\n"
    );
    let halb = Gatehouse::start(&lab, "a", &spec);
    let target: SocketAddr = HALB.parse().unwrap();
    for (case, chunk) in [("idle", None), ("busy", Some(vec![7u8; 1024]))] {
        let ns_c = lab.ns("c");
        let (ns, chunk2) = (ns_g.clone(), chunk.clone());
        let took = spawn_in_ns(&ns_c, move || {
            let s = open_tunnel(target);
            let cut = Instant::now();
            ip(&["-n", &ns, "link", "set", IFACE, "down"]);
            closed_after(s, cut, chunk2.as_deref())
        })
        .join()
        .expect("client thread");
        println!("dead peer: {case} tunnel over a cut link closed after {took:?} (bound {BOUND:?})");
        assert!(
            took.is_some(),
            "{case}: the tunnel still open {BOUND:?} after the cut; log:\n{}",
            halb.log_text()
        );
        ip(&["-n", &ns_g, "link", "set", IFACE, "up"]);
        wait_until(Duration::from_secs(3), || link_up(&ns_g)).expect("carrier back");
    }
    let closed = halb.metric("gatehouse_connections_closed_total{reason=\"backend_error\"}")
        + halb.metric("gatehouse_connections_closed_total{reason=\"backend_reset\"}");
    assert!(
        closed >= 2.0,
        "both closes counted as backend failures; log:\n{}",
        halb.log_text()
    );
    // The client's side: its socket was accepted from the listener and inherits the
    // settings. Cut the client's link with an idle tunnel open; the HALB closes it.
    let ns_c = lab.ns("c");
    let held = spawn_in_ns(&ns_c, move || open_tunnel(target))
        .join()
        .expect("client thread");
    let client_closes = |h: &Gatehouse| {
        h.metric("gatehouse_connections_closed_total{reason=\"client_error\"}")
            + h.metric("gatehouse_connections_closed_total{reason=\"client_reset\"}")
    };
    let before = client_closes(&halb);
    ip(&["-n", &ns_c, "link", "set", IFACE, "down"]);
    let took = wait_until(BOUND, || client_closes(&halb) > before);
    println!("dead peer: idle tunnel over a cut client link closed after {took:?} (bound {BOUND:?})");
    assert!(
        took.is_some(),
        "the client's side still open; log:\n{}",
        halb.log_text()
    );
    drop(held);
    let log = halb.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("closed:")).collect();
    println!("dead peer: {lines:#?}");
    let said = |side: &str| {
        let want = format!("closed: {side}: no answer to keepalive probes");
        lines.iter().filter(|l| l.contains(&want)).count()
    };
    assert_eq!(
        (said("backend"), said("client")),
        (2, 1),
        "the log says which side went silent"
    );
}
