//! Table 1: settings × target languages (+ average) of test F1 ×100, mean ± sd over seeds,
//! the best cell of each group in bold, missing cells as "–".

use crate::report::gather::{polars_err, write_csv};
use crate::report::markdown::{self, Align};
use crate::report::{ReportError, ReportInput};
use polars::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Shown for a cell without any finished run.
pub const MISSING: &str = "–";
/// Marks an average taken over fewer languages than the table has.
pub const INCOMPLETE_MARK: &str = "†";

/// Mean and spread of test F1 ×100 over seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct CellStat {
    pub mean: f64,
    /// Sample standard deviation (n − 1); None with a single seed.
    pub sd: Option<f64>,
    /// Seeds (finished runs) behind the mean.
    pub n: usize,
}

impl CellStat {
    /// Statistics of values already ×100.
    pub fn from_values(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd = (n > 1).then(|| {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        });
        Some(Self { mean, sd, n })
    }
}

/// One setting's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Table1Row {
    pub setting: String,
    /// Index of the bolding group the row belongs to.
    pub group: usize,
    /// Mean trained-parameter percentage over the setting's finished runs.
    pub trained_percent: Option<f64>,
    /// One entry per language of [`Table1::languages`]; None: no finished run.
    pub cells: Vec<Option<CellStat>>,
    /// Mean of the language means present; `sd` over the seeds that cover all of them.
    pub average: Option<CellStat>,
    /// How many languages the average covers.
    pub average_languages: usize,
    /// Cell is the best of its group in its column (ties all bold).
    pub bold: Vec<bool>,
    pub bold_average: bool,
}

impl Table1Row {
    /// Whether the average covers every language of the table.
    pub fn average_complete(&self) -> bool {
        self.average_languages == self.cells.len()
    }
}

/// Table 1 of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Table1 {
    pub languages: Vec<String>,
    pub rows: Vec<Table1Row>,
    /// Setting names of each bolding group.
    pub groups: Vec<Vec<String>>,
}

/// Checks that every name is a declared setting.
pub(crate) fn check_settings<'a>(
    input: &ReportInput,
    field: &str,
    names: impl IntoIterator<Item = &'a String>,
) -> Result<(), ReportError> {
    for name in names {
        if !input.settings.contains(name) {
            return Err(ReportError::UnknownSetting {
                field: field.to_string(),
                name: name.clone(),
                known: input.settings.join(", "),
            });
        }
    }
    Ok(())
}

/// Languages of the table: the sweep's, then any other language a run targets.
pub(crate) fn table_languages(input: &ReportInput) -> Vec<String> {
    let mut langs = input.languages.clone();
    for r in &input.runs {
        if !langs.contains(&r.meta.lang) {
            langs.push(r.meta.lang.clone());
        }
    }
    langs
}

/// Per (setting, language): test F1 ×100 statistics over finished runs of the long scores
/// table. Read column by column rather than through polars' lazy engine: the grouping is a
/// few hundred rows, and the lazy/ops/plan crates it needs were a third of the cold build.
pub fn cell_stats(scores: &DataFrame) -> Result<BTreeMap<(String, String), CellStat>, ReportError> {
    let e = || polars_err("reading the scores table");
    let done = scores.column("done").and_then(|c| c.bool()).map_err(e())?;
    let setting = scores
        .column("setting")
        .and_then(|c| c.str())
        .map_err(e())?;
    let lang = scores.column("lang").and_then(|c| c.str()).map_err(e())?;
    let f1 = scores
        .column("test_f1")
        .and_then(|c| c.f64())
        .map_err(e())?;
    let mut values: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for i in 0..scores.height() {
        let (Some(true), Some(s), Some(l), Some(v)) =
            (done.get(i), setting.get(i), lang.get(i), f1.get(i))
        else {
            continue;
        };
        values
            .entry((s.to_string(), l.to_string()))
            .or_default()
            .push(v * 100.0);
    }
    Ok(values
        .into_iter()
        .filter_map(|(key, v)| CellStat::from_values(&v).map(|c| (key, c)))
        .collect())
}

