//! The broker (publishing agent) core: answers gateways' and host agents' requests from the
//! farm model, the user database, the login throttle, the session directory, the key ring
//! and the nonce ledger.
//!
//! Sans-IO: [`Broker::handle`] takes a decoded [`Request`], who sent it ([`PeerInfo`]) and
//! the time ([`Now`]) and returns the [`Reply`]; randomness comes from the generator given at
//! construction, audit records go to the given [`AuditSink`]. The shell (sockets, mutual
//! TLS, frames, keepalive) calls it for every request frame and the timer calls
//! [`Broker::tick`]. Slow credential checks (LDAP, or hashes on a worker pool) use
//! [`Broker::begin_login`] / [`Broker::finish_login`] instead of `handle`.

pub mod audit;
pub mod auth;
pub mod credentials;
pub mod directory;
mod duration;
pub mod farm;
pub mod ldap;
pub mod throttle;
pub mod tokens;
pub mod userdb;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::{CryptoRng, RngCore};

pub use audit::{AuditAction, AuditRecord, AuditResult, AuditSink, JsonLinesAudit, MemoryAudit};
pub use auth::AuthOutcome;
pub use credentials::{CheckRoute, Credentials};
pub use directory::{Affinity, Choice, ChoiceReason, HostHealth, NoHost, SessionDirectory, UserMatch};
pub use farm::{Farm, FarmError, FarmPolicy, Host, HostId, PoolId, Resource, Site};
pub use ldap::{LdapDirectory, LdapSettings};
pub use throttle::{Admission, LoginThrottle};
pub use tokens::{LoginSession, LoginSessions};
pub use userdb::{HashCost, LocalUser, UserDb, UserDbError};

use crate::frame::Role;
use crate::message::{
    ChooseHost, HostChosen, HostReport, Launch, LaunchMode, Launched, ListResources, Login, LoginOk,
    RedeemTicket, Redeemed, RefusalReason, Refused, Reply, Request, Resources,
};
use crate::ticket::{KeyRing, Nonce, NonceLedger, TicketClaims, UnixMillis};

/// A cryptographic random source the broker can own and move to its thread.
pub trait BrokerRng: RngCore + CryptoRng + Send {}

impl<T: RngCore + CryptoRng + Send> BrokerRng for T {}

/// Who sent a request: filled by the shell from the TLS session and the hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's role (by the port it came in on and its hello).
    pub role: Role,
    /// Its node name (hello, matched against its farm certificate).
    pub node: String,
    /// The site it serves: for a gateway, from the farm file's `[[gateway]]` list
    /// ([`Farm::gateway`]); `None` for host agents or unknown gateways.
    pub site: Option<String>,
    /// Its socket address.
    pub addr: SocketAddr,
}

/// The time of a decision: a monotonic instant for everything local (lock-outs, reports,
/// session tokens) and the wall clock for what crosses machines (ticket expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub instant: Instant,
    /// Wall-clock time.
    pub wall: UnixMillis,
}

impl Now {
    /// Reads both clocks; the shell calls it once per event.
    pub fn read() -> Self {
        Self {
            instant: Instant::now(),
            wall: UnixMillis::from_system_time(SystemTime::now()),
        }
    }

    /// This time plus `d` on both clocks (tests and simulations).
    pub fn advance(self, d: Duration) -> Self {
        Self {
            instant: self.instant + d,
            wall: self.wall.saturating_add(d),
        }
    }
}

/// What the broker is built from.
pub struct BrokerSetup {
    /// This broker's node name: the `issuer` of its tickets.
    pub node: String,
    /// The farm.
    pub farm: Arc<Farm>,
    /// Local users.
    pub users: UserDb,
    /// Farm keys; the current one signs tickets.
    pub keys: KeyRing,
    /// Where audit records go.
    pub audit: Box<dyn AuditSink>,
    /// Randomness for session tokens and ticket nonces.
    pub rng: Box<dyn BrokerRng>,
}

