//! Launch tickets across two brokers: redeemed once at the issuer, replay and a redemption
//! at another broker refused with their reasons, an absent issuer reported as such (by name
//! only when this gateway has known it).

use std::net::TcpListener;
use std::time::Duration;

use gatehouse::broker_role::ClientFailure;
use gatehouse_control::message::{Launch, LaunchMode, RedeemTicket, Reply, Request, Secret};

use super::common::{login, outcome, Farm};

fn redeem(ticket: &str) -> Request {
    Request::RedeemTicket(RedeemTicket {
        session_token: None,
        ticket: Secret::new(ticket),
    })
}

#[test]
fn tickets_redeem_once_at_their_issuer() {
    let farm = Farm::new();
    let b1 = farm.start_broker("broker-1");
    let b2 = farm.start_broker("broker-2");
    let rdp = TcpListener::bind("127.0.0.1:0").unwrap();
    let _agent = farm.start_agent("rdsh-1", &[b1.agents, b2.agents], 10, rdp.local_addr().unwrap());
    assert!(b1.proc.wait_log("role=host-agent", 1, Duration::from_secs(10)));
    assert!(b2.proc.wait_log("role=host-agent", 1, Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(700));
    let client = farm.client(&[b1.gw, b2.gw]);

    let a = client.call(login("alice", "right")).unwrap();
    assert_eq!(a.broker, "broker-1");
    let Reply::LoginOk(ok) = a.reply else {
        panic!("{}", outcome(&a.reply))
    };
    let launched = client
        .call(Request::Launch(Launch {
            session_token: ok.session_token,
            resource: "desktop-a".into(),
            mode: LaunchMode::Gateway,
            client_addr: "192.0.2.10:50000".parse().unwrap(),
        }))
        .unwrap();
    let Reply::Launched(l) = launched.reply else {
        panic!("{}", outcome(&launched.reply))
    };
    let ticket = l.ticket.expect("gateway mode has a ticket").expose().to_string();

    // Another broker of the farm verifies the signature but is not the issuer.
    let other = client.call_to("broker-2", redeem(&ticket)).unwrap();
    assert_eq!(outcome(&other.reply), "ticket_wrong_issuer");
    // A forged ticket: one character of the tag changed.
    let mut forged = ticket.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let f = client
        .call_to("broker-1", redeem(&String::from_utf8(forged).unwrap()))
        .unwrap();
    assert_eq!(outcome(&f.reply), "ticket_forged");
    // The issuer redeems it once.
    let first = client.call_to("broker-1", redeem(&ticket)).unwrap();
    let Reply::Redeemed(r) = first.reply else {
        panic!("{}", outcome(&first.reply))
    };
    assert_eq!(
        (r.user.as_str(), r.host.as_str(), r.site.as_str()),
        ("alice", "127.0.1.1", "site-a")
    );
    let again = client.call_to("broker-1", redeem(&ticket)).unwrap();
    assert_eq!(outcome(&again.reply), "ticket_replayed");
    // An issuer this gateway was never linked to: the ticket fails (a client error, the
    // name is not repeated), the client launches again.
    let gone = client.call_to("broker-9", redeem(&ticket)).unwrap_err();
    assert_eq!(gone, ClientFailure::UnknownBroker);
    // An issuer that was linked and is gone: reported by its name.
    drop(b2);
    let mut last = None;
    let down = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        last = client.call_to("broker-2", redeem(&ticket)).err();
        last == Some(ClientFailure::BrokerUnavailable {
            broker: "broker-2".into(),
        })
    });
    assert!(down, "{last:?}");
}
