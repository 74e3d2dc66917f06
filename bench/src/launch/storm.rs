//! Phase C of `launch`, the logon storm: distinct users arrive open loop at a fixed rate
//! (or all at once), each from its own source address, and go through the whole client
//! flow against the HALB (TLS passed through to gw-1 or gw-2): `POST /api/v1/login`,
//! `GET /api/v1/resources`, `POST /api/v1/launch` (gateway mode), the tunnel upgrade on a
//! new connection, then an RDP-like session through the tunnel (X.224 Connection Request
//! and Confirm, then input events at a fixed rate each answered by a screen update) for a
//! hold time. A few direct sessions to an RDP-like stand-in run the same exchange during
//! the whole storm: the baseline of the in-session latency, measured on the same machine at
//! the same moment.
//!
//! Every time is counted from the user's intended arrival (no coordinated omission): a user
//! whose thread started late, or whose login queued at the broker, shows it. Event latency
//! is from the event's intended send time to the last byte of its update.
//!
//! Owns the load; the rig is [`super::rig`]'s, the figures and table
//! [`super::storm_report`]'s. The update framing is parsed by the sans-IO [`UpdateReader`].

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::client::{self, ClientError, ClientStream, HttpConn, Tunnel};
use crate::report::new_histogram;
use crate::tls::TlsClient;
use crate::wire::rdp::{
    connection_request, parse_connection_confirm, InputEvent, UpdateHeader, WireError, PROTOCOL_RDP,
    UPDATE_HEADER_LEN,
};

/// How long a session waits for its last updates after its last event.
pub const DRAIN: Duration = Duration::from_secs(3);
/// Largest X.224 Connection Confirm read (the stand-in sends 19 bytes).
const MAX_CONFIRM_BYTES: usize = 1024;

/// The storm's load.
#[derive(Clone, Debug)]
pub struct StormPlan {
    /// Users arriving (users 1..=N of the users file).
    pub users: usize,
    /// Arrivals per second; 0: all at once.
    pub arrival_rate: f64,
    /// How long each user's session sends events after its desktop appeared.
    pub hold: Duration,
    /// Input events per second per session.
    pub event_rate: f64,
    /// Bytes of one input event (24..=4096).
    pub input_bytes: u32,
    /// Bytes of the update that answers each event (16..=1 MiB).
    pub update_bytes: u32,
    /// Source addresses 127.0.0.1..=N; user `u` uses 127.0.0.(1 + u % N).
    pub sources: usize,
    /// Direct sessions measuring the baseline during the storm.
    pub baseline_sessions: usize,
}

impl StormPlan {
    /// The intended arrival of user `u` (0-based) after `base`.
    pub fn arrival(&self, base: Instant, u: usize) -> Instant {
        if self.arrival_rate > 0.0 {
            base + Duration::from_secs_f64(u as f64 / self.arrival_rate)
        } else {
            base
        }
    }

    /// The source address of user `u`.
    pub fn source(&self, u: usize) -> IpAddr {
        let n = self.sources.clamp(1, 254);
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (u % n) as u8))
    }

    fn event_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.event_rate)
    }
}

/// Where the storm goes.
pub struct StormTargets<'a> {
    /// The HALB's listener.
    pub halb: SocketAddr,
    /// TLS to the gateways (through the HALB).
    pub tls: &'a TlsClient,
    /// The resource each user launches.
    pub resource: &'a str,
    /// An RDP-like stand-in the baseline sessions connect to directly.
    pub direct: SocketAddr,
    /// User `u`'s name and password.
    pub credentials: &'a (dyn Fn(usize) -> (String, String) + Sync),
}

/// The step a user failed at (the first part of a failure reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// TCP connect and TLS to the HALB for the API connection.
    Connect,
    /// `POST /api/v1/login`.
    Login,
    /// `GET /api/v1/resources` (or the resource missing from it).
    Resources,
    /// `POST /api/v1/launch`.
    Launch,
    /// The tunnel connection until its `101`.
    Tunnel,
    /// The X.224 exchange through the tunnel.
    Confirm,
    /// Events and updates through the tunnel.
    Session,
}