/// A login that passed throttling and waits for its credential check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLogin {
    /// The user name as typed.
    pub user: String,
    /// The client address.
    pub client_addr: SocketAddr,
    /// The gateway's site.
    pub site: String,
}

/// The broker core.
pub struct Broker {
    node: String,
    farm: Arc<Farm>,
    users: UserDb,
    keys: KeyRing,
    ledger: NonceLedger,
    throttle: LoginThrottle,
    sessions: LoginSessions,
    directory: SessionDirectory,
    audit: Box<dyn AuditSink>,
    rng: Box<dyn BrokerRng>,
    draining: bool,
}

impl Broker {
    /// A broker with no host reports, no sessions and an empty ledger.
    pub fn new(setup: BrokerSetup) -> Self {
        let policy = setup.farm.policy().clone();
        Self {
            directory: SessionDirectory::new(&setup.farm),
            ledger: NonceLedger::new(policy.launch.ledger_capacity),
            throttle: LoginThrottle::new(policy.login.clone()),
            sessions: LoginSessions::new(policy.login.max_sessions),
            node: setup.node,
            farm: setup.farm,
            users: setup.users,
            keys: setup.keys,
            audit: setup.audit,
            rng: setup.rng,
            draining: false,
        }
    }

    /// Answers one request. Every refusal carries a specific reason. A login is checked
    /// against the local users only, here on the caller's thread; the shell routes
    /// directory users through [`Broker::begin_login`] / [`Broker::finish_login`] instead.
    pub fn handle(&mut self, request: Request, peer: &PeerInfo, now: Now) -> Reply {
        let expected = match request {
            Request::HostReport(_) => Role::HostAgent,
            _ => Role::Gateway,
        };
        if peer.role != expected {
            return refuse(
                RefusalReason::BadRequest,
                format!("{} is not accepted from a {}", request.name(), peer.role.as_str()),
            );
        }
        if self.draining && expected == Role::Gateway {
            return Reply::Refused(Refused::new(RefusalReason::Draining));
        }
        match request {
            Request::Login(login) => match self.begin_login(&login, peer, now) {
                Err(reply) => reply,
                Ok(pending) => {
                    let outcome = self.users.verify(&login.user, login.password.expose());
                    self.finish_login(pending, outcome, peer, now)
                }
            },
            Request::ListResources(r) => self.list_resources(&r, peer, now),
            Request::Launch(r) => self.launch(&r, peer, now),
            Request::RedeemTicket(r) => self.redeem(&r, peer, now),
            Request::HostReport(r) => self.host_report(&r, peer, now),
            Request::ChooseHost(r) => self.choose_host(&r, peer, now),
        }
    }

    /// First half of a login: site and throttling checks, before any password is looked at.
    /// `Err` is the refusal to send (already audited); `Ok` goes to the credential check and
    /// then to [`Broker::finish_login`].
    pub fn begin_login(&mut self, login: &Login, peer: &PeerInfo, now: Now) -> Result<PendingLogin, Reply> {
        let audit = |reason, detail: String| AuditRecord {
            at_ms: now.wall.0,
            broker: self.node.clone(),
            gateway: peer.node.clone(),
            action: AuditAction::Login,
            user: Some(login.user.clone()),
            client_addr: Some(login.client_addr),
            resource: None,
            host: None,
            result: AuditResult::Refused(reason),
            detail: Some(detail),
        };
        let Some(site) = self.gateway_site(peer) else {
            let record = audit(RefusalReason::WrongSite, "gateway serves no known site".into());
            self.audit.record(&record);
            return Err(refuse(RefusalReason::WrongSite, "gateway serves no known site"));
        };
        let refusal = match self
            .throttle
            .admit(&login.user, login.client_addr.ip(), now.instant)
        {
            throttle::Admission::Allowed => None,
            throttle::Admission::AddressThrottled { until } => Some((RefusalReason::AddressThrottled, until)),
            throttle::Admission::UserLocked { until } => Some((RefusalReason::UserLocked, until)),
        };
        if let Some((reason, until)) = refusal {
            let detail = format!(
                "throttled for {} s more; password not checked",
                until.saturating_duration_since(now.instant).as_secs()
            );
            let record = audit(reason, detail.clone());
            self.audit.record(&record);
            return Err(refuse(reason, detail));
        }
        Ok(PendingLogin {
            user: login.user.clone(),
            client_addr: login.client_addr,
            site,
        })
    }

