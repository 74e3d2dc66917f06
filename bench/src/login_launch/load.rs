//! The load on the broker: stand-in host agents that report fixed loads, and gateway links
//! that each carry many closed-loop clients (login then launch, or launch only).
//!
//! One thread per host agent (as the real agent has one per broker) and one thread per
//! gateway link; a gateway thread keeps every client's request in flight on its one link,
//! as gatehouse's gateway multiplexes its workers over one control link per broker. It
//! measures each request from the moment it is written to the moment its response is read.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use gatehouse_control::frame::DEFAULT_REQUEST_TIMEOUT;
use gatehouse_control::message::{
    self, HostReport, Inbound, Launch, LaunchMode, Login, Reply, Request, Secret,
};

use super::farm::{self, HostLoad, Layout};
use super::link::{Link, MemberIdentity};
use crate::report::new_histogram;
use crate::scenario::FirstError;

/// How often a stand-in agent reports (the real agent's default is 2 s).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// Stand-in host agents, one thread each; stopped on drop.
pub struct Agents {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    accepted: Arc<AtomicUsize>,
    /// The first refusal or link failure of any agent.
    pub first_error: Arc<FirstError>,
}

impl Agents {
    /// Starts one agent per load, each reporting its load every [`REPORT_INTERVAL`].
    pub fn start(
        broker: SocketAddr,
        farm_dir: &std::path::Path,
        ca_file: &std::path::Path,
        loads: Vec<HostLoad>,
    ) -> Result<Agents, super::link::LinkError> {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let first_error = Arc::new(FirstError::default());
        let mut threads = Vec::new();
        for load in loads {
            let me = MemberIdentity::load(
                farm_dir,
                ca_file,
                &load.host,
                gatehouse_control::frame::Role::HostAgent,
            )?;
            let (stop, accepted, first_error) = (stop.clone(), accepted.clone(), first_error.clone());
            threads.push(std::thread::spawn(move || {
                agent(broker, &me, load, &stop, &accepted, &first_error)
            }));
        }
        Ok(Agents {
            stop,
            threads,
            accepted,
            first_error,
        })
    }

