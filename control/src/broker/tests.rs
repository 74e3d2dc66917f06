//! Broker tests: requests in, replies out, time injected; no sockets.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::farm::tests::FARM;
use super::*;
use crate::message::{ResourceInfo, Secret};
use crate::ticket::{FarmKey, KeyId, FARM_KEY_BYTES};

const COST: HashCost = HashCost {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

struct Rig {
    broker: Broker,
    audit: MemoryAudit,
    ring: KeyRing,
    now: Now,
    gw_a: PeerInfo,
    gw_b: PeerInfo,
}

fn ring() -> KeyRing {
    KeyRing::new(FarmKey::new(KeyId(1), [0x42; FARM_KEY_BYTES]))
}

fn rig() -> Rig {
    let farm = Farm::parse(&FARM.replace(
        "[[gateway]]\nname = \"gw-a\"\nsite = \"site-a\"\n",
        "[[gateway]]\nname = \"gw-a\"\nsite = \"site-a\"\n\n[[gateway]]\nname = \"gw-b\"\nsite = \"site-b\"\n",
    ))
    .unwrap();
    let mut users = UserDb::new(COST);
    let mut rng = StdRng::seed_from_u64(7);
    for (name, groups) in [
        ("alice", &["staff"][..]),
        ("bob", &["staff"]),
        ("carol", &[]),
        ("dave", &[]),
    ] {
        let groups = groups.iter().map(|g| g.to_string()).collect();
        users.add(name, &format!("pw-{name}"), groups, &mut rng).unwrap();
    }
    users.set_disabled("bob", true).unwrap();
    let audit = MemoryAudit::new();
    let broker = Broker::new(BrokerSetup {
        node: "broker-1".into(),
        farm: Arc::new(farm.clone()),
        users,
        keys: ring(),
        audit: Box::new(audit.clone()),
        rng: Box::new(StdRng::seed_from_u64(8)),
    });
    let peer = |node: &str, site: &str, port| PeerInfo {
        role: Role::Gateway,
        node: node.into(),
        site: farm.gateway(node).map(|g| g.site.clone()).or(Some(site.into())),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    Rig {
        broker,
        audit,
        ring: ring(),
        now: Now {
            instant: Instant::now(),
            wall: UnixMillis(1_700_000_000_000),
        },
        gw_a: peer("gw-a", "site-a", 40001),
        gw_b: peer("gw-b", "site-b", 40002),
    }
}

fn client(last: u8) -> SocketAddr {
    SocketAddr::from(([203, 0, 113, last], 50000))
}

fn reason(reply: &Reply) -> Option<RefusalReason> {
    match reply {
        Reply::Refused(r) => Some(r.reason),
        _ => None,
    }
}

impl Rig {
    fn login_from(&mut self, gw: &PeerInfo, user: &str, password: &str, from: SocketAddr) -> Reply {
        let request = Request::Login(Login {
            user: user.into(),
            password: Secret::new(password),
            second_factor: None,
            client_addr: from,
            wait_ms: None,
        });
        self.broker.handle(request, gw, self.now)
    }

    fn login(&mut self, user: &str, password: &str) -> Reply {
        let gw = self.gw_a.clone();
        self.login_from(&gw, user, password, client(7))
    }

    fn token(&mut self, user: &str) -> Secret {
        match self.login(user, &format!("pw-{user}")) {
            Reply::LoginOk(ok) => ok.session_token,
            other => panic!("login of {user} failed: {other:?}"),
        }
    }

    fn report(&mut self, host: &str, sessions: &[&str], cpu: u8, mem: u8) -> Reply {
        let agent = PeerInfo {
            role: Role::HostAgent,
            node: host.into(),
            site: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 40100)),
        };
        let request = Request::HostReport(HostReport {
            host: host.into(),
            sessions: sessions.iter().map(|s| s.to_string()).collect(),
            cpu_percent: cpu,
            mem_percent: mem,
            rdp_up: true,
        });
        self.broker.handle(request, &agent, self.now)
    }

    fn launch_on(&mut self, gw: &PeerInfo, token: &Secret, resource: &str, mode: LaunchMode) -> Reply {
        let request = Request::Launch(Launch {
            session_token: token.clone(),
            resource: resource.into(),
            mode,
            client_addr: client(7),
        });
        self.broker.handle(request, gw, self.now)
    }

    fn launch(&mut self, token: &Secret, resource: &str) -> Reply {
        let gw = self.gw_a.clone();
        self.launch_on(&gw, token, resource, LaunchMode::Gateway)
    }

    fn launched_host(&mut self, token: &Secret) -> String {
        match self.launch(token, "desktop-a") {
            Reply::Launched(l) => l.host,
            other => panic!("launch failed: {other:?}"),
        }
    }

    fn redeem_on(&mut self, gw: &PeerInfo, ticket: &str) -> Reply {
        let request = Request::RedeemTicket(RedeemTicket {
            session_token: None,
            ticket: Secret::new(ticket),
        });
        self.broker.handle(request, gw, self.now)
    }

    fn redeem(&mut self, ticket: &str) -> Reply {
        let gw = self.gw_a.clone();
        self.redeem_on(&gw, ticket)
    }

    fn all_hosts_up(&mut self) {
        self.report("rdsh-1", &[], 50, 50);
        self.report("rdsh-2", &[], 10, 10);
        self.report("rdsh-3", &[], 90, 90);
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now.advance(d);
    }
}

