//! The gateway's control client: connections to a list of brokers (primary first), failover
//! when the one in use dies, reconnect with backoff, and a request/answer API for mio
//! workers over crossbeam channels with a `mio::Waker`.
//!
//! Threads: one control thread that owns the requests in flight and picks the broker, and
//! one link thread per broker that keeps its connection up (keepalive, backoff) and carries
//! frames. Every link stays connected, so failover is only a change of which link the
//! control thread sends to: it happens as soon as the link thread sees the connection die
//! (a reset at once, a hung broker after the keepalive timeout). Requests in flight on a
//! dead broker are answered with [`ClientFailure::BrokerLost`], never dropped.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use parking_lot::Mutex;
use rustls::ClientConfig;

use gatehouse_control::frame::{KeepaliveConfig, Role, DEFAULT_REQUEST_TIMEOUT};
use gatehouse_control::message::{self, Event, Inbound, Reply, Request};

use super::agent::{MAX_BACKOFF, MIN_BACKOFF};
use super::link::{self, our_hello, Link};
use super::resolver::Resolver;

/// How a gateway's control client is set up.
#[derive(Clone)]
pub struct ClientSetup {
    /// This gateway's node name (hello; must match its farm certificate).
    pub node: String,
    /// Brokers' 20002 addresses, primary first.
    pub brokers: Vec<SocketAddr>,
    /// Mutual TLS (from [`super::farm_pki::MemberTls::client_config`]).
    pub tls: Arc<ClientConfig>,
    /// A request with no answer after this long fails with [`ClientFailure::Timeout`]; it
    /// also bounds how long a request waits for a first broker to come up.
    pub request_timeout: Duration,
    /// Keepalive timing of every link.
    pub keepalive: KeepaliveConfig,
}

impl ClientSetup {
    /// A setup with the protocol's default timings.
    pub fn new(node: &str, brokers: Vec<SocketAddr>, tls: Arc<ClientConfig>) -> Self {
        Self {
            node: node.to_string(),
            brokers,
            tls,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            keepalive: KeepaliveConfig::default(),
        }
    }
}

/// Where a worker wants its answers: a channel, and the waker of its `mio::Poll`.
#[derive(Clone)]
pub struct AnswerSink {
    tx: Sender<Answer>,
    waker: Option<Arc<mio::Waker>>,
}

impl AnswerSink {
    /// Answers go to `tx`; `waker` (the worker's) is woken after each.
    pub fn new(tx: Sender<Answer>, waker: Option<Arc<mio::Waker>>) -> Self {
        Self { tx, waker }
    }

    /// Hands `answer` to the worker; a reply that names a session host gets the host's
    /// address first (a name is looked up on a resolver thread, see `super::resolver`).
    fn deliver(&self, answer: Answer) {
        Resolver::shared().complete(answer, self);
    }

    /// Hands `answer` to the worker as it is, and wakes it.
    pub(super) fn send(&self, answer: Answer) {
        if self.tx.send(answer).is_ok() {
            if let Some(w) = &self.waker {
                let _ = w.wake();
            }
        }
    }
}

/// The answer to one submitted request.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The worker's tag given at submission.
    pub tag: u64,
    /// The broker's reply, or why there is none.
    pub result: Result<BrokerReply, ClientFailure>,
}

/// A reply and the broker that produced it.
#[derive(Debug, Clone)]
pub struct BrokerReply {
    /// The broker's node name.
    pub broker: String,
    /// The reply (a `refused` is a reply, not a failure).
    pub reply: Reply,
    /// The address of the session host a `redeemed` or `host_chosen` reply names, looked up
    /// before the worker sees it; `None` for other replies and for a name that does not
    /// resolve.
    pub host_address: Option<SocketAddr>,
}

/// Why a request got no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFailure {
    /// No broker was reachable within the request timeout.
    NoBroker,
    /// The broker a request was addressed to (a ticket's issuer) is not connected.
    BrokerUnavailable {
        /// The broker's node name.
        broker: String,
    },
    /// The request names a broker no link of this gateway has known (a made-up or
    /// mistyped token).
    UnknownBroker,
    /// The broker died with the request in flight (connection reset, keepalive timeout).
    BrokerLost {
        /// The broker's node name.
        broker: String,
        /// Why its link ended.
        reason: String,
    },
    /// The broker did not answer within the request timeout.
    Timeout {
        /// The broker's node name.
        broker: String,
    },
    /// The broker answered with something that does not answer the request.
    BadResponse {
        /// The broker's node name.
        broker: String,
        /// What was wrong.
        detail: String,
    },
    /// The client is shutting down.
    Stopped,
}

