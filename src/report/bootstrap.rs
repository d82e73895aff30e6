//! Bootstrap intervals for the difference in entity-level micro F1 between two settings, from
//! the per-sentence [correct, predicted, gold] entity counts each run stores.
//!
//! Two intervals answer two different questions:
//!
//! * [`paired_deltas`] resamples test sentences only, with every seed's runs kept: how precisely
//!   *these* runs were scored ("scoring noise only"). With one seed it can call two runs of the
//!   same method different, because the method's run-to-run variance never enters.
//! * [`hierarchical_deltas`] resamples seeds — each a unit of a priming run and the fine-tuning
//!   runs that start from it — and then test sentences: whether the *setting* is better. This is
//!   the interval verdicts rest on ([`Verdict`]).

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

/// The scoring-noise-only bootstrap: observed F1(a) − F1(b) (×100, averaged over seed pairs)
/// and `samples` replicates of it. Each replicate draws sentence indices with replacement once
/// and applies the same draw to every seed pair, so the pairing of systems (and of seeds) on
/// sentences is kept; the seeds themselves are never resampled.
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
    let observed = per_seed_deltas(pairs).iter().sum::<f64>() / k;
    let mut deltas = Vec::with_capacity(samples);
    let mut sums = vec![[0u64; 6]; pairs.len()];
    for _ in 0..samples {
        sums.iter_mut().for_each(|s| *s = [0; 6]);
        for _ in 0..n {
            let i = rng.below(n.max(1));
            for ((a, b), s) in pairs.iter().zip(sums.iter_mut()) {
                add_counts(s, a[i], b[i]);
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

/// F1(a) − F1(b) (×100) of each seed pair on its whole test set.
pub fn per_seed_deltas(pairs: &SeedPairs<'_>) -> Vec<f64> {
    pairs
        .iter()
        .map(|(a, b)| micro_f1(a) - micro_f1(b))
        .collect()
}

/// Two-sided 97.5% quantile of Student's t with `df` degrees of freedom (df ≥ 1): a table
/// for df ≤ 30, then the Cornish-Fisher expansion (error < 1e-4 there).
pub fn t_quantile_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
        2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739,
        2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
    ];
    assert!(df >= 1, "Student's t needs at least one degree of freedom");
    if df <= TABLE.len() {
        return TABLE[df - 1];
    }
    let z = Z_975;
    let n = df as f64;
    z + (z.powi(3) + z) / (4.0 * n)
        + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * n * n)
}

/// The standard normal's 97.5% quantile.
pub const Z_975: f64 = 1.959_963_984_540_054;

/// How much [`hierarchical_deltas`] stretches the seed level's spread with `seeds` seeds.
///
/// Resampling k seeds with replacement spreads their mean by √((k−1)/k)·s/√k, and a percentile
/// interval of it is a normal interval: both too narrow for the 3-5 seeds a sweep has.
/// Stretching each replicate's seed deviations by t(k−1)/z · √(k/(k−1)) makes the seed level's
/// interval Student's t interval of the per-seed deltas, which is exact for normal seed
/// effects, and leaves the sentence level untouched (a setting whose seeds agree keeps a
/// scoring-noise interval).
///
/// Measured on synthetic comparisons with a known delta where seed effects dominate (the
/// tests below, 200 comparisons each): the interval covers the true delta in 97.5% of them
/// with 3 seeds and 96.5% with 5; without the stretch 89% and 91.5%; the scoring-noise-only
/// interval 54.5% and 52%. It errs on the wide side because the noise of each run's own errors
/// on the test sentences shows at both levels (in the per-seed deltas and in the sentence
/// draws); where that noise is all the run-to-run variance there is, it is wider still.
pub fn seed_scale(seeds: usize) -> f64 {
    assert!(seeds >= 2, "a seed-level spread needs two seeds");
    let k = seeds as f64;
    t_quantile_975(seeds - 1) / Z_975 * (k / (k - 1.0)).sqrt()
}