impl Step {
    /// The name in failure reasons.
    pub fn name(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Login => "login",
            Step::Resources => "resources",
            Step::Launch => "launch",
            Step::Tunnel => "tunnel",
            Step::Confirm => "confirm",
            Step::Session => "session",
        }
    }
}

/// What the storm measured (summed over users, and over the baseline sessions).
#[derive(Debug)]
pub struct StormTally {
    /// Users whose thread started (all of them unless the machine failed to spawn one).
    pub arrived: u64,
    /// Users logged on (login answered with a session token).
    pub logged_on: u64,
    /// Users whose tunnel was answered `101`.
    pub tunnels: u64,
    /// Users whose first update came back through the tunnel.
    pub desktops: u64,
    /// Users whose whole hold completed with every update back.
    pub completed: u64,
    /// Failures by `step_reason` (`login_refused_504_broker_timeout`, `session_io`, ...).
    pub failures: BTreeMap<String, u64>,
    /// The first failure's text.
    pub first_failure: Option<String>,
    /// Intended arrival -> the thread actually starting (client-side lateness), ns.
    pub start_lag_ns: Histogram<u64>,
    /// Intended arrival -> login answered (connect, TLS and queueing included), ns.
    pub to_login_ns: Histogram<u64>,
    /// The login call alone (connect and TLS done), ns.
    pub login_ns: Histogram<u64>,
    /// The resources call, ns.
    pub resources_ns: Histogram<u64>,
    /// The launch call, ns.
    pub launch_ns: Histogram<u64>,
    /// Tunnel connect (TCP, TLS, upgrade) to the `101`, ns.
    pub connect_101_ns: Histogram<u64>,
    /// Intended arrival -> the last byte of the first update, ns.
    pub to_desktop_ns: Histogram<u64>,
    /// Event latency in the users' sessions, ns from the intended send.
    pub event_ns: Histogram<u64>,
    /// Events sent by the users' sessions.
    pub events_sent: u64,
    /// Updates received by the users' sessions.
    pub events_received: u64,
    /// Event latency of the direct baseline sessions, ns from the intended send.
    pub baseline_event_ns: Histogram<u64>,
    /// Events sent by the baseline sessions.
    pub baseline_sent: u64,
    /// Updates received by the baseline sessions.
    pub baseline_received: u64,
    /// The first baseline failure (the baseline is then short, never silently zero).
    pub baseline_failure: Option<String>,
    /// First intended arrival -> last login answered, in seconds.
    pub login_span_s: f64,
    /// First intended arrival -> the last session closed, in seconds.
    pub elapsed_s: f64,
}

impl StormTally {
    fn new() -> StormTally {
        StormTally {
            arrived: 0,
            logged_on: 0,
            tunnels: 0,
            desktops: 0,
            completed: 0,
            failures: BTreeMap::new(),
            first_failure: None,
            start_lag_ns: new_histogram(),
            to_login_ns: new_histogram(),
            login_ns: new_histogram(),
            resources_ns: new_histogram(),
            launch_ns: new_histogram(),
            connect_101_ns: new_histogram(),
            to_desktop_ns: new_histogram(),
            event_ns: new_histogram(),
            events_sent: 0,
            events_received: 0,
            baseline_event_ns: new_histogram(),
            baseline_sent: 0,
            baseline_received: 0,
            baseline_failure: None,
            login_span_s: 0.0,
            elapsed_s: 0.0,
        }
    }

