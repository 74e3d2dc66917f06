//! Session-ticket keys that rotate on a schedule and that several nodes share through one
//! key file, so a client resumes on whichever gateway behind a HALB it reaches.
//!
//! Owns the key file format, the rotation rule and the rustls `ProducesTickets` that seals
//! tickets with these keys. It does not decide where the file lives or how often it is
//! re-read: the node calls [`TicketKeyFile::refresh`] from a timer and on SIGHUP.
//!
//! # Key file format (text, mode 0600)
//!
//! ```text
//! gatehouse-ticket-keys v1
//! # key <active-from, Unix seconds> <secret, 64 hex digits = 32 bytes>
//! key 1764259200 5f1c...e0
//! key 1764280800 9a7b...41
//! ```
//!
//! Lines starting with `#` and blank lines are ignored; keys may come in any order. At time
//! `now` the *current* key (the one that seals new tickets) is the newest key whose
//! `active-from` has passed; every key in the file opens tickets, including a *staged* one
//! whose `active-from` is still ahead. The rotating node adds a new key
//! [`TicketKeySchedule::stage_ahead`] before it becomes current, so that every node has
//! re-read the file before the first ticket sealed with it arrives; it drops a key once its
//! successor has been current for longer than a ticket lives (tickets sealed by it have
//! expired). One node (or a cron job running `gatehouse cert ticket-keys`) rotates; the
//! others only re-read.
//!
//! # Ticket format
//!
//! `key id (8) || nonce (12) || AES-256-GCM(session state) || tag (16)`, the key id being
//! the first 8 bytes of SHA-256 over the secret and bound as associated data.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;
use sha2::{Digest, Sha256};

use super::certs::{unix_seconds, write_atomic, CertError};

/// First line of a key file.
pub const FORMAT_HEADER: &str = "gatehouse-ticket-keys v1";

/// Most keys a file may hold (a sane schedule keeps 2 or 3).
pub const MAX_KEYS: usize = 32;

/// Largest key file read.
const MAX_FILE_LEN: u64 = 64 * 1024;

/// Length of a key id in a ticket.
pub const KEY_ID_LEN: usize = 8;

/// Tag length of AES-256-GCM.
const TAG_LEN: usize = 16;

/// When keys rotate and how long tickets live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketKeySchedule {
    /// A new key becomes current this long after the previous one.
    pub rotate_every: Duration,
    /// How long a ticket is good for (the lifetime hint sent to clients; RFC 8446 §4.6.1
    /// caps it at 7 days). A key stays in the file this long after its successor took over.
    pub ticket_lifetime: Duration,
    /// A new key is written this long before it becomes current, so that every node sharing
    /// the file has re-read it in time. Must exceed the nodes' re-read interval.
    pub stage_ahead: Duration,
}

impl Default for TicketKeySchedule {
    /// Six-hour keys, twelve-hour tickets (the rustls ring ticketer's choice), staged a
    /// minute ahead.
    fn default() -> Self {
        TicketKeySchedule {
            rotate_every: Duration::from_secs(6 * 3600),
            ticket_lifetime: Duration::from_secs(12 * 3600),
            stage_ahead: Duration::from_secs(60),
        }
    }
}

/// One ticket key.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKey {
    /// When it starts sealing tickets, Unix seconds.
    pub active_from_unix: i64,
    secret: [u8; 32],
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("TicketKey")
            .field("active_from_unix", &self.active_from_unix)
            .field("id", &hex(&self.id()))
            .finish()
    }
}

impl TicketKey {
    /// A new random key active from `active_from_unix`.
    pub fn generate(active_from_unix: i64, rng: &dyn SecureRandom) -> Result<TicketKey, TicketKeyError> {
        let mut secret = [0u8; 32];
        rng.fill(&mut secret).map_err(|_| TicketKeyError::Random)?;
        Ok(TicketKey {
            active_from_unix,
            secret,
        })
    }

    /// Its id in tickets: the first bytes of SHA-256 over the secret.
    pub fn id(&self) -> [u8; KEY_ID_LEN] {
        let digest = Sha256::digest(self.secret);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        id
    }
}

/// The keys of one key file, sorted by `active_from`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TicketKeySet {
    keys: Vec<TicketKey>,
}

