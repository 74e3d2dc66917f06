//! The broker's local user database: a TOML file of users with argon2id password hashes
//! (RFC 9106) as PHC strings, their groups, and disabled/locked flags (control/FARM.md §users).
//!
//! `gatehouse user add|del|passwd|list` edit the file through this type; the broker loads
//! it at start and on reload and checks passwords with [`UserDb::verify`]. This module owns
//! the file and the hashes; throttling, sessions and the audit log are the broker's.
//! Randomness (salts) is passed in; the only I/O is `load` and `save`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use super::auth::AuthOutcome;
use crate::message::validate::check_text;
use crate::message::{MAX_PASSWORD_BYTES, MAX_RESOURCE_BYTES, MAX_USER_BYTES};

/// Largest users file read, in bytes.
pub const MAX_USERS_FILE_BYTES: u64 = 64 << 20;

/// The argon2id cost of new hashes. Existing hashes keep the cost they were made with (it is
/// part of the PHC string), so raising it takes effect as passwords are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    /// Memory, in KiB (`m`).
    pub memory_kib: u32,
    /// Passes (`t`).
    pub iterations: u32,
    /// Lanes (`p`).
    pub parallelism: u32,
}

impl Default for HashCost {
    /// The argon2 crate's defaults, which follow the OWASP recommendation for argon2id:
    /// m = 19 MiB, t = 2, p = 1.
    fn default() -> Self {
        Self {
            memory_kib: Params::DEFAULT_M_COST,
            iterations: Params::DEFAULT_T_COST,
            parallelism: Params::DEFAULT_P_COST,
        }
    }
}

/// One local user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalUser {
    /// The login name (exact match).
    pub name: String,
    /// Groups the user belongs to.
    pub groups: Vec<String>,
    /// Whether the account is disabled (`user disable`); refused even with the right password.
    pub disabled: bool,
    /// Whether an administrator locked the account; refused even with the right password.
    pub locked: bool,
    hash: String,
}

impl LocalUser {
    /// The PHC string of the password hash (never the password).
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

/// Why a users-file operation failed.
#[derive(Debug)]
pub enum UserDbError {
    /// The file cannot be read.
    Read {
        /// The file.
        path: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// The file cannot be written or renamed into place.
    Write {
        /// The file.
        path: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// Larger than [`MAX_USERS_FILE_BYTES`].
    TooLarge {
        /// The file.
        path: String,
    },
    /// Not TOML of the users file's shape; the message names the key, line and column.
    Syntax(String),
    /// A value breaks a rule; `key` is its path, e.g. `user[3].hash`.
    Invalid {
        /// Where.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// `add` of a name that exists.
    DuplicateUser(String),
    /// `remove`, `set_password`, ... of a name that does not exist.
    UnknownUser(String),
    /// A new password was refused (empty or too long).
    BadPassword(&'static str),
    /// A user name or group name was refused.
    BadName(String),
    /// The hash could not be computed (bad cost parameters).
    Hash(String),
}

impl fmt::Display for UserDbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, error } => write!(f, "cannot read users file {path}: {error}"),
            Self::Write { path, error } => write!(f, "cannot write users file {path}: {error}"),
            Self::TooLarge { path } => {
                write!(f, "users file {path} is larger than {MAX_USERS_FILE_BYTES} bytes")
            }
            Self::Syntax(message) => write!(f, "users file: {message}"),
            Self::Invalid { key, problem } => write!(f, "users file: {key}: {problem}"),
            Self::DuplicateUser(name) => write!(f, "user {name:?} already exists"),
            Self::UnknownUser(name) => write!(f, "no user {name:?}"),
            Self::BadPassword(why) => write!(f, "password refused: {why}"),
            Self::BadName(why) => write!(f, "name refused: {why}"),
            Self::Hash(why) => write!(f, "cannot hash password: {why}"),
        }
    }
}

impl std::error::Error for UserDbError {}

/// The local user database.
#[derive(Debug)]
pub struct UserDb {
    users: BTreeMap<String, LocalUser>,
    cost: HashCost,
    /// A hash of nothing under `cost`, checked when the user is unknown so that the answer
    /// takes as long as for a known user.
    dummy_hash: OnceLock<String>,
    /// Password hashes checked so far (a metric, and what throttling tests count).
    hash_checks: AtomicU64,
}

impl Default for UserDb {
    fn default() -> Self {
        Self::new(HashCost::default())
    }
}

impl UserDb {
    /// An empty database hashing new passwords at `cost`.
    pub fn new(cost: HashCost) -> Self {
        Self {
            users: BTreeMap::new(),
            cost,
            dummy_hash: OnceLock::new(),
            hash_checks: AtomicU64::new(0),
        }
    }

