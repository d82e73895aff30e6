//! Hyperparameter selection on dev (`[report] select`): a sweep that varies keys within a
//! setting (a grid of learning rates, say) has several runs per setting × language × seed,
//! and a table cell must report one. As papers do, the report keeps, for each setting ×
//! language × seed, the run whose configuration has the best dev score among the values of
//! the `over` keys, and reports that run's test score; `selection.md` / `selection.csv` list
//! every choice. Keys a sweep varies without selecting them are rejected when the sweep is
//! planned (`primer::spec::plan`), so cells never average over configurations silently.

use crate::fsutil::write_atomic;
use crate::report::gather::{polars_err, write_csv};
use crate::report::markdown::{self, Align};
use crate::report::split::split_settings;
use crate::report::table::MISSING;
use crate::report::{ReportError, ReportInput, RunRecord};
use crate::spec::report::{SelectBy, Selection};
use polars::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The choice for one setting × language × seed (× the swept keys not selected over).
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    /// The row the choice feeds: the setting, or, where the setting's runs take several values
    /// of a plotted key, the split row's name that Table 1 gives it
    /// (`No priming · finetune.method=lora`, [`crate::report::split::split_name`]).
    pub setting: String,
    pub lang: String,
    pub seed: u64,
    /// The chosen run's values of the `over` keys (JSON), in `over` order.
    pub values: Vec<(String, String)>,
    pub run_id: String,
    /// Dev and test F1 ×100 of the chosen run (None: no candidate finished).
    pub dev_f1: Option<f64>,
    pub test_f1: Option<f64>,
    /// Candidates finished, of all candidates.
    pub done: usize,
    pub candidates: usize,
}

/// Every choice of a selection.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectionRecord {
    pub by: SelectBy,
    pub over: Vec<String>,
    pub picks: Vec<Pick>,
}

/// A selection group: setting, language, seed and the unselected swept keys' values — everything
/// that identifies a cell entry except the selected keys' values.
type CellKey = (String, String, u64, Vec<(String, String)>);

fn score(r: &RunRecord, by: SelectBy) -> Option<f64> {
    let m = r.metrics.as_ref()?;
    match by {
        SelectBy::DevF1 => Some(m.dev.f1),
    }
}

/// The runs the tables use: with `[report] select`, one run per setting × language × seed
/// (× unselected axes), the best on dev among those finished (the first in sweep order on a
/// tie; a group with nothing finished keeps its first run, shown as pending). Without it, the
/// input as it is.
pub fn apply(input: &ReportInput) -> (ReportInput, Option<SelectionRecord>) {
    let Some(Selection { by, over }) = &input.spec.select else {
        return (input.clone(), None);
    };
    let mut groups: BTreeMap<CellKey, Vec<usize>> = BTreeMap::new();
    let mut order = Vec::new();
    for (i, r) in input.runs.iter().enumerate() {
        let rest: Vec<(String, String)> = r
            .meta
            .axes
            .iter()
            .filter(|(k, _)| !over.contains(k))
            .cloned()
            .collect();
        let key = (
            r.meta.setting.clone(),
            r.meta.lang.clone(),
            r.meta.seed,
            rest,
        );
        let members = groups.entry(key.clone()).or_default();
        if members.is_empty() {
            order.push(key);
        }
        members.push(i);
    }
    // Each pick is labelled with its run's Table 1 row: the same split, so the same names.
    let (split, _) = split_settings(input, &input.spec.plotted_keys());
    let row_of: BTreeMap<&str, &str> = split
        .runs
        .iter()
        .map(|r| (r.meta.run_id.as_str(), r.meta.setting.as_str()))
        .collect();
    let mut kept = Vec::new();
    let mut picks = Vec::new();
    for key in order {
        let members = &groups[&key];
        let best = members
            .iter()
            .copied()
            .filter_map(|i| score(&input.runs[i], *by).map(|s| (i, s)))
            // max_by keeps the last of equals: compare so that the earlier run wins ties.
            .max_by(|(i, a), (j, b)| a.total_cmp(b).then(j.cmp(i)))
            .map(|(i, _)| i);
        let chosen = best.unwrap_or(members[0]);
        let run = &input.runs[chosen];
        let values = over
            .iter()
            .map(|k| {
                let v = run.meta.axes.iter().find(|(a, _)| a == k);
                (
                    k.clone(),
                    v.map_or_else(|| "(set by the setting)".to_string(), |v| v.1.clone()),
                )
            })
            .collect();
        picks.push(Pick {
            setting: row_of
                .get(run.meta.run_id.as_str())
                .map_or_else(|| key.0.clone(), |row| row.to_string()),
            lang: key.1.clone(),
            seed: key.2,
            values,
            run_id: run.meta.run_id.clone(),
            dev_f1: best
                .and_then(|i| score(&input.runs[i], *by))
                .map(|f| f * 100.0),
            test_f1: best
                .and_then(|i| input.runs[i].metrics.as_ref())
                .map(|m| m.test.f1 * 100.0),
            done: members
                .iter()
                .filter(|&&i| input.runs[i].metrics.is_some())
                .count(),
            candidates: members.len(),
        });
        kept.push(run.clone());
    }
    let mut selected = input.clone();
    selected.runs = kept;
    let record = SelectionRecord {
        by: *by,
        over: over.clone(),
        picks,
    };
    (selected, Some(record))
}