/// Why a key file cannot be used.
#[derive(Debug)]
pub enum TicketKeyError {
    /// Reading or writing the file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file does not follow the format (line from 1).
    Format {
        /// The line.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// The system random generator failed.
    Random,
}

impl fmt::Display for TicketKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TicketKeyError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            TicketKeyError::Format { line, problem } => write!(f, "line {line}: {problem}"),
            TicketKeyError::Random => write!(f, "the system random generator failed"),
        }
    }
}

impl std::error::Error for TicketKeyError {}

impl TicketKeySet {
    /// Parses the text of a key file.
    pub fn parse(text: &str) -> Result<TicketKeySet, TicketKeyError> {
        let bad = |line: usize, problem: &str| TicketKeyError::Format {
            line,
            problem: problem.to_string(),
        };
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        match lines.next() {
            Some((_, FORMAT_HEADER)) => {}
            Some((n, _)) => return Err(bad(n, &format!("expected {FORMAT_HEADER:?}"))),
            None => return Err(bad(1, &format!("empty file, expected {FORMAT_HEADER:?}"))),
        }
        let mut keys: Vec<TicketKey> = Vec::new();
        for (n, line) in lines {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ["key", active, secret] = fields[..] else {
                return Err(bad(n, "expected `key <active-from> <64 hex digits>`"));
            };
            let active_from_unix = active
                .parse::<i64>()
                .map_err(|_| bad(n, "active-from is not a number of seconds"))?;
            let secret = unhex32(secret).ok_or_else(|| bad(n, "the secret is not 64 hex digits"))?;
            let key = TicketKey {
                active_from_unix,
                secret,
            };
            if keys.iter().any(|k| k.id() == key.id()) {
                return Err(bad(n, "the same key twice"));
            }
            if keys.len() == MAX_KEYS {
                return Err(bad(n, &format!("more than {MAX_KEYS} keys")));
            }
            keys.push(key);
        }
        keys.sort_by_key(|k| k.active_from_unix);
        Ok(TicketKeySet { keys })
    }

    /// The file text for these keys.
    pub fn to_text(&self) -> String {
        let mut out = format!("{FORMAT_HEADER}\n# key <active-from, Unix seconds> <secret, 32 bytes hex>\n");
        for k in &self.keys {
            out.push_str(&format!("key {} {}\n", k.active_from_unix, hex(&k.secret)));
        }
        out
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<TicketKeySet, TicketKeyError> {
        let io = |source| TicketKeyError::Io {
            path: path.into(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_FILE_LEN {
            return Err(TicketKeyError::Format {
                line: 0,
                problem: format!("larger than {MAX_FILE_LEN} bytes"),
            });
        }
        TicketKeySet::parse(&std::fs::read_to_string(path).map_err(io)?)
    }

    /// Writes a key file atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), TicketKeyError> {
        write_atomic(path, self.to_text().as_bytes(), 0o600).map_err(|e| match e {
            CertError::Io { path, source } => TicketKeyError::Io { path, source },
            other => TicketKeyError::Io {
                path: path.into(),
                source: std::io::Error::other(other.to_string()),
            },
        })
    }

    /// The keys, oldest first.
    pub fn keys(&self) -> &[TicketKey] {
        &self.keys
    }

    /// The key that seals new tickets at `now_unix`: the newest one already active.
    pub fn current(&self, now_unix: i64) -> Option<&TicketKey> {
        self.keys.iter().rev().find(|k| k.active_from_unix <= now_unix)
    }

    /// The set after a rotation at `now_unix`, or `None` when none is due. Due when there is
    /// no key, or when the newest key became active `rotate_every - stage_ahead` ago: then a
    /// key is added that becomes active `stage_ahead` later (at once for the very first key),
    /// and keys whose successor has been active longer than a ticket lives are dropped.
    pub fn rotated(
        &self,
        now_unix: i64,
        schedule: &TicketKeySchedule,
        rng: &dyn SecureRandom,
    ) -> Result<Option<TicketKeySet>, TicketKeyError> {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let mut keys = self.keys.clone();
        let due = match keys.last() {
            None => Some(now_unix),
            Some(newest) => {
                let next = newest
                    .active_from_unix
                    .saturating_add(secs(schedule.rotate_every));
                (now_unix >= next.saturating_sub(secs(schedule.stage_ahead)))
                    .then(|| next.max(now_unix.saturating_add(secs(schedule.stage_ahead))))
            }
        };
        let pruned_len = {
            let lifetime = secs(schedule.ticket_lifetime);
            let successor_active: Vec<Option<i64>> = (0..keys.len())
                .map(|i| keys.get(i + 1).map(|k| k.active_from_unix))
                .collect();
            let before = keys.len();
            let mut i = 0;
            keys.retain(|_| {
                let keep = match successor_active[i] {
                    Some(from) => now_unix < from.saturating_add(lifetime),
                    None => true,
                };
                i += 1;
                keep
            });
            before - keys.len()
        };
        if due.is_none() && pruned_len == 0 {
            return Ok(None);
        }
        if let Some(active_from) = due {
            keys.push(TicketKey::generate(active_from, rng)?);
        }
        Ok(Some(TicketKeySet { keys }))
    }
}

/// A rustls ticket sealer over a [`TicketKeySet`] that the node can replace at any time
/// (new file contents) without rebuilding the `ServerConfig`.
pub struct SharedTicketer {
    keys: RwLock<Arc<SealingKeys>>,
    lifetime_secs: u32,
    clock: fn() -> SystemTime,
    /// Draws ticket nonces: the TLS provider's generator (aws-lc's, in user space; a
    /// getrandom(2) call per ticket cost about 1 us, two per TLS 1.3 handshake).
    nonces: &'static dyn rustls::crypto::SecureRandom,
}

struct SealingKeys {
    set: TicketKeySet,
    aead: Vec<([u8; KEY_ID_LEN], LessSafeKey)>,
}

impl fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTicketer")
            .field("keys", &self.keys.read().set)
            .field("lifetime_secs", &self.lifetime_secs)
            .finish()
    }
}

