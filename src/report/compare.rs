//! `comparison.md` / `comparison.csv`: our Table 1 rows next to the paper's published ones
//! (and Figure 4's matrix), the seed-aware comparisons of pairs of settings (declared in
//! `[report] compare`, or [`default_pairs`]) with their verdicts, and the test sets scored.

use crate::report::bootstrap::{self, DeltaEstimate, SeedPairs, Verdict};
use crate::report::gather::{polars_err, write_csv};
use crate::report::markdown::{self, Align};
use crate::report::paper::{PAPER_LABEL, PaperNumbers};
use crate::report::table::{CellStat, MISSING, check_settings, format_percent};
use crate::report::{ReportError, ReportInput};
use crate::rng::SeededRng;
use crate::spec::report::ComparePair;
use crate::train::FinetuneMetrics;
use polars::prelude::*;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Default number of bootstrap resamples.
pub const DEFAULT_BOOTSTRAP_SAMPLES: usize = 1000;

/// A seed-aware interval among `family` comparisons made together: the Bonferroni percentile
/// interval ([`bootstrap::family_wise_q`]), and its verdict. Where many pairs are read at once,
/// this is the verdict that keeps the chance of any false "better" or "worse" at 5%.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyWise {
    pub family: usize,
    pub estimate: DeltaEstimate,
    pub verdict: Verdict,
}

/// One of our settings next to the paper row it reproduces (F1 ×100).
#[derive(Debug, Clone, PartialEq)]
pub struct PaperCompareRow {
    pub setting: String,
    pub paper_label: String,
    /// Per language of [`Comparison::languages`]: our mean over seeds.
    pub ours: Vec<Option<f64>>,
    /// Per language: the paper's value (None for a language the paper does not report).
    pub paper: Vec<Option<f64>>,
    /// Averages over the languages where both exist.
    pub ours_avg: Option<f64>,
    pub paper_avg: Option<f64>,
    pub avg_languages: usize,
    /// Mean trained-parameter percentage of our finished runs, and the paper's.
    pub ours_percent: Option<f64>,
    pub paper_percent: f64,
}

/// One Figure 4 cell: ours (averaged over the languages present) and the paper's.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure4Compare {
    pub inner_loop: &'static str,
    pub finetune: &'static str,
    pub setting: String,
    pub ours: Option<f64>,
    pub ours_languages: usize,
    pub paper: f64,
}

/// One language of a compared pair, or their average (`lang` = "Avg").
#[derive(Debug, Clone, PartialEq)]
pub struct LangDelta {
    pub lang: String,
    /// F1(a) − F1(b) ×100 of every seed both settings finished, by seed (the average row: the
    /// mean over languages of each seed they all have).
    pub per_seed: Vec<(u64, f64)>,
    /// The seed-aware bootstrap (seeds, then sentences); its `delta` is the mean of
    /// `per_seed`. None with fewer than two seeds: there is no seed spread to estimate.
    pub seed_aware: Option<DeltaEstimate>,
    /// What the seed-aware interval supports.
    pub verdict: Verdict,
    /// The pair's headline row (its average, or its one language) when several pairs are
    /// compared together: the seed-aware interval widened for all of them to hold at once.
    pub family_wise: Option<FamilyWise>,
    /// The sentence-only bootstrap: how precisely these runs were scored, nothing more.
    pub scoring_noise: DeltaEstimate,
    /// Test sentences per run (the average row: None).
    pub sentences: Option<usize>,
}

impl LangDelta {
    /// Seeds behind the row.
    pub fn seeds(&self) -> usize {
        self.per_seed.len()
    }

    /// The mean over seeds of F1(a) − F1(b).
    pub fn delta(&self) -> f64 {
        self.scoring_noise.delta
    }
}

/// A compared pair: a − b per language and on the average.
#[derive(Debug, Clone, PartialEq)]
pub struct PairComparison {
    pub a: String,
    pub b: String,
    /// Why the pair is compared: "`[report] compare`", or the default rule that chose it.
    pub why: String,
    pub per_lang: Vec<LangDelta>,
    /// Over the languages of `per_lang`, on the seeds every one of them has (None with fewer
    /// than two languages).
    pub average: Option<LangDelta>,
    /// Why a language was left out, or the average covers fewer seeds.
    pub notes: Vec<String>,
}

impl PairComparison {
    /// The pair's headline row and what it is over: its average over the languages ("avg of
    /// 6 langs"), or the one language there is ("hi only"); None without either.
    pub fn headline(&self) -> Option<(String, &LangDelta)> {
        match (&self.average, self.per_lang.as_slice()) {
            (Some(avg), langs) => Some((format!("avg of {} langs", langs.len()), avg)),
            (None, [one]) => Some((format!("{} only", one.lang), one)),
            _ => None,
        }
    }

    /// The size of the family the pair was compared in, when it has a family-wise interval.
    pub fn family(&self) -> Option<usize> {
        self.headline()
            .and_then(|(_, d)| d.family_wise.as_ref())
            .map(|f| f.family)
    }
}

/// The test sentences the finished runs of one language were scored on.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluationSet {
    pub lang: String,
    /// How the sweep draws them (`data.*` keys), as the runs were planned.
    pub drawn_by: Vec<String>,
    /// (sentences, fingerprint) of every distinct test set among the finished runs; more than
    /// one means runs were scored on different sentences (runs from before the sweep checked
    /// it). Fingerprints are empty for runs written before primer recorded them.
    pub test_sets: Vec<(usize, String)>,
}

/// Everything in `comparison.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub languages: Vec<String>,
    pub paper_rows: Vec<PaperCompareRow>,
    pub figure4: Vec<Figure4Compare>,
    pub pairs: Vec<PairComparison>,
    pub evaluation_sets: Vec<EvaluationSet>,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Our rows mapped (`[report] paper_rows`) to the paper's Table 1.
