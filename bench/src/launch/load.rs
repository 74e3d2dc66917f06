//! The load of `launch`: phase A (tunnel opens from closed-loop client threads) and phase B
//! (ping-pong through one held tunnel per path, closed loop and open loop, in rounds).
//!
//! Phase A, per client thread and iteration: `POST /api/v1/launch` on a kept-alive API
//! connection, then a new connection with the tunnel upgrade, the `101`, one echo of the
//! payload through the tunnel, close. The baseline iteration is a TCP connect to a stand-in
//! and the same echo. An iteration counts when it completes inside the measured window.
//!
//! Phase B's open loop writes message k at `start + k / rate` whatever came back (latency from
//! the intended send time: no coordinated omission), on one thread: it reads with a timeout
//! that ends at the next send time, so a TLS stream needs no second thread.
//! Message: seq u64 BE | intended time (ns since start) u64 BE | filler (as rr-latency's).

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::client::{self, ClientError, ClientStream, HttpConn, Tunnel};
use crate::net::SourcePool;
use crate::report::new_histogram;
use crate::scenario::rr_latency::MIN_MESSAGE;
use crate::tls::TlsClient;

/// How a client reaches a session host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum PathKind {
    /// TCP straight to a stand-in (the baseline).
    #[serde(rename = "direct")]
    Direct,
    /// gw-1's front listener in plain HTTP (Gateway mode).
    #[serde(rename = "gateway")]
    Gateway,
    /// gw-1's front listener in TLS (Gateway SSL mode).
    #[serde(rename = "gateway-ssl")]
    GatewaySsl,
    /// fw-1 (TLS passed through, PROXY v2) in front of gw-1's second listener, in TLS.
    #[serde(rename = "forwarder-ssl")]
    ForwarderSsl,
}

impl PathKind {
    /// Every path, the baseline first.
    pub const ALL: [PathKind; 4] = [
        PathKind::Direct,
        PathKind::Gateway,
        PathKind::GatewaySsl,
        PathKind::ForwarderSsl,
    ];

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Gateway => "gateway",
            PathKind::GatewaySsl => "gateway-ssl",
            PathKind::ForwarderSsl => "forwarder-ssl",
        }
    }
}

/// Where a path's connections go.
#[derive(Clone)]
pub struct Route {
    /// Which path.
    pub kind: PathKind,
    /// The first hop: a stand-in (direct), gw-1's front, or fw-1.
    pub addr: SocketAddr,
    /// TLS to the first hop.
    pub tls: Option<TlsClient>,
}

/// What phase A measured on one path (summed over the client threads).
#[derive(Debug)]
pub struct OpenTally {
    /// Iterations completed in the window.
    pub opens: u64,
    /// From the launch request (the connect, direct) to the echo's return, in ns.
    pub total_ns: Histogram<u64>,
    /// The launch call alone, in ns.
    pub launch_ns: Histogram<u64>,
    /// From the tunnel connect to the `101`, in ns.
    pub tunnel_ns: Histogram<u64>,
    /// Failures in the window by reason.
    pub errors: BTreeMap<String, u64>,
    /// The first failure's text (anywhere in the run).
    pub first_error: Option<String>,
}

impl OpenTally {
    /// An empty tally.
    pub fn new() -> OpenTally {
        OpenTally {
            opens: 0,
            total_ns: new_histogram(),
            launch_ns: new_histogram(),
            tunnel_ns: new_histogram(),
            errors: BTreeMap::new(),
            first_error: None,
        }
    }