/// The seed-aware bootstrap of a − b over one or more languages.
///
/// `langs[l][s]` is seed `s`'s pair of runs in language `l`; every language lists the same
/// seeds in the same order (a seed is one priming run shared by every language, so the seeds
/// are drawn once per replicate for all languages). Each replicate:
///
/// 1. draws k seeds with replacement;
/// 2. per language, draws the test sentences with replacement once and scores every drawn
///    seed's two runs on that draw (one draw for all seeds: they were all scored on the same
///    test set, so its sampling noise is shared; a draw per seed would count it k times over
///    and shrink it k-fold);
/// 3. averages the drawn seeds' deltas, adds the seed deviations stretched by [`seed_scale`],
///    and averages over languages.
///
/// Returns the observed delta (the mean over languages of the mean per-seed delta) and the
/// replicates. Panics with fewer than two seeds (no seed spread to estimate), an empty
/// `langs`, or pairs of unequal lengths (callers check).
pub fn hierarchical_deltas(
    langs: &[SeedPairs<'_>],
    samples: usize,
    rng: &mut SeededRng,
) -> (f64, Vec<f64>) {
    assert!(!langs.is_empty(), "no language to compare");
    let k = langs[0].len();
    assert!(
        langs.iter().all(|l| l.len() == k),
        "every language needs the same seeds"
    );
    assert!(
        langs.iter().all(|pairs| pairs
            .iter()
            .all(|(a, b)| a.len() == pairs[0].0.len() && b.len() == pairs[0].0.len())),
        "paired runs must score the same test sentences"
    );
    let stretch = seed_scale(k) - 1.0;
    let per_seed: Vec<Vec<f64>> = langs.iter().map(per_seed_deltas).collect();
    let means: Vec<f64> = per_seed
        .iter()
        .map(|d| d.iter().sum::<f64>() / k as f64)
        .collect();
    let observed = means.iter().sum::<f64>() / langs.len() as f64;
    let mut drawn = vec![0usize; k];
    let mut sums = vec![[0u64; 6]; k];
    let mut reps = Vec::with_capacity(samples);
    for _ in 0..samples {
        drawn.iter_mut().for_each(|d| *d = rng.below(k));
        let mut total = 0.0;
        for (l, pairs) in langs.iter().enumerate() {
            let n = pairs[0].0.len();
            sums.iter_mut().for_each(|s| *s = [0; 6]);
            for _ in 0..n {
                let i = rng.below(n.max(1));
                for ((a, b), s) in pairs.iter().zip(sums.iter_mut()) {
                    add_counts(s, a[i], b[i]);
                }
            }
            let mut delta = 0.0;
            for &s in &drawn {
                let c = &sums[s];
                delta += f1_from_sums(c[0], c[1], c[2]) - f1_from_sums(c[3], c[4], c[5])
                    + stretch * (per_seed[l][s] - means[l]);
            }
            total += delta / k as f64;
        }
        reps.push(total / langs.len() as f64);
    }
    (observed, reps)
}

/// Each tail of a 95% percentile interval: its ends are the quantiles q and 1 − q.
pub const TAIL_95: f64 = 0.025;

/// How far [`until_settled`] may grow a bootstrap: this many times the samples asked for.
pub const MAX_SAMPLE_GROWTH: usize = 64;

/// Whether 0 lies within resampling noise of either end of the percentile interval
/// [q, 1 − q] of `sorted` replicates (q = 0.025: the 95% interval), so that another set of
/// resamples could flip the verdict.
///
/// The q-quantile of B replicates is their order statistic of rank ≈ qB, whose rank varies
/// between bootstraps with standard deviation √(Bq(1−q)); the band is ±3 of those around
/// each end (for q = 0.025: ranks 10-40 of 1000, 1482-1718 of 64 000).
pub fn end_within_noise_of_zero(sorted: &[f64], q: f64) -> bool {
    let b = sorted.len();
    if b < 2 {
        return false;
    }
    let last = (b - 1) as f64;
    [q, 1.0 - q].iter().any(|&q| {
        let spread = 3.0 * (b as f64 * q * (1.0 - q)).sqrt();
        let centre = q * last;
        let lo = sorted[(centre - spread).clamp(0.0, last).floor() as usize];
        let hi = sorted[(centre + spread).clamp(0.0, last).ceil() as usize];
        lo <= 0.0 && 0.0 <= hi
    })
}

/// A bootstrap whose verdict does not hang on its own resampling: `draw(n)` returns the
/// observed value and n more replicates (continuing one seeded stream); while an end of the
/// 95% interval lies within resampling noise of 0 ([`end_within_noise_of_zero`]), the
/// replicates are doubled, up to [`MAX_SAMPLE_GROWTH`] × `samples`.
///
/// At 1000 resamples an interval end is only known to about ±0.1-0.5 F1, and two published
/// verdicts flipped with the bootstrap's seed; an interval clear of 0 keeps its `samples`
/// replicates unchanged, so only the comparisons that need it pay for more.
pub fn until_settled(
    samples: usize,
    mut draw: impl FnMut(usize) -> (f64, Vec<f64>),
) -> (f64, Vec<f64>) {
    let (observed, reps) = draw(samples);
    let cap = samples.saturating_mul(MAX_SAMPLE_GROWTH);
    (observed, settle(reps, TAIL_95, 0, cap, |n| draw(n).1))
}

/// Replicates enough that the ends of the interval [q, 1 − q] are order statistics of rank
/// 20 or more (a family-wise interval's far tails need many more than 1000).
pub fn replicates_for(q: f64) -> usize {
    (20.0 / q).ceil() as usize
}

/// `reps` grown by `more(n)` (n further replicates of the same stream) first to `min`, then
/// doubled until the percentile interval [q, 1 − q] has its ends clear of 0 by their
/// resampling noise, or `cap` replicates.
pub fn settle(
    mut reps: Vec<f64>,
    q: f64,
    min: usize,
    cap: usize,
    mut more: impl FnMut(usize) -> Vec<f64>,
) -> Vec<f64> {
    if reps.len() < min.min(cap) {
        let n = min.min(cap) - reps.len();
        reps.extend(more(n));
    }
    loop {
        let mut sorted = reps.clone();
        sorted.sort_by(f64::total_cmp);
        if reps.len() >= cap || !end_within_noise_of_zero(&sorted, q) {
            return reps;
        }
        let n = reps.len().min(cap - reps.len());
        reps.extend(more(n));
    }
}

/// The family-wise interval of one comparison among `family`: the Bonferroni percentile
/// interval [α/(2m), 1 − α/(2m)] at α = 5%, so that all m intervals hold together with 95%
/// probability (and no verdict among them is a false "better" or "worse" more often than 5%
/// of the time, whatever their dependence). None for a family of one (the 95% interval).
pub fn family_wise_q(family: usize) -> Option<f64> {
    (family > 1).then(|| TAIL_95 / family as f64)
}

/// The seed-aware bootstrap of one setting's F1 (×100), not of a difference: the mean over
/// languages of its mean over seeds, and `samples` replicates drawn as [`hierarchical_deltas`]
/// draws them (seeds, then sentences, the seed level scaled to Student's t). `langs[l][s]` is
/// seed `s`'s run in language `l`, every language with the same seeds in the same order.
///
/// It is [`hierarchical_deltas`] against a system that finds nothing (F1 0 on every draw), so
/// a figure's error bars and a comparison's interval rest on one resampling scheme.
pub fn hierarchical_means(
    langs: &[Vec<&[SentenceCounts]>],
    samples: usize,
    rng: &mut SeededRng,
) -> (f64, Vec<f64>) {
    let nothing: Vec<Vec<SentenceCounts>> = langs
        .iter()
        .map(|runs| vec![[0, 0, 0]; runs.first().map_or(0, |r| r.len())])
        .collect();
    let pairs: Vec<SeedPairs<'_>> = langs
        .iter()
        .zip(&nothing)
        .map(|(runs, zero)| runs.iter().map(|r| (*r, zero.as_slice())).collect())
        .collect();
    hierarchical_deltas(&pairs, samples, rng)
}

/// Student's t 95% interval of the mean of `values` (one per seed): what the seed level of the
/// seed-aware interval reduces to for a quantity without per-sentence counts (dev F1, wall
/// time). None with fewer than two values.
pub fn t_interval(values: &[f64]) -> Option<(f64, f64)> {
    let k = values.len();
    if k < 2 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / k as f64;
    let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1) as f64).sqrt();
    let half = t_quantile_975(k - 1) * sd / (k as f64).sqrt();
    Some((mean - half, mean + half))
}

