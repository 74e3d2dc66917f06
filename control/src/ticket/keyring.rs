//! Farm keys and the key ring that signs and verifies launch tickets.
//!
//! Rotation (PROTOCOL.md §7.4): add the new key to every node's ring, then make it current
//! on the brokers, then, once every ticket signed under the old key has expired (tens of
//! seconds), remove the old one. Each node's ring is built from the farm key files at start
//! and on reload; the ring itself is an immutable value shared as part of a config snapshot.

use std::fmt;

use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use sha2::Sha256;

use super::codec::{self, TAG_BYTES};
use super::{InvalidClaim, TicketClaims, TicketError, UnixMillis, VerifiedTicket};

/// Identifies a farm key; carried in every ticket so the verifier picks the right key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u32);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Bytes of a farm key's secret.
pub const FARM_KEY_BYTES: usize = 32;

/// A farm key: an id and a 256-bit HMAC-SHA256 secret. `Debug` shows the id only.
#[derive(Clone, PartialEq, Eq)]
pub struct FarmKey {
    id: KeyId,
    secret: [u8; FARM_KEY_BYTES],
}

impl FarmKey {
    /// A key from its id and secret (read from the farm key file).
    pub fn new(id: KeyId, secret: [u8; FARM_KEY_BYTES]) -> Self {
        Self { id, secret }
    }

    /// A fresh random key (`gatehouse farm init`, rotation).
    pub fn generate<R: RngCore + CryptoRng>(id: KeyId, rng: &mut R) -> Self {
        let mut secret = [0u8; FARM_KEY_BYTES];
        rng.fill_bytes(&mut secret);
        Self { id, secret }
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The secret, for writing the key file.
    pub fn secret(&self) -> &[u8; FARM_KEY_BYTES] {
        &self.secret
    }

    pub(super) fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .expect("HMAC accepts keys of any length, so a 32-byte key cannot fail")
    }
}

impl fmt::Debug for FarmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FarmKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a key ring change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRingError {
    /// A key with this id is already in the ring.
    DuplicateId(KeyId),
    /// No key with this id is in the ring.
    UnknownId(KeyId),
    /// The current signing key cannot be removed; make another key current first.
    RemovingCurrent(KeyId),
}

impl KeyRingError {
    /// A stable, short reason for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::DuplicateId(_) => "key_duplicate_id",
            Self::UnknownId(_) => "key_unknown_id",
            Self::RemovingCurrent(_) => "key_removing_current",
        }
    }
}

impl fmt::Display for KeyRingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateId(id) => write!(f, "farm key id {id} is already in the ring"),
            Self::UnknownId(id) => write!(f, "farm key id {id} is not in the ring"),
            Self::RemovingCurrent(id) => {
                write!(f, "farm key id {id} signs new tickets and cannot be removed")
            }
        }
    }
}

impl std::error::Error for KeyRingError {}

/// The farm keys a node holds: one current key that signs, and every key that verifies.
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: KeyId,
    /// A handful of keys at most (current, next, retiring): a list is the right map.
    keys: Vec<FarmKey>,
}

impl KeyRing {
    /// A ring holding `current`, which signs.
    pub fn new(current: FarmKey) -> Self {
        Self {
            current: current.id,
            keys: vec![current],
        }
    }

    /// Adds a key that verifies (and may later become current).
    pub fn insert(&mut self, key: FarmKey) -> Result<(), KeyRingError> {
        if self.key(key.id).is_some() {
            return Err(KeyRingError::DuplicateId(key.id));
        }
        self.keys.push(key);
        Ok(())
    }

    /// Makes the key `id` the one that signs new tickets.
    pub fn make_current(&mut self, id: KeyId) -> Result<(), KeyRingError> {
        if self.key(id).is_none() {
            return Err(KeyRingError::UnknownId(id));
        }
        self.current = id;
        Ok(())
    }

    /// Removes a retired key; tickets signed under it then fail with `UnknownKey`.
    pub fn remove(&mut self, id: KeyId) -> Result<FarmKey, KeyRingError> {
        if id == self.current {
            return Err(KeyRingError::RemovingCurrent(id));
        }
        let index = self
            .keys
            .iter()
            .position(|k| k.id == id)
            .ok_or(KeyRingError::UnknownId(id))?;
        Ok(self.keys.remove(index))
    }

    /// The id of the key that signs.
    pub fn current_id(&self) -> KeyId {
        self.current
    }

    /// The ids of every key that verifies.
    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.iter().map(|k| k.id)
    }

    /// Signs `claims` under the current key and returns the ticket's text form. The broker
    /// calls it for a `launch` in gateway mode.
    pub fn sign(&self, claims: &TicketClaims) -> Result<String, InvalidClaim> {
        let key = self
            .key(self.current)
            .expect("the current key id always names a key in the ring: remove() refuses it");
        let payload = codec::encode_payload(key.id, claims)?;
        let mut mac = key.mac();
        mac.update(codec::TAG_CONTEXT);
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        let mut raw = payload;
        raw.extend_from_slice(&tag);
        debug_assert_eq!(tag.len(), TAG_BYTES);
        Ok(codec::to_text(&raw))
    }

    /// Verifies a ticket's text form at time `now`: structure, key id, tag (compared in
    /// constant time), then expiry. The gateway calls it when a tunnel request arrives, the
    /// issuing broker again when redeeming. Binding and issuer are checked separately on the
    /// returned [`VerifiedTicket`].
    pub fn verify(&self, ticket: &str, now: UnixMillis) -> Result<VerifiedTicket, TicketError> {
        let raw = codec::from_text(ticket)?;
        let (key_id, signed, tag) = codec::split(&raw)?;
        let key = self.key(key_id).ok_or(TicketError::UnknownKey(key_id))?;
        let mut mac = key.mac();
        mac.update(codec::TAG_CONTEXT);
        mac.update(signed);
        // hmac's verify_slice compares through `subtle`, in constant time.
        mac.verify_slice(tag).map_err(|_| TicketError::Forged)?;
        let claims = codec::decode_payload(signed)?;
        if now >= claims.expires_at {
            return Err(TicketError::Expired {
                expired_at: claims.expires_at,
                now,
            });
        }
        Ok(VerifiedTicket { key_id, claims })
    }

    fn key(&self, id: KeyId) -> Option<&FarmKey> {
        self.keys.iter().find(|k| k.id == id)
    }
}
