//! LeanServer against rustls' own buffered client, in memory.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::ServerName;
use rustls::{
    ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig, SupportedProtocolVersion,
};

use super::{LeanServer, MAX_INCOMING, TICKET_HOLD};
use crate::tls::test_pki::Pki;

fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    configs_for(rustls::DEFAULT_VERSIONS)
}

/// A server and a client (with rustls' default session cache) speaking `versions`.
fn configs_for(versions: &[&'static SupportedProtocolVersion]) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let pki = Pki::new();
    let leaf = pki.root_signed_leaf(&["lean.test"]);
    let server = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.cert.clone()], leaf.key.clone_key())
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(pki.root.der().clone()).unwrap();
    let client = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

/// A client and a server whose handshake is done; the server started from the client's
/// first flight, as the engine starts it from the sniffed ClientHello.
fn pair() -> (LeanServer, ClientConnection) {
    let (server_config, client_config) = configs();
    let mut client =
        ClientConnection::new(client_config, ServerName::try_from("lean.test").unwrap()).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    let mut server = LeanServer::new(server_config, &hello).unwrap();
    server.process_new_packets().unwrap();
    assert!(exchange(&mut server, &mut client).is_empty());
    assert!(!server.is_handshaking() && !client.is_handshaking());
    (server, client)
}

/// Moves TLS bytes both ways until neither side has any to send; returns the plaintext the
/// client received (drained as it comes: rustls' client holds only 16 KiB of it).
fn exchange(server: &mut LeanServer, client: &mut ClientConnection) -> Vec<u8> {
    let mut got = Vec::new();
    for _ in 0..1000 {
        let mut moved = false;
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let mut rest = &wire[..];
        while !rest.is_empty() {
            server.read_tls(&mut rest).unwrap();
            server.process_new_packets().unwrap();
            moved = true;
        }
        let mut wire = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        let mut rest = &wire[..];
        while !rest.is_empty() {
            client.read_tls(&mut rest).unwrap();
            client.process_new_packets().unwrap();
            got.extend(drain_client(client));
            moved = true;
        }
        if !moved {
            return got;
        }
    }
    panic!("the exchange did not settle");
}