#[test]
fn login_lists_resources_of_the_site_and_groups() {
    let mut rig = rig();
    let Reply::LoginOk(ok) = rig.login("alice", "pw-alice") else {
        panic!("login refused");
    };
    let desk = ResourceInfo {
        id: "desktop-a".into(),
        name: "Office desktop".into(),
        kind: crate::message::ResourceKind::Desktop,
    };
    assert_eq!(ok.resources, vec![desk.clone()]);
    let list = Request::ListResources(ListResources {
        session_token: ok.session_token.clone(),
    });
    assert_eq!(
        rig.broker.handle(list, &rig.gw_a.clone(), rig.now),
        Reply::Resources(Resources {
            resources: vec![desk]
        })
    );
    // carol has no database groups; the farm file puts her in finance.
    let Reply::LoginOk(carol) = rig.login("carol", "pw-carol") else {
        panic!()
    };
    assert_eq!(carol.resources.len(), 1);
    assert_eq!(carol.resources[0].id, "ledger-app");
    // The token expires with the session lifetime (default 8 h).
    rig.advance(Duration::from_secs(8 * 3600));
    let list = Request::ListResources(ListResources {
        session_token: ok.session_token,
    });
    assert_eq!(
        reason(&rig.broker.handle(list, &rig.gw_a.clone(), rig.now)),
        Some(RefusalReason::SessionInvalid)
    );
}

#[test]
fn login_refusals_are_specific_and_audited() {
    let mut rig = rig();
    assert_eq!(
        reason(&rig.login("alice", "nope")),
        Some(RefusalReason::WrongPassword)
    );
    assert_eq!(
        reason(&rig.login("zed", "nope")),
        Some(RefusalReason::UnknownUser)
    );
    assert_eq!(
        reason(&rig.login("bob", "pw-bob")),
        Some(RefusalReason::UserDisabled)
    );
    assert!(matches!(rig.login("alice", "pw-alice"), Reply::LoginOk(_)));
    let records = rig.audit.records();
    let results: Vec<_> = records
        .iter()
        .map(|r| (r.user.as_deref().unwrap(), r.result))
        .collect();
    assert_eq!(
        results,
        [
            ("alice", AuditResult::Refused(RefusalReason::WrongPassword)),
            ("zed", AuditResult::Refused(RefusalReason::UnknownUser)),
            ("bob", AuditResult::Refused(RefusalReason::UserDisabled)),
            ("alice", AuditResult::Ok),
        ]
    );
    assert!(records
        .iter()
        .all(|r| r.client_addr == Some(client(7)) && r.gateway == "gw-a"));
    assert!(records
        .iter()
        .all(|r| r.action == AuditAction::Login && r.broker == "broker-1"));
    let text = format!("{records:?}");
    assert!(
        !text.contains("pw-alice") && !text.contains("nope"),
        "credential in audit"
    );
}

