//! Login session tokens: what `login_ok` hands the gateway, and what `list_resources` and
//! `launch` present. Random 256-bit values, kept by the broker that issued them with the
//! user, groups, site and an absolute expiry.
//!
//! The table is keyed by the SHA-256 of the token, so a lookup's timing depends on a hash
//! of the guess rather than on how many of its bytes match a real token, and a memory dump
//! holds no usable token. Randomness and time are passed in.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

use crate::message::Secret;

/// Random bytes in a token (43 characters of base64url).
pub const TOKEN_BYTES: usize = 32;

/// What a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSession {
    /// The user, as the directory spells it.
    pub user: String,
    /// The user's effective groups at login.
    pub groups: Vec<String>,
    /// The site of the gateway that logged the user in; the token works there only.
    pub site: String,
    /// The client address at login, for the audit log.
    pub client_addr: SocketAddr,
    /// When the token stops working.
    pub expires_at: Instant,
}

/// The table of live tokens, bounded by `capacity`.
#[derive(Debug)]
pub struct LoginSessions {
    capacity: usize,
    by_digest: HashMap<[u8; 32], LoginSession>,
    expiries: BinaryHeap<Reverse<(Instant, [u8; 32])>>,
}

/// The table is full of unexpired sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionsFull;

impl LoginSessions {
    /// An empty table holding at most `capacity` sessions.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            by_digest: HashMap::new(),
            expiries: BinaryHeap::new(),
        }
    }

    /// Issues a fresh token for `session`.
    pub fn issue<R: RngCore + CryptoRng>(
        &mut self,
        session: LoginSession,
        rng: &mut R,
        now: Instant,
    ) -> Result<Secret, SessionsFull> {
        self.purge(now);
        if self.by_digest.len() >= self.capacity {
            return Err(SessionsFull);
        }
        let mut raw = [0u8; TOKEN_BYTES];
        rng.fill_bytes(&mut raw);
        let token = URL_SAFE_NO_PAD.encode(raw);
        let key = digest(&token);
        self.expiries.push(Reverse((session.expires_at, key)));
        self.by_digest.insert(key, session);
        Ok(Secret::new(token))
    }

    /// The session of `token` if it is live at `now`.
    pub fn lookup(&self, token: &Secret, now: Instant) -> Option<&LoginSession> {
        self.by_digest
            .get(&digest(token.expose()))
            .filter(|s| now < s.expires_at)
    }

    /// Ends a session (logout, or an administrator disabling the user).
    pub fn revoke(&mut self, token: &Secret) -> Option<LoginSession> {
        self.by_digest.remove(&digest(token.expose()))
    }

    /// Ends every session of `user`; returns how many.
    pub fn revoke_user(&mut self, user: &str) -> usize {
        let before = self.by_digest.len();
        self.by_digest.retain(|_, s| s.user != user);
        before - self.by_digest.len()
    }

    /// Keeps only the sessions `keep` accepts (a farm reload ending sessions of a removed
    /// site); returns how many ended.
    pub fn retain(&mut self, mut keep: impl FnMut(&LoginSession) -> bool) -> usize {
        let before = self.by_digest.len();
        self.by_digest.retain(|_, s| keep(s));
        before - self.by_digest.len()
    }

    /// Changes the most sessions held; live ones above a lower limit stay until they
    /// expire, and new logins are refused meanwhile.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
    }

    /// Drops expired sessions; the broker's timer calls it.
    pub fn purge(&mut self, now: Instant) {
        while let Some(Reverse((at, key))) = self.expiries.peek().copied() {
            if at > now {
                break;
            }
            self.expiries.pop();
            if self.by_digest.get(&key).is_some_and(|s| s.expires_at <= now) {
                self.by_digest.remove(&key);
            }
        }
        // Revoked entries leave stale heap items; rebuild when they dominate.
        if self.expiries.len() > 2 * self.by_digest.len() + 1024 {
            self.expiries = self
                .by_digest
                .iter()
                .map(|(k, s)| Reverse((s.expires_at, *k)))
                .collect();
        }
    }

    /// Live sessions (for metrics).
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn session(user: &str, expires_at: Instant) -> LoginSession {
        LoginSession {
            user: user.into(),
            groups: vec![],
            site: "site-a".into(),
            client_addr: "203.0.113.7:5000".parse().unwrap(),
            expires_at,
        }
    }

    #[test]
    fn issue_lookup_expire_revoke() {
        let mut rng = StdRng::seed_from_u64(5);
        let t0 = Instant::now();
        let mut table = LoginSessions::new(10);
        let end = t0 + Duration::from_secs(60);
        let a = table.issue(session("alice", end), &mut rng, t0).unwrap();
        let b = table.issue(session("bob", end), &mut rng, t0).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(table.lookup(&a, t0).unwrap().user, "alice");
        assert!(table.lookup(&Secret::new("forged"), t0).is_none());
        assert!(table.lookup(&a, end).is_none(), "expired at its expiry");
        assert_eq!(table.revoke_user("bob"), 1);
        assert!(table.lookup(&b, t0).is_none());
        table.purge(end);
        assert!(table.is_empty());
    }

    #[test]
    fn bounded() {
        let mut rng = StdRng::seed_from_u64(6);
        let t0 = Instant::now();
        let mut table = LoginSessions::new(2);
        let end = t0 + Duration::from_secs(1);
        table.issue(session("a", end), &mut rng, t0).unwrap();
        table.issue(session("b", end), &mut rng, t0).unwrap();
        assert_eq!(table.issue(session("c", end), &mut rng, t0), Err(SessionsFull));
        // Once the old ones expire there is room again.
        assert!(table
            .issue(session("c", end + Duration::from_secs(1)), &mut rng, end)
            .is_ok());
    }
}
