//! `comparison.md` / `comparison.csv`: our Table 1 rows next to the paper's published ones
//! (and Figure 4's matrix), plus paired bootstrap intervals for the `[report] compare` pairs.

use crate::report::bootstrap::{self, DeltaEstimate, SeedPairs};
use crate::report::gather::{polars_err, write_csv};
use crate::report::markdown::{self, Align};
use crate::report::paper::{PAPER_LABEL, PaperNumbers};
use crate::report::table::{CellStat, MISSING, check_settings, format_percent};
use crate::report::{ReportError, ReportInput};
use crate::rng::SeededRng;
use crate::train::metrics::SentenceCounts;
use polars::prelude::*;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Default number of bootstrap resamples.
pub const DEFAULT_BOOTSTRAP_SAMPLES: usize = 1000;

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

/// The paired bootstrap of one language for one pair.
#[derive(Debug, Clone, PartialEq)]
pub struct LangDelta {
    pub lang: String,
    pub estimate: DeltaEstimate,
    /// Seeds for which both settings finished.
    pub seeds: usize,
    pub sentences: usize,
}

/// A `[report] compare` pair: a − b per language and on the average.
#[derive(Debug, Clone, PartialEq)]
pub struct PairComparison {
    pub a: String,
    pub b: String,
    pub per_lang: Vec<LangDelta>,
    /// Over the languages of `per_lang`: each replicate averages the languages' replicates.
    pub average: Option<DeltaEstimate>,
    /// Why a language was left out.
    pub notes: Vec<String>,
}

/// Everything in `comparison.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub languages: Vec<String>,
    pub paper_rows: Vec<PaperCompareRow>,
    pub figure4: Vec<Figure4Compare>,
    pub pairs: Vec<PairComparison>,
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

/// Per seed: the test sentence counts of a setting's finished runs in one language.
fn counts_by_seed<'a>(
    input: &'a ReportInput,
    setting: &str,
    lang: &str,
) -> BTreeMap<u64, &'a [SentenceCounts]> {
    input
        .runs
        .iter()
        .filter(|r| r.meta.setting == setting && r.meta.lang == lang)
        .filter_map(|r| {
            r.metrics
                .as_ref()
                .map(|m| (r.meta.seed, m.test_sentence_counts.as_slice()))
        })
        .collect()
}

/// One language of a pair: its estimate and replicates, or (language, why it was left out).
type LangJob = Result<(LangDelta, Vec<f64>), (String, String)>;