    /// Second half of a login whose password was not checked because the gateway had stopped
    /// waiting (its `wait_ms` ran out in the queue): audited, nothing counted against the
    /// user.
    pub fn abandon_login(&mut self, pending: PendingLogin, detail: &str, peer: &PeerInfo, now: Now) -> Reply {
        self.audit.record(&AuditRecord {
            at_ms: now.wall.0,
            broker: self.node.clone(),
            gateway: peer.node.clone(),
            action: AuditAction::Login,
            user: Some(pending.user),
            client_addr: Some(pending.client_addr),
            resource: None,
            host: None,
            result: AuditResult::Refused(RefusalReason::Internal),
            detail: Some(detail.to_string()),
        });
        refuse(RefusalReason::Internal, detail)
    }

    /// Second half of a login: counts a failed guess, or issues the session token and lists
    /// the user's resources in the gateway's site.
    pub fn finish_login(
        &mut self,
        pending: PendingLogin,
        outcome: AuthOutcome,
        peer: &PeerInfo,
        now: Now,
    ) -> Reply {
        let mut record = AuditRecord {
            at_ms: now.wall.0,
            broker: self.node.clone(),
            gateway: peer.node.clone(),
            action: AuditAction::Login,
            user: Some(pending.user.clone()),
            client_addr: Some(pending.client_addr),
            resource: None,
            host: None,
            result: AuditResult::Ok,
            detail: None,
        };
        let reply = match outcome {
            AuthOutcome::Accepted { user, groups } => {
                self.throttle.record_success(&pending.user);
                let groups = self.farm.effective_groups(&user, &groups);
                let resources = self.farm.resources_for(&pending.site, &groups);
                let session = LoginSession {
                    user,
                    groups,
                    site: pending.site,
                    client_addr: pending.client_addr,
                    expires_at: now.instant + self.farm.policy().login.session_lifetime,
                };
                match self.sessions.issue(session, &mut self.rng, now.instant) {
                    Ok(session_token) => Reply::LoginOk(LoginOk {
                        session_token,
                        resources,
                    }),
                    Err(tokens::SessionsFull) => refuse(RefusalReason::Internal, "session table full"),
                }
            }
            other => {
                let reason = other.refusal().unwrap_or(RefusalReason::Internal);
                let mut detail = match &other {
                    AuthOutcome::Unavailable(why) => why.clone(),
                    _ => reason.as_str().to_string(),
                };
                if other.is_failed_guess() {
                    let effect =
                        self.throttle
                            .record_failure(&pending.user, pending.client_addr.ip(), now.instant);
                    if effect.user_locked {
                        detail.push_str("; user now locked out");
                    }
                    if effect.address_throttled {
                        detail.push_str("; address now throttled");
                    }
                }
                refuse(reason, detail)
            }
        };
        if let Reply::Refused(r) = &reply {
            record.result = AuditResult::Refused(r.reason);
            record.detail = r.detail.clone();
        }
        self.audit.record(&record);
        reply
    }

    /// Expiry work: spent nonces, expired sessions, old throttle counts, pending launches.
    /// The shell's timer calls it every second or so.
    pub fn tick(&mut self, now: Now) {
        self.ledger.purge(now.wall);
        self.sessions.purge(now.instant);
        self.throttle.purge(now.instant);
        self.directory.purge(now.instant);
    }

    /// From now on refuse gateways' requests with `draining` (the shell also sends the
    /// `draining` event); host reports are still taken.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    /// This broker's node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The farm in use.
    pub fn farm(&self) -> &Arc<Farm> {
        &self.farm
    }

    /// The user database (metrics: `hash_verifications`).
    pub fn users(&self) -> &UserDb {
        &self.users
    }

