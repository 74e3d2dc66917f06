//! The broker's queue of password checks, shared fairly between the gateways that fill it.
//!
//! Checks (argon2id, tens of milliseconds each) wait here for the hash threads. One queue in
//! arrival order let a single gateway in a logon storm, or a faulty one that floods logins,
//! hold every place: the other gateways' users then waited behind it until their requests
//! timed out. Here each peer has a queue of its own, the hash threads take from the peers
//! in turn (round robin, as a fair-queueing scheduler does), and a peer may hold at most a
//! share of the places. A well-behaved gateway's login then waits for about one check per
//! busy peer, whatever the others queued.

use std::collections::VecDeque;

use parking_lot::{Condvar, Mutex};

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every place is taken.
    Full,
    /// This peer holds its whole share.
    PeerShareFull,
    /// The queue was closed (the broker stops).
    Closed,
}

impl Refusal {
    /// The refusal's detail, as the gateway (and its log) sees it.
    pub fn detail(self) -> &'static str {
        match self {
            Refusal::Full => "too many password checks queued",
            Refusal::PeerShareFull => "too many password checks queued from this gateway",
            Refusal::Closed => "password checker stopped",
        }
    }
}

/// A bounded queue of jobs, one FIFO per peer, served round robin.
pub struct FairQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    capacity: usize,
    peer_share: usize,
}

struct State<T> {
    /// Peers with jobs waiting, in the order they are served next.
    peers: VecDeque<(String, VecDeque<T>)>,
    queued: usize,
    closed: bool,
}

impl<T> FairQueue<T> {
    /// A queue of at most `capacity` jobs, at most `peer_share` of them from one peer.
    pub fn new(capacity: usize, peer_share: usize) -> Self {
        FairQueue {
            state: Mutex::new(State {
                peers: VecDeque::new(),
                queued: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            capacity,
            peer_share: peer_share.clamp(1, capacity.max(1)),
        }
    }

    /// Queues `job` for `peer`, or gives it back with the reason it was not queued.
    pub fn push(&self, peer: &str, job: T) -> Result<(), (T, Refusal)> {
        let mut state = self.state.lock();
        if state.closed {
            return Err((job, Refusal::Closed));
        }
        if state.queued >= self.capacity {
            return Err((job, Refusal::Full));
        }
        match state.peers.iter_mut().find(|(p, _)| p == peer) {
            Some((_, jobs)) if jobs.len() >= self.peer_share => return Err((job, Refusal::PeerShareFull)),
            Some((_, jobs)) => jobs.push_back(job),
            // A peer that had nothing queued joins at the back of the round.
            None => state.peers.push_back((peer.to_string(), VecDeque::from([job]))),
        }
        state.queued += 1;
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job, taking one from each waiting peer in turn; blocks while the queue is
    /// empty. `None` once the queue is closed (jobs still queued are dropped then).
    pub fn pop(&self) -> Option<T> {
        let mut state = self.state.lock();
        loop {
            if state.closed {
                return None;
            }
            if let Some((peer, mut jobs)) = state.peers.pop_front() {
                let job = jobs.pop_front();
                if !jobs.is_empty() {
                    state.peers.push_back((peer, jobs));
                }
                state.queued -= 1;
                return job;
            }
            self.ready.wait(&mut state);
        }
    }

    /// Wakes every waiting [`pop`](Self::pop) with `None` and refuses further jobs.
    pub fn close(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        state.peers.clear();
        state.queued = 0;
        drop(state);
        self.ready.notify_all();
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.state.lock().queued
    }

    /// Whether no job waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn drain(q: &FairQueue<(char, u32)>) -> Vec<(char, u32)> {
        (0..q.len()).map(|_| q.pop().unwrap()).collect()
    }

    #[test]
    fn peers_are_served_in_turn_and_each_in_its_own_order() {
        let q = FairQueue::new(100, 100);
        for i in 0..4 {
            q.push("gw-flood", ('f', i)).unwrap();
        }
        q.push("gw-b", ('b', 0)).unwrap();
        q.push("gw-c", ('c', 0)).unwrap();
        q.push("gw-b", ('b', 1)).unwrap();
        assert_eq!(
            drain(&q),
            [
                ('f', 0),
                ('b', 0),
                ('c', 0),
                ('f', 1),
                ('b', 1),
                ('f', 2),
                ('f', 3)
            ]
        );
        assert!(q.is_empty());
        // A peer that emptied its queue joins at the back when it comes again.
        q.push("gw-b", ('b', 2)).unwrap();
        q.push("gw-flood", ('f', 4)).unwrap();
        assert_eq!(drain(&q), [('b', 2), ('f', 4)]);
    }

    #[test]
    fn one_peer_cannot_take_every_place() {
        let q = FairQueue::new(6, 3);
        for i in 0..3 {
            q.push("gw-flood", ('f', i)).unwrap();
        }
        let (job, why) = q.push("gw-flood", ('f', 3)).unwrap_err();
        assert_eq!((job, why), (('f', 3), Refusal::PeerShareFull));
        assert_eq!(why.detail(), "too many password checks queued from this gateway");
        for i in 0..3 {
            q.push("gw-b", ('b', i)).unwrap();
        }
        // Every place taken: even a peer under its share waits for one to free.
        assert_eq!(q.push("gw-c", ('c', 0)).unwrap_err().1, Refusal::Full);
        assert_eq!(q.pop(), Some(('f', 0)));
        q.push("gw-c", ('c', 0)).unwrap();
        assert_eq!(q.len(), 6);
    }

    #[test]
    fn close_wakes_the_workers_and_refuses_new_jobs() {
        let q = Arc::new(FairQueue::<u32>::new(4, 4));
        let worker = {
            let q = q.clone();
            std::thread::spawn(move || q.pop())
        };
        std::thread::sleep(Duration::from_millis(50));
        q.close();
        assert_eq!(worker.join().unwrap(), None);
        assert_eq!(q.push("gw-a", 1).unwrap_err(), (1, Refusal::Closed));
    }

    #[test]
    fn a_waiting_worker_takes_a_job_pushed_later() {
        let q = Arc::new(FairQueue::<u32>::new(4, 4));
        let worker = {
            let q = q.clone();
            std::thread::spawn(move || q.pop())
        };
        std::thread::sleep(Duration::from_millis(50));
        q.push("gw-a", 7).unwrap();
        assert_eq!(worker.join().unwrap(), Some(7));
    }
}