    /// Reads and validates the users file at `path`; new hashes use the default cost.
    pub fn load(path: &Path) -> Result<Self, UserDbError> {
        let shown = path.display().to_string();
        let read = |error| UserDbError::Read {
            path: shown.clone(),
            error,
        };
        let len = fs::metadata(path).map_err(read)?.len();
        if len > MAX_USERS_FILE_BYTES {
            return Err(UserDbError::TooLarge { path: shown });
        }
        let text = fs::read_to_string(path).map_err(read)?;
        Self::parse(&text)
    }

    /// Like [`UserDb::load`], but a missing file is an empty database (the first
    /// `gatehouse user add`).
    pub fn load_or_new(path: &Path) -> Result<Self, UserDbError> {
        match Self::load(path) {
            Err(UserDbError::Read { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
                Ok(Self::default())
            }
            other => other,
        }
    }

    /// Validates a users file's text.
    pub fn parse(text: &str) -> Result<Self, UserDbError> {
        let file: UsersFile = toml::from_str(text).map_err(|e| UserDbError::Syntax(e.to_string()))?;
        let mut db = Self::default();
        for (i, entry) in file.users.into_iter().enumerate() {
            let invalid = |field: &str, problem: &str| UserDbError::Invalid {
                key: format!("user[{i}].{field}"),
                problem: problem.to_string(),
            };
            check_user_name(&entry.name).map_err(|e| invalid("name", &e.to_string()))?;
            for group in &entry.groups {
                check_group_name(group).map_err(|e| invalid("groups", &e.to_string()))?;
            }
            check_phc(&entry.hash).map_err(|problem| invalid("hash", &problem))?;
            if db.users.contains_key(&entry.name) {
                return Err(invalid("name", &format!("duplicate user {:?}", entry.name)));
            }
            db.users.insert(
                entry.name.clone(),
                LocalUser {
                    name: entry.name,
                    groups: entry.groups,
                    disabled: entry.disabled,
                    locked: entry.locked,
                    hash: entry.hash,
                },
            );
        }
        Ok(db)
    }

    /// The same database hashing new passwords at `cost`.
    pub fn with_cost(mut self, cost: HashCost) -> Self {
        self.cost = cost;
        self.dummy_hash = OnceLock::new();
        self
    }

    /// Writes the database to `path` atomically: a temporary file beside it, mode 0600,
    /// synced, then renamed over `path`, then the directory synced. Readers see the old file
    /// or the new one, never a mix.
    pub fn save(&self, path: &Path) -> Result<(), UserDbError> {
        let write = |error| UserDbError::Write {
            path: path.display().to_string(),
            error,
        };
        let text = self.to_toml();
        let file_name = path
            .file_name()
            .ok_or_else(|| write(std::io::Error::other("path has no file name")))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        // A leftover from a crashed writer with our pid: ours to replace.
        let _ = fs::remove_file(&tmp);
        let result = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            // The umask can only clear bits; set the mode exactly anyway.
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, path)?;
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(write)
    }

