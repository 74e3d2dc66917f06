//! Backend selection for one pool: which backend gets the next connection.
//!
//! Owns the algorithms and their per-worker state only. It does not know about health,
//! drain or connection limits: the caller folds those into [`Candidate::eligible`] and the
//! current connection counts into [`Candidate::active`] at pick time. No I/O, no clock, no
//! randomness: the same calls give the same picks, so tests and two HALB nodes agree.
//!
//! Rules common to every algorithm: a backend is pickable when it is eligible, its weight is
//! not 0 and its index is not in `exclude` (backends already tried for this connection).

mod key;
mod smooth_weighted;
mod source_hash;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

pub use key::backend_key;

use smooth_weighted::SmoothWeighted;

/// How a pool spreads connections over its backends (`algorithm = "..."` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Smooth weighted round robin: exact weight ratios, picks of one backend spread out.
    RoundRobin,
    /// Fewest current connections per unit of weight; ties shared by weighted round robin.
    LeastConnections,
    /// Consistent hash of the client IP (weighted rendezvous): a client keeps its backend
    /// while that backend is pickable, and losing a backend moves only its own clients.
    SourceHash,
    /// The first pickable backend in configured order; the next only when it is not.
    First,
}

impl Algorithm {
    /// Every algorithm, in documentation order (for `--help` and config errors).
    pub const ALL: [Algorithm; 4] = [
        Algorithm::RoundRobin,
        Algorithm::LeastConnections,
        Algorithm::SourceHash,
        Algorithm::First,
    ];

    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::LeastConnections => "least-connections",
            Algorithm::SourceHash => "source-hash",
            Algorithm::First => "first",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    /// Parses the config spelling exactly (lower case, dashes).
    fn from_str(s: &str) -> Result<Algorithm, UnknownAlgorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| UnknownAlgorithm { input: s.to_string() })
    }
}

/// A config value that names no [`Algorithm`]; the message lists the valid names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownAlgorithm {
    /// The value as written.
    pub input: String,
}

impl fmt::Display for UnknownAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown balancing algorithm `{}` (expected one of: ",
            self.input
        )?;
        for (i, a) in Algorithm::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(a.name())?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for UnknownAlgorithm {}

/// What the balancer needs to know about one backend at pick time. The slice passed to
/// [`Balancer::pick`] is in configured order and keeps its indexes between picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// Stable identity for source hashing: [`backend_key`] of the backend's configured name
    /// (or address when it has none).
    pub key: u64,
    /// Configured weight; 0 means never picked (by every algorithm).
    pub weight: u32,
    /// Up, not draining, not in maintenance, and under its connection limit.
    pub eligible: bool,
    /// Connections this backend holds now (used by least-connections only).
    pub active: u32,
}

/// Backend selection state for one pool on one worker. Built when the worker gets a config
/// snapshot; [`Balancer::pick`] is called once per connection attempt, retries included.
#[derive(Debug, Clone)]
pub struct Balancer {
    state: State,
}

/// Per-algorithm state: each algorithm holds only what it needs.
#[derive(Debug, Clone)]
enum State {
    RoundRobin(SmoothWeighted),
    /// The rotation that shares ties between equally loaded backends.
    LeastConnections(SmoothWeighted),
    SourceHash,
    First,
}

impl Balancer {
    /// A balancer for a pool of `backend_count` backends. The count only sizes the state;
    /// a pick with a different number of candidates resets it.
    pub fn new(algorithm: Algorithm, backend_count: usize) -> Balancer {
        let state = match algorithm {
            Algorithm::RoundRobin => State::RoundRobin(SmoothWeighted::new(backend_count)),
            Algorithm::LeastConnections => State::LeastConnections(SmoothWeighted::new(backend_count)),
            Algorithm::SourceHash => State::SourceHash,
            Algorithm::First => State::First,
        };
        Balancer { state }
    }

    /// The algorithm this balancer runs.
    pub fn algorithm(&self) -> Algorithm {
        match self.state {
            State::RoundRobin(_) => Algorithm::RoundRobin,
            State::LeastConnections(_) => Algorithm::LeastConnections,
            State::SourceHash => Algorithm::SourceHash,
            State::First => Algorithm::First,
        }
    }

