//! Paired bootstrap over test sentences of the difference in entity-level micro F1 between two
//! systems, from the per-sentence [correct, predicted, gold] entity counts each run stores.

use crate::rng::SeededRng;
use crate::train::metrics::SentenceCounts;

/// Micro F1 ×100 of summed counts: 2·correct / (predicted + gold) (= 2PR/(P+R); 0 when there
/// is nothing predicted and nothing gold, as seqeval).
pub fn f1_from_sums(correct: u64, predicted: u64, gold: u64) -> f64 {
    if predicted + gold == 0 {
        0.0
    } else {
        200.0 * correct as f64 / (predicted + gold) as f64
    }
}

/// Micro F1 ×100 of a whole test set.
pub fn micro_f1(counts: &[SentenceCounts]) -> f64 {
    let (c, p, g) = counts.iter().fold((0u64, 0u64, 0u64), |(c, p, g), s| {
        (
            c + u64::from(s[0]),
            p + u64::from(s[1]),
            g + u64::from(s[2]),
        )
    });
    f1_from_sums(c, p, g)
}

/// The two systems' runs on one test set, paired by seed: `(a, b)` per seed, every slice of the
/// same length (one entry per test sentence).
pub type SeedPairs<'a> = Vec<(&'a [SentenceCounts], &'a [SentenceCounts])>;

/// Observed F1(a) − F1(b) (×100, averaged over seed pairs) and `samples` bootstrap replicates
/// of it. Each replicate draws sentence indices with replacement once and applies the same
/// draw to every seed pair, so the pairing of systems (and of seeds) on sentences is kept.
/// Panics if `pairs` is empty or the slices differ in length (callers check).
pub fn paired_deltas(
    pairs: &SeedPairs<'_>,
    samples: usize,
    rng: &mut SeededRng,
) -> (f64, Vec<f64>) {
    assert!(
        !pairs.is_empty(),
        "paired bootstrap needs at least one seed pair"
    );
    let n = pairs[0].0.len();
    assert!(
        pairs.iter().all(|(a, b)| a.len() == n && b.len() == n),
        "paired runs must score the same test sentences"
    );
    let k = pairs.len() as f64;
    let observed = pairs
        .iter()
        .map(|(a, b)| micro_f1(a) - micro_f1(b))
        .sum::<f64>()
        / k;
    let mut deltas = Vec::with_capacity(samples);
    let mut sums = vec![[0u64; 6]; pairs.len()];
    for _ in 0..samples {
        sums.iter_mut().for_each(|s| *s = [0; 6]);
        for _ in 0..n {
            let i = rng.below(n.max(1));
            for ((a, b), s) in pairs.iter().zip(sums.iter_mut()) {
                let (x, y) = (a[i], b[i]);
                s[0] += u64::from(x[0]);
                s[1] += u64::from(x[1]);
                s[2] += u64::from(x[2]);
                s[3] += u64::from(y[0]);
                s[4] += u64::from(y[1]);
                s[5] += u64::from(y[2]);
            }
        }
        let d = sums
            .iter()
            .map(|s| f1_from_sums(s[0], s[1], s[2]) - f1_from_sums(s[3], s[4], s[5]))
            .sum::<f64>()
            / k;
        deltas.push(d);
    }
    (observed, deltas)
}

/// A bootstrap estimate of an F1 difference (×100).
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaEstimate {
    /// Observed difference a − b.
    pub delta: f64,
    /// 95% percentile interval of the replicates.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Fraction of replicates with a − b ≤ 0 (a one-sided bootstrap p-value for "a is better").
    pub frac_not_better: f64,
    pub samples: usize,
}

