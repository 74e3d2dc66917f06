//! Tests of the ClientHello reader: captures from OpenSSL 3.0 `s_client`, hand-built hellos
//! for each error, and properties (never panics, every prefix is incomplete).

use proptest::prelude::*;

use super::*;

/// `openssl s_client -servername gw.example.test -alpn h2,http/1.1` (OpenSSL 3.0.19),
/// captured on loopback: one record, TLS 1.3 and 1.2 offered.
const OPENSSL_TLS13: &[&str] = &[
    "160301014e0100014a0303a0a96c95b2f0deeba20de89d152dab5eb7286d242b7671070435b660037b523520f2aa5e8d",
    "2c6edd7ed04a1fd849bd2df9b1c29692aa6d8e149d08c986f7c953c6003e130213031301c02cc030009fcca9cca8ccaa",
    "c02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff010000c3",
    "00000014001200000f67772e6578616d706c652e74657374000b000403000102000a00160014001d0017001e00190018",
    "01000101010201030104002300000010000e000c02683208687474702f312e310016000000170000000d002a00280403",
    "05030603080708080809080a080b080408050806040105010601030303010302040205020602002b0009080304030303",
    "020301002d00020101003300260024001d00202997ea150e9551851166b6470f6a486c1f720337988d35abf4ba9994a6",
    "92e238",
];

/// `openssl s_client -tls1_2 -servername Legacy.Example.Test`: no supported_versions, and a
/// mixed-case name.
const OPENSSL_TLS12: &[&str] = &[
    "16030100d3010000cf0303eb7fd43e24dc159b7bcf61c2549c854d4e85745b4ccbc5020c81dca235071b0f000038c02c",
    "c030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c",
    "0035002f00ff0100006e0000001800160000134c65676163792e4578616d706c652e54657374000b000403000102000a",
    "000c000a001d0017001e00190018002300000016000000170000000d002a0028040305030603080708080809080a080b",
    "080408050806040105010601030303010302040205020602",
];

/// `openssl s_client -noservername`: no server_name extension.
const OPENSSL_NO_SNI: &[&str] = &[
    "1603010124010001200303dad14e006e58ec1019d25c1eb5e375f1eeace4359e1851f9c268a3b65c3296b72095fa05e9",
    "b627b717e135c2cee27bda2e037bc370f626de4e3a9ec4f9faee1bff003e130213031301c02cc030009fcca9cca8ccaa",
    "c02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c0035002f00ff01000099",
    "000b000403000102000a00160014001d0017001e0019001801000101010201030104002300000016000000170000000d",
    "002a0028040305030603080708080809080a080b080408050806040105010601030303010302040205020602002b0009",
    "080304030303020301002d00020101003300260024001d0020a3f63589cd7138949b06dbbedafb27cda9fba871ec2dc8",
    "d44672cef4ed075f74",
];

fn unhex(parts: &[&str]) -> Vec<u8> {
    let hex: String = parts.concat();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("test vectors are valid hex"))
        .collect()
}

/// Splits the handshake bytes of a one-record hello into records of the given sizes (the
/// last record takes the rest).
fn resplit(wire: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut handshake = &wire[RECORD_HEADER_LEN..];
    let mut out = Vec::new();
    for &size in sizes.iter().chain(std::iter::once(&usize::MAX)) {
        if handshake.is_empty() {
            break;
        }
        let (chunk, rest) = handshake.split_at(size.min(handshake.len()));
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
        handshake = rest;
    }
    out
}

/// A hello with the given extensions (type, data), in one record.
fn hello_with(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0xab; 32]);
    body.push(0); // empty session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut exts = Vec::new();
    for (t, data) in extensions {
        exts.extend_from_slice(&t.to_be_bytes());
        exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
        exts.extend_from_slice(data);
    }
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    wrap_hello(&body)
}

fn wrap_hello(body: &[u8]) -> Vec<u8> {
    let mut handshake = vec![HANDSHAKE_CLIENT_HELLO];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(body);
    let mut wire = vec![0x16, 0x03, 0x01];
    wire.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    wire.extend_from_slice(&handshake);
    wire
}