impl SharedTicketer {
    /// A sealer with these keys, telling clients tickets live `ticket_lifetime`.
    pub fn new(set: TicketKeySet, schedule: &TicketKeySchedule) -> Arc<SharedTicketer> {
        SharedTicketer::with_clock(set, schedule, SystemTime::now)
    }

    /// As [`SharedTicketer::new`] with another clock (tests).
    pub fn with_clock(
        set: TicketKeySet,
        schedule: &TicketKeySchedule,
        clock: fn() -> SystemTime,
    ) -> Arc<SharedTicketer> {
        // RFC 8446 §4.6.1: at most 7 days.
        let lifetime_secs = schedule.ticket_lifetime.as_secs().min(7 * 24 * 3600) as u32;
        Arc::new(SharedTicketer {
            keys: RwLock::new(Arc::new(SealingKeys::new(set))),
            lifetime_secs,
            clock,
            nonces: super::provider().secure_random,
        })
    }

    /// Replaces the keys (after the file changed). Connections in flight keep working:
    /// each call to seal or open takes the keys of that moment.
    pub fn install(&self, set: TicketKeySet) {
        let mut keys = self.keys.write();
        if keys.set != set {
            *keys = Arc::new(SealingKeys::new(set));
        }
    }

    /// The keys in use.
    pub fn key_set(&self) -> TicketKeySet {
        self.keys.read().set.clone()
    }
}

impl SealingKeys {
    fn new(set: TicketKeySet) -> SealingKeys {
        let aead = set
            .keys
            .iter()
            .map(|k| {
                // A 32-byte secret is always a valid AES-256 key.
                let unbound = UnboundKey::new(&AES_256_GCM, &k.secret).expect("32-byte AES-256-GCM key");
                (k.id(), LessSafeKey::new(unbound))
            })
            .collect();
        SealingKeys { set, aead }
    }
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime_secs
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.read().clone();
        let current = keys.set.current(unix_seconds((self.clock)()))?;
        let id = current.id();
        let (_, aead) = keys.aead.iter().find(|(kid, _)| *kid == id)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.nonces.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&id);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        aead.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(id), &mut sealed)
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < KEY_ID_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (id, rest) = cipher.split_at(KEY_ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.keys.read().clone();
        let (_, aead) = keys.aead.iter().find(|(kid, _)| kid[..] == *id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = aead.open_in_place(nonce, Aad::from(id), &mut buf).ok()?;
        Some(plain.to_vec())
    }
}