/// Per setting and seed: the test F1 ×100 of each finished language.
pub(crate) fn seed_values(input: &ReportInput) -> BTreeMap<(String, u64), BTreeMap<String, f64>> {
    let mut out: BTreeMap<(String, u64), BTreeMap<String, f64>> = BTreeMap::new();
    for r in &input.runs {
        if let Some(m) = &r.metrics {
            out.entry((r.meta.setting.clone(), r.meta.seed))
                .or_default()
                .insert(r.meta.lang.clone(), m.test.f1 * 100.0);
        }
    }
    out
}

/// The spread over seeds of a setting's average over `languages`: each seed that finished
/// every one of them yields one average (None: no such seed).
pub(crate) fn seed_average_spread(
    per_seed: &BTreeMap<(String, u64), BTreeMap<String, f64>>,
    setting: &str,
    languages: &[&str],
) -> Option<CellStat> {
    let seed_avgs: Vec<f64> = per_seed
        .iter()
        .filter(|((s, _), _)| s == setting)
        .filter_map(|(_, by_lang)| {
            let v: Option<Vec<f64>> = languages.iter().map(|l| by_lang.get(*l).copied()).collect();
            v.map(|v| v.iter().sum::<f64>() / v.len() as f64)
        })
        .collect();
    CellStat::from_values(&seed_avgs)
}

fn rounded(x: f64) -> i64 {
    (x * 100.0).round() as i64
}

/// Builds Table 1 from the scores table (see [`crate::report::gather::scores_frame`]).
pub fn build_table1(input: &ReportInput, scores: &DataFrame) -> Result<Table1, ReportError> {
    let spec = &input.spec;
    check_settings(input, "table1_rows", &spec.table1_rows)?;
    check_settings(input, "table1_groups", spec.table1_groups.iter().flatten())?;
    let row_names: Vec<String> = if spec.table1_rows.is_empty() {
        input.settings.clone()
    } else {
        spec.table1_rows.clone()
    };
    // Rows in no declared group share one extra group, so nothing is bolded against itself.
    let mut groups: Vec<Vec<String>> = spec
        .table1_groups
        .iter()
        .map(|g| {
            g.iter()
                .filter(|s| row_names.contains(s))
                .cloned()
                .collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
        .collect();
    let ungrouped: Vec<String> = row_names
        .iter()
        .filter(|s| !groups.iter().any(|g| g.contains(s)))
        .cloned()
        .collect();
    if !ungrouped.is_empty() {
        groups.push(ungrouped);
    }

    let languages = table_languages(input);
    let stats = cell_stats(scores)?;
    let per_seed = seed_values(input);
    let mut rows = Vec::new();
    for setting in &row_names {
        let cells: Vec<Option<CellStat>> = languages
            .iter()
            .map(|l| stats.get(&(setting.clone(), l.clone())).cloned())
            .collect();
        let present: Vec<&str> = languages
            .iter()
            .zip(&cells)
            .filter(|(_, c)| c.is_some())
            .map(|(l, _)| l.as_str())
            .collect();
        let average = if present.is_empty() {
            None
        } else {
            let mean = cells.iter().flatten().map(|c| c.mean).sum::<f64>() / present.len() as f64;
            let spread = seed_average_spread(&per_seed, setting, &present);
            Some(CellStat {
                mean,
                sd: spread.as_ref().and_then(|s| s.sd),
                n: spread.map_or(0, |s| s.n),
            })
        };
        let percents: Vec<f64> = input
            .runs
            .iter()
            .filter(|r| &r.meta.setting == setting)
            .filter_map(|r| r.metrics.as_ref().map(|m| m.trained_percent))
            .collect();
        let trained_percent =
            (!percents.is_empty()).then(|| percents.iter().sum::<f64>() / percents.len() as f64);
        rows.push(Table1Row {
            setting: setting.clone(),
            group: groups.iter().position(|g| g.contains(setting)).unwrap_or(0),
            trained_percent,
            bold: vec![false; cells.len()],
            cells,
            average,
            average_languages: present.len(),
            bold_average: false,
        });
    }

    // Bold the best displayed value of each group in each column (ties: all of them).
    for g in 0..groups.len() {
        let members: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].group == g).collect();
        for col in 0..=languages.len() {
            let value = |row: &Table1Row| {
                if col < languages.len() {
                    row.cells[col].as_ref().map(|c| rounded(c.mean))
                } else {
                    row.average.as_ref().map(|c| rounded(c.mean))
                }
            };
            // An incomplete average is not comparable with complete ones: when some row of the
            // group has a complete average, only complete averages compete.
            let candidates: Vec<usize> = if col == languages.len()
                && members
                    .iter()
                    .any(|&i| rows[i].average.is_some() && rows[i].average_complete())
            {
                members
                    .iter()
                    .copied()
                    .filter(|&i| rows[i].average_complete())
                    .collect()
            } else {
                members.clone()
            };
            let best = candidates.iter().filter_map(|&i| value(&rows[i])).max();
            for &i in &candidates {
                let is_best = best.is_some() && value(&rows[i]) == best;
                if col < languages.len() {
                    rows[i].bold[col] = is_best;
                } else {
                    rows[i].bold_average = is_best;
                }
            }
        }
    }
    Ok(Table1 {
        languages,
        rows,
        groups,
    })
}

