//! `rdp-profile`: sessions that behave like RDP, against an Rdp stand-in (framing in
//! `standin.rs`).
//!
//! The default is the "office" profile of the bench issue, per session: 10 input events per
//! second of 80 bytes up; for each a screen update down of 1,200 bytes on average, spread
//! 200-4,000 (a truncated exponential whose mean is exactly the configured one); a 60 KB burst
//! every 30 s at a random phase; sessions start staggered. Each session first sends an X.224
//! Connection Request and waits for the Confirm. Events are sent at their intended times
//! whatever the replies do (open loop); latency runs from an event's intended time to the
//! last byte of its update. Sessions are spread over `threads` mio event loops.
//!
//! A session reaches its host over a [`Transport`]: plain TCP (the default and the cheapest
//! path: no TLS state at all), TLS end to end (a TLS stand-in, alone or behind a passthrough
//! balancer), or a gateway tunnel: TLS to the gateway, `GET /api/v1/tunnel` with the
//! session's ticket (src/gateway/CLIENT-API.md), the `101`, then the same conversation. The
//! tunnel request and the Connection Request are written at once: the gateway carries bytes
//! sent after the request head to the host. rustls is driven over the non-blocking socket
//! (`read_tls` / `process_new_packets` / `reader` / `writer` / `write_tls`); byte counts are
//! then plaintext bytes, as for plain sessions.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustls::ClientConnection;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{finish, Common, FirstError};
use crate::launch::client::{parse_head, request_bytes, HeadProgress};
use crate::net::{probe, SourcePool};
use crate::report::{new_histogram, Percentiles, Report, Results};
use crate::tls::TlsClient;
use crate::wire::rdp::{
    connection_request, parse_connection_confirm, InputEvent, UpdateHeader, FLAG_BURST, INPUT_HEADER_LEN,
    MAX_CONNECTION_REQUEST, MAX_INPUT_LEN, MAX_UPDATE_LEN, UPDATE_HEADER_LEN,
};
use crate::BenchError;

/// Parameters of `rdp-profile`.
#[derive(Clone, Debug)]
pub struct Params {
    /// Concurrent sessions.
    pub sessions: usize,
    /// Input events per second per session.
    pub input_rate: f64,
    /// Bytes of each input event (24..=4096).
    pub input_bytes: u32,
    /// Mean update size in bytes.
    pub update_mean: u32,
    /// Smallest update.
    pub update_min: u32,
    /// Largest update.
    pub update_max: u32,
    /// Bytes of a burst (0: none).
    pub burst_bytes: u32,
    /// Time between bursts of one session.
    pub burst_interval: Duration,
    /// Sessions start evenly over this span.
    pub stagger: Duration,
    /// Event-loop threads.
    pub threads: usize,
    /// Seed of the size and phase randomness.
    pub seed: u64,
}

impl Params {
    /// The "office" profile for `sessions` sessions.
    pub fn office(sessions: usize) -> Params {
        Params {
            sessions,
            input_rate: 10.0,
            input_bytes: 80,
            update_mean: 1200,
            update_min: 200,
            update_max: 4000,
            burst_bytes: 60 * 1024,
            burst_interval: Duration::from_secs(30),
            stagger: Duration::from_secs(1),
            threads: 1,
            seed: 1,
        }
    }
}

/// How every session of a shard reaches the RDP-like host.
#[derive(Clone, Debug)]
pub enum Transport {
    /// Plain TCP to the target (a stand-in, or an L4 proxy in front of one).
    Plain,
    /// TLS to the target (a TLS stand-in, or a passthrough proxy in front of one).
    Tls(TlsClient),
    /// TLS to a gateway, then the tunnel upgrade: the shard's `k`-th session uses
    /// `tickets[k]`.
    Tunnel {
        /// The TLS client for the gateway.
        tls: TlsClient,
        /// One ticket per session of the shard, in the shard's session order.
        tickets: Arc<Vec<TunnelTicket>>,
    },
}

/// What opens one tunnel: a launch ticket and the session token it was launched with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelTicket {
    /// The session token (`Gatehouse-Session`).
    pub token: String,
    /// The ticket (`Authorization: Bearer`).
    pub ticket: String,
}

impl TunnelTicket {
    /// The upgrade request (CLIENT-API.md §`GET /api/v1/tunnel`).
    pub fn request(&self) -> Vec<u8> {
        let headers = format!(
            "Connection: Upgrade\r\nUpgrade: gatehouse-tunnel\r\nGatehouse-Session: {}\r\n",
            self.token
        );
        request_bytes("GET", "/api/v1/tunnel", Some(&self.ticket), None, &headers)
    }
}

