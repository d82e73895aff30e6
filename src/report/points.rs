//! What a figure plots: one point per facet × series × x, the mean over seeds of a measured
//! value with an error bar, and the CSV of exactly those points. Declared figures
//! (`[[report.figure]]`, [`declared_points`]) and the presets of Figures 3 and 4
//! (`crate::report::figures`) all draw from a [`FigurePoints`].
//!
//! A declared figure's error bar is the seed-aware 95% interval: for test F1, the hierarchical
//! bootstrap of the comparisons (seeds, then test sentences, the seed level scaled to Student's
//! t; [`bootstrap::hierarchical_means`]); for a value without per-sentence counts (dev F1,
//! wall time, parameters trained), its seed level alone, Student's t over the seeds. A point
//! averaged over languages draws the seeds every one of them finished, together (a seed's
//! priming run serves every language). Fewer than two seeds: no error bar.

use crate::report::bootstrap;
use crate::report::gather::{polars_err, write_csv};
use crate::report::split::axis_value;
use crate::report::{ReportError, ReportInput, RunRecord};
use crate::rng::SeededRng;
use crate::spec::report::{Facet, FigureSpec, FigureY};
use crate::train::metrics::SentenceCounts;
use polars::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The `facet` of the points of a figure averaged over languages.
pub const AVG_FACET: &str = "avg";

/// How a point's error bar was computed.
pub const SEED_AWARE: &str = "seed-aware bootstrap (seeds + test sentences)";
pub const STUDENT_T: &str = "Student's t over seeds";
pub const SD: &str = "mean ± sd over seeds";

/// One plotted point.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// A language, or [`AVG_FACET`].
    pub facet: String,
    pub series: String,
    pub x: String,
    pub mean: f64,
    /// The error bar's ends (None: fewer than two seeds).
    pub interval: Option<(f64, f64)>,
    /// What `interval` is ([`SEED_AWARE`], [`STUDENT_T`], [`SD`]); empty without one.
    pub method: &'static str,
    /// Seeds behind the error bar (with several languages: the seeds all of them finished).
    pub seeds: usize,
    /// Languages the mean averages.
    pub languages: usize,
}

/// Every point of one figure, with its dimensions in drawing order.
#[derive(Debug, Clone, PartialEq)]
pub struct FigurePoints {
    /// The figure's file stem.
    pub name: String,
    pub y: FigureY,
    /// What x and the series are: `lang`, `setting` or a swept key.
    pub x_key: String,
    pub series_key: String,
    pub facets: Vec<String>,
    pub series: Vec<String>,
    pub xs: Vec<String>,
    pub points: Vec<Point>,
    /// Runs left out, and why.
    pub notes: Vec<String>,
}

impl FigurePoints {
    pub fn point(&self, facet: &str, series: &str, x: &str) -> Option<&Point> {
        self.points
            .iter()
            .find(|p| p.facet == facet && p.series == series && p.x == x)
    }

    /// One line under a figure's title: what the points and error bars are, and how many seeds
    /// they rest on ("no error bars" when no point has two).
    pub fn caption(&self) -> String {
        let most = self.points.iter().map(|p| p.seeds).max().unwrap_or(0);
        let least = self.points.iter().map(|p| p.seeds).min().unwrap_or(0);
        let methods: Vec<&str> = self
            .points
            .iter()
            .filter(|p| p.interval.is_some())
            .map(|p| p.method)
            .fold(Vec::new(), |mut v, m| {
                if !v.contains(&m) {
                    v.push(m);
                }
                v
            });
        if most < 2 {
            return format!(
                "Mean over seeds; {most} seed{}: no error bars",
                if most == 1 { "" } else { "s" }
            );
        }
        let seeds = if least == most {
            format!("{most} seeds")
        } else {
            format!("{least}-{most} seeds")
        };
        let mut out = format!(
            "Mean over seeds; error bars: 95% interval, {} ({seeds})",
            methods.join("; ")
        );
        if least < 2 {
            out += "; points from 1 seed have none";
        }
        out
    }