fn add_counts(s: &mut [u64; 6], x: SentenceCounts, y: SentenceCounts) {
    s[0] += u64::from(x[0]);
    s[1] += u64::from(x[1]);
    s[2] += u64::from(x[2]);
    s[3] += u64::from(y[0]);
    s[4] += u64::from(y[1]);
    s[5] += u64::from(y[2]);
}

/// Fewer seeds than this never yield "better" or "worse".
pub const MIN_SEEDS_FOR_VERDICT: usize = 3;

/// What a seed-aware interval says about a − b.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The interval lies above zero.
    Better,
    /// The interval lies below zero.
    Worse,
    /// The interval contains zero.
    NoDetectableDifference,
    /// Too few seeds to tell a setting's effect from its run-to-run variance.
    Inconclusive { seeds: usize },
}

impl Verdict {
    /// The verdict of an interval over `seeds` seeds (None: no interval).
    pub fn of(seeds: usize, interval: Option<(f64, f64)>) -> Self {
        match interval {
            Some((lo, hi)) if seeds >= MIN_SEEDS_FOR_VERDICT => {
                if lo > 0.0 {
                    Verdict::Better
                } else if hi < 0.0 {
                    Verdict::Worse
                } else {
                    Verdict::NoDetectableDifference
                }
            }
            _ => Verdict::Inconclusive { seeds },
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Better => f.write_str("better"),
            Verdict::Worse => f.write_str("worse"),
            Verdict::NoDetectableDifference => f.write_str("no detectable difference"),
            Verdict::Inconclusive { seeds: 1 } => f.write_str("inconclusive (1 seed)"),
            Verdict::Inconclusive { seeds } => write!(f, "inconclusive ({seeds} seeds)"),
        }
    }
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
    summarize_at(observed, replicates, TAIL_95)
}