impl fmt::Display for ClientFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoBroker => f.write_str("no broker reachable"),
            Self::BrokerUnavailable { broker } => write!(f, "broker {broker} is not connected"),
            Self::UnknownBroker => f.write_str("no broker of this farm has that name"),
            Self::BrokerLost { broker, reason } => write!(f, "broker {broker} lost: {reason}"),
            Self::Timeout { broker } => write!(f, "broker {broker} did not answer in time"),
            Self::BadResponse { broker, detail } => write!(f, "bad response from {broker}: {detail}"),
            Self::Stopped => f.write_str("control client stopped"),
        }
    }
}

enum Command {
    Submit {
        tag: u64,
        request: Request,
        sink: AnswerSink,
        /// A broker's node name, or the one in use.
        target: Option<String>,
    },
    Stop,
}

enum LinkEvent {
    Up {
        index: usize,
        name: String,
    },
    Down {
        index: usize,
        reason: String,
    },
    Response {
        index: usize,
        id: u64,
        reply: Result<Reply, String>,
    },
    Draining {
        index: usize,
    },
}

struct LinkCmd {
    id: u64,
    request: Request,
}

/// The control thread's end of one link thread: its command queue and the socket that wakes
/// it (one byte per command; the link thread drains it).
struct LinkHandle {
    commands: Sender<LinkCmd>,
    wake: std::os::unix::net::UnixStream,
}

impl LinkHandle {
    fn send(&self, cmd: LinkCmd) {
        if self.commands.send(cmd).is_ok() {
            // Non-blocking: a full wake socket already means "wake up".
            let _ = (&self.wake).write(&[1]);
        }
    }
}

/// The gateway's control client; cheap to share by reference among threads.
pub struct ControlClient {
    commands: Sender<Command>,
    connected: Arc<Mutex<Vec<Option<String>>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl ControlClient {
    /// Starts the control thread and one link thread per broker.
    pub fn start(setup: ClientSetup) -> Result<ControlClient, String> {
        if setup.brokers.is_empty() {
            return Err("the control client needs at least one broker".into());
        }
        our_hello(Role::Gateway, &setup.node)?;
        let stop = Arc::new(AtomicBool::new(false));
        let connected = Arc::new(Mutex::new(vec![None; setup.brokers.len()]));
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let mut threads = Vec::new();
        let mut links = Vec::new();
        for (index, addr) in setup.brokers.iter().enumerate() {
            let (tx, rx) = crossbeam_channel::unbounded();
            let (wake_tx, wake_rx) =
                Link::wake_pair().map_err(|e| format!("cannot make a control link wake socket: {e}"))?;
            links.push(LinkHandle {
                commands: tx,
                wake: wake_tx,
            });
            let ctx = LinkThread {
                index,
                addr: *addr,
                setup: setup.clone(),
                events: events_tx.clone(),
                commands: rx,
                wake: wake_rx,
                stop: stop.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("control-link-{addr}"))
                    .spawn(move || ctx.run())
                    .map_err(|e| format!("cannot start a control link thread: {e}"))?,
            );
        }
        let control = Control {
            links,
            up: vec![None; setup.brokers.len()],
            connected: connected.clone(),
            seen: std::collections::HashSet::new(),
            draining: vec![false; setup.brokers.len()],
            in_flight: HashMap::new(),
            waiting: VecDeque::new(),
            none_up_since: Some(Instant::now()),
            next_id: 1,
            request_timeout: setup.request_timeout,
        };
        threads.push(
            std::thread::Builder::new()
                .name("control".into())
                .spawn(move || control.run(cmd_rx, events_rx))
                .map_err(|e| format!("cannot start the control thread: {e}"))?,
        );
        Ok(ControlClient {
            commands: cmd_tx,
            connected,
            stop,
            threads,
        })
    }

    /// Submits a request; its [`Answer`] (with `tag`) arrives on `sink`, exactly once.
    pub fn submit(&self, tag: u64, request: Request, sink: &AnswerSink) {
        self.send(tag, request, sink, None);
    }