    /// The points as a table: figure, facet, series, x, y, mean, bar_low, bar_high, interval,
    /// seeds, languages. The bar is what the figure draws, a 95% interval or mean ± sd as
    /// `interval` says (so not named `ci_*`).
    pub fn to_frame(&self) -> Result<DataFrame, ReportError> {
        let p = &self.points;
        let s = |n: &str, v: Vec<String>| Series::new(n.into(), v).into_column();
        let f = |n: &str, v: Vec<Option<f64>>| Series::new(n.into(), v).into_column();
        let u = |n: &str, v: Vec<u64>| Series::new(n.into(), v).into_column();
        DataFrame::new(
            p.len(),
            vec![
                s("figure", vec![self.name.clone(); p.len()]),
                s("facet", p.iter().map(|p| p.facet.clone()).collect()),
                s("series", p.iter().map(|p| p.series.clone()).collect()),
                s("x", p.iter().map(|p| p.x.clone()).collect()),
                s("y", vec![self.y.name().to_string(); p.len()]),
                f("mean", p.iter().map(|p| Some(p.mean)).collect()),
                f(
                    "bar_low",
                    p.iter().map(|p| p.interval.map(|i| i.0)).collect(),
                ),
                f(
                    "bar_high",
                    p.iter().map(|p| p.interval.map(|i| i.1)).collect(),
                ),
                s("interval", p.iter().map(|p| p.method.to_string()).collect()),
                u("seeds", p.iter().map(|p| p.seeds as u64).collect()),
                u("languages", p.iter().map(|p| p.languages as u64).collect()),
            ],
        )
        .map_err(polars_err(format!("building the points of {}", self.name)))
    }

    /// Writes `<dir>/<name>.csv`.
    pub fn write_csv(&self, dir: &Path) -> Result<PathBuf, ReportError> {
        let path = dir.join(format!("{}.csv", self.name));
        write_csv(&self.to_frame()?, &path)?;
        Ok(path)
    }
}

/// A run's value of a figure dimension: `setting`, `lang`, or a swept key (None: the run's
/// setting does not sweep the key).
fn dimension(run: &RunRecord, dim: &str) -> Option<String> {
    match dim {
        "setting" => Some(run.meta.setting.clone()),
        "lang" => Some(run.meta.lang.clone()),
        key => axis_value(run, key),
    }
}

fn y_value(run: &RunRecord, y: FigureY) -> Option<f64> {
    let m = run.metrics.as_ref()?;
    Some(match y {
        FigureY::TestF1 => m.test.f1 * 100.0,
        FigureY::DevF1 => m.dev.f1 * 100.0,
        FigureY::WallTimeS => m.wall_time_s,
        FigureY::TrainedPercent => m.trained_percent,
    })
}

fn matches_filter(run: &RunRecord, spec: &FigureSpec) -> bool {
    let Some(filter) = &spec.filter else {
        return true;
    };
    filter.iter().all(|(key, values)| {
        let have = match key.as_str() {
            "setting" => Some(serde_json::Value::from(run.meta.setting.as_str())),
            "lang" => Some(serde_json::Value::from(run.meta.lang.as_str())),
            k => run
                .meta
                .axes
                .iter()
                .find(|(a, _)| a == k)
                .and_then(|(_, v)| serde_json::from_str(v).ok()),
        };
        have.is_some_and(|h| {
            values
                .iter()
                .any(|v| crate::spec::source::values_equal(v, &h))
        })
    })
}

/// Values in drawing order: numerically when every value is a number, else as first seen.
fn ordered(mut values: Vec<String>) -> Vec<String> {
    if values.iter().all(|v| v.parse::<f64>().is_ok()) {
        values.sort_by(|a, b| {
            let (a, b) = (
                a.parse::<f64>().unwrap_or(0.0),
                b.parse::<f64>().unwrap_or(0.0),
            );
            a.total_cmp(&b)
        });
    }
    values
}

fn push_new(list: &mut Vec<String>, v: &str) {
    if !list.iter().any(|x| x == v) {
        list.push(v.to_string());
    }
}