    /// Users that failed.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn add_user(&mut self, u: UserRecord) {
        self.arrived += 1;
        let rec = |h: &mut Histogram<u64>, d: Option<Duration>| {
            if let Some(d) = d {
                let _ = h.record(nanos(d));
            }
        };
        rec(&mut self.start_lag_ns, Some(u.start_lag));
        rec(&mut self.to_login_ns, u.to_login);
        rec(&mut self.login_ns, u.login);
        rec(&mut self.resources_ns, u.resources);
        rec(&mut self.launch_ns, u.launch);
        rec(&mut self.connect_101_ns, u.connect_101);
        rec(&mut self.to_desktop_ns, u.to_desktop);
        self.logged_on += u64::from(u.login.is_some());
        self.tunnels += u64::from(u.connect_101.is_some());
        self.desktops += u64::from(u.to_desktop.is_some());
        let _ = self.event_ns.add(&u.session.latency_ns);
        self.events_sent += u.session.sent;
        self.events_received += u.session.received;
        match u.failure {
            None => self.completed += 1,
            Some((reason, text)) => {
                *self.failures.entry(reason).or_default() += 1;
                self.first_failure.get_or_insert(text);
            }
        }
    }
}

/// Runs the storm: spawns a thread per user (each sleeps until its arrival) and the
/// baseline sessions; `window` is called with `true` just before the first arrival and
/// `false` once every user is done (CPU samples of the processes under test);
/// `progress` gets a line a second.
pub fn run(
    plan: &StormPlan,
    targets: &StormTargets<'_>,
    window: &mut dyn FnMut(bool),
    progress: &mut dyn FnMut(&str),
) -> StormTally {
    crate::scenario::rr_latency::set_fine_timer_slack();
    // Room to spawn every thread before the first arrival.
    let base = Instant::now() + Duration::from_millis(100) + Duration::from_micros(60 * plan.users as u64);
    let stop_baseline = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let logged = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let baseline: Vec<_> = (0..plan.baseline_sessions)
            .map(|_| {
                let stop = &stop_baseline;
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(scope, move || baseline_session(plan, targets.direct, base, stop))
            })
            .collect();
        let users: Vec<_> = (0..plan.users)
            .map(|u| {
                let (done, logged) = (&done, &logged);
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(scope, move || {
                        let r = user(plan, targets, u, plan.arrival(base, u));
                        if r.login.is_some() {
                            logged.fetch_add(1, Ordering::Relaxed);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                        r
                    })
            })
            .collect();
        std::thread::sleep(base.saturating_duration_since(Instant::now()));
        window(true);
        let mut next = base + Duration::from_secs(1);
        let spawned = users.iter().filter(|h| h.is_ok()).count() as u64;
        while done.load(Ordering::Relaxed) < spawned {
            std::thread::sleep(Duration::from_millis(20));
            if Instant::now() >= next {
                progress(&format!(
                    "storm {:.0} s: {} of {} users done ({} of them had logged on)",
                    (next - base).as_secs_f64(),
                    done.load(Ordering::Relaxed),
                    plan.users,
                    logged.load(Ordering::Relaxed)
                ));
                next += Duration::from_secs(1);
            }
        }
        window(false);
        let mut tally = StormTally::new();
        let mut last_login = base;
        for h in users {
            let record = match h {
                Ok(h) => h.join().ok(),
                Err(e) => {
                    tally
                        .first_failure
                        .get_or_insert(format!("spawning a user thread: {e}"));
                    None
                }
            };
            match record {
                Some(r) => {
                    if let Some(t) = r.login_done {
                        last_login = last_login.max(t);
                    }
                    tally.add_user(r);
                }
                None => *tally.failures.entry("client_thread".into()).or_default() += 1,
            }
        }
        tally.login_span_s = (last_login - base).as_secs_f64();
        tally.elapsed_s = base.elapsed().as_secs_f64();
        stop_baseline.store(true, Ordering::Relaxed);
        for h in baseline {
            let outcome = match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err("baseline thread panicked".into())),
                Err(e) => Err(format!("spawning a baseline thread: {e}")),
            };
            match outcome {
                Ok(s) => {
                    let _ = tally.baseline_event_ns.add(&s.latency_ns);
                    tally.baseline_sent += s.sent;
                    tally.baseline_received += s.received;
                }
                Err(e) => {
                    tally.baseline_failure.get_or_insert(e);
                }
            }
        }
        tally
    })
}

/// What one user went through.
struct UserRecord {
    start_lag: Duration,
    to_login: Option<Duration>,
    login_done: Option<Instant>,
    login: Option<Duration>,
    resources: Option<Duration>,
    launch: Option<Duration>,
    connect_101: Option<Duration>,
    to_desktop: Option<Duration>,
    session: SessionTally,
    /// (reason, text).
    failure: Option<(String, String)>,
}