    /// Submits a request to the broker named `broker` (a `redeem_ticket` goes to the ticket's
    /// issuer, PROTOCOL.md §7.1); if that broker is not connected the answer is
    /// [`ClientFailure::BrokerUnavailable`] at once. Never retried on another broker.
    pub fn submit_to(&self, broker: &str, tag: u64, request: Request, sink: &AnswerSink) {
        self.send(tag, request, sink, Some(broker.to_string()));
    }

    /// [`ControlClient::submit_to`], waiting for the answer.
    pub fn call_to(&self, broker: &str, request: Request) -> Result<BrokerReply, ClientFailure> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.submit_to(broker, 0, request, &AnswerSink::new(tx, None));
        rx.recv().map_err(|_| ClientFailure::Stopped)?.result
    }

    fn send(&self, tag: u64, request: Request, sink: &AnswerSink, target: Option<String>) {
        let sent = self.commands.send(Command::Submit {
            tag,
            request,
            sink: sink.clone(),
            target,
        });
        if sent.is_err() {
            sink.deliver(Answer {
                tag,
                result: Err(ClientFailure::Stopped),
            });
        }
    }

    /// Submits a request and waits for its answer (admin tools and tests; workers use
    /// [`ControlClient::submit`]).
    pub fn call(&self, request: Request) -> Result<BrokerReply, ClientFailure> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.submit(0, request, &AnswerSink::new(tx, None));
        rx.recv().map_err(|_| ClientFailure::Stopped)?.result
    }

    /// Node names of the brokers connected now, in list order (admin API, tests).
    pub fn connected_brokers(&self) -> Vec<String> {
        self.connected.lock().iter().flatten().cloned().collect()
    }

    /// Stops every thread; requests still in flight are answered `Stopped`.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.commands.send(Command::Stop);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ControlClient {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct InFlight {
    tag: u64,
    sink: AnswerSink,
    broker: usize,
    request: Request,
    deadline: Instant,
    /// Addressed to this broker: never retried elsewhere.
    targeted: bool,
}

struct Waiting {
    tag: u64,
    sink: AnswerSink,
    request: Request,
    deadline: Instant,
}

struct Control {
    links: Vec<LinkHandle>,
    /// The node name of each broker whose link is up.
    up: Vec<Option<String>>,
    /// A copy of `up` for [`ControlClient::connected_brokers`].
    connected: Arc<Mutex<Vec<Option<String>>>>,
    /// Every name a broker's link has been up under: a token naming another broker was
    /// not made by this farm.
    seen: std::collections::HashSet<String>,
    draining: Vec<bool>,
    in_flight: HashMap<u64, InFlight>,
    /// Requests submitted while no broker was up.
    waiting: VecDeque<Waiting>,
    /// Since when no broker's link has been up (since the start until the first one is);
    /// `None` while one is.
    none_up_since: Option<Instant>,
    next_id: u64,
    request_timeout: Duration,
}

impl Control {
    fn run(mut self, commands: Receiver<Command>, events: Receiver<LinkEvent>) {
        loop {
            let tick = crossbeam_channel::after(Duration::from_millis(50));
            select! {
                recv(commands) -> cmd => match cmd {
                    Ok(Command::Submit { tag, request, sink, target: None }) => self.submit(tag, request, sink, Instant::now()),
                    Ok(Command::Submit { tag, request, sink, target: Some(name) }) => self.submit_to(&name, tag, request, sink, Instant::now()),
                    Ok(Command::Stop) | Err(_) => break,
                },
                recv(events) -> ev => if let Ok(ev) = ev { self.on_event(ev) },
                recv(tick) -> _ => {},
            }
            self.expire(Instant::now());
        }
        for (_, f) in self.in_flight.drain() {
            f.sink.deliver(Answer {
                tag: f.tag,
                result: Err(ClientFailure::Stopped),
            });
        }
        for w in self.waiting.drain(..) {
            w.sink.deliver(Answer {
                tag: w.tag,
                result: Err(ClientFailure::Stopped),
            });
        }
    }

    /// The broker in use: the first of the list that is up and not draining.
    fn active(&self) -> Option<usize> {
        (0..self.up.len()).find(|&i| self.up[i].is_some() && !self.draining[i])
    }