fn sni(name: &[u8]) -> (u16, Vec<u8>) {
    let mut entry = vec![0];
    entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
    entry.extend_from_slice(name);
    let mut data = (entry.len() as u16).to_be_bytes().to_vec();
    data.extend_from_slice(&entry);
    (0, data)
}

fn hello(wire: &[u8]) -> ClientHello {
    match read(wire) {
        Ok(Read::Hello(h)) => h,
        other => panic!("expected a hello, got {other:?}"),
    }
}

fn reason(wire: &[u8]) -> &'static str {
    match read(wire) {
        Err(e) => e.reason(),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn openssl_tls13_hello_gives_name_alpn_and_versions() {
    let wire = unhex(OPENSSL_TLS13);
    let h = hello(&wire);
    assert_eq!(h.server_name.as_deref(), Some("gw.example.test"));
    assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(h.legacy_version, 0x0303);
    assert_eq!(h.supported_versions, vec![0x0304, 0x0303, 0x0302, 0x0301]);
    assert!(h.offers_tls13());
    assert_eq!(h.wire_len, wire.len());
}

#[test]
fn openssl_tls12_hello_has_no_supported_versions_and_name_is_lowercased() {
    let h = hello(&unhex(OPENSSL_TLS12));
    assert_eq!(h.server_name.as_deref(), Some("legacy.example.test"));
    assert!(h.supported_versions.is_empty());
    assert!(!h.offers_tls13());
    assert!(h.alpn.is_empty());
}

#[test]
fn openssl_hello_without_sni() {
    let h = hello(&unhex(OPENSSL_NO_SNI));
    assert_eq!(h.server_name, None);
    assert!(h.offers_tls13());
}

#[test]
fn hello_split_over_several_records_is_reassembled() {
    let wire = unhex(OPENSSL_TLS13);
    let whole = hello(&wire);
    for sizes in [
        &[1usize][..],
        &[3],
        &[4],
        &[5, 100],
        &[40, 40, 40, 40, 40, 40, 40],
    ] {
        let split = resplit(&wire, sizes);
        let h = hello(&split);
        assert_eq!(h.wire_len, split.len(), "sizes {sizes:?}");
        assert_eq!(
            ClientHello { wire_len: 0, ..h },
            ClientHello {
                wire_len: 0,
                ..whole.clone()
            }
        );
    }
}

#[test]
fn bytes_after_the_hello_records_are_left_to_the_stream() {
    let mut wire = unhex(OPENSSL_TLS13);
    let len = wire.len();
    wire.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0xff]);
    assert_eq!(hello(&wire).wire_len, len);
}

#[test]
fn plain_bytes_are_not_tls_from_the_first_byte() {
    assert_eq!(reason(b"G"), "not_tls");
    assert_eq!(reason(b"GET / HTTP/1.1\r\n"), "not_tls");
    // An RDP X.224 Connection Request starts with TPKT version 3.
    assert_eq!(reason(&[0x03, 0x00, 0x00, 0x2b]), "not_tls");
    // An SSLv2-compatible hello.
    assert_eq!(reason(&[0x80, 0x2e, 0x01]), "not_tls");
}

#[test]
fn record_header_errors() {
    assert_eq!(reason(&[0x16, 0x02]), "bad_record_version");
    assert_eq!(reason(&[0x16, 0x03, 0x01, 0x40, 0x01]), "record_too_large");
    assert_eq!(reason(&[0x16, 0x03, 0x01, 0x00, 0x00]), "empty_record");
}

#[test]
fn handshake_header_errors_show_before_the_record_is_complete() {
    // A ServerHello (type 2) from a client.
    assert_eq!(reason(&[0x16, 0x03, 0x01, 0x00, 0x40, 0x02]), "not_client_hello");
    // 16 KiB + 1 announced.
    let len = MAX_HELLO_LEN - 4 + 1;
    let announce = [
        0x16,
        0x03,
        0x01,
        0x40,
        0x00,
        0x01,
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
    ];
    assert_eq!(reason(&announce), "hello_too_large");
    // Exactly the limit is fine (and incomplete).
    let len = MAX_HELLO_LEN - 4;
    let announce = [
        0x16,
        0x03,
        0x01,
        0x40,
        0x00,
        0x01,
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
    ];
    assert!(matches!(read(&announce), Ok(Read::Incomplete { .. })));
}

