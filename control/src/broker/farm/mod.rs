//! The farm model: sites, gateways, session hosts, host pools, published resources, groups
//! and the farm-wide policy (balancing weights, login throttling, ticket lifetime), loaded
//! from the TOML farm file that every broker of the farm reads (control/FARM.md).
//!
//! A [`Farm`] is validated once when built and immutable afterwards: a reload builds a new
//! one. This module owns the file format and the cross-references between sections; it knows
//! nothing of users' passwords, host load or sessions.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::duration;
use super::ldap::{LdapSettings, PasswordSource};
use crate::message::{ResourceInfo, ResourceKind};

mod file;
mod locate;

/// Largest farm file read, in bytes: the file is admin-written, but a bound keeps a wrong
/// path (a disk image, /dev/zero) from eating memory.
pub const MAX_FARM_FILE_BYTES: u64 = 16 << 20;

/// Index of a host in [`Farm::hosts`]; stable for the life of one `Farm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(pub usize);

/// Index of a pool in [`Farm::pools`]; stable for the life of one `Farm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolId(pub usize);

/// A site: a location with its own gateways and hosts. Nothing of one site is handed to a
/// gateway of another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The site's name.
    pub name: String,
    /// The pool that plain-RDP balancing (`choose_host` without a resource) uses.
    pub default_pool: Option<PoolId>,
}

/// A gateway the farm knows, and the site it serves. The broker shell maps a connected
/// gateway's node name (checked against its farm certificate) to its site with this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// The gateway's node name.
    pub name: String,
    /// Its site.
    pub site: String,
}

/// An RD Session Host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The name its host agent reports under (and its node name).
    pub name: String,
    /// Where clients and gateways connect: an IP address or a DNS name. Replies and tickets
    /// carry this, because it is what the gateway connects to and checks the ticket against.
    pub address: String,
    /// Its RDP port.
    pub port: u16,
    /// Its site.
    pub site: String,
    /// Sessions it takes at most; a host at its limit gets no new session.
    pub session_limit: u32,
    /// Preference: the load score is divided by it, so weight 2 counts half as loaded.
    pub weight: u32,
}

/// A set of hosts of one site serving one or more resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// The pool's name.
    pub name: String,
    /// Its site; every host in it belongs to that site.
    pub site: String,
    /// Its hosts, in file order.
    pub hosts: Vec<HostId>,
}

/// A published application or desktop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Stable id, used in `launch`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Application or desktop.
    pub kind: ResourceKind,
    /// The site of its pool.
    pub site: String,
    /// The pool that serves it.
    pub pool: PoolId,
    /// Groups whose members may launch it.
    pub groups: Vec<String>,
}

/// A group as the farm file declares it. Members listed here are added to what the user
/// database or directory says, so directory users can be granted resources by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The group's name (as the user database or directory spells it).
    pub name: String,
    /// Users the farm file puts in the group.
    pub members: Vec<String>,
}

/// How the least-loaded host is picked and when a host counts as down (`[balancing]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalancingPolicy {
    /// Weight of the session count (as a percentage of the host's session limit).
    pub sessions_weight: f64,
    /// Weight of the CPU percentage.
    pub cpu_weight: f64,
    /// Weight of the memory percentage.
    pub mem_weight: f64,
    /// A host without a report for this long is down.
    #[serde(deserialize_with = "duration::deserialize")]
    pub host_down_after: Duration,
    /// A launch counts as a session on its host until a report shows it, or for this long.
    #[serde(deserialize_with = "duration::deserialize")]
    pub launch_hold: Duration,
}

impl Default for BalancingPolicy {
    fn default() -> Self {
        Self {
            sessions_weight: 1.0,
            cpu_weight: 1.0,
            mem_weight: 1.0,
            host_down_after: Duration::from_secs(10),
            launch_hold: Duration::from_secs(30),
        }
    }
}

