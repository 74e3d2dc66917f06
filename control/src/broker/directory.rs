//! The session directory: each host's last report (sessions with user names, CPU, memory,
//! RDP port up), which hosts are up, the least-loaded choice over a pool, and session
//! affinity (a user with a session on a host goes back there).
//!
//! Built only from host agents' reports, so every broker of a farm builds the same view
//! without replication. Sans-IO: report times and `now` are passed in. This module does
//! not decide who may launch what; the broker checks that before asking for a host.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::farm::{BalancingPolicy, Farm, HostId, PoolId};
use crate::message::HostReport;

/// How a user name is matched against the users with sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserMatch {
    /// The whole name (launch: the broker knows the user).
    Exact,
    /// The whole name, else a prefix that only one user with a session on the candidate
    /// hosts has (plain RDP: `Cookie: mstshash=` names may be truncated by the client).
    Prefix,
}

/// The result of an affinity lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    /// The user has a session on this host (the least loaded one if several).
    Host(HostId),
    /// No session of the user on an up candidate host.
    None,
    /// A prefix names more than one user; no affinity is applied.
    Ambiguous,
}

/// A host's state as the directory sees it at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostHealth {
    /// No report since the broker started (or the farm was loaded).
    NeverReported,
    /// The last report is older than `host_down_after`.
    Silent {
        /// Time since the last report.
        since: Duration,
    },
    /// The host reports that its RDP port does not answer.
    RdpDown,
    /// Reporting and serving.
    Up,
}

/// Why a pool yielded no host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NoHost {
    /// Hosts of the pool in the site.
    pub candidates: usize,
    /// Of them, down (never reported, silent or RDP down).
    pub down: usize,
    /// Of them, up but at their session limit.
    pub full: usize,
}

impl std::fmt::Display for NoHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no host available: {} in pool, {} down, {} full",
            self.candidates, self.down, self.full
        )
    }
}

/// How a host was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChoiceReason {
    /// The user already has a session there.
    Affinity,
    /// The least-loaded host with room.
    LeastLoaded,
}

/// A chosen host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// The host.
    pub host: HostId,
    /// Why.
    pub reason: ChoiceReason,
}

/// Per-host reports and the user index.
#[derive(Debug)]
pub struct SessionDirectory {
    hosts: Vec<HostState>,
    /// Normalized user name -> hosts where the user has a session.
    by_user: BTreeMap<String, BTreeSet<HostId>>,
}

#[derive(Debug, Default)]
struct HostState {
    report: Option<LastReport>,
    /// Distinct normalized users of the last report, to update `by_user`.
    users: BTreeSet<String>,
    /// Launches sent to this host that no report shows yet.
    pending: Vec<PendingLaunch>,
}

#[derive(Debug)]
struct LastReport {
    at: Instant,
    sessions: u32,
    cpu_percent: u8,
    mem_percent: u8,
    rdp_up: bool,
}

#[derive(Debug)]
struct PendingLaunch {
    user: String,
    until: Instant,
}

/// Most index entries a prefix lookup walks before calling the prefix ambiguous.
const MAX_PREFIX_SCAN: usize = 4096;

impl SessionDirectory {
    /// An empty directory for `farm`'s hosts: every host down until it reports.
    pub fn new(farm: &Farm) -> Self {
        Self {
            hosts: farm.hosts().iter().map(|_| HostState::default()).collect(),
            by_user: BTreeMap::new(),
        }
    }

    /// This directory moved to `new` (a farm reload): hosts are matched by name, and a host
    /// keeps its last report and pending launches only if it keeps its site; hosts new to
    /// the farm start down until they report. Host ids of `new` are used from then on.
    pub fn carried_over(&mut self, old: &Farm, new: &Farm) -> Self {
        let mut hosts: Vec<HostState> = new.hosts().iter().map(|_| HostState::default()).collect();
        for (i, host) in new.hosts().iter().enumerate() {
            let Some(old_id) = old.host_id(&host.name) else {
                continue;
            };
            if old.host(old_id).site != host.site {
                continue;
            }
            if let Some(state) = self.hosts.get_mut(old_id.0) {
                hosts[i] = std::mem::take(state);
            }
        }
        let mut by_user: BTreeMap<String, BTreeSet<HostId>> = BTreeMap::new();
        for (i, state) in hosts.iter().enumerate() {
            for user in &state.users {
                by_user.entry(user.clone()).or_default().insert(HostId(i));
            }
        }
        Self { hosts, by_user }
    }

