//! Gather: one long polars DataFrame with a row per fine-tuning run of the sweep (done or not),
//! saved as `scores.parquet` and `scores.csv`. Scores are fractions in [0, 1] as in
//! `metrics.json`; runs not done have nulls in every measured column, never zeros.

use crate::fsutil::write_atomic;
use crate::report::{ReportError, ReportInput, RunRecord};
use polars::prelude::*;
use polars_io::SerWriter;
use polars_io::csv::write::CsvWriter;
use polars_io::parquet::write::ParquetWriter;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Entity types that always get a per-type column, in this order (WikiAnn's three).
pub const ENTITY_TYPES: [&str; 3] = ["PER", "ORG", "LOC"];

/// Name of the per-type test F1 column of entity type `ty`.
pub fn per_type_column(ty: &str) -> String {
    format!("test_f1_{ty}")
}

pub(crate) fn polars_err(what: impl Into<String>) -> impl FnOnce(PolarsError) -> ReportError {
    let what = what.into();
    move |source| ReportError::Polars { what, source }
}

fn col_f64(name: &str, v: Vec<Option<f64>>) -> Column {
    Series::new(name.into(), v).into_column()
}

fn col_u64(name: &str, v: Vec<Option<u64>>) -> Column {
    Series::new(name.into(), v).into_column()
}

fn col_str(name: &str, v: Vec<Option<String>>) -> Column {
    Series::new(name.into(), v).into_column()
}

/// Swept keys that the scores table already has a column for.
const AXES_WITH_COLUMNS: [&str; 6] = [
    "prime.inner_loop",
    "prime.inner_steps",
    "prime.inner_lr",
    "prime.outer_lr",
    "finetune.method",
    "finetune.lr",
];

/// The long table of runs: setting, priming, inner_loop, inner_steps, inner_lr, outer_lr,
/// ft_method, ft_lr, trained_percent, numeric_precision, one column per other swept key (named
/// as the key), lang, seed, done, dev_/test_ precision/recall/f1,
/// `test_f1_<TYPE>` for PER, ORG, LOC (and any other type seen), best_epoch, steps,
/// wall_time_s, run_id.
pub fn scores_frame(runs: &[RunRecord]) -> Result<DataFrame, ReportError> {
    let metric = |f: &dyn Fn(&crate::train::FinetuneMetrics) -> f64| -> Vec<Option<f64>> {
        runs.iter().map(|r| r.metrics.as_ref().map(f)).collect()
    };
    let meta_str = |f: &dyn Fn(&RunRecord) -> Option<String>| -> Vec<Option<String>> {
        runs.iter().map(f).collect()
    };
    let mut types: Vec<String> = ENTITY_TYPES.iter().map(|s| s.to_string()).collect();
    let extra: BTreeSet<String> = runs
        .iter()
        .filter_map(|r| r.metrics.as_ref())
        .flat_map(|m| m.test.per_type.keys().cloned())
        .filter(|t| !ENTITY_TYPES.contains(&t.as_str()))
        .collect();
    types.extend(extra);

    let lower = |s: String| s.to_lowercase();
    let mut columns = vec![
        col_str("setting", meta_str(&|r| Some(r.meta.setting.clone()))),
        col_str(
            "priming",
            meta_str(&|r| r.meta.priming.map(|p| lower(format!("{p:?}")))),
        ),
        col_str(
            "inner_loop",
            meta_str(&|r| r.meta.inner_loop.map(|p| lower(format!("{p:?}")))),
        ),
        col_u64(
            "inner_steps",
            runs.iter()
                .map(|r| r.meta.inner_steps.map(|s| s as u64))
                .collect(),
        ),
        col_f64("inner_lr", runs.iter().map(|r| r.meta.inner_lr).collect()),
        col_f64("outer_lr", runs.iter().map(|r| r.meta.outer_lr).collect()),
        col_str(
            "ft_method",
            meta_str(&|r| Some(r.meta.ft_method.as_str().to_string())),
        ),
        col_f64("ft_lr", runs.iter().map(|r| Some(r.meta.ft_lr)).collect()),
        col_f64("trained_percent", metric(&|m| m.trained_percent)),
        // The numeric precision the run's products ran in (null for runs recorded before the
        // key); not `precision`, which beside dev_/test_precision would read as a score.
        col_str(
            "numeric_precision",
            meta_str(&|r| {
                r.metrics
                    .as_ref()
                    .and_then(|m| m.precision)
                    .map(|p| p.effective.as_str().to_string())
            }),
        ),
    ];
    // Every other key the sweep varies (a training size, an adapter size, ...), named as in
    // the sweep file, so that runs differing only there can be told apart.
    let mut axes: Vec<&str> = Vec::new();
    for r in runs {
        for (key, _) in &r.meta.axes {
            if !AXES_WITH_COLUMNS.contains(&key.as_str()) && !axes.contains(&key.as_str()) {
                axes.push(key);
            }
        }
    }
    for key in axes {
        columns.push(col_str(
            key,
            meta_str(&|r| crate::report::split::axis_value(r, key)),
        ));
    }
    columns.extend([
        col_str("lang", meta_str(&|r| Some(r.meta.lang.clone()))),
        col_u64("seed", runs.iter().map(|r| Some(r.meta.seed)).collect()),
        Series::new(
            "done".into(),
            runs.iter()
                .map(|r| r.metrics.is_some())
                .collect::<Vec<bool>>(),
        )
        .into_column(),
        col_f64("dev_precision", metric(&|m| m.dev.precision)),
        col_f64("dev_recall", metric(&|m| m.dev.recall)),
        col_f64("dev_f1", metric(&|m| m.dev.f1)),
        col_f64("test_precision", metric(&|m| m.test.precision)),
        col_f64("test_recall", metric(&|m| m.test.recall)),
        col_f64("test_f1", metric(&|m| m.test.f1)),
    ]);
    for ty in &types {
        // A type absent from a done run's test set has no F1 (null), not an F1 of 0.
        let v = runs
            .iter()
            .map(|r| {
                r.metrics
                    .as_ref()
                    .and_then(|m| m.test.per_type.get(ty).map(|t| t.f1))
            })
            .collect();
        columns.push(col_f64(&per_type_column(ty), v));
    }
    columns.extend([
        col_u64(
            "best_epoch",
            runs.iter()
                .map(|r| r.metrics.as_ref().map(|m| m.best_epoch as u64))
                .collect(),
        ),
        col_u64(
            "steps",
            runs.iter()
                .map(|r| r.metrics.as_ref().map(|m| m.steps as u64))
                .collect(),
        ),
        col_f64("wall_time_s", metric(&|m| m.wall_time_s)),
        col_str("run_id", meta_str(&|r| Some(r.meta.run_id.clone()))),
    ]);
    DataFrame::new(runs.len(), columns).map_err(polars_err("building the scores table"))
}

/// Writes `df` as CSV (header, empty field for null) atomically.
pub fn write_csv(df: &DataFrame, path: &Path) -> Result<(), ReportError> {
    let mut buf = Vec::new();
    let mut df = df.clone();
    CsvWriter::new(&mut buf)
        .include_header(true)
        .finish(&mut df)
        .map_err(polars_err(format!("writing {}", path.display())))?;
    write_atomic(path, &buf)?;
    Ok(())
}

/// Writes `df` as Parquet atomically.
pub fn write_parquet(df: &DataFrame, path: &Path) -> Result<(), ReportError> {
    let mut buf = Vec::new();
    let mut df = df.clone();
    ParquetWriter::new(&mut buf)
        .finish(&mut df)
        .map_err(polars_err(format!("writing {}", path.display())))?;
    write_atomic(path, &buf)?;
    Ok(())
}

/// A warning when the done runs of a report (fine-tuning, and the priming runs they start from)
/// did not all run their products in one precision: bf16 and fp32 runs of one setting differ
/// by more than nothing, so a comparison across them measures precision as well as method.
/// Runs recorded before precision was recorded are not counted.
pub fn mixed_precision_warning(input: &ReportInput) -> Option<String> {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for r in &input.runs {
        if let Some(p) = r.metrics.as_ref().and_then(|m| m.precision)
            && seen.insert(r.meta.run_id.clone())
        {
            *counts.entry(p.effective.as_str()).or_default() += 1;
        }
    }
    for p in &input.priming_runs {
        if !p.done || !seen.insert(p.run_id.clone()) {
            continue;
        }
        let info: Option<crate::prime::PrimingInfo> =
            crate::fsutil::read_json(&p.checkpoint_dir.join(crate::prime::PRIMING_FILE)).ok();
        if let Some(precision) = info.and_then(|i| i.precision) {
            *counts.entry(precision.effective.as_str()).or_default() += 1;
        }
    }
    if counts.len() < 2 {
        return None;
    }
    let list: Vec<String> = counts
        .iter()
        .map(|(p, n)| format!("{p}: {n} runs"))
        .collect();
    Some(format!(
        "runs of this report ran in different precisions ({}); `precision = \"auto\"` is fp32 \
         on a CPU and bf16 on CUDA, so set `precision` explicitly in the sweep to compare \
         methods rather than devices (the `precision` column of scores.csv says which run is which)",
        list.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PrecisionChoice, PrecisionInEffect};
    use crate::model::dispatch::Precision;
    use crate::report::testutil::{input, run};

    fn ran_in(mut r: RunRecord, effective: Precision) -> RunRecord {
        r.metrics.as_mut().unwrap().precision = Some(PrecisionInEffect {
            requested: PrecisionChoice::Auto,
            effective,
        });
        r
    }

    #[test]
    fn mixed_precision_is_warned_and_in_the_scores() {
        let one = vec![
            ran_in(run("A", "x", 1, Some(0.8)), Precision::Fp32),
            ran_in(run("A", "x", 2, Some(0.8)), Precision::Fp32),
            // Recorded before the key: not counted either way.
            run("B", "x", 1, Some(0.7)),
        ];
        let same = input(&["A", "B"], &["x"], one.clone(), Default::default());
        assert_eq!(mixed_precision_warning(&same), None);

        let mut mixed = one;
        mixed.push(ran_in(run("B", "x", 2, Some(0.7)), Precision::Bf16));
        let mixed = input(&["A", "B"], &["x"], mixed, Default::default());
        let w = mixed_precision_warning(&mixed).expect("a warning");
        assert!(
            w.contains("bf16: 1 runs") && w.contains("fp32: 2 runs"),
            "{w}"
        );

        let df = scores_frame(&mixed.runs).unwrap();
        let col = df.column("numeric_precision").unwrap().str().unwrap();
        let values: Vec<Option<&str>> = col.iter().collect();
        assert_eq!(values, [Some("fp32"), Some("fp32"), None, Some("bf16")]);
    }

    /// A swept key without a column of its own gets one, named as the key (the few-shot
    /// sweep's scores could not tell its training sizes apart); one with a column does not.
    #[test]
    fn every_other_swept_key_is_a_column_named_as_the_key() {
        let size = "finetune.data.train_limit";
        let mut runs = Vec::new();
        for (n, lr) in [("50", "0.01"), ("100", "0.03")] {
            let mut r = run("A", "x", 1, Some(0.5));
            r.meta.axes.push((size.into(), n.into()));
            r.meta.axes.push(("finetune.lr".into(), lr.into()));
            runs.push(r);
        }
        runs.push(run("B", "x", 1, Some(0.5)));
        let df = scores_frame(&runs).unwrap();
        let col = df.column(size).unwrap().str().unwrap();
        assert_eq!(
            col.iter().collect::<Vec<_>>(),
            [Some("50"), Some("100"), None]
        );
        assert!(df.column("finetune.lr").is_err(), "ft_lr has it already");
    }
}
