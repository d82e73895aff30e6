//! Figures: Figures 3 and 4 of the paper (presets, from Table 1's cell statistics) and the
//! declared `[[report.figure]]`s, all drawn from [`FigurePoints`]. A figure whose settings are
//! not in the sweep, or have no finished run, is skipped with a message instead of drawn wrong.

use crate::report::ReportInput;
use crate::report::paper::PaperNumbers;
use crate::report::plot::{
    AnyFigure, Bar, BarChart, HeatCell, Heatmap, LinePanel, LinePanels, Panels,
};
use crate::report::points::{self, AVG_FACET, FigurePoints, Point};
use crate::report::table::{CellStat, seed_average_spread, seed_values};
use crate::spec::report::{FigureKind, FigureSpec, FigureY, is_log_scaled};
use std::collections::BTreeMap;

type Stats = BTreeMap<(String, String), CellStat>;

fn has_done(stats: &Stats, setting: &str) -> bool {
    stats.keys().any(|(s, _)| s == setting)
}

fn check_declared(input: &ReportInput, figure: &str, settings: &[&String]) -> Result<(), String> {
    let unknown: Vec<&str> = settings
        .iter()
        .filter(|s| !input.settings.contains(s))
        .map(|s| s.as_str())
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{figure} skipped: setting(s) {} of [report] are not in the sweep (declared: {})",
            unknown.join(", "),
            input.settings.join(", ")
        ))
    }
}