    /// Adds `o` (a later round) to this tally.
    pub fn merge(&mut self, o: OpenTally) {
        self.opens += o.opens;
        let _ = self.total_ns.add(&o.total_ns);
        let _ = self.launch_ns.add(&o.launch_ns);
        let _ = self.tunnel_ns.add(&o.tunnel_ns);
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    /// Failures in the window.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

impl Default for OpenTally {
    fn default() -> Self {
        OpenTally::new()
    }
}

/// Phase A on one path.
pub struct OpenPhase<'a> {
    /// Where to go.
    pub route: &'a Route,
    /// One session token per client thread (unused on the direct path).
    pub tokens: &'a [String],
    /// The resource launched.
    pub resource: &'a str,
    /// Load whose samples are dropped.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Bytes echoed through each tunnel.
    pub payload: usize,
    /// Client source addresses.
    pub sources: &'a SourcePool,
}

/// Runs phase A on one path with one thread per token; `window` is called with `true` when
/// the window opens and `false` when it closes (CPU samples of the processes under test).
pub fn run_opens(p: &OpenPhase<'_>, window: &mut dyn FnMut(bool)) -> OpenTally {
    let threads = p.tokens.len();
    let barrier = Barrier::new(threads + 1);
    let start = Instant::now() + Duration::from_millis(20);
    let window_start = start + p.warmup;
    let end = window_start + p.duration;
    std::thread::scope(|scope| {
        let workers: Vec<_> = p
            .tokens
            .iter()
            .map(|token| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    open_loop_worker(p, token, window_start, end)
                })
            })
            .collect();
        barrier.wait();
        std::thread::sleep(window_start.saturating_duration_since(Instant::now()));
        window(true);
        crate::scenario::wait_with_progress(p.route.kind.name(), window_start, end);
        window(false);
        let mut total = OpenTally::new();
        for w in workers {
            match w.join() {
                Ok(t) => total.merge(t),
                Err(_) => {
                    *total.errors.entry("worker_panicked".into()).or_default() += 1;
                }
            }
        }
        total
    })
}