pub fn paper_rows(
    input: &ReportInput,
    languages: &[String],
    stats: &BTreeMap<(String, String), CellStat>,
    paper: &PaperNumbers,
) -> Result<Vec<PaperCompareRow>, ReportError> {
    check_settings(input, "paper_rows", input.spec.paper_rows.keys())?;
    // Rows in Table 1 order, then any mapped setting not in the table.
    let mut order: Vec<&String> = input
        .settings
        .iter()
        .filter(|s| input.spec.paper_rows.contains_key(*s))
        .collect();
    order.extend(
        input
            .spec
            .paper_rows
            .keys()
            .filter(|s| !input.settings.contains(s)),
    );
    let mut rows = Vec::new();
    for setting in order {
        let label = &input.spec.paper_rows[setting];
        let prow = paper
            .row(label)
            .ok_or_else(|| ReportError::UnknownPaperRow {
                setting: setting.clone(),
                label: label.clone(),
                known: paper
                    .table1
                    .iter()
                    .map(|r| format!("{:?}", r.label))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let ours: Vec<Option<f64>> = languages
            .iter()
            .map(|l| stats.get(&(setting.clone(), l.clone())).map(|c| c.mean))
            .collect();
        let theirs: Vec<Option<f64>> = languages.iter().map(|l| prow.f1.get(l).copied()).collect();
        let both: Vec<(f64, f64)> = ours
            .iter()
            .zip(&theirs)
            .filter_map(|(o, p)| Some(((*o)?, (*p)?)))
            .collect();
        let percents: Vec<f64> = input
            .runs
            .iter()
            .filter(|r| &r.meta.setting == setting)
            .filter_map(|r| r.metrics.as_ref().map(|m| m.trained_percent))
            .collect();
        rows.push(PaperCompareRow {
            ours_percent: mean(&percents),
            paper_percent: prow.trained_percent,
            setting: setting.clone(),
            paper_label: prow.label.clone(),
            ours,
            paper: theirs,
            ours_avg: mean(&both.iter().map(|b| b.0).collect::<Vec<_>>()),
            paper_avg: mean(&both.iter().map(|b| b.1).collect::<Vec<_>>()),
            avg_languages: both.len(),
        });
    }
    Ok(rows)
}

/// Figure 4 cells: ours next to the paper's.
pub fn figure4_rows(
    input: &ReportInput,
    languages: &[String],
    stats: &BTreeMap<(String, String), CellStat>,
    paper: &PaperNumbers,
) -> Vec<Figure4Compare> {
    let Some(matrix) = &input.spec.figure4 else {
        return Vec::new();
    };
    let names = ["PE", "Full"];
    let mut out = Vec::new();
    for (i, row) in matrix.iter().enumerate() {
        for (j, setting) in row.iter().enumerate() {
            let present: Vec<f64> = languages
                .iter()
                .filter_map(|l| stats.get(&(setting.clone(), l.clone())).map(|c| c.mean))
                .collect();
            out.push(Figure4Compare {
                inner_loop: names[i],
                finetune: names[j],
                setting: setting.clone(),
                ours: mean(&present),
                ours_languages: present.len(),
                paper: paper.figure4[i][j],
            });
        }
    }
    out
}

/// Per seed: the finished run of a setting in one language.
fn runs_by_seed<'a>(
    input: &'a ReportInput,
    setting: &str,
    lang: &str,
) -> BTreeMap<u64, &'a FinetuneMetrics> {
    input
        .runs
        .iter()
        .filter(|r| r.meta.setting == setting && r.meta.lang == lang)
        .filter_map(|r| r.metrics.as_ref().map(|m| (r.meta.seed, m)))
        .collect()
}

/// The pairs compared: `[report] compare` when it names any, else the defaults of
/// [`default_pairs`]; each with why it is compared.
pub fn compared_pairs(input: &ReportInput) -> Result<Vec<(ComparePair, String)>, ReportError> {
    let declared = &input.spec.compare;
    // A setting split into rows (`split`) is no longer a setting here: a pair still naming
    // one is a pair whose rows share no values.
    let rows_of = |name: &str| -> Vec<&String> {
        input
            .settings
            .iter()
            .filter(|s| *s != name && crate::report::split::is_row_of(s, name))
            .collect()
    };
    for p in declared {
        let (a_rows, b_rows) = (rows_of(&p.a), rows_of(&p.b));
        if !input.settings.contains(&p.a) && !a_rows.is_empty()
            || !input.settings.contains(&p.b) && !b_rows.is_empty()
        {
            let shown = |name: &String, rows: Vec<&String>| {
                if rows.is_empty() {
                    format!("{name:?}")
                } else {
                    rows.iter()
                        .map(|r| format!("{r:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            return Err(ReportError::NoRowsOfEqualValues {
                a: p.a.clone(),
                b: p.b.clone(),
                a_rows: shown(&p.a, a_rows),
                b_rows: shown(&p.b, b_rows),
            });
        }
    }
    check_settings(input, "compare", declared.iter().flat_map(|p| [&p.a, &p.b]))?;
    if declared.is_empty() {
        Ok(default_pairs(input))
    } else {
        Ok(declared
            .iter()
            .map(|p| {
                let why = p.why.as_deref().unwrap_or("[report] compare").to_string();
                (p.clone(), why)
            })
            .collect())
    }
}

/// The comparisons a reader of Table 1 and Figure 4 asks for, when the sweep names none:
/// every primed setting against the unprimed one with the same fine-tuning method; the
/// paper's row 4 (meta priming with the PE inner loop) against rows 5-7 (its ablations, via
/// `[report] paper_rows`); and in each column of Figure 4, the inner loop that matches the
/// downstream method against the one that does not (the paper's claim).
pub fn default_pairs(input: &ReportInput) -> Vec<(ComparePair, String)> {
    let mut out: Vec<(ComparePair, String)> = Vec::new();
    let mut add = |a: &str, b: &str, why: String| {
        let known = |s: &str| input.settings.iter().any(|x| x == s);
        let seen = out
            .iter()
            .any(|(p, _)| (p.a == a && p.b == b) || (p.a == b && p.b == a));
        if a != b && known(a) && known(b) && !seen {
            let pair = ComparePair::new(a, b);
            out.push((pair, why));
        }
    };
    // A setting's priming and method, from its first run (they are fixed per setting).
    let meta_of = |setting: &str| input.runs.iter().find(|r| r.meta.setting == setting);
    // Rows of a plotted key's values (`crate::report::split`) pair with the row of the same
    // values (priming at 50 sentences against no priming at 50); a key only one side sweeps
    // (inner steps: the unprimed row has none) does not keep them apart.
    let plotted = input.spec.plotted_keys();
    let agree = |a: &crate::report::RunRecord, b: &crate::report::RunRecord| {
        plotted.iter().all(|k| {
            let (x, y) = (
                crate::report::split::axis_value(a, k),
                crate::report::split::axis_value(b, k),
            );
            x.is_none() || y.is_none() || x == y
        })
    };
    for setting in &input.settings {
        let Some(primed) = meta_of(setting).filter(|r| r.meta.priming.is_some()) else {
            continue;
        };
        let method = primed.meta.ft_method;
        let unprimed = input.settings.iter().find(|s| {
            meta_of(s).is_some_and(|r| {
                r.meta.priming.is_none() && r.meta.ft_method == method && agree(r, primed)
            })
        });
        if let Some(b) = unprimed {
            add(
                setting,
                b,
                format!("primed vs unprimed, {method} fine-tuning"),
            );
        }
    }
    let row = |n: &str| {
        input
            .spec
            .paper_rows
            .iter()
            .find(|(_, label)| label.starts_with(&format!("{n}/")))
            .map(|(setting, _)| setting.clone())
    };
    if let Some(four) = row("4") {
        for n in ["5", "6", "7"] {
            if let Some(other) = row(n) {
                add(&four, &other, format!("Table 1: row 4 vs row {n}"));
            }
        }
    }
    if let Some(m) = &input.spec.figure4 {
        add(
            &m[0][0],
            &m[1][0],
            "Figure 4: PE inner loop vs MAML loop before PE fine-tuning".to_string(),
        );
        add(
            &m[1][1],
            &m[0][1],
            "Figure 4: MAML loop vs PE inner loop before full fine-tuning".to_string(),
        );
    }
    out
}

/// One language's seed pairs of a compared pair.
struct LangPairs<'a> {
    lang: String,
    seeds: Vec<u64>,
    pairs: SeedPairs<'a>,
}

/// The seeds of one language that both settings finished, checked to be comparable sentence
/// by sentence; Err((language, why it is left out)).
fn lang_pairs<'a>(
    input: &'a ReportInput,
    pair: &ComparePair,
    lang: &str,
) -> Result<LangPairs<'a>, (String, String)> {
    let skip = |why: String| Err((lang.to_string(), why));
    let a = runs_by_seed(input, &pair.a, lang);
    let b = runs_by_seed(input, &pair.b, lang);
    let mut out = LangPairs {
        lang: lang.to_string(),
        seeds: Vec::new(),
        pairs: Vec::new(),
    };
    for (seed, ma) in &a {
        let Some(mb) = b.get(seed) else { continue };
        let (ca, cb) = (&ma.test_sentence_counts, &mb.test_sentence_counts);
        if ca.is_empty() || cb.is_empty() {
            return skip(format!(
                "seed {seed} has no per-sentence test counts (metrics.json without \
                 test_sentence_counts); re-run it to compare"
            ));
        }
        let (fa, fb) = (
            &ma.eval_sets.test_fingerprint,
            &mb.eval_sets.test_fingerprint,
        );
        let differ = if ca.len() != cb.len() {
            Some(format!("{} vs {} sentences", ca.len(), cb.len()))
        } else if !fa.is_empty() && !fb.is_empty() && fa != fb {
            Some(format!("test-set fingerprints {fa} vs {fb}"))
        } else {
            None
        };
        if let Some(how) = differ {
            return skip(format!(
                "seed {seed} scored different test sentences ({how}); rerun the runs of an \
                 older primer, which drew test sentences per seed"
            ));
        }
        out.seeds.push(*seed);
        out.pairs.push((ca, cb));
    }
    if out.pairs.is_empty() {
        return skip("no seed with both settings finished".to_string());
    }
    if out
        .pairs
        .iter()
        .any(|(x, _)| x.len() != out.pairs[0].0.len())
    {
        return skip("seeds scored test sets of different sizes".to_string());
    }
    Ok(out)
}