/// A trained-parameter percentage as the paper prints it: "100", "0.38", "3.2e-3".
pub fn format_percent(p: f64) -> String {
    if p >= 10.0 {
        format!("{p:.0}")
    } else if p >= 0.1 {
        let s = format!("{p:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else if p > 0.0 {
        let e = p.log10().floor() as i32;
        let m = p / 10f64.powi(e);
        format!("{m:.1}e{e}")
    } else {
        "0".to_string()
    }
}

/// "81.25", "81.25 ± 0.31", with " (n=2)" when fewer seeds than `full_n`.
pub fn format_cell(c: &CellStat, full_n: usize) -> String {
    let mut s = format!("{:.2}", c.mean);
    if let Some(sd) = c.sd {
        s += &format!(" ± {sd:.2}");
    }
    if c.n < full_n && c.n > 0 {
        s += &format!(" (n={})", c.n);
    }
    s
}

fn bold(s: String, b: bool) -> String {
    if b { format!("**{s}**") } else { s }
}

impl Table1 {
    /// The largest number of seeds behind any cell.
    pub fn max_seeds(&self) -> usize {
        self.rows
            .iter()
            .flat_map(|r| r.cells.iter().flatten())
            .map(|c| c.n)
            .max()
            .unwrap_or(0)
    }

    /// The table as aligned markdown followed by its legend.
    pub fn to_markdown(&self) -> String {
        let full_n = self.max_seeds();
        let multi_group = self.groups.len() > 1;
        let mut headers: Vec<String> = Vec::new();
        let mut aligns = Vec::new();
        if multi_group {
            headers.push("Group".into());
            aligns.push(Align::Right);
        }
        headers.push("Setting".into());
        aligns.push(Align::Left);
        headers.push("% params".into());
        aligns.push(Align::Right);
        for l in &self.languages {
            headers.push(l.clone());
            aligns.push(Align::Right);
        }
        headers.push("Avg".into());
        aligns.push(Align::Right);
        let mut any_incomplete = false;
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                let mut cells = Vec::new();
                if multi_group {
                    cells.push((r.group + 1).to_string());
                }
                cells.push(r.setting.clone());
                cells.push(
                    r.trained_percent
                        .map_or(MISSING.to_string(), format_percent),
                );
                for (c, b) in r.cells.iter().zip(&r.bold) {
                    cells.push(
                        c.as_ref()
                            .map_or(MISSING.to_string(), |c| bold(format_cell(c, full_n), *b)),
                    );
                }
                cells.push(match &r.average {
                    None => MISSING.to_string(),
                    Some(a) => {
                        let mut s = format_cell(a, full_n);
                        if !r.average_complete() {
                            any_incomplete = true;
                            s += INCOMPLETE_MARK;
                        }
                        bold(s, r.bold_average)
                    }
                });
                cells
            })
            .collect();
        let mut out = markdown::table(&headers, &aligns, &rows);
        out += "\nTest entity-level micro F1 ×100";
        if full_n > 1 {
            out += &format!(
                ", mean ± sd over {full_n} seeds ((n=k): k seeds behind the cell, fewer planned \
                 or finished)"
            );
        }
        out += &format!(
            ". **Bold**: highest mean in its group and column, not a test: the comparisons say which \
                 differences are detectable. {MISSING}: no finished run."
        );
        if any_incomplete {
            out += &format!(" {INCOMPLETE_MARK}: average over the languages present only.");
        }
        out += "\n";
        out
    }

    /// The table as a polars DataFrame: setting, group, trained_percent, then per language
    /// `<lang>_mean`, `<lang>_sd`, `<lang>_n`, then avg_mean, avg_sd, avg_n, avg_languages,
    /// avg_complete (F1 ×100, unrounded; missing cells null).
    pub fn to_frame(&self) -> Result<DataFrame, ReportError> {
        let h = self.rows.len();
        let f = |name: String, v: Vec<Option<f64>>| Series::new(name.into(), v).into_column();
        let u = |name: String, v: Vec<Option<u64>>| Series::new(name.into(), v).into_column();
        let mut cols = vec![
            Series::new(
                "setting".into(),
                self.rows
                    .iter()
                    .map(|r| r.setting.clone())
                    .collect::<Vec<_>>(),
            )
            .into_column(),
            u(
                "group".into(),
                self.rows.iter().map(|r| Some(r.group as u64 + 1)).collect(),
            ),
            f(
                "trained_percent".into(),
                self.rows.iter().map(|r| r.trained_percent).collect(),
            ),
        ];
        let stat_cols = |cols: &mut Vec<Column>,
                         prefix: &str,
                         get: &dyn Fn(&Table1Row) -> Option<&CellStat>| {
            cols.push(f(
                format!("{prefix}_mean"),
                self.rows.iter().map(|r| get(r).map(|c| c.mean)).collect(),
            ));
            cols.push(f(
                format!("{prefix}_sd"),
                self.rows
                    .iter()
                    .map(|r| get(r).and_then(|c| c.sd))
                    .collect(),
            ));
            cols.push(u(
                format!("{prefix}_n"),
                self.rows
                    .iter()
                    .map(|r| get(r).map(|c| c.n as u64))
                    .collect(),
            ));
        };
        for (i, l) in self.languages.iter().enumerate() {
            stat_cols(&mut cols, l, &|r| r.cells[i].as_ref());
        }
        stat_cols(&mut cols, "avg", &|r| r.average.as_ref());
        cols.push(u(
            "avg_languages".into(),
            self.rows
                .iter()
                .map(|r| Some(r.average_languages as u64))
                .collect(),
        ));
        cols.push(
            Series::new(
                "avg_complete".into(),
                self.rows
                    .iter()
                    .map(|r| r.average_complete())
                    .collect::<Vec<bool>>(),
            )
            .into_column(),
        );
        DataFrame::new(h, cols).map_err(polars_err("building table 1"))
    }

    /// Writes `table1.md` and `table1.csv` under `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<std::path::PathBuf>, ReportError> {
        let md = dir.join("table1.md");
        let text = format!("# Table 1\n\n{}", self.to_markdown());
        crate::fsutil::write_atomic(&md, text.as_bytes())?;
        let csv = dir.join("table1.csv");
        write_csv(&self.to_frame()?, &csv)?;
        Ok(vec![md, csv])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::gather::scores_frame;
    use crate::report::testutil::{input, run};
    use crate::spec::report::ReportSpec;

    fn synthetic() -> ReportInput {
        let mut runs = Vec::new();
        for (seed, fx) in [(1, 0.80), (2, 0.82), (3, 0.84)] {
            runs.push(run("A", "x", seed, Some(fx)));
            runs.push(run("A", "y", seed, Some(0.70)));
            runs.push(run("B", "x", seed, Some(0.90)));
            runs.push(run("B", "y", seed, None));
        }
        runs.push(run("C", "x", 1, Some(0.50)));
        runs.push(run("C", "y", 1, Some(0.60)));
        let spec = ReportSpec {
            table1_groups: vec![vec!["A".into(), "B".into()]],
            ..Default::default()
        };
        input(&["A", "B", "C"], &["x", "y"], runs, spec)
    }

    fn table(inp: &ReportInput) -> Table1 {
        build_table1(inp, &scores_frame(&inp.runs).unwrap()).unwrap()
    }

    #[test]
    fn means_and_sds_over_seeds() {
        let t = table(&synthetic());
        assert_eq!(t.languages, ["x", "y"]);
        let a = &t.rows[0];
        let ax = a.cells[0].as_ref().unwrap();
        assert!((ax.mean - 82.0).abs() < 1e-9 && (ax.sd.unwrap() - 2.0).abs() < 1e-9 && ax.n == 3);
        let avg = a.average.as_ref().unwrap();
        // Per-seed averages 75, 76, 77.
        assert!(
            (avg.mean - 76.0).abs() < 1e-9 && (avg.sd.unwrap() - 1.0).abs() < 1e-9,
            "{avg:?}"
        );
        assert!(a.average_complete());
        let c = &t.rows[2];
        assert_eq!(c.cells[0].as_ref().unwrap().sd, None);
        assert_eq!(c.trained_percent, Some(0.4));
    }

    #[test]
    fn missing_runs_are_missing_and_incomplete_averages_marked() {
        let t = table(&synthetic());
        let b = &t.rows[1];
        assert!(b.cells[1].is_none());
        assert_eq!(b.average_languages, 1);
        assert!(!b.average_complete());
        let md = t.to_markdown();
        let line_b = md.lines().find(|l| l.contains("| B ")).unwrap();
        assert!(
            line_b.contains(&format!("| {MISSING} |")) || line_b.contains(&format!(" {MISSING} |")),
            "{md}"
        );
        assert!(
            line_b.contains(&format!("90.00 ± 0.00{INCOMPLETE_MARK}")),
            "{md}"
        );
        assert!(
            md.contains("average over the languages present only"),
            "{md}"
        );
        let line_c = md.lines().find(|l| l.contains("| C ")).unwrap();
        assert!(line_c.contains("**50.00 (n=1)**"), "{md}");
    }

    #[test]
    fn best_of_each_group_is_bold() {
        let t = table(&synthetic());
        let (a, b, c) = (&t.rows[0], &t.rows[1], &t.rows[2]);
        assert_eq!((a.group, b.group, c.group), (0, 0, 1));
        assert_eq!(a.bold, [false, true]);
        assert_eq!(b.bold, [true, false]);
        // B's average (90, one language) is higher but incomplete: A's complete one wins.
        assert!(a.bold_average && !b.bold_average);
        // C is alone in its group.
        assert_eq!(c.bold, [true, true]);
        let md = t.to_markdown();
        assert!(
            md.contains("**90.00 ± 0.00**") && md.contains("**70.00 ± 0.00**"),
            "{md}"
        );
        assert!(!md.contains("**82.00"), "{md}");
    }

    #[test]
    fn ties_are_all_bold_and_nothing_done_gives_dashes() {
        let runs = vec![
            run("A", "x", 1, Some(0.5)),
            run("B", "x", 1, Some(0.5)),
            run("C", "x", 1, None),
        ];
        let inp = input(&["A", "B", "C"], &["x"], runs, ReportSpec::default());
        let t = table(&inp);
        assert!(t.rows[0].bold[0] && t.rows[1].bold[0] && !t.rows[2].bold[0]);
        assert!(t.rows[2].average.is_none() && t.rows[2].trained_percent.is_none());
        let md = t.to_markdown();
        let line_c = md.lines().find(|l| l.contains("| C ")).unwrap();
        assert_eq!(line_c.matches(MISSING).count(), 3, "{md}");
    }

    #[test]
    fn unknown_row_is_an_error_naming_the_fix() {
        let mut inp = synthetic();
        inp.spec.table1_rows = vec!["A".into(), "Z".into()];
        let err = build_table1(&inp, &scores_frame(&inp.runs).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"Z\"") && err.contains("table1_rows") && err.contains("A, B, C"),
            "{err}"
        );
    }

    #[test]
    fn frame_has_stats_per_language_and_nulls_for_missing() {
        let t = table(&synthetic());
        let df = t.to_frame().unwrap();
        assert_eq!(df.height(), 3);
        let y = df.column("y_mean").unwrap().f64().unwrap();
        assert_eq!(y.get(1), None);
        assert!((y.get(0).unwrap() - 70.0).abs() < 1e-9);
        let complete = df.column("avg_complete").unwrap().bool().unwrap();
        assert_eq!(complete.get(1), Some(false));
    }

    #[test]
    fn percent_formatting() {
        assert_eq!(format_percent(100.0), "100");
        assert_eq!(format_percent(0.4), "0.4");
        assert_eq!(format_percent(0.38), "0.38");
        assert_eq!(format_percent(0.0032), "3.2e-3");
    }
}
