//! Ticket tests: layout, every refusal, rotation and the ledger.

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::codec::{TAG_BYTES, TAG_CONTEXT};
use super::*;
use crate::message::RefusalReason;

const NOW: UnixMillis = UnixMillis(1_700_000_000_000);

fn key(id: u32, fill: u8) -> FarmKey {
    FarmKey::new(KeyId(id), [fill; FARM_KEY_BYTES])
}

fn claims() -> TicketClaims {
    TicketClaims {
        issuer: "broker-a".into(),
        user: "alice".into(),
        host: "rdsh-1".into(),
        port: 3389,
        site: "site-a".into(),
        expires_at: NOW.saturating_add(Duration::from_secs(30)),
        nonce: Nonce([0x11; 16]),
    }
}

fn raw(ticket: &str) -> Vec<u8> {
    codec::from_text(ticket).unwrap()
}

fn text(raw: &[u8]) -> String {
    codec::to_text(raw)
}

#[test]
fn sign_then_verify() {
    let ring = KeyRing::new(key(7, 0xaa));
    let ticket = ring.sign(&claims()).unwrap();
    let verified = ring.verify(&ticket, NOW).unwrap();
    assert_eq!(verified.key_id, KeyId(7));
    assert_eq!(verified.claims, claims());
    assert!(ticket.len() <= MAX_TICKET_CHARS);
    assert!(ticket
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
}

#[test]
fn layout_matches_protocol_document() {
    let ring = KeyRing::new(key(7, 0xaa));
    let raw = raw(&ring.sign(&claims()).unwrap());
    let mut expected = vec![1, 0, 0, 0, 7];
    expected.extend_from_slice(&claims().expires_at.0.to_be_bytes());
    expected.extend_from_slice(&[0x11; 16]);
    expected.extend_from_slice(&[0x0d, 0x3d]); // 3389
    for s in ["broker-a", "alice", "rdsh-1", "site-a"] {
        expected.push(s.len() as u8);
        expected.extend_from_slice(s.as_bytes());
    }
    assert_eq!(&raw[..raw.len() - TAG_BYTES], &expected[..]);
    // The tag is HMAC-SHA256 over the context label and the payload, computed independently.
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&[0xaa; 32]).unwrap();
    mac.update(TAG_CONTEXT);
    mac.update(&expected);
    assert_eq!(&raw[raw.len() - TAG_BYTES..], &mac.finalize().into_bytes()[..]);
}