#[test]
fn lockout_refuses_without_checking_the_hash() {
    let mut rig = rig();
    // [login] user_max_failures = 3, lockout = 5m in the test farm.
    for i in 0..3 {
        let gw = rig.gw_a.clone();
        let reply = rig.login_from(&gw, "alice", "wrong", client(10 + i));
        assert_eq!(reason(&reply), Some(RefusalReason::WrongPassword));
    }
    assert_eq!(rig.broker.users().hash_verifications(), 3);
    // The 4th attempt, even with the right password, is refused before any hash.
    assert_eq!(
        reason(&rig.login("alice", "pw-alice")),
        Some(RefusalReason::UserLocked)
    );
    assert_eq!(
        reason(&rig.login("alice", "wrong")),
        Some(RefusalReason::UserLocked)
    );
    assert_eq!(
        rig.broker.users().hash_verifications(),
        3,
        "hash checked during lock-out"
    );
    // Other users are unaffected.
    assert!(matches!(rig.login("carol", "pw-carol"), Reply::LoginOk(_)));
    // The audit log has every attempt, the locking one marked.
    let records = rig.audit.records();
    assert_eq!(records.len(), 6);
    assert!(records[2].detail.as_deref().unwrap().contains("now locked out"));
    assert_eq!(records[3].result, AuditResult::Refused(RefusalReason::UserLocked));
    // After the lock-out the right password works again.
    rig.advance(Duration::from_secs(300));
    assert!(matches!(rig.login("alice", "pw-alice"), Reply::LoginOk(_)));
}

#[test]
fn address_throttle_covers_every_user_name() {
    let mut rig = rig();
    let gw = rig.gw_a.clone();
    // [login] address_max_failures = 10: spread over names so no user locks.
    for i in 0..10 {
        let reply = rig.login_from(&gw, &format!("guess{}", i % 5), "x", client(99));
        assert_eq!(reason(&reply), Some(RefusalReason::UnknownUser));
    }
    let checks = rig.broker.users().hash_verifications();
    assert_eq!(checks, 10, "unknown users cost a hash too");
    let reply = rig.login_from(&gw, "alice", "pw-alice", client(99));
    assert_eq!(reason(&reply), Some(RefusalReason::AddressThrottled));
    assert_eq!(rig.broker.users().hash_verifications(), checks);
    // Another address is fine.
    assert!(matches!(
        rig.login_from(&gw, "alice", "pw-alice", client(98)),
        Reply::LoginOk(_)
    ));
}

#[test]
fn unavailable_directory_is_not_a_failed_guess() {
    let mut rig = rig();
    let gw = rig.gw_a.clone();
    let login = Login {
        user: "ldapuser".into(),
        password: Secret::new("x"),
        second_factor: None,
        client_addr: client(5),
        wait_ms: None,
    };
    for _ in 0..5 {
        let pending = rig.broker.begin_login(&login, &gw, rig.now).unwrap();
        let reply = rig.broker.finish_login(
            pending,
            AuthOutcome::Unavailable("ldap: connection refused".into()),
            &gw,
            rig.now,
        );
        assert_eq!(reason(&reply), Some(RefusalReason::DirectoryUnavailable));
    }
    assert!(
        rig.broker.begin_login(&login, &gw, rig.now).is_ok(),
        "outage locked the user"
    );
    // An accepted directory user gets farm groups by name.
    let pending = rig.broker.begin_login(&login, &gw, rig.now).unwrap();
    let outcome = AuthOutcome::Accepted {
        user: "ldapuser".into(),
        groups: vec!["staff".into()],
    };
    let Reply::LoginOk(ok) = rig.broker.finish_login(pending, outcome, &gw, rig.now) else {
        panic!()
    };
    assert_eq!(ok.resources[0].id, "desktop-a");
}