/// One client thread of phase A: iterations until `end`.
fn open_loop_worker(p: &OpenPhase<'_>, token: &str, window_start: Instant, end: Instant) -> OpenTally {
    let mut t = OpenTally::new();
    let msg: Vec<u8> = (0..p.payload).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; p.payload];
    let mut api: Option<HttpConn> = None;
    while Instant::now() < end {
        let started = Instant::now();
        let outcome = match p.route.kind {
            PathKind::Direct => direct_once(p, &msg, &mut back).map(|()| None),
            _ => launch_once(p, token, &mut api, &msg, &mut back).map(Some),
        };
        let now = Instant::now();
        let in_window = now >= window_start && now < end;
        match outcome {
            Ok(split) => {
                if in_window {
                    t.opens += 1;
                    let _ = t.total_ns.record(nanos(now - started));
                    if let Some((launch, tunnel)) = split {
                        let _ = t.launch_ns.record(nanos(launch));
                        let _ = t.tunnel_ns.record(nanos(tunnel));
                    }
                }
            }
            Err((reason, text)) => {
                if in_window {
                    *t.errors.entry(reason).or_default() += 1;
                }
                if t.first_error.is_none() {
                    t.first_error = Some(text);
                }
                // A refused or broken API connection is not reused; do not spin on a dead
                // target.
                api = None;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    t
}

type Failure = (String, String);

fn fail(what: &str, e: &ClientError) -> Failure {
    (format!("{what}_{}", e.reason()), format!("{what}: {e}"))
}

/// Connect to a stand-in, echo, close.
fn direct_once(p: &OpenPhase<'_>, msg: &[u8], back: &mut [u8]) -> Result<(), Failure> {
    let stream = ClientStream::connect(p.route.addr, p.route.tls.as_ref(), p.sources)
        .map_err(|e| ("connect".to_string(), format!("connect: {e}")))?;
    let mut tunnel = Tunnel::direct(stream);
    let r = tunnel.echo(msg, back).map_err(|e| ("echo".to_string(), e));
    tunnel.close();
    r
}

/// Launch on the kept-alive API connection, open the tunnel, echo, close; the launch time
/// and the time from the tunnel connect to its `101`.
fn launch_once(
    p: &OpenPhase<'_>,
    token: &str,
    api: &mut Option<HttpConn>,
    msg: &[u8],
    back: &mut [u8],
) -> Result<(Duration, Duration), Failure> {
    let t0 = Instant::now();
    let conn = match api {
        Some(c) if !c.is_closed() => c,
        _ => api.insert(
            HttpConn::connect(p.route.addr, p.route.tls.as_ref(), p.sources)
                .map_err(|e| fail("api_connect", &e))?,
        ),
    };
    let ticket = conn.launch(token, p.resource).map_err(|e| fail("launch", &e))?;
    let t1 = Instant::now();
    let mut tunnel = client::tunnel(p.route.addr, p.route.tls.as_ref(), p.sources, token, &ticket)
        .map_err(|e| fail("tunnel", &e))?;
    let t2 = Instant::now();
    let r = tunnel.echo(msg, back).map_err(|e| ("tunnel_echo".to_string(), e));
    tunnel.close();
    r.map(|()| (t1 - t0, t2 - t1))
}

/// What phase B measured on one held tunnel.
#[derive(Debug)]
pub struct PingTally {
    /// Closed loop: one message in flight, in ns.
    pub closed_ns: Histogram<u64>,
    /// Open loop at the fixed rate (none when the rate is 0), in ns from the intended send.
    pub open_ns: Option<Histogram<u64>>,
    /// Open loop: messages sent in the window.
    pub open_sent: u64,
    /// Open loop: echoes of those received.
    pub open_received: u64,
}

/// Phase B's settings.
#[derive(Clone, Copy, Debug)]
pub struct PingParams {
    /// Message size (>= 16).
    pub message: usize,
    /// Samples dropped before each loop.
    pub warmup: Duration,
    /// Each loop's window.
    pub duration: Duration,
    /// Open-loop messages per second (0: no open loop).
    pub rate: f64,
}

impl PingTally {
    /// An empty tally (with an open-loop histogram when `open_loop`).
    pub fn new(open_loop: bool) -> PingTally {
        PingTally {
            closed_ns: new_histogram(),
            open_ns: open_loop.then(new_histogram),
            open_sent: 0,
            open_received: 0,
        }
    }
}

/// One round over `tunnel`: the closed loop, then (with a rate) the open loop, each for
/// `p.duration` after `p.warmup`; adds to `tally`.
pub fn ping_round(tunnel: &mut Tunnel, p: &PingParams, tally: &mut PingTally) -> Result<(), String> {
    if p.message < MIN_MESSAGE {
        return Err(format!("message must be at least {MIN_MESSAGE} bytes"));
    }
    let closed = closed_loop(tunnel, p)?;
    let _ = tally.closed_ns.add(&closed);
    if p.rate > 0.0 {
        let (h, sent, received) = open_loop(tunnel, p)?;
        let _ = tally.open_ns.get_or_insert_with(new_histogram).add(&h);
        tally.open_sent += sent;
        tally.open_received += received;
    }
    Ok(())
}

fn closed_loop(tunnel: &mut Tunnel, p: &PingParams) -> Result<Histogram<u64>, String> {
    tunnel
        .tcp()
        .set_read_timeout(Some(client::ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut hist = new_histogram();
    let mut msg = vec![0x5au8; p.message];
    let mut back = vec![0u8; p.message];
    let window_start = Instant::now() + p.warmup;
    let end = window_start + p.duration;
    let mut seq = 0u64;
    loop {
        let start = Instant::now();
        if start >= end {
            break;
        }
        msg[..8].copy_from_slice(&seq.to_be_bytes());
        tunnel.echo(&msg, &mut back)?;
        if start >= window_start {
            let _ = hist.record(nanos(start.elapsed()));
        }
        seq += 1;
    }
    Ok(hist)
}

/// (histogram, sent in window, received in window).
fn open_loop(tunnel: &mut Tunnel, p: &PingParams) -> Result<(Histogram<u64>, u64, u64), String> {
    crate::scenario::rr_latency::set_fine_timer_slack();
    tunnel
        .tcp()
        .set_read_timeout(Some(client::ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let interval = Duration::from_secs_f64(1.0 / p.rate);
    let base = Instant::now() + Duration::from_millis(5);
    let window_start = base + p.warmup;
    let end = window_start + p.duration;
    let give_up = end + Duration::from_secs(2);
    let mut hist = new_histogram();
    let mut msg = vec![0xa5u8; p.message];
    let mut buf = vec![0u8; p.message];
    let mut filled = 0usize;
    let (mut k, mut received) = (0u64, 0u64);
    let (mut sent_in_window, mut received_in_window) = (0u64, 0u64);
    loop {
        let intended = base + interval.mul_f64(k as f64);
        let now = Instant::now();
        if intended < end && now >= intended {
            msg[..8].copy_from_slice(&k.to_be_bytes());
            msg[8..16].copy_from_slice(&nanos(intended - base).to_be_bytes());
            tunnel.send(&msg).map_err(|e| format!("open loop write: {e}"))?;
            if intended >= window_start {
                sent_in_window += 1;
            }
            k += 1;
            continue;
        }
        if intended >= end && received >= k {
            break;
        }
        if now > give_up {
            break;
        }
        let until = if intended < end { intended } else { give_up };
        match tunnel.read_before(&mut buf[filled..], until) {
            Ok(0) => return Err(format!("tunnel closed after {received} echoes")),
            Ok(n) => {
                filled += n;
                if filled < p.message {
                    continue;
                }
                filled = 0;
                let now = Instant::now();
                let mut t = [0u8; 8];
                t.copy_from_slice(&buf[8..16]);
                let sent_at = base + Duration::from_nanos(u64::from_be_bytes(t));
                received += 1;
                if sent_at >= window_start && sent_at < end {
                    received_in_window += 1;
                    let _ = hist.record(nanos(now.saturating_duration_since(sent_at)));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("open loop read: {e}")),
        }
    }
    Ok((hist, sent_in_window, received_in_window))
}

/// Nanoseconds of `d`, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standin::{Kind, StandIn};

    fn echo() -> crate::standin::StandInHandle {
        StandIn::bind(Kind::Echo, "127.0.0.1:0".parse().unwrap())
            .unwrap()
            .spawn()
    }

    #[test]
    fn ping_pong_measures_both_loops_against_an_echo() {
        let e = echo();
        let sources = SourcePool::new(e.local_addr(), 1);
        let stream = ClientStream::connect(e.local_addr(), None, &sources).unwrap();
        let mut t = Tunnel::direct(stream);
        let p = PingParams {
            message: 64,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(300),
            rate: 1000.0,
        };
        let mut r = PingTally::new(true);
        ping_round(&mut t, &p, &mut r).unwrap();
        assert!(r.closed_ns.len() > 10, "{}", r.closed_ns.len());
        let open = r.open_ns.clone().unwrap();
        // 1000/s for 0.3 s: about 300 messages, every one answered.
        assert!((250..=350).contains(&r.open_sent), "{}", r.open_sent);
        assert_eq!(r.open_received, r.open_sent);
        assert_eq!(open.len(), r.open_received);
        assert!(ping_round(&mut t, &PingParams { message: 8, ..p }, &mut r).is_err());
        // On an idle loopback the open loop at 1000/s waits for nothing: its median stays
        // far below the 1 ms between sends (a send delayed by a coarse timer would not).
        assert!(
            open.value_at_quantile(0.5) < 1_000_000,
            "{}",
            open.value_at_quantile(0.5)
        );
    }

    #[test]
    fn open_loop_counts_a_stall_from_the_intended_send_time() {
        // An echo that holds every reply for 30 ms: the open loop keeps sending on time, and
        // every latency includes the hold.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            loop {
                if std::io::Read::read_exact(&mut s, &mut buf).is_err() {
                    return;
                }
                let mut w = s.try_clone().unwrap();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(30));
                    let _ = std::io::Write::write_all(&mut w, &buf);
                });
            }
        });
        let sources = SourcePool::new(addr, 1);
        let mut t = Tunnel::direct(ClientStream::connect(addr, None, &sources).unwrap());
        let p = PingParams {
            message: 64,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(200),
            rate: 200.0,
        };
        let (h, sent, received) = open_loop(&mut t, &p).unwrap();
        assert!((35..=45).contains(&sent), "{sent}");
        assert_eq!(received, sent);
        assert!(
            h.value_at_quantile(0.5) >= 30_000_000,
            "{}",
            h.value_at_quantile(0.5)
        );
    }

    #[test]
    fn a_dead_target_fails_every_direct_iteration_with_a_reason() {
        let dead = crate::login_launch::farm::free_loopback_addr().unwrap();
        let sources = SourcePool::new(dead, 1);
        let route = Route {
            kind: PathKind::Direct,
            addr: dead,
            tls: None,
        };
        let tokens = vec![String::new()];
        let p = OpenPhase {
            route: &route,
            tokens: &tokens,
            resource: "x",
            warmup: Duration::ZERO,
            duration: Duration::from_millis(100),
            payload: 8,
            sources: &sources,
        };
        let mut calls = Vec::new();
        let t = run_opens(&p, &mut |open| calls.push(open));
        assert_eq!(t.opens, 0);
        assert!(
            t.errors.get("connect").copied().unwrap_or(0) > 0,
            "{:?}",
            t.errors
        );
        assert!(t.first_error.unwrap().starts_with("connect"));
        assert_eq!(calls, [true, false]);
    }
}
