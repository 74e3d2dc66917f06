//! Smooth weighted round robin (the algorithm nginx uses for `upstream` weights): each pick
//! adds every candidate's weight to its running score, takes the highest, and charges it
//! the sum of weights. Over any run of `sum(weights)` picks with a fixed candidate set each
//! backend is picked exactly `weight` times, and picks of one backend are spread out rather
//! than bunched.
//!
//! The scores are indexed like the pool's backends. A backend left out of a pick
//! (ineligible, excluded, weight 0) keeps its score untouched, so the rotation carries on
//! where it was when the backend comes back. The sum of all scores stays zero, so they stay
//! bounded by the total weight.

/// Running scores for one pool on one worker.
#[derive(Debug, Clone, Default)]
pub(super) struct SmoothWeighted {
    scores: Vec<i64>,
}

impl SmoothWeighted {
    /// Scores for `backend_count` backends, all zero.
    pub(super) fn new(backend_count: usize) -> SmoothWeighted {
        SmoothWeighted {
            scores: vec![0; backend_count],
        }
    }

    /// Picks among the indexes for which `allowed` holds, using `weights[i]`; `None` when no
    /// index is allowed (or all allowed weights are 0). Ties go to the lowest index.
    pub(super) fn pick(
        &mut self,
        weights: impl ExactSizeIterator<Item = u32>,
        allowed: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if self.scores.len() != weights.len() {
            // A different backend list: old scores belong to other indexes.
            self.scores = vec![0; weights.len()];
        }
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, weight) in weights.enumerate() {
            if weight == 0 || !allowed(i) {
                continue;
            }
            self.scores[i] += i64::from(weight);
            total += i64::from(weight);
            let better = match best {
                None => true,
                Some(b) => self.scores[i] > self.scores[b],
            };
            if better {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.scores[chosen] -= total;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_sequence_for_5_1_1() {
        // The sequence nginx documents for weights {a=5, b=1, c=1}: a a b a c a a.
        let mut s = SmoothWeighted::new(3);
        let seq: Vec<usize> = (0..7)
            .map(|_| s.pick([5, 1, 1].into_iter(), |_| true).unwrap())
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        assert!(s.scores.iter().all(|&x| x == 0), "a full cycle returns to zero");
    }

    #[test]
    fn resizes_on_a_new_list() {
        let mut s = SmoothWeighted::new(2);
        assert_eq!(s.pick([1, 1, 1].into_iter(), |_| true), Some(0));
        assert_eq!(s.scores.len(), 3);
        assert_eq!(s.pick(std::iter::empty(), |_| true), None);
    }
}
