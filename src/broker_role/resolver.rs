//! Host names in broker replies, looked up off the data plane.
//!
//! A broker names the session host of a `redeemed` or `host_chosen` reply by address in the
//! common case, but a farm file may name it by DNS name. getaddrinfo(3) blocks, for seconds
//! when a name server is slow or gone, so it must run neither on a worker (every session of
//! that worker would stall) nor on the control thread (every other answer would wait): a
//! small pool of lookup threads does it, and delivers the answer to the worker when done.
//! An address is filled in at once, without a thread.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::OnceLock;

use crossbeam_channel::{unbounded, Sender};

use super::client::{Answer, AnswerSink};
use gatehouse_control::message::Reply;

/// Lookup threads: a slow name holds up at most this many others.
const THREADS: usize = 4;

/// Looks a name up (getaddrinfo, so /etc/hosts and DNS).
pub type Lookup = fn(&str, u16) -> Option<SocketAddr>;

/// A pool of lookup threads.
#[derive(Clone)]
pub struct Resolver {
    tx: Sender<Job>,
}

/// One answer waiting for its host's address.
struct Job {
    host: String,
    port: u16,
    answer: Answer,
    sink: AnswerSink,
}

impl Resolver {
    /// Starts `threads` threads that look names up with `lookup`.
    pub fn start(threads: usize, lookup: Lookup) -> Resolver {
        let (tx, rx) = unbounded::<Job>();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("resolver-{i}"))
                .spawn(move || {
                    for mut job in rx.iter() {
                        let address = lookup(&job.host, job.port);
                        if address.is_none() {
                            tracing::warn!(host = %job.host, "session host name does not resolve");
                        }
                        if let Ok(reply) = &mut job.answer.result {
                            reply.host_address = address;
                        }
                        job.sink.send(job.answer);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a resolver thread: {e}");
            }
        }
        Resolver { tx }
    }

    /// The process's pool (started on first use).
    pub fn shared() -> &'static Resolver {
        static SHARED: OnceLock<Resolver> = OnceLock::new();
        SHARED.get_or_init(|| Resolver::start(THREADS, system_lookup))
    }

    /// Fills in the address of the host `answer` names, if it names one, and hands it to
    /// `sink`: at once for an address, from a lookup thread for a name.
    pub fn complete(&self, mut answer: Answer, sink: &AnswerSink) {
        let Some((host, port)) = host_of(&answer) else {
            return sink.send(answer);
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            if let Ok(reply) = &mut answer.result {
                reply.host_address = Some(SocketAddr::new(ip, port));
            }
            return sink.send(answer);
        }
        let job = Job {
            host,
            port,
            answer,
            sink: sink.clone(),
        };
        if let Err(e) = self.tx.send(job) {
            // No lookup thread could be started: the answer goes on without an address.
            let job = e.into_inner();
            job.sink.send(job.answer);
        }
    }
}

/// The host and port a reply names, for the replies that lead to a connect.
fn host_of(answer: &Answer) -> Option<(String, u16)> {
    match &answer.result.as_ref().ok()?.reply {
        Reply::Redeemed(r) => Some((r.host.clone(), r.port)),
        Reply::HostChosen(h) => Some((h.host.clone(), h.port)),
        _ => None,
    }
}

/// getaddrinfo(3), the first address.
fn system_lookup(host: &str, port: u16) -> Option<SocketAddr> {
    (host, port).to_socket_addrs().ok()?.next()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::broker_role::client::BrokerReply;
    use gatehouse_control::message::HostChosen;

    fn chosen(tag: u64, host: &str) -> Answer {
        Answer {
            tag,
            result: Ok(BrokerReply {
                broker: "b".into(),
                reply: Reply::HostChosen(HostChosen {
                    host: host.into(),
                    port: 3389,
                }),
                host_address: None,
            }),
        }
    }

    fn slow_lookup(host: &str, port: u16) -> Option<SocketAddr> {
        std::thread::sleep(Duration::from_millis(300));
        (host == "slow.example").then(|| SocketAddr::from(([10, 0, 0, 7], port)))
    }

    fn address(answer: &Answer) -> Option<SocketAddr> {
        answer.result.as_ref().unwrap().host_address
    }

    #[test]
    fn an_address_is_filled_at_once_and_a_slow_name_holds_nothing_up() {
        let resolver = Resolver::start(2, slow_lookup);
        let (tx, rx) = unbounded();
        let sink = AnswerSink::new(tx, None);
        let start = Instant::now();
        resolver.complete(chosen(1, "slow.example"), &sink);
        resolver.complete(chosen(2, "unknown.example"), &sink);
        resolver.complete(chosen(3, "192.0.2.9"), &sink);
        // The caller was not held up by the lookups, and the address went first.
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "{:?}",
            start.elapsed()
        );
        let first = rx.recv_timeout(Duration::from_millis(100)).unwrap();
        assert_eq!(first.tag, 3);
        assert_eq!(address(&first), Some(SocketAddr::from(([192, 0, 2, 9], 3389))));
        let mut rest: Vec<Answer> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(2)).unwrap())
            .collect();
        rest.sort_by_key(|a| a.tag);
        assert_eq!(address(&rest[0]), Some(SocketAddr::from(([10, 0, 0, 7], 3389))));
        // A name that does not resolve arrives without an address (the worker answers 502).
        assert_eq!(address(&rest[1]), None);
        println!("lookups done after {:?}", start.elapsed());
    }

    #[test]
    fn other_replies_pass_straight_through() {
        let resolver = Resolver::start(1, slow_lookup);
        let (tx, rx) = unbounded();
        let sink = AnswerSink::new(tx, None);
        let failed = Answer {
            tag: 9,
            result: Err(crate::broker_role::client::ClientFailure::NoBroker),
        };
        resolver.complete(failed, &sink);
        assert_eq!(rx.recv_timeout(Duration::from_millis(50)).unwrap().tag, 9);
    }
}