    /// Records a host agent's report received at `now`. The caller has mapped the reported
    /// name to `host` and checked the agent may report for it.
    pub fn record_report(&mut self, host: HostId, report: &HostReport, now: Instant) {
        let Some(state) = self.hosts.get_mut(host.0) else {
            return;
        };
        let users: BTreeSet<String> = report.sessions.iter().map(|u| normalize_user(u)).collect();
        for gone in state.users.difference(&users) {
            if let Some(set) = self.by_user.get_mut(gone) {
                set.remove(&host);
                if set.is_empty() {
                    self.by_user.remove(gone);
                }
            }
        }
        for user in &users {
            self.by_user.entry(user.clone()).or_default().insert(host);
        }
        // A launch shows up in the report once its session exists.
        state
            .pending
            .retain(|p| p.until > now && !users.contains(&p.user));
        state.users = users;
        state.report = Some(LastReport {
            at: now,
            sessions: u32::try_from(report.sessions.len()).unwrap_or(u32::MAX),
            cpu_percent: report.cpu_percent,
            mem_percent: report.mem_percent,
            rdp_up: report.rdp_up,
        });
    }

    /// Counts a launch to `host` for `user` as a session until a report shows it or
    /// `policy.launch_hold` passes, so a burst of launches between two reports spreads.
    pub fn note_launch(&mut self, host: HostId, user: &str, policy: &BalancingPolicy, now: Instant) {
        if let Some(state) = self.hosts.get_mut(host.0) {
            state.pending.retain(|p| p.until > now);
            state.pending.push(PendingLaunch {
                user: normalize_user(user),
                until: now + policy.launch_hold,
            });
        }
    }

    /// The host's health at `now`.
    pub fn health(&self, host: HostId, policy: &BalancingPolicy, now: Instant) -> HostHealth {
        match self.hosts.get(host.0).and_then(|s| s.report.as_ref()) {
            None => HostHealth::NeverReported,
            Some(r) => {
                let since = now.saturating_duration_since(r.at);
                if since > policy.host_down_after {
                    HostHealth::Silent { since }
                } else if !r.rdp_up {
                    HostHealth::RdpDown
                } else {
                    HostHealth::Up
                }
            }
        }
    }

    /// Sessions counted on the host at `now`: the last report's plus pending launches.
    pub fn sessions(&self, host: HostId, now: Instant) -> u32 {
        let Some(state) = self.hosts.get(host.0) else {
            return 0;
        };
        let reported = state.report.as_ref().map_or(0, |r| r.sessions);
        let pending = state.pending.iter().filter(|p| p.until > now).count();
        reported.saturating_add(u32::try_from(pending).unwrap_or(u32::MAX))
    }

    /// The host's load score at `now` (lower is better): the weighted mean of sessions as a
    /// percentage of the session limit, CPU and memory percentages, divided by the host's
    /// weight. `None` if the host has never reported.
    pub fn score(&self, farm: &Farm, host: HostId, policy: &BalancingPolicy, now: Instant) -> Option<f64> {
        let r = self.hosts.get(host.0)?.report.as_ref()?;
        let h = farm.host(host);
        let sessions_pct = f64::from(self.sessions(host, now)) * 100.0 / f64::from(h.session_limit.max(1));
        let total_weight = policy.sessions_weight + policy.cpu_weight + policy.mem_weight;
        let load = if total_weight > 0.0 {
            (policy.sessions_weight * sessions_pct
                + policy.cpu_weight * f64::from(r.cpu_percent)
                + policy.mem_weight * f64::from(r.mem_percent))
                / total_weight
        } else {
            0.0
        };
        Some(load / f64::from(h.weight.max(1)))
    }

