//! Reports: polars tables (Table 1 and the comparison with the paper) and plotters figures
//! (Figures 3 and 4) from a sweep's fine-tuning runs.
//!
//! [`write_report`] is the entry point: from a [`ReportInput`] (built by
//! `crate::sweep::report_input`) it writes into `input.results_dir`:
//!
//! * `scores.parquet`, `scores.csv` — one row per fine-tuning run ([`gather`]);
//! * `table1.md`, `table1.csv` — Table 1 ([`table`]);
//! * `comparison.md`, `comparison.csv` — seed-aware comparisons of settings with verdicts,
//!   the test sets scored, and ours vs the paper ([`compare`]);
//! * `figure3.svg/.png/.csv`, `figure4.svg/.png/.csv` and each `[[report.figure]]`'s
//!   `<name>.svg/.png/.csv` ([`figures`], from the points of [`points`]; a key a declared
//!   figure plots gives the tables one row per value, [`split`]);
//! * `selection.md`, `selection.csv` — with `[report] select`, the configuration each cell
//!   uses ([`select`]);
//! * `curves/*.svg/.png` on request ([`curves`]);
//! * `summary.md` — runs done, run time per kind and in total, the files written ([`summary`]);
//! * `index.html` — all of it on one self-contained page, with every run's detail ([`html`]).

pub mod bootstrap;
pub mod compare;
pub mod curves;
pub mod figures;
pub mod gather;
pub mod html;
pub mod input;
pub mod markdown;
pub mod paper;
pub mod plot;
pub mod points;
pub mod select;
pub mod split;
pub mod summary;
pub mod table;
#[cfg(test)]
pub(crate) mod testutil;

pub use input::{PrimingRunRecord, ReportInput, RunMeta, RunRecord};

use crate::fsutil::FsError;
use std::path::{Path, PathBuf};

/// Errors of the report stage.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{what}: {source}")]
    Polars {
        what: String,
        #[source]
        source: polars::prelude::PolarsError,
    },
    #[error("cannot draw {path}: {message}")]
    Plot { path: PathBuf, message: String },
    #[error(
        "the embedded font (src/report/fonts/DejaVuSans.ttf) cannot be loaded; restore the file and rebuild"
    )]
    Font,
    #[error(
        "[report] {field} names setting {name:?}, which the sweep does not declare \
         (declared: {known}); fix the [report] section of the sweep file"
    )]
    UnknownSetting {
        field: String,
        name: String,
        known: String,
    },
    #[error(
        "[report] paper_rows maps setting {setting:?} to {label:?}, which is not a row of the \
         paper's Table 1 (rows: {known}); fix the [report] section of the sweep file"
    )]
    UnknownPaperRow {
        setting: String,
        label: String,
        known: String,
    },
    #[error("{name:?} is not a setting of this sweep{}(settings: {known})", .suggestion.as_ref().map_or(" ".to_string(), |s| format!(": did you mean {s:?}? ")))]
    NotASetting {
        name: String,
        known: String,
        /// The setting `name` most likely meant ([`nearest_setting`]).
        suggestion: Option<String>,
    },
    #[error("no run of this sweep targets {lang:?} (languages: {known})")]
    NotALanguage { lang: String, known: String },
    #[error("{key} is not a key this sweep varies (it varies: {known})")]
    NotASweptKey { key: String, known: String },
    #[error("{key} never takes the value {value} in this sweep (values: {known})")]
    NotAKeyValue {
        key: String,
        value: String,
        known: String,
    },
    #[error("no setting{within} has runs with both {key} = {a} and {key} = {b}")]
    NoKeyPair {
        key: String,
        a: String,
        b: String,
        within: String,
    },
    #[error(
        "{a:?} and {b:?} have no rows of equal values to compare (rows of {a:?}: {a_rows}; of \
         {b:?}: {b_rows}); compare settings whose rows share values, or name one row of each \
         (`<setting> · <key>=<value>`) to compare the two as named"
    )]
    NoRowsOfEqualValues {
        a: String,
        b: String,
        a_rows: String,
        b_rows: String,
    },
    #[error("{file} line {line}: {message}")]
    PaperData {
        file: String,
        line: usize,
        message: String,
    },
}

/// The setting a name that is not one most likely meant: the same name with `->` for `→`
/// (setting names use the arrow, which a shell user types as `->`), else a near spelling.
pub fn nearest_setting(name: &str, settings: &[String]) -> Option<String> {
    let arrows = name.replace("->", "→");
    if let Some(s) = settings.iter().find(|s| s.as_str() == arrows) {
        return Some(s.clone());
    }
    crate::spec::source::nearest(&arrows, settings.iter().map(String::as_str)).map(str::to_string)
}

/// How to write a report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportOptions {
    /// Also draw learning curves of every finished run under `curves/`.
    pub curves: bool,
    /// Seed of the bootstrap resampling.
    pub bootstrap_seed: u64,
    /// The sweep file, named in the page's header.
    pub sweep_file: Option<PathBuf>,
}

