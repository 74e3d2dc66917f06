//! gatehouse's side of a control-protocol link ([`gatehouse_control::link`]): the farm's rule
//! for who may be on the other end, a certificate whose subject names the hello's node (CN)
//! and the connection's role (OU).

use std::net::TcpStream;

use rustls::pki_types::CertificateDer;
use rustls::Connection;

use gatehouse_control::frame::{Hello, KeepaliveConfig, Role};
pub use gatehouse_control::link::{our_hello, Link, LinkError};

use super::farm_pki::member_of;

/// [`Link::establish`] with the farm's identity rule.
pub fn establish(
    sock: TcpStream,
    tls: Connection,
    ours: &Hello,
    expected: Role,
    keepalive: KeepaliveConfig,
) -> Result<Link, LinkError> {
    Link::establish(sock, tls, ours, expected, keepalive, &farm_member)
}

/// The certificate names the hello's node and a role that may use this connection.
fn farm_member(certs: &[CertificateDer<'_>], name: &str, expected: Role) -> Result<(), String> {
    let member = certs
        .first()
        .and_then(member_of)
        .ok_or("no readable peer certificate")?;
    if member.name != name {
        return Err(format!(
            "hello names {name:?} but the certificate is for {:?}",
            member.name
        ));
    }
    if member.role.and_then(|r| r.protocol_role()) != Some(expected) {
        return Err(format!(
            "certificate of {:?} is for role {:?}, this connection needs a {expected}",
            member.name,
            member.role.map(|r| r.as_str())
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::path::Path;
    use std::time::Duration;

    use gatehouse_control::frame::{self, Frame, FrameKind, DEFAULT_MAX_FRAME_BYTES, HELLO_TIMEOUT};

    use super::*;
    use crate::broker_role::farm_pki::{farm_init, farm_issue, MemberRole, MemberTls};

    fn member(dir: &Path, name: &str, role: MemberRole) -> MemberTls {
        let files = farm_issue(dir, name, role).unwrap();
        MemberTls {
            cert_file: files.cert,
            key_file: files.key,
            ca_file: dir.join(super::super::farm_pki::CA_CERT_FILE),
        }
    }

    /// What the broker side's thread returns: the link (or error) and how long it took.
    type Established = std::thread::JoinHandle<(Result<Link, LinkError>, Duration)>;

    /// The broker side: `establish` for the first connection to the returned address, on a
    /// thread of its own.
    fn broker_side(broker: &MemberTls, port_role: Role) -> (std::net::SocketAddr, Established) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server_tls = broker.server_config().unwrap();
        let server = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let conn = Connection::Server(rustls::ServerConnection::new(server_tls).unwrap());
            let hello = our_hello(Role::Broker, "broker-1").unwrap();
            let start = std::time::Instant::now();
            let result = establish(sock, conn, &hello, port_role, KeepaliveConfig::default());
            (result, start.elapsed())
        });
        (addr, server)
    }

    /// Runs a broker-side and a client-side `establish` against each other on loopback.
    fn pair(
        broker: &MemberTls,
        client: &MemberTls,
        client_name: &str,
        client_role: Role,
        port_role: Role,
    ) -> (Result<Link, LinkError>, Result<Link, LinkError>) {
        let (addr, server) = broker_side(broker, port_role);
        let sock = TcpStream::connect(addr).unwrap();
        let name = rustls::pki_types::ServerName::try_from("x").unwrap();
        let conn =
            Connection::Client(rustls::ClientConnection::new(client.client_config().unwrap(), name).unwrap());
        let hello = our_hello(client_role, client_name).unwrap();
        let client = establish(sock, conn, &hello, Role::Broker, KeepaliveConfig::default());
        (server.join().unwrap().0, client)
    }

    #[test]
    fn a_request_sent_with_the_hello_is_read_at_once() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        farm_init(dir.path()).unwrap();
        let broker = member(dir.path(), "broker-1", MemberRole::Broker);
        let gw = member(dir.path(), "gw-a", MemberRole::Gateway);
        let (addr, server) = broker_side(&broker, Role::Gateway);
        // The gateway's hello and its first request in one write (so in one TLS record).
        let name = rustls::pki_types::ServerName::try_from("x").unwrap();
        let conn = rustls::ClientConnection::new(gw.client_config().unwrap(), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
        let mut bytes = Vec::new();
        our_hello(Role::Gateway, "gw-a").unwrap().encode(&mut bytes);
        frame::encode(FrameKind::Request, 9, b"{}", DEFAULT_MAX_FRAME_BYTES, &mut bytes).unwrap();
        tls.write_all(&bytes).unwrap();
        tls.flush().unwrap();
        let mut server = server.join().unwrap().0.unwrap();
        let (_wake_tx, wake) = Link::wake_pair().unwrap();
        let start = std::time::Instant::now();
        let readable = server.wait_readable(&wake, Duration::from_secs(3)).unwrap();
        let frames = server.poll(Duration::from_millis(1)).unwrap();
        let took = start.elapsed();
        println!("request sent with the hello: read after {took:?}");
        assert!(readable, "waited for the socket although a request was buffered");
        assert_eq!(frames, vec![Frame::new(FrameKind::Request, 9, b"{}".to_vec())]);
        assert!(took < Duration::from_secs(1), "{took:?}");
    }

    #[test]
    fn a_peer_that_stops_reading_is_a_write_timeout() {
        let dir = tempfile::tempdir().unwrap();
        farm_init(dir.path()).unwrap();
        let broker = member(dir.path(), "broker-1", MemberRole::Broker);
        let gw = member(dir.path(), "gw-a", MemberRole::Gateway);
        let (server, client) = pair(&broker, &gw, "gw-a", Role::Gateway, Role::Gateway);
        // The gateway's side stays open but reads nothing (a hung process).
        let (mut server, _client) = (server.unwrap(), client.unwrap());
        let mut out = Vec::new();
        frame::encode(
            FrameKind::Event,
            0,
            &[b'x'; 60_000],
            DEFAULT_MAX_FRAME_BYTES,
            &mut out,
        )
        .unwrap();
        let start = std::time::Instant::now();
        let end = loop {
            if let Err(e) = server.send(&out) {
                break e;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "socket buffers never filled"
            );
        };
        println!("stalled after {:?}: {end}", start.elapsed());
        assert!(matches!(end, LinkError::Stalled), "{end:?}");
        assert_eq!(end.reason(), "write_timeout");
        assert!(end.to_string().contains("peer stopped reading"), "{end}");
    }

    #[test]
    fn members_connect_and_exchange_frames() {
        let dir = tempfile::tempdir().unwrap();
        farm_init(dir.path()).unwrap();
        let broker = member(dir.path(), "broker-1", MemberRole::Broker);
        let gw = member(dir.path(), "gw-a", MemberRole::Gateway);
        let (server, client) = pair(&broker, &gw, "gw-a", Role::Gateway, Role::Gateway);
        let (mut server, mut client) = (server.unwrap(), client.unwrap());
        assert_eq!(server.peer_name(), "gw-a");
        assert_eq!(client.peer_name(), "broker-1");
        let mut out = Vec::new();
        frame::encode(FrameKind::Request, 7, b"{}", DEFAULT_MAX_FRAME_BYTES, &mut out).unwrap();
        client.send(&out).unwrap();
        let mut got = Vec::new();
        for _ in 0..100 {
            got.extend(server.poll(Duration::from_millis(10)).unwrap());
            if !got.is_empty() {
                break;
            }
        }
        assert_eq!(got, vec![Frame::new(FrameKind::Request, 7, b"{}".to_vec())]);
        client.close();
        let mut end = Ok(Vec::new());
        for _ in 0..100 {
            end = server.poll(Duration::from_millis(10));
            if end.is_err() {
                break;
            }
        }
        assert!(matches!(end, Err(LinkError::Closed)), "{:?}", end.err());
    }

    #[test]
    fn a_peer_that_trickles_its_handshake_is_dropped_at_the_hello_deadline() {
        let dir = tempfile::tempdir().unwrap();
        farm_init(dir.path()).unwrap();
        let broker = member(dir.path(), "broker-1", MemberRole::Broker);
        let (addr, server) = broker_side(&broker, Role::Gateway);
        // A TLS record header that promises a long ClientHello, then a byte every second:
        // each read comes within any per-read timeout, the handshake never ends.
        let mut sock = TcpStream::connect(addr).unwrap();
        use std::io::Write;
        let mut trickle = vec![0x16, 0x03, 0x01, 0x02, 0x00];
        trickle.extend(std::iter::repeat_n(0x01, 12));
        let writer = std::thread::spawn(move || {
            for b in trickle {
                if sock.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1000));
            }
        });
        let (result, took) = server.join().unwrap();
        println!("link: a trickling peer was dropped after {took:?}");
        assert!(matches!(result, Err(LinkError::Timeout)), "{:?}", result.err());
        assert!(took < HELLO_TIMEOUT + Duration::from_secs(2), "held for {took:?}");
        writer.join().unwrap();
    }

    #[test]
    fn certificate_must_match_hello_name_and_port_role() {
        let dir = tempfile::tempdir().unwrap();
        farm_init(dir.path()).unwrap();
        let broker = member(dir.path(), "broker-1", MemberRole::Broker);
        let gw = member(dir.path(), "gw-a", MemberRole::Gateway);
        // A gateway certificate claiming another name in its hello.
        let (server, _) = pair(&broker, &gw, "gw-b", Role::Gateway, Role::Gateway);
        assert!(
            matches!(server, Err(LinkError::Identity(_))),
            "{:?}",
            server.err()
        );
        // A gateway certificate with a host-agent hello on the host-agent port.
        let (server, _) = pair(&broker, &gw, "gw-a", Role::HostAgent, Role::HostAgent);
        assert!(
            matches!(server, Err(LinkError::Identity(_))),
            "{:?}",
            server.err()
        );
        // A gateway on the host-agent port with its true role: the hello is refused.
        let (server, _) = pair(&broker, &gw, "gw-a", Role::Gateway, Role::HostAgent);
        assert!(matches!(server, Err(LinkError::Hello(_))), "{:?}", server.err());
    }
}