/// The `q`-quantile of sorted values, linearly interpolated (numpy's default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Summarises replicates into a 95% percentile interval.
pub fn summarize(observed: f64, replicates: &[f64]) -> DeltaEstimate {
    let mut sorted = replicates.to_vec();
    sorted.sort_by(f64::total_cmp);
    let not_better = sorted.iter().filter(|&&d| d <= 0.0).count();
    DeltaEstimate {
        delta: observed,
        ci_low: quantile(&sorted, 0.025),
        ci_high: quantile(&sorted, 0.975),
        frac_not_better: if sorted.is_empty() {
            f64::NAN
        } else {
            not_better as f64 / sorted.len() as f64
        },
        samples: sorted.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A system that gets `hit` of every `of` sentences right (one gold entity per sentence).
    fn system(n: usize, hit: usize, of: usize, offset: usize) -> Vec<SentenceCounts> {
        (0..n)
            .map(|i| {
                if (i + offset) % of < hit {
                    [1, 1, 1]
                } else {
                    [0, 1, 1]
                }
            })
            .collect()
    }

    #[test]
    fn f1_from_counts_matches_precision_recall_formula() {
        // 3 correct of 4 predicted, 6 gold: P = .75, R = .5, F1 = .6
        assert!((f1_from_sums(3, 4, 6) - 60.0).abs() < 1e-12);
        assert_eq!(f1_from_sums(0, 0, 0), 0.0);
        assert!((micro_f1(&[[1, 2, 1], [2, 2, 5]]) - 200.0 * 3.0 / 10.0).abs() < 1e-12);
    }

    #[test]
    fn identical_systems_give_an_interval_containing_zero() {
        let a = system(300, 2, 3, 0);
        let pairs: SeedPairs = vec![(&a, &a)];
        let (obs, reps) = paired_deltas(&pairs, 200, &mut SeededRng::new(1));
        let est = summarize(obs, &reps);
        assert_eq!(est.delta, 0.0);
        assert!(est.ci_low <= 0.0 && est.ci_high >= 0.0, "{est:?}");
    }

    #[test]
    fn different_but_equally_good_systems_have_an_interval_around_zero() {
        // Same accuracy, errors on different sentences: the CI must straddle 0.
        let a = system(400, 1, 2, 0);
        let b = system(400, 1, 2, 1);
        let pairs: SeedPairs = vec![(&a, &b)];
        let est = {
            let (o, r) = paired_deltas(&pairs, 300, &mut SeededRng::new(2));
            summarize(o, &r)
        };
        assert!(est.ci_low < 0.0 && est.ci_high > 0.0, "{est:?}");
        assert!(
            est.ci_high - est.ci_low > 2.0,
            "a real interval, not a point: {est:?}"
        );
    }

    #[test]
    fn clearly_better_system_gives_an_interval_excluding_zero() {
        let a = system(400, 9, 10, 0);
        let b = system(400, 6, 10, 0);
        let a2 = system(400, 9, 10, 3);
        let b2 = system(400, 6, 10, 5);
        let pairs: SeedPairs = vec![(&a, &b), (&a2, &b2)];
        let (obs, reps) = paired_deltas(&pairs, 300, &mut SeededRng::new(3));
        let est = summarize(obs, &reps);
        assert!((est.delta - 30.0).abs() < 1e-9, "{est:?}");
        assert!(est.ci_low > 0.0, "{est:?}");
        assert_eq!(est.frac_not_better, 0.0);
        // Reversed, the interval is below zero.
        let rev: SeedPairs = vec![(&b, &a)];
        let (o, r) = paired_deltas(&rev, 300, &mut SeededRng::new(3));
        assert!(summarize(o, &r).ci_high < 0.0);
    }

    #[test]
    fn same_seed_same_interval() {
        let a = system(100, 3, 4, 0);
        let b = system(100, 1, 2, 0);
        let pairs: SeedPairs = vec![(&a, &b)];
        let r1 = paired_deltas(&pairs, 50, &mut SeededRng::new(9)).1;
        let r2 = paired_deltas(&pairs, 50, &mut SeededRng::new(9)).1;
        assert_eq!(r1, r2);
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
    }
}