/// One user: sleep until `arrival`, then the whole flow.
fn user(plan: &StormPlan, t: &StormTargets<'_>, u: usize, arrival: Instant) -> UserRecord {
    std::thread::sleep(arrival.saturating_duration_since(Instant::now()));
    let mut r = UserRecord {
        start_lag: Instant::now().saturating_duration_since(arrival),
        to_login: None,
        login_done: None,
        login: None,
        resources: None,
        launch: None,
        connect_101: None,
        to_desktop: None,
        session: SessionTally::new(),
        failure: None,
    };
    if let Err((step, e)) = user_flow(plan, t, u, arrival, &mut r) {
        r.failure = Some((
            format!("{}_{}", step.name(), e.0),
            format!("user {}: {}: {}", u + 1, step.name(), e.1),
        ));
    }
    r
}

/// (reason key, text).
type Why = (String, String);

fn client_why(e: &ClientError) -> Why {
    (e.reason(), e.to_string())
}

fn io_why(e: &std::io::Error) -> Why {
    ("io".into(), e.to_string())
}

fn user_flow(
    plan: &StormPlan,
    t: &StormTargets<'_>,
    u: usize,
    arrival: Instant,
    r: &mut UserRecord,
) -> Result<(), (Step, Why)> {
    let source = plan.source(u);
    let (name, password) = (t.credentials)(u);
    let stream =
        ClientStream::connect_from(t.halb, Some(t.tls), source).map_err(|e| (Step::Connect, io_why(&e)))?;
    let mut api = HttpConn::over(stream);
    let t0 = Instant::now();
    let token = api
        .login(&name, &password)
        .map_err(|e| (Step::Login, client_why(&e)))?;
    let t1 = Instant::now();
    r.login = Some(t1 - t0);
    r.to_login = Some(t1 - arrival);
    r.login_done = Some(t1);
    let list = api
        .resources(&token)
        .map_err(|e| (Step::Resources, client_why(&e)))?;
    if !list.iter().any(|id| id == t.resource) {
        return Err((
            Step::Resources,
            ("missing".into(), format!("{} not in {list:?}", t.resource)),
        ));
    }
    let t2 = Instant::now();
    r.resources = Some(t2 - t1);
    let ticket = api
        .launch(&token, t.resource)
        .map_err(|e| (Step::Launch, client_why(&e)))?;
    let t3 = Instant::now();
    r.launch = Some(t3 - t2);
    api.close();
    let stream =
        ClientStream::connect_from(t.halb, Some(t.tls), source).map_err(|e| (Step::Tunnel, io_why(&e)))?;
    let mut tunnel = client::tunnel_over(HttpConn::over(stream), &token, &ticket)
        .map_err(|e| (Step::Tunnel, client_why(&e)))?;
    let t4 = Instant::now();
    r.connect_101 = Some(t4 - t3);
    let mut reader = UpdateReader::default();
    let leftover = x224_exchange(&mut tunnel, &name).map_err(|e| (Step::Confirm, e))?;
    let first = Instant::now();
    let end = first + plan.hold;
    let outcome = session(
        &mut tunnel,
        plan,
        first,
        &|now| now < end,
        &mut reader,
        &leftover,
        &mut r.session,
    );
    if let Some(at) = r.session.first_update_at {
        r.to_desktop = Some(at - arrival);
    }
    tunnel.close();
    outcome.map_err(|e| (Step::Session, e))
}

/// Sends the X.224 Connection Request and reads the Confirm; returns bytes read past it.
fn x224_exchange(tunnel: &mut Tunnel, user: &str) -> Result<Vec<u8>, Why> {
    tunnel
        .send(&connection_request(user, PROTOCOL_RDP))
        .map_err(|e| io_why(&e))?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 512];
    loop {
        match parse_connection_confirm(&buf) {
            Ok(Some((len, _))) => return Ok(buf.split_off(len)),
            Ok(None) if buf.len() < MAX_CONFIRM_BYTES => {}
            Ok(None) => return Err(("too_large".into(), "connection confirm over 1 KiB".into())),
            Err(e) => return Err(("malformed".into(), format!("connection confirm: {e:?}"))),
        }
        match tunnel.read(&mut chunk) {
            Ok(0) => return Err(("closed".into(), "tunnel closed before the confirm".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io_why(&e)),
        }
    }
}