/// What [`write_report`] produced.
#[derive(Debug, Clone)]
pub struct ReportSummary {
    /// Text for the terminal: Table 1, the comparison, skipped figures and files written.
    pub text: String,
    /// Every file written.
    pub files: Vec<PathBuf>,
    /// Figures (or curves) not drawn, and why.
    pub skipped: Vec<String>,
    pub runs_done: usize,
    pub runs_total: usize,
    pub table1: table::Table1,
    pub comparison: compare::Comparison,
    /// The page (`index.html`).
    pub page: PathBuf,
}

/// The file that marks a folder as a report's (written before any other).
pub const REPORT_MARKER: &str = ".primer-report";

/// Whether a report may write a file (or folder) of this name: the fixed outputs, Figures 3
/// and 4, the declared figures (with their per-language variants) and `curves/`.
fn is_report_file_name(name: &str, figures: &[crate::spec::report::FigureSpec]) -> bool {
    const FIXED: [&str; 11] = [
        "index.html",
        "summary.md",
        "table1.md",
        "table1.csv",
        "comparison.md",
        "comparison.csv",
        "selection.md",
        "selection.csv",
        "scores.csv",
        "scores.parquet",
        "curves",
    ];
    let figure_file = |stem: &str| {
        name.strip_prefix(stem).is_some_and(|rest| {
            [".svg", ".png", ".csv"].iter().any(|ext| {
                rest.ends_with(ext) && (rest.len() == ext.len() || rest.starts_with('-'))
            })
        })
    };
    FIXED.contains(&name)
        || figure_file("figure3")
        || figure_file("figure4")
        || figures.iter().any(|f| figure_file(&f.name))
}

/// Whether `dir` holds an earlier report: it has the marker, or (reports written before the
/// marker) an index.html or a summary.md that a primer report wrote.
fn is_earlier_report(dir: &Path) -> bool {
    let starts = |file: &str, test: &dyn Fn(&str) -> bool| {
        std::fs::read_to_string(dir.join(file)).is_ok_and(|text| test(&text))
    };
    dir.join(REPORT_MARKER).is_file()
        || starts(html::PAGE_FILE, &html::is_written_page)
        || starts("summary.md", &summary::Summary::is_written_summary)
}

/// The report overwrites its own file names: in a folder no report wrote (a `--out` that
/// holds a user's summary.md), a file of such a name is refused rather than overwritten.
/// Other files (a store kept inside the folder, say) are left alone.
fn ensure_report_folder(
    dir: &Path,
    figures: &[crate::spec::report::FigureSpec],
) -> Result<(), FsError> {
    if dir.is_file() {
        return Err(FsError::NotAFolder {
            path: dir.to_path_buf(),
        });
    }
    if is_earlier_report(dir) {
        return Ok(());
    }
    let taken: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| is_report_file_name(name, figures))
        .collect();
    if taken.is_empty() {
        Ok(())
    } else {
        Err(FsError::Occupied {
            path: dir.to_path_buf(),
            foreign: taken,
        })
    }
}

