//! Learning curves on request: the training loss of every finished fine-tuning run and the
//! query / inner losses of every finished priming run (`<checkpoint>/curves.json`), under
//! `curves/` as SVG and PNG.

use crate::prime::PrimeCurves;
use crate::report::plot::{LineChart, write_figure};
use crate::report::{ReportError, ReportInput};
use std::path::{Path, PathBuf};

/// A run id made safe as a file name.
pub fn file_stem(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Trailing moving average over `window` points (fewer at the start).
pub fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    let window = window.max(1);
    let mut out = Vec::with_capacity(values.len());
    let mut sum = 0.0;
    for (i, v) in values.iter().enumerate() {
        sum += v;
        if i >= window {
            sum -= values[i - window];
        }
        out.push(sum / (i + 1).min(window) as f64);
    }
    out
}

fn points(values: &[f64]) -> Vec<(f64, f64)> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| ((i + 1) as f64, *v))
        .collect()
}

/// Mean over a step's tasks of the values present.
fn step_mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The chart of one priming run's curves.
pub fn priming_chart(title: &str, curves: &PrimeCurves) -> LineChart {
    let mut series = Vec::new();
    let collect = |f: &dyn Fn(&crate::prime::TaskLosses) -> Option<f64>| -> Vec<(f64, f64)> {
        curves
            .steps
            .iter()
            .filter_map(|s| step_mean(s.tasks.iter().map(f)).map(|v| (s.step as f64, v)))
            .collect()
    };
    for (label, pts) in [
        ("query loss (mean over tasks)", collect(&|t| Some(t.query))),
        ("inner loss before adaptation", collect(&|t| t.inner_before)),
        ("inner loss at last inner step", collect(&|t| t.inner_after)),
    ] {
        if !pts.is_empty() {
            series.push((label.to_string(), pts));
        }
    }
    LineChart {
        title: title.to_string(),
        x_desc: "Outer step".to_string(),
        y_desc: "Loss".to_string(),
        series,
        faint_first: false,
    }
}

/// Writes every curve; returns the files written and notes on runs without curves.
pub fn write_curves(
    input: &ReportInput,
    dir: &Path,
) -> Result<(Vec<PathBuf>, Vec<String>), ReportError> {
    let out_dir = dir.join("curves");
    std::fs::create_dir_all(&out_dir).map_err(|source| crate::fsutil::FsError::Write {
        path: out_dir.clone(),
        source,
    })?;
    let mut files = Vec::new();
    let mut notes = Vec::new();
    for r in &input.runs {
        let Some(m) = &r.metrics else { continue };
        if m.loss_curve.is_empty() {
            notes.push(format!(
                "fine-tuning run {} has no loss curve",
                r.meta.run_id
            ));
            continue;
        }
        let raw: Vec<f64> = m.loss_curve.iter().map(|&v| f64::from(v)).collect();
        let window = (raw.len() / 50).max(1);
        let mut series = vec![("training loss".to_string(), points(&raw))];
        if window > 1 {
            series.push((
                format!("moving average ({window} steps)"),
                points(&moving_average(&raw, window)),
            ));
        }
        let chart = LineChart {
            title: format!(
                "Fine-tuning loss: {} ({}, seed {})",
                r.meta.setting, r.meta.lang, r.meta.seed
            ),
            x_desc: "Optimiser step".to_string(),
            y_desc: "Training loss".to_string(),
            faint_first: series.len() > 1,
            series,
        };
        files.extend(write_figure(
            &chart,
            &out_dir,
            &format!("ft-{}", file_stem(&r.meta.run_id)),
        )?);
    }
    // A priming run shared by several settings is listed once per setting: draw it once.
    let mut seen = std::collections::BTreeMap::<&str, Vec<&str>>::new();
    for p in &input.priming_runs {
        seen.entry(p.run_id.as_str())
            .or_default()
            .push(p.setting.as_str());
    }
    for p in &input.priming_runs {
        let Some(settings) = seen.remove(p.run_id.as_str()) else {
            continue;
        };
        if !p.done {
            continue;
        }
        let path = p.checkpoint_dir.join("curves.json");
        let curves: PrimeCurves = match crate::fsutil::read_json(&path) {
            Ok(c) => c,
            Err(e) => {
                notes.push(format!("priming run {}: {e}", p.run_id));
                continue;
            }
        };
        let chart = priming_chart(&format!("Priming losses: {}", settings.join(", ")), &curves);
        if chart.series.is_empty() {
            notes.push(format!(
                "priming run {}: {} holds no steps",
                p.run_id,
                path.display()
            ));
            continue;
        }
        files.extend(write_figure(
            &chart,
            &out_dir,
            &format!("prime-{}", file_stem(&p.run_id)),
        )?);
    }
    Ok((files, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_and_file_stems() {
        assert_eq!(
            moving_average(&[2.0, 4.0, 6.0, 8.0], 2),
            vec![2.0, 3.0, 5.0, 7.0]
        );
        assert_eq!(file_stem("ft/abc:1 2"), "ft_abc_1_2");
    }
}