    /// The index of the backend for a new connection from `client`, or `None` when no
    /// candidate is pickable (the caller then closes the client at once).
    ///
    /// `exclude` lists indexes already tried for this connection, so a retry after a
    /// refused or timed-out connect gets the next pickable backend (for source-hash: the
    /// client's next-ranked one, the same on every node).
    pub fn pick(&mut self, candidates: &[Candidate], client: IpAddr, exclude: &[usize]) -> Option<usize> {
        let pickable = |i: usize| {
            candidates
                .get(i)
                .is_some_and(|c| c.eligible && c.weight > 0 && !exclude.contains(&i))
        };
        match &mut self.state {
            State::RoundRobin(rotation) => rotation.pick(candidates.iter().map(|c| c.weight), pickable),
            State::LeastConnections(rotation) => {
                let least = least_loaded(candidates, &pickable)?;
                // Share the tie among every backend exactly as loaded as `least`.
                let tied = |i: usize| pickable(i) && same_load(&candidates[i], &candidates[least]);
                rotation.pick(candidates.iter().map(|c| c.weight), tied)
            }
            State::SourceHash => source_hash::pick(
                key::client_hash(client),
                candidates.iter().map(|c| (c.key, c.weight)),
                pickable,
            ),
            State::First => (0..candidates.len()).find(|&i| pickable(i)),
        }
    }
}

/// Some pickable index with the lowest `active / weight`.
fn least_loaded(candidates: &[Candidate], pickable: &impl Fn(usize) -> bool) -> Option<usize> {
    let mut best: Option<usize> = None;
    for i in (0..candidates.len()).filter(|&i| pickable(i)) {
        let better = match best {
            None => true,
            Some(b) => lighter(&candidates[i], &candidates[b]),
        };
        if better {
            best = Some(i);
        }
    }
    best
}

/// `a.active / a.weight < b.active / b.weight`, exactly, without division. u32 x u32 fits
/// in u64.
fn lighter(a: &Candidate, b: &Candidate) -> bool {
    u64::from(a.active) * u64::from(b.weight) < u64::from(b.active) * u64::from(a.weight)
}

