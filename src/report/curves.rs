//! Learning curves on request: the training loss of every finished fine-tuning run and the
//! query / inner losses of every finished priming run (`<checkpoint>/curves.json`), under
//! `curves/` as SVG and PNG. A priming run with dev evaluation (`prime.dev_every`) also gets
//! its sources' dev losses in the loss figure and a second figure, `prime-<id>-dev`, of their
//! dev F1; runs without dev points (and curves.json files older than them) get neither.

use crate::prime::{PrimeCurves, best_dev_point};
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
    // The same unit as the training losses, so on the same axes: a dev loss rising while the
    // query loss falls is overfitting to the sources.
    for lang in dev_langs(curves) {
        series.push((
            format!("dev loss ({lang}, after adaptation)"),
            dev_series(curves, &lang, |t| t.dev_loss),
        ));
    }
    LineChart {
        title: title.to_string(),
        x_desc: "Outer step".to_string(),
        y_desc: "Loss".to_string(),
        series,
        faint_first: false,
    }
}

/// The sources of a run's dev points, in the order of its first point.
fn dev_langs(curves: &PrimeCurves) -> Vec<String> {
    curves.dev.first().map_or_else(Vec::new, |p| {
        p.tasks.iter().map(|t| t.lang.clone()).collect()
    })
}

/// `(step, value)` of one source at every dev point that scored it.
fn dev_series(
    curves: &PrimeCurves,
    lang: &str,
    value: impl Fn(&crate::prime::DevTaskScores) -> f64,
) -> Vec<(f64, f64)> {
    curves
        .dev
        .iter()
        .filter_map(|p| {
            let t = p.tasks.iter().find(|t| t.lang == lang)?;
            Some((p.step as f64, value(t)))
        })
        .collect()
}

/// The dev F1 chart (×100, as the tables print F1) of one priming run: per source and their
/// mean, the quantity `select = "best-dev"` maximises; None without dev points.
pub fn priming_dev_chart(title: &str, curves: &PrimeCurves) -> Option<LineChart> {
    let best = best_dev_point(&curves.dev)?;
    let mut series = vec![(
        "mean over sources".to_string(),
        curves
            .dev
            .iter()
            .map(|p| (p.step as f64, 100.0 * p.mean_f1()))
            .collect(),
    )];
    for lang in dev_langs(curves) {
        series.push((
            format!("dev F1 ({lang}, after adaptation)"),
            dev_series(curves, &lang, |t| 100.0 * t.dev_f1),
        ));
    }
    Some(LineChart {
        title: format!(
            "{title} (best mean {:.1} after step {})",
            100.0 * best.mean_f1(),
            best.step
        ),
        x_desc: "Outer step".to_string(),
        y_desc: "Dev F1 (×100)".to_string(),
        series,
        faint_first: false,
    })
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
        let path = p.checkpoint_dir.join(crate::prime::CURVES_FILE);
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
        let dev_title = format!("Priming dev F1: {}", settings.join(", "));
        if let Some(dev) = priming_dev_chart(&dev_title, &curves) {
            files.extend(write_figure(
                &dev,
                &out_dir,
                &format!("prime-{}-dev", file_stem(&p.run_id)),
            )?);
        }
    }
    Ok((files, notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prime::{DevRecord, DevTaskScores, PrimeStepRecord, TaskLosses};
    use crate::report::plot::render_svg;

    fn curves(dev_every: usize) -> PrimeCurves {
        let steps = 6;
        PrimeCurves {
            steps: (0..steps)
                .map(|step| PrimeStepRecord {
                    step,
                    lr: 1e-4,
                    tasks: ["en", "es"]
                        .iter()
                        .map(|l| TaskLosses {
                            lang: l.to_string(),
                            inner_before: Some(1.5),
                            inner_after: Some(1.0),
                            query: 1.2 - 0.1 * step as f64,
                        })
                        .collect(),
                })
                .collect(),
            dev: (1..=steps)
                .filter(|&s| crate::prime::dev::is_dev_point(dev_every, steps, s))
                .map(|step| DevRecord {
                    step,
                    tasks: [("en", 0.1), ("es", 0.3)]
                        .iter()
                        .map(|&(l, f)| DevTaskScores {
                            lang: l.to_string(),
                            dev_loss: 1.0 + 0.05 * step as f64,
                            // Peaks after step 4.
                            dev_f1: f + 0.01 * (step.min(4) as f64),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// With dev points the loss figure carries each source's dev loss and the dev figure
    /// each source's F1 and their mean, naming the best point; without them neither appears.
    #[test]
    fn priming_figures_draw_the_dev_series_when_present() {
        let with = curves(2);
        let svg = render_svg(&priming_chart("Priming losses: x", &with)).unwrap();
        assert!(svg.contains("query loss") && svg.contains("dev loss (en, after adaptation)"));
        assert!(svg.contains("dev loss (es, after adaptation)"));
        let dev = priming_dev_chart("Priming dev F1: x", &with).unwrap();
        let points: Vec<f64> = dev.series[0].1.iter().map(|p| p.0).collect();
        assert_eq!(points, vec![2.0, 4.0, 6.0]);
        let svg = render_svg(&dev).unwrap();
        for text in [
            "dev F1 (en, after adaptation)",
            "dev F1 (es, after adaptation)",
            "mean over sources",
            "best mean 24.0 after step 4",
        ] {
            assert!(svg.contains(text), "the dev figure lacks '{text}'");
        }

        let without = curves(0);
        assert!(priming_dev_chart("t", &without).is_none());
        let svg = render_svg(&priming_chart("Priming losses: x", &without)).unwrap();
        assert!(svg.contains("query loss") && !svg.contains("dev loss"));
    }

    #[test]
    fn moving_average_and_file_stems() {
        assert_eq!(
            moving_average(&[2.0, 4.0, 6.0, 8.0], 2),
            vec![2.0, 3.0, 5.0, 7.0]
        );
        assert_eq!(file_stem("ft/abc:1 2"), "ft_abc_1_2");
    }
}