#[test]
fn launch_goes_to_the_least_loaded_and_follows_load() {
    let mut rig = rig();
    rig.all_hosts_up();
    let token = rig.token("alice");
    let direct = rig.launch_on(&rig.gw_a.clone(), &token, "desktop-a", LaunchMode::Direct);
    assert_eq!(
        direct,
        Reply::Launched(Launched {
            host: "10.0.0.2".into(),
            port: 3389,
            ticket: None
        })
    );
    rig.advance(Duration::from_secs(3));
    rig.report("rdsh-1", &[], 5, 5);
    rig.report("rdsh-2", &["alice"], 95, 95);
    rig.report("rdsh-3", &[], 90, 90);
    // A fresh user goes to the now least-loaded rdsh-1; alice keeps her session host.
    let other = rig.token("alice");
    assert_eq!(rig.launched_host(&other), "10.0.0.2", "affinity");
    rig.broker.replace_users({
        let mut users = UserDb::new(COST);
        let mut rng = StdRng::seed_from_u64(9);
        users
            .add("erin", "pw-erin", vec!["staff".into()], &mut rng)
            .unwrap();
        users
    });
    let erin = rig.token("erin");
    assert_eq!(rig.launched_host(&erin), "10.0.0.1");
    // rdsh-1 stops reporting: after host_down_after (10 s) it is no longer chosen.
    rig.advance(Duration::from_secs(8));
    rig.report("rdsh-2", &["alice"], 20, 20);
    rig.report("rdsh-3", &[], 90, 90);
    rig.advance(Duration::from_secs(3));
    let erin2 = rig.token("erin");
    let host = rig.launched_host(&erin2);
    assert_ne!(host, "10.0.0.1", "silent host chosen");
}

#[test]
fn full_pool_is_no_host_available() {
    let mut rig = rig();
    let token = rig.token("alice");
    assert_eq!(
        reason(&rig.launch(&token, "desktop-a")),
        Some(RefusalReason::NoHostAvailable)
    );
    rig.report("rdsh-1", &["u"; 10], 0, 0);
    rig.report("rdsh-2", &["u"; 10], 0, 0);
    rig.report("rdsh-3", &["v"], 0, 0);
    // rdsh-3 (limit 2) has one seat left; it is taken, then the pool is full.
    assert_eq!(rig.launched_host(&token), "10.0.0.3");
    let erin = {
        rig.broker.replace_users({
            let mut users = UserDb::new(COST);
            let mut rng = StdRng::seed_from_u64(10);
            users
                .add("erin", "pw-erin", vec!["staff".into()], &mut rng)
                .unwrap();
            users
        });
        rig.token("erin")
    };
    let reply = rig.launch(&erin, "desktop-a");
    assert_eq!(reason(&reply), Some(RefusalReason::NoHostAvailable));
    let Reply::Refused(r) = reply else { panic!() };
    assert!(r.detail.unwrap().contains("3 full"));
}

#[test]
fn launch_refusals() {
    let mut rig = rig();
    rig.all_hosts_up();
    let alice = rig.token("alice");
    assert_eq!(
        reason(&rig.launch(&alice, "nothing")),
        Some(RefusalReason::UnknownResource)
    );
    assert_eq!(
        reason(&rig.launch(&alice, "ledger-app")),
        Some(RefusalReason::NotPermitted)
    );
    assert_eq!(
        reason(&rig.launch(&alice, "desktop-b")),
        Some(RefusalReason::WrongSite)
    );
    assert_eq!(
        reason(&rig.launch(&Secret::new("forged-token"), "desktop-a")),
        Some(RefusalReason::SessionInvalid)
    );
    // A site-a token is not valid through a site-b gateway.
    let gw_b = rig.gw_b.clone();
    assert_eq!(
        reason(&rig.launch_on(&gw_b, &alice, "desktop-b", LaunchMode::Gateway)),
        Some(RefusalReason::SessionInvalid)
    );
    let launches: Vec<_> = rig
        .audit
        .records()
        .into_iter()
        .filter(|r| r.action == AuditAction::Launch)
        .collect();
    assert_eq!(launches.len(), 5);
    assert_eq!(launches[1].user.as_deref(), Some("alice"));
    assert_eq!(launches[1].resource.as_deref(), Some("ledger-app"));
}