/// Both intervals and the verdict of one language, or of several languages averaged (then
/// every entry of `langs` lists the same seeds).
fn delta_row(
    lang: &str,
    langs: &[&LangPairs<'_>],
    samples: usize,
    family: usize,
    rng: &mut SeededRng,
) -> LangDelta {
    let seeds = &langs[0].seeds;
    let k = langs.len() as f64;
    let per_lang: Vec<Vec<f64>> = langs
        .iter()
        .map(|l| bootstrap::per_seed_deltas(&l.pairs))
        .collect();
    let per_seed: Vec<(u64, f64)> = seeds
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, per_lang.iter().map(|d| d[i]).sum::<f64>() / k))
        .collect();
    // Scoring noise: each language's sentence-only replicates, averaged replicate by replicate.
    let mut observed = 0.0;
    let mut noise_reps = vec![0.0; samples];
    for l in langs {
        let (o, reps) = bootstrap::paired_deltas(&l.pairs, samples, rng);
        observed += o / k;
        noise_reps
            .iter_mut()
            .zip(reps)
            .for_each(|(t, r)| *t += r / k);
    }
    let scoring_noise = bootstrap::summarize(observed, &noise_reps);
    let mut family_wise = None;
    let seed_aware = (seeds.len() >= 2).then(|| {
        let all: Vec<SeedPairs<'_>> = langs.iter().map(|l| l.pairs.clone()).collect();
        let (o, reps) =
            bootstrap::until_settled(samples, |n| bootstrap::hierarchical_deltas(&all, n, rng));
        let estimate = bootstrap::summarize(o, &reps);
        // The same stream, continued into the far tails the family's interval reads.
        if let Some(q) = bootstrap::family_wise_q(family) {
            let min = bootstrap::replicates_for(q).max(reps.len());
            let reps = bootstrap::settle(reps, q, min, 4 * min, |n| {
                bootstrap::hierarchical_deltas(&all, n, rng).1
            });
            let wide = bootstrap::summarize_at(o, &reps, q);
            family_wise = Some(FamilyWise {
                family,
                verdict: Verdict::of(seeds.len(), Some((wide.ci_low, wide.ci_high))),
                estimate: wide,
            });
        }
        estimate
    });
    LangDelta {
        lang: lang.to_string(),
        family_wise,
        verdict: Verdict::of(
            seeds.len(),
            seed_aware.as_ref().map(|e| (e.ci_low, e.ci_high)),
        ),
        per_seed,
        seed_aware,
        scoring_noise,
        sentences: (langs.len() == 1).then(|| langs[0].pairs[0].0.len()),
    }
}