fn drain_server(server: &mut LeanServer) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1000];
    while let Ok(n) = server.read_plaintext(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

fn drain_client(client: &mut ClientConnection) -> Vec<u8> {
    let mut got = Vec::new();
    // Ends with WouldBlock (more may come) or at close_notify.
    let _ = client.reader().read_to_end(&mut got);
    got
}

#[test]
fn data_both_ways_and_nothing_held_when_idle() {
    let (mut server, mut client) = pair();
    // rustls sends session tickets after the handshake: exchanged above, nothing left.
    assert_eq!(
        server.buffered_capacity(),
        0,
        "an idle connection holds no buffer"
    );
    client.writer().write_all(b"hello from the client").unwrap();
    exchange(&mut server, &mut client);
    assert_eq!(drain_server(&mut server), b"hello from the client");
    server.write_plaintext(b"hello from the server").unwrap();
    assert_eq!(exchange(&mut server, &mut client), b"hello from the server");
    assert_eq!(server.buffered_capacity(), 0);
    assert!(server.wants_read());
    assert_eq!(
        server.read_plaintext(&mut [0u8; 8]).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
}

#[test]
fn large_writes_arrive_whole_and_in_order() {
    let (mut server, mut client) = pair();
    client.set_buffer_limit(None);
    let down: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    server.write_plaintext(&down).unwrap();
    let up: Vec<u8> = (0..100_000u32).map(|i| (i % 239) as u8).collect();
    client.writer().write_all(&up).unwrap();
    assert_eq!(exchange(&mut server, &mut client), down);
    assert_eq!(drain_server(&mut server), up);
}

#[test]
fn a_record_arriving_in_pieces_pins_its_bytes_not_a_pooled_buffer() {
    let (mut server, mut client) = pair();
    client.writer().write_all(&[9u8; 3000]).unwrap();
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    // Everything but the last byte: the record waits, in a buffer of its own size.
    let (most, last) = wire.split_at(wire.len() - 1);
    server.read_tls(&mut &most[..]).unwrap();
    server.process_new_packets().unwrap();
    assert_eq!(server.buffered_capacity(), most.len());
    assert!(server.plaintext().is_err(), "nothing decrypted yet");
    // A read that brings nothing (EAGAIN) leaves it so.
    let mut dry = Dry;
    assert!(server.read_tls(&mut dry).is_err());
    assert_eq!(server.buffered_capacity(), most.len());
    server.read_tls(&mut &last[..]).unwrap();
    server.process_new_packets().unwrap();
    // The plaintext is taken where it lies, in two goes.
    assert_eq!(server.plaintext().unwrap(), &[9u8; 3000][..]);
    server.consume_plaintext(1000);
    assert_eq!(server.plaintext().unwrap().len(), 2000);
    assert!(!server.wants_read(), "no records are read while plaintext waits");
    server.consume_plaintext(2000);
    assert_eq!(server.buffered_capacity(), 0);
    assert!(server.wants_read());
}

/// A socket with nothing to read.
struct Dry;

impl Read for Dry {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

#[test]
fn close_notify_and_truncation_are_told_apart() {
    let (mut server, mut client) = pair();
    client.writer().write_all(b"last words").unwrap();
    client.send_close_notify();
    exchange(&mut server, &mut client);
    assert_eq!(drain_server(&mut server), b"last words");
    assert_eq!(
        server.read_plaintext(&mut [0u8; 8]).unwrap(),
        0,
        "close_notify reads as 0"
    );
    assert!(!server.wants_read());
    // Half-close: the server may still send, then closes its side.
    server.write_plaintext(b"bye").unwrap();
    server.send_close_notify();
    assert_eq!(exchange(&mut server, &mut client), b"bye");

    // A FIN without close_notify.
    let (mut server, _client) = pair();
    assert_eq!(server.read_tls(&mut io::empty()).unwrap(), 0);
    server.process_new_packets().unwrap();
    assert_eq!(
        server.read_plaintext(&mut [0u8; 8]).unwrap_err().kind(),
        io::ErrorKind::UnexpectedEof
    );
}

#[test]
fn a_forged_record_fails_with_an_alert_queued() {
    let (mut server, _client) = pair();
    let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    forged.extend_from_slice(&[0x5a; 32]);
    server.read_tls(&mut &forged[..]).unwrap();
    let err = server.process_new_packets().unwrap_err();
    assert!(matches!(err, rustls::Error::DecryptError), "{err:?}");
    assert!(server.wants_write(), "the alert waits for write_tls");
    assert!(server.process_new_packets().is_err(), "the failure is final");
    assert!(server.write_plaintext(b"x").is_err());
}

#[test]
fn bad_first_flights_fail_as_with_the_buffered_server() {
    let (server_config, _) = configs();
    let inputs: [&[u8]; 4] = [
        b"\x16\x03\x01\x00\x05hello",            // a 6.6 MB handshake message
        b"\x16\x03\x01\x00\x04\x01\x00\x00\x00", // an empty ClientHello
        b"\x15\x03\x01\x00\x02\x02\x28",         // a fatal alert
        b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00", // a truncated ClientHello
    ];
    let mut alerts = 0;
    for input in inputs {
        let mut buffered = rustls::ServerConnection::new(server_config.clone()).unwrap();
        buffered.read_tls(&mut &input[..]).unwrap();
        let want = buffered.process_new_packets().map(|_| ()).unwrap_err();
        let mut want_alert = Vec::new();
        while buffered.wants_write() {
            buffered.write_tls(&mut want_alert).unwrap();
        }
        let mut lean = LeanServer::new(server_config.clone(), input).unwrap();
        let got = lean.process_new_packets().unwrap_err();
        assert_eq!(got, want, "{input:?}");
        let mut alert = Vec::new();
        while lean.wants_write() {
            lean.write_tls(&mut alert).unwrap();
        }
        assert_eq!(alert, want_alert, "the same alert for {input:?}");
        alerts += usize::from(!alert.is_empty());
    }
    assert_eq!(alerts, 2, "the malformed ClientHellos get a decode_error alert");
}

#[test]
fn unprocessed_bytes_are_bounded() {
    let (server_config, _) = configs();
    let mut server = LeanServer::new(server_config, &[]).unwrap();
    let mut zeros = io::repeat(0);
    let mut total = 0;
    let err = loop {
        match server.read_tls(&mut zeros) {
            Ok(n) => total += n,
            Err(e) => break e,
        }
        assert!(total <= MAX_INCOMING);
    };
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert_eq!(total, MAX_INCOMING);
}

/// Runs a handshake as the engine does: the server holds what the completed handshake left
/// (`hold_tickets`), so the exchange settles with it unsent. Returns whether it held.
fn handshake_holding(
    server_config: Arc<ServerConfig>,
    client_config: Arc<ClientConfig>,
    now: Instant,
) -> (LeanServer, ClientConnection, bool) {
    let mut client =
        ClientConnection::new(client_config, ServerName::try_from("lean.test").unwrap()).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    let mut server = LeanServer::new(server_config, &hello).unwrap();
    server.process_new_packets().unwrap();
    let mut held = false;
    for _ in 0..10 {
        let mut wire = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        client.read_tls(&mut &wire[..]).unwrap();
        client.process_new_packets().unwrap();
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        if wire.is_empty() {
            break;
        }
        server.read_tls(&mut &wire[..]).unwrap();
        server.process_new_packets().unwrap();
        if !server.is_handshaking() {
            held = server.hold_tickets(now);
        }
    }
    assert!(!server.is_handshaking() && !client.is_handshaking());
    (server, client, held)
}

/// A second connection with the same client configuration: resumed or full.
fn resumes(server_config: Arc<ServerConfig>, client_config: Arc<ClientConfig>) -> bool {
    let (_, client, _) = handshake_holding(server_config, client_config, Instant::now());
    client.handshake_kind() == Some(HandshakeKind::Resumed)
}

#[test]
fn tls13_tickets_wait_for_the_first_answer_and_leave_in_its_write() {
    let (server_config, client_config) = configs_for(&[&rustls::version::TLS13]);
    let now = Instant::now();
    let (mut server, mut client, held) = handshake_holding(server_config.clone(), client_config.clone(), now);
    assert!(held, "a TLS 1.3 handshake leaves tickets to hold");
    assert!(!server.wants_write(), "held tickets are not written");
    assert_eq!(server.held_until(), Some(now + TICKET_HOLD));
    let held_bytes = server.buffered_capacity();
    assert!(
        held_bytes > 0 && held_bytes < 2048,
        "held tickets keep their own bytes, not a pooled buffer: {held_bytes}"
    );
    server.write_plaintext(b"the first answer").unwrap();
    assert_eq!(server.held_until(), None, "an answer takes the tickets along");
    let mut wire = Vec::new();
    server.write_tls(&mut wire).unwrap();
    assert!(!server.wants_write(), "tickets and answer left in one write");
    client.read_tls(&mut &wire[..]).unwrap();
    client.process_new_packets().unwrap();
    assert_eq!(drain_client(&mut client), b"the first answer");
    assert!(
        resumes(server_config, client_config),
        "the client got its tickets"
    );
}

#[test]
fn held_tickets_go_alone_when_released_or_before_close_notify() {
    let (server_config, client_config) = configs_for(&[&rustls::version::TLS13]);
    let (mut server, mut client, held) =
        handshake_holding(server_config.clone(), client_config.clone(), Instant::now());
    assert!(held);
    server.release_held();
    assert!(server.wants_write(), "released tickets are written");
    assert!(exchange(&mut server, &mut client).is_empty());
    assert!(resumes(server_config.clone(), client_config));

    let (server_config, client_config) = configs_for(&[&rustls::version::TLS13]);
    let (mut server, mut client, held) =
        handshake_holding(server_config.clone(), client_config.clone(), Instant::now());
    assert!(held);
    server.send_close_notify();
    assert!(server.wants_write(), "close_notify takes the tickets along");
    exchange(&mut server, &mut client);
    assert!(resumes(server_config, client_config));
}

#[test]
fn a_tls12_handshake_holds_nothing_back() {
    // A TLS 1.2 server's handshake is done once it has the client's Finished, with its own
    // Finished (and ticket) still to send: that must not wait, or the client never finishes.
    let (server_config, client_config) = configs_for(&[&rustls::version::TLS12]);
    let (server, client, held) = handshake_holding(server_config, client_config, Instant::now());
    assert!(!held, "TLS 1.2 holds nothing");
    assert_eq!(server.held_until(), None);
    assert!(!client.is_handshaking(), "the server's Finished went at once");
}