#[test]
fn site_b_gateway_only_sees_site_b() {
    let mut rig = rig();
    rig.all_hosts_up();
    rig.report("rdsh-b1", &[], 80, 80);
    let gw_b = rig.gw_b.clone();
    let Reply::LoginOk(ok) = rig.login_from(&gw_b, "alice", "pw-alice", client(7)) else {
        panic!()
    };
    let ids: Vec<_> = ok.resources.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["desktop-b"]);
    for _ in 0..3 {
        let Reply::Launched(l) = rig.launch_on(&gw_b, &ok.session_token, "desktop-b", LaunchMode::Direct)
        else {
            panic!()
        };
        assert_eq!(l.host, "10.1.0.1");
    }
    assert_eq!(
        reason(&rig.launch_on(&gw_b, &ok.session_token, "desktop-a", LaunchMode::Direct)),
        Some(RefusalReason::WrongSite)
    );
    // choose_host for another site, or with a resource of another site.
    let ask = |site: &str, resource: Option<&str>| {
        Request::ChooseHost(ChooseHost {
            routing_token: None,
            resource: resource.map(String::from),
            site: site.into(),
            user_hint: None,
        })
    };
    let now = rig.now;
    assert_eq!(
        reason(&rig.broker.handle(ask("site-a", None), &gw_b, now)),
        Some(RefusalReason::WrongSite)
    );
    assert_eq!(
        reason(&rig.broker.handle(ask("site-b", Some("desktop-a")), &gw_b, now)),
        Some(RefusalReason::WrongSite)
    );
    // A gateway the farm file does not list serves no site.
    let stranger = PeerInfo {
        site: None,
        node: "gw-x".into(),
        ..rig.gw_a.clone()
    };
    assert_eq!(
        reason(&rig.login_from(&stranger, "alice", "pw-alice", client(7))),
        Some(RefusalReason::WrongSite)
    );
}

fn ticket_of(reply: Reply) -> String {
    match reply {
        Reply::Launched(Launched { ticket: Some(t), .. }) => t.expose().to_string(),
        other => panic!("no ticket: {other:?}"),
    }
}

#[test]
fn ticket_binds_and_redeems_once() {
    let mut rig = rig();
    rig.all_hosts_up();
    let token = rig.token("alice");
    let ticket = ticket_of(rig.launch(&token, "desktop-a"));
    let verified = rig.ring.verify(&ticket, rig.now.wall).unwrap();
    let c = &verified.claims;
    assert_eq!(
        (
            c.issuer.as_str(),
            c.user.as_str(),
            c.host.as_str(),
            c.port,
            c.site.as_str()
        ),
        ("broker-1", "alice", "10.0.0.2", 3389, "site-a")
    );
    assert_eq!(c.expires_at, rig.now.wall.saturating_add(Duration::from_secs(30)));
    // The gateway's own binding check (its site, the host it will dial).
    assert!(verified.check_binding("10.0.0.2", 3389, "site-a").is_ok());
    assert!(verified.check_binding("10.0.0.1", 3389, "site-a").is_err());
    assert_eq!(
        rig.redeem(&ticket),
        Reply::Redeemed(Redeemed {
            user: "alice".into(),
            host: "10.0.0.2".into(),
            port: 3389,
            site: "site-a".into()
        })
    );
    assert_eq!(reason(&rig.redeem(&ticket)), Some(RefusalReason::TicketReplayed));
    let redeems: Vec<_> = rig
        .audit
        .records()
        .into_iter()
        .filter(|r| r.action == AuditAction::RedeemTicket)
        .map(|r| r.result)
        .collect();
    assert_eq!(
        redeems,
        [
            AuditResult::Ok,
            AuditResult::Refused(RefusalReason::TicketReplayed)
        ]
    );
}

