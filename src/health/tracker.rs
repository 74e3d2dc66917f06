//! Sans-IO verdict tracker: turns a stream of probe outcomes into up/down transitions.
//!
//! Owns the rise/fall counting (HAProxy semantics) and passive marking. Knows nothing of
//! sockets, threads or time: the checker feeds it outcomes, the data plane feeds it failed
//! real connects through the checker's `PassiveReporter`.

use std::fmt;

use super::outcome::{ProbeFailure, ProbeOutcome};

/// The verdict on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Eligible for new connections.
    Up,
    /// Not eligible; only active checks can bring it back.
    Down,
}

impl Health {
    /// Lower-case name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of verdict, with a human-readable reason for the state-change log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Verdict before.
    pub from: Health,
    /// Verdict after.
    pub to: Health,
    /// Why, e.g. "3 consecutive failed checks, last: timeout during connect".
    pub reason: String,
}

/// Counts consecutive outcomes for one backend and decides when its verdict flips.
///
/// From `Down`, `rise` consecutive successful probes make it `Up`; from `Up`, `fall`
/// consecutive failed probes make it `Down`; any outcome of the other kind restarts the count.
/// Independently, `passive_fall` consecutive failed real connects (with no successful connect
/// or successful probe in between) make an `Up` backend `Down`.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    health: Health,
    rise: u32,
    fall: u32,
    passive_fall: u32,
    /// Consecutive outcomes that argue against the current verdict.
    streak: u32,
    /// Consecutive failed real connects while `Up`.
    passive_streak: u32,
}

impl HealthTracker {
    /// A tracker starting at `initial`. A `rise` or `fall` of 0 is taken as 1 (a single
    /// outcome flips the verdict). The passive threshold starts equal to `fall`.
    pub fn new(rise: u32, fall: u32, initial: Health) -> HealthTracker {
        let fall = fall.max(1);
        HealthTracker {
            health: initial,
            rise: rise.max(1),
            fall,
            passive_fall: fall,
            streak: 0,
            passive_streak: 0,
        }
    }

    /// Sets how many consecutive failed real connects mark the backend down (0 is taken as 1).
    pub fn with_passive_fall(mut self, passive_fall: u32) -> HealthTracker {
        self.passive_fall = passive_fall.max(1);
        self
    }

    /// The current verdict.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Feeds one active probe outcome; returns the transition if the verdict flipped.
    pub fn record(&mut self, outcome: &ProbeOutcome) -> Option<Transition> {
        match (self.health, outcome) {
            // This host could not probe: no evidence either way, streaks untouched.
            (_, ProbeOutcome::Failed(ProbeFailure::Local(_))) => None,
            (Health::Up, ProbeOutcome::Ok) => {
                self.streak = 0;
                // A good probe is fresh evidence of health: older connect failures no longer
                // count as consecutive.
                self.passive_streak = 0;
                None
            }
            (Health::Down, ProbeOutcome::Failed(_)) => {
                self.streak = 0;
                None
            }
            (Health::Down, ProbeOutcome::Ok) => {
                self.streak += 1;
                if self.streak < self.rise {
                    return None;
                }
                let reason = format!("{} consecutive successful checks", self.streak);
                Some(self.flip(Health::Up, reason))
            }
            (Health::Up, ProbeOutcome::Failed(failure)) => {
                self.streak += 1;
                if self.streak < self.fall {
                    return None;
                }
                let reason = format!("{} consecutive failed checks, last: {failure}", self.streak);
                Some(self.flip(Health::Down, reason))
            }
        }
    }

    /// Feeds one failed real connect seen by the data plane; returns the transition if this
    /// failure reaches `passive_fall`. Ignored while `Down` (only probes bring a backend back).
    pub fn passive_failure(&mut self) -> Option<Transition> {
        if self.health == Health::Down {
            return None;
        }
        self.passive_streak += 1;
        if self.passive_streak < self.passive_fall {
            return None;
        }
        let reason = format!("passive: {} consecutive connect failures", self.passive_streak);
        Some(self.flip(Health::Down, reason))
    }

    /// Marks the backend down because the caller counted `consecutive` failed real connects
    /// against its own threshold (the data plane's per-pool `passive_fall`). Returns the
    /// transition, or `None` if already `Down`. Afterwards `rise` good probes bring it back.
    pub fn passive_down(&mut self, consecutive: u32) -> Option<Transition> {
        if self.health == Health::Down {
            return None;
        }
        let reason = format!("passive: {consecutive} consecutive connect failures");
        Some(self.flip(Health::Down, reason))
    }

    /// Feeds one successful real connect: restarts the passive failure count.
    pub fn passive_success(&mut self) {
        self.passive_streak = 0;
    }

    fn flip(&mut self, to: Health, reason: String) -> Transition {
        let from = self.health;
        self.health = to;
        self.streak = 0;
        self.passive_streak = 0;
        Transition { from, to, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::outcome::{ProbeFailure, Stage};

    fn fail() -> ProbeOutcome {
        ProbeOutcome::Failed(ProbeFailure::Timeout(Stage::Connect))
    }

    /// Feeds outcomes and returns the index (1-based) of each outcome that caused a flip.
    fn flips(tracker: &mut HealthTracker, outcomes: &[ProbeOutcome]) -> Vec<(usize, Health)> {
        outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, o)| tracker.record(o).map(|t| (i + 1, t.to)))
            .collect()
    }

