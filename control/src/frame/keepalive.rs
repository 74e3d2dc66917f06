//! The keepalive timer of one connection (PROTOCOL.md §5): when to ping, and when the peer
//! counts as dead because its pongs stopped.
//!
//! Only pongs prove the peer alive. Other frames do not: a peer whose process is stopped
//! (SIGSTOP) or wedged can still have frames in flight, and its kernel keeps the TCP
//! connection up, so only an answer produced by its event loop shows that it is working.
//! Answering the peer's pings is stateless (reply `Pong` with the same sequence number at
//! once) and does not involve this type.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Outstanding pings remembered at most; older ones are forgotten (the timeout fires first
/// with any sane configuration).
const MAX_OUTSTANDING_PINGS: usize = 64;

/// Keepalive timing of a connection. Both sides ping; each judges the other on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveConfig {
    /// Time between two pings (default 1 s).
    pub interval: Duration,
    /// How long the oldest unanswered ping may wait for its pong before the peer is declared
    /// dead (default 3 s: three missed pongs).
    pub timeout: Duration,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        }
    }
}

/// What the shell should do now, from [`Keepalive::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepaliveAction {
    /// Send `Ping` with this sequence number as its request id, then poll again.
    SendPing {
        /// The sequence number to put in the ping's request id field.
        seq: u64,
    },
    /// Nothing to do before `until`; arm a timer for it.
    Wait {
        /// The next instant at which `poll` has work.
        until: Instant,
    },
    /// The peer missed its pongs: close the connection and fail its requests over.
    PeerDead {
        /// How long the oldest unanswered ping has waited.
        unanswered_for: Duration,
    },
}

/// What a received pong meant, from [`Keepalive::on_pong`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PongOutcome {
    /// The pong answered an outstanding ping (and any older ones).
    Answered {
        /// Round-trip time of the answered ping.
        rtt: Duration,
    },
    /// The pong matches no outstanding ping (late duplicate or a confused peer); count it and
    /// carry on.
    Unexpected,
}

/// Sans-IO keepalive state of one connection, created when the hello exchange completes.
#[derive(Debug, Clone)]
pub struct Keepalive {
    config: KeepaliveConfig,
    next_ping_at: Instant,
    last_seq: u64,
    /// Pings sent and not yet answered, oldest first.
    outstanding: VecDeque<(u64, Instant)>,
}