    /// Replaces the user database (reload after `gatehouse user ...`). Sessions of users
    /// removed or disabled are ended.
    pub fn replace_users(&mut self, users: UserDb) {
        let gone: Vec<String> = self
            .users
            .users()
            .filter(|u| users.user(&u.name).is_none_or(|n| n.disabled || n.locked))
            .map(|u| u.name.clone())
            .collect();
        for name in gone {
            self.sessions.revoke_user(&name);
        }
        self.users = users;
    }

    /// Replaces the farm (SIGHUP reload of the farm file). What is still valid survives:
    /// host reports and pending launches of hosts that keep their name (and site), login
    /// sessions whose site still exists, throttle counts (under the new `[login]` limits),
    /// spent nonces. Sessions keep the groups they logged in with; what those groups may
    /// launch follows the new file at once. Returns how many sessions ended.
    pub fn replace_farm(&mut self, farm: Arc<Farm>) -> usize {
        self.directory = self.directory.carried_over(&self.farm, &farm);
        let ended = self.sessions.retain(|s| farm.site(&s.site).is_some());
        self.sessions.set_capacity(farm.policy().login.max_sessions);
        self.throttle.set_policy(farm.policy().login.clone());
        self.farm = farm;
        ended
    }

    /// The session directory (admin API, metrics, the RDP balancing path's lookups).
    pub fn directory(&self) -> &SessionDirectory {
        &self.directory
    }

    /// Live login sessions.
    pub fn sessions(&self) -> &LoginSessions {
        &self.sessions
    }

    fn gateway_site(&self, peer: &PeerInfo) -> Option<String> {
        peer.site.clone().filter(|s| self.farm.site(s).is_some())
    }

    fn list_resources(&mut self, r: &ListResources, peer: &PeerInfo, now: Now) -> Reply {
        match self.session_for(&r.session_token, peer, now) {
            Ok(session) => Reply::Resources(Resources {
                resources: self.farm.resources_for(&session.site, &session.groups),
            }),
            Err(reply) => reply,
        }
    }

    fn launch(&mut self, r: &Launch, peer: &PeerInfo, now: Now) -> Reply {
        let mut record = AuditRecord {
            at_ms: now.wall.0,
            broker: self.node.clone(),
            gateway: peer.node.clone(),
            action: AuditAction::Launch,
            user: None,
            client_addr: Some(r.client_addr),
            resource: Some(r.resource.clone()),
            host: None,
            result: AuditResult::Ok,
            detail: None,
        };
        let reply = self.launch_inner(r, peer, now, &mut record);
        if let Reply::Refused(refused) = &reply {
            record.result = AuditResult::Refused(refused.reason);
            record.detail = refused.detail.clone();
        }
        self.audit.record(&record);
        reply
    }

    fn launch_inner(&mut self, r: &Launch, peer: &PeerInfo, now: Now, record: &mut AuditRecord) -> Reply {
        let session = match self.session_for(&r.session_token, peer, now) {
            Ok(session) => session.clone(),
            Err(reply) => return reply,
        };
        record.user = Some(session.user.clone());
        let Some(resource) = self.farm.resource(&r.resource) else {
            return refuse(
                RefusalReason::UnknownResource,
                format!("no resource {:?}", r.resource),
            );
        };
        if resource.site != session.site {
            return refuse(
                RefusalReason::WrongSite,
                format!("resource {:?} belongs to site {:?}", resource.id, resource.site),
            );
        }
        if !self.farm.may_launch(resource, &session.groups) {
            return refuse(
                RefusalReason::NotPermitted,
                format!("groups of {:?} may not launch {:?}", session.user, resource.id),
            );
        }
        let policy = &self.farm.policy().balancing;
        let choice = self.directory.choose(
            &self.farm,
            resource.pool,
            &session.site,
            Some(&session.user),
            UserMatch::Exact,
            policy,
            now.instant,
        );
        let choice = match choice {
            Ok(choice) => choice,
            Err(why) => return refuse(RefusalReason::NoHostAvailable, why.to_string()),
        };
        let host = self.farm.host(choice.host).clone();
        record.host = Some(host.address.clone());
        record.detail = Some(format!("host {} by {:?}", host.name, choice.reason));
        let ticket = match r.mode {
            LaunchMode::Direct => None,
            LaunchMode::Gateway => {
                let claims = TicketClaims {
                    issuer: self.node.clone(),
                    user: session.user.clone(),
                    host: host.address.clone(),
                    port: host.port,
                    site: session.site.clone(),
                    expires_at: now.wall.saturating_add(self.farm.policy().launch.ticket_lifetime),
                    nonce: Nonce::random(&mut self.rng),
                };
                match self.keys.sign(&claims) {
                    Ok(ticket) => Some(crate::message::Secret::new(ticket)),
                    Err(e) => return refuse(RefusalReason::Internal, e.to_string()),
                }
            }
        };
        let policy = &self.farm.policy().balancing;
        self.directory
            .note_launch(choice.host, &session.user, policy, now.instant);
        Reply::Launched(Launched {
            host: host.address,
            port: host.port,
            ticket,
        })
    }

