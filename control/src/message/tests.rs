//! Message tests: pinned JSON shapes (the protocol document quotes them), frame round trips,
//! validation and the answers to bad input.

use proptest::prelude::*;

use super::*;
use crate::frame::{FrameDecoder, DEFAULT_MAX_FRAME_BYTES};

fn addr() -> std::net::SocketAddr {
    "203.0.113.7:50123".parse().unwrap()
}

fn login() -> Request {
    Request::Login(Login {
        user: "alice".into(),
        password: Secret::new("s3cret"),
        second_factor: Some(Secret::new("123456")),
        client_addr: addr(),
        wait_ms: None,
    })
}

/// Every message next to the exact JSON it has on the wire.
fn pinned_requests() -> Vec<(Request, &'static str)> {
    vec![
        (
            login(),
            r#"{"type":"login","user":"alice","password":"s3cret","second_factor":"123456","client_addr":"203.0.113.7:50123"}"#,
        ),
        (
            Request::ListResources(ListResources {
                session_token: Secret::new("tok"),
            }),
            r#"{"type":"list_resources","session_token":"tok"}"#,
        ),
        (
            Request::Launch(Launch {
                session_token: Secret::new("tok"),
                resource: "desktop-a".into(),
                mode: LaunchMode::Gateway,
                client_addr: "[2001:db8::1]:443".parse().unwrap(),
            }),
            r#"{"type":"launch","session_token":"tok","resource":"desktop-a","mode":"gateway","client_addr":"[2001:db8::1]:443"}"#,
        ),
        (
            Request::RedeemTicket(RedeemTicket {
                session_token: None,
                ticket: Secret::new("AQAAAAE"),
            }),
            r#"{"type":"redeem_ticket","ticket":"AQAAAAE"}"#,
        ),
        (
            Request::HostReport(HostReport {
                host: "rdsh-1".into(),
                sessions: vec!["alice".into(), "bob".into()],
                cpu_percent: 37,
                mem_percent: 61,
                rdp_up: true,
            }),
            r#"{"type":"host_report","host":"rdsh-1","sessions":["alice","bob"],"cpu_percent":37,"mem_percent":61,"rdp_up":true}"#,
        ),
        (
            Request::ChooseHost(ChooseHost {
                routing_token: None,
                resource: None,
                site: "site-a".into(),
                user_hint: Some("alice".into()),
            }),
            r#"{"type":"choose_host","site":"site-a","user_hint":"alice"}"#,
        ),
    ]
}