impl Keepalive {
    /// Keepalive for a connection whose hello completed at `now`; the first ping goes out
    /// one interval later.
    pub fn new(config: KeepaliveConfig, now: Instant) -> Self {
        Self {
            config,
            next_ping_at: now + config.interval,
            last_seq: 0,
            outstanding: VecDeque::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> KeepaliveConfig {
        self.config
    }

    /// Decides what to do at `now`. The shell calls it when its timer fires and after it
    /// handles a pong, repeating while it returns `SendPing`.
    pub fn poll(&mut self, now: Instant) -> KeepaliveAction {
        if let Some(&(_, sent)) = self.outstanding.front() {
            let waited = now.saturating_duration_since(sent);
            if waited >= self.config.timeout {
                return KeepaliveAction::PeerDead {
                    unanswered_for: waited,
                };
            }
        }
        if now >= self.next_ping_at {
            self.last_seq += 1;
            if self.outstanding.len() == MAX_OUTSTANDING_PINGS {
                self.outstanding.pop_front();
            }
            self.outstanding.push_back((self.last_seq, now));
            self.next_ping_at = now + self.config.interval;
            return KeepaliveAction::SendPing { seq: self.last_seq };
        }
        let until = match self.outstanding.front() {
            Some(&(_, sent)) => self.next_ping_at.min(sent + self.config.timeout),
            None => self.next_ping_at,
        };
        KeepaliveAction::Wait { until }
    }

    /// Records a pong with sequence number `seq` received at `now`. A pong answers its ping
    /// and every older one (pongs may be coalesced or lost in a restart).
    pub fn on_pong(&mut self, seq: u64, now: Instant) -> PongOutcome {
        let Some(&(_, sent)) = self.outstanding.iter().find(|(s, _)| *s == seq) else {
            return PongOutcome::Unexpected;
        };
        while self.outstanding.front().is_some_and(|&(s, _)| s <= seq) {
            self.outstanding.pop_front();
        }
        PongOutcome::Answered {
            rtt: now.saturating_duration_since(sent),
        }
    }

    /// Pings sent and not yet answered.
    pub fn unanswered(&self) -> usize {
        self.outstanding.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn healthy_peer_is_pinged_every_interval() {
        let t0 = Instant::now();
        let mut ka = Keepalive::new(KeepaliveConfig::default(), t0);
        assert_eq!(
            ka.poll(t0),
            KeepaliveAction::Wait {
                until: t0 + 1000 * MS
            }
        );
        for n in 1..=10u64 {
            let at = t0 + Duration::from_secs(n);
            assert_eq!(ka.poll(at), KeepaliveAction::SendPing { seq: n });
            assert_eq!(
                ka.on_pong(n, at + 20 * MS),
                PongOutcome::Answered { rtt: 20 * MS }
            );
            assert_eq!(ka.unanswered(), 0);
        }
    }

    #[test]
    fn hung_peer_is_declared_dead_after_timeout() {
        let t0 = Instant::now();
        let mut ka = Keepalive::new(KeepaliveConfig::default(), t0);
        let s = Duration::from_secs(1);
        assert_eq!(ka.poll(t0 + s), KeepaliveAction::SendPing { seq: 1 });
        assert_eq!(ka.poll(t0 + 2 * s), KeepaliveAction::SendPing { seq: 2 });
        assert_eq!(ka.poll(t0 + 3 * s), KeepaliveAction::SendPing { seq: 3 });
        // Oldest ping (sent at 1 s) times out at 4 s.
        assert_eq!(
            ka.poll(t0 + 3 * s + 500 * MS),
            KeepaliveAction::Wait { until: t0 + 4 * s }
        );
        assert_eq!(
            ka.poll(t0 + 4 * s),
            KeepaliveAction::PeerDead {
                unanswered_for: 3 * s
            }
        );
    }

    #[test]
    fn pong_answers_older_pings_too() {
        let t0 = Instant::now();
        let mut ka = Keepalive::new(KeepaliveConfig::default(), t0);
        let s = Duration::from_secs(1);
        ka.poll(t0 + s);
        ka.poll(t0 + 2 * s);
        assert_eq!(ka.unanswered(), 2);
        assert_eq!(
            ka.on_pong(2, t0 + 2 * s + 5 * MS),
            PongOutcome::Answered { rtt: 5 * MS }
        );
        assert_eq!(ka.unanswered(), 0);
        // Late pong for ping 1 and a pong for a ping never sent.
        assert_eq!(ka.on_pong(1, t0 + 2 * s), PongOutcome::Unexpected);
        assert_eq!(ka.on_pong(99, t0 + 2 * s), PongOutcome::Unexpected);
        // Not dead at 4.5 s: everything was answered.
        assert!(matches!(
            ka.poll(t0 + 4 * s + 500 * MS),
            KeepaliveAction::SendPing { seq: 3 }
        ));
    }

    #[test]
    fn slow_but_alive_peer_survives() {
        let t0 = Instant::now();
        let mut ka = Keepalive::new(KeepaliveConfig::default(), t0);
        let s = Duration::from_secs(1);
        for n in 1..=20u32 {
            let at = t0 + n * s;
            assert!(!matches!(ka.poll(at), KeepaliveAction::PeerDead { .. }));
            // Each pong arrives 2.5 s late, under the 3 s timeout.
            if n >= 3 {
                let answered = ka.on_pong(u64::from(n - 2), at + 500 * MS);
                assert!(matches!(answered, PongOutcome::Answered { .. }));
            }
        }
    }
}