fn f2(v: Option<f64>) -> String {
    v.map_or(MISSING.to_string(), |v| format!("{v:.2}"))
}

impl SelectionRecord {
    /// `selection.md`: how often each value was chosen per setting, then every choice.
    pub fn to_markdown(&self) -> String {
        let by = match self.by {
            SelectBy::DevF1 => "dev F1",
        };
        let mut out = format!(
            "# Hyperparameter selection\n\nFor each setting × language × seed, the tables use \
             the run with the best {by} over {}; its test F1 is what they report. \
             Candidates: finished of all.\n\n## How often each value was chosen\n\n",
            self.over.join(", ")
        );
        let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
        let mut settings: Vec<&String> = Vec::new();
        for p in &self.picks {
            if !settings.contains(&&p.setting) {
                settings.push(&p.setting);
            }
            if p.dev_f1.is_some() {
                *counts
                    .entry((p.setting.clone(), describe(&p.values)))
                    .or_default() += 1;
            }
        }
        let rows: Vec<Vec<String>> = settings
            .iter()
            .flat_map(|s| {
                counts
                    .iter()
                    .filter(move |((setting, _), _)| setting == *s)
                    .map(|((setting, values), n)| {
                        vec![setting.clone(), values.clone(), n.to_string()]
                    })
            })
            .collect();
        out += &markdown::table(
            &["Setting".into(), "Chosen".into(), "Times".into()],
            &[Align::Left, Align::Left, Align::Right],
            &rows,
        );
        out += "\n## Every choice\n\n";
        let rows: Vec<Vec<String>> = self
            .picks
            .iter()
            .map(|p| {
                vec![
                    p.setting.clone(),
                    p.lang.clone(),
                    p.seed.to_string(),
                    describe(&p.values),
                    f2(p.dev_f1),
                    f2(p.test_f1),
                    format!("{}/{}", p.done, p.candidates),
                    p.run_id.clone(),
                ]
            })
            .collect();
        let headers: Vec<String> = [
            "Setting",
            "Lang",
            "Seed",
            "Chosen",
            "Dev F1",
            "Test F1",
            "Candidates",
            "Run",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut aligns = vec![Align::Left, Align::Left, Align::Right, Align::Left];
        aligns.extend([Align::Right, Align::Right, Align::Right, Align::Left]);
        out += &markdown::table(&headers, &aligns, &rows);
        out
    }

    /// One row per choice; one column per selected key.
    pub fn to_frame(&self) -> Result<DataFrame, ReportError> {
        let col_s = |name: &str, f: &dyn Fn(&Pick) -> String| {
            Series::new(
                name.into(),
                self.picks.iter().map(f).collect::<Vec<String>>(),
            )
            .into_column()
        };
        let mut columns = vec![
            col_s("setting", &|p| p.setting.clone()),
            col_s("lang", &|p| p.lang.clone()),
            Series::new(
                "seed".into(),
                self.picks.iter().map(|p| p.seed).collect::<Vec<u64>>(),
            )
            .into_column(),
        ];
        for (i, key) in self.over.iter().enumerate() {
            columns.push(col_s(key, &|p| p.values[i].1.clone()));
        }
        let opt = |name: &str, f: &dyn Fn(&Pick) -> Option<f64>| {
            Series::new(
                name.into(),
                self.picks.iter().map(f).collect::<Vec<Option<f64>>>(),
            )
            .into_column()
        };
        columns.extend([
            opt("dev_f1", &|p| p.dev_f1),
            opt("test_f1", &|p| p.test_f1),
            Series::new(
                "candidates_done".into(),
                self.picks.iter().map(|p| p.done as u64).collect::<Vec<_>>(),
            )
            .into_column(),
            Series::new(
                "candidates".into(),
                self.picks
                    .iter()
                    .map(|p| p.candidates as u64)
                    .collect::<Vec<_>>(),
            )
            .into_column(),
            col_s("run_id", &|p| p.run_id.clone()),
        ]);
        DataFrame::new(self.picks.len(), columns)
            .map_err(polars_err("building the selection table"))
    }

    /// Writes `selection.md` and `selection.csv` under `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
        let md = dir.join("selection.md");
        write_atomic(&md, self.to_markdown().as_bytes())?;
        let csv = dir.join("selection.csv");
        write_csv(&self.to_frame()?, &csv)?;
        Ok(vec![md, csv])
    }
}