/// Per language, the finished run of each seed.
type BySeed<'a> = BTreeMap<String, BTreeMap<u64, &'a RunRecord>>;

/// The points of a declared figure from the runs a report uses (after `[report] select`).
/// Err: why the figure is not drawn.
pub fn declared_points(
    input: &ReportInput,
    spec: &FigureSpec,
    samples: usize,
    seed: u64,
) -> Result<FigurePoints, String> {
    let skip = |why: String| Err(format!("figure {} skipped: {why}", spec.name));
    let mut cells: BTreeMap<(String, String), BySeed<'_>> = BTreeMap::new();
    let (mut series, mut xs, mut langs) = (Vec::new(), Vec::new(), Vec::new());
    let mut left_out: Vec<String> = Vec::new();
    for run in input.runs.iter().filter(|r| matches_filter(r, spec)) {
        let (Some(s), Some(x)) = (dimension(run, &spec.series), dimension(run, &spec.x)) else {
            push_new(&mut left_out, &run.meta.setting);
            continue;
        };
        if run.metrics.is_none() {
            continue;
        }
        let by_seed = cells
            .entry((s.clone(), x.clone()))
            .or_default()
            .entry(run.meta.lang.clone())
            .or_default();
        if by_seed.insert(run.meta.seed, run).is_some() {
            return skip(format!(
                "series {s} at x = {x} has several runs of seed {} on {}: the runs also differ \
                 in another swept key; add it to the figure's filter",
                run.meta.seed, run.meta.lang
            ));
        }
        push_new(&mut series, &s);
        push_new(&mut xs, &x);
        push_new(&mut langs, &run.meta.lang);
    }
    if cells.is_empty() {
        return skip("no finished run matches it".to_string());
    }
    let series = if spec.series == "setting" {
        input
            .settings
            .iter()
            .filter(|s| series.contains(s))
            .cloned()
            .collect()
    } else {
        ordered(series)
    };
    let language_order = crate::report::table::table_languages(input);
    let langs: Vec<String> = language_order
        .into_iter()
        .filter(|l| langs.contains(l))
        .collect();
    let xs = if spec.x == "lang" {
        langs.clone()
    } else {
        ordered(xs)
    };
    let facets: Vec<String> = match spec.facet {
        Facet::Lang => langs.clone(),
        Facet::Avg => vec![AVG_FACET.to_string()],
    };
    let mut points = Vec::new();
    for facet in &facets {
        for s in &series {
            for x in &xs {
                let Some(by_lang) = cells.get(&(s.clone(), x.clone())) else {
                    continue;
                };
                let scope: BySeed<'_> = by_lang
                    .iter()
                    .filter(|(l, _)| facet == AVG_FACET || *l == facet)
                    .map(|(l, runs)| (l.clone(), runs.clone()))
                    .collect();
                if scope.is_empty() {
                    continue;
                }
                let stream = format!("figure/{}/{facet}/{s}/{x}", spec.name);
                let mut rng = SeededRng::derive(seed, &stream);
                let mut point = point_of(&scope, spec.y, samples, &mut rng);
                point.facet = facet.clone();
                point.series = s.clone();
                point.x = x.clone();
                points.push(point);
            }
        }
    }
    let mut notes = Vec::new();
    if !left_out.is_empty() {
        let keys: Vec<&str> = [&spec.x, &spec.series]
            .into_iter()
            .filter(|k| !["lang", "setting"].contains(&k.as_str()))
            .map(String::as_str)
            .collect();
        notes.push(format!(
            "figure {}: the runs of {} are left out: they do not sweep {}",
            spec.name,
            left_out.join(", "),
            keys.join(" or ")
        ));
    }
    Ok(FigurePoints {
        name: spec.name.clone(),
        y: spec.y,
        x_key: spec.x.clone(),
        series_key: spec.series.clone(),
        facets,
        series,
        xs,
        points,
        notes,
    })
}