/// The paired bootstrap of every `[report] compare` pair (languages in parallel; each has its
/// own seeded stream, so results do not depend on scheduling).
pub fn bootstrap_pairs(
    input: &ReportInput,
    languages: &[String],
    samples: usize,
    seed: u64,
) -> Result<Vec<PairComparison>, ReportError> {
    let pairs = &input.spec.compare;
    check_settings(input, "compare", pairs.iter().flat_map(|p| [&p.a, &p.b]))?;
    let mut out = Vec::new();
    for pair in pairs {
        let jobs: Vec<LangJob> = languages
            .par_iter()
            .map(|lang| {
                let a = counts_by_seed(input, &pair.a, lang);
                let b = counts_by_seed(input, &pair.b, lang);
                let mut seed_pairs: SeedPairs = Vec::new();
                for (s, ca) in &a {
                    let Some(cb) = b.get(s) else { continue };
                    if ca.is_empty() || cb.is_empty() {
                        return Err((
                            lang.clone(),
                            format!(
                                "seed {s} has no per-sentence test counts (metrics.json without \
                                 test_sentence_counts); re-run it to bootstrap"
                            ),
                        ));
                    }
                    if ca.len() != cb.len() {
                        return Err((
                            lang.clone(),
                            format!(
                                "seed {s} scored different test sets ({} vs {} sentences); \
                                 check the sweep's test_limit",
                                ca.len(),
                                cb.len()
                            ),
                        ));
                    }
                    seed_pairs.push((ca, cb));
                }
                if seed_pairs.is_empty() {
                    return Err((
                        lang.clone(),
                        "no seed with both settings finished".to_string(),
                    ));
                }
                if seed_pairs
                    .iter()
                    .any(|(x, _)| x.len() != seed_pairs[0].0.len())
                {
                    return Err((
                        lang.clone(),
                        "seeds scored test sets of different sizes".to_string(),
                    ));
                }
                let mut rng =
                    SeededRng::derive(seed, &format!("bootstrap/{}/{}/{lang}", pair.a, pair.b));
                let (obs, reps) = bootstrap::paired_deltas(&seed_pairs, samples, &mut rng);
                Ok((
                    LangDelta {
                        lang: lang.clone(),
                        estimate: bootstrap::summarize(obs, &reps),
                        seeds: seed_pairs.len(),
                        sentences: seed_pairs[0].0.len(),
                    },
                    reps,
                ))
            })
            .collect();
        let mut per_lang = Vec::new();
        let mut reps_all = Vec::new();
        // Languages left out for the same reason share one note.
        let mut left_out: Vec<(String, Vec<String>)> = Vec::new();
        for job in jobs {
            match job {
                Ok((d, reps)) => {
                    per_lang.push(d);
                    reps_all.push(reps);
                }
                Err((lang, why)) => match left_out.iter_mut().find(|(w, _)| *w == why) {
                    Some((_, langs)) => langs.push(lang),
                    None => left_out.push((why, vec![lang])),
                },
            }
        }
        let notes = left_out
            .into_iter()
            .map(|(why, langs)| format!("{}: {why}", langs.join(", ")))
            .collect();
        let average = (!per_lang.is_empty()).then(|| {
            let k = per_lang.len() as f64;
            let obs = per_lang.iter().map(|d| d.estimate.delta).sum::<f64>() / k;
            let reps: Vec<f64> = (0..samples)
                .map(|i| reps_all.iter().map(|r| r[i]).sum::<f64>() / k)
                .collect();
            bootstrap::summarize(obs, &reps)
        });
        out.push(PairComparison {
            a: pair.a.clone(),
            b: pair.b.clone(),
            per_lang,
            average,
            notes,
        });
    }
    Ok(out)
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
        let mut out = String::from("# Comparison with the paper\n\n");
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
            out += "## Figure 4 (average over languages)\n\n";
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
        if !self.pairs.is_empty() {
            out += &format!(
                "## Paired bootstrap (a − b)\n\nResampling test sentences with replacement \
                 ({samples} resamples), micro F1 recomputed from summed entity counts, runs paired \
                 by seed and averaged; 95% percentile interval. P(Δ≤0): fraction of resamples \
                 where a is not better.\n\n"
            );
            let headers: Vec<String> = [
                "a",
                "b",
                "Lang",
                "Δ F1",
                "95% CI",
                "P(Δ≤0)",
                "Seeds",
                "Sentences",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut rows = Vec::new();
            for p in &self.pairs {
                let est = |e: &DeltaEstimate| {
                    [
                        format!("{:+.2}", e.delta),
                        format!("[{:+.2}, {:+.2}]", e.ci_low, e.ci_high),
                        format!("{:.3}", e.frac_not_better),
                    ]
                };
                for d in &p.per_lang {
                    let mut row = vec![p.a.clone(), p.b.clone(), d.lang.clone()];
                    row.extend(est(&d.estimate));
                    row.extend([d.seeds.to_string(), d.sentences.to_string()]);
                    rows.push(row);
                }
                if let Some(avg) = &p.average {
                    let mut row = vec![p.a.clone(), p.b.clone(), "Avg".to_string()];
                    row.extend(est(avg));
                    row.extend([String::new(), String::new()]);
                    rows.push(row);
                }
                if p.per_lang.is_empty() {
                    rows.push(vec![
                        p.a.clone(),
                        p.b.clone(),
                        MISSING.into(),
                        MISSING.into(),
                        MISSING.into(),
                        MISSING.into(),
                        "0".into(),
                        MISSING.into(),
                    ]);
                }
            }
            let mut aligns = vec![Align::Left, Align::Left, Align::Left];
            aligns.extend([Align::Right; 5]);
            out += &markdown::table(&headers, &aligns, &rows);
            for p in &self.pairs {
                for n in &p.notes {
                    out += &format!("\n- {} vs {}: {n}", p.a, p.b);
                }
            }
            out += "\n";
        }
        out
    }

    /// Long table: `section` (paper: F1 per language and avg; trained_percent: % of parameters
    /// trained; figure4; bootstrap), then the columns that section uses.
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
            delta: Vec<Option<f64>>,
            ci_low: Vec<Option<f64>>,
            ci_high: Vec<Option<f64>>,
            frac_not_better: Vec<Option<f64>>,
            seeds: Vec<Option<u64>>,
            sentences: Vec<Option<u64>>,
            samples: Vec<Option<u64>>,
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
            est: Option<(&DeltaEstimate, Option<usize>, Option<usize>)>,
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
            c.delta.push(est.map(|e| e.0.delta));
            c.ci_low.push(est.map(|e| e.0.ci_low));
            c.ci_high.push(est.map(|e| e.0.ci_high));
            c.frac_not_better.push(est.map(|e| e.0.frac_not_better));
            c.seeds.push(est.and_then(|e| e.1).map(|v| v as u64));
            c.sentences.push(est.and_then(|e| e.2).map(|v| v as u64));
            c.samples.push(est.map(|e| e.0.samples as u64));
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
            for d in &p.per_lang {
                let e = (&d.estimate, Some(d.seeds), Some(d.sentences));
                push(
                    &mut c,
                    "bootstrap",
                    None,
                    None,
                    Some((&p.a, &p.b)),
                    Some(&d.lang),
                    None,
                    None,
                    Some(e),
                );
            }
            if let Some(avg) = &p.average {
                push(
                    &mut c,
                    "bootstrap",
                    None,
                    None,
                    Some((&p.a, &p.b)),
                    Some("avg"),
                    None,
                    None,
                    Some((avg, None, None)),
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
                f("delta", c.delta),
                f("ci_low", c.ci_low),
                f("ci_high", c.ci_high),
                f("frac_not_better", c.frac_not_better),
                u("seeds", c.seeds),
                u("sentences", c.sentences),
                u("samples", c.samples),
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