#[test]
fn bad_tickets_are_refused_with_their_reason() {
    let mut rig = rig();
    rig.all_hosts_up();
    let token = rig.token("alice");
    let ticket = ticket_of(rig.launch(&token, "desktop-a"));

    // Forged: one character of the tag changed.
    let mut forged = ticket.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(reason(&rig.redeem(&forged)), Some(RefusalReason::TicketForged));
    assert_eq!(
        reason(&rig.redeem("not a ticket!")),
        Some(RefusalReason::TicketMalformed)
    );

    // Signed under a key this broker does not hold.
    let stranger = KeyRing::new(FarmKey::new(KeyId(9), [7; FARM_KEY_BYTES]));
    let mut claims = rig.ring.verify(&ticket, rig.now.wall).unwrap().claims;
    claims.nonce = Nonce([1; 16]);
    let unknown_key = stranger.sign(&claims).unwrap();
    assert_eq!(
        reason(&rig.redeem(&unknown_key)),
        Some(RefusalReason::TicketUnknownKey)
    );

    // Issued by another broker of the farm (same key): redeem it there.
    claims.issuer = "broker-2".into();
    let elsewhere = rig.ring.sign(&claims).unwrap();
    assert_eq!(
        reason(&rig.redeem(&elsewhere)),
        Some(RefusalReason::TicketWrongIssuer)
    );

    // Presented by a gateway of another site.
    let gw_b = rig.gw_b.clone();
    assert_eq!(
        reason(&rig.redeem_on(&gw_b, &ticket)),
        Some(RefusalReason::TicketBindingMismatch)
    );

    // Expired: 30 s lifetime.
    rig.advance(Duration::from_secs(30));
    assert_eq!(reason(&rig.redeem(&ticket)), Some(RefusalReason::TicketExpired));
}

#[test]
fn host_reports_are_checked() {
    let mut rig = rig();
    assert_eq!(rig.report("rdsh-1", &[], 1, 1), Reply::ReportAccepted);
    assert_eq!(
        reason(&rig.report("rdsh-9", &[], 1, 1)),
        Some(RefusalReason::UnknownHost)
    );
    // An agent speaking for another host.
    let agent = PeerInfo {
        role: Role::HostAgent,
        node: "rdsh-1".into(),
        site: None,
        addr: SocketAddr::from(([127, 0, 0, 1], 40100)),
    };
    let report = HostReport {
        host: "rdsh-2".into(),
        sessions: vec![],
        cpu_percent: 0,
        mem_percent: 0,
        rdp_up: true,
    };
    let reply = rig
        .broker
        .handle(Request::HostReport(report.clone()), &agent, rig.now);
    assert_eq!(reason(&reply), Some(RefusalReason::NotPermitted));
    // A gateway may not send host reports; an agent may not log users in.
    let gw = rig.gw_a.clone();
    let reply = rig.broker.handle(Request::HostReport(report), &gw, rig.now);
    assert_eq!(reason(&reply), Some(RefusalReason::BadRequest));
    let login = Request::Login(Login {
        user: "alice".into(),
        password: Secret::new("pw-alice"),
        second_factor: None,
        client_addr: client(1),
        wait_ms: None,
    });
    assert_eq!(
        reason(&rig.broker.handle(login, &agent, rig.now)),
        Some(RefusalReason::BadRequest)
    );
}

#[test]
fn choose_host_for_plain_rdp_uses_cookie_affinity() {
    let mut rig = rig();
    let gw = rig.gw_a.clone();
    let ask = |hint: Option<&str>| {
        Request::ChooseHost(ChooseHost {
            routing_token: None,
            resource: None,
            site: "site-a".into(),
            user_hint: hint.map(String::from),
        })
    };
    assert_eq!(
        reason(&rig.broker.handle(ask(None), &gw, rig.now)),
        Some(RefusalReason::NoHostAvailable)
    );
    rig.report("rdsh-1", &["CORP\\Alexander"], 90, 90);
    rig.report("rdsh-2", &[], 10, 10);
    rig.report("rdsh-3", &[], 50, 50);
    let chosen = |reply: Reply| match reply {
        Reply::HostChosen(h) => h.host,
        other => panic!("{other:?}"),
    };
    // mstshash truncated to "CORP\alexa": unique prefix, back to the busy rdsh-1.
    assert_eq!(
        chosen(rig.broker.handle(ask(Some("CORP\\alexa")), &gw, rig.now)),
        "10.0.0.1"
    );
    assert_eq!(
        chosen(rig.broker.handle(ask(Some("nobody")), &gw, rig.now)),
        "10.0.0.2"
    );
    let with_resource = Request::ChooseHost(ChooseHost {
        routing_token: None,
        resource: Some("desktop-a".into()),
        site: "site-a".into(),
        user_hint: None,
    });
    assert!(matches!(
        rig.broker.handle(with_resource, &gw, rig.now),
        Reply::HostChosen(_)
    ));
    let records = rig.audit.records();
    assert_eq!(records.last().unwrap().action, AuditAction::ChooseHost);
    assert_eq!(records[1].user.as_deref(), Some("CORP\\alexa"));
    assert_eq!(records[1].host.as_deref(), Some("10.0.0.1"));
}