/// Login throttling and session tokens (`[login]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginPolicy {
    /// Failures of one user within `failure_window` that lock the user out.
    pub user_max_failures: u32,
    /// Failures from one client address (IPv4, or IPv6 /64) within `failure_window` that
    /// throttle the address.
    pub address_max_failures: u32,
    /// Failures older than this are forgotten.
    #[serde(deserialize_with = "duration::deserialize")]
    pub failure_window: Duration,
    /// How long a lock-out lasts.
    #[serde(deserialize_with = "duration::deserialize")]
    pub lockout: Duration,
    /// How long a session token from `login_ok` stays valid.
    #[serde(deserialize_with = "duration::deserialize")]
    pub session_lifetime: Duration,
    /// Most session tokens a broker keeps; beyond, logins are refused (`internal`).
    pub max_sessions: usize,
    /// Most throttled users and addresses tracked at once.
    pub max_tracked: usize,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        Self {
            user_max_failures: 5,
            address_max_failures: 20,
            failure_window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(15 * 60),
            session_lifetime: Duration::from_secs(8 * 3600),
            max_sessions: 1_000_000,
            max_tracked: 100_000,
        }
    }
}

/// Launch tickets (`[launch]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LaunchPolicy {
    /// How long a launch ticket is valid.
    #[serde(deserialize_with = "duration::deserialize")]
    pub ticket_lifetime: Duration,
    /// Most unexpired redeemed nonces the broker remembers (PROTOCOL.md §7.5).
    pub ledger_capacity: usize,
}

impl Default for LaunchPolicy {
    fn default() -> Self {
        Self {
            ticket_lifetime: Duration::from_secs(30),
            ledger_capacity: 1_000_000,
        }
    }
}

/// The farm-wide policy sections.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FarmPolicy {
    /// `[balancing]`.
    pub balancing: BalancingPolicy,
    /// `[login]`.
    pub login: LoginPolicy,
    /// `[launch]`.
    pub launch: LaunchPolicy,
}

/// Why a farm file was refused.
#[derive(Debug)]
pub enum FarmError {
    /// The file cannot be read.
    Read {
        /// The file.
        path: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// Larger than [`MAX_FARM_FILE_BYTES`].
    TooLarge {
        /// The file.
        path: String,
    },
    /// Not TOML of the farm file's shape; the message names the key, line and column.
    Syntax(String),
    /// A value breaks a rule; `key` is its path, e.g. `resource[2].pool`.
    Invalid {
        /// Where: `section[index].field`.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// A `Syntax` or `Invalid` error of the file at `path`, with the place of the key
    /// (`line` 0 when it cannot be found): what [`Farm::load`] returns.
    At {
        /// The file.
        path: String,
        /// 1-based line, 0 when unknown.
        line: usize,
        /// 1-based column, 0 when unknown.
        column: usize,
        /// The error.
        error: Box<FarmError>,
    },
}

impl fmt::Display for FarmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, error } => write!(f, "cannot read farm file {path}: {error}"),
            Self::TooLarge { path } => {
                write!(f, "farm file {path} is larger than {MAX_FARM_FILE_BYTES} bytes")
            }
            Self::Syntax(message) => write!(f, "farm file: {message}"),
            Self::Invalid { key, problem } => write!(f, "farm file: {key}: {problem}"),
            Self::At {
                path,
                line,
                column,
                error,
            } => {
                write!(f, "farm file {path}")?;
                if *line > 0 {
                    write!(f, ":{line}:{column}")?;
                }
                match &**error {
                    Self::Syntax(message) => write!(f, ": {message}"),
                    Self::Invalid { key, problem } => write!(f, ": {key}: {problem}"),
                    other => write!(f, ": {other}"),
                }
            }
        }
    }
}

impl std::error::Error for FarmError {}

/// The validated farm.
#[derive(Debug, Clone)]
pub struct Farm {
    sites: Vec<Site>,
    gateways: Vec<Gateway>,
    hosts: Vec<Host>,
    pools: Vec<Pool>,
    resources: Vec<Resource>,
    groups: Vec<Group>,
    policy: FarmPolicy,
    ldap: Option<LdapSettings>,
    host_by_name: HashMap<String, HostId>,
    resource_by_id: HashMap<String, usize>,
}