/// The seed-aware comparison of every compared pair ([`compared_pairs`]); languages run in
/// parallel, each with its own seeded stream, so results do not depend on scheduling.
pub fn compare_pairs(
    input: &ReportInput,
    languages: &[String],
    samples: usize,
    seed: u64,
) -> Result<Vec<PairComparison>, ReportError> {
    let mut out = Vec::new();
    let compared = compared_pairs(input)?;
    // Read together, the pairs' headline verdicts are one family.
    let family = compared.len();
    for (pair, why) in compared {
        let stream = |what: &str| {
            SeededRng::derive(seed, &format!("bootstrap/{}/{}/{what}", pair.a, pair.b))
        };
        let jobs: Vec<Result<LangPairs<'_>, (String, String)>> = languages
            .iter()
            .map(|lang| lang_pairs(input, &pair, lang))
            .collect();
        let mut found = Vec::new();
        // Languages left out for the same reason share one note.
        let mut left_out: Vec<(String, Vec<String>)> = Vec::new();
        for job in jobs {
            match job {
                Ok(l) => found.push(l),
                Err((lang, why)) => match left_out.iter_mut().find(|(w, _)| *w == why) {
                    Some((_, langs)) => langs.push(lang),
                    None => left_out.push((why, vec![lang])),
                },
            }
        }
        let mut notes: Vec<String> = left_out
            .into_iter()
            .map(|(why, langs)| format!("{}: {why}", langs.join(", ")))
            .collect();
        let per_lang: Vec<LangDelta> = found
            .par_iter()
            .map(|l| {
                // A pair over one language has that language as its headline.
                let fam = if found.len() == 1 { family } else { 1 };
                delta_row(&l.lang, &[l], samples, fam, &mut stream(&l.lang))
            })
            .collect();
        // The average runs on the seeds every language has, drawn together: a seed's priming
        // run serves every language.
        let common: Vec<u64> = found.first().map_or_else(Vec::new, |first| {
            first
                .seeds
                .iter()
                .copied()
                .filter(|s| found.iter().all(|l| l.seeds.contains(s)))
                .collect()
        });
        let average = (found.len() >= 2 && !common.is_empty()).then(|| {
            let restricted: Vec<LangPairs<'_>> = found
                .iter()
                .map(|l| LangPairs {
                    lang: l.lang.clone(),
                    seeds: common.clone(),
                    pairs: common
                        .iter()
                        .map(|s| l.pairs[l.seeds.iter().position(|x| x == s).expect("common")])
                        .collect(),
                })
                .collect();
            let refs: Vec<&LangPairs<'_>> = restricted.iter().collect();
            delta_row("Avg", &refs, samples, family, &mut stream("avg"))
        });
        if found.len() >= 2 && found.iter().any(|l| l.seeds.len() > common.len()) {
            notes.push(format!(
                "the average uses the {} seed(s) every language finished",
                common.len()
            ));
        }
        out.push(PairComparison {
            a: pair.a.clone(),
            b: pair.b.clone(),
            why,
            per_lang,
            average,
            notes,
        });
    }
    Ok(out)
}

/// The seed-aware comparison of any two settings of a sweep (`primer compare`), on
/// `languages` (every language of its runs when empty), with `[report] select` applied and
/// settings split by the keys a figure plots, as the report does. A setting with one row per
/// value of such a key is compared row by row with the other side's rows of the same value,
/// as a `[report] compare` pair naming it is ([`crate::report::split`]), never pooled over the
/// values; a row can also be named alone (`4/MP→AT · finetune.data.train_limit=50`). One
/// comparison per pair of rows, in the order of the rows.
pub fn compare_settings(
    input: &ReportInput,
    a: &str,
    b: &str,
    languages: &[String],
    samples: usize,
    seed: u64,
) -> Result<Vec<PairComparison>, ReportError> {
    let (mut selected, _) = crate::report::select::apply(input);
    selected.spec.compare = vec![ComparePair::new(a, b)];
    let (split, _) = crate::report::split::split_settings(&selected, &input.spec.plotted_keys());
    for name in [a, b] {
        let known = |list: &[String]| list.iter().any(|s| s == name);
        if !known(&split.settings) && !known(&selected.settings) {
            return Err(ReportError::NotASetting {
                name: name.to_string(),
                known: split.settings.join(", "),
                suggestion: crate::report::nearest_setting(name, &split.settings),
            });
        }
    }
    let all_languages = crate::report::table::table_languages(input);
    for l in languages {
        if !all_languages.contains(l) {
            return Err(ReportError::NotALanguage {
                lang: l.clone(),
                known: all_languages.join(", "),
            });
        }
    }
    let languages = if languages.is_empty() {
        all_languages
    } else {
        languages.to_vec()
    };
    let mut pairs = compare_pairs(&split, &languages, samples, seed)?;
    for pair in &mut pairs {
        pair.why = "primer compare".to_string();
    }
    Ok(pairs)
}