/// Update sizes: `min + Y`, Y exponential truncated to `max - min`, scaled so the mean is
/// the configured one (solved by bisection; a mean past the midpoint falls back to uniform).
#[derive(Clone, Copy, Debug)]
pub struct SizeSampler {
    min: f64,
    width: f64,
    scale: Option<f64>,
}

impl SizeSampler {
    /// A sampler for sizes in `[min, max]` with mean `mean`.
    pub fn new(min: u32, mean: u32, max: u32) -> SizeSampler {
        let (min, max) = (f64::from(min), f64::from(max.max(min)));
        let width = max - min;
        let target = (f64::from(mean) - min).max(0.0);
        let mean_of = |s: f64| s - width / ((width / s).exp_m1());
        let scale = if width <= 0.0 || target >= width / 2.0 {
            None
        } else {
            let (mut lo, mut hi) = (width * 1e-6, width * 1e3);
            for _ in 0..100 {
                let mid = (lo + hi) / 2.0;
                if mean_of(mid) < target {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            Some((lo + hi) / 2.0)
        };
        SizeSampler { min, width, scale }
    }

    /// One size.
    pub fn sample(&self, rng: &mut impl Rng) -> u32 {
        let u: f64 = rng.gen();
        let y = match self.scale {
            Some(s) => -s * (1.0 - u * (1.0 - (-self.width / s).exp())).ln(),
            None => u * self.width,
        };
        (self.min + y.clamp(0.0, self.width)).round() as u32
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Start,
    Input,
    Burst,
}

enum Phase {
    NotStarted,
    /// A tunnel: waiting for the gateway's `101` (head bounded by `parse_head`).
    AwaitUpgrade {
        got: Vec<u8>,
    },
    AwaitConfirm {
        got: Vec<u8>,
    },
    Running,
    Dead,
}

struct Outstanding {
    seq: u64,
    intended: Instant,
    burst: bool,
}

struct Session {
    start_at: Instant,
    /// Bytes sent before the Connection Request (a tunnel's upgrade request).
    preamble: Vec<u8>,
    stream: Option<TcpStream>,
    /// TLS state (boxed: plain sessions carry only the pointer).
    tls: Option<Box<ClientConnection>>,
    phase: Phase,
    out: Vec<u8>,
    out_off: usize,
    outstanding: VecDeque<Outstanding>,
    rx: UpdateReader,
    next_seq: u64,
}

/// Where the session is inside the stream of updates.
#[derive(Default)]
struct UpdateReader {
    hdr: [u8; UPDATE_HEADER_LEN],
    hdr_fill: usize,
    body_left: u32,
}

#[derive(Debug, Default)]
struct Tally {
    hist: Option<Histogram<u64>>,
    burst_hist: Option<Histogram<u64>>,
    connected: u64,
    sent_in_window: u64,
    done_in_window: u64,
    errors: u64,
    bytes_up: u64,
    bytes_down: u64,
    tls_sessions: u64,
    tunnels: u64,
}

struct Plan {
    target: SocketAddr,
    window_start: Instant,
    end: Instant,
    p: Params,
    tls: Option<TlsClient>,
}

/// When a run's load starts and which part of it counts: shared by every process of a
/// multi-process run so their windows line up.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Session 0 starts here; the other sessions follow over `stagger`.
    pub base: Instant,
    /// Load before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
}

impl Schedule {
    /// Start of the measured window.
    pub fn window_start(&self) -> Instant {
        self.base + self.warmup
    }

    /// End of the measured window.
    pub fn end(&self) -> Instant {
        self.window_start() + self.duration
    }
}

/// Which sessions of a run this process drives: session `i` belongs to shard `i % count`,
/// so every shard starts its sessions spread over the whole stagger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: usize,
    /// Shards in the run.
    pub count: usize,
}

impl Shard {
    /// The whole run in one process.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Sessions of `total` this shard drives.
    pub fn sessions(&self, total: usize) -> usize {
        (self.index..total).step_by(self.count.max(1)).count()
    }
}

/// What one shard measured, before any report: histograms (nanoseconds) and counts.
#[derive(Debug)]
pub struct Outcome {
    /// Input event to last byte of its update, events intended inside the window.
    pub hist: Histogram<u64>,
    /// The same for bursts.
    pub burst_hist: Histogram<u64>,
    /// Sessions whose Connection Confirm arrived.
    pub connected: u64,
    /// Events intended inside the window.
    pub sent_in_window: u64,
    /// Of those, events whose update arrived.
    pub done_in_window: u64,
    /// Failed sessions plus events of the window left unanswered.
    pub errors: u64,
    /// Bytes sent in the window.
    pub bytes_up: u64,
    /// Bytes received in the window (plaintext bytes for TLS sessions).
    pub bytes_down: u64,
    /// Sessions confirmed through TLS (their handshake completed and verified).
    pub tls_sessions: u64,
    /// Sessions whose tunnel upgrade was answered `101`.
    pub tunnels: u64,
    /// The first error any session met.
    pub first_error: Option<String>,
}

impl Outcome {
    /// An empty outcome to merge others into.
    pub fn empty() -> Outcome {
        Outcome {
            hist: new_histogram(),
            burst_hist: new_histogram(),
            connected: 0,
            sent_in_window: 0,
            done_in_window: 0,
            errors: 0,
            bytes_up: 0,
            bytes_down: 0,
            tls_sessions: 0,
            tunnels: 0,
            first_error: None,
        }
    }