    #[test]
    fn up_goes_down_after_fall_consecutive_failures() {
        let mut t = HealthTracker::new(2, 3, Health::Up);
        let seq = [fail(), fail(), fail(), fail()];
        assert_eq!(flips(&mut t, &seq), vec![(3, Health::Down)]);
        assert_eq!(t.health(), Health::Down);
    }

    #[test]
    fn a_success_restarts_the_fall_count() {
        let mut t = HealthTracker::new(2, 3, Health::Up);
        let seq = [fail(), fail(), ProbeOutcome::Ok, fail(), fail(), fail()];
        assert_eq!(flips(&mut t, &seq), vec![(6, Health::Down)]);
    }

    #[test]
    fn down_comes_up_after_rise_consecutive_successes() {
        let mut t = HealthTracker::new(2, 3, Health::Down);
        let seq = [
            ProbeOutcome::Ok,
            fail(),
            ProbeOutcome::Ok,
            ProbeOutcome::Ok,
            ProbeOutcome::Ok,
        ];
        assert_eq!(flips(&mut t, &seq), vec![(4, Health::Up)]);
    }

    #[test]
    fn transition_reason_names_count_and_last_failure() {
        let mut t = HealthTracker::new(1, 2, Health::Up);
        assert_eq!(t.record(&fail()), None);
        let tr = t
            .record(&ProbeOutcome::Failed(ProbeFailure::HttpStatus(503)))
            .expect("second failure reaches fall=2");
        assert_eq!(tr.from, Health::Up);
        assert_eq!(tr.to, Health::Down);
        assert_eq!(
            tr.reason,
            "2 consecutive failed checks, last: unexpected HTTP status 503"
        );
        let up = t.record(&ProbeOutcome::Ok).expect("rise=1");
        assert_eq!(up.reason, "1 consecutive successful checks");
    }

    #[test]
    fn probes_this_host_could_not_make_move_no_verdict() {
        let local = || ProbeOutcome::Failed(ProbeFailure::Local("connect: out of files".into()));
        let mut up = HealthTracker::new(2, 2, Health::Up);
        let seq = [
            fail(),
            local(),
            local(),
            local(),
            ProbeOutcome::Ok,
            fail(),
            local(),
            fail(),
        ];
        // The streak of two real failures is not broken or made by the local ones.
        assert_eq!(flips(&mut up, &seq), vec![(8, Health::Down)]);
        let mut down = HealthTracker::new(2, 2, Health::Down);
        let seq = [ProbeOutcome::Ok, local(), local(), ProbeOutcome::Ok];
        assert_eq!(flips(&mut down, &seq), vec![(4, Health::Up)]);
    }

    #[test]
    fn zero_thresholds_behave_as_one() {
        let mut t = HealthTracker::new(0, 0, Health::Up);
        assert!(t.record(&fail()).is_some());
        assert!(t.record(&ProbeOutcome::Ok).is_some());
    }

    #[test]
    fn passive_failures_mark_down_with_their_own_reason() {
        let mut t = HealthTracker::new(2, 3, Health::Up).with_passive_fall(2);
        assert_eq!(t.passive_failure(), None);
        let tr = t.passive_failure().expect("passive_fall=2 reached");
        assert_eq!(tr.to, Health::Down);
        assert_eq!(tr.reason, "passive: 2 consecutive connect failures");
        // While down, passive failures change nothing; probes bring it back.
        assert_eq!(t.passive_failure(), None);
        assert_eq!(t.record(&ProbeOutcome::Ok), None);
        assert!(t.record(&ProbeOutcome::Ok).is_some());
    }

    #[test]
    fn passive_down_counted_by_the_caller() {
        let mut t = HealthTracker::new(2, 3, Health::Up);
        let tr = t.passive_down(5).expect("up backend goes down");
        assert_eq!(tr.reason, "passive: 5 consecutive connect failures");
        assert_eq!(t.passive_down(5), None);
        assert_eq!(t.record(&ProbeOutcome::Ok), None);
        assert_eq!(t.record(&ProbeOutcome::Ok).map(|t| t.to), Some(Health::Up));
    }

    #[test]
    fn passive_count_restarts_on_success_of_either_kind() {
        let mut t = HealthTracker::new(1, 5, Health::Up).with_passive_fall(2);
        assert_eq!(t.passive_failure(), None);
        t.passive_success();
        assert_eq!(t.passive_failure(), None);
        assert_eq!(t.record(&ProbeOutcome::Ok), None);
        assert_eq!(t.passive_failure(), None);
        assert!(t.passive_failure().is_some());
    }

    #[test]
    fn passive_and_active_counts_are_separate() {
        // Two failed probes and one failed connect must not add up to fall=3.
        let mut t = HealthTracker::new(1, 3, Health::Up).with_passive_fall(3);
        assert_eq!(t.record(&fail()), None);
        assert_eq!(t.record(&fail()), None);
        assert_eq!(t.passive_failure(), None);
        assert_eq!(t.health(), Health::Up);
    }
}