/// Writes the report of a sweep into `input.results_dir` (see the module docs for the files)
/// and returns the text to print; prints nothing itself.
pub fn write_report(
    input: &ReportInput,
    opts: &ReportOptions,
) -> Result<ReportSummary, ReportError> {
    let dir = &input.results_dir;
    ensure_report_folder(dir, &input.spec.figure)?;
    std::fs::create_dir_all(dir).map_err(|source| FsError::Write {
        path: dir.clone(),
        source,
    })?;
    // First, so that a report cut short still marks the folder as a report's.
    crate::fsutil::write_atomic(
        &dir.join(REPORT_MARKER),
        b"This folder is a primer report: `primer report` rewrites its files.\n",
    )?;
    let mut files = Vec::new();
    let mut skipped = Vec::new();

    // Every run goes into scores.*; the tables and figures use the selected ones.
    let all_runs = input;
    let (selected, selection) = select::apply(all_runs);
    let input = &selected;
    let mut all_scores = gather::scores_frame(&all_runs.runs)?;
    let kept: std::collections::HashSet<&str> =
        input.runs.iter().map(|r| r.meta.run_id.as_str()).collect();
    let chosen: Vec<bool> = all_runs
        .runs
        .iter()
        .map(|r| kept.contains(r.meta.run_id.as_str()))
        .collect();
    all_scores
        .with_column(polars::prelude::Column::new("selected".into(), chosen))
        .map_err(gather::polars_err("adding the selected column"))?;
    gather::write_parquet(&all_scores, &dir.join("scores.parquet"))?;
    gather::write_csv(&all_scores, &dir.join("scores.csv"))?;
    files.extend([dir.join("scores.parquet"), dir.join("scores.csv")]);
    if let Some(record) = &selection {
        files.extend(record.write(dir)?);
    }

    // Keys a declared figure plots give the tables one row per value (`split`); the figures
    // keep the settings as the sweep names them.
    let figure_input = input;
    let (split_input, _) = split::split_settings(input, &input.spec.plotted_keys());
    let input = &split_input;
    let scores = gather::scores_frame(&input.runs)?;
    let table1 = table::build_table1(input, &scores)?;
    files.extend(table1.write(dir)?);

    let paper = paper::PaperNumbers::embedded()?;
    let languages = table1.languages.clone();
    let stats = table::cell_stats(&scores)?;
    let samples = input
        .spec
        .bootstrap_samples
        .unwrap_or(compare::DEFAULT_BOOTSTRAP_SAMPLES);
    let pairs = if samples == 0 {
        skipped.push("comparisons skipped: [report] bootstrap_samples = 0".to_string());
        Vec::new()
    } else {
        compare::compare_pairs(input, &languages, samples, opts.bootstrap_seed)?
    };
    let comparison = compare::Comparison {
        evaluation_sets: compare::evaluation_sets(input, &languages),
        paper_rows: compare::paper_rows(input, &languages, &stats, &paper)?,
        figure4: compare::figure4_rows(input, &languages, &stats, &paper),
        pairs,
        languages: languages.clone(),
    };
    files.extend(comparison.write(dir, samples)?);

    match figures::figure3(input, &languages, &stats) {
        Ok((chart, points)) => {
            files.extend(plot::write_figure(&chart, dir, "figure3")?);
            files.push(points.write_csv(dir)?);
        }
        Err(why) => skipped.push(why),
    }
    match figures::figure4(input, &languages, &stats, &paper) {
        Ok((map, points)) => {
            files.extend(plot::write_figure(&map, dir, "figure4")?);
            files.push(points.write_csv(dir)?);
        }
        Err(why) => skipped.push(why),
    }
    for spec in &input.spec.figure {
        match points::declared_points(figure_input, spec, samples, opts.bootstrap_seed) {
            Ok(data) => {
                let chart = figures::declared_chart(spec, &data);
                files.extend(plot::write_figure(chart.as_ref(), dir, &spec.name)?);
                files.push(data.write_csv(dir)?);
                skipped.extend(data.notes);
            }
            Err(why) => skipped.push(why),
        }
    }
    if opts.curves {
        let (curve_files, notes) = curves::write_curves(input, dir)?;
        files.extend(curve_files);
        skipped.extend(notes);
    }

    // Read once (priming runs' records included), for the text and the page's header.
    let warnings: Vec<String> = gather::mixed_precision_warning(all_runs)
        .into_iter()
        .collect();
    let page = html::write_page(&html::PageSources {
        all: all_runs,
        used: input,
        table1: &table1,
        comparison: &comparison,
        bootstrap_samples: samples,
        files: &files,
        skipped: &skipped,
        warnings: &warnings,
        sweep_file: opts.sweep_file.as_deref(),
    })?;
    files.push(page.clone());
    let summary = summary::summarize(all_runs, dir, &files, &skipped);
    files.push(summary.write(dir)?);
    let runs_total = all_runs.runs.len();
    let runs_done = all_runs.runs.iter().filter(|r| r.metrics.is_some()).count();
    let mut text = format!(
        "Report of sweep {}: {runs_done} of {runs_total} fine-tuning runs done.\n\n",
        input.sweep_name,
    );
    for warning in &warnings {
        text += &format!("Warning: {warning}.\n\n");
    }
    text += &format!("## Table 1\n\n{}\n", table1.to_markdown());
    text += &comparison.to_markdown(samples).replacen("# ", "## ", 1);
    if !skipped.is_empty() {
        text += "\nNot drawn:\n";
        for s in &skipped {
            text += &format!("- {s}\n");
        }
    }
    text += &format!("\nWrote {} files to {}:\n", files.len(), dir.display());
    let curves_dir = dir.join("curves");
    for f in files.iter().filter(|f| !f.starts_with(&curves_dir)) {
        let shown = f.strip_prefix(dir).unwrap_or(f);
        text += &format!("  {}\n", shown.display());
    }
    let n_curves = files.iter().filter(|f| f.starts_with(&curves_dir)).count();
    if n_curves > 0 {
        text += &format!("  curves/ ({n_curves} files)\n");
    }
    Ok(ReportSummary {
        text,
        files,
        skipped,
        runs_done,
        runs_total,
        table1,
        comparison,
        page,
    })
}

#[cfg(test)]
mod nearest_setting_tests {
    use super::nearest_setting;

    #[test]
    fn an_ascii_arrow_or_a_typo_finds_the_setting() {
        let settings: Vec<String> = ["3/AT", "4/Meta Priming→AT", "MP [MAML Loop]→Full FT"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            nearest_setting("4/Meta Priming->AT", &settings).as_deref(),
            Some("4/Meta Priming→AT")
        );
        assert_eq!(
            nearest_setting("MP [MAML loop]->Full FT", &settings).as_deref(),
            Some("MP [MAML Loop]→Full FT")
        );
        assert_eq!(nearest_setting("something else entirely", &settings), None);
    }
}