    /// Adds `other` (another thread or process of the same run).
    pub fn merge(&mut self, other: &Outcome) {
        self.hist.add(&other.hist).expect("histograms share bounds");
        self.burst_hist
            .add(&other.burst_hist)
            .expect("histograms share bounds");
        self.connected += other.connected;
        self.sent_in_window += other.sent_in_window;
        self.done_in_window += other.done_in_window;
        self.errors += other.errors;
        self.bytes_up += other.bytes_up;
        self.bytes_down += other.bytes_down;
        self.tls_sessions += other.tls_sessions;
        self.tunnels += other.tunnels;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// A shard whose event loops are running; [`Running::join`] waits for the end of the window
/// (plus a grace period for late updates) and returns its [`Outcome`].
#[derive(Debug)]
pub struct Running {
    workers: Vec<std::thread::JoinHandle<Tally>>,
    first: Arc<FirstError>,
}

impl Running {
    /// Waits for every event loop and merges their tallies.
    pub fn join(self) -> Outcome {
        let mut out = Outcome::empty();
        for w in self.workers {
            let t = w.join().expect("rdp-profile loops do not panic");
            let part = Outcome {
                hist: t.hist.unwrap_or_else(new_histogram),
                burst_hist: t.burst_hist.unwrap_or_else(new_histogram),
                connected: t.connected,
                sent_in_window: t.sent_in_window,
                done_in_window: t.done_in_window,
                errors: t.errors,
                bytes_up: t.bytes_up,
                bytes_down: t.bytes_down,
                tls_sessions: t.tls_sessions,
                tunnels: t.tunnels,
                first_error: None,
            };
            out.merge(&part);
        }
        out.first_error = self.first.first();
        out
    }
}

/// Checks the parameters of a run.
pub fn validate(p: &Params) -> Result<(), BenchError> {
    if p.sessions == 0
        || !(p.input_rate.is_finite() && p.input_rate > 0.0)
        || !(INPUT_HEADER_LEN as u32..=MAX_INPUT_LEN as u32).contains(&p.input_bytes)
        || p.update_min < UPDATE_HEADER_LEN as u32
        || p.update_max > MAX_UPDATE_LEN
        || p.burst_bytes > MAX_UPDATE_LEN
        || (p.burst_bytes != 0 && p.burst_bytes < UPDATE_HEADER_LEN as u32)
    {
        return Err(BenchError::Usage(format!(
            "rdp-profile: sessions >= 1, input rate > 0, input bytes 24..=4096, updates and \
             bursts {UPDATE_HEADER_LEN}..={MAX_UPDATE_LEN} bytes"
        )));
    }
    // The sizes follow an exponential law cut to [min, max]: its mean lies between min and
    // the midpoint (the midpoint is the uniform law). Anything else would be ignored.
    let midpoint = (u64::from(p.update_min) + u64::from(p.update_max)) / 2;
    if p.update_min > p.update_max {
        return Err(BenchError::Usage(format!(
            "rdp-profile: --update-min ({}) is above --update-max ({})",
            p.update_min, p.update_max
        )));
    }
    if p.update_mean < p.update_min || u64::from(p.update_mean) > midpoint {
        return Err(BenchError::Usage(format!(
            "rdp-profile: --update-mean must be from --update-min ({}) to the midpoint of \
             --update-min and --update-max ({midpoint}); it is {} (raise --update-max for a \
             larger mean)",
            p.update_min, p.update_mean
        )));
    }
    Ok(())
}

/// Starts the event loops of one shard of a run (no probe, no report): the building block of
/// [`run`] and of the multi-process `capacity` ramp.
pub fn start_shard(
    target: SocketAddr,
    sources: usize,
    p: &Params,
    schedule: Schedule,
    shard: Shard,
    transport: &Transport,
) -> Result<Running, BenchError> {
    validate(p)?;
    let sources = Arc::new(SourcePool::new(target, sources));
    let first = Arc::new(FirstError::default());
    let mine: Vec<usize> = (shard.index..p.sessions).step_by(shard.count.max(1)).collect();
    if mine.is_empty() {
        return Ok(Running {
            workers: Vec::new(),
            first,
        });
    }
    let (tls, tickets) = match transport {
        Transport::Plain => (None, None),
        Transport::Tls(c) => (Some(c.clone()), None),
        Transport::Tunnel { tls, tickets } => {
            if tickets.len() < mine.len() {
                return Err(BenchError::Usage(format!(
                    "rdp-profile: {} tunnel tickets for {} sessions",
                    tickets.len(),
                    mine.len()
                )));
            }
            (Some(tls.clone()), Some(tickets.clone()))
        }
    };
    let threads = p.threads.clamp(1, mine.len());
    let workers = (0..threads)
        .map(|t| {
            let plan = Plan {
                target,
                window_start: schedule.window_start(),
                end: schedule.end(),
                p: p.clone(),
                tls: tls.clone(),
            };
            let (sources, first) = (sources.clone(), first.clone());
            // (start time, preamble) of this thread's sessions: shard positions t, t+threads, ...
            let starts: Vec<(Instant, Vec<u8>)> = mine
                .iter()
                .enumerate()
                .skip(t)
                .step_by(threads)
                .map(|(k, &i)| {
                    let at = schedule.base + p.stagger.mul_f64(i as f64 / p.sessions as f64);
                    let preamble = tickets.as_ref().map(|v| v[k].request()).unwrap_or_default();
                    (at, preamble)
                })
                .collect();
            let id = (shard.index * threads + t) as u64;
            std::thread::spawn(move || event_loop(&plan, &starts, &sources, &first, id))
        })
        .collect();
    Ok(Running { workers, first })
}

/// Runs the scenario, every session over `transport` (plain TCP, or TLS to a terminating
/// proxy or stand-in).
pub fn run(common: &Common, p: &Params, transport: &Transport) -> Result<Report, BenchError> {
    validate(p)?;
    if p.stagger > common.warmup {
        return Err(BenchError::Usage(format!(
            "rdp-profile: sessions start over --stagger ({:?}), which must fit in --warmup \
             ({:?}): the window would measure sessions still starting",
            p.stagger, common.warmup
        )));
    }
    probe(common.target)?;
    crate::net::raise_nofile_limit();
    let schedule = Schedule {
        base: Instant::now() + Duration::from_millis(20),
        warmup: common.warmup,
        duration: common.duration,
    };
    let running = start_shard(
        common.target,
        common.sources,
        p,
        schedule,
        Shard::WHOLE,
        transport,
    )?;
    std::thread::sleep(schedule.window_start().saturating_duration_since(Instant::now()));
    let window = common.open_window()?;
    super::wait_with_progress("rdp-profile", schedule.window_start(), schedule.end());
    let elapsed_s = window.elapsed_s();
    let processes = common.close_window(&window)?;
    let out = running.join();
    if out.done_in_window == 0 {
        return Err(BenchError::NoProgress {
            target: common.target,
            detail: out.first_error.unwrap_or_else(|| {
                "no input event answered in the window and no error (a target that accepts and stays silent?)".into()
            }),
        });
    }
    super::name_first_error(out.errors, out.first_error.clone());
    let results = Results {
        elapsed_s,
        connections: out.connected,
        operations: out.done_in_window,
        errors: out.errors,
        bytes_up: out.bytes_up,
        bytes_down: out.bytes_down,
        latency_us: Percentiles::from_histogram(&out.hist),
        burst_latency_us: Percentiles::from_histogram(&out.burst_hist),
        ..Results::default()
    };
    let extra = json!({
        "sessions": p.sessions,
        "input_rate": p.input_rate,
        "input_bytes": p.input_bytes,
        "update_mean": p.update_mean,
        "update_min": p.update_min,
        "update_max": p.update_max,
        "burst_bytes": p.burst_bytes,
        "burst_interval_s": p.burst_interval.as_secs_f64(),
        "stagger_s": p.stagger.as_secs_f64(),
        "threads": p.threads.clamp(1, p.sessions),
        "seed": p.seed,
        "tls": !matches!(transport, Transport::Plain),
    });
    Ok(finish("rdp-profile", common, extra, results, processes, false))
}

fn event_loop(
    plan: &Plan,
    starts: &[(Instant, Vec<u8>)],
    sources: &SourcePool,
    first: &FirstError,
    thread: u64,
) -> Tally {
    let mut tally = Tally {
        hist: Some(new_histogram()),
        burst_hist: Some(new_histogram()),
        ..Tally::default()
    };
    set_fine_timer_slack();
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            first.note(|| format!("epoll: {e}"));
            return tally;
        }
    };
    let p = &plan.p;
    let mut rng = StdRng::seed_from_u64(p.seed ^ thread.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let sizes = SizeSampler::new(p.update_min, p.update_mean, p.update_max);
    let interval = Duration::from_secs_f64(1.0 / p.input_rate);
    let mut sessions: Vec<Session> = starts
        .iter()
        .map(|(start_at, preamble)| Session {
            start_at: *start_at,
            preamble: preamble.clone(),
            stream: None,
            tls: None,
            phase: Phase::NotStarted,
            out: Vec::new(),
            out_off: 0,
            outstanding: VecDeque::new(),
            rx: UpdateReader::default(),
            next_seq: 0,
        })
        .collect();
    let mut timers: BinaryHeap<Reverse<(Instant, TimerKind, usize)>> = sessions
        .iter()
        .enumerate()
        .map(|(i, s)| Reverse((s.start_at, TimerKind::Start, i)))
        .collect();
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; 64 * 1024];
    let grace_end = plan.end + Duration::from_secs(2);
    loop {
        let now = Instant::now();
        let pending: usize = sessions
            .iter()
            .filter(|s| !matches!(s.phase, Phase::Dead))
            .map(|s| s.outstanding.len())
            .sum();
        if now >= grace_end || (now >= plan.end && pending == 0) {
            break;
        }
        let next_timer = timers.peek().map(|Reverse((t, _, _))| *t);
        let wake = next_timer.unwrap_or(grace_end).min(grace_end);
        // epoll waits in whole milliseconds (mio rounds up), which would send events up to
        // 1 ms late: wait whole milliseconds, then the last stretch in short sleeps between
        // non-blocking polls so sends and receive timestamps stay within ~50 us.
        let left = wake.saturating_duration_since(now);
        let timeout = if left >= Duration::from_millis(1) {
            Duration::from_millis(left.as_millis() as u64)
        } else {
            Duration::ZERO
        };
        let polled = poll.poll(&mut events, Some(timeout));
        if polled.is_ok() && events.is_empty() && timeout.is_zero() && !left.is_zero() {
            std::thread::sleep(left.min(Duration::from_micros(50)));
        }
        if let Err(e) = polled {
            if e.kind() != ErrorKind::Interrupted {
                first.note(|| format!("poll: {e}"));
                break;
            }
        }
        for ev in events.iter() {
            let i = ev.token().0;
            drive(&mut sessions[i], plan, &mut tally, &mut scratch, first);
        }
        let now = Instant::now();
        while let Some(Reverse((t, kind, i))) = timers.peek().copied() {
            if t > now {
                break;
            }
            timers.pop();
            let s = &mut sessions[i];
            match kind {
                TimerKind::Start => {
                    match start(s, plan, sources, &poll, i) {
                        Ok(()) => {
                            timers.push(Reverse((t + interval, TimerKind::Input, i)));
                            if p.burst_bytes > 0 {
                                let phase = p.burst_interval.mul_f64(rng.gen::<f64>());
                                timers.push(Reverse((t + phase, TimerKind::Burst, i)));
                            }
                        }
                        Err(e) => {
                            tally.errors += 1;
                            first.note(|| format!("connect: {e}"));
                            s.phase = Phase::Dead;
                        }
                    }
                    continue;
                }
                TimerKind::Input | TimerKind::Burst => {
                    if t >= plan.end || matches!(s.phase, Phase::Dead) {
                        continue;
                    }
                    let burst = kind == TimerKind::Burst;
                    let reply_len = if burst {
                        p.burst_bytes
                    } else {
                        sizes.sample(&mut rng)
                    };
                    let seq = s.next_seq;
                    s.next_seq += 1;
                    InputEvent {
                        len: p.input_bytes,
                        seq,
                        reply_len,
                        flags: if burst { FLAG_BURST } else { 0 },
                    }
                    .encode(&mut s.out);
                    s.outstanding.push_back(Outstanding {
                        seq,
                        intended: t,
                        burst,
                    });
                    if t >= plan.window_start {
                        tally.sent_in_window += 1;
                        tally.bytes_up += u64::from(p.input_bytes);
                    }
                    let next = if burst { p.burst_interval } else { interval };
                    timers.push(Reverse((t + next, kind, i)));
                    drive(s, plan, &mut tally, &mut scratch, first);
                }
            }
        }
    }
    for s in &sessions {
        let lost = s
            .outstanding
            .iter()
            .filter(|o| o.intended >= plan.window_start && o.intended < plan.end)
            .count() as u64;
        tally.errors += lost;
    }
    tally
}

fn start(s: &mut Session, plan: &Plan, sources: &SourcePool, poll: &Poll, i: usize) -> std::io::Result<()> {
    if let Some(c) = &plan.tls {
        let conn =
            ClientConnection::new(c.config.clone(), c.server_name.clone()).map_err(std::io::Error::other)?;
        s.tls = Some(Box::new(conn));
    }
    let std_stream = sources.connect_nonblocking(plan.target)?;
    let mut stream = TcpStream::from_std(std_stream);
    poll.registry()
        .register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)?;
    s.stream = Some(stream);
    let preamble = std::mem::take(&mut s.preamble);
    s.phase = if preamble.is_empty() {
        Phase::AwaitConfirm { got: Vec::new() }
    } else {
        Phase::AwaitUpgrade { got: Vec::new() }
    };
    s.out.extend_from_slice(&preamble);
    s.out.extend_from_slice(&connection_request("bench", 0));
    Ok(())
}