    /// Adds a user with `password` and `groups`. `rng` supplies the salt.
    pub fn add<R: RngCore + CryptoRng>(
        &mut self,
        name: &str,
        password: &str,
        groups: Vec<String>,
        rng: &mut R,
    ) -> Result<(), UserDbError> {
        check_user_name(name)?;
        for group in &groups {
            check_group_name(group)?;
        }
        if self.users.contains_key(name) {
            return Err(UserDbError::DuplicateUser(name.to_string()));
        }
        let hash = self.hash(password, rng)?;
        self.users.insert(
            name.to_string(),
            LocalUser {
                name: name.to_string(),
                groups,
                disabled: false,
                locked: false,
                hash,
            },
        );
        Ok(())
    }

    /// Removes a user.
    pub fn remove(&mut self, name: &str) -> Result<LocalUser, UserDbError> {
        self.users
            .remove(name)
            .ok_or_else(|| UserDbError::UnknownUser(name.to_string()))
    }

    /// Sets a user's password. `rng` supplies the salt.
    pub fn set_password<R: RngCore + CryptoRng>(
        &mut self,
        name: &str,
        password: &str,
        rng: &mut R,
    ) -> Result<(), UserDbError> {
        if !self.users.contains_key(name) {
            return Err(UserDbError::UnknownUser(name.to_string()));
        }
        let hash = self.hash(password, rng)?;
        self.user_mut(name)?.hash = hash;
        Ok(())
    }

    /// Disables or enables a user.
    pub fn set_disabled(&mut self, name: &str, disabled: bool) -> Result<(), UserDbError> {
        self.user_mut(name)?.disabled = disabled;
        Ok(())
    }

    /// Locks or unlocks a user (an administrator's lock, not the throttling lock-out).
    pub fn set_locked(&mut self, name: &str, locked: bool) -> Result<(), UserDbError> {
        self.user_mut(name)?.locked = locked;
        Ok(())
    }

    /// Replaces a user's groups.
    pub fn set_groups(&mut self, name: &str, groups: Vec<String>) -> Result<(), UserDbError> {
        for group in &groups {
            check_group_name(group)?;
        }
        self.user_mut(name)?.groups = groups;
        Ok(())
    }

    /// Checks `password` for `name`. The hash is checked in every case, with a stand-in
    /// hash for unknown users, so timing does not reveal which names exist; flags are
    /// reported only to someone who knows the password.
    pub fn verify(&self, name: &str, password: &str) -> AuthOutcome {
        let Some(user) = self.users.get(name) else {
            self.check_hash(self.dummy_hash(), password);
            return AuthOutcome::UnknownUser;
        };
        if !self.check_hash(&user.hash, password) {
            AuthOutcome::WrongPassword
        } else if user.disabled {
            AuthOutcome::Disabled
        } else if user.locked {
            AuthOutcome::Locked
        } else {
            AuthOutcome::Accepted {
                user: user.name.clone(),
                groups: user.groups.clone(),
            }
        }
    }

    /// The user called `name`.
    pub fn user(&self, name: &str) -> Option<&LocalUser> {
        self.users.get(name)
    }