#[test]
fn draining_refuses_gateways_but_takes_reports() {
    let mut rig = rig();
    rig.broker.start_draining();
    assert_eq!(
        reason(&rig.login("alice", "pw-alice")),
        Some(RefusalReason::Draining)
    );
    assert_eq!(rig.report("rdsh-1", &[], 1, 1), Reply::ReportAccepted);
}

#[test]
fn replacing_users_ends_sessions_of_removed_users() {
    let mut rig = rig();
    let token = rig.token("alice");
    rig.broker.replace_users(UserDb::new(COST));
    assert_eq!(
        reason(&rig.launch(&token, "desktop-a")),
        Some(RefusalReason::SessionInvalid)
    );
    rig.broker.tick(rig.now.advance(Duration::from_secs(3600)));
    assert!(rig.broker.sessions().is_empty());
}

#[test]
fn replacing_the_farm_keeps_what_is_still_valid() {
    let mut rig = rig();
    rig.all_hosts_up();
    rig.report("rdsh-2", &["alice"], 10, 10);
    let alice = rig.token("alice");
    let carol = rig.token("carol");
    let b_site = {
        let gw_b = rig.gw_b.clone();
        match rig.login_from(&gw_b, "alice", "pw-alice", client(8)) {
            Reply::LoginOk(ok) => ok.session_token,
            other => panic!("{other:?}"),
        }
    };
    // Two wrong guesses for dave count on (user_max_failures = 3).
    rig.login("dave", "w1");
    rig.login("dave", "w2");
    // New file: rdsh-1 removed (ids of the others shift), site-b gone, ledger-app open to
    // staff as well.
    let text = [
        ("[[site]]\nname = \"site-b\"\n", ""),
        (
            "[[host]]\nname = \"rdsh-1\"\naddress = \"10.0.0.1\"\nsite = \"site-a\"\nsession_limit = 10\n",
            "",
        ),
        (
            "[[host]]\nname = \"rdsh-b1\"\naddress = \"10.1.0.1\"\nsite = \"site-b\"\nsession_limit = 10\n",
            "",
        ),
        ("hosts = [\"rdsh-1\", \"rdsh-2\", \"rdsh-3\"]", "hosts = [\"rdsh-2\", \"rdsh-3\"]"),
        ("[[pool]]\nname = \"pool-b\"\nsite = \"site-b\"\nhosts = [\"rdsh-b1\"]\n", ""),
        ("groups = [\"finance\"]", "groups = [\"finance\", \"staff\"]"),
        (
            "[[resource]]\nid = \"desktop-b\"\nname = \"Branch desktop\"\nkind = \"desktop\"\npool = \"pool-b\"\ngroups = [\"staff\"]\n",
            "",
        ),
    ]
    .iter()
    .fold(FARM.to_string(), |text, (from, to)| {
        assert!(text.contains(from), "{from}");
        text.replace(from, to)
    });
    let farm = Farm::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(farm.hosts().len(), 2);
    let ended = rig.broker.replace_farm(Arc::new(farm));
    assert_eq!(ended, 1, "the site-b session ends");
    rig.gw_b.site = None;
    // alice's session survives, now may launch ledger-app, and affinity still knows rdsh-2
    // (its report moved to the host's new id).
    assert!(matches!(rig.launch(&alice, "ledger-app"), Reply::Launched(_)));
    assert_eq!(rig.launched_host(&alice), "10.0.0.2");
    assert_eq!(
        reason(&rig.launch(&b_site, "desktop-a")),
        Some(RefusalReason::SessionInvalid)
    );
    assert_eq!(
        reason(&rig.launch(&carol, "desktop-a")),
        Some(RefusalReason::NotPermitted)
    );
    // The throttle kept dave's two failures: the third locks him out.
    rig.login("dave", "w3");
    assert_eq!(
        reason(&rig.login("dave", "pw-dave")),
        Some(RefusalReason::UserLocked)
    );
}