/// Whether this node writes the shared file or only re-reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFileRole {
    /// Creates the file when missing and rotates it on schedule.
    Rotate,
    /// Only re-reads it (another node or a cron job rotates).
    Follow,
}

/// A ticket key file as one node uses it.
#[derive(Debug, Clone)]
pub struct TicketKeyFile {
    /// The file.
    pub path: PathBuf,
    /// The schedule.
    pub schedule: TicketKeySchedule,
    /// Rotate or follow.
    pub role: KeyFileRole,
}

/// What [`TicketKeyFile::refresh`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// Nothing changed.
    Unchanged,
    /// New keys from the file were installed.
    Reloaded,
    /// This node rotated the file and installed the result.
    Rotated,
}

impl TicketKeyFile {
    /// Re-reads the file (rotating it first when this node rotates and a rotation is due)
    /// and installs the keys into `ticketer`. The node calls it at start, on SIGHUP and from
    /// a timer shorter than `stage_ahead`. On error the ticketer keeps its keys.
    pub fn refresh(
        &self,
        ticketer: &SharedTicketer,
        now: SystemTime,
    ) -> Result<RefreshOutcome, TicketKeyError> {
        let set = match (TicketKeySet::load(&self.path), self.role) {
            (Ok(set), _) => set,
            (Err(TicketKeyError::Io { source, .. }), KeyFileRole::Rotate)
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                TicketKeySet::default()
            }
            (Err(e), _) => return Err(e),
        };
        if self.role == KeyFileRole::Rotate {
            if let Some(rotated) = set.rotated(unix_seconds(now), &self.schedule, &SystemRandom::new())? {
                rotated.save(&self.path)?;
                ticketer.install(rotated);
                return Ok(RefreshOutcome::Rotated);
            }
        }
        if ticketer.key_set() == set {
            return Ok(RefreshOutcome::Unchanged);
        }
        ticketer.install(set);
        Ok(RefreshOutcome::Reloaded)
    }

    /// Loads (or, when rotating, creates) the file and returns a ticketer with its keys.
    pub fn open(&self, now: SystemTime) -> Result<Arc<SharedTicketer>, TicketKeyError> {
        let ticketer = SharedTicketer::new(TicketKeySet::default(), &self.schedule);
        self.refresh(&ticketer, now)?;
        Ok(ticketer)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn set_at(times: &[i64]) -> TicketKeySet {
        let rng = SystemRandom::new();
        TicketKeySet {
            keys: times
                .iter()
                .map(|&t| TicketKey::generate(t, &rng).expect("random"))
                .collect(),
        }
    }

    #[test]
    fn file_text_round_trips_and_errors_name_the_line() {
        let set = set_at(&[100, 200]);
        assert_eq!(TicketKeySet::parse(&set.to_text()).expect("parses"), set);
        let err = TicketKeySet::parse("gatehouse-ticket-keys v1\nkey 1 abc\n").expect_err("short secret");
        assert!(err.to_string().starts_with("line 2:"), "{err}");
        assert!(TicketKeySet::parse("something else\n").is_err());
        let twice = format!(
            "{}{}",
            set.to_text(),
            set.to_text().lines().nth(2).expect("a key line")
        );
        assert!(TicketKeySet::parse(&twice)
            .expect_err("dup")
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn current_is_the_newest_active_key() {
        let set = set_at(&[100, 200, 300]);
        assert_eq!(set.current(50), None);
        assert_eq!(set.current(100).map(|k| k.active_from_unix), Some(100));
        assert_eq!(set.current(299).map(|k| k.active_from_unix), Some(200));
        assert_eq!(set.current(1000).map(|k| k.active_from_unix), Some(300));
    }

    #[test]
    fn rotation_stages_ahead_and_prunes_after_the_ticket_lifetime() {
        let schedule = TicketKeySchedule {
            rotate_every: Duration::from_secs(1000),
            ticket_lifetime: Duration::from_secs(1500),
            stage_ahead: Duration::from_secs(60),
        };
        let rng = SystemRandom::new();
        let first = TicketKeySet::default()
            .rotated(10_000, &schedule, &rng)
            .expect("rng")
            .expect("due");
        assert_eq!(
            first
                .keys()
                .iter()
                .map(|k| k.active_from_unix)
                .collect::<Vec<_>>(),
            vec![10_000]
        );
        assert_eq!(first.rotated(10_900, &schedule, &rng).expect("rng"), None);
        let second = first.rotated(10_940, &schedule, &rng).expect("rng").expect("due");
        let times = |s: &TicketKeySet| s.keys().iter().map(|k| k.active_from_unix).collect::<Vec<_>>();
        assert_eq!(times(&second), vec![10_000, 11_000]);
        assert_eq!(second.current(10_999).map(|k| k.active_from_unix), Some(10_000));
        // A node that was down for long starts the next key stage_ahead from now.
        let third = second
            .rotated(20_000, &schedule, &rng)
            .expect("rng")
            .expect("due");
        assert_eq!(times(&third), vec![11_000, 20_060]);
        // On time: the next key becomes active exactly rotate_every after the previous.
        let fourth = third.rotated(21_000, &schedule, &rng).expect("rng").expect("due");
        assert_eq!(times(&fourth), vec![11_000, 20_060, 21_060]);
        // No key due, but 11_000's successor has been active for a ticket lifetime: dropped.
        let fifth = fourth
            .rotated(21_600, &schedule, &rng)
            .expect("rng")
            .expect("pruned");
        assert_eq!(times(&fifth), vec![20_060, 21_060]);
    }

    #[test]
    fn tickets_open_with_every_key_in_the_file_and_not_after_it_is_dropped() {
        fn clock() -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_secs(150)
        }
        let schedule = TicketKeySchedule::default();
        let set = set_at(&[100, 200]);
        let node_a = SharedTicketer::with_clock(set.clone(), &schedule, clock);
        let node_b = SharedTicketer::with_clock(set.clone(), &schedule, clock);
        let ticket = node_a.encrypt(b"session state").expect("sealed");
        assert_eq!(
            &ticket[..KEY_ID_LEN],
            &set.keys()[0].id(),
            "sealed with the current key"
        );
        assert_eq!(node_b.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        // Tampering is detected.
        let mut bad = ticket.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(node_b.decrypt(&bad), None);
        // Once the sealing key is dropped from the file, its tickets no longer open.
        node_b.install(TicketKeySet {
            keys: set.keys()[1..].to_vec(),
        });
        assert_eq!(node_b.decrypt(&ticket), None);
        assert_eq!(node_a.lifetime(), 12 * 3600);
    }

    #[test]
    fn a_rotating_node_creates_the_file_and_a_follower_reads_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tickets.keys");
        let rotator = TicketKeyFile {
            path: path.clone(),
            schedule: TicketKeySchedule::default(),
            role: KeyFileRole::Rotate,
        };
        let follower = TicketKeyFile {
            role: KeyFileRole::Follow,
            ..rotator.clone()
        };
        let now = SystemTime::now();
        assert!(follower.open(now).is_err(), "a follower needs the file");
        let a = rotator.open(now).expect("created");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).expect("file").permissions().mode() & 0o777,
            0o600
        );
        let b = follower.open(now).expect("read");
        assert_eq!(a.key_set(), b.key_set());
        assert_eq!(
            follower.refresh(&b, now).expect("read"),
            RefreshOutcome::Unchanged
        );
        let later = now + Duration::from_secs(6 * 3600);
        assert_eq!(
            rotator.refresh(&a, later).expect("rotated"),
            RefreshOutcome::Rotated
        );
        assert_eq!(
            follower.refresh(&b, later).expect("read"),
            RefreshOutcome::Reloaded
        );
        assert_eq!(a.key_set().keys().len(), 2);
        assert_eq!(a.key_set(), b.key_set());
    }

    proptest! {
        #[test]
        fn opening_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let t = SharedTicketer::new(set_at(&[0]), &TicketKeySchedule::default());
            prop_assert_eq!(t.decrypt(&bytes), None);
        }

        #[test]
        fn parsing_any_text_never_panics(text in "\\PC{0,300}") {
            let _ = TicketKeySet::parse(&text);
            let _ = TicketKeySet::parse(&format!("{FORMAT_HEADER}\nkey {text}"));
        }
    }
}
