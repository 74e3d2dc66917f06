//! Weighted rendezvous (highest random weight) hashing for source-IP stickiness.
//!
//! Each (client, backend) pair gets a pseudo-random `u` in (0, 1) from a stable hash, and
//! the score `-weight / ln(u)`; the highest score wins (Schindelhauer & Schomaker, "Weighted
//! distributed hash tables", 2005). A backend wins a share of clients proportional to its
//! weight; a client's ranking of the *other* backends does not depend on whether one
//! backend is present, so removing (or excluding) a backend moves only its own clients, and
//! adding it back brings exactly them back. No shared ring state: any two processes with
//! the same keys and weights agree.
//!
//! `ln` is computed here from IEEE-754 basic operations only (exactly rounded everywhere,
//! and Rust never contracts them into FMAs), not from the platform libm, whose last bit
//! may differ between the two machines of a HALB pair.

use super::key;

/// Index of the best-scoring allowed candidate for `client_hash`, or `None`.
/// `candidates` yields (key, weight); weight 0 is never picked. Ties (equal scores, which
/// need equal hashes) go to the higher key, then the lower index, so the order of the list
/// does not matter.
pub(super) fn pick(
    client_hash: u64,
    candidates: impl Iterator<Item = (u64, u32)>,
    allowed: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut best: Option<(f64, u64, usize)> = None;
    for (i, (backend_key, weight)) in candidates.enumerate() {
        if weight == 0 || !allowed(i) {
            continue;
        }
        let s = score(client_hash, backend_key, weight);
        let better = match best {
            None => true,
            Some((bs, bk, _)) => s > bs || (s == bs && backend_key > bk),
        };
        if better {
            best = Some((s, backend_key, i));
        }
    }
    best.map(|(_, _, i)| i)
}

/// `-weight / ln(u)`, with `u` in (0, 1) from the pair hash; always finite and positive.
fn score(client_hash: u64, backend_key: u64, weight: u32) -> f64 {
    let h = key::pair_hash(client_hash, backend_key);
    // 52 bits plus a half step: exactly representable, strictly inside (0, 1).
    let u = ((h >> 12) as f64 + 0.5) / (1u64 << 52) as f64;
    -f64::from(weight) / ln_unit(u)
}

/// Natural logarithm for `u` in [2^-53, 1), deterministic across platforms: `u = m * 2^e`
/// with `m` in (1/sqrt 2, sqrt 2], then `ln m = 2 atanh((m-1)/(m+1))` by its series.
fn ln_unit(u: f64) -> f64 {
    let bits = u.to_bits();
    // `u` is a positive normal number here: the biased exponent is in 1..=1022.
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    if m > std::f64::consts::SQRT_2 {
        m /= 2.0;
        exponent += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    // |s| <= 0.1716, so s^2 <= 0.0295 and 12 terms leave an error far below one ulp.
    let mut term = s;
    let mut sum = 0.0;
    let mut divisor = 1.0;
    for _ in 0..12 {
        sum += term / divisor;
        term *= s2;
        divisor += 2.0;
    }
    exponent as f64 * std::f64::consts::LN_2 + 2.0 * sum
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    #[test]
    fn ln_agrees_with_libm() {
        for u in [
            2f64.powi(-53),
            1e-9,
            0.001,
            0.25,
            0.5,
            std::f64::consts::FRAC_1_SQRT_2,
            0.7072,
            0.9,
            0.999_999,
            1.0 - 2f64.powi(-52),
        ] {
            let ours = ln_unit(u);
            let libm = u.ln();
            assert!(
                (ours - libm).abs() <= 4.0 * f64::EPSILON * libm.abs().max(1e-300),
                "u={u}: {ours} vs {libm}"
            );
        }
    }

    #[test]
    fn scores_are_finite_and_positive_at_the_extremes() {
        for h in [0u64, u64::MAX, 1, 1 << 63] {
            for w in [1u32, u32::MAX] {
                let s = score(h, 0, w);
                assert!(s.is_finite() && s > 0.0, "{s}");
            }
        }
    }

    proptest! {
        #[test]
        fn ln_close_to_libm(bits in 0x3ca0_0000_0000_0000u64..0x3ff0_0000_0000_0000u64) {
            // Every double in [2^-53, 1): the range `score` feeds in.
            let u = f64::from_bits(bits);
            let rel = ((ln_unit(u) - u.ln()) / u.ln()).abs();
            prop_assert!(rel < 1e-14, "u={} rel={}", u, rel);
        }
    }
}