/// One session's events.
#[derive(Debug)]
struct SessionTally {
    latency_ns: Histogram<u64>,
    sent: u64,
    received: u64,
    first_update_at: Option<Instant>,
}

impl SessionTally {
    fn new() -> SessionTally {
        SessionTally {
            latency_ns: new_histogram(),
            sent: 0,
            received: 0,
            first_update_at: None,
        }
    }
}

/// The open-loop exchange: event k at `first + k / event_rate` while `sending(intended)`,
/// whatever came back; then waits up to [`DRAIN`] for the missing updates.
fn session(
    tunnel: &mut Tunnel,
    plan: &StormPlan,
    first: Instant,
    sending: &dyn Fn(Instant) -> bool,
    reader: &mut UpdateReader,
    leftover: &[u8],
    tally: &mut SessionTally,
) -> Result<(), Why> {
    let interval = plan.event_interval();
    let intended = |seq: u64| first + interval.mul_f64(seq as f64);
    let mut done = Vec::new();
    let record = |done: &mut Vec<u64>, tally: &mut SessionTally| {
        let now = Instant::now();
        for seq in done.drain(..) {
            tally.received += 1;
            tally.first_update_at.get_or_insert(now);
            let _ = tally
                .latency_ns
                .record(nanos(now.saturating_duration_since(intended(seq))));
        }
    };
    reader
        .feed(leftover, &mut done)
        .map_err(|e| ("malformed".to_string(), format!("update: {e:?}")))?;
    record(&mut done, tally);
    let mut frame = Vec::with_capacity(plan.input_bytes as usize);
    let mut buf = vec![0u8; 16 * 1024];
    let mut k = 0u64;
    let mut give_up: Option<Instant> = None;
    loop {
        let next = intended(k);
        let now = Instant::now();
        if give_up.is_none() {
            if !sending(next) {
                give_up = Some(now + DRAIN);
            } else if now >= next {
                frame.clear();
                InputEvent {
                    len: plan.input_bytes,
                    seq: k,
                    reply_len: plan.update_bytes,
                    flags: 0,
                }
                .encode(&mut frame);
                tunnel.send(&frame).map_err(|e| io_why(&e))?;
                tally.sent += 1;
                k += 1;
                continue;
            }
        }
        if tally.received >= k && give_up.is_some() {
            return Ok(());
        }
        let until = give_up.unwrap_or(next);
        if give_up.is_some_and(|g| now >= g) {
            return Err((
                "updates_missing".into(),
                format!("{} of {} updates after {DRAIN:?}", tally.received, k),
            ));
        }
        match tunnel.read_before(&mut buf, until) {
            Ok(0) => {
                return Err((
                    "closed".into(),
                    format!("tunnel closed after {} of {} updates", tally.received, k),
                ))
            }
            Ok(n) => {
                reader
                    .feed(&buf[..n], &mut done)
                    .map_err(|e| ("malformed".to_string(), format!("update: {e:?}")))?;
                record(&mut done, tally);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(io_why(&e)),
        }
    }
}

/// A baseline session: straight to the RDP-like stand-in, from `base` until `stop`.
fn baseline_session(
    plan: &StormPlan,
    direct: SocketAddr,
    base: Instant,
    stop: &AtomicBool,
) -> Result<SessionTally, String> {
    let stream = ClientStream::connect_from(direct, None, IpAddr::V4(Ipv4Addr::LOCALHOST))
        .map_err(|e| format!("baseline connect to {direct}: {e}"))?;
    let mut tunnel = Tunnel::direct(stream);
    let leftover = x224_exchange(&mut tunnel, "baseline").map_err(|e| format!("baseline: {}", e.1))?;
    std::thread::sleep(base.saturating_duration_since(Instant::now()));
    let mut tally = SessionTally::new();
    let mut reader = UpdateReader::default();
    let r = session(
        &mut tunnel,
        plan,
        Instant::now(),
        &|_| !stop.load(Ordering::Relaxed),
        &mut reader,
        &leftover,
        &mut tally,
    );
    tunnel.close();
    r.map(|()| tally)
        .map_err(|e| format!("baseline session: {}", e.1))
}

/// Cuts the host's byte stream into updates (16-byte header, then `len - 16` bytes of
/// payload skipped) and yields the sequence number of each complete one. Sans-IO; the
/// header's length is bounded by [`UpdateHeader::parse`].
#[derive(Debug, Default)]
pub struct UpdateReader {
    header: [u8; UPDATE_HEADER_LEN],
    have: usize,
    /// (seq, payload bytes still to skip) of the update being read.
    body: Option<(u64, u32)>,
}

impl UpdateReader {
    /// Feeds bytes; pushes the seq of every update whose last byte is in them.
    pub fn feed(&mut self, mut bytes: &[u8], done: &mut Vec<u64>) -> Result<(), WireError> {
        while !bytes.is_empty() {
            match &mut self.body {
                Some((seq, left)) => {
                    let n = (*left as usize).min(bytes.len());
                    *left -= n as u32;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        done.push(*seq);
                        self.body = None;
                    }
                }
                None => {
                    let n = (UPDATE_HEADER_LEN - self.have).min(bytes.len());
                    self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                    self.have += n;
                    bytes = &bytes[n..];
                    if self.have == UPDATE_HEADER_LEN {
                        self.have = 0;
                        let h = UpdateHeader::parse(&self.header)?;
                        let left = h.len - UPDATE_HEADER_LEN as u32;
                        if left == 0 {
                            done.push(h.seq);
                        } else {
                            self.body = Some((h.seq, left));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Nanoseconds of `d`, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(len: u32, seq: u64) -> Vec<u8> {
        let mut v = UpdateHeader { len, seq }.encode().to_vec();
        v.resize(len as usize, 0xA5);
        v
    }

    #[test]
    fn updates_are_cut_whatever_the_read_boundaries() {
        let mut stream = update(1200, 0);
        stream.extend(update(16, 1));
        stream.extend(update(4000, 2));
        for chunk in [1, 7, 16, 17, 1199, 5216] {
            let mut r = UpdateReader::default();
            let mut done = Vec::new();
            for c in stream.chunks(chunk) {
                r.feed(c, &mut done).unwrap();
            }
            assert_eq!(done, vec![0, 1, 2], "chunk {chunk}");
        }
        // Short of the last byte: not done.
        let mut r = UpdateReader::default();
        let mut done = Vec::new();
        r.feed(&stream[..1199], &mut done).unwrap();
        assert!(done.is_empty());
    }

    #[test]
    fn bad_updates_are_refused() {
        let mut r = UpdateReader::default();
        let mut done = Vec::new();
        assert!(r.feed(b"HTTP/1.1 200 OK\r\n", &mut done).is_err());
        let mut huge = UpdateHeader { len: 16, seq: 0 }.encode();
        huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(UpdateReader::default().feed(&huge, &mut done).is_err());
    }

    #[test]
    fn arrivals_are_open_loop_and_sources_rotate() {
        let plan = StormPlan {
            users: 10,
            arrival_rate: 50.0,
            hold: Duration::from_secs(1),
            event_rate: 10.0,
            input_bytes: 80,
            update_bytes: 1200,
            sources: 3,
            baseline_sessions: 1,
        };
        let base = Instant::now();
        assert_eq!(plan.arrival(base, 5) - base, Duration::from_millis(100));
        let at_once = StormPlan {
            arrival_rate: 0.0,
            ..plan.clone()
        };
        assert_eq!(at_once.arrival(base, 9), base);
        let s: Vec<String> = (0..4).map(|u| plan.source(u).to_string()).collect();
        assert_eq!(s, ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1"]);
    }
}