/// Moves bytes for one session after an event or a new frame to send.
fn drive(s: &mut Session, plan: &Plan, tally: &mut Tally, scratch: &mut [u8], first: &FirstError) {
    if matches!(s.phase, Phase::Dead | Phase::NotStarted) {
        return;
    }
    if let Err(e) = pump(s, plan, tally, scratch) {
        first.note(|| e.clone());
        tally.errors += 1;
        s.phase = Phase::Dead;
        s.stream = None;
        s.tls = None;
    }
}

fn pump(s: &mut Session, plan: &Plan, tally: &mut Tally, scratch: &mut [u8]) -> Result<(), String> {
    if s.tls.is_some() {
        return pump_tls(s, plan, tally, scratch);
    }
    let Some(stream) = s.stream.as_mut() else {
        return Ok(());
    };
    while s.out_off < s.out.len() {
        match stream.write(&s.out[s.out_off..]) {
            Ok(n) => s.out_off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::NotConnected => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    if s.out_off == s.out.len() {
        s.out.clear();
        s.out_off = 0;
    }
    loop {
        let n = match stream.read(scratch) {
            Ok(0) => return Err("session closed by the far end".into()),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::NotConnected) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        };
        let now = Instant::now();
        received(
            &mut s.phase,
            &mut s.rx,
            &mut s.outstanding,
            &scratch[..n],
            now,
            plan,
            tally,
        )?;
    }
}

/// Bytes a session received at `now`: counted when inside the measured window, then
/// parsed by [`on_data`].
fn received(
    phase: &mut Phase,
    rx: &mut UpdateReader,
    outstanding: &mut VecDeque<Outstanding>,
    data: &[u8],
    now: Instant,
    plan: &Plan,
    tally: &mut Tally,
) -> Result<(), String> {
    if now >= plan.window_start && now < plan.end {
        tally.bytes_down += data.len() as u64;
    }
    on_data(phase, rx, outstanding, data, now, plan, tally)
}

/// [`pump`] for a TLS session: plaintext into rustls as far as its buffer limit takes it,
/// records out until the socket is full, records in until it is empty, plaintext to
/// [`on_data`].
fn pump_tls(s: &mut Session, plan: &Plan, tally: &mut Tally, scratch: &mut [u8]) -> Result<(), String> {
    let (Some(stream), Some(tls)) = (s.stream.as_mut(), s.tls.as_mut()) else {
        return Ok(());
    };
    loop {
        let mut took = 0;
        if s.out_off < s.out.len() {
            took = tls
                .writer()
                .write(&s.out[s.out_off..])
                .map_err(|e| format!("TLS write: {e}"))?;
            s.out_off += took;
            if s.out_off == s.out.len() {
                s.out.clear();
                s.out_off = 0;
            }
        }
        let mut blocked = false;
        while tls.wants_write() {
            match tls.write_tls(stream) {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::NotConnected) => {
                    blocked = true;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        let read = match tls.read_tls(stream) {
            Ok(0) => return Err("session closed by the far end".into()),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::NotConnected) => 0,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        };
        if read > 0 {
            tls.process_new_packets().map_err(|e| format!("TLS: {e}"))?;
            let now = Instant::now();
            loop {
                let n = match tls.reader().read(scratch) {
                    Ok(0) => return Err("session closed by the far end (close_notify)".into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("TLS read: {e}")),
                };
                received(
                    &mut s.phase,
                    &mut s.rx,
                    &mut s.outstanding,
                    &scratch[..n],
                    now,
                    plan,
                    tally,
                )?;
            }
            // More records may wait, and the handshake may have queued an answer.
            continue;
        }
        if !blocked && took > 0 && s.out_off < s.out.len() {
            continue;
        }
        return Ok(());
    }
}

/// Handles bytes from the host (plaintext for TLS): the tunnel's `101`, then the Connection
/// Confirm, then updates.
fn on_data(
    phase: &mut Phase,
    rx: &mut UpdateReader,
    outstanding: &mut VecDeque<Outstanding>,
    data: &[u8],
    now: Instant,
    plan: &Plan,
    tally: &mut Tally,
) -> Result<(), String> {
    if let Phase::AwaitUpgrade { got } = phase {
        got.extend_from_slice(data);
        // Bounded: parse_head refuses a head past MAX_HEAD_BYTES, complete or not.
        let head = match parse_head(got) {
            Ok(HeadProgress::NeedMore) => return Ok(()),
            Ok(HeadProgress::Done(h)) => h,
            Err(e) => return Err(format!("tunnel answer: {e}")),
        };
        if head.status != 101 {
            let body = got.get(head.head_len..).unwrap_or_default();
            let code = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string));
            return Err(format!(
                "tunnel refused: {} {}",
                head.status,
                code.as_deref().unwrap_or("(no error code yet)")
            ));
        }
        let rest = got.split_off(head.head_len);
        tally.tunnels += 1;
        *phase = Phase::AwaitConfirm { got: Vec::new() };
        return on_data(phase, rx, outstanding, &rest, now, plan, tally);
    }
    let mut data = data;
    if let Phase::AwaitConfirm { got } = phase {
        got.extend_from_slice(data);
        // Updates may follow the confirm in the same read (events are sent open-loop
        // before it arrives): parse first, and bound only a confirm still incomplete.
        match parse_connection_confirm(got) {
            Ok(None) if got.len() > MAX_CONNECTION_REQUEST => {
                return Err("oversized connection confirm".into());
            }
            Ok(None) => return Ok(()),
            Ok(Some((len, _))) => {
                let rest = got.split_off(len);
                *phase = Phase::Running;
                tally.connected += 1;
                if plan.tls.is_some() {
                    tally.tls_sessions += 1;
                }
                take_updates(rx, outstanding, &rest, now, plan, tally)?;
                data = &[];
            }
            Err(e) => return Err(format!("connection confirm: {e}")),
        }
    }
    take_updates(rx, outstanding, data, now, plan, tally)
}

