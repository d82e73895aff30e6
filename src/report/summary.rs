//! `summary.md`: what a sweep cost and produced, ready to paste into a README — runs done and
//! not done, run time per kind of run and in total, and the files the report wrote.

use crate::fsutil::write_atomic;
use crate::prime::PrimingInfo;
use crate::report::markdown::{self, Align};
use crate::report::{ReportError, ReportInput};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One kind of run: how many there are, how many finished, and their run time.
#[derive(Debug, Clone, PartialEq)]
pub struct KindCost {
    /// "priming meta", "fine-tuning adapter", …
    pub kind: String,
    pub runs: usize,
    pub done: usize,
    /// Summed over the finished runs whose record gives a duration.
    pub seconds: f64,
    /// Finished runs with a duration (a collected checkpoint keeps none).
    pub timed: usize,
}

/// Everything in `summary.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub sweep: String,
    pub kinds: Vec<KindCost>,
    /// Report files, relative to the report folder.
    pub files: Vec<String>,
    pub skipped: Vec<String>,
}

/// The summary of `input` (every run, selected or not): each run counted once, whichever
/// settings share it.
pub fn summarize(
    input: &ReportInput,
    dir: &Path,
    files: &[PathBuf],
    skipped: &[String],
) -> Summary {
    let mut kinds: BTreeMap<String, KindCost> = BTreeMap::new();
    let mut add = |kind: String, finished: Option<Option<f64>>| {
        let k = kinds.entry(kind.clone()).or_insert(KindCost {
            kind,
            runs: 0,
            done: 0,
            seconds: 0.0,
            timed: 0,
        });
        k.runs += 1;
        if let Some(seconds) = finished {
            k.done += 1;
            if let Some(s) = seconds {
                k.seconds += s;
                k.timed += 1;
            }
        }
    };
    let mut seen = BTreeSet::new();
    for p in &input.priming_runs {
        if !seen.insert(p.run_id.clone()) {
            continue;
        }
        let info: Option<PrimingInfo> =
            crate::fsutil::read_json(&p.checkpoint_dir.join(crate::prime::PRIMING_FILE)).ok();
        let kind = match &info {
            Some(i) => format!("priming {}", i.method),
            None => "priming".to_string(),
        };
        add(kind, p.done.then(|| info.map(|i| i.wall_time_s)));
    }
    for r in &input.runs {
        if !seen.insert(r.meta.run_id.clone()) {
            continue;
        }
        add(
            format!("fine-tuning {}", r.meta.ft_method),
            r.metrics.as_ref().map(|m| Some(m.wall_time_s)),
        );
    }
    Summary {
        sweep: input.sweep_name.clone(),
        kinds: kinds.into_values().collect(),
        files: files
            .iter()
            .map(|f| f.strip_prefix(dir).unwrap_or(f).display().to_string())
            .collect(),
        skipped: skipped.to_vec(),
    }
}

fn minutes(seconds: f64) -> String {
    format!("{:.1}", seconds / 60.0)
}

impl Summary {
    /// Whether `text` is a summary.md that [`Summary::to_markdown`] wrote (how a report folder
    /// from before the report marker is known).
    pub fn is_written_summary(text: &str) -> bool {
        text.lines()
            .next()
            .is_some_and(|l| l.starts_with("# Sweep ") && l.ends_with(": summary"))
            && text.contains("`primer status` tells which")
    }

    pub fn to_markdown(&self) -> String {
        let runs: usize = self.kinds.iter().map(|k| k.runs).sum();
        let done: usize = self.kinds.iter().map(|k| k.done).sum();
        let mut out = format!(
            "# Sweep {}: summary\n\n{done} of {runs} runs done ({} not done: pending or failed, \
             `primer status` tells which).\n\n",
            self.sweep,
            runs - done
        );
        let mut rows: Vec<Vec<String>> = self
            .kinds
            .iter()
            .map(|k| {
                vec![
                    k.kind.clone(),
                    format!("{}/{}", k.done, k.runs),
                    minutes(k.seconds),
                    if k.timed > 0 {
                        format!("{:.1}", k.seconds / k.timed as f64)
                    } else {
                        "–".to_string()
                    },
                ]
            })
            .collect();
        let total: f64 = self.kinds.iter().map(|k| k.seconds).sum();
        rows.push(vec![
            "all".to_string(),
            format!("{done}/{runs}"),
            minutes(total),
            String::new(),
        ]);
        out += &markdown::table(
            &[
                "Runs".to_string(),
                "Done".to_string(),
                "Run time (min)".to_string(),
                "Mean per run (s)".to_string(),
            ],
            &[Align::Left, Align::Right, Align::Right, Align::Right],
            &rows,
        );
        out += "\nRun time is summed over the finished runs (each run's own clock); the sweep's \
                wall time is shorter when slots run in parallel.\n\n## Files\n\n";
        for f in &self.files {
            out += &format!("- `{f}`\n");
        }
        if !self.skipped.is_empty() {
            out += "\nNot drawn:\n";
            for s in &self.skipped {
                out += &format!("- {s}\n");
            }
        }
        out
    }

    /// Writes `summary.md` under `dir`.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, ReportError> {
        let path = dir.join("summary.md");
        write_atomic(&path, self.to_markdown().as_bytes())?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::PrimingRunRecord;
    use crate::report::testutil::{input, run};

    #[test]
    fn counts_each_run_once_and_sums_run_time_per_kind() {
        let mut runs = vec![
            run("A", "x", 1, Some(0.5)),
            run("A", "x", 2, None),
            run("B", "x", 1, Some(0.6)),
        ];
        // "C" shares A's seed-1 run: counted once.
        let mut shared = runs[0].clone();
        shared.meta.setting = "C".into();
        runs.push(shared);
        runs[2].meta.ft_method = crate::config::FinetuneMethod::Full;
        let mut inp = input(&["A", "B", "C"], &["x"], runs, Default::default());
        inp.priming_runs = vec![PrimingRunRecord {
            run_id: "p1".into(),
            setting: "A".into(),
            checkpoint_dir: PathBuf::from("/nonexistent"),
            done: false,
        }];
        let dir = Path::new("/r");
        let s = summarize(&inp, dir, &[dir.join("table1.md")], &[]);
        let by = |k: &str| s.kinds.iter().find(|c| c.kind == k).unwrap().clone();
        // testutil's metrics record 1.5 s of wall time each.
        let adapter = by("fine-tuning adapter");
        assert_eq!((adapter.runs, adapter.done, adapter.timed), (2, 1, 1));
        assert_eq!(adapter.seconds, 1.5);
        let full = by("fine-tuning full");
        assert_eq!((full.runs, full.done), (1, 1));
        assert_eq!((by("priming").runs, by("priming").done), (1, 0));
        let md = s.to_markdown();
        assert!(md.contains("2 of 4 runs done (2 not done"), "{md}");
        assert!(md.contains("- `table1.md`"), "{md}");
        let adapter_row = md
            .lines()
            .find(|l| l.starts_with("| fine-tuning adapter"))
            .unwrap();
        assert!(
            adapter_row.contains("1/2")
                && adapter_row.contains("0.0")
                && adapter_row.contains("1.5"),
            "{adapter_row}"
        );
        let all = md.lines().find(|l| l.starts_with("| all")).unwrap();
        assert!(all.contains("2/4") && all.contains("0.1"), "{all}");
    }
}