    fn redeem(&mut self, r: &RedeemTicket, peer: &PeerInfo, now: Now) -> Reply {
        let mut record = AuditRecord {
            at_ms: now.wall.0,
            broker: self.node.clone(),
            gateway: peer.node.clone(),
            action: AuditAction::RedeemTicket,
            user: None,
            client_addr: None,
            resource: None,
            host: None,
            result: AuditResult::Ok,
            detail: None,
        };
        let reply = (|| {
            let ticket = self
                .keys
                .verify(r.ticket.expose(), now.wall)
                .map_err(ticket_refusal)?;
            let c = &ticket.claims;
            record.user = Some(c.user.clone());
            record.host = Some(c.host.clone());
            record.detail = Some(format!("nonce {}", c.nonce));
            ticket.check_issuer(&self.node).map_err(ticket_refusal)?;
            let site = self.gateway_site(peer).unwrap_or_default();
            if c.site != site {
                return Err(refuse(
                    RefusalReason::TicketBindingMismatch,
                    format!(
                        "ticket for site {:?} redeemed by a gateway of site {:?}",
                        c.site, site
                    ),
                ));
            }
            // The session the client presented must be live and its user's; checked before
            // the nonce is spent, so a stolen ticket tried with another session stays with
            // its owner.
            if let Some(token) = &r.session_token {
                match self.sessions.lookup(token, now.instant) {
                    None => {
                        return Err(refuse(
                            RefusalReason::SessionInvalid,
                            "the session presented with the ticket is unknown or expired",
                        ))
                    }
                    Some(s) if s.user != c.user => {
                        return Err(refuse(
                            RefusalReason::TicketBindingMismatch,
                            format!(
                                "ticket of user {:?} presented by a session of {:?}",
                                c.user, s.user
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
            self.ledger.redeem(&ticket, now.wall).map_err(ticket_refusal)?;
            Ok(Reply::Redeemed(Redeemed {
                user: c.user.clone(),
                host: c.host.clone(),
                port: c.port,
                site: c.site.clone(),
            }))
        })()
        .unwrap_or_else(|refusal| refusal);
        if let Reply::Refused(refused) = &reply {
            record.result = AuditResult::Refused(refused.reason);
            record.detail = refused.detail.clone();
        }
        self.audit.record(&record);
        reply
    }

    fn host_report(&mut self, r: &HostReport, peer: &PeerInfo, now: Now) -> Reply {
        let Some(id) = self.farm.host_id(&r.host) else {
            return refuse(
                RefusalReason::UnknownHost,
                format!("no host {:?} in the farm", r.host),
            );
        };
        // The agent's node name is its host's name: one agent cannot speak for another host.
        if peer.node != r.host {
            return refuse(
                RefusalReason::NotPermitted,
                format!("host agent {:?} may not report for host {:?}", peer.node, r.host),
            );
        }
        self.directory.record_report(id, r, now.instant);
        Reply::ReportAccepted
    }

    fn choose_host(&mut self, r: &ChooseHost, peer: &PeerInfo, now: Now) -> Reply {
        let mut record = AuditRecord {
            at_ms: now.wall.0,
            broker: self.node.clone(),
            gateway: peer.node.clone(),
            action: AuditAction::ChooseHost,
            user: r.user_hint.clone(),
            client_addr: None,
            resource: r.resource.clone(),
            host: None,
            result: AuditResult::Ok,
            detail: None,
        };
        let reply = (|| {
            let site = self.gateway_site(peer);
            if site.as_deref() != Some(r.site.as_str()) {
                return Err(refuse(
                    RefusalReason::WrongSite,
                    format!("gateway {:?} does not serve site {:?}", peer.node, r.site),
                ));
            }
            let pool = match &r.resource {
                Some(id) => {
                    let resource = self.farm.resource(id).ok_or_else(|| {
                        refuse(RefusalReason::UnknownResource, format!("no resource {id:?}"))
                    })?;
                    if resource.site != r.site {
                        return Err(refuse(
                            RefusalReason::WrongSite,
                            format!("resource {id:?} belongs to site {:?}", resource.site),
                        ));
                    }
                    resource.pool
                }
                None => self
                    .farm
                    .site(&r.site)
                    .and_then(|s| s.default_pool)
                    .ok_or_else(|| refuse(RefusalReason::UnknownResource, "site has no default_pool"))?,
            };
            let policy = &self.farm.policy().balancing;
            // A `msts=` routing token (MS-RDPBCGR 2.2.1.1) is honoured only when it names a
            // host of this pool that is up and has room; otherwise it is ignored.
            let by_token = r.routing_token.and_then(|token| {
                self.farm.pool(pool).hosts.iter().copied().find(|&id| {
                    let h = self.farm.host(id);
                    h.port == token.port()
                        && h.address.parse::<std::net::IpAddr>().ok() == Some(token.ip())
                        && self.directory.health(id, policy, now.instant) == HostHealth::Up
                        && self.directory.sessions(id, now.instant) < h.session_limit
                })
            });
            let choice = match by_token {
                Some(host) => Choice {
                    host,
                    reason: ChoiceReason::Affinity,
                },
                None => self
                    .directory
                    .choose(
                        &self.farm,
                        pool,
                        &r.site,
                        r.user_hint.as_deref(),
                        UserMatch::Prefix,
                        policy,
                        now.instant,
                    )
                    .map_err(|why| refuse(RefusalReason::NoHostAvailable, why.to_string()))?,
            };
            let host = self.farm.host(choice.host);
            if let Some(user) = &r.user_hint {
                self.directory.note_launch(choice.host, user, policy, now.instant);
            }
            record.host = Some(host.address.clone());
            record.detail = Some(format!("host {} by {:?}", host.name, choice.reason));
            Ok(Reply::HostChosen(HostChosen {
                host: host.address.clone(),
                port: host.port,
            }))
        })()
        .unwrap_or_else(|refusal| refusal);
        if let Reply::Refused(refused) = &reply {
            record.result = AuditResult::Refused(refused.reason);
            record.detail = refused.detail.clone();
        }
        self.audit.record(&record);
        reply
    }

    /// The live session of `token`, valid for the gateway's site.
    fn session_for(
        &self,
        token: &crate::message::Secret,
        peer: &PeerInfo,
        now: Now,
    ) -> Result<&LoginSession, Reply> {
        let session = self
            .sessions
            .lookup(token, now.instant)
            .ok_or_else(|| refuse(RefusalReason::SessionInvalid, "unknown or expired session token"))?;
        if self.gateway_site(peer).as_deref() != Some(session.site.as_str()) {
            return Err(refuse(
                RefusalReason::SessionInvalid,
                "session token was issued through a gateway of another site",
            ));
        }
        Ok(session)
    }
}

fn refuse(reason: RefusalReason, detail: impl Into<String>) -> Reply {
    Reply::Refused(Refused::with_detail(reason, detail))
}

fn ticket_refusal(err: crate::ticket::TicketError) -> Reply {
    refuse(RefusalReason::from(&err), err.to_string())
}

#[cfg(test)]
mod tests;