/// `finetune.lr = 0.003, prime.inner_lr = 0.03`.
fn describe(values: &[(String, String)]) -> String {
    values
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testutil::{input, run};

    /// Setting "A" with three learning rates per language and seed.
    fn grid_input() -> ReportInput {
        let mut runs = Vec::new();
        for seed in [1, 2] {
            for (lr, dev, test) in [
                ("0.001", 0.50, 0.40),
                ("0.003", 0.70, 0.45),
                ("0.01", 0.60, 0.90),
            ] {
                // Seed 2 prefers the largest rate on dev.
                let dev = if seed == 2 && lr == "0.01" { 0.80 } else { dev };
                let mut r = run("A", "x", seed, Some(test));
                let m = r.metrics.as_mut().unwrap();
                m.dev.f1 = dev;
                r.meta.run_id = format!("A-{seed}-{lr}");
                r.meta.axes = vec![
                    ("finetune.lr".into(), lr.into()),
                    ("finetune.epochs".into(), "3".into()),
                ];
                runs.push(r);
            }
        }
        let mut inp = input(&["A"], &["x"], runs, Default::default());
        inp.spec.select = Some(Selection {
            by: SelectBy::DevF1,
            over: vec!["finetune.lr".into()],
        });
        inp
    }

    #[test]
    fn keeps_the_best_dev_configuration_and_reports_its_test_score() {
        let inp = grid_input();
        let (selected, record) = apply(&inp);
        let record = record.unwrap();
        let ids: Vec<&str> = selected
            .runs
            .iter()
            .map(|r| r.meta.run_id.as_str())
            .collect();
        // Seed 1: best dev is 0.003 (test 0.45, not the best test 0.90); seed 2: 0.01.
        assert_eq!(ids, vec!["A-1-0.003", "A-2-0.01"]);
        assert_eq!(
            record.picks[0].values,
            vec![("finetune.lr".into(), "0.003".into())]
        );
        assert_eq!(record.picks[0].test_f1, Some(45.0));
        assert_eq!((record.picks[0].done, record.picks[0].candidates), (3, 3));
        // Table 1 reports the chosen runs' test scores.
        let scores = crate::report::gather::scores_frame(&selected.runs).unwrap();
        let t = crate::report::table::build_table1(&selected, &scores).unwrap();
        let cell = t.rows[0].cells[0].as_ref().unwrap();
        assert_eq!(cell.n, 2);
        assert!((cell.mean - (45.0 + 90.0) / 2.0).abs() < 1e-9, "{cell:?}");
        let md = record.to_markdown();
        assert!(
            md.contains("finetune.lr = 0.003") && md.contains("| A       | x    |    1 |"),
            "{md}"
        );
        let df = record.to_frame().unwrap();
        assert_eq!(df.height(), 2);
        assert!(df.column("finetune.lr").is_ok());
    }

    #[test]
    fn ties_go_to_the_first_and_unfinished_candidates_wait() {
        let mut inp = grid_input();
        // Seed 1: equal dev for 0.001 and 0.003 → the first; 0.01 not finished.
        for r in inp.runs.iter_mut().filter(|r| r.meta.seed == 1) {
            if r.meta.run_id.ends_with("0.01") {
                r.metrics = None;
            } else {
                r.metrics.as_mut().unwrap().dev.f1 = 0.5;
            }
        }
        // Seed 2: nothing finished → the first run is kept, pending.
        for r in inp.runs.iter_mut().filter(|r| r.meta.seed == 2) {
            r.metrics = None;
        }
        let (selected, record) = apply(&inp);
        let ids: Vec<&str> = selected
            .runs
            .iter()
            .map(|r| r.meta.run_id.as_str())
            .collect();
        assert_eq!(ids, vec!["A-1-0.001", "A-2-0.001"]);
        let picks = record.unwrap().picks;
        assert_eq!((picks[0].done, picks[0].candidates), (2, 3));
        assert_eq!(picks[1].dev_f1, None);
        assert!(selected.runs[1].metrics.is_none());
    }

    #[test]
    fn a_plotted_key_that_varies_within_a_setting_names_the_rows_as_table1_does() {
        // pe-methods.toml's shape: setting "No priming" runs adapter and lora, each over two
        // learning rates, and a figure plots the method; every pick must say which method it
        // belongs to, by the name Table 1 gives the row (not by every unselected key: the
        // zipped inner_params of the primed rows is no part of it).
        let mut runs = Vec::new();
        for method in ["adapter", "lora"] {
            for lr in ["0.003", "0.01"] {
                let mut r = run("No priming", "x", 1, Some(0.5));
                r.meta.run_id = format!("{method}-{lr}");
                r.meta.axes = vec![
                    ("finetune.lr".into(), lr.into()),
                    ("finetune.method".into(), format!("\"{method}\"")),
                    ("finetune.epochs".into(), "3".into()),
                ];
                runs.push(r);
            }
        }
        let mut inp = input(&["No priming"], &["x"], runs, Default::default());
        inp.spec.select = Some(Selection {
            by: SelectBy::DevF1,
            over: vec!["finetune.lr".into()],
        });
        inp.spec.figure = vec![crate::spec::report::FigureSpec {
            name: "pe-matrix".into(),
            kind: crate::spec::report::FigureKind::Heatmap,
            x: "finetune.method".into(),
            series: "setting".into(),
            y: Default::default(),
            facet: Default::default(),
            filter: None,
            title: None,
        }];
        let record = apply(&inp).1.unwrap();
        let labels: Vec<&str> = record.picks.iter().map(|p| p.setting.as_str()).collect();
        // The constant epochs are left out, as Table 1's split leaves them out.
        assert_eq!(
            labels,
            vec![
                "No priming · finetune.method=adapter",
                "No priming · finetune.method=lora"
            ]
        );
        let md = record.to_markdown();
        assert!(md.contains("| No priming · finetune.method=lora "), "{md}");
        let table_rows = split_settings(&inp, &inp.spec.plotted_keys()).1;
        let names: Vec<&str> = table_rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, labels);
    }

    #[test]
    fn without_select_every_run_stays() {
        let mut inp = grid_input();
        inp.spec.select = None;
        let (selected, record) = apply(&inp);
        assert!(record.is_none());
        assert_eq!(selected.runs.len(), 6);
    }
}