fn take_updates(
    s: &mut UpdateReader,
    outstanding: &mut VecDeque<Outstanding>,
    mut data: &[u8],
    now: Instant,
    plan: &Plan,
    tally: &mut Tally,
) -> Result<(), String> {
    while !data.is_empty() {
        if s.body_left == 0 {
            let take = (UPDATE_HEADER_LEN - s.hdr_fill).min(data.len());
            s.hdr[s.hdr_fill..s.hdr_fill + take].copy_from_slice(&data[..take]);
            s.hdr_fill += take;
            data = &data[take..];
            if s.hdr_fill < UPDATE_HEADER_LEN {
                return Ok(());
            }
            s.hdr_fill = 0;
            let h = UpdateHeader::parse(&s.hdr).map_err(|e| format!("update: {e}"))?;
            s.body_left = h.len - UPDATE_HEADER_LEN as u32;
            let front = outstanding.front().map(|o| o.seq);
            if front != Some(h.seq) {
                return Err(format!("update seq {} while expecting {front:?}", h.seq));
            }
        } else {
            let take = (s.body_left as usize).min(data.len());
            s.body_left -= take as u32;
            data = &data[take..];
        }
        if s.body_left == 0 {
            let o = outstanding
                .pop_front()
                .expect("a header was matched against the front entry");
            if o.intended >= plan.window_start && o.intended < plan.end {
                tally.done_in_window += 1;
                let ns = now.saturating_duration_since(o.intended).as_nanos() as u64;
                let h = if o.burst {
                    tally.burst_hist.as_mut()
                } else {
                    tally.hist.as_mut()
                };
                if let Some(h) = h {
                    let _ = h.record(ns);
                }
            }
        }
    }
    Ok(())
}

