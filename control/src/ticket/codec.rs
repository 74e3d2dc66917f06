//! The byte layout of a launch ticket (PROTOCOL.md §7.2) and its base64url text form.
//! Pure functions; the key ring adds and checks the tag.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::{InvalidClaim, KeyId, MalformedTicket, Nonce, TicketClaims, TicketError, UnixMillis};

/// Version byte of the layout below.
pub(super) const FORMAT_VERSION: u8 = 1;

/// Bytes of the HMAC-SHA256 tag at the end.
pub(super) const TAG_BYTES: usize = 32;

/// Prepended to the payload under the MAC (never sent), so a farm key's tags for tickets can
/// never be confused with tags it might make for anything else.
pub(super) const TAG_CONTEXT: &[u8] = b"gatehouse launch ticket v1\0";

/// version (1) + key id (4) + expiry (8) + nonce (16) + port (2).
const FIXED_BYTES: usize = 31;

/// Four length-prefixed strings (issuer, user, host, site), each at most 255 bytes.
const MAX_RAW_BYTES: usize = FIXED_BYTES + 4 * (1 + 255) + TAG_BYTES;

/// Smallest possible ticket: four one-byte strings.
const MIN_RAW_BYTES: usize = FIXED_BYTES + 4 * 2 + TAG_BYTES;

/// Longest text form of a ticket, in characters (base64url of the largest layout).
pub const MAX_TICKET_CHARS: usize = (MAX_RAW_BYTES * 4).div_ceil(3);

pub(super) fn to_text(raw: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(raw)
}

pub(super) fn from_text(text: &str) -> Result<Vec<u8>, TicketError> {
    if text.len() > MAX_TICKET_CHARS {
        return Err(TicketError::Malformed(MalformedTicket::TooLong));
    }
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| TicketError::Malformed(MalformedTicket::NotBase64))
}

/// Splits a raw ticket into its key id, the signed bytes and the tag, checking only what
/// must be read before the tag can be checked.
pub(super) fn split(raw: &[u8]) -> Result<(KeyId, &[u8], &[u8]), TicketError> {
    if raw.len() < MIN_RAW_BYTES {
        return Err(TicketError::Malformed(MalformedTicket::Truncated));
    }
    if raw[0] != FORMAT_VERSION {
        return Err(TicketError::Malformed(MalformedTicket::UnknownVersion(raw[0])));
    }
    let key_id = KeyId(u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]));
    let (signed, tag) = raw.split_at(raw.len() - TAG_BYTES);
    Ok((key_id, signed, tag))
}

pub(super) fn encode_payload(key_id: KeyId, claims: &TicketClaims) -> Result<Vec<u8>, InvalidClaim> {
    let mut out = Vec::with_capacity(MAX_RAW_BYTES);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&key_id.0.to_be_bytes());
    out.extend_from_slice(&claims.expires_at.0.to_be_bytes());
    out.extend_from_slice(&claims.nonce.0);
    out.extend_from_slice(&claims.port.to_be_bytes());
    for (field, value) in [
        ("issuer", &claims.issuer),
        ("user", &claims.user),
        ("host", &claims.host),
        ("site", &claims.site),
    ] {
        let len = u8::try_from(value.len()).map_err(|_| InvalidClaim { field })?;
        if len == 0 {
            return Err(InvalidClaim { field });
        }
        out.push(len);
        out.extend_from_slice(value.as_bytes());
    }
    Ok(out)
}

/// Reads the claims from the signed bytes (tag already checked).
pub(super) fn decode_payload(signed: &[u8]) -> Result<TicketClaims, TicketError> {
    let malformed = |m| TicketError::Malformed(m);
    let fixed = signed
        .get(..FIXED_BYTES)
        .ok_or(malformed(MalformedTicket::Truncated))?;
    let mut expires = [0u8; 8];
    expires.copy_from_slice(&fixed[5..13]);
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(&fixed[13..29]);
    let port = u16::from_be_bytes([fixed[29], fixed[30]]);
    let mut rest = &signed[FIXED_BYTES..];
    let claims = TicketClaims {
        issuer: take_string(&mut rest, "issuer")?,
        user: take_string(&mut rest, "user")?,
        host: take_string(&mut rest, "host")?,
        site: take_string(&mut rest, "site")?,
        port,
        expires_at: UnixMillis(u64::from_be_bytes(expires)),
        nonce: Nonce(nonce),
    };
    if !rest.is_empty() {
        return Err(malformed(MalformedTicket::TrailingBytes));
    }
    Ok(claims)
}

/// Reads one length-prefixed UTF-8 string from the front of `rest`.
fn take_string(rest: &mut &[u8], field: &'static str) -> Result<String, TicketError> {
    let (&len, tail) = rest
        .split_first()
        .ok_or(TicketError::Malformed(MalformedTicket::Truncated))?;
    let len = usize::from(len);
    if len == 0 {
        return Err(TicketError::Malformed(MalformedTicket::EmptyField(field)));
    }
    let bytes = tail
        .get(..len)
        .ok_or(TicketError::Malformed(MalformedTicket::Truncated))?;
    *rest = &tail[len..];
    String::from_utf8(bytes.to_vec()).map_err(|_| TicketError::Malformed(MalformedTicket::BadUtf8(field)))
}