    /// Where `user` has a session among the up `candidates`. The RDP balancing path calls
    /// it with [`UserMatch::Prefix`] and the `mstshash` user; launch with `Exact`.
    pub fn affinity(
        &self,
        farm: &Farm,
        candidates: &[HostId],
        user: &str,
        matching: UserMatch,
        policy: &BalancingPolicy,
        now: Instant,
    ) -> Affinity {
        let wanted = normalize_user(user);
        if wanted.is_empty() {
            return Affinity::None;
        }
        let usable = |id: &HostId| candidates.contains(id) && self.health(*id, policy, now) == HostHealth::Up;
        let best_of = |hosts: &BTreeSet<HostId>| {
            hosts
                .iter()
                .filter(|id| usable(id))
                .min_by(|a, b| self.compare(farm, **a, **b, policy, now))
                .copied()
        };
        if let Some(host) = self.by_user.get(&wanted).and_then(best_of) {
            return Affinity::Host(host);
        }
        // A launch the reports do not show yet: a second launch right after the first goes
        // to the same host.
        let pending = candidates.iter().copied().filter(|id| usable(id)).find(|id| {
            self.hosts
                .get(id.0)
                .is_some_and(|s| s.pending.iter().any(|p| p.until > now && p.user == wanted))
        });
        if let Some(host) = pending {
            return Affinity::Host(host);
        }
        if matching == UserMatch::Exact {
            return Affinity::None;
        }
        let mut found: Option<HostId> = None;
        for (scanned, (name, hosts)) in self.by_user.range(wanted.clone()..).enumerate() {
            if !name.starts_with(&wanted) {
                break;
            }
            if scanned >= MAX_PREFIX_SCAN {
                return Affinity::Ambiguous;
            }
            if let Some(host) = best_of(hosts) {
                if found.is_some() {
                    return Affinity::Ambiguous;
                }
                found = Some(host);
            }
        }
        found.map_or(Affinity::None, Affinity::Host)
    }

    /// Picks a host of `pool` in `site` for `user`: the host of the user's session if one is
    /// up (even at its limit: a reconnect adds no session), else the up host with room and
    /// the lowest score (ties: fewer sessions, then pool order). Hosts of other sites are
    /// never candidates, whatever the pool says.
    #[allow(clippy::too_many_arguments)]
    pub fn choose(
        &self,
        farm: &Farm,
        pool: PoolId,
        site: &str,
        user: Option<&str>,
        matching: UserMatch,
        policy: &BalancingPolicy,
        now: Instant,
    ) -> Result<Choice, NoHost> {
        let candidates: Vec<HostId> = farm
            .pool(pool)
            .hosts
            .iter()
            .copied()
            .filter(|&id| farm.host(id).site == site)
            .collect();
        if let Some(user) = user {
            if let Affinity::Host(host) = self.affinity(farm, &candidates, user, matching, policy, now) {
                return Ok(Choice {
                    host,
                    reason: ChoiceReason::Affinity,
                });
            }
        }
        let mut why = NoHost {
            candidates: candidates.len(),
            ..NoHost::default()
        };
        let mut best: Option<HostId> = None;
        for &id in &candidates {
            if self.health(id, policy, now) != HostHealth::Up {
                why.down += 1;
                continue;
            }
            if self.sessions(id, now) >= farm.host(id).session_limit {
                why.full += 1;
                continue;
            }
            if best.is_none_or(|b| self.compare(farm, id, b, policy, now).is_lt()) {
                best = Some(id);
            }
        }
        best.map(|host| Choice {
            host,
            reason: ChoiceReason::LeastLoaded,
        })
        .ok_or(why)
    }

    /// Forgets pending launches past their hold; the broker's timer calls it.
    pub fn purge(&mut self, now: Instant) {
        for state in &mut self.hosts {
            state.pending.retain(|p| p.until > now);
        }
    }

    /// Orders two hosts by score, then sessions, then id (pool order follows file order).
    fn compare(
        &self,
        farm: &Farm,
        a: HostId,
        b: HostId,
        policy: &BalancingPolicy,
        now: Instant,
    ) -> std::cmp::Ordering {
        let score = |id| self.score(farm, id, policy, now).unwrap_or(f64::INFINITY);
        score(a)
            .total_cmp(&score(b))
            .then_with(|| self.sessions(a, now).cmp(&self.sessions(b, now)))
            .then_with(|| a.cmp(&b))
    }
}