/// Sleeps end within microseconds of their deadline (default timer slack is 50 us).
fn set_fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and affects this thread only.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standin::{Outgoing, RdpHost};

    /// What an Rdp host writes for a Connection Request and one event `seq 0` asking for
    /// `reply` bytes.
    fn host_answer(reply: u32) -> Vec<u8> {
        let mut input = connection_request("bench", 0);
        InputEvent {
            len: 80,
            seq: 0,
            reply_len: reply,
            flags: 0,
        }
        .encode(&mut input);
        let mut out = VecDeque::new();
        RdpHost::default().on_bytes(&input, &mut out).unwrap();
        let mut bytes = Vec::new();
        for o in out {
            match o {
                Outgoing::Bytes { buf, .. } => bytes.extend(buf),
                Outgoing::Update {
                    header, payload_left, ..
                } => {
                    bytes.extend(header);
                    bytes.extend(std::iter::repeat_n(0xA5, payload_left as usize));
                }
            }
        }
        bytes
    }

    fn plan(now: Instant) -> Plan {
        Plan {
            target: "127.0.0.1:1".parse().unwrap(),
            window_start: now - Duration::from_secs(1),
            end: now + Duration::from_secs(10),
            p: Params::office(1),
            tls: None,
        }
    }

    #[test]
    fn tunnel_answer_then_confirm_then_update_split_anywhere() {
        let mut stream =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: gatehouse-tunnel\r\nConnection: Upgrade\r\n\r\n"
                .to_vec();
        stream.extend(host_answer(1200));
        let now = Instant::now();
        let plan = plan(now);
        for split in 0..stream.len() {
            let mut phase = Phase::AwaitUpgrade { got: Vec::new() };
            let mut rx = UpdateReader::default();
            let mut outstanding = VecDeque::from([Outstanding {
                seq: 0,
                intended: now,
                burst: false,
            }]);
            let mut tally = Tally {
                hist: Some(new_histogram()),
                ..Tally::default()
            };
            for part in [&stream[..split], &stream[split..]] {
                on_data(
                    &mut phase,
                    &mut rx,
                    &mut outstanding,
                    part,
                    now,
                    &plan,
                    &mut tally,
                )
                .unwrap();
            }
            assert!(matches!(phase, Phase::Running), "split {split}");
            assert_eq!((tally.tunnels, tally.connected, tally.done_in_window), (1, 1, 1));
            assert!(outstanding.is_empty());
        }
    }

    #[test]
    fn refused_tunnels_name_their_code_and_oversized_answers_stop() {
        let now = Instant::now();
        let plan = plan(now);
        let mut tally = Tally::default();
        let answer = b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 44\r\n\r\n{\"error\":\"ticket_replayed\",\"message\":\"x\"}";
        let mut phase = Phase::AwaitUpgrade { got: Vec::new() };
        let e = on_data(
            &mut phase,
            &mut UpdateReader::default(),
            &mut VecDeque::new(),
            answer,
            now,
            &plan,
            &mut tally,
        )
        .unwrap_err();
        assert!(e.contains("403 ticket_replayed"), "{e}");
        let mut phase = Phase::AwaitUpgrade { got: Vec::new() };
        let mut junk = b"HTTP/1.1 101 Switching\r\nX: ".to_vec();
        junk.resize(20_000, b'a');
        let e = on_data(
            &mut phase,
            &mut UpdateReader::default(),
            &mut VecDeque::new(),
            &junk,
            now,
            &plan,
            &mut tally,
        )
        .unwrap_err();
        assert!(e.contains("tunnel answer"), "{e}");
        assert_eq!(tally.tunnels, 0);
    }

    #[test]
    fn tickets_make_the_upgrade_request_of_the_client_api() {
        let t = TunnelTicket {
            token: "broker-1~tok".into(),
            ticket: "tkt".into(),
        };
        let r = String::from_utf8(t.request()).unwrap();
        assert!(r.starts_with("GET /api/v1/tunnel HTTP/1.1\r\n"), "{r}");
        for h in [
            "Connection: Upgrade\r\n",
            "Upgrade: gatehouse-tunnel\r\n",
            "Gatehouse-Session: broker-1~tok\r\n",
            "Authorization: Bearer tkt\r\n",
        ] {
            assert!(r.contains(h), "{h}: {r}");
        }
        assert!(r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn sampler_hits_mean_and_bounds() {
        let s = SizeSampler::new(200, 1200, 4000);
        let mut rng = StdRng::seed_from_u64(7);
        let n = 200_000;
        let mut sum = 0u64;
        for _ in 0..n {
            let v = s.sample(&mut rng);
            assert!((200..=4000).contains(&v));
            sum += u64::from(v);
        }
        let mean = sum as f64 / n as f64;
        assert!((mean - 1200.0).abs() < 15.0, "mean {mean}");
        let flat = SizeSampler::new(100, 100, 100);
        assert_eq!(flat.sample(&mut rng), 100);
    }
}