/// Figure 3 (a preset of [`declared_chart`]'s bars: x = language, series = the settings of
/// `[report] figure3`, one panel): mean ± sd over seeds per target language, from Table 1's
/// cell statistics. Returns the chart and its points. Err: why the figure is skipped.
pub fn figure3(
    input: &ReportInput,
    languages: &[String],
    stats: &Stats,
) -> Result<(BarChart, FigurePoints), String> {
    let spec = &input.spec.figure3;
    if spec.is_empty() {
        return Err("figure 3 not drawn: [report] figure3 declares no series".to_string());
    }
    let settings: Vec<&String> = spec.iter().map(|s| &s.setting).collect();
    check_declared(input, "figure 3", &settings)?;
    if !settings.iter().any(|s| has_done(stats, s)) {
        return Err(format!(
            "figure 3 skipped: none of its settings ({}) has a finished run",
            settings
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut points = Vec::new();
    for s in spec {
        for l in languages {
            if let Some(c) = stats.get(&(s.setting.clone(), l.clone())) {
                points.push(Point {
                    facet: AVG_FACET.to_string(),
                    series: s.setting.clone(),
                    x: l.clone(),
                    mean: c.mean,
                    interval: c.sd.map(|sd| (c.mean - sd, c.mean + sd)),
                    method: if c.sd.is_some() { points::SD } else { "" },
                    seeds: c.n,
                    languages: 1,
                });
            }
        }
    }
    let data = FigurePoints {
        name: "figure3".to_string(),
        y: FigureY::TestF1,
        x_key: "lang".to_string(),
        series_key: "setting".to_string(),
        facets: vec![AVG_FACET.to_string()],
        series: settings.iter().map(|s| s.to_string()).collect(),
        xs: languages.to_vec(),
        points,
        notes: Vec::new(),
    };
    // Seeds behind each series (its best-covered cell): the title says how many there are, and
    // series that differ say their own.
    let seeds: Vec<usize> = spec
        .iter()
        .map(|s| {
            data.points
                .iter()
                .filter(|p| p.series == s.setting)
                .map(|p| p.seeds)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let all_same = seeds.iter().all(|&n| n == seeds[0]);
    let series = spec
        .iter()
        .zip(&seeds)
        .map(|(s, &n)| {
            let label = if all_same {
                s.label.clone()
            } else {
                format!("{} ({n} seed{})", s.label, if n == 1 { "" } else { "s" })
            };
            (label, bars_of(&data, AVG_FACET, &s.setting))
        })
        .collect();
    let spread = match (all_same, seeds[0]) {
        (true, 1) => " (1 seed: no error bars)".to_string(),
        (true, n) => format!(" (mean ± sd over {n} seeds)"),
        (false, _) => " (mean ± sd over seeds)".to_string(),
    };
    let chart = BarChart {
        title: format!("Figure 3: test F1 per target language{spread}"),
        x_desc: "Target language".to_string(),
        y_desc: "Test F1 (×100)".to_string(),
        groups: languages.to_vec(),
        series,
    };
    Ok((chart, data))
}

/// One bar per x of a series in a facet.
fn bars_of(data: &FigurePoints, facet: &str, series: &str) -> Vec<Bar> {
    data.xs
        .iter()
        .map(|x| data.point(facet, series, x).map(|p| (p.mean, p.interval)))
        .collect()
}

/// Figure 4 (a preset heatmap): the 2×2 matrix (rows: meta-learning inner loop PE / Full;
/// columns: downstream fine-tuning PE / Full) of test F1 averaged over the languages present,
/// each cell annotated with the seed spread of that average. Returns the chart and its points.
pub fn figure4(
    input: &ReportInput,
    languages: &[String],
    stats: &Stats,
    paper: &PaperNumbers,
) -> Result<(Heatmap, FigurePoints), String> {
    let Some(matrix) = &input.spec.figure4 else {
        return Err("figure 4 not drawn: [report] figure4 is not declared".to_string());
    };
    let settings: Vec<&String> = matrix.iter().flatten().collect();
    check_declared(input, "figure 4", &settings)?;
    if !settings.iter().any(|s| has_done(stats, s)) {
        return Err(format!(
            "figure 4 skipped: none of its settings ({}) has a finished run",
            settings
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let per_seed = seed_values(input);
    let names = ["PE", "Full"];
    let mut points = Vec::new();
    let mut cell = |i: usize, j: usize| {
        let setting = &matrix[i][j];
        let (present_langs, present): (Vec<&str>, Vec<f64>) = languages
            .iter()
            .filter_map(|l| {
                let c = stats.get(&(setting.clone(), l.clone()))?;
                Some((l.as_str(), c.mean))
            })
            .unzip();
        let mut notes = vec![setting.clone()];
        // The seed spread of the cell, as Table 1's average column gives it.
        let spread = seed_average_spread(&per_seed, setting, &present_langs);
        match &spread {
            Some(CellStat {
                sd: Some(sd), n, ..
            }) => notes.push(format!("± {sd:.2} sd, {n} seeds")),
            Some(CellStat { n: 1, .. }) => notes.push("1 seed: no spread".to_string()),
            _ => {}
        }
        let value =
            (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64);
        if let Some(mean) = value {
            let sd = spread.as_ref().and_then(|c| c.sd);
            points.push(Point {
                facet: AVG_FACET.to_string(),
                series: setting.clone(),
                x: format!("inner loop {}, fine-tuning {}", names[i], names[j]),
                mean,
                interval: sd.map(|sd| (mean - sd, mean + sd)),
                method: if sd.is_some() { points::SD } else { "" },
                seeds: spread.as_ref().map_or(0, |c| c.n),
                languages: present.len(),
            });
        }
        if value.is_none() {
            notes.push("no finished run".to_string());
        } else if present.len() < languages.len() {
            notes.push(format!(
                "over {}/{} languages",
                present.len(),
                languages.len()
            ));
        }
        notes.push(format!("paper: {:.2}", paper.figure4[i][j]));
        HeatCell { value, notes }
    };
    let cells = vec![vec![cell(0, 0), cell(0, 1)], vec![cell(1, 0), cell(1, 1)]];
    let data = FigurePoints {
        name: "figure4".to_string(),
        y: FigureY::TestF1,
        x_key: "cell".to_string(),
        series_key: "setting".to_string(),
        facets: vec![AVG_FACET.to_string()],
        series: settings.iter().map(|s| s.to_string()).collect(),
        xs: points.iter().map(|p| p.x.clone()).collect(),
        points,
        notes: Vec::new(),
    };
    let chart = Heatmap {
        title: "Figure 4: test F1 averaged over languages".to_string(),
        row_desc: "Meta-learning inner loop".to_string(),
        col_desc: "Downstream fine-tuning".to_string(),
        row_labels: names.iter().map(|s| s.to_string()).collect(),
        col_labels: names.iter().map(|s| s.to_string()).collect(),
        cells,
    };
    Ok((chart, data))
}

/// Axis title of a figure dimension: what it is and its unit, and the log scale when used.
pub fn axis_title(dim: &str) -> String {
    let name = match dim {
        "lang" => "Target language",
        "setting" => "Setting",
        "finetune.data.train_limit" => "Target training sentences",
        "prime.data.train_limit" => "Priming sentences per source language",
        "prime.inner_steps" => "Inner-loop steps S",
        "prime.inner_lr" => "Inner-loop learning rate",
        "prime.outer_lr" => "Outer learning rate",
        "prime.steps" => "Priming outer steps",
        "finetune.lr" => "Fine-tuning learning rate",
        "finetune.epochs" => "Fine-tuning epochs",
        other => other,
    };
    if is_log_scaled(dim) {
        format!("{name} (log scale)")
    } else {
        name.to_string()
    }
}

/// The title of a dimension drawn as categories (bars, heatmap columns, figure titles): no scale.
fn categorical(dim: &str) -> String {
    axis_title(dim).replace(" (log scale)", "")
}

/// A series' legend label: the setting, or `key = value`.
fn series_label(data: &FigurePoints, series: &str) -> String {
    if data.series_key == "setting" {
        series.to_string()
    } else {
        let field = data
            .series_key
            .rsplit('.')
            .next()
            .unwrap_or(&data.series_key);
        format!("{field} = {series}")
    }
}

fn facet_title(facet: &str, data: &FigurePoints) -> String {
    if facet == AVG_FACET {
        let most = data.points.iter().map(|p| p.languages).max().unwrap_or(0);
        if data.x_key == "lang" {
            "Per target language".to_string()
        } else {
            format!("Average over {most} target languages")
        }
    } else {
        format!("Target language: {facet}")
    }
}

/// The chart of a declared figure from its points.
pub fn declared_chart(spec: &FigureSpec, data: &FigurePoints) -> Box<dyn AnyFigure> {
    let title = spec.title.clone().unwrap_or_else(|| {
        format!(
            "{} by {}",
            spec.y.axis_title(),
            categorical(&spec.x).to_lowercase()
        )
    });
    let caption = data.caption();
    let labels: Vec<String> = data.series.iter().map(|s| series_label(data, s)).collect();
    match spec.kind {
        FigureKind::Line => {
            let numeric: Option<Vec<f64>> = data.xs.iter().map(|x| x.parse().ok()).collect();
            let x_positions = match numeric {
                Some(v) if spec.log_x() && v.iter().all(|x| *x > 0.0) => {
                    v.iter().map(|x| x.log10()).collect()
                }
                Some(v) if spec.x != "lang" => v,
                _ => (0..data.xs.len()).map(|i| i as f64).collect(),
            };
            Box::new(LinePanels {
                title,
                subtitle: caption,
                x_desc: axis_title(&spec.x),
                y_desc: spec.y.axis_title().to_string(),
                x_labels: data.xs.clone(),
                x_positions,
                series: labels,
                panels: data
                    .facets
                    .iter()
                    .map(|f| LinePanel {
                        title: facet_title(f, data),
                        points: data.series.iter().map(|s| bars_of(data, f, s)).collect(),
                    })
                    .collect(),
            })
        }
        FigureKind::Bars => Box::new(Panels {
            title,
            subtitle: caption,
            panels: data
                .facets
                .iter()
                .map(|f| BarChart {
                    title: facet_title(f, data),
                    x_desc: categorical(&spec.x),
                    y_desc: spec.y.axis_title().to_string(),
                    groups: data.xs.clone(),
                    series: data
                        .series
                        .iter()
                        .zip(&labels)
                        .map(|(s, l)| (l.clone(), bars_of(data, f, s)))
                        .collect(),
                })
                .collect(),
        }),
        FigureKind::Heatmap => Box::new(Panels {
            title,
            subtitle: caption.replace("error bars", "in brackets"),
            panels: data
                .facets
                .iter()
                .map(|f| Heatmap {
                    title: facet_title(f, data),
                    // Row labels name their setting or `key = value` themselves; a rotated
                    // description would run into long ones.
                    row_desc: String::new(),
                    col_desc: categorical(&spec.x),
                    row_labels: labels.clone(),
                    col_labels: data.xs.clone(),
                    cells: data
                        .series
                        .iter()
                        .map(|s| {
                            data.xs
                                .iter()
                                .map(|x| match data.point(f, s, x) {
                                    Some(p) => HeatCell {
                                        value: Some(p.mean),
                                        notes: vec![match p.interval {
                                            Some((lo, hi)) => format!("[{lo:.1}, {hi:.1}]"),
                                            None => format!("{} seed", p.seeds),
                                        }],
                                    },
                                    None => HeatCell {
                                        value: None,
                                        notes: Vec::new(),
                                    },
                                })
                                .collect()
                        })
                        .collect(),
                })
                .collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::gather::scores_frame;
    use crate::report::plot::{PALETTE, render_svg};
    use crate::report::table::cell_stats;
    use crate::report::testutil::{input, run};
    use crate::spec::report::{FigureSeries, ReportSpec};

    /// How the SVG backend writes a text element's content.
    fn svg_text(s: &str) -> String {
        format!(">\n{s}\n<")
    }

    fn fill(i: usize) -> String {
        let c = PALETTE[i];
        format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2)
    }

    fn fig3_input(done_c: bool) -> ReportInput {
        let langs = ["hi", "af", "az"];
        let mut runs = Vec::new();
        for (li, l) in langs.iter().enumerate() {
            for seed in [1, 2] {
                runs.push(run(
                    "PE",
                    l,
                    seed,
                    Some(0.80 + 0.01 * li as f64 + 0.02 * seed as f64),
                ));
                runs.push(run("Full", l, seed, Some(0.85)));
            }
            // "None" misses one language; with done_c = false it has nothing done at all.
            let none_done = done_c && *l != "az";
            runs.push(run("None", l, 1, none_done.then_some(0.75)));
        }
        let spec = ReportSpec {
            figure3: vec![
                FigureSeries {
                    label: "Meta priming, PE inner loop".into(),
                    setting: "PE".into(),
                },
                FigureSeries {
                    label: "Meta priming, full inner loop".into(),
                    setting: "Full".into(),
                },
                FigureSeries {
                    label: "No priming".into(),
                    setting: "None".into(),
                },
            ],
            figure4: Some([["PE".into(), "None".into()], ["Full".into(), "PE".into()]]),
            ..Default::default()
        };
        input(&["PE", "Full", "None"], &langs, runs, spec)
    }

    fn stats(inp: &ReportInput) -> Stats {
        cell_stats(&scores_frame(&inp.runs).unwrap()).unwrap()
    }

    #[test]
    fn figure3_svg_has_labels_bars_and_values() {
        let inp = fig3_input(true);
        let (chart, _) = figure3(&inp, &inp.languages, &stats(&inp)).unwrap();
        let svg = render_svg(&chart).unwrap();
        for label in [
            "Figure 3",
            "Target language",
            "Test F1 (×100)",
            "Meta priming, PE inner loop",
            "Meta priming, full inner loop",
            "No priming",
            &svg_text("hi"),
            &svg_text("af"),
            &svg_text("az"),
        ] {
            assert!(svg.contains(label), "missing {label:?}");
        }
        // One rect per finished bar plus the legend swatch.
        assert_eq!(svg.matches(&fill(0)).count(), 3 + 1);
        assert_eq!(svg.matches(&fill(1)).count(), 3 + 1);
        assert_eq!(
            svg.matches(&fill(2)).count(),
            2 + 1,
            "az of \"None\" has no bar"
        );
        assert!(svg.contains(&svg_text("n/a")));
        // Value labels: PE on hi = mean(82, 84) = 83.0; Full = 85.0 everywhere.
        assert!(svg.contains(&svg_text("83.0")) && svg.contains(&svg_text("85.0")));
        assert!(svg.contains("font-family=\"DejaVu Sans\""));
        // PE and Full have 2 seeds, "None" 1: the series say their own counts.
        assert!(
            svg.contains("(mean ± sd over seeds)") && svg.contains("No priming (1 seed)"),
            "seed counts missing"
        );
        assert!(svg.contains("Meta priming, PE inner loop (2 seeds)"));
    }

    #[test]
    fn figure3_error_bars_only_with_several_seeds() {
        let inp = fig3_input(true);
        let (chart, _) = figure3(&inp, &inp.languages, &stats(&inp)).unwrap();
        let pe = &chart.series[0].1;
        assert!(pe.iter().all(|b| b.unwrap().1.is_some()));
        let none = &chart.series[2].1;
        assert_eq!(none[0], Some((75.0, None)));
        assert_eq!(none[2], None);
    }

    #[test]
    fn figures_without_done_runs_or_unknown_settings_are_skipped() {
        let mut inp = fig3_input(false);
        inp.runs.retain(|r| r.meta.setting == "None");
        let why = figure3(&inp, &inp.languages, &stats(&inp)).unwrap_err();
        assert!(
            why.contains("figure 3 skipped") && why.contains("has a finished run"),
            "{why}"
        );
        let paper = PaperNumbers::embedded().unwrap();
        assert!(figure4(&inp, &inp.languages, &stats(&inp), &paper).is_err());
        inp.spec.figure3[0].setting = "Typo".into();
        let why = figure3(&inp, &inp.languages, &stats(&inp)).unwrap_err();
        assert!(
            why.contains("Typo") && why.contains("not in the sweep"),
            "{why}"
        );
        inp.spec.figure3.clear();
        assert!(
            figure3(&inp, &inp.languages, &stats(&inp))
                .unwrap_err()
                .contains("declares no series")
        );
    }

    #[test]
    fn figure4_svg_has_axes_and_cell_values() {
        let inp = fig3_input(true);
        let paper = PaperNumbers::embedded().unwrap();
        let (map, _) = figure4(&inp, &inp.languages, &stats(&inp), &paper).unwrap();
        // PE: mean over languages of 83, 84, 85 → 84.00; "None": 75 over 2 of 3.
        assert_eq!(
            map.cells[0][0].value.map(|v| format!("{v:.2}")),
            Some("84.00".into())
        );
        assert_eq!(
            map.cells[1][0].value.map(|v| format!("{v:.2}")),
            Some("85.00".into())
        );
        assert!(
            map.cells[0][1]
                .notes
                .iter()
                .any(|n| n == "over 2/3 languages")
        );
        let svg = render_svg(&map).unwrap();
        for text in [
            "Meta-learning inner loop",
            "Downstream fine-tuning",
            &svg_text("PE"),
            &svg_text("Full"),
            &svg_text("85.00"),
            &svg_text("75.00"),
            &svg_text("84.00"),
            "paper: 85.87",
            "paper: 90.79",
            "rotate(270",
        ] {
            assert!(svg.contains(text), "missing {text:?}");
        }
    }
}