    fn submit_to(&mut self, name: &str, tag: u64, request: Request, sink: AnswerSink, now: Instant) {
        let Some(broker) = self.up.iter().position(|n| n.as_deref() == Some(name)) else {
            let failure = if self.seen.contains(name) {
                ClientFailure::BrokerUnavailable {
                    broker: name.to_string(),
                }
            } else {
                // The name came from the client (a token): not repeated anywhere.
                ClientFailure::UnknownBroker
            };
            sink.deliver(Answer {
                tag,
                result: Err(failure),
            });
            return;
        };
        self.send_to(broker, tag, request, sink, now, true);
    }

    fn submit(&mut self, tag: u64, request: Request, sink: AnswerSink, now: Instant) {
        let Some(broker) = self.active() else {
            // A request waits for a link that comes up (a broker restarting, the links of
            // a starting gateway), but not when none has been up for a whole request
            // timeout: it would wait that long in vain, as the one before it did.
            if self
                .none_up_since
                .is_some_and(|t| now >= t + self.request_timeout)
            {
                sink.deliver(Answer {
                    tag,
                    result: Err(ClientFailure::NoBroker),
                });
                return;
            }
            self.waiting.push_back(Waiting {
                tag,
                sink,
                request,
                deadline: now + self.request_timeout,
            });
            return;
        };
        self.send_to(broker, tag, request, sink, now, false);
    }

    fn send_to(
        &mut self,
        broker: usize,
        tag: u64,
        request: Request,
        sink: AnswerSink,
        now: Instant,
        targeted: bool,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        self.links[broker].send(LinkCmd {
            id,
            request: request.clone(),
        });
        self.in_flight.insert(
            id,
            InFlight {
                tag,
                sink,
                broker,
                request,
                deadline: now + self.request_timeout,
                targeted,
            },
        );
    }

    /// Sends a request again, on link `broker`, under a new id; it keeps its deadline.
    fn resend(&mut self, broker: usize, f: InFlight) {
        let id = self.next_id;
        self.next_id += 1;
        self.links[broker].send(LinkCmd {
            id,
            request: f.request.clone(),
        });
        self.in_flight.insert(id, InFlight { broker, ..f });
    }

    fn on_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Up { index, name } => {
                tracing::info!(broker = %name, "control link up");
                self.seen.insert(name.clone());
                self.up[index] = Some(name);
                self.none_up_since = None;
                *self.connected.lock() = self.up.clone();
                self.draining[index] = false;
                let now = Instant::now();
                for w in std::mem::take(&mut self.waiting) {
                    self.submit(w.tag, w.request, w.sink, now);
                }
            }
            LinkEvent::Down { index, reason } => {
                let name = self.up[index]
                    .take()
                    .unwrap_or_else(|| format!("broker #{index}"));
                *self.connected.lock() = self.up.clone();
                if self.up.iter().all(Option::is_none) {
                    self.none_up_since.get_or_insert_with(Instant::now);
                }
                tracing::warn!(broker = %name, "control link down: {reason}");
                let lost: Vec<u64> = self
                    .in_flight
                    .iter()
                    .filter(|(_, f)| f.broker == index)
                    .map(|(id, _)| *id)
                    .collect();
                let next = self.active();
                for id in lost {
                    let Some(f) = self.in_flight.remove(&id) else {
                        continue;
                    };
                    // A request the broker may or may not have carried out moves to the
                    // next broker only when doing it twice harms nobody (PROTOCOL.md §4).
                    if let Some(next) = next.filter(|_| !f.targeted && f.request.safe_to_repeat()) {
                        tracing::info!(broker = %name, request = f.request.name(), "retrying on the next broker");
                        self.resend(next, f);
                        continue;
                    }
                    f.sink.deliver(Answer {
                        tag: f.tag,
                        result: Err(ClientFailure::BrokerLost {
                            broker: name.clone(),
                            reason: reason.clone(),
                        }),
                    });
                }
            }
            LinkEvent::Draining { index } => {
                tracing::info!(broker = ?self.up[index], "broker draining: moving to the next one");
                self.draining[index] = true;
            }
            LinkEvent::Response { index, id, reply } => {
                match self.in_flight.get(&id) {
                    None => return, // late answer to a request already failed
                    Some(f) if f.broker != index => {
                        // Request ids are this client's, one sequence for every link: a
                        // broker answering an id it was not sent must not answer for the
                        // broker that was (a login, a ticket's redemption).
                        let name = self.up[index]
                            .clone()
                            .unwrap_or_else(|| format!("broker #{index}"));
                        tracing::warn!(broker = %name, id, "answer to a request sent to another broker: dropped");
                        return;
                    }
                    Some(_) => {}
                }
                let Some(f) = self.in_flight.remove(&id) else {
                    return;
                };
                let broker = self.up[index].clone().unwrap_or_default();
                let result = match reply {
                    Ok(reply) if f.request.accepts(&reply) => {
                        // `draining` and `internal` may be retried on the next broker once.
                        if let Reply::Refused(r) = &reply {
                            if r.reason.retry_elsewhere() && !f.targeted {
                                if let Some(next) = self.active().filter(|&n| n != index) {
                                    tracing::info!(broker = %broker, reason = r.reason.as_str(), "retrying on the next broker");
                                    self.resend(next, f);
                                    return;
                                }
                            }
                        }
                        Ok(BrokerReply {
                            broker,
                            reply,
                            host_address: None,
                        })
                    }
                    Ok(reply) => Err(ClientFailure::BadResponse {
                        broker,
                        detail: format!("{} does not answer {}", reply.name(), f.request.name()),
                    }),
                    Err(detail) => Err(ClientFailure::BadResponse { broker, detail }),
                };
                f.sink.deliver(Answer { tag: f.tag, result });
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(f) = self.in_flight.remove(&id) {
                let broker = self.up[f.broker].clone().unwrap_or_default();
                f.sink.deliver(Answer {
                    tag: f.tag,
                    result: Err(ClientFailure::Timeout { broker }),
                });
            }
        }
        while self.waiting.front().is_some_and(|w| w.deadline <= now) {
            if let Some(w) = self.waiting.pop_front() {
                w.sink.deliver(Answer {
                    tag: w.tag,
                    result: Err(ClientFailure::NoBroker),
                });
            }
        }
    }
}