fn pinned_replies() -> Vec<(Reply, &'static str)> {
    vec![
        (
            Reply::LoginOk(LoginOk {
                session_token: Secret::new("tok"),
                resources: vec![ResourceInfo {
                    id: "desktop-a".into(),
                    name: "Office desktop".into(),
                    kind: ResourceKind::Desktop,
                }],
            }),
            r#"{"type":"login_ok","session_token":"tok","resources":[{"id":"desktop-a","name":"Office desktop","kind":"desktop"}]}"#,
        ),
        (
            Reply::Resources(Resources { resources: vec![] }),
            r#"{"type":"resources","resources":[]}"#,
        ),
        (
            Reply::Launched(Launched {
                host: "10.0.0.5".into(),
                port: 3389,
                ticket: Some(Secret::new("AQAAAAE")),
            }),
            r#"{"type":"launched","host":"10.0.0.5","port":3389,"ticket":"AQAAAAE"}"#,
        ),
        (
            Reply::Launched(Launched {
                host: "10.0.0.5".into(),
                port: 3389,
                ticket: None,
            }),
            r#"{"type":"launched","host":"10.0.0.5","port":3389}"#,
        ),
        (
            Reply::Redeemed(Redeemed {
                user: "alice".into(),
                host: "10.0.0.5".into(),
                port: 3389,
                site: "site-a".into(),
            }),
            r#"{"type":"redeemed","user":"alice","host":"10.0.0.5","port":3389,"site":"site-a"}"#,
        ),
        (Reply::ReportAccepted, r#"{"type":"report_accepted"}"#),
        (
            Reply::HostChosen(HostChosen {
                host: "rdsh-2".into(),
                port: 3389,
            }),
            r#"{"type":"host_chosen","host":"rdsh-2","port":3389}"#,
        ),
        (
            Reply::Refused(Refused::with_detail(RefusalReason::TicketReplayed, "nonce seen")),
            r#"{"type":"refused","reason":"ticket_replayed","detail":"nonce seen"}"#,
        ),
        (
            Reply::Refused(Refused::new(RefusalReason::WrongPassword)),
            r#"{"type":"refused","reason":"wrong_password"}"#,
        ),
    ]
}

#[test]
fn requests_have_pinned_json() {
    for (request, json) in pinned_requests() {
        assert_eq!(serde_json::to_string(&request).unwrap(), json);
        assert_eq!(serde_json::from_str::<Request>(json).unwrap(), request);
        assert_eq!(json.split('"').nth(3), Some(request.name()));
    }
}

#[test]
fn replies_and_events_have_pinned_json() {
    for (reply, json) in pinned_replies() {
        assert_eq!(serde_json::to_string(&reply).unwrap(), json);
        assert_eq!(serde_json::from_str::<Reply>(json).unwrap(), reply);
        assert_eq!(json.split('"').nth(3), Some(reply.name()));
    }
    assert_eq!(
        serde_json::to_string(&Event::Draining).unwrap(),
        r#"{"type":"draining"}"#
    );
}

#[test]
fn request_frame_bytes() {
    let request = Request::ListResources(ListResources {
        session_token: Secret::new("t"),
    });
    let mut out = Vec::new();
    encode_request(2, &request, DEFAULT_MAX_FRAME_BYTES, &mut out).unwrap();
    let body = br#"{"type":"list_resources","session_token":"t"}"#;
    let mut expected = vec![0, 0, 0, (9 + body.len()) as u8, 1, 0, 0, 0, 0, 0, 0, 0, 2];
    expected.extend_from_slice(body);
    assert_eq!(out, expected);
}

#[test]
fn frames_round_trip_through_decoder() {
    let mut wire = Vec::new();
    for (i, (request, _)) in pinned_requests().into_iter().enumerate() {
        encode_request(i as u64 + 1, &request, DEFAULT_MAX_FRAME_BYTES, &mut wire).unwrap();
    }
    for (i, (reply, _)) in pinned_replies().into_iter().enumerate() {
        encode_reply(i as u64 + 1, &reply, DEFAULT_MAX_FRAME_BYTES, &mut wire).unwrap();
    }
    encode_event(&Event::Draining, DEFAULT_MAX_FRAME_BYTES, &mut wire).unwrap();
    let mut decoder = FrameDecoder::default();
    decoder.feed(&wire);
    let mut got = Vec::new();
    while let Some(frame) = decoder.next_frame().unwrap() {
        got.push(decode(&frame).unwrap());
    }
    let mut expected: Vec<Inbound> = pinned_requests()
        .into_iter()
        .enumerate()
        .map(|(i, (request, _))| Inbound::Request {
            id: i as u64 + 1,
            request,
        })
        .collect();
    expected.extend(
        pinned_replies()
            .into_iter()
            .enumerate()
            .map(|(i, (reply, _))| Inbound::Response {
                id: i as u64 + 1,
                reply,
            }),
    );
    expected.push(Inbound::Event(Event::Draining));
    assert_eq!(got, expected);
}

#[test]
fn keepalive_frames_decode() {
    assert_eq!(decode(&Frame::ping(9)), Ok(Inbound::Ping { seq: 9 }));
    assert_eq!(decode(&Frame::pong(9)), Ok(Inbound::Pong { seq: 9 }));
}

#[test]
fn bad_json_request_gets_bad_request_refusal() {
    let frame = Frame::new(FrameKind::Request, 5, br#"{"type":"login","user":"a"}"#.to_vec());
    let err = decode(&frame).unwrap_err();
    assert_eq!(err.reason(), "body_bad_json");
    assert_eq!(err.request_id(), 5);
    assert_eq!(err.kind(), FrameKind::Request);
    let Reply::Refused(refused) = err.refusal() else {
        panic!("refusal must be refused");
    };
    assert_eq!(refused.reason, RefusalReason::BadRequest);
    assert!(refused.detail.unwrap().contains("password"));
    // Unknown type, not JSON at all, and not UTF-8.
    for body in [&br#"{"type":"reboot"}"#[..], b"\x00\xff", b""] {
        let frame = Frame::new(FrameKind::Request, 5, body.to_vec());
        assert_eq!(decode(&frame).unwrap_err().reason(), "body_bad_json");
    }
}

#[test]
fn invalid_fields_are_named() {
    let cases: Vec<(Request, &str, &str)> = vec![
        (
            Request::Login(Login {
                user: String::new(),
                password: Secret::new("p"),
                second_factor: None,
                client_addr: addr(),
                wait_ms: None,
            }),
            "user",
            "empty",
        ),
        (
            Request::Login(Login {
                user: "a".repeat(256),
                password: Secret::new("p"),
                second_factor: None,
                client_addr: addr(),
                wait_ms: None,
            }),
            "user",
            "too long",
        ),
        (
            Request::Login(Login {
                user: "al\nice".into(),
                password: Secret::new("p"),
                second_factor: None,
                client_addr: addr(),
                wait_ms: None,
            }),
            "user",
            "control character",
        ),
        (
            Request::HostReport(HostReport {
                host: "rdsh-1".into(),
                sessions: vec![],
                cpu_percent: 101,
                mem_percent: 0,
                rdp_up: true,
            }),
            "cpu_percent",
            "over 100",
        ),
        (
            Request::HostReport(HostReport {
                host: "rdsh 1".into(),
                sessions: vec![],
                cpu_percent: 0,
                mem_percent: 0,
                rdp_up: true,
            }),
            "host",
            "bad character",
        ),
        (
            Request::HostReport(HostReport {
                host: "rdsh-1".into(),
                sessions: vec!["u".into(); MAX_SESSIONS_PER_REPORT + 1],
                cpu_percent: 0,
                mem_percent: 0,
                rdp_up: true,
            }),
            "sessions",
            "too many entries",
        ),
        (
            Request::RedeemTicket(RedeemTicket {
                session_token: None,
                ticket: Secret::new("x".repeat(crate::ticket::MAX_TICKET_CHARS + 1)),
            }),
            "ticket",
            "too long",
        ),
    ];
    for (request, field, problem) in cases {
        let mut wire = Vec::new();
        encode_request(1, &request, DEFAULT_MAX_FRAME_BYTES, &mut wire).unwrap();
        let mut decoder = FrameDecoder::default();
        decoder.feed(&wire);
        let frame = decoder.next_frame().unwrap().unwrap();
        assert_eq!(
            decode(&frame),
            Err(MessageError::Invalid {
                kind: FrameKind::Request,
                request_id: 1,
                invalid: Invalid { field, problem },
            })
        );
    }
}

#[test]
fn reply_validation_rejects_port_zero() {
    let frame = Frame::new(
        FrameKind::Response,
        1,
        br#"{"type":"host_chosen","host":"h","port":0}"#.to_vec(),
    );
    assert_eq!(decode(&frame).unwrap_err().reason(), "body_invalid_field");
}

#[test]
fn request_ids_are_checked() {
    let body = br#"{"type":"list_resources","session_token":"t"}"#.to_vec();
    let err = decode(&Frame::new(FrameKind::Request, 0, body)).unwrap_err();
    assert_eq!(err.reason(), "bad_request_id");
    let event = br#"{"type":"draining"}"#.to_vec();
    let err = decode(&Frame::new(FrameKind::Event, 3, event)).unwrap_err();
    assert_eq!(err.reason(), "bad_request_id");
}

#[test]
fn unknown_fields_are_ignored() {
    let frame = Frame::new(
        FrameKind::Response,
        1,
        br#"{"type":"report_accepted","next_report_ms":2000}"#.to_vec(),
    );
    assert_eq!(
        decode(&frame),
        Ok(Inbound::Response {
            id: 1,
            reply: Reply::ReportAccepted
        })
    );
}

#[test]
fn replies_fit_their_requests() {
    let requests = pinned_requests();
    let replies = pinned_replies();
    let refused = Reply::Refused(Refused::new(RefusalReason::Internal));
    for (request, _) in &requests {
        assert!(request.accepts(&refused));
        let fitting = replies
            .iter()
            .filter(|(reply, _)| reply.name() != "refused" && request.accepts(reply))
            .count();
        // Launch has two pinned `launched` shapes; every other request exactly one.
        let expected = if request.name() == "launch" { 2 } else { 1 };
        assert_eq!(fitting, expected, "{}", request.name());
    }
}

#[test]
fn debug_output_hides_credentials() {
    let shown = format!("{:?}", login());
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(!shown.contains("123456"), "{shown}");
    assert!(shown.contains("alice"));
}

#[test]
fn refusal_detail_is_bounded() {
    let refused = Refused::with_detail(RefusalReason::Internal, "é".repeat(MAX_DETAIL_BYTES));
    assert!(refused.detail.as_ref().unwrap().len() <= MAX_DETAIL_BYTES);
    assert!(Reply::Refused(refused).validate().is_ok());
}

proptest! {
    #[test]
    fn decode_never_panics_on_random_bodies(
        kind in 1u8..=3,
        id in any::<u64>(),
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let frame = Frame::new(FrameKind::from_byte(kind).unwrap(), id, body);
        let _ = decode(&frame);
    }

    #[test]
    fn host_reports_round_trip(
        host in "[a-z0-9.-]{1,40}",
        sessions in proptest::collection::vec("[^\\p{Cc}]{1,20}", 0..10),
        cpu in 0u8..=100,
        mem in 0u8..=100,
        rdp_up in any::<bool>(),
        id in 1u64..,
    ) {
        let request = Request::HostReport(HostReport { host, sessions, cpu_percent: cpu, mem_percent: mem, rdp_up });
        let mut wire = Vec::new();
        encode_request(id, &request, DEFAULT_MAX_FRAME_BYTES, &mut wire).unwrap();
        let mut decoder = FrameDecoder::default();
        decoder.feed(&wire);
        let frame = decoder.next_frame().unwrap().unwrap();
        prop_assert_eq!(decode(&frame), Ok(Inbound::Request { id, request }));
    }
}