    /// Agents whose first report the broker accepted.
    pub fn reporting(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn agent(
    broker: SocketAddr,
    me: &MemberIdentity,
    load: HostLoad,
    stop: &AtomicBool,
    accepted: &AtomicUsize,
    first_error: &FirstError,
) {
    let report = Request::HostReport(HostReport {
        host: load.host.clone(),
        sessions: load.sessions,
        cpu_percent: load.cpu_percent,
        mem_percent: load.mem_percent,
        rdp_up: true,
    });
    let mut counted = false;
    while !stop.load(Ordering::Relaxed) {
        let mut link = match Link::connect(broker, farm::BROKER_NODE, me) {
            Ok(l) => l,
            Err(e) => {
                first_error.note(|| format!("agent {}: {e}", me.node));
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let mut next = Instant::now();
        let mut id = 1u64;
        let ended = loop {
            if stop.load(Ordering::Relaxed) {
                break None;
            }
            if Instant::now() >= next {
                next += REPORT_INTERVAL;
                if let Err(e) = link.send_request(id, &report) {
                    break Some(e.to_string());
                }
                id += 1;
            }
            let frames = match link.poll(Duration::from_millis(100)) {
                Ok(f) => f,
                Err(e) => break Some(e.to_string()),
            };
            for f in frames {
                match message::decode(&f) {
                    Ok(Inbound::Response {
                        reply: Reply::ReportAccepted,
                        ..
                    }) => {
                        if !counted {
                            counted = true;
                            accepted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Ok(other) => first_error.note(|| format!("agent {}: unexpected {other:?}", me.node)),
                    Err(e) => first_error.note(|| format!("agent {}: bad frame: {e}", me.node)),
                }
            }
        };
        match ended {
            None => {
                link.close();
                return;
            }
            Some(e) => first_error.note(|| format!("agent {}: link ended: {e}", me.node)),
        }
    }
}

/// What the gateway clients do in a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Each client: log in as a random user, launch one resource with the token, repeat.
    LoginLaunch,
    /// Each client logs in as `tokens` users before the phase, then only launches,
    /// cycling over its tokens.
    LaunchOnly {
        /// Tokens (distinct users) per client.
        tokens: usize,
    },
}

/// One phase of gateway load.
#[derive(Clone, Debug)]
pub struct Phase {
    /// The broker's gateway address.
    pub broker: SocketAddr,
    /// The farm.
    pub layout: Layout,
    /// Distinct hashes of the users file (user u has password `password(u % distinct)`).
    pub distinct_hashes: usize,
    /// What the clients do.
    pub mode: Mode,
    /// Clients in flight at once, spread over the gateways (one link per site's gateway).
    pub concurrency: usize,
    /// Load whose samples are dropped.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Seed of user and resource choices.
    pub seed: u64,
}

/// What a phase measured (summed over the gateways).
#[derive(Debug)]
pub struct Tally {
    /// Logins answered `login_ok` in the window.
    pub logins: u64,
    /// Launches answered `launched` (with a ticket) in the window.
    pub launches: u64,
    /// Login latency in ns.
    pub login_ns: Histogram<u64>,
    /// Launch latency in ns.
    pub launch_ns: Histogram<u64>,
    /// From sending the login to receiving the launch answer, in ns.
    pub pair_ns: Histogram<u64>,
    /// Refusals by reason, and failures (`timeout`, `link`, `bad_response`), in the window.
    pub errors: BTreeMap<String, u64>,
    /// Logins done before the window (launch-only tokens).
    pub setup_logins: u64,
    /// Seconds the measured window lasted.
    pub elapsed_s: f64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            logins: 0,
            launches: 0,
            login_ns: new_histogram(),
            launch_ns: new_histogram(),
            pair_ns: new_histogram(),
            errors: BTreeMap::new(),
            setup_logins: 0,
            elapsed_s: 0.0,
        }
    }

    fn merge(&mut self, o: Tally) {
        self.logins += o.logins;
        self.launches += o.launches;
        let _ = self.login_ns.add(&o.login_ns);
        let _ = self.launch_ns.add(&o.launch_ns);
        let _ = self.pair_ns.add(&o.pair_ns);
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.setup_logins += o.setup_logins;
        self.elapsed_s = self.elapsed_s.max(o.elapsed_s);
    }

    /// Every refusal and failure.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Runs a phase: one thread per gateway; `at_window` is called (on this thread) when the
/// measured window opens and when it closes, for CPU samples of the broker.
pub fn run_phase(
    phase: &Phase,
    identities: &[MemberIdentity],
    at_window: &mut dyn FnMut(bool),
) -> Result<Tally, String> {
    let gateways = identities.len();
    let barrier = Arc::new(Barrier::new(gateways + 1));
    let start_at = Arc::new(StartAt(std::sync::OnceLock::new()));
    let handles: Vec<_> = identities
        .iter()
        .enumerate()
        .map(|(site, me)| {
            let clients = phase.concurrency / gateways + usize::from(site < phase.concurrency % gateways);
            let (phase, me, barrier, start_at) =
                (phase.clone(), me.clone(), barrier.clone(), start_at.clone());
            std::thread::spawn(move || gateway(&phase, &me, site, clients, &barrier, &start_at))
        })
        .collect();
    // Every gateway is connected (and has its launch-only tokens): start together.
    barrier.wait();
    let start = Instant::now();
    start_at.set(start);
    barrier.wait();
    std::thread::sleep(phase.warmup);
    at_window(true);
    std::thread::sleep((start + phase.warmup + phase.duration).saturating_duration_since(Instant::now()));
    at_window(false);
    let mut total = Tally::new();
    let mut first_failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok(t)) => total.merge(t),
            Ok(Err(e)) => {
                first_failure.get_or_insert(e);
            }
            Err(_) => {
                first_failure.get_or_insert("a gateway thread panicked".into());
            }
        }
    }
    match first_failure {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// The phase's start, set once by the coordinating thread between two barrier waits.
struct StartAt(std::sync::OnceLock<Instant>);

impl StartAt {
    fn set(&self, at: Instant) {
        let _ = self.0.set(at);
    }
    fn get(&self) -> Instant {
        *self.0.get().expect("set before the second barrier")
    }
}

/// What one client waits for.
enum Waiting {
    Login {
        user: usize,
        sent: Instant,
    },
    /// `pair_start`: when the login before it was sent (none in launch-only phases).
    Launch {
        sent: Instant,
        pair_start: Option<Instant>,
    },
}

struct Client {
    /// Launch-only: its users' tokens.
    tokens: Vec<Secret>,
    next_token: usize,
}

/// One gateway link and its `clients`. Fails only when the link cannot be set up.
fn gateway(
    phase: &Phase,
    me: &MemberIdentity,
    site: usize,
    clients: usize,
    barrier: &Barrier,
    start_at: &StartAt,
) -> Result<Tally, String> {
    let mut rng = StdRng::seed_from_u64(phase.seed ^ (site as u64) << 32);
    let mut tally = Tally::new();
    let link = Link::connect(phase.broker, farm::BROKER_NODE, me);
    let mut link = match link {
        Ok(l) => l,
        Err(e) => {
            // Release the coordinator before failing.
            barrier.wait();
            barrier.wait();
            return Err(format!("gateway {}: {e}", me.node));
        }
    };
    let mut state = GatewayState {
        next_id: 1,
        in_flight: HashMap::new(),
        clients: (0..clients)
            .map(|_| Client {
                tokens: Vec::new(),
                next_token: 0,
            })
            .collect(),
        layout: phase.layout.clone(),
        distinct: phase.distinct_hashes.max(1),
        site,
    };
    // Launch-only: log every client in as its users first (not measured).
    if let Mode::LaunchOnly { tokens } = phase.mode {
        let setup_end = Instant::now() + Duration::from_secs(120);
        for c in 0..clients {
            state.login(&mut link, c, &mut rng);
        }
        while state.clients.iter().any(|c| c.tokens.len() < tokens) && Instant::now() < setup_end {
            let answers = state.poll(&mut link)?;
            for (c, outcome) in answers {
                match outcome {
                    Outcome::LoggedIn { token, .. } => {
                        state.clients[c].tokens.push(token);
                        tally.setup_logins += 1;
                    }
                    Outcome::Failed(reason) => {
                        return Err(format!(
                            "gateway {}: launch-only login refused: {reason}",
                            me.node
                        ))
                    }
                    Outcome::Launched { .. } => {}
                }
                if state.clients[c].tokens.len() < tokens {
                    state.login(&mut link, c, &mut rng);
                }
            }
        }
        if state.clients.iter().any(|c| c.tokens.len() < tokens) {
            return Err(format!(
                "gateway {}: launch-only logins not done in 120 s",
                me.node
            ));
        }
    }
    barrier.wait();
    barrier.wait();
    let start = start_at.get();
    let window_start = start + phase.warmup;
    let end = window_start + phase.duration;
    for c in 0..clients {
        state.next_request(&mut link, c, phase.mode, &mut rng);
    }
    while Instant::now() < end {
        let answers = match state.poll(&mut link) {
            Ok(a) => a,
            Err(e) => {
                *tally.errors.entry("link".into()).or_default() += 1;
                return Err(e);
            }
        };
        for (c, outcome) in answers {
            let now = Instant::now();
            let in_window = now >= window_start && now < end;
            match outcome {
                Outcome::LoggedIn { token, latency } => {
                    if in_window {
                        tally.logins += 1;
                        let _ = tally.login_ns.record(latency.as_nanos() as u64);
                    }
                    state.launch(&mut link, c, token, Some(now - latency), &mut rng);
                    continue;
                }
                Outcome::Launched { latency, pair } => {
                    if in_window {
                        tally.launches += 1;
                        let _ = tally.launch_ns.record(latency.as_nanos() as u64);
                        if let Some(p) = pair {
                            let _ = tally.pair_ns.record(p.as_nanos() as u64);
                        }
                    }
                }
                Outcome::Failed(reason) => {
                    if in_window {
                        *tally.errors.entry(reason).or_default() += 1;
                    }
                }
            }
            state.next_request(&mut link, c, phase.mode, &mut rng);
        }
    }
    tally.elapsed_s = phase.duration.as_secs_f64();
    link.close();
    Ok(tally)
}

enum Outcome {
    LoggedIn {
        token: Secret,
        latency: Duration,
    },
    Launched {
        latency: Duration,
        pair: Option<Duration>,
    },
    Failed(String),
}

struct GatewayState {
    next_id: u64,
    in_flight: HashMap<u64, (usize, Waiting)>,
    clients: Vec<Client>,
    layout: Layout,
    distinct: usize,
    site: usize,
}

impl GatewayState {
    fn send(&mut self, link: &mut Link, client: usize, request: &Request, waiting: Waiting) {
        let id = self.next_id;
        self.next_id += 1;
        // A failed write shows up as a dead link at the next poll.
        let _ = link.send_request(id, request);
        self.in_flight.insert(id, (client, waiting));
    }

    fn login(&mut self, link: &mut Link, client: usize, rng: &mut StdRng) {
        let user = rng.gen_range(0..self.layout.users);
        let request = Request::Login(Login {
            user: Layout::user(user),
            password: Secret::new(farm::password(user % self.distinct)),
            second_factor: None,
            client_addr: client_addr(user),
            // What a gateway sends: its request timeout (the protocol's default).
            wait_ms: Some(gatehouse_control::frame::DEFAULT_REQUEST_TIMEOUT.as_millis() as u32),
        });
        let waiting = Waiting::Login {
            user,
            sent: Instant::now(),
        };
        self.send(link, client, &request, waiting);
    }

    fn launch(
        &mut self,
        link: &mut Link,
        client: usize,
        token: Secret,
        pair_start: Option<Instant>,
        rng: &mut StdRng,
    ) {
        // Four launches in five are the site's desktop, one its application.
        let [desktop, app] = Layout::resources(self.site);
        let resource = if rng.gen_range(0..5) == 0 { app } else { desktop };
        let request = Request::Launch(Launch {
            session_token: token,
            resource,
            mode: LaunchMode::Gateway,
            client_addr: client_addr(client),
        });
        let waiting = Waiting::Launch {
            sent: Instant::now(),
            pair_start,
        };
        self.send(link, client, &request, waiting);
    }

    fn next_request(&mut self, link: &mut Link, client: usize, mode: Mode, rng: &mut StdRng) {
        match mode {
            Mode::LoginLaunch => self.login(link, client, rng),
            Mode::LaunchOnly { .. } => {
                let c = &mut self.clients[client];
                let token = c.tokens[c.next_token % c.tokens.len()].clone();
                c.next_token += 1;
                self.launch(link, client, token, None, rng);
            }
        }
    }

    /// Reads answers for up to 20 ms; requests unanswered for the protocol's request
    /// timeout fail as `timeout`.
    fn poll(&mut self, link: &mut Link) -> Result<Vec<(usize, Outcome)>, String> {
        let frames = link.poll(Duration::from_millis(20)).map_err(|e| e.to_string())?;
        let now = Instant::now();
        let mut out = Vec::new();
        for f in frames {
            let (id, reply) = match message::decode(&f) {
                Ok(Inbound::Response { id, reply }) => (id, reply),
                Ok(Inbound::Event(e)) => return Err(format!("broker event {e:?}")),
                Ok(_) => continue,
                Err(e) => {
                    let Some((c, _)) = self.in_flight.remove(&e.request_id()) else {
                        continue;
                    };
                    out.push((c, Outcome::Failed("bad_response".into())));
                    continue;
                }
            };
            let Some((c, waiting)) = self.in_flight.remove(&id) else {
                continue;
            };
            let outcome = match (waiting, reply) {
                (Waiting::Login { sent, .. }, Reply::LoginOk(ok)) => Outcome::LoggedIn {
                    token: ok.session_token,
                    latency: now - sent,
                },
                (Waiting::Launch { sent, pair_start }, Reply::Launched(l)) if l.ticket.is_some() => {
                    Outcome::Launched {
                        latency: now - sent,
                        pair: pair_start.map(|p| now - p),
                    }
                }
                (_, Reply::Refused(r)) => Outcome::Failed(r.reason.as_str().to_string()),
                (Waiting::Login { user, .. }, other) => Outcome::Failed(format!(
                    "bad_response: {} to the login of user {user}",
                    other.name()
                )),
                (Waiting::Launch { .. }, other) => {
                    Outcome::Failed(format!("bad_response: {} to a launch", other.name()))
                }
            };
            out.push((c, outcome));
        }
        let late: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, (_, w))| {
                let sent = match w {
                    Waiting::Login { sent, .. } | Waiting::Launch { sent, .. } => *sent,
                };
                now.duration_since(sent) > DEFAULT_REQUEST_TIMEOUT
            })
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some((c, _)) = self.in_flight.remove(&id) {
                out.push((c, Outcome::Failed("timeout".into())));
            }
        }
        Ok(out)
    }
}

/// A client address per user (TEST-NET-1, RFC 5737): the broker throttles failures per
/// address, and successes by many users from one address are no gateway's real traffic.
fn client_addr(user: usize) -> SocketAddr {
    SocketAddr::from((
        [192, 0, 2, 1 + (user % 250) as u8],
        40_000 + (user % 20_000) as u16,
    ))
}