/// The form user names are compared in: the part after a `DOMAIN\` prefix and before an
/// `@realm` suffix, lower-cased (Windows account names are case-insensitive), so
/// `CORP\Alice`, `alice@corp.example` and `alice` are one user.
pub fn normalize_user(name: &str) -> String {
    let name = name.rsplit('\\').next().unwrap_or(name);
    let name = name.split('@').next().unwrap_or(name);
    name.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::farm::tests::FARM;

    struct Fixture {
        farm: Farm,
        dir: SessionDirectory,
        policy: BalancingPolicy,
        t0: Instant,
    }

    fn fixture() -> Fixture {
        let farm = Farm::parse(FARM).unwrap();
        let dir = SessionDirectory::new(&farm);
        let policy = farm.policy().balancing.clone();
        Fixture {
            farm,
            dir,
            policy,
            t0: Instant::now(),
        }
    }

    fn report(host: &str, sessions: &[&str], cpu: u8, mem: u8) -> HostReport {
        HostReport {
            host: host.into(),
            sessions: sessions.iter().map(|s| s.to_string()).collect(),
            cpu_percent: cpu,
            mem_percent: mem,
            rdp_up: true,
        }
    }

    impl Fixture {
        fn id(&self, name: &str) -> HostId {
            self.farm.host_id(name).unwrap()
        }
        fn report(&mut self, host: &str, sessions: &[&str], cpu: u8, mem: u8, at: Instant) {
            let id = self.id(host);
            self.dir.record_report(id, &report(host, sessions, cpu, mem), at);
        }
        fn choose(&self, user: Option<&str>, matching: UserMatch, now: Instant) -> Result<Choice, NoHost> {
            self.dir
                .choose(&self.farm, PoolId(0), "site-a", user, matching, &self.policy, now)
        }
        fn name(&self, choice: Result<Choice, NoHost>) -> &str {
            &self.farm.host(choice.unwrap().host).name
        }
    }

    #[test]
    fn least_loaded_follows_load_changes() {
        let mut f = fixture();
        let t0 = f.t0;
        f.report("rdsh-1", &["a", "b"], 50, 50, t0);
        f.report("rdsh-2", &[], 10, 20, t0);
        f.report("rdsh-3", &[], 90, 90, t0);
        assert_eq!(f.name(f.choose(None, UserMatch::Exact, t0)), "rdsh-2");
        let t1 = t0 + Duration::from_secs(2);
        f.report("rdsh-2", &["c", "d", "e", "f"], 80, 70, t1);
        f.report("rdsh-1", &[], 5, 5, t1);
        assert_eq!(f.name(f.choose(None, UserMatch::Exact, t1)), "rdsh-1");
    }

    #[test]
    fn silent_and_rdp_down_hosts_are_not_chosen() {
        let mut f = fixture();
        let t0 = f.t0;
        f.report("rdsh-1", &[], 0, 0, t0);
        f.report("rdsh-2", &[], 50, 50, t0 + Duration::from_secs(8));
        // rdsh-3 never reports.
        assert_eq!(
            f.name(f.choose(None, UserMatch::Exact, t0 + Duration::from_secs(9))),
            "rdsh-1"
        );
        // rdsh-1 silent for 11 s (> host_down_after = 10 s): rdsh-2 takes over.
        let t = t0 + Duration::from_secs(11);
        assert!(matches!(
            f.dir.health(f.id("rdsh-1"), &f.policy, t),
            HostHealth::Silent { .. }
        ));
        assert_eq!(
            f.dir.health(f.id("rdsh-3"), &f.policy, t),
            HostHealth::NeverReported
        );
        assert_eq!(f.name(f.choose(None, UserMatch::Exact, t)), "rdsh-2");
        let mut down = report("rdsh-2", &[], 0, 0);
        down.rdp_up = false;
        f.dir.record_report(f.id("rdsh-2"), &down, t);
        assert_eq!(
            f.choose(None, UserMatch::Exact, t),
            Err(NoHost {
                candidates: 3,
                down: 3,
                full: 0
            })
        );
    }

    #[test]
    fn full_host_is_skipped_but_affinity_still_returns_there() {
        let mut f = fixture();
        let t0 = f.t0;
        // rdsh-3 has limit 2 and is otherwise idle.
        f.report("rdsh-1", &[], 60, 60, t0);
        f.report("rdsh-2", &[], 60, 60, t0);
        f.report("rdsh-3", &["x", "y"], 0, 0, t0);
        assert_eq!(f.name(f.choose(None, UserMatch::Exact, t0)), "rdsh-1");
        assert_eq!(f.name(f.choose(Some("y"), UserMatch::Exact, t0)), "rdsh-3");
        f.report("rdsh-1", &["p"; 10], 0, 0, t0);
        f.report("rdsh-2", &["q"; 10], 0, 0, t0);
        assert_eq!(
            f.choose(Some("new"), UserMatch::Exact, t0),
            Err(NoHost {
                candidates: 3,
                down: 0,
                full: 3
            })
        );
    }

    #[test]
    fn pending_launches_spread_a_burst() {
        let mut f = fixture();
        let t0 = f.t0;
        for h in ["rdsh-1", "rdsh-2"] {
            f.report(h, &[], 10, 10, t0);
        }
        f.report("rdsh-3", &[], 100, 100, t0);
        let first = f.choose(Some("u1"), UserMatch::Exact, t0).unwrap().host;
        f.dir.note_launch(first, "u1", &f.policy, t0);
        let second = f.choose(Some("u2"), UserMatch::Exact, t0).unwrap().host;
        assert_ne!(first, second);
        // u1 returns to its pending host; the report that shows u1 replaces the pending entry.
        assert_eq!(f.choose(Some("u1"), UserMatch::Exact, t0).unwrap().host, first);
        let name = f.farm.host(first).name.clone();
        f.report(&name, &["u1"], 10, 10, t0 + Duration::from_secs(1));
        assert_eq!(f.dir.sessions(first, t0 + Duration::from_secs(1)), 1);
    }

    #[test]
    fn affinity_exact_and_unique_prefix() {
        let mut f = fixture();
        let t0 = f.t0;
        f.report("rdsh-1", &["CORP\\Alexander", "bob"], 90, 90, t0);
        f.report("rdsh-2", &["alexandra"], 0, 0, t0);
        f.report("rdsh-3", &["carol@corp.example"], 0, 0, t0);
        let cands: Vec<HostId> = f.farm.pool(PoolId(0)).hosts.clone();
        let aff = |hint: &str, m| f.dir.affinity(&f.farm, &cands, hint, m, &f.policy, t0);
        assert_eq!(aff("bob", UserMatch::Exact), Affinity::Host(f.id("rdsh-1")));
        assert_eq!(aff("BOB", UserMatch::Exact), Affinity::Host(f.id("rdsh-1")));
        assert_eq!(aff("alexander", UserMatch::Exact), Affinity::Host(f.id("rdsh-1")));
        assert_eq!(aff("carol", UserMatch::Exact), Affinity::Host(f.id("rdsh-3")));
        assert_eq!(aff("alexande", UserMatch::Exact), Affinity::None);
        // Truncated mstshash: "CORP\alexande" is unique, "alexand" is not.
        assert_eq!(
            aff("CORP\\alexande", UserMatch::Prefix),
            Affinity::Host(f.id("rdsh-1"))
        );
        assert_eq!(aff("alexand", UserMatch::Prefix), Affinity::Ambiguous);
        assert_eq!(aff("zed", UserMatch::Prefix), Affinity::None);
        // Affinity beats load: bob goes to the busy rdsh-1.
        assert_eq!(f.name(f.choose(Some("bo"), UserMatch::Prefix, t0)), "rdsh-1");
        // ...unless that host is down.
        let later = t0 + Duration::from_secs(11);
        f.report("rdsh-2", &["alexandra"], 0, 0, later);
        assert_eq!(f.name(f.choose(Some("bob"), UserMatch::Exact, later)), "rdsh-2");
    }

    #[test]
    fn hosts_of_another_site_are_never_candidates() {
        let mut f = fixture();
        let t0 = f.t0;
        f.report("rdsh-b1", &["alice"], 0, 0, t0);
        // The site-a pool has no up host; alice's session in site-b does not leak across.
        assert!(f.choose(Some("alice"), UserMatch::Exact, t0).is_err());
        // Asking for the site-b pool from site-a yields nothing either.
        let cross = f.dir.choose(
            &f.farm,
            PoolId(1),
            "site-a",
            Some("alice"),
            UserMatch::Exact,
            &f.policy,
            t0,
        );
        assert_eq!(cross, Err(NoHost::default()));
    }

    #[test]
    fn weights_shift_the_choice() {
        let mut f = fixture();
        let t0 = f.t0;
        f.report("rdsh-1", &["a", "b", "c"], 10, 10, t0); // 30 % sessions, light CPU
        f.report("rdsh-2", &[], 60, 60, t0); // no sessions, heavy CPU
        f.policy.sessions_weight = 1.0;
        f.policy.cpu_weight = 0.0;
        f.policy.mem_weight = 0.0;
        assert_eq!(f.name(f.choose(None, UserMatch::Exact, t0)), "rdsh-2");
        f.policy.sessions_weight = 0.0;
        f.policy.cpu_weight = 1.0;
        assert_eq!(f.name(f.choose(None, UserMatch::Exact, t0)), "rdsh-1");
    }
}