#[test]
fn a_hello_in_too_many_records_is_refused() {
    let wire = unhex(OPENSSL_TLS13);
    let ok = resplit(&wire, &[10; MAX_RECORDS - 1]);
    assert!(matches!(read(&ok), Ok(Read::Hello(_))));
    let too_many = resplit(&wire, &[10; MAX_RECORDS]);
    assert_eq!(reason(&too_many), "hello_too_fragmented");
    // Refused as soon as the extra record's header is in, not after buffering it.
    let cut = too_many.len() - (wire.len() - RECORD_HEADER_LEN - 10 * MAX_RECORDS) + RECORD_HEADER_LEN;
    assert_eq!(reason(&too_many[..cut]), "hello_too_fragmented");
}

#[test]
fn other_records_inside_the_hello_are_refused() {
    let wire = resplit(&unhex(OPENSSL_TLS13), &[50]);
    let mut bad = wire[..RECORD_HEADER_LEN + 50].to_vec();
    bad.extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]); // an alert
    assert_eq!(reason(&bad), "unexpected_record");
}

#[test]
fn a_record_reaching_past_the_hello_is_refused() {
    let mut wire = hello_with(&[sni(b"a.test")]);
    let len = u16::from_be_bytes([wire[3], wire[4]]) + 1;
    wire[3..5].copy_from_slice(&len.to_be_bytes());
    assert_eq!(reason(&wire), "malformed_hello");
    assert_eq!(reason(&wire[..RECORD_HEADER_LEN + 4]), "malformed_hello");
}

#[test]
fn extension_rules() {
    assert_eq!(
        hello(&hello_with(&[sni(b"Host-1.Example_x.test")]))
            .server_name
            .as_deref(),
        Some("host-1.example_x.test")
    );
    assert_eq!(
        reason(&hello_with(&[sni(b"a.test"), sni(b"b.test")])),
        "duplicate_extension"
    );
    assert_eq!(reason(&hello_with(&[sni(b"a.test.")])), "bad_server_name");
    assert_eq!(reason(&hello_with(&[sni(b"a..test")])), "bad_server_name");
    assert_eq!(
        reason(&hello_with(&[sni(b"caf\xc3\xa9.test")])),
        "bad_server_name"
    );
    assert_eq!(reason(&hello_with(&[sni(b"")])), "bad_server_name");
    assert_eq!(reason(&hello_with(&[(0, vec![0, 0])])), "malformed_extension");
    assert_eq!(reason(&hello_with(&[(0, vec![0, 9, 0])])), "malformed_extension");
    // ALPN with an empty protocol name, then with a name running past the list.
    assert_eq!(reason(&hello_with(&[(16, vec![0, 1, 0])])), "malformed_extension");
    assert_eq!(
        reason(&hello_with(&[(16, vec![0, 2, 5, b'h'])])),
        "malformed_extension"
    );
    // supported_versions with an odd length.
    assert_eq!(
        reason(&hello_with(&[(43, vec![3, 3, 4, 3])])),
        "malformed_extension"
    );
    assert_eq!(
        hello(&hello_with(&[(43, vec![4, 0x7a, 0x7a, 3, 4])])).supported_versions,
        vec![0x7a7a, 0x0304]
    );
    // Unknown extensions may repeat; they are not ours to judge.
    assert!(matches!(
        read(&hello_with(&[(0xfe0d, vec![]), (0xfe0d, vec![1])])),
        Ok(Read::Hello(_))
    ));
}