#[test]
fn rfc4231_case_2_pins_the_hmac() {
    // RFC 4231 §4.3: key "Jefe", data "what do ya want for nothing?".
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
    mac.update(b"what do ya want for nothing?");
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        hex,
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[test]
fn every_flipped_bit_is_refused() {
    let ring = KeyRing::new(key(7, 0xaa));
    let good = raw(&ring.sign(&claims()).unwrap());
    for i in 0..good.len() * 8 {
        let mut bad = good.clone();
        bad[i / 8] ^= 1 << (i % 8);
        let err = ring.verify(&text(&bad), NOW).unwrap_err();
        let expected = match i / 8 {
            0 => "ticket_malformed",       // version byte
            1..=4 => "ticket_unknown_key", // key id
            _ => "ticket_forged",          // anything under the tag, or the tag
        };
        assert_eq!(err.reason(), expected, "bit {i}");
    }
}

#[test]
fn ticket_from_another_farm_is_forged() {
    let ours = KeyRing::new(key(7, 0xaa));
    let theirs = KeyRing::new(key(7, 0xbb));
    let ticket = theirs.sign(&claims()).unwrap();
    assert_eq!(ours.verify(&ticket, NOW), Err(TicketError::Forged));
    assert_eq!(
        RefusalReason::from(&TicketError::Forged),
        RefusalReason::TicketForged
    );
}

#[test]
fn expiry_is_exclusive() {
    let ring = KeyRing::new(key(1, 1));
    let ticket = ring.sign(&claims()).unwrap();
    let expires_at = claims().expires_at;
    assert!(ring.verify(&ticket, UnixMillis(expires_at.0 - 1)).is_ok());
    let err = ring.verify(&ticket, expires_at).unwrap_err();
    assert_eq!(
        err,
        TicketError::Expired {
            expired_at: expires_at,
            now: expires_at
        }
    );
    assert_eq!(err.reason(), "ticket_expired");
}

#[test]
fn malformed_tickets() {
    let ring = KeyRing::new(key(1, 1));
    let good = raw(&ring.sign(&claims()).unwrap());
    let mut v2 = good.clone();
    v2[0] = 2;
    let cases = [
        ("x".repeat(MAX_TICKET_CHARS + 1), MalformedTicket::TooLong),
        ("not base64!".to_string(), MalformedTicket::NotBase64),
        (format!("{}=", text(&good)), MalformedTicket::NotBase64),
        (String::new(), MalformedTicket::Truncated),
        (text(&good[..60]), MalformedTicket::Truncated),
        (text(&v2), MalformedTicket::UnknownVersion(2)),
    ];
    for (ticket, expected) in cases {
        assert_eq!(
            ring.verify(&ticket, NOW),
            Err(TicketError::Malformed(expected)),
            "{ticket:?}"
        );
    }
}

#[test]
fn correctly_tagged_but_bad_layout_is_malformed() {
    // Only a key holder can make these; the parser must still refuse them cleanly.
    let k = key(1, 1);
    let ring = KeyRing::new(k.clone());
    let payload = codec::encode_payload(KeyId(1), &claims()).unwrap();
    let tagged = |payload: &[u8]| {
        let mut mac = k.mac();
        hmac::Mac::update(&mut mac, TAG_CONTEXT);
        hmac::Mac::update(&mut mac, payload);
        let mut raw = payload.to_vec();
        raw.extend_from_slice(&hmac::Mac::finalize(mac).into_bytes());
        text(&raw)
    };
    let mut trailing = payload.clone();
    trailing.push(0);
    assert_eq!(
        ring.verify(&tagged(&trailing), NOW),
        Err(TicketError::Malformed(MalformedTicket::TrailingBytes))
    );
    let mut bad_utf8 = payload.clone();
    let user_at = 31 + 1 + "broker-a".len() + 1;
    bad_utf8[user_at] = 0xff;
    assert_eq!(
        ring.verify(&tagged(&bad_utf8), NOW),
        Err(TicketError::Malformed(MalformedTicket::BadUtf8("user")))
    );
}

#[test]
fn claims_out_of_bounds_cannot_be_signed() {
    let ring = KeyRing::new(key(1, 1));
    let mut c = claims();
    c.user = String::new();
    assert_eq!(ring.sign(&c), Err(InvalidClaim { field: "user" }));
    let mut c = claims();
    c.site = "s".repeat(256);
    assert_eq!(ring.sign(&c), Err(InvalidClaim { field: "site" }));
    let mut c = claims();
    c.host = "h".repeat(255);
    c.user = "u".repeat(255);
    c.site = "s".repeat(255);
    c.issuer = "i".repeat(255);
    let ticket = ring.sign(&c).unwrap();
    assert_eq!(
        ticket.len(),
        MAX_TICKET_CHARS,
        "largest ticket meets the bound exactly"
    );
    assert_eq!(ring.verify(&ticket, NOW).unwrap().claims, c);
}

#[test]
fn binding_mismatches() {
    let ring = KeyRing::new(key(1, 1));
    let verified = ring.verify(&ring.sign(&claims()).unwrap(), NOW).unwrap();
    assert_eq!(verified.check_binding("rdsh-1", 3389, "site-a"), Ok(()));
    let cases = [
        (("rdsh-2", 3389, "site-a"), BindingField::Host),
        (("rdsh-1", 3390, "site-a"), BindingField::Port),
        (("rdsh-1", 3389, "site-b"), BindingField::Site),
    ];
    for ((host, port, site), field) in cases {
        let err = verified.check_binding(host, port, site).unwrap_err();
        assert_eq!(err, TicketError::BindingMismatch(field));
        assert_eq!(err.reason(), "ticket_binding_mismatch");
    }
    assert_eq!(verified.check_issuer("broker-a"), Ok(()));
    let err = verified.check_issuer("broker-b").unwrap_err();
    assert_eq!(err.reason(), "ticket_wrong_issuer");
    assert_eq!(RefusalReason::from(&err), RefusalReason::TicketWrongIssuer);
}

#[test]
fn key_rotation() {
    let mut ring = KeyRing::new(key(1, 0x01));
    let old_ticket = ring.sign(&claims()).unwrap();
    // Step 1: every node learns key 2; key 1 still signs.
    ring.insert(key(2, 0x02)).unwrap();
    assert_eq!(
        ring.insert(key(2, 0x03)),
        Err(KeyRingError::DuplicateId(KeyId(2)))
    );
    assert_eq!(
        ring.verify(&ring.sign(&claims()).unwrap(), NOW).unwrap().key_id,
        KeyId(1)
    );
    // Step 2: key 2 becomes current; tickets under key 1 still verify.
    ring.make_current(KeyId(2)).unwrap();
    let new_ticket = ring.sign(&claims()).unwrap();
    assert_eq!(ring.verify(&new_ticket, NOW).unwrap().key_id, KeyId(2));
    assert_eq!(ring.verify(&old_ticket, NOW).unwrap().key_id, KeyId(1));
    // A node that has not learnt key 2 yet refuses new tickets as unknown key.
    let stale = KeyRing::new(key(1, 0x01));
    assert_eq!(
        stale.verify(&new_ticket, NOW),
        Err(TicketError::UnknownKey(KeyId(2)))
    );
    // Step 3: key 1 retired.
    assert_eq!(
        ring.remove(KeyId(2)),
        Err(KeyRingError::RemovingCurrent(KeyId(2)))
    );
    assert_eq!(ring.remove(KeyId(1)).unwrap().id(), KeyId(1));
    assert_eq!(
        ring.remove(KeyId(1)).unwrap_err(),
        KeyRingError::UnknownId(KeyId(1))
    );
    let err = ring.verify(&old_ticket, NOW).unwrap_err();
    assert_eq!(err, TicketError::UnknownKey(KeyId(1)));
    assert_eq!(err.reason(), "ticket_unknown_key");
    assert!(ring.verify(&new_ticket, NOW).is_ok());
    assert_eq!(ring.ids().collect::<Vec<_>>(), vec![KeyId(2)]);
    assert_eq!(
        ring.make_current(KeyId(9)),
        Err(KeyRingError::UnknownId(KeyId(9)))
    );
}

#[test]
fn key_debug_hides_secret() {
    let shown = format!("{:?}", key(3, 0xab));
    assert!(
        !shown.contains("171") && !shown.to_lowercase().contains("ab, "),
        "{shown}"
    );
    assert!(shown.contains("redacted"));
}

#[test]
fn random_keys_and_nonces_differ() {
    let mut rng = StdRng::seed_from_u64(1);
    let a = FarmKey::generate(KeyId(1), &mut rng);
    let b = FarmKey::generate(KeyId(1), &mut rng);
    assert_ne!(a.secret(), b.secret());
    assert_ne!(Nonce::random(&mut rng), Nonce::random(&mut rng));
    assert_eq!(Nonce([0xab; 16]).to_string(), "ab".repeat(16));
}

#[test]
fn unix_millis_from_system_time() {
    let t = UNIX_EPOCH + Duration::from_millis(1234);
    assert_eq!(UnixMillis::from_system_time(t), UnixMillis(1234));
    assert_eq!(
        UnixMillis::from_system_time(UNIX_EPOCH - Duration::from_secs(1)),
        UnixMillis(0)
    );
    assert_eq!(
        UnixMillis(u64::MAX - 1).saturating_add(Duration::from_secs(1)),
        UnixMillis(u64::MAX)
    );
}

#[test]
fn ledger_accepts_each_nonce_once() {
    let ring = KeyRing::new(key(1, 1));
    let verified = ring.verify(&ring.sign(&claims()).unwrap(), NOW).unwrap();
    let mut ledger = NonceLedger::new(100);
    assert_eq!(ledger.redeem(&verified, NOW), Ok(()));
    let err = ledger.redeem(&verified, UnixMillis(NOW.0 + 1)).unwrap_err();
    assert_eq!(err, TicketError::Replayed);
    assert_eq!(RefusalReason::from(&err), RefusalReason::TicketReplayed);
    // Another ticket for the same user and host has its own nonce.
    let mut other = claims();
    other.nonce = Nonce([0x22; 16]);
    let other = ring.verify(&ring.sign(&other).unwrap(), NOW).unwrap();
    assert_eq!(ledger.redeem(&other, NOW), Ok(()));
    assert_eq!(ledger.len(), 2);
}

#[test]
fn ledger_entries_expire_with_their_ticket() {
    let mut ledger = NonceLedger::new(100);
    let n = |b| Nonce([b; 16]);
    ledger.accept(n(1), UnixMillis(1_000), UnixMillis(0)).unwrap();
    ledger.accept(n(2), UnixMillis(2_000), UnixMillis(0)).unwrap();
    ledger.accept(n(3), UnixMillis(3_000), UnixMillis(0)).unwrap();
    assert_eq!(
        ledger.accept(n(2), UnixMillis(2_000), UnixMillis(999)),
        Err(TicketError::Replayed)
    );
    assert_eq!(ledger.purge(UnixMillis(999)), 0);
    assert_eq!(ledger.purge(UnixMillis(2_000)), 2);
    assert_eq!(ledger.len(), 1);
    // After expiry the nonce is forgotten, but the ticket itself is refused as expired.
    assert_eq!(
        ledger.accept(n(1), UnixMillis(1_000), UnixMillis(2_000)),
        Err(TicketError::Expired {
            expired_at: UnixMillis(1_000),
            now: UnixMillis(2_000)
        })
    );
    assert_eq!(ledger.purge(UnixMillis(10_000)), 1);
    assert!(ledger.is_empty());
}

#[test]
fn full_ledger_fails_closed_then_recovers() {
    let mut ledger = NonceLedger::new(2);
    let n = |b| Nonce([b; 16]);
    ledger.accept(n(1), UnixMillis(100), UnixMillis(0)).unwrap();
    ledger.accept(n(2), UnixMillis(200), UnixMillis(0)).unwrap();
    let err = ledger.accept(n(3), UnixMillis(300), UnixMillis(50)).unwrap_err();
    assert_eq!(err, TicketError::LedgerFull);
    assert_eq!(ledger.len(), 2, "no live nonce was forgotten");
    // Once n(1) expires there is room again.
    assert_eq!(ledger.accept(n(3), UnixMillis(300), UnixMillis(100)), Ok(()));
    assert_eq!(
        ledger.accept(n(2), UnixMillis(200), UnixMillis(150)),
        Err(TicketError::Replayed)
    );
    assert_eq!(ledger.capacity(), 2);
}

#[test]
fn ledger_memory_is_bounded_over_time() {
    let mut ledger = NonceLedger::new(1000);
    let mut rng = StdRng::seed_from_u64(7);
    // 100k tickets, one per ms, each valid 500 ms: never more than 500 live at once, and
    // purging keeps both the map and the expiry heap at that size.
    for t in 0..100_000u64 {
        let now = UnixMillis(t);
        ledger
            .accept(
                Nonce::random(&mut rng),
                now.saturating_add(Duration::from_millis(500)),
                now,
            )
            .unwrap();
        assert!(ledger.len() <= 500);
    }
    assert!(ledger.expiries.len() <= 500);
}

proptest! {
    #[test]
    fn verify_never_panics(text in "[A-Za-z0-9_=+/-]{0,200}") {
        let ring = KeyRing::new(key(1, 1));
        let _ = ring.verify(&text, NOW);
    }

    #[test]
    fn verify_never_panics_on_near_valid_bytes(
        len in 0usize..200,
        bytes in proptest::collection::vec(any::<u8>(), 200),
    ) {
        let ring = KeyRing::new(key(1, 1));
        let mut raw = bytes[..len].to_vec();
        if let Some(first) = raw.first_mut() {
            *first = 1; // known version, so parsing goes as far as the key id and tag
        }
        if raw.len() >= 5 {
            raw[1..5].copy_from_slice(&[0, 0, 0, 1]);
        }
        prop_assert!(ring.verify(&text(&raw), NOW).is_err());
    }

    #[test]
    fn sign_verify_round_trips(
        user in "[^\\p{Cc}]{1,60}",
        host in "[a-z0-9.-]{1,60}",
        site in "[a-z0-9-]{1,30}",
        port in 1u16..,
        ttl_ms in 1u64..120_000,
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let ring = KeyRing::new(FarmKey::generate(KeyId(seed as u32), &mut rng));
        let c = TicketClaims {
            issuer: "broker-a".into(),
            user, host, port, site,
            expires_at: UnixMillis(NOW.0 + ttl_ms),
            nonce: Nonce::random(&mut rng),
        };
        let ticket = ring.sign(&c).unwrap();
        prop_assert!(ticket.len() <= MAX_TICKET_CHARS);
        let verified = ring.verify(&ticket, NOW).unwrap();
        prop_assert_eq!(verified.claims, c);
    }
}