/// Summarises replicates into the percentile interval [q, 1 − q].
pub fn summarize_at(observed: f64, replicates: &[f64], q: f64) -> DeltaEstimate {
    let mut sorted = replicates.to_vec();
    sorted.sort_by(f64::total_cmp);
    let not_better = sorted.iter().filter(|&&d| d <= 0.0).count();
    DeltaEstimate {
        delta: observed,
        ci_low: quantile(&sorted, q),
        ci_high: quantile(&sorted, 1.0 - q),
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
    fn a_bootstrap_grows_only_while_an_interval_end_is_within_noise_of_zero() {
        // Replicates uniform on [lo, lo + 1), drawn from one stream.
        let uniform = |lo: f64, calls: &mut Vec<usize>, rng: &mut SeededRng, n: usize| {
            calls.push(n);
            let reps = (0..n).map(|_| lo + f64::from(rng.uniform())).collect();
            (0.5 + lo, reps)
        };
        // Clear of 0: the first draw is kept as it is.
        let (mut calls, mut rng) = (Vec::new(), SeededRng::new(1));
        let (observed, reps) = until_settled(1000, |n| uniform(0.5, &mut calls, &mut rng, n));
        assert_eq!((observed, reps.len(), calls), (1.0, 1000, vec![1000]));
        // 0 sits at the 2.5% quantile itself: no number of resamples settles it, so the
        // bootstrap doubles up to its cap and stops there.
        let (mut calls, mut rng) = (Vec::new(), SeededRng::new(1));
        let (_, reps) = until_settled(1000, |n| uniform(-0.025, &mut calls, &mut rng, n));
        assert_eq!(reps.len(), 1000 * MAX_SAMPLE_GROWTH);
        assert_eq!(calls, vec![1000, 1000, 2000, 4000, 8000, 16000, 32000]);
        // Near 0 but outside the band once enough replicates pin the end down: 0 at the 2%
        // quantile is within noise of the 2.5% end at 1000 replicates (rank 20 of the band's
        // 10-40), not at 16 000 (rank 320; the band is 341-459).
        let (mut calls, mut rng) = (Vec::new(), SeededRng::new(1));
        let (_, reps) = until_settled(1000, |n| uniform(-0.02, &mut calls, &mut rng, n));
        assert!(
            reps.len() > 1000 && reps.len() < 1000 * MAX_SAMPLE_GROWTH,
            "{} replicates",
            reps.len()
        );
        let mut sorted = reps;
        sorted.sort_by(f64::total_cmp);
        assert!(!end_within_noise_of_zero(&sorted, 0.025));
        assert!(quantile(&sorted, 0.025) > 0.0);
    }

    fn end_within_noise_of_zero_95(sorted: &[f64]) -> bool {
        end_within_noise_of_zero(sorted, 0.025)
    }

    #[test]
    fn the_band_of_an_interval_end_is_three_rank_deviations_wide() {
        // 1000 replicates 0.001, 0.002, ... 1.0, shifted so that 0 sits at a chosen rank.
        let at_rank = |r: f64| -> Vec<f64> { (0..1000).map(|i| (i as f64 - r) / 1000.0).collect() };
        // The 2.5% end is near rank 25; ±3·√(1000·0.025·0.975) ≈ ±14.8 ranks.
        assert!(end_within_noise_of_zero_95(&at_rank(11.0)));
        assert!(end_within_noise_of_zero_95(&at_rank(39.0)));
        assert!(!end_within_noise_of_zero_95(&at_rank(8.5)));
        assert!(!end_within_noise_of_zero_95(&at_rank(41.5)));
        // The 97.5% end, mirrored.
        assert!(end_within_noise_of_zero_95(&at_rank(974.0)));
        assert!(!end_within_noise_of_zero_95(&at_rank(500.0)));
        assert!(!end_within_noise_of_zero(&[], 0.025));
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

    /// One synthetic comparison with a known effect: `n` test sentences with one gold and one
    /// predicted entity each, so micro F1 is accuracy. Sentence i has a difficulty shared by
    /// both settings and a small a-only twist (so the test set itself favours one a little);
    /// every seed shifts each setting's accuracy by its own N(0, seed_sd) draw. The true
    /// delta, over seeds and test sets, is `effect` ×100.
    fn synthetic_runs(
        rng: &mut SeededRng,
        n: usize,
        seeds: usize,
        effect: f64,
        seed_sd: f64,
    ) -> Vec<(Vec<SentenceCounts>, Vec<SentenceCounts>)> {
        let difficulty: Vec<f64> = (0..n).map(|_| 0.35 + 0.3 * rng.uniform() as f64).collect();
        let twist: Vec<f64> = (0..n).map(|_| 0.1 * (rng.uniform() as f64 - 0.5)).collect();
        (0..seeds)
            .map(|_| {
                let shift = rng.normal_vec(2, seed_sd as f32);
                let mut run = |p_of: &dyn Fn(usize) -> f64| -> Vec<SentenceCounts> {
                    (0..n)
                        .map(|i| {
                            let hit = (rng.uniform() as f64) < p_of(i);
                            [u32::from(hit), 1, 1]
                        })
                        .collect()
                };
                let a = run(&|i| difficulty[i] + twist[i] + effect / 2.0 + shift[0] as f64);
                let b = run(&|i| difficulty[i] - effect / 2.0 + shift[1] as f64);
                (a, b)
            })
            .collect()
    }

    /// Fraction of `experiments` synthetic comparisons whose interval covers the true delta:
    /// (seed-aware with the seed scaling, seed-aware without it, scoring noise only).
    fn coverage(seeds: usize, experiments: usize, seed_sd: f64) -> (f64, f64, f64) {
        let (n, effect, samples) = (400, 0.05, 400);
        let truth = effect * 100.0;
        let mut rng = SeededRng::new(42);
        let (mut scaled, mut plain, mut noise) = (0, 0, 0);
        for _ in 0..experiments {
            let runs = synthetic_runs(&mut rng, n, seeds, effect, seed_sd);
            let pairs: SeedPairs = runs.iter().map(|(a, b)| (&a[..], &b[..])).collect();
            let covers = |obs: f64, reps: &[f64]| {
                let e = summarize(obs, reps);
                e.ci_low <= truth && truth <= e.ci_high
            };
            let (obs, reps) = hierarchical_deltas(std::slice::from_ref(&pairs), samples, &mut rng);
            scaled += usize::from(covers(obs, &reps));
            plain += usize::from(covers(obs, &plain_replicates(&pairs, samples, &mut rng)));
            let (o, r) = paired_deltas(&pairs, samples, &mut rng);
            noise += usize::from(covers(o, &r));
        }
        let f = |c: usize| c as f64 / experiments as f64;
        (f(scaled), f(plain), f(noise))
    }

    /// The hierarchical bootstrap without the seed scaling (for the coverage comparison).
    fn plain_replicates(pairs: &SeedPairs<'_>, samples: usize, rng: &mut SeededRng) -> Vec<f64> {
        let k = pairs.len();
        let n = pairs[0].0.len();
        (0..samples)
            .map(|_| {
                let drawn: Vec<usize> = (0..k).map(|_| rng.below(k)).collect();
                let idx: Vec<usize> = (0..n).map(|_| rng.below(n)).collect();
                drawn
                    .iter()
                    .map(|&s| {
                        let (a, b) = pairs[s];
                        let pick = |x: &[SentenceCounts]| -> Vec<SentenceCounts> {
                            idx.iter().map(|&i| x[i]).collect()
                        };
                        micro_f1(&pick(a)) - micro_f1(&pick(b))
                    })
                    .sum::<f64>()
                    / k as f64
            })
            .collect()
    }

    #[test]
    fn seed_aware_interval_covers_the_true_delta_and_sentence_only_does_not() {
        // Seed variance dominates: 6 points of accuracy per setting and seed, against about
        // 3.5 points of sentence noise per run of 400 sentences.
        for seeds in [3, 5] {
            let (scaled, plain, noise) = coverage(seeds, 200, 0.06);
            eprintln!(
                "{seeds} seeds: coverage seed-aware {scaled:.3}, without the seed scaling \
                 {plain:.3}, scoring noise only {noise:.3}"
            );
            assert!((0.93..=0.995).contains(&scaled), "{seeds} seeds: {scaled}");
            assert!(plain < scaled, "{seeds} seeds: {plain} vs {scaled}");
            assert!(noise < 0.75, "{seeds} seeds: {noise}");
        }
    }

    #[test]
    fn seeds_that_agree_keep_a_scoring_noise_interval() {
        // Three seeds that produced the very same runs: no seed spread, so the seed-aware
        // interval is as wide as the scoring-noise one (the stretch has nothing to stretch).
        let mut rng = SeededRng::new(5);
        let runs = synthetic_runs(&mut rng, 400, 1, 0.05, 0.0);
        let pairs: SeedPairs = (0..3).map(|_| (&runs[0].0[..], &runs[0].1[..])).collect();
        let (o, r) = hierarchical_deltas(std::slice::from_ref(&pairs), 800, &mut rng);
        let seed_aware = summarize(o, &r);
        let (o, r) = paired_deltas(&pairs, 800, &mut rng);
        let scoring = summarize(o, &r);
        let width = |e: &DeltaEstimate| e.ci_high - e.ci_low;
        let ratio = width(&seed_aware) / width(&scoring);
        assert!(
            (0.85..1.15).contains(&ratio),
            "{ratio}: {seed_aware:?} vs {scoring:?}"
        );
        // Seeds whose runs differ only by their own errors on the sentences: still covered.
        let (scaled, _, _) = coverage(3, 100, 0.0);
        assert!(scaled >= 0.9, "{scaled}");
    }

    #[test]
    fn languages_share_the_seed_draw() {
        // Two languages whose per-seed deltas move together: the average's interval is as wide
        // as one language's (a shared priming run moves every language), not √2 narrower.
        let s = |hits: &[u32]| -> Vec<SentenceCounts> { hits.iter().map(|&h| [h, 1, 1]).collect() };
        let a1 = s(&[1; 10]);
        let b1 = s(&[0; 10]);
        let a2 = s(&[1, 1, 1, 1, 1, 0, 0, 0, 0, 0]);
        let b2 = s(&[0; 10]);
        let seeds: SeedPairs = vec![(&a1, &b1), (&a2, &b2), (&a1, &b1), (&a2, &b2)];
        let mut rng = SeededRng::new(8);
        let (o1, r1) = hierarchical_deltas(std::slice::from_ref(&seeds), 600, &mut rng);
        let (o2, r2) = hierarchical_deltas(&[seeds.clone(), seeds.clone()], 600, &mut rng);
        assert!((o1 - 75.0).abs() < 1e-9 && (o2 - 75.0).abs() < 1e-9);
        let (one, two) = (summarize(o1, &r1), summarize(o2, &r2));
        let w = |e: &DeltaEstimate| e.ci_high - e.ci_low;
        assert!(w(&two) > 0.85 * w(&one), "{one:?} vs {two:?}");
    }

    #[test]
    fn verdicts_need_three_seeds() {
        assert_eq!(Verdict::of(1, None).to_string(), "inconclusive (1 seed)");
        assert_eq!(
            Verdict::of(2, Some((1.0, 2.0))).to_string(),
            "inconclusive (2 seeds)"
        );
        assert_eq!(Verdict::of(3, Some((0.1, 2.0))), Verdict::Better);
        assert_eq!(Verdict::of(5, Some((-3.0, -0.1))), Verdict::Worse);
        assert_eq!(
            Verdict::of(5, Some((-0.1, 2.0))).to_string(),
            "no detectable difference"
        );
    }

    #[test]
    fn t_quantiles_match_tables() {
        assert!((t_quantile_975(1) - 12.706).abs() < 1e-3);
        assert!((t_quantile_975(4) - 2.776).abs() < 1e-3);
        // Beyond the table: t(40) = 2.0211, t(120) = 1.9799.
        assert!((t_quantile_975(40) - 2.0211).abs() < 1e-3);
        assert!((t_quantile_975(120) - 1.9799).abs() < 1e-3);
        // k = 5 seeds: t(4)/z · √(5/4).
        assert!((seed_scale(5) - 2.7764 / Z_975 * 1.25f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
    }
}
