//! Raw-socket input: an IPv4 datagram that should carry a VRRP advert. Decoding must never
//! panic, and whatever decodes must re-encode to bytes that decode to the same advert.
#![no_main]

use gatehouse_vrrp::packet::{decode_ipv4_datagram, ChecksumAccept, ChecksumMode, Endpoints};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(rx) = decode_ipv4_datagram(data, ChecksumAccept::Either) else {
        return;
    };
    let ends = Endpoints {
        src: rx.from,
        dst: rx.to,
    };
    let bytes = rx
        .advert
        .encode(ends, ChecksumMode::PseudoHeader)
        .expect("a decoded advert re-encodes");
    let again = gatehouse_vrrp::Advert::decode(&bytes, ends, ChecksumAccept::PseudoHeader)
        .expect("a re-encoded advert decodes");
    assert_eq!(again, rx.advert);
});