#[test]
fn body_rules() {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x02, 0x00, 0x2f, 0x01, 0x00]);
    // A TLS 1.2 hello may end after the compression methods (RFC 5246 §7.4.1.2).
    let h = hello(&wrap_hello(&body));
    assert_eq!((h.server_name, h.alpn.len()), (None, 0));
    let mut no_compression = body.clone();
    no_compression.truncate(body.len() - 2);
    no_compression.push(0);
    assert_eq!(reason(&wrap_hello(&no_compression)), "malformed_hello");
    let mut long_session_id = body.clone();
    long_session_id[34] = 33;
    assert_eq!(reason(&wrap_hello(&long_session_id)), "malformed_hello");
    let mut trailing = body.clone();
    trailing.extend_from_slice(&[0, 0, 0xff]);
    assert_eq!(reason(&wrap_hello(&trailing)), "malformed_hello");
}

#[test]
fn reasons_are_distinct() {
    let all = [
        HelloError::NotTls { first_byte: 0 },
        HelloError::UnexpectedRecord { content_type: 0 },
        HelloError::BadRecordVersion { version: 0 },
        HelloError::RecordTooLarge { len: 0 },
        HelloError::EmptyRecord,
        HelloError::NotClientHello { msg_type: 0 },
        HelloError::HelloTooLarge { len: 0 },
        HelloError::TooFragmented,
        HelloError::Malformed { field: "" },
        HelloError::MalformedExtension {
            ext_type: 0,
            problem: "",
        },
        HelloError::DuplicateExtension { ext_type: 0 },
        HelloError::BadServerName,
    ];
    let mut reasons: Vec<_> = all.iter().map(HelloError::reason).collect();
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), all.len());
}

fn assert_prefixes_incomplete(wire: &[u8]) -> Result<(), TestCaseError> {
    for cut in 0..wire.len() {
        match read(&wire[..cut]) {
            Ok(Read::Incomplete { needed }) => {
                prop_assert!(needed > cut, "cut {cut}: needed {needed}");
                prop_assert!(
                    needed <= wire.len(),
                    "cut {cut}: needed {needed} > {}",
                    wire.len()
                );
            }
            other => prop_assert!(false, "cut {cut}: {other:?}"),
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = read(&bytes);
    }

    #[test]
    fn never_panics_on_a_mutated_capture(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        split in proptest::collection::vec(1usize..200, 0..4),
    ) {
        let mut wire = resplit(&unhex(OPENSSL_TLS13), &split);
        for (at, byte) in flips {
            let i = at.index(wire.len());
            wire[i] = byte;
        }
        let _ = read(&wire);
    }

    #[test]
    fn every_prefix_of_a_valid_hello_is_incomplete(
        which in 0usize..3,
        split in proptest::collection::vec(1usize..200, 0..(MAX_RECORDS - 1)),
    ) {
        let capture = [OPENSSL_TLS13, OPENSSL_TLS12, OPENSSL_NO_SNI][which];
        let wire = resplit(&unhex(capture), &split);
        assert_prefixes_incomplete(&wire)?;
        prop_assert!(matches!(read(&wire), Ok(Read::Hello(_))));
    }
}

/// A hello offering `suites` (and nothing else) in one record.
fn hello_offering(suites: &[u16]) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0xab; 32]);
    body.push(0);
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[0x01, 0x00]);
    wrap_hello(&body)
}

#[test]
fn a_client_leading_with_chacha20_is_told_apart() {
    // OpenSSL's default order leads with TLS_AES_256_GCM_SHA384.
    assert!(!hello(&unhex(OPENSSL_TLS13)).prefers_chacha20);
    assert!(hello(&hello_offering(&[0x1303, 0x1301])).prefers_chacha20);
    // GREASE first (RFC 8701) is skipped.
    assert!(hello(&hello_offering(&[0x3a3a, 0x1303, 0x1301])).prefers_chacha20);
    assert!(!hello(&hello_offering(&[0x3a3a, 0x1301, 0x1303])).prefers_chacha20);
    // TLS 1.2 ECDHE ChaCha20 suites count too; 0x0a1a is not GREASE.
    assert!(hello(&hello_offering(&[0xcca9, 0xc02b])).prefers_chacha20);
    assert!(!hello(&hello_offering(&[0x0a1a, 0x1303])).prefers_chacha20);
}