/// The seed-aware comparison of two values of a swept key (`primer compare --key`): in every
/// setting (or only `setting`) whose runs take both, the runs with `key = a` against those with
/// `key = b`, all other keys equal; each side is the row the report gives that value when a
/// figure plots the key ([`crate::report::split`]), so the numbers are the report's. A
/// `[report] select` over the key itself chooses among the other keys only.
#[allow(clippy::too_many_arguments)]
pub fn compare_key_values(
    input: &ReportInput,
    key: &str,
    a: &str,
    b: &str,
    setting: Option<&str>,
    languages: &[String],
    samples: usize,
    seed: u64,
) -> Result<Vec<PairComparison>, ReportError> {
    use crate::report::split::{shown_value, split_name, split_settings};
    let mut swept: Vec<String> = Vec::new();
    let mut values: Vec<String> = Vec::new();
    for r in &input.runs {
        for (k, v) in &r.meta.axes {
            if !swept.contains(k) {
                swept.push(k.clone());
            }
            if k == key && !values.contains(v) {
                values.push(v.clone());
            }
        }
    }
    if values.is_empty() {
        return Err(ReportError::NotASweptKey {
            key: key.to_string(),
            known: if swept.is_empty() {
                "none".to_string()
            } else {
                swept.join(", ")
            },
        });
    }
    // The value as the runs record it (1 and 1.0 are one value; strings need no quotes).
    let find = |wanted: &str| {
        let wanted_json = serde_json::from_str(wanted)
            .unwrap_or_else(|_| serde_json::Value::String(wanted.to_string()));
        values
            .iter()
            .find(|v| {
                serde_json::from_str(v)
                    .is_ok_and(|v| crate::spec::source::values_equal(&v, &wanted_json))
            })
            .map(|v| shown_value(v))
            .ok_or_else(|| ReportError::NotAKeyValue {
                key: key.to_string(),
                value: wanted.to_string(),
                known: values
                    .iter()
                    .map(|v| shown_value(v))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    };
    let (a, b) = (find(a)?, find(b)?);
    if let Some(s) = setting
        && !input.settings.iter().any(|x| x == s)
    {
        return Err(ReportError::NotASetting {
            name: s.to_string(),
            known: input.settings.join(", "),
            suggestion: crate::report::nearest_setting(s, &input.settings),
        });
    }
    let mut unselected = input.clone();
    if let Some(select) = &mut unselected.spec.select {
        select.over.retain(|k| k != key);
        if select.over.is_empty() {
            unselected.spec.select = None;
        }
    }
    let (selected, _) = crate::report::select::apply(&unselected);
    let mut keys = input.spec.plotted_keys();
    if !keys.iter().any(|k| k == key) {
        keys.push(key.to_string());
    }
    let (mut split, rows) = split_settings(&selected, &keys);
    let mut pairs = Vec::new();
    for row in &rows {
        let of_key = row.values.iter().find(|(k, _)| k == key);
        if setting.is_some_and(|s| s != row.setting) || of_key.is_none_or(|(_, v)| *v != a) {
            continue;
        }
        let other: Vec<(String, String)> = row
            .values
            .iter()
            .map(|(k, v)| (k.clone(), if k == key { b.clone() } else { v.clone() }))
            .collect();
        let other = split_name(&row.setting, &other);
        if rows.iter().any(|r| r.name == other) {
            pairs.push(ComparePair::new(row.name.clone(), other));
        }
    }
    if pairs.is_empty() {
        return Err(ReportError::NoKeyPair {
            key: key.to_string(),
            a,
            b,
            within: setting.map_or(String::new(), |s| format!(" named {s:?}")),
        });
    }
    let all_languages = crate::report::table::table_languages(input);
    for l in languages {
        if !all_languages.contains(l) {
            return Err(ReportError::NotALanguage {
                lang: l.clone(),
                known: all_languages.join(", "),
            });
        }
    }
    let languages = if languages.is_empty() {
        all_languages
    } else {
        languages.to_vec()
    };
    split.spec.compare = pairs;
    let mut out = compare_pairs(&split, &languages, samples, seed)?;
    for p in &mut out {
        p.why = format!("primer compare --key {key}");
    }
    Ok(out)
}

/// The test sets of each language's finished runs, and how the sweep draws them.
pub fn evaluation_sets(input: &ReportInput, languages: &[String]) -> Vec<EvaluationSet> {
    languages
        .iter()
        .map(|lang| {
            let runs: Vec<&crate::report::RunRecord> =
                input.runs.iter().filter(|r| &r.meta.lang == lang).collect();
            let mut test_sets: Vec<(usize, String)> = Vec::new();
            for m in runs.iter().filter_map(|r| r.metrics.as_ref()) {
                let set = (
                    m.test_sentence_counts.len(),
                    m.eval_sets.test_fingerprint.clone(),
                );
                if !test_sets.contains(&set) {
                    test_sets.push(set);
                }
            }
            EvaluationSet {
                lang: lang.clone(),
                drawn_by: runs
                    .first()
                    .map(|r| r.meta.evaluation.clone())
                    .unwrap_or_default(),
                test_sets,
            }
        })
        .collect()
}

fn f2(v: Option<f64>) -> String {
    v.map_or(MISSING.to_string(), |v| format!("{v:.2}"))
}

fn signed(v: Option<f64>) -> String {
    v.map_or(MISSING.to_string(), |v| format!("{v:+.2}"))
}

fn diff(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? - b?)
}

impl Comparison {
    /// The comparison as markdown.
    pub fn to_markdown(&self, samples: usize) -> String {
        let mut out = String::from("# Comparisons\n\n");
        out += &self.pairs_markdown(samples);
        out += "## Ours and the paper\n\n";
        out += &format!(
            "Test entity-level micro F1 ×100. \"{PAPER_LABEL}\" is the paper's published Table 1; \
             Δ = ours − paper. Our cells are means over seeds; Avg covers the languages where both \
             exist. {MISSING}: not available.\n\n"
        );
        if self.paper_rows.is_empty() {
            out += "No setting is mapped to a paper row (`[report] paper_rows` is empty).\n\n";
        } else {
            let mut headers = vec![
                "Setting".to_string(),
                "Source".to_string(),
                "% params".to_string(),
            ];
            headers.extend(self.languages.iter().cloned());
            headers.push("Avg".into());
            let mut aligns = vec![Align::Left, Align::Left];
            aligns.extend(std::iter::repeat_n(Align::Right, self.languages.len() + 2));
            let mut rows = Vec::new();
            for r in &self.paper_rows {
                let mut ours = vec![
                    r.setting.clone(),
                    "ours".to_string(),
                    r.ours_percent.map_or(MISSING.to_string(), format_percent),
                ];
                ours.extend(r.ours.iter().map(|v| f2(*v)));
                ours.push(f2(r.ours_avg));
                let mut theirs = vec![
                    format!("↳ {}", r.paper_label),
                    PAPER_LABEL.to_string(),
                    format_percent(r.paper_percent),
                ];
                theirs.extend(r.paper.iter().map(|v| f2(*v)));
                theirs.push(f2(r.paper_avg));
                let mut delta = vec![String::new(), "Δ ours − paper".to_string(), String::new()];
                delta.extend(
                    r.ours
                        .iter()
                        .zip(&r.paper)
                        .map(|(o, p)| signed(diff(*o, *p))),
                );
                delta.push(signed(diff(r.ours_avg, r.paper_avg)));
                rows.extend([ours, theirs, delta]);
            }
            out += &markdown::table(&headers, &aligns, &rows);
            out += "\n";
        }
        if !self.figure4.is_empty() {
            out += "### Figure 4 (average over languages)\n\n";
            let headers: Vec<String> = [
                "Inner loop",
                "Fine-tuning",
                "Setting",
                "ours",
                PAPER_LABEL,
                "Δ",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let rows: Vec<Vec<String>> = self
                .figure4
                .iter()
                .map(|c| {
                    vec![
                        c.inner_loop.to_string(),
                        c.finetune.to_string(),
                        c.setting.clone(),
                        match c.ours {
                            Some(v) if c.ours_languages < self.languages.len() => {
                                format!(
                                    "{v:.2} ({}/{} langs)",
                                    c.ours_languages,
                                    self.languages.len()
                                )
                            }
                            v => f2(v),
                        },
                        format!("{:.2}", c.paper),
                        signed(c.ours.map(|o| o - c.paper)),
                    ]
                })
                .collect();
            let aligns = [
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Right,
            ];
            out += &markdown::table(&headers, &aligns, &rows);
            out += &format!(
                "\nOurs averages over {}; the paper's over hi af az lt et nl.\n\n",
                self.languages.join(" ")
            );
        }
        out += &self.evaluation_markdown();
        out
    }

    /// The seed-aware comparisons: a summary of every pair's average (with the family-wise
    /// interval when there are several pairs), then one table per pair.
    pub fn pairs_markdown(&self, samples: usize) -> String {
        if self.pairs.is_empty() {
            return String::new();
        }
        let mut out = format!(
            "## Is a better than b? (test F1 ×100, a − b)\n\n\
             Each seed is one unit: its priming run and the fine-tuning runs that start from it. \
             **95% CI, seeds + sentences** is a hierarchical bootstrap ({samples} resamples, \
             doubled up to {}× where an end of the interval lies within resampling noise of 0, \
             so that no verdict hangs on the bootstrap's own draw; the CSV's `samples` column \
             gives the count): it resamples seeds, then the test sentences, with the seed \
             level's spread scaled to Student's t for the few seeds a sweep has \
             (`primer::report::bootstrap`). The \
             verdict rests on it: *better* / *worse* when it excludes 0, *no detectable \
             difference* when it does not, *inconclusive* with fewer than {} seeds. **Scoring \
             noise only** resamples test sentences with every run kept: it says how precisely \
             these runs were scored, not whether the setting is better. With several pairs, \
             **95% CI, family of m** widens each pair's headline interval (Bonferroni: the \
             percentiles α/2m and 1 − α/2m of the same bootstrap) so that all m hold together; \
             its verdict is the one to read when the pairs are read as a whole.\n\n",
            bootstrap::MAX_SAMPLE_GROWTH,
            bootstrap::MIN_SEEDS_FOR_VERDICT
        );
        let ci = |e: &Option<DeltaEstimate>| {
            e.as_ref().map_or(MISSING.to_string(), |e| {
                format!("[{:+.2}, {:+.2}]", e.ci_low, e.ci_high)
            })
        };
        // With several pairs, each headline also gets the family's interval and verdict.
        let family = self.pairs.iter().find_map(PairComparison::family);
        let mut headers: Vec<String> = ["a", "b", "Why", "Over", "Seeds", "Δ", "95% CI", "Verdict"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if let Some(m) = family {
            headers.extend([
                format!("95% CI, family of {m}"),
                "Family-wise verdict".to_string(),
            ]);
        }
        let rows: Vec<Vec<String>> = self
            .pairs
            .iter()
            .map(|p| {
                let mut row = vec![p.a.clone(), p.b.clone(), p.why.clone()];
                let headline = p.headline();
                row.push(
                    headline
                        .as_ref()
                        .map_or(MISSING.to_string(), |h| h.0.clone()),
                );
                let summary = headline.map(|h| h.1);
                match summary {
                    Some(d) => row.extend([
                        d.seeds().to_string(),
                        format!("{:+.2}", d.delta()),
                        ci(&d.seed_aware),
                        d.verdict.to_string(),
                    ]),
                    None => {
                        row.extend(["0".into(), MISSING.into(), MISSING.into(), MISSING.into()])
                    }
                }
                if family.is_some() {
                    match summary.and_then(|d| d.family_wise.as_ref()) {
                        Some(f) => {
                            row.extend([ci(&Some(f.estimate.clone())), f.verdict.to_string()])
                        }
                        None => row.extend([MISSING.to_string(), MISSING.to_string()]),
                    }
                }
                row
            })
            .collect();
        let mut aligns = vec![Align::Left; 4];
        aligns.extend([Align::Right, Align::Right, Align::Right, Align::Left]);
        if family.is_some() {
            aligns.extend([Align::Right, Align::Left]);
        }
        out += &markdown::table(&headers, &aligns, &rows);
        let headers: Vec<String> = [
            "Lang",
            "Seeds",
            "Δ per seed",
            "Mean Δ",
            "95% CI, seeds + sentences",
            "Verdict",
            "95% CI, scoring noise only",
            "Sentences",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for p in &self.pairs {
            out += &format!("\n### {} − {} ({})\n\n", p.a, p.b, p.why);
            let rows: Vec<Vec<String>> = p
                .per_lang
                .iter()
                .chain(&p.average)
                .map(|d| {
                    vec![
                        d.lang.clone(),
                        d.seeds().to_string(),
                        d.per_seed
                            .iter()
                            .map(|(s, v)| format!("{s}: {v:+.2}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        format!("{:+.2}", d.delta()),
                        ci(&d.seed_aware),
                        d.verdict.to_string(),
                        ci(&Some(d.scoring_noise.clone())),
                        d.sentences.map_or(String::new(), |n| n.to_string()),
                    ]
                })
                .collect();
            if rows.is_empty() {
                out += "No language has a seed that both settings finished.\n";
            } else {
                let mut aligns = vec![Align::Left, Align::Right, Align::Left];
                aligns.extend([Align::Right, Align::Right, Align::Left, Align::Right]);
                aligns.push(Align::Right);
                out += &markdown::table(&headers, &aligns, &rows);
            }
            for n in &p.notes {
                out += &format!("\n- {n}");
            }
            if !p.notes.is_empty() {
                out += "\n";
            }
        }
        out + "\n"
    }

    /// Which test sentences each language's runs were scored on.
    fn evaluation_markdown(&self) -> String {
        if self.evaluation_sets.is_empty() {
            return String::new();
        }
        let mut out = "## Test sets\n\nEvery run of a language is scored on the same test \
                       sentences, drawn once per sweep (not per seed); the fingerprint is a hash \
                       of their words and tags, recorded by each run.\n\n"
            .to_string();
        for e in &self.evaluation_sets {
            let how = if e.drawn_by.is_empty() {
                String::new()
            } else {
                format!(" ({})", e.drawn_by.join(", "))
            };
            let sets: Vec<String> = e
                .test_sets
                .iter()
                .map(|(n, f)| {
                    if f.is_empty() {
                        format!("{n} sentences (no fingerprint recorded)")
                    } else {
                        format!("{n} sentences, fingerprint {f}")
                    }
                })
                .collect();
            out += &match sets.len() {
                0 => format!("- {}: no finished run{how}\n", e.lang),
                1 => format!("- {}: {}{how}\n", e.lang, sets[0]),
                k => format!(
                    "- {}: **runs were scored on {k} different test sets** ({}){how}; compare \
                     only runs of one\n",
                    e.lang,
                    sets.join("; ")
                ),
            };
        }
        out
    }

    /// Long table: `section` (paper: F1 per language and avg; trained_percent: % of parameters
    /// trained; figure4; comparison: a − b per language and avg, with `per_seed_delta` as
    /// `seed:delta` pairs, the seed-aware `ci_low`/`ci_high` and `verdict`, and the
    /// `scoring_noise_ci_*`), then the columns that section uses.
    pub fn to_frame(&self) -> Result<DataFrame, ReportError> {
        #[derive(Default)]
        struct Cols {
            section: Vec<String>,
            setting: Vec<Option<String>>,
            reference: Vec<Option<String>>,
            a: Vec<Option<String>>,
            b: Vec<Option<String>>,
            lang: Vec<Option<String>>,
            ours: Vec<Option<f64>>,
            paper: Vec<Option<f64>>,
            diff: Vec<Option<f64>>,
            why: Vec<Option<String>>,
            delta: Vec<Option<f64>>,
            per_seed: Vec<Option<String>>,
            ci_low: Vec<Option<f64>>,
            ci_high: Vec<Option<f64>>,
            verdict: Vec<Option<String>>,
            noise_ci_low: Vec<Option<f64>>,
            noise_ci_high: Vec<Option<f64>>,
            seeds: Vec<Option<u64>>,
            sentences: Vec<Option<u64>>,
            samples: Vec<Option<u64>>,
            family: Vec<Option<u64>>,
            family_ci_low: Vec<Option<f64>>,
            family_ci_high: Vec<Option<f64>>,
            family_verdict: Vec<Option<String>>,
        }
        #[allow(clippy::too_many_arguments)]
        fn push(
            c: &mut Cols,
            section: &str,
            setting: Option<&str>,
            reference: Option<&str>,
            ab: Option<(&str, &str)>,
            lang: Option<&str>,
            ours: Option<f64>,
            paper: Option<f64>,
            est: Option<(&str, &LangDelta)>,
        ) {
            c.section.push(section.to_string());
            c.setting.push(setting.map(String::from));
            c.reference.push(reference.map(String::from));
            c.a.push(ab.map(|x| x.0.to_string()));
            c.b.push(ab.map(|x| x.1.to_string()));
            c.lang.push(lang.map(String::from));
            c.ours.push(ours);
            c.paper.push(paper);
            c.diff.push(diff(ours, paper));
            let d = est.map(|e| e.1);
            c.why.push(est.map(|e| e.0.to_string()));
            c.delta.push(d.map(|d| d.delta()));
            c.per_seed.push(d.map(|d| {
                d.per_seed
                    .iter()
                    .map(|(s, v)| format!("{s}:{v:.4}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }));
            let seed_aware = d.and_then(|d| d.seed_aware.as_ref());
            c.ci_low.push(seed_aware.map(|e| e.ci_low));
            c.ci_high.push(seed_aware.map(|e| e.ci_high));
            c.verdict.push(d.map(|d| d.verdict.to_string()));
            c.noise_ci_low.push(d.map(|d| d.scoring_noise.ci_low));
            c.noise_ci_high.push(d.map(|d| d.scoring_noise.ci_high));
            c.seeds.push(d.map(|d| d.seeds() as u64));
            c.sentences
                .push(d.and_then(|d| d.sentences).map(|v| v as u64));
            // The verdict's interval's resamples (more than asked where it was near 0).
            c.samples
                .push(d.map(|d| d.seed_aware.as_ref().unwrap_or(&d.scoring_noise).samples as u64));
            let fw = d.and_then(|d| d.family_wise.as_ref());
            c.family.push(fw.map(|f| f.family as u64));
            c.family_ci_low.push(fw.map(|f| f.estimate.ci_low));
            c.family_ci_high.push(fw.map(|f| f.estimate.ci_high));
            c.family_verdict.push(fw.map(|f| f.verdict.to_string()));
        }
        let mut c = Cols::default();
        for r in &self.paper_rows {
            for (i, l) in self.languages.iter().enumerate() {
                push(
                    &mut c,
                    "paper",
                    Some(&r.setting),
                    Some(&r.paper_label),
                    None,
                    Some(l),
                    r.ours[i],
                    r.paper[i],
                    None,
                );
            }
            push(
                &mut c,
                "paper",
                Some(&r.setting),
                Some(&r.paper_label),
                None,
                Some("avg"),
                r.ours_avg,
                r.paper_avg,
                None,
            );
            push(
                &mut c,
                "trained_percent",
                Some(&r.setting),
                Some(&r.paper_label),
                None,
                None,
                r.ours_percent,
                Some(r.paper_percent),
                None,
            );
        }
        for f in &self.figure4 {
            let reference = format!("figure4 inner={} ft={}", f.inner_loop, f.finetune);
            push(
                &mut c,
                "figure4",
                Some(&f.setting),
                Some(&reference),
                None,
                Some("avg"),
                f.ours,
                Some(f.paper),
                None,
            );
        }
        for p in &self.pairs {
            for d in p.per_lang.iter().chain(&p.average) {
                push(
                    &mut c,
                    "comparison",
                    None,
                    None,
                    Some((&p.a, &p.b)),
                    Some(&d.lang.to_lowercase()),
                    None,
                    None,
                    Some((&p.why, d)),
                );
            }
        }
        let h = c.section.len();
        let s = |n: &str, v: Vec<Option<String>>| Series::new(n.into(), v).into_column();
        let f = |n: &str, v: Vec<Option<f64>>| Series::new(n.into(), v).into_column();
        let u = |n: &str, v: Vec<Option<u64>>| Series::new(n.into(), v).into_column();
        DataFrame::new(
            h,
            vec![
                Series::new("section".into(), c.section).into_column(),
                s("setting", c.setting),
                s("reference", c.reference),
                s("a", c.a),
                s("b", c.b),
                s("lang", c.lang),
                f("ours", c.ours),
                f("paper", c.paper),
                f("diff", c.diff),
                s("why", c.why),
                f("delta", c.delta),
                s("per_seed_delta", c.per_seed),
                f("ci_low", c.ci_low),
                f("ci_high", c.ci_high),
                s("verdict", c.verdict),
                f("scoring_noise_ci_low", c.noise_ci_low),
                f("scoring_noise_ci_high", c.noise_ci_high),
                u("seeds", c.seeds),
                u("sentences", c.sentences),
                u("samples", c.samples),
                u("family", c.family),
                f("family_ci_low", c.family_ci_low),
                f("family_ci_high", c.family_ci_high),
                s("family_verdict", c.family_verdict),
            ],
        )
        .map_err(polars_err("building the comparison table"))
    }

    /// Writes `comparison.md` and `comparison.csv` under `dir`.
    pub fn write(&self, dir: &Path, samples: usize) -> Result<Vec<PathBuf>, ReportError> {
        let md = dir.join("comparison.md");
        crate::fsutil::write_atomic(&md, self.to_markdown(samples).as_bytes())?;
        let csv = dir.join("comparison.csv");
        write_csv(&self.to_frame()?, &csv)?;
        Ok(vec![md, csv])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testutil::{counted_run, input};
    use crate::report::{ReportOptions, write_report};
    use crate::spec::report::{FigureKind, FigureSpec, ReportSpec};

    const STEPS: &str = "prime.inner_steps";

    /// Meta priming at S = 1, 2 and 5 (a figure plots S) and an unprimed row, 3 seeds on two
    /// languages, with test sentences whose counts differ so the bootstrap has work to do.
    fn steps_input(dir: &std::path::Path) -> ReportInput {
        let mut runs = Vec::new();
        for (li, lang) in ["hi", "af"].iter().enumerate() {
            for seed in 1..=3u64 {
                for (si, s) in ["1", "2", "5"].iter().enumerate() {
                    let mut r = counted_run("MP", lang, seed, [1, 1, 1], &[(STEPS, s)]);
                    let m = r.metrics.as_mut().unwrap();
                    for (i, c) in m.test_sentence_counts.iter_mut().enumerate() {
                        // Misses grow with fewer steps, differently per seed and language.
                        let miss = (i as u64 + seed + li as u64 + 2 * si as u64).is_multiple_of(4);
                        *c = if miss { [0, 1, 1] } else { [1, 1, 1] };
                    }
                    m.test.f1 = bootstrap::micro_f1(&m.test_sentence_counts) / 100.0;
                    r.meta.priming = Some(crate::config::PrimingMethod::Meta);
                    runs.push(r);
                }
                runs.push(counted_run("AT", lang, seed, [2, 3, 3], &[]));
            }
        }
        let spec = ReportSpec {
            figure: vec![FigureSpec {
                name: "steps".into(),
                kind: FigureKind::Line,
                x: STEPS.into(),
                series: "setting".into(),
                y: Default::default(),
                facet: Default::default(),
                filter: None,
                title: None,
            }],
            compare: vec![ComparePair::new(
                format!("MP · {STEPS}=1"),
                format!("MP · {STEPS}=5"),
            )],
            bootstrap_samples: Some(300),
            ..Default::default()
        };
        let mut inp = input(&["AT", "MP"], &["hi", "af"], runs, spec);
        inp.results_dir = dir.to_path_buf();
        inp
    }

    #[test]
    fn comparing_two_values_of_a_key_gives_the_reports_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let inp = steps_input(dir.path());
        let report = write_report(&inp, &ReportOptions::default()).unwrap();
        // The report has one row per S and compares the declared pair.
        let rows: Vec<&str> = report
            .table1
            .rows
            .iter()
            .map(|r| r.setting.as_str())
            .collect();
        assert_eq!(
            rows,
            vec![
                "AT",
                "MP · prime.inner_steps=1",
                "MP · prime.inner_steps=2",
                "MP · prime.inner_steps=5"
            ]
        );
        let in_report = &report.comparison.pairs[0];
        let by_key = compare_key_values(&inp, STEPS, "1", "5.0", None, &[], 300, 0).unwrap();
        assert_eq!(by_key.len(), 1);
        let pair = &by_key[0];
        assert_eq!((&pair.a, &pair.b), (&in_report.a, &in_report.b));
        assert_eq!(pair.per_lang, in_report.per_lang);
        assert_eq!(pair.average, in_report.average);
        assert!(pair.average.as_ref().unwrap().seed_aware.is_some());
        // The unprimed row is compared with every S by default, and the figure is written.
        let defaults =
            default_pairs(&crate::report::split::split_settings(&inp, &inp.spec.plotted_keys()).0);
        assert_eq!(defaults.len(), 3);
        assert!(defaults.iter().all(|(p, _)| p.b == "AT"));
        for f in ["steps.svg", "steps.png", "steps.csv"] {
            assert!(dir.path().join(f).is_file(), "{f} missing");
        }
    }

    #[test]
    fn key_comparisons_check_the_key_its_values_and_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let inp = steps_input(dir.path());
        let err = |k: &str, a: &str, b: &str, s: Option<&str>| {
            compare_key_values(&inp, k, a, b, s, &[], 50, 0)
                .unwrap_err()
                .to_string()
        };
        assert!(err("prime.inner_lr", "1", "5", None).contains("not a key this sweep varies"));
        assert!(err(STEPS, "1", "7", None).contains("never takes the value 7"));
        assert!(err(STEPS, "1", "5", Some("Nope")).contains("not a setting"));
        assert!(err(STEPS, "1", "5", Some("AT")).contains("no setting named \"AT\""));
        let pairs =
            compare_key_values(&inp, STEPS, "2", "1", Some("MP"), &["af".into()], 50, 0).unwrap();
        assert_eq!(pairs[0].per_lang.len(), 1);
        assert_eq!(pairs[0].per_lang[0].lang, "af");
    }

    /// Pairs compared together get a family-wise interval on their headline row (wider than
    /// its 95% interval, from the same stream); a lone pair and per-language rows do not.
    #[test]
    fn pairs_read_together_get_a_family_wise_interval() {
        let dir = tempfile::tempdir().unwrap();
        let inp = steps_input(dir.path());
        let pairs = compare_settings(&inp, "MP", "AT", &[], 300, 0).unwrap();
        assert_eq!(pairs.len(), 3);
        for p in &pairs {
            let avg = p.average.as_ref().unwrap();
            let fw = avg.family_wise.as_ref().expect("a family-wise interval");
            let ci = avg.seed_aware.as_ref().unwrap();
            assert_eq!(fw.family, 3);
            assert!(
                fw.estimate.ci_low <= ci.ci_low && fw.estimate.ci_high >= ci.ci_high,
                "{fw:?} vs {ci:?}"
            );
            // The far tails need more replicates than the 95% interval's 300.
            assert!(fw.estimate.samples >= bootstrap::replicates_for(bootstrap::TAIL_95 / 3.0));
            assert!(p.per_lang.iter().all(|l| l.family_wise.is_none()));
        }
        let one = compare_settings(&inp, &pairs[0].a, "AT", &[], 300, 0).unwrap();
        assert_eq!(one.len(), 1);
        assert!(one[0].average.as_ref().unwrap().family_wise.is_none());
        // The 95% interval is the same whether or not a family is computed after it.
        assert_eq!(
            one[0].average.as_ref().unwrap().seed_aware,
            pairs[0].average.as_ref().unwrap().seed_aware
        );
    }

    /// `primer compare A B` on a setting split by a plotted key compares its rows, never the
    /// setting pooled over the key's values; a row's numbers are the report's.
    #[test]
    fn comparing_settings_compares_the_rows_of_a_split_setting() {
        let dir = tempfile::tempdir().unwrap();
        let inp = steps_input(dir.path());
        let err = compare_settings(&inp, "MX", "AT", &[], 50, 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"MX\" is not a setting") && err.contains("MP · prime.inner_steps=1"),
            "{err}"
        );
        // The split setting as a whole: each of its rows against AT, which sweeps no steps.
        let rows = compare_settings(&inp, "MP", "AT", &[], 50, 0).unwrap();
        let names: Vec<(&str, &str)> = rows.iter().map(|p| (p.a.as_str(), p.b.as_str())).collect();
        assert_eq!(
            names,
            vec![
                (format!("MP · {STEPS}=1").as_str(), "AT"),
                (format!("MP · {STEPS}=2").as_str(), "AT"),
                (format!("MP · {STEPS}=5").as_str(), "AT"),
            ]
        );
        let report = write_report(&inp, &ReportOptions::default()).unwrap();
        let in_report = &report.comparison.pairs[0];
        let pair = compare_settings(&inp, &in_report.a, &in_report.b, &[], 300, 0).unwrap();
        assert_eq!(pair.len(), 1);
        assert_eq!(pair[0].per_lang, in_report.per_lang);
        assert_eq!(pair[0].average, in_report.average);
    }
}
