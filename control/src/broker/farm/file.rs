//! The farm file as written (control/FARM.md): serde shapes with `deny_unknown_fields`, and
//! the checks that turn them into a validated [`Farm`], naming the offending key.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use super::{
    BalancingPolicy, Farm, FarmError, FarmPolicy, Gateway, Group, Host, HostId, LaunchPolicy, LoginPolicy,
    Pool, PoolId, Resource, Site,
};
use crate::broker::ldap::LdapEntry;
use crate::message::validate::{check_name, check_text};
use crate::message::{ResourceKind, MAX_HOST_BYTES, MAX_RESOURCE_BYTES, MAX_SITE_BYTES, MAX_USER_BYTES};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FarmFile {
    #[serde(default, rename = "site")]
    sites: Vec<SiteEntry>,
    #[serde(default, rename = "gateway")]
    gateways: Vec<GatewayEntry>,
    #[serde(default, rename = "host")]
    hosts: Vec<HostEntry>,
    #[serde(default, rename = "pool")]
    pools: Vec<PoolEntry>,
    #[serde(default, rename = "group")]
    groups: Vec<GroupEntry>,
    #[serde(default, rename = "resource")]
    resources: Vec<ResourceEntry>,
    #[serde(default)]
    balancing: BalancingPolicy,
    #[serde(default)]
    login: LoginPolicy,
    #[serde(default)]
    launch: LaunchPolicy,
    ldap: Option<LdapEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteEntry {
    name: String,
    default_pool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayEntry {
    name: String,
    site: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    name: String,
    address: String,
    #[serde(default = "default_rdp_port")]
    port: u16,
    site: String,
    session_limit: u32,
    #[serde(default = "default_weight")]
    weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolEntry {
    name: String,
    site: String,
    hosts: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupEntry {
    name: String,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceEntry {
    id: String,
    name: String,
    kind: ResourceKind,
    pool: String,
    groups: Vec<String>,
}

fn default_rdp_port() -> u16 {
    3389
}

fn default_weight() -> u32 {
    1
}

/// Largest host weight; keeps the scores in a sane range.
const MAX_HOST_WEIGHT: u32 = 1000;

fn invalid(key: String, problem: impl Into<String>) -> FarmError {
    FarmError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// Checks an identifier with the protocol's rules for names.
fn name_ok(key: String, value: &str, max: usize) -> Result<(), FarmError> {
    check_name("name", value, max).map_err(|e| invalid(key, e.problem))
}

/// Records `name` in `seen`, refusing a second use.
fn unique<'a>(seen: &mut HashSet<&'a str>, key: String, name: &'a str) -> Result<(), FarmError> {
    if !seen.insert(name) {
        return Err(invalid(key, format!("duplicate name {name:?}")));
    }
    Ok(())
}

impl FarmFile {
    pub(super) fn build(mut self) -> Result<Farm, FarmError> {
        self.check_policy()?;
        let ldap = self
            .ldap
            .take()
            .map(LdapEntry::build)
            .transpose()
            .map_err(|(key, problem)| invalid(format!("ldap.{key}"), problem))?;
        let mut seen = HashSet::new();
        for (i, site) in self.sites.iter().enumerate() {
            name_ok(format!("site[{i}].name"), &site.name, MAX_SITE_BYTES)?;
            unique(&mut seen, format!("site[{i}].name"), &site.name)?;
        }
        let site_known = |key: String, site: &str| {
            if self.sites.iter().any(|s| s.name == site) {
                Ok(())
            } else {
                Err(invalid(key, format!("unknown site {site:?}")))
            }
        };

        let mut seen = HashSet::new();
        for (i, gw) in self.gateways.iter().enumerate() {
            name_ok(format!("gateway[{i}].name"), &gw.name, MAX_HOST_BYTES)?;
            unique(&mut seen, format!("gateway[{i}].name"), &gw.name)?;
            site_known(format!("gateway[{i}].site"), &gw.site)?;
        }

        let mut host_by_name = HashMap::new();
        for (i, host) in self.hosts.iter().enumerate() {
            name_ok(format!("host[{i}].name"), &host.name, MAX_HOST_BYTES)?;
            name_ok(format!("host[{i}].address"), &host.address, MAX_HOST_BYTES)?;
            site_known(format!("host[{i}].site"), &host.site)?;
            if host.port == 0 {
                return Err(invalid(format!("host[{i}].port"), "must be 1 to 65535"));
            }
            if host.session_limit == 0 {
                return Err(invalid(format!("host[{i}].session_limit"), "must be at least 1"));
            }
            if !(1..=MAX_HOST_WEIGHT).contains(&host.weight) {
                return Err(invalid(
                    format!("host[{i}].weight"),
                    format!("must be 1 to {MAX_HOST_WEIGHT}"),
                ));
            }
            if host_by_name.insert(host.name.clone(), HostId(i)).is_some() {
                return Err(invalid(
                    format!("host[{i}].name"),
                    format!("duplicate name {:?}", host.name),
                ));
            }
        }

        let mut seen = HashSet::new();
        let mut pools = Vec::with_capacity(self.pools.len());
        for (i, pool) in self.pools.iter().enumerate() {
            name_ok(format!("pool[{i}].name"), &pool.name, MAX_RESOURCE_BYTES)?;
            unique(&mut seen, format!("pool[{i}].name"), &pool.name)?;
            site_known(format!("pool[{i}].site"), &pool.site)?;
            if pool.hosts.is_empty() {
                return Err(invalid(format!("pool[{i}].hosts"), "empty"));
            }
            let mut ids = Vec::with_capacity(pool.hosts.len());
            for (j, name) in pool.hosts.iter().enumerate() {
                let key = format!("pool[{i}].hosts[{j}]");
                let id = *host_by_name
                    .get(name)
                    .ok_or_else(|| invalid(key.clone(), format!("unknown host {name:?}")))?;
                let host_site = &self.hosts[id.0].site;
                if *host_site != pool.site {
                    return Err(invalid(
                        key,
                        format!(
                            "host {name:?} is in site {host_site:?}, not the pool's site {:?}",
                            pool.site
                        ),
                    ));
                }
                if ids.contains(&id) {
                    return Err(invalid(key, format!("host {name:?} listed twice")));
                }
                ids.push(id);
            }
            pools.push(Pool {
                name: pool.name.clone(),
                site: pool.site.clone(),
                hosts: ids,
            });
        }
        let pool_id = |name: &str| pools.iter().position(|p| p.name == name).map(PoolId);

        let mut sites = Vec::with_capacity(self.sites.len());
        for (i, site) in self.sites.iter().enumerate() {
            let default_pool = match &site.default_pool {
                None => None,
                Some(name) => {
                    let key = format!("site[{i}].default_pool");
                    let id = pool_id(name)
                        .ok_or_else(|| invalid(key.clone(), format!("unknown pool {name:?}")))?;
                    if pools[id.0].site != site.name {
                        return Err(invalid(key, format!("pool {name:?} belongs to another site")));
                    }
                    Some(id)
                }
            };
            sites.push(Site {
                name: site.name.clone(),
                default_pool,
            });
        }

        let mut seen = HashSet::new();
        for (i, group) in self.groups.iter().enumerate() {
            check_text("name", &group.name, MAX_RESOURCE_BYTES)
                .map_err(|e| invalid(format!("group[{i}].name"), e.problem))?;
            unique(&mut seen, format!("group[{i}].name"), &group.name)?;
            for (j, member) in group.members.iter().enumerate() {
                check_text("member", member, MAX_USER_BYTES)
                    .map_err(|e| invalid(format!("group[{i}].members[{j}]"), e.problem))?;
            }
        }

        let mut resource_by_id = HashMap::new();
        let mut resources = Vec::with_capacity(self.resources.len());
        for (i, res) in self.resources.iter().enumerate() {
            name_ok(format!("resource[{i}].id"), &res.id, MAX_RESOURCE_BYTES)?;
            check_text("name", &res.name, MAX_RESOURCE_BYTES)
                .map_err(|e| invalid(format!("resource[{i}].name"), e.problem))?;
            let pool = pool_id(&res.pool).ok_or_else(|| {
                invalid(
                    format!("resource[{i}].pool"),
                    format!("unknown pool {:?}", res.pool),
                )
            })?;
            if res.groups.is_empty() {
                return Err(invalid(
                    format!("resource[{i}].groups"),
                    "empty: nobody could launch it",
                ));
            }
            for (j, group) in res.groups.iter().enumerate() {
                if !self.groups.iter().any(|g| g.name == *group) {
                    return Err(invalid(
                        format!("resource[{i}].groups[{j}]"),
                        format!("unknown group {group:?} (declare it in a [[group]])"),
                    ));
                }
            }
            if resource_by_id.insert(res.id.clone(), i).is_some() {
                return Err(invalid(
                    format!("resource[{i}].id"),
                    format!("duplicate id {:?}", res.id),
                ));
            }
            resources.push(Resource {
                id: res.id.clone(),
                name: res.name.clone(),
                kind: res.kind,
                site: pools[pool.0].site.clone(),
                pool,
                groups: res.groups.clone(),
            });
        }

        Ok(Farm {
            sites,
            gateways: self
                .gateways
                .into_iter()
                .map(|g| Gateway {
                    name: g.name,
                    site: g.site,
                })
                .collect(),
            hosts: self
                .hosts
                .into_iter()
                .map(|h| Host {
                    name: h.name,
                    address: h.address,
                    port: h.port,
                    site: h.site,
                    session_limit: h.session_limit,
                    weight: h.weight,
                })
                .collect(),
            pools,
            resources,
            groups: self
                .groups
                .into_iter()
                .map(|g| Group {
                    name: g.name,
                    members: g.members,
                })
                .collect(),
            policy: FarmPolicy {
                balancing: self.balancing,
                login: self.login,
                launch: self.launch,
            },
            ldap,
            host_by_name,
            resource_by_id,
        })
    }

    fn check_policy(&self) -> Result<(), FarmError> {
        let b = &self.balancing;
        for (key, w) in [
            ("balancing.sessions_weight", b.sessions_weight),
            ("balancing.cpu_weight", b.cpu_weight),
            ("balancing.mem_weight", b.mem_weight),
        ] {
            if !(w.is_finite() && (0.0..=1000.0).contains(&w)) {
                return Err(invalid(key.into(), "must be a number from 0 to 1000"));
            }
        }
        let positive = [
            ("balancing.host_down_after", b.host_down_after),
            ("login.failure_window", self.login.failure_window),
            ("login.lockout", self.login.lockout),
            ("login.session_lifetime", self.login.session_lifetime),
            ("launch.ticket_lifetime", self.launch.ticket_lifetime),
        ];
        for (key, d) in positive {
            if d.is_zero() {
                return Err(invalid(key.into(), "must be longer than zero"));
            }
        }
        for (key, n) in [
            ("login.user_max_failures", self.login.user_max_failures as usize),
            (
                "login.address_max_failures",
                self.login.address_max_failures as usize,
            ),
            ("login.max_sessions", self.login.max_sessions),
            ("login.max_tracked", self.login.max_tracked),
            ("launch.ledger_capacity", self.launch.ledger_capacity),
        ] {
            if n == 0 {
                return Err(invalid(key.into(), "must be at least 1"));
            }
        }
        Ok(())
    }
}