impl Farm {
    /// Reads and validates the farm file at `path` (at start and on reload). Errors carry
    /// the file and the line of the offending key ([`FarmError::At`]); an `[ldap]` service
    /// account's password must be readable, and a TLS directory's CA certificates too.
    pub fn load(path: &Path) -> Result<Self, FarmError> {
        let shown = path.display().to_string();
        let read = |error| FarmError::Read {
            path: shown.clone(),
            error,
        };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > MAX_FARM_FILE_BYTES {
            return Err(FarmError::TooLarge { path: shown });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let at = |offset: Option<usize>, error: FarmError| {
            let (line, column) = offset.map_or((0, 0), |o| locate::line_col(&text, o));
            FarmError::At {
                path: shown.clone(),
                line,
                column,
                error: Box::new(error),
            }
        };
        let file: file::FarmFile = toml::from_str(&text).map_err(|e| {
            at(
                e.span().map(|s| s.start),
                FarmError::Syntax(e.message().trim().to_string()),
            )
        })?;
        let invalid_at = |error: FarmError| match &error {
            FarmError::Invalid { key, .. } => at(locate::key_offset(&text, key), error),
            _ => error,
        };
        let farm = file.build().map_err(invalid_at)?;
        if let Some(ldap) = farm.ldap() {
            if let Err(problem) = super::ldap::client_config(ldap) {
                let key = if ldap.ca_file.is_some() {
                    "ldap.ca_file"
                } else {
                    "ldap.url"
                };
                return Err(invalid_at(FarmError::Invalid {
                    key: key.into(),
                    problem,
                }));
            }
        }
        if let Some(service) = farm.ldap().and_then(|l| l.service.as_ref()) {
            if let Err(problem) = service.password.read() {
                let key = match service.password {
                    PasswordSource::File(_) => "ldap.bind_password_file",
                    PasswordSource::Env(_) => "ldap.bind_password_env",
                };
                return Err(invalid_at(FarmError::Invalid {
                    key: key.into(),
                    problem,
                }));
            }
        }
        Ok(farm)
    }

    /// Validates a farm file's text.
    pub fn parse(text: &str) -> Result<Self, FarmError> {
        let file: file::FarmFile = toml::from_str(text).map_err(|e| FarmError::Syntax(e.to_string()))?;
        file.build()
    }

    /// Every site, in file order.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// The site called `name`.
    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == name)
    }

    /// The gateway with node name `name`, for the shell to learn a peer's site.
    pub fn gateway(&self, name: &str) -> Option<&Gateway> {
        self.gateways.iter().find(|g| g.name == name)
    }

    /// Every host, indexed by [`HostId`].
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host `id`. Ids come from this farm, so the index is in range.
    pub fn host(&self, id: HostId) -> &Host {
        &self.hosts[id.0]
    }

    /// The id of the host called `name` (as its agent reports it).
    pub fn host_id(&self, name: &str) -> Option<HostId> {
        self.host_by_name.get(name).copied()
    }

    /// Every pool, indexed by [`PoolId`].
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// The pool `id`. Ids come from this farm, so the index is in range.
    pub fn pool(&self, id: PoolId) -> &Pool {
        &self.pools[id.0]
    }

    /// Every resource, in file order.
    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    /// The resource with id `id`.
    pub fn resource(&self, id: &str) -> Option<&Resource> {
        self.resource_by_id.get(id).map(|&i| &self.resources[i])
    }

    /// Every group the file declares.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The farm-wide policy.
    pub fn policy(&self) -> &FarmPolicy {
        &self.policy
    }

    /// The LDAP directory users may also come from (`[ldap]`), if any.
    pub fn ldap(&self) -> Option<&LdapSettings> {
        self.ldap.as_ref()
    }

    /// A user's effective groups: those the user database or directory gives (`base`) plus
    /// the farm groups that list the user, without duplicates.
    pub fn effective_groups(&self, user: &str, base: &[String]) -> Vec<String> {
        let mut groups: Vec<String> = base.to_vec();
        for group in &self.groups {
            if group.members.iter().any(|m| m == user) && !groups.contains(&group.name) {
                groups.push(group.name.clone());
            }
        }
        groups
    }

    /// Whether a member of `groups` may launch `resource`.
    pub fn may_launch(&self, resource: &Resource, groups: &[String]) -> bool {
        resource.groups.iter().any(|g| groups.contains(g))
    }

    /// The resources of `site` that a member of `groups` may launch, as the protocol lists
    /// them. Resources of other sites never appear.
    pub fn resources_for(&self, site: &str, groups: &[String]) -> Vec<ResourceInfo> {
        self.resources
            .iter()
            .filter(|r| r.site == site && self.may_launch(r, groups))
            .map(|r| ResourceInfo {
                id: r.id.clone(),
                name: r.name.clone(),
                kind: r.kind,
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests;