struct LinkThread {
    index: usize,
    addr: SocketAddr,
    setup: ClientSetup,
    events: Sender<LinkEvent>,
    commands: Receiver<LinkCmd>,
    /// Readable when the control thread queued a command.
    wake: std::os::unix::net::UnixStream,
    stop: Arc<AtomicBool>,
}

impl LinkThread {
    fn run(self) {
        let mut backoff = MIN_BACKOFF;
        let mut failing = false;
        while !self.stop.load(Ordering::Relaxed) {
            match self.connect() {
                Ok(link) => {
                    backoff = MIN_BACKOFF;
                    failing = false;
                    // Requests queued while down were already failed by the control thread.
                    while self.commands.try_recv().is_ok() {}
                    let _ = self.events.send(LinkEvent::Up {
                        index: self.index,
                        name: link.peer_name().to_string(),
                    });
                    let reason = self.serve(link);
                    let _ = self.events.send(LinkEvent::Down {
                        index: self.index,
                        reason,
                    });
                }
                // The first failure of a streak is a warning (a gateway that cannot reach
                // its broker must say so before a user's 503); the retries are debug.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(broker = %self.addr, "control link cannot connect: {e}; retrying every {MAX_BACKOFF:?} at most");
                }
                Err(e) => tracing::debug!(broker = %self.addr, "control link: {e}; retry in {backoff:?}"),
            }
            let end = Instant::now() + backoff;
            while !self.stop.load(Ordering::Relaxed) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn connect(&self) -> Result<Link, String> {
        let sock =
            TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("gatehouse-broker")
            .expect("a constant DNS name is valid");
        let conn = rustls::ClientConnection::new(self.setup.tls.clone(), name).map_err(|e| e.to_string())?;
        let hello = our_hello(Role::Gateway, &self.setup.node)?;
        link::establish(
            sock,
            rustls::Connection::Client(conn),
            &hello,
            Role::Broker,
            self.setup.keepalive,
        )
        .map_err(|e| e.to_string())
    }

    /// Carries frames until the link dies; returns why.
    fn serve(&self, mut link: Link) -> String {
        while !self.stop.load(Ordering::Relaxed) {
            while let Ok(cmd) = self.commands.try_recv() {
                let mut out = Vec::new();
                match message::encode_request(cmd.id, &cmd.request, link.max_frame_bytes(), &mut out) {
                    Ok(()) => {
                        if let Err(e) = link.send(&out) {
                            return e.to_string();
                        }
                    }
                    Err(e) => {
                        let _ = self.events.send(LinkEvent::Response {
                            index: self.index,
                            id: cmd.id,
                            reply: Err(format!("request not sent: {e}")),
                        });
                    }
                }
            }
            // Sleep until the broker sends, a request is queued, or (for keepalive and the stop
            // flag) 50 ms pass.
            match link.wait_readable(&self.wake, Duration::from_millis(50)) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return e.to_string(),
            }
            let frames = match link.poll(Duration::from_millis(1)) {
                Ok(f) => f,
                Err(e) => return e.to_string(),
            };
            for frame in frames {
                let event = match message::decode(&frame) {
                    Ok(Inbound::Response { id, reply }) => LinkEvent::Response {
                        index: self.index,
                        id,
                        reply: Ok(reply),
                    },
                    Ok(Inbound::Event(Event::Draining)) => LinkEvent::Draining { index: self.index },
                    Ok(other) => {
                        tracing::debug!(broker = %self.addr, "ignored frame: {other:?}");
                        continue;
                    }
                    Err(e) if e.kind() == gatehouse_control::frame::FrameKind::Response => {
                        LinkEvent::Response {
                            index: self.index,
                            id: e.request_id(),
                            reply: Err(e.to_string()),
                        }
                    }
                    Err(e) => {
                        tracing::info!(broker = %self.addr, "bad frame ignored: {e}");
                        continue;
                    }
                };
                let _ = self.events.send(event);
            }
        }
        link.close();
        "client stopped".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker_role::farm_pki::{farm_init, farm_issue, MemberRole, MemberTls, CA_CERT_FILE};

    #[test]
    fn no_broker_is_an_answer_and_wakes_the_worker() {
        let dir = tempfile::tempdir().unwrap();
        farm_init(dir.path()).unwrap();
        let files = farm_issue(dir.path(), "gw-a", MemberRole::Gateway).unwrap();
        let tls = MemberTls {
            cert_file: files.cert,
            key_file: files.key,
            ca_file: dir.path().join(CA_CERT_FILE),
        }
        .client_config()
        .unwrap();
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut setup = ClientSetup::new("gw-a", vec![SocketAddr::from(([127, 0, 0, 1], port))], tls);
        setup.request_timeout = Duration::from_millis(300);
        let client = ControlClient::start(setup).unwrap();

        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(7)).unwrap());
        let (tx, rx) = crossbeam_channel::unbounded();
        let sink = AnswerSink::new(tx, Some(waker));
        let request = Request::ListResources(gatehouse_control::message::ListResources {
            session_token: gatehouse_control::message::Secret::new("t"),
        });
        let start = Instant::now();
        client.submit(42, request, &sink);
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(5))).unwrap();
        assert!(
            events.iter().any(|e| e.token() == mio::Token(7)),
            "worker not woken"
        );
        let answer = rx.try_recv().expect("answer delivered before the wake");
        assert_eq!(answer.tag, 42);
        assert_eq!(answer.result.unwrap_err(), ClientFailure::NoBroker);
        assert!(start.elapsed() >= Duration::from_millis(300));
        // No link for a whole request timeout now: the next request is not kept waiting.
        let start = Instant::now();
        let request = Request::ListResources(gatehouse_control::message::ListResources {
            session_token: gatehouse_control::message::Secret::new("t"),
        });
        client.submit(43, request, &sink);
        let answer = rx.recv_timeout(Duration::from_secs(5)).expect("an answer");
        let took = start.elapsed();
        assert_eq!(
            (answer.tag, answer.result.unwrap_err()),
            (43, ClientFailure::NoBroker)
        );
        assert!(took < Duration::from_millis(150), "kept waiting {took:?}");
        client.stop();
    }

    /// A control thread's state over two links, b1 and b2, both up; with what each link was
    /// asked to send.
    fn two_links() -> (Control, [crossbeam_channel::Receiver<LinkCmd>; 2]) {
        let link = || {
            let (tx, rx) = crossbeam_channel::unbounded();
            let (wake, _other) = std::os::unix::net::UnixStream::pair().unwrap();
            (LinkHandle { commands: tx, wake }, rx)
        };
        let ((l1, r1), (l2, r2)) = (link(), link());
        let control = Control {
            links: vec![l1, l2],
            up: vec![Some("b1".into()), Some("b2".into())],
            connected: Arc::new(Mutex::new(Vec::new())),
            seen: Default::default(),
            draining: vec![false, false],
            in_flight: HashMap::new(),
            waiting: VecDeque::new(),
            none_up_since: None,
            next_id: 8,
            request_timeout: Duration::from_secs(5),
        };
        (control, [r1, r2])
    }

    #[test]
    fn a_host_choice_lost_with_its_link_is_asked_again_of_the_next_broker() {
        let (mut control, sent) = two_links();
        let (tx, rx) = crossbeam_channel::unbounded();
        let sink = AnswerSink::new(tx, None);
        let now = Instant::now();
        let choose = Request::ChooseHost(gatehouse_control::message::ChooseHost {
            resource: None,
            site: "main".into(),
            user_hint: Some("alice".into()),
            routing_token: None,
        });
        control.submit(1, choose.clone(), sink.clone(), now);
        let login = Request::Login(gatehouse_control::message::Login {
            user: "alice".into(),
            password: gatehouse_control::message::Secret::new("pw"),
            second_factor: None,
            client_addr: "192.0.2.10:50000".parse().unwrap(),
            wait_ms: Some(5_000),
        });
        control.submit(2, login, sink, now);
        assert_eq!(
            sent[0].try_iter().count(),
            2,
            "both went to b1, the first broker up"
        );
        // b1 hangs and its keepalive gives up: the host choice moves to b2, the login fails.
        control.on_event(LinkEvent::Down {
            index: 0,
            reason: "no pong for 3000 ms: peer dead".into(),
        });
        let lost = rx.try_recv().expect("the login's failure");
        assert_eq!(lost.tag, 2);
        assert!(
            matches!(lost.result, Err(ClientFailure::BrokerLost { ref broker, .. }) if broker == "b1"),
            "{:?}",
            lost.result
        );
        assert!(rx.try_recv().is_err(), "the host choice failed too");
        let resent: Vec<LinkCmd> = sent[1].try_iter().collect();
        assert_eq!(resent.len(), 1);
        assert_eq!(resent[0].request, choose);
        // b2's answer is the host choice's answer.
        control.on_event(LinkEvent::Response {
            index: 1,
            id: resent[0].id,
            reply: Err("from b2".into()),
        });
        let answer = rx.try_recv().expect("b2's answer delivered");
        assert_eq!(answer.tag, 1);
        assert!(
            matches!(answer.result, Err(ClientFailure::BadResponse { ref broker, .. }) if broker == "b2"),
            "{:?}",
            answer.result
        );
        assert!(control.in_flight.is_empty());
    }

    #[test]
    fn an_answer_counts_only_from_the_broker_the_request_went_to() {
        let (mut control, _sent) = two_links();
        let (tx, rx) = crossbeam_channel::unbounded();
        control.in_flight.insert(
            7,
            InFlight {
                tag: 70,
                sink: AnswerSink::new(tx, None),
                broker: 0,
                request: Request::ListResources(gatehouse_control::message::ListResources {
                    session_token: gatehouse_control::message::Secret::new("t"),
                }),
                deadline: Instant::now() + Duration::from_secs(5),
                targeted: true,
            },
        );
        // b2 answers id 7, which went to b1: dropped, the request still waits for b1.
        control.on_event(LinkEvent::Response {
            index: 1,
            id: 7,
            reply: Err("forged".into()),
        });
        assert!(
            rx.try_recv().is_err(),
            "an answer from the wrong broker was delivered"
        );
        assert!(control.in_flight.contains_key(&7));
        control.on_event(LinkEvent::Response {
            index: 0,
            id: 7,
            reply: Err("from b1".into()),
        });
        let answer = rx.try_recv().expect("b1's answer delivered");
        assert_eq!(answer.tag, 70);
        assert!(
            matches!(answer.result, Err(ClientFailure::BadResponse { ref broker, ref detail }) if broker == "b1" && detail == "from b1"),
            "{:?}",
            answer.result
        );
        assert!(control.in_flight.is_empty());
    }
}