    /// Every user, by name (`gatehouse user list`).
    pub fn users(&self) -> impl Iterator<Item = &LocalUser> {
        self.users.values()
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Password hashes checked since this database was built (a metric; the throttling
    /// tests use it to prove a locked-out attempt costs no hash).
    pub fn hash_verifications(&self) -> u64 {
        self.hash_checks.load(Ordering::Relaxed)
    }

    fn user_mut(&mut self, name: &str) -> Result<&mut LocalUser, UserDbError> {
        self.users
            .get_mut(name)
            .ok_or_else(|| UserDbError::UnknownUser(name.to_string()))
    }

    fn hasher(&self) -> Result<Argon2<'static>, UserDbError> {
        let c = self.cost;
        let params = Params::new(c.memory_kib, c.iterations, c.parallelism, None)
            .map_err(|e| UserDbError::Hash(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    fn hash<R: RngCore + CryptoRng>(&self, password: &str, rng: &mut R) -> Result<String, UserDbError> {
        if password.is_empty() {
            return Err(UserDbError::BadPassword("empty"));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(UserDbError::BadPassword("longer than 1024 bytes"));
        }
        let salt = SaltString::generate(rng);
        let hash = self
            .hasher()?
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| UserDbError::Hash(e.to_string()))?;
        Ok(hash.to_string())
    }

    fn dummy_hash(&self) -> &str {
        self.dummy_hash.get_or_init(|| {
            // A fixed salt is fine: this hash protects nothing, it only costs the same time.
            let salt = SaltString::from_b64("Z2F0ZWhvdXNlLWR1bW15").expect("constant salt is valid base64");
            let hasher = self.hasher().unwrap_or_default();
            hasher
                .hash_password(b"gatehouse: no such user", &salt)
                .map(|h| h.to_string())
                .unwrap_or_default()
        })
    }

    fn check_hash(&self, phc: &str, password: &str) -> bool {
        self.hash_checks.fetch_add(1, Ordering::Relaxed);
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        // The verifier takes algorithm, version and cost from the PHC string itself.
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    }

    fn to_toml(&self) -> String {
        let file = UsersFile {
            users: self
                .users
                .values()
                .map(|u| UserEntry {
                    name: u.name.clone(),
                    hash: u.hash.clone(),
                    groups: u.groups.clone(),
                    disabled: u.disabled,
                    locked: u.locked,
                })
                .collect(),
        };
        let body = toml::to_string(&file).expect("users file holds only strings, lists and bools");
        format!("# gatehouse local users: edit with `gatehouse user`; keep this file mode 0600.\n\n{body}")
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default, rename = "user")]
    users: Vec<UserEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    hash: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    disabled: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    locked: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn check_user_name(name: &str) -> Result<(), UserDbError> {
    check_text("user", name, MAX_USER_BYTES)
        .map_err(|e| UserDbError::BadName(format!("user name {}", e.problem)))
}

fn check_group_name(name: &str) -> Result<(), UserDbError> {
    check_text("group", name, MAX_RESOURCE_BYTES)
        .map_err(|e| UserDbError::BadName(format!("group name {}", e.problem)))
}

/// An argon2id PHC string whose parameters argon2 accepts.
fn check_phc(phc: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(phc).map_err(|e| format!("not a PHC string: {e}"))?;
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return Err(format!("algorithm {} is not argon2id", parsed.algorithm));
    }
    Params::try_from(&parsed).map_err(|e| format!("bad argon2 parameters: {e}"))?;
    if parsed.hash.is_none() || parsed.salt.is_none() {
        return Err("hash or salt missing".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    /// Cheap parameters so tests take milliseconds; the format is the same.
    const TEST_COST: HashCost = HashCost {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn db_with_alice() -> UserDb {
        let mut db = UserDb::new(TEST_COST);
        let mut rng = StdRng::seed_from_u64(1);
        db.add("alice", "s3cret", vec!["staff".into()], &mut rng).unwrap();
        db
    }

    #[test]
    fn verify_outcomes() {
        let mut db = db_with_alice();
        assert_eq!(
            db.verify("alice", "s3cret"),
            AuthOutcome::Accepted {
                user: "alice".into(),
                groups: vec!["staff".into()]
            }
        );
        assert_eq!(db.verify("alice", "wrong"), AuthOutcome::WrongPassword);
        assert_eq!(db.verify("mallory", "s3cret"), AuthOutcome::UnknownUser);
        db.set_disabled("alice", true).unwrap();
        assert_eq!(
            db.verify("alice", "wrong"),
            AuthOutcome::WrongPassword,
            "flags hidden from guessers"
        );
        assert_eq!(db.verify("alice", "s3cret"), AuthOutcome::Disabled);
        db.set_disabled("alice", false).unwrap();
        db.set_locked("alice", true).unwrap();
        assert_eq!(db.verify("alice", "s3cret"), AuthOutcome::Locked);
        // Every check, including the unknown user's, cost one hash.
        assert_eq!(db.hash_verifications(), 6);
    }

    #[test]
    fn hashes_are_argon2id_phc_with_fresh_salts() {
        let mut db = db_with_alice();
        let mut rng = StdRng::seed_from_u64(2);
        db.add("bob", "s3cret", vec![], &mut rng).unwrap();
        let a = db.user("alice").unwrap().hash().to_string();
        let b = db.user("bob").unwrap().hash().to_string();
        assert!(a.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{a}");
        assert_ne!(a, b, "same password, different salts");
        assert!(!a.contains("s3cret"));
    }

    #[test]
    fn set_password_and_remove() {
        let mut db = db_with_alice();
        let mut rng = StdRng::seed_from_u64(3);
        db.set_password("alice", "n3w", &mut rng).unwrap();
        assert_eq!(db.verify("alice", "s3cret"), AuthOutcome::WrongPassword);
        assert!(matches!(db.verify("alice", "n3w"), AuthOutcome::Accepted { .. }));
        assert!(matches!(
            db.set_password("bob", "x", &mut rng),
            Err(UserDbError::UnknownUser(_))
        ));
        assert!(matches!(
            db.add("alice", "x", vec![], &mut rng),
            Err(UserDbError::DuplicateUser(_))
        ));
        assert!(matches!(
            db.add("eve", "", vec![], &mut rng),
            Err(UserDbError::BadPassword(_))
        ));
        assert!(matches!(
            db.add("", "x", vec![], &mut rng),
            Err(UserDbError::BadName(_))
        ));
        db.remove("alice").unwrap();
        assert!(db.is_empty());
        assert!(matches!(db.remove("alice"), Err(UserDbError::UnknownUser(_))));
    }

    #[test]
    fn save_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut db = db_with_alice();
        let mut rng = StdRng::seed_from_u64(4);
        db.add("bob", "pw-bob", vec!["staff".into(), "finance".into()], &mut rng)
            .unwrap();
        db.set_disabled("bob", true).unwrap();
        db.save(&path).unwrap();

        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary file left behind");

        let back = UserDb::load(&path).unwrap();
        let users: Vec<_> = back.users().cloned().collect();
        let before: Vec<_> = db.users().cloned().collect();
        assert_eq!(users, before);
        assert!(matches!(
            back.verify("alice", "s3cret"),
            AuthOutcome::Accepted { .. }
        ));
        assert_eq!(back.verify("bob", "pw-bob"), AuthOutcome::Disabled);

        // Saving over an existing file replaces it (and keeps 0600).
        let mut back = back;
        back.remove("bob").unwrap();
        back.save(&path).unwrap();
        assert_eq!(UserDb::load(&path).unwrap().len(), 1);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn load_or_new_on_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(UserDb::load_or_new(&dir.path().join("none.toml"))
            .unwrap()
            .is_empty());
        assert!(matches!(
            UserDb::load(&dir.path().join("none.toml")),
            Err(UserDbError::Read { .. })
        ));
    }

    #[test]
    fn file_errors_name_the_key() {
        let good = db_with_alice().to_toml();
        let cases = [
            (good.replace("$argon2id$", "$argon2i$"), "user[0].hash"),
            (
                good.replace("$argon2id$v=19$m=64", "$argon2id$v=19$m=zz"),
                "user[0].hash",
            ),
            (
                format!(
                    "{good}\n[[user]]\nname = \"alice\"\nhash = {:?}\n",
                    db_with_alice().user("alice").unwrap().hash()
                ),
                "user[1].name",
            ),
            (good.replace("name = \"alice\"", "name = \"\""), "user[0].name"),
            (
                good.replace("groups = [", "colour = \"red\"\ngroups = ["),
                "colour",
            ),
        ];
        for (text, key) in cases {
            let e = UserDb::parse(&text).expect_err("accepted").to_string();
            assert!(e.contains(key), "expected {key} in: {e}");
        }
    }
}