/// The mean over languages of each language's mean over seeds, and the seed-aware interval
/// over the seeds every language finished.
fn point_of(scope: &BySeed<'_>, y: FigureY, samples: usize, rng: &mut SeededRng) -> Point {
    let lang_means: Vec<f64> = scope
        .values()
        .map(|runs| {
            let v: Vec<f64> = runs.values().filter_map(|r| y_value(r, y)).collect();
            v.iter().sum::<f64>() / v.len() as f64
        })
        .collect();
    let mean = lang_means.iter().sum::<f64>() / lang_means.len() as f64;
    let first = scope.values().next().expect("a point has a language");
    let common: Vec<u64> = first
        .keys()
        .copied()
        .filter(|s| scope.values().all(|runs| runs.contains_key(s)))
        .collect();
    let mut point = Point {
        facet: String::new(),
        series: String::new(),
        x: String::new(),
        mean,
        interval: None,
        method: "",
        seeds: common.len(),
        languages: scope.len(),
    };
    if common.len() < 2 {
        return point;
    }
    let counts: Option<Vec<Vec<&[SentenceCounts]>>> = (y == FigureY::TestF1 && samples > 0)
        .then(|| {
            scope
                .values()
                .map(|runs| {
                    let per_seed: Vec<&[SentenceCounts]> = common
                        .iter()
                        .map(|s| {
                            runs[s]
                                .metrics
                                .as_ref()
                                .map_or(&[][..], |m| &m.test_sentence_counts)
                        })
                        .collect();
                    let n = per_seed[0].len();
                    (n > 0 && per_seed.iter().all(|c| c.len() == n)).then_some(per_seed)
                })
                .collect()
        })
        .flatten();
    if let Some(counts) = counts {
        let (observed, reps) = bootstrap::hierarchical_means(&counts, samples, rng);
        let e = bootstrap::summarize(observed, &reps);
        point.interval = Some((e.ci_low, e.ci_high));
        point.method = SEED_AWARE;
    } else {
        let per_seed: Vec<f64> = common
            .iter()
            .map(|s| {
                let v: Vec<f64> = scope
                    .values()
                    .filter_map(|runs| y_value(runs[s], y))
                    .collect();
                v.iter().sum::<f64>() / v.len() as f64
            })
            .collect();
        point.interval = bootstrap::t_interval(&per_seed);
        point.method = STUDENT_T;
    }
    point
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testutil::{counted_run, input};
    use crate::spec::ReportSpec;

    const SIZE: &str = "finetune.data.train_limit";

    /// Per-sentence counts of a run with test F1 (×100) of 100, 80, 75, 66.67, 60 or 50.
    fn counts(f1: u32) -> [u32; 3] {
        match f1 {
            100 => [1, 1, 1],
            80 => [2, 2, 3],
            75 => [3, 4, 4],
            66 => [1, 1, 2],
            60 => [3, 5, 5],
            50 => [1, 2, 2],
            _ => unreachable!("no counts for {f1}"),
        }
    }

    fn f1(c: [u32; 3]) -> f64 {
        200.0 * f64::from(c[0]) / f64::from(c[1] + c[2])
    }

    /// F1 (×100) of each seed, by (setting, training size, language).
    type Table = BTreeMap<(&'static str, &'static str, &'static str), Vec<u32>>;

    /// Settings AT and MP at 50 and 100 sentences on hi and af, seeds 1 and 2 (MP at 50 on af
    /// has seed 1 only); `table[(setting, size, lang)] = [seed 1's F1, seed 2's]`.
    fn curve_input() -> (ReportInput, Table) {
        let mut table = BTreeMap::new();
        table.insert(("AT", "50", "hi"), vec![50, 60]);
        table.insert(("AT", "50", "af"), vec![60, 75]);
        table.insert(("AT", "100", "hi"), vec![66, 75]);
        table.insert(("AT", "100", "af"), vec![75, 80]);
        table.insert(("MP", "50", "hi"), vec![60, 80]);
        table.insert(("MP", "50", "af"), vec![66]);
        table.insert(("MP", "100", "hi"), vec![80, 100]);
        table.insert(("MP", "100", "af"), vec![75, 100]);
        let mut runs = Vec::new();
        for ((setting, size, lang), f1s) in &table {
            for (i, f) in f1s.iter().enumerate() {
                runs.push(counted_run(
                    setting,
                    lang,
                    i as u64 + 1,
                    counts(*f),
                    &[(SIZE, size)],
                ));
            }
        }
        let inp = input(&["AT", "MP"], &["hi", "af"], runs, ReportSpec::default());
        (inp, table)
    }

    fn line(facet: Facet, y: FigureY) -> FigureSpec {
        FigureSpec {
            name: "curve".into(),
            kind: crate::spec::report::FigureKind::Line,
            x: SIZE.into(),
            series: "setting".into(),
            y,
            facet,
            filter: None,
            title: None,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// With two seeds and runs that score the same on every resample of their sentences, the
    /// seed-aware interval is exact: a replicate draws seed 1 twice, both seeds, or seed 2 twice
    /// (1/4, 1/2, 1/4 of them) and moves the mean by the seed-scaled deviation, so its 2.5% and
    /// 97.5% quantiles are m ± seed_scale(2) · |x₁ − x₂| / 2.
    fn seed_aware(x1: f64, x2: f64) -> (f64, f64, f64) {
        let m = (x1 + x2) / 2.0;
        let half = bootstrap::seed_scale(2) * (x1 - x2).abs() / 2.0;
        (m, m - half, m + half)
    }

    #[test]
    fn a_line_over_a_swept_key_has_one_point_per_value_with_hand_computed_intervals() {
        let (inp, table) = curve_input();
        let data = declared_points(&inp, &line(Facet::Avg, FigureY::TestF1), 2000, 7).unwrap();
        assert_eq!(data.xs, vec!["50", "100"], "numeric order, one x per value");
        assert_eq!(data.series, vec!["AT", "MP"]);
        assert_eq!(data.facets, vec![AVG_FACET]);
        assert_eq!(data.points.len(), 4);
        for setting in ["AT", "MP"] {
            for size in ["50", "100"] {
                let p = data.point(AVG_FACET, setting, size).unwrap();
                let (hi, af) = (
                    &table[&(setting, size, "hi")],
                    &table[&(setting, size, "af")],
                );
                let mean_of =
                    |v: &Vec<u32>| v.iter().map(|f| f1(counts(*f))).sum::<f64>() / v.len() as f64;
                assert!(
                    close(p.mean, (mean_of(hi) + mean_of(af)) / 2.0),
                    "{setting} {size}"
                );
                assert_eq!(p.languages, 2);
                if af.len() < 2 {
                    // MP at 50: af has one seed, so the average has one seed both finished.
                    assert_eq!((p.seeds, p.interval), (1, None));
                    continue;
                }
                // Per seed, the average over languages; then the two-seed interval.
                let seed_avg = |i: usize| (f1(counts(hi[i])) + f1(counts(af[i]))) / 2.0;
                let (m, lo, up) = seed_aware(seed_avg(0), seed_avg(1));
                let (a, b) = p.interval.unwrap();
                assert!(
                    close(a, lo) && close(b, up),
                    "{setting} {size}: {a} {b} vs {lo} {up}"
                );
                assert!(close(m, p.mean));
                assert_eq!((p.seeds, p.method), (2, SEED_AWARE));
            }
        }
        let caption = data.caption();
        assert!(
            caption.contains("1-2 seeds") && caption.contains("1 seed have none"),
            "{caption}"
        );
    }

    #[test]
    fn per_language_facets_give_one_panel_per_language() {
        let (inp, table) = curve_input();
        let data = declared_points(&inp, &line(Facet::Lang, FigureY::TestF1), 2000, 7).unwrap();
        assert_eq!(data.facets, vec!["hi", "af"]);
        assert_eq!(data.points.len(), 8);
        for ((setting, size, lang), f1s) in &table {
            let p = data.point(lang, setting, size).unwrap();
            let x: Vec<f64> = f1s.iter().map(|f| f1(counts(*f))).collect();
            assert!(close(p.mean, x.iter().sum::<f64>() / x.len() as f64));
            assert_eq!(p.languages, 1);
            match x.as_slice() {
                [x1, x2] => {
                    let (_, lo, up) = seed_aware(*x1, *x2);
                    let (a, b) = p.interval.unwrap();
                    assert!(close(a, lo) && close(b, up), "{setting} {size} {lang}");
                }
                _ => assert_eq!(p.interval, None),
            }
        }
    }

    #[test]
    fn values_without_sentence_counts_get_students_t_over_seeds() {
        let (inp, table) = curve_input();
        let data = declared_points(&inp, &line(Facet::Lang, FigureY::DevF1), 100, 7).unwrap();
        // testutil's dev F1 is the test F1 + 1 point.
        let hi: Vec<f64> = table[&("AT", "50", "hi")]
            .iter()
            .map(|f| f1(counts(*f)) + 1.0)
            .collect();
        let p = data.point("hi", "AT", "50").unwrap();
        let m = (hi[0] + hi[1]) / 2.0;
        // t(1) · sd / √2 with sd = |x₁ − x₂| / √2.
        let half = 12.7062 * (hi[0] - hi[1]).abs() / 2.0;
        let (a, b) = p.interval.unwrap();
        assert!(close(p.mean, m) && close(a, m - half) && close(b, m + half));
        assert_eq!(p.method, STUDENT_T);
    }

    #[test]
    fn filters_keep_only_the_named_settings_and_values() {
        let (inp, _) = curve_input();
        let mut spec = line(Facet::Avg, FigureY::TestF1);
        spec.filter = Some(BTreeMap::from([
            ("setting".to_string(), vec![serde_json::json!("MP")]),
            (SIZE.to_string(), vec![serde_json::json!(100)]),
        ]));
        let data = declared_points(&inp, &spec, 100, 7).unwrap();
        assert_eq!(data.series, vec!["MP"]);
        assert_eq!(data.xs, vec!["100"]);
        assert_eq!(data.points.len(), 1);
        spec.filter = Some(BTreeMap::from([(
            SIZE.to_string(),
            vec![serde_json::json!(5000)],
        )]));
        let why = declared_points(&inp, &spec, 100, 7).unwrap_err();
        assert!(why.contains("no finished run matches"), "{why}");
    }

    #[test]
    fn runs_that_do_not_sweep_the_key_are_left_out_with_a_note() {
        let (mut inp, _) = curve_input();
        inp.settings.push("Full".into());
        inp.runs.push(counted_run("Full", "hi", 1, counts(80), &[]));
        let data = declared_points(&inp, &line(Facet::Avg, FigureY::TestF1), 100, 7).unwrap();
        assert_eq!(data.series, vec!["AT", "MP"]);
        assert!(data.notes[0].contains("Full") && data.notes[0].contains(SIZE));
    }

    #[test]
    fn the_csv_holds_exactly_the_points() {
        let (inp, _) = curve_input();
        let data = declared_points(&inp, &line(Facet::Lang, FigureY::TestF1), 500, 7).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = data.write_csv(dir.path()).unwrap();
        assert_eq!(path, dir.path().join("curve.csv"));
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("figure,facet,series,x,y,mean,bar_low,bar_high,interval,seeds,languages")
        );
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert_eq!(rows.len(), data.points.len());
        for (row, p) in rows.iter().zip(&data.points) {
            assert_eq!(&row[..5], &["curve", &p.facet, &p.series, &p.x, "test_f1"]);
            assert!(close(row[5].parse().unwrap(), p.mean));
            let parsed = |s: &str| (!s.is_empty()).then(|| s.parse::<f64>().unwrap());
            assert_eq!(parsed(row[6]).is_some(), p.interval.is_some());
            if let Some((lo, hi)) = p.interval {
                assert!(close(parsed(row[6]).unwrap(), lo) && close(parsed(row[7]).unwrap(), hi));
            }
            assert_eq!(row[9].parse::<usize>().unwrap(), p.seeds);
        }
    }
}