fn same_load(a: &Candidate, b: &Candidate) -> bool {
    u64::from(a.active) * u64::from(b.weight) == u64::from(b.active) * u64::from(a.weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    fn pool(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Candidate {
                key: backend_key(&format!("rdsh-{i:02}")),
                weight,
                eligible: true,
                active: 0,
            })
            .collect()
    }

    fn client(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    fn counts(b: &mut Balancer, c: &[Candidate], picks: usize) -> Vec<usize> {
        let mut n = vec![0; c.len()];
        for _ in 0..picks {
            n[b.pick(c, client(1), &[]).expect("a backend is pickable")] += 1;
        }
        n
    }

    #[test]
    fn algorithm_names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.to_string().parse::<Algorithm>(), Ok(a));
            assert_eq!(Balancer::new(a, 0).algorithm(), a);
        }
        assert_eq!("least-connections".parse(), Ok(Algorithm::LeastConnections));
        let err = "roundrobin".parse::<Algorithm>().unwrap_err();
        assert_eq!(err.input, "roundrobin");
        assert!(err
            .to_string()
            .contains("round-robin, least-connections, source-hash, first"));
        assert!("Round-Robin".parse::<Algorithm>().is_err());
    }

    #[test]
    fn round_robin_weights_are_exact() {
        let c = pool(&[1, 2, 3]);
        let mut b = Balancer::new(Algorithm::RoundRobin, 3);
        assert_eq!(counts(&mut b, &c, 6000), vec![1000, 2000, 3000]);
        // And over every single cycle of 6, not only in total.
        for _ in 0..10 {
            assert_eq!(counts(&mut b, &c, 6), vec![1, 2, 3]);
        }
        // Spread out: the weight-3 backend is never picked three times in a row.
        let seq: Vec<_> = (0..12).map(|_| b.pick(&c, client(1), &[]).unwrap()).collect();
        assert!(
            seq.windows(3).all(|w| !(w[0] == 2 && w[1] == 2 && w[2] == 2)),
            "{seq:?}"
        );
    }

    #[test]
    fn round_robin_weight_zero_and_eligibility() {
        let mut c = pool(&[1, 0, 1]);
        let mut b = Balancer::new(Algorithm::RoundRobin, 3);
        assert_eq!(counts(&mut b, &c, 100), vec![50, 0, 50]);
        c[0].eligible = false;
        assert_eq!(counts(&mut b, &c, 100), vec![0, 0, 100]);
        c[0].eligible = true;
        let n = counts(&mut b, &c, 100);
        assert!(n[0].abs_diff(50) <= 1 && n[1] == 0, "{n:?}");
    }

    #[test]
    fn round_robin_state_survives_eligibility_changes() {
        // Two balancers, the same history with backend 1 flapping: identical picks, ratios
        // held approximately while it flaps and exactly (up to the bounded scores) after.
        let mut c = pool(&[1, 2, 3]);
        let mut a = Balancer::new(Algorithm::RoundRobin, 3);
        let mut b = Balancer::new(Algorithm::RoundRobin, 3);
        let mut n = [0usize; 3];
        for step in 0..6000 {
            c[1].eligible = (step / 7) % 3 != 0;
            let pa = a.pick(&c, client(1), &[]);
            assert_eq!(pa, b.pick(&c, client(1), &[]));
            n[pa.unwrap()] += 1;
        }
        // Backends 0 and 2 are always eligible: about 1:3.
        assert!((n[2] as f64 / n[0] as f64 - 3.0).abs() < 0.15, "{n:?}");
        // Once stable, each backend's count is within the score bound of its exact share.
        c[1].eligible = true;
        let n = counts(&mut a, &c, 6000);
        for (got, want) in n.iter().zip([1000usize, 2000, 3000]) {
            assert!(got.abs_diff(want) <= 6, "{n:?}");
        }
    }

    #[test]
    fn least_connections_picks_the_lowest_load() {
        let mut c = pool(&[1, 1, 1]);
        c[0].active = 5;
        c[1].active = 2;
        c[2].active = 7;
        let mut b = Balancer::new(Algorithm::LeastConnections, 3);
        assert_eq!(b.pick(&c, client(1), &[]), Some(1));
        // Per unit of weight: 4/4 = 1 beats 2/1 and 3/1.
        let mut c = pool(&[1, 1, 4]);
        c[0].active = 2;
        c[1].active = 3;
        c[2].active = 4;
        assert_eq!(b.pick(&c, client(1), &[]), Some(2));
        // The lowest one ineligible or excluded: the next lowest.
        c[2].eligible = false;
        assert_eq!(b.pick(&c, client(1), &[]), Some(0));
        assert_eq!(b.pick(&c, client(1), &[0]), Some(1));
    }

    #[test]
    fn least_connections_shares_ties() {
        let mut c = pool(&[1, 1, 1]);
        c[0].active = 3;
        c[1].active = 3;
        c[2].active = 9;
        let mut b = Balancer::new(Algorithm::LeastConnections, 3);
        let seq: Vec<_> = (0..6).map(|_| b.pick(&c, client(1), &[]).unwrap()).collect();
        assert_eq!(seq, vec![0, 1, 0, 1, 0, 1]);
        // All idle with weights 1:3 (short connections): shared by weight, not all to one.
        let c = pool(&[1, 3]);
        assert_eq!(counts(&mut b, &c, 400), vec![100, 300]);
    }

    #[test]
    fn least_connections_tracks_load_as_caller_updates_it() {
        // The caller counts each pick as a new active connection: loads stay level.
        let mut c = pool(&[1, 2, 1]);
        let mut b = Balancer::new(Algorithm::LeastConnections, 3);
        for _ in 0..400 {
            let i = b.pick(&c, client(1), &[]).unwrap();
            c[i].active += 1;
        }
        let active: Vec<_> = c.iter().map(|x| x.active).collect();
        assert_eq!(active, vec![100, 200, 100]);
    }

    #[test]
    fn first_takes_the_first_pickable_in_order() {
        let mut c = pool(&[1, 5, 5]);
        let mut b = Balancer::new(Algorithm::First, 3);
        assert_eq!(counts(&mut b, &c, 10), vec![10, 0, 0]);
        c[0].eligible = false;
        assert_eq!(b.pick(&c, client(1), &[]), Some(1));
        assert_eq!(b.pick(&c, client(1), &[1]), Some(2));
        c[0].eligible = true;
        c[0].weight = 0;
        assert_eq!(b.pick(&c, client(1), &[]), Some(1));
    }

    #[test]
    fn nothing_pickable_gives_none() {
        for a in Algorithm::ALL {
            let mut b = Balancer::new(a, 3);
            let mut c = pool(&[1, 1, 1]);
            for x in &mut c {
                x.eligible = false;
            }
            assert_eq!(b.pick(&c, client(1), &[]), None, "{a}");
            assert_eq!(b.pick(&pool(&[0, 0]), client(1), &[]), None, "{a}");
            assert_eq!(b.pick(&pool(&[1, 1]), client(1), &[0, 1]), None, "{a}");
            assert_eq!(b.pick(&[], client(1), &[]), None, "{a}");
        }
    }

    fn assignment(c: &[Candidate], clients: u32) -> Vec<Option<usize>> {
        let mut b = Balancer::new(Algorithm::SourceHash, c.len());
        (0..clients).map(|n| b.pick(c, client(n), &[])).collect()
    }

    #[test]
    fn source_hash_is_sticky_and_deterministic() {
        let c = pool(&[1, 1, 1, 1]);
        let mut a = Balancer::new(Algorithm::SourceHash, 4);
        let mut b = Balancer::new(Algorithm::SourceHash, 4);
        for n in 0..1000 {
            let first = a.pick(&c, client(n), &[]);
            // Sticky across repeated picks, unaffected by other clients in between, and
            // the same on an independent balancer (another worker or the HALB peer).
            assert_eq!(a.pick(&c, client(n + 7), &[]), b.pick(&c, client(n + 7), &[]));
            assert_eq!(a.pick(&c, client(n), &[]), first);
            assert_eq!(b.pick(&c, client(n), &[]), first);
        }
        // The list order does not matter, only the keys: reverse it and map back.
        let reversed: Vec<_> = c.iter().rev().copied().collect();
        let fwd = assignment(&c, 500);
        let rev = assignment(&reversed, 500);
        for (f, r) in fwd.iter().zip(&rev) {
            assert_eq!(f.unwrap(), 3 - r.unwrap());
        }
        // An IPv4 client seen through a dual-stack listener hashes as itself.
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        assert_eq!(a.pick(&c, v4, &[]), a.pick(&c, mapped, &[]));
        let _ = a.pick(&c, IpAddr::V6(Ipv6Addr::LOCALHOST), &[]).unwrap();
    }

    #[test]
    fn source_hash_removal_moves_only_that_share() {
        let clients = 20_000;
        let mut c = pool(&[1, 1, 1, 1]);
        let before = assignment(&c, clients);
        c[2].eligible = false;
        let during = assignment(&c, clients);
        let mut moved_from_2 = 0;
        for (b, d) in before.iter().zip(&during) {
            if *b == Some(2) {
                assert_ne!(*d, Some(2));
                moved_from_2 += 1;
            } else {
                assert_eq!(b, d, "a client of a remaining backend moved");
            }
        }
        let share = moved_from_2 as f64 / f64::from(clients);
        assert!((share - 0.25).abs() < 0.02, "moved share {share}");
        // Its clients spread over the three others, not onto one.
        for other in [0, 1, 3] {
            let got = before
                .iter()
                .zip(&during)
                .filter(|(b, d)| **b == Some(2) && **d == Some(other))
                .count();
            let frac = got as f64 / moved_from_2 as f64;
            assert!((frac - 1.0 / 3.0).abs() < 0.05, "to {other}: {frac}");
        }
        c[2].eligible = true;
        assert_eq!(
            assignment(&c, clients),
            before,
            "adding back restores every client"
        );
        // Removing it from the list entirely (config change) behaves like ineligible.
        let mut shorter = pool(&[1, 1, 1, 1]);
        shorter.remove(2);
        let without: Vec<_> = assignment(&shorter, clients)
            .into_iter()
            .map(|i| i.map(|i| if i >= 2 { i + 1 } else { i }))
            .collect();
        assert_eq!(without, during);
    }

    #[test]
    fn source_hash_exclude_gives_the_next_ranked() {
        let mut c = pool(&[1, 1, 1, 1, 1]);
        let mut b = Balancer::new(Algorithm::SourceHash, 5);
        for n in 0..500 {
            let top = b.pick(&c, client(n), &[]).unwrap();
            let second = b.pick(&c, client(n), &[top]).unwrap();
            assert_ne!(second, top);
            c[top].eligible = false;
            assert_eq!(b.pick(&c, client(n), &[]), Some(second));
            c[top].eligible = true;
        }
    }

    #[test]
    fn source_hash_honours_weights() {
        let c = pool(&[1, 2, 3]);
        let clients = 60_000;
        let mut n = [0u32; 3];
        for i in assignment(&c, clients) {
            n[i.unwrap()] += 1;
        }
        for (i, &w) in [1.0, 2.0, 3.0].iter().enumerate() {
            let share = f64::from(n[i]) / f64::from(clients);
            assert!((share - w / 6.0).abs() < 0.01, "backend {i}: share {share}");
        }
    }

    fn arb_candidates() -> impl Strategy<Value = Vec<Candidate>> {
        proptest::collection::vec(
            (any::<u64>(), 0u32..5, any::<bool>(), 0u32..10).prop_map(|(key, weight, eligible, active)| {
                Candidate {
                    key,
                    weight,
                    eligible,
                    active,
                }
            }),
            0..8,
        )
    }

    proptest! {
        #[test]
        fn pick_respects_eligibility_weight_and_exclude(
            algorithm in prop::sample::select(Algorithm::ALL.to_vec()),
            rounds in proptest::collection::vec(
                (arb_candidates(), proptest::collection::vec(0usize..10, 0..4), any::<u32>()),
                1..20,
            ),
        ) {
            let mut b = Balancer::new(algorithm, 4);
            for (c, exclude, ip) in rounds {
                let pickable = |i: usize| c[i].eligible && c[i].weight > 0 && !exclude.contains(&i);
                let got = b.pick(&c, IpAddr::V4(Ipv4Addr::from(ip)), &exclude);
                match got {
                    Some(i) => {
                        prop_assert!(i < c.len());
                        prop_assert!(pickable(i), "{} picked {} from {:?} excluding {:?}", algorithm, i, c, exclude);
                    }
                    None => prop_assert!((0..c.len()).all(|i| !pickable(i))),
                }
            }
        }
    }
}
