//! `index.html`: one self-contained page to read a sweep — its header (file, commit, devices,
//! runs done / failed / pending, wall time), Table 1 and the comparisons with every number
//! linked to the runs behind it, the figures, a sortable and filterable table of every run,
//! and each run's detail (resolved configuration, curves, per-type scores, or its error and
//! last log lines). Inline CSS, SVG and a few lines of plain JavaScript: no network, nothing
//! to install, readable without the rest of the folder.
//!
//! [`PageData::gather`] reads what the report's tables do not hold from each run's store
//! directory (`status.json`, `spec.json`, `log.txt`, a priming run's `curves.json`);
//! [`fn@render`] turns it into HTML with maud, which escapes every value it splices in.

mod chart;
mod render;

use crate::fsutil::{read_json, write_atomic};
use crate::prime::PrimeCurves;
use crate::report::compare::Comparison;
use crate::report::summary::KindCost;
use crate::report::table::Table1;
use crate::report::{ReportError, ReportInput, RunRecord};
use crate::store::{RunState, RunStatus, layout};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub use render::render;

/// The page's file name inside the report folder.
pub const PAGE_FILE: &str = "index.html";

/// What the page's `<title>` ends with (after the sweep's name).
pub const TITLE_SUFFIX: &str = " · primer report";

/// Whether `page` is a page that [`write_page`] wrote (how a report folder from before the
/// report marker is known).
pub fn is_written_page(page: &str) -> bool {
    page.contains(&format!("{TITLE_SUFFIX}</title>"))
}

/// Lines of a run's log shown for a run that did not finish.
pub const LOG_TAIL_LINES: usize = 30;
/// Bytes read from the end of a log to find those lines (logs can be long).
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// Where a run stands, as the run table shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ShownState {
    Done,
    Failed,
    Running,
    Pending,
    /// Not done and cannot start: its priming run failed.
    Blocked,
}

impl ShownState {
    pub fn as_str(self) -> &'static str {
        match self {
            ShownState::Done => "done",
            ShownState::Failed => "failed",
            ShownState::Running => "running",
            ShownState::Pending => "pending",
            ShownState::Blocked => "blocked",
        }
    }

    /// Every state, in the order the header counts them.
    pub const ALL: [ShownState; 5] = [
        ShownState::Done,
        ShownState::Failed,
        ShownState::Running,
        ShownState::Pending,
        ShownState::Blocked,
    ];

    /// The state of a run from its result and `status.json` (None: never started).
    fn of(done: bool, status: Option<&RunStatus>) -> Self {
        if done {
            return ShownState::Done;
        }
        match status.map(|s| s.state) {
            Some(RunState::Failed) => ShownState::Failed,
            Some(RunState::Running) => ShownState::Running,
            _ => ShownState::Pending,
        }
    }
}

/// What a run's store directory says beyond its metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreFacts {
    pub status: Option<RunStatus>,
    /// The resolved configuration (`spec.json`'s `config`), once the run was prepared.
    pub config: Option<serde_json::Value>,
    /// The last lines of `log.txt`; read only for runs that did not finish.
    pub log_tail: Vec<String>,
}

impl StoreFacts {
    /// Reads `dir`; `want_log`: also the end of its log.
    pub fn read(dir: &Path, want_log: bool) -> Self {
        let spec: Option<serde_json::Value> = read_json(&dir.join(layout::SPEC)).ok();
        Self {
            status: read_json(&dir.join(layout::STATUS)).ok(),
            config: spec.and_then(|mut s| s.get_mut("config").map(serde_json::Value::take)),
            log_tail: if want_log {
                log_tail(&dir.join(layout::LOG), LOG_TAIL_LINES)
            } else {
                Vec::new()
            },
        }
    }

    /// Seconds from the last attempt's start to its end.
    fn span(&self) -> Option<(u64, u64)> {
        let s = self.status.as_ref()?;
        Some((s.started_at?, s.finished_at?))
    }

    /// The device of the last attempt (`cpu`, `cuda:0`, `slurm`), without the slot number.
    fn device(&self) -> Option<String> {
        let slot = self.status.as_ref()?.slot.as_deref()?;
        let device = slot.split(['#', ' ']).next().unwrap_or(slot);
        (!device.is_empty()).then(|| device.to_string())
    }
}

/// The last `n` lines of a text file (empty when it cannot be read).
pub fn log_tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    // A read that starts mid-file starts mid-line: drop the partial first line.
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let from = lines.len().saturating_sub(n);
    lines[from..].iter().map(|l| l.to_string()).collect()
}

/// One row of the run table: a fine-tuning run under one setting (a run that several
/// settings share has one row per setting and one detail).
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow<'a> {
    /// Index in [`PageData::rows`]; links to runs name these.
    pub key: usize,
    pub record: &'a RunRecord,
    pub state: ShownState,
    /// Whether Table 1 and the comparisons use the run (`[report] select` keeps one
    /// configuration per cell; without it every run is used).
    pub used: bool,
}

/// One fine-tuning run's detail (shared by the rows of every setting that uses it).
#[derive(Debug, Clone, PartialEq)]
pub struct RunDetail<'a> {
    pub run_id: String,
    pub record: &'a RunRecord,
    pub settings: Vec<String>,
    pub state: ShownState,
    pub facts: StoreFacts,
}

/// A priming run, its curves and the fine-tuning runs that start from it.
#[derive(Debug, Clone, PartialEq)]
pub struct PrimingDetail {
    pub run_id: String,
    pub settings: Vec<String>,
    pub state: ShownState,
    pub facts: StoreFacts,
    pub curves: Option<PrimeCurves>,
    /// Run ids of the fine-tuning runs primed by it.
    pub dependents: Vec<String>,
}

/// A figure of the report folder, inlined.
#[derive(Debug, Clone, PartialEq)]
pub struct InlineFigure {
    /// File name in the report folder (`figure3.svg`).
    pub file: String,
    pub svg: String,
}

/// The header's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub sweep_file: Option<PathBuf>,
    pub commit: String,
    pub devices: Vec<String>,
    /// Distinct runs (fine-tuning and priming) per state.
    pub counts: BTreeMap<ShownState, usize>,
    /// From the first start to the last end of a run, in seconds.
    pub wall_time_s: Option<u64>,
    /// Run time per kind of run (`summary.md`'s table).
    pub kinds: Vec<KindCost>,
    /// What a reader must know before comparing rows (e.g. runs in mixed precision).
    pub warnings: Vec<String>,
}

/// Everything the page shows.
pub struct PageData<'a> {
    pub sweep_name: &'a str,
    pub header: Header,
    pub table1: &'a Table1,
    pub comparison: &'a Comparison,
    pub bootstrap_samples: usize,
    pub figures: Vec<InlineFigure>,
    /// Figures not drawn, and why.
    pub skipped: &'a [String],
    pub rows: Vec<RunRow<'a>>,
    pub details: Vec<RunDetail<'a>>,
    pub priming: Vec<PrimingDetail>,
    /// Configuration lines (`key = value`) that every prepared fine-tuning run has: shown once,
    /// each run's detail shows the rest.
    pub shared_config: Vec<String>,
    /// Whether `[report] select` chose among runs (the run table then marks the ones used).
    pub selecting: bool,
    /// Row keys of the runs (used by the tables) of each (setting, language).
    cells: HashMap<(String, String), Vec<usize>>,
}

/// What [`PageData::gather`] needs from the report stage.
pub struct PageSources<'a> {
    /// Every run of the sweep.
    pub all: &'a ReportInput,
    /// The runs the tables use (after `[report] select`).
    pub used: &'a ReportInput,
    pub table1: &'a Table1,
    pub comparison: &'a Comparison,
    pub bootstrap_samples: usize,
    /// Files the report wrote: its SVG figures are inlined.
    pub files: &'a [PathBuf],
    pub skipped: &'a [String],
    /// What a reader must know before comparing rows (shown in the header).
    pub warnings: &'a [String],
    pub sweep_file: Option<&'a Path>,
}

/// The commit of the primer checkout this binary was built in, `+dirty` with uncommitted
/// changes to its sources (results written into the checkout do not count); "unknown" outside
/// a git checkout.
pub fn primer_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) if !commit.is_empty() => {
            let sources = ["src", "Cargo.toml", "Cargo.lock"];
            let mut args = vec!["status", "--porcelain", "--untracked-files=no", "--"];
            args.extend(sources);
            let dirty = git(&args).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{commit}+dirty")
            } else {
                commit
            }
        }
        _ => "unknown".to_string(),
    }
}

/// A priming run's store directory from its checkpoint folder (the folder itself once the
/// checkpoint was collected: `crate::sweep::report_input_for` points at whichever holds the
/// curves).
fn priming_run_dir(checkpoint_dir: &Path) -> &Path {
    if checkpoint_dir.file_name() == Some(std::ffi::OsStr::new(layout::CHECKPOINT)) {
        checkpoint_dir.parent().unwrap_or(checkpoint_dir)
    } else {
        checkpoint_dir
    }
}

impl<'a> PageData<'a> {
    /// Gathers the page: the report's tables plus what each run's store directory holds.
    pub fn gather(src: &PageSources<'a>, commit: String) -> Self {
        let all = src.all;
        // Priming runs first: a fine-tuning run whose priming run failed is blocked.
        let mut priming: Vec<PrimingDetail> = Vec::new();
        for p in &all.priming_runs {
            if let Some(d) = priming.iter_mut().find(|d| d.run_id == p.run_id) {
                d.settings.push(p.setting.clone());
                continue;
            }
            let facts = StoreFacts::read(priming_run_dir(&p.checkpoint_dir), !p.done);
            priming.push(PrimingDetail {
                run_id: p.run_id.clone(),
                settings: vec![p.setting.clone()],
                state: ShownState::of(p.done, facts.status.as_ref()),
                facts,
                curves: read_json(&p.checkpoint_dir.join(layout::CURVES)).ok(),
                dependents: Vec::new(),
            });
        }
        let failed_priming: BTreeSet<&str> = priming
            .iter()
            .filter(|p| p.state == ShownState::Failed)
            .map(|p| p.run_id.as_str())
            .collect();

        // The tables' row names of each used run: its setting's name, or a row of it
        // (`<setting> · key=value`) where a figure plots a key the setting varies (`split`).
        let mut table_rows: HashMap<&str, Vec<&str>> = HashMap::new();
        for r in &src.used.runs {
            table_rows
                .entry(r.meta.run_id.as_str())
                .or_default()
                .push(r.meta.setting.as_str());
        }
        let rows_of = |id: &str, setting: &str| -> Vec<&str> {
            table_rows
                .get(id)
                .into_iter()
                .flatten()
                .copied()
                .filter(|row| crate::report::split::is_row_of(row, setting))
                .collect()
        };
        let mut details: Vec<RunDetail<'a>> = Vec::new();
        let mut detail_of: HashMap<&str, usize> = HashMap::new();
        let mut rows = Vec::new();
        for (key, r) in all.runs.iter().enumerate() {
            let id = r.meta.run_id.as_str();
            let i = *detail_of.entry(id).or_insert_with(|| {
                let facts = StoreFacts::read(&r.meta.run_dir, r.metrics.is_none());
                let mut state = ShownState::of(r.metrics.is_some(), facts.status.as_ref());
                let blocked = r
                    .meta
                    .priming_run
                    .as_deref()
                    .is_some_and(|p| failed_priming.contains(p));
                if blocked && state == ShownState::Pending {
                    state = ShownState::Blocked;
                }
                details.push(RunDetail {
                    run_id: id.to_string(),
                    record: r,
                    settings: Vec::new(),
                    state,
                    facts,
                });
                details.len() - 1
            });
            if !details[i].settings.contains(&r.meta.setting) {
                details[i].settings.push(r.meta.setting.clone());
            }
            rows.push(RunRow {
                key,
                record: r,
                state: details[i].state,
                used: !rows_of(id, &r.meta.setting).is_empty(),
            });
        }
        for p in &mut priming {
            p.dependents = details
                .iter()
                .filter(|d| d.record.meta.priming_run.as_deref() == Some(p.run_id.as_str()))
                .map(|d| d.run_id.clone())
                .collect();
        }

        let mut cells: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for row in rows.iter().filter(|r| r.used && r.record.metrics.is_some()) {
            let m = &row.record.meta;
            for table_row in rows_of(&m.run_id, &m.setting) {
                cells
                    .entry((table_row.to_string(), m.lang.clone()))
                    .or_default()
                    .push(row.key);
            }
        }

        let mut counts: BTreeMap<ShownState, usize> = BTreeMap::new();
        let states = details
            .iter()
            .map(|d| (d.state, &d.facts))
            .chain(priming.iter().map(|p| (p.state, &p.facts)));
        let (mut first, mut last) = (u64::MAX, 0);
        let mut devices = BTreeSet::new();
        for (state, facts) in states {
            *counts.entry(state).or_default() += 1;
            if let Some((start, end)) = facts.span() {
                first = first.min(start);
                last = last.max(end);
            }
            devices.extend(facts.device());
        }
        let header = Header {
            sweep_file: src.sweep_file.map(Path::to_path_buf),
            commit,
            devices: devices.into_iter().collect(),
            counts,
            wall_time_s: (last >= first).then(|| last - first),
            kinds: crate::report::summary::summarize(all, &all.results_dir, &[], &[]).kinds,
            warnings: src.warnings.to_vec(),
        };

        let curves_dir = all.results_dir.join("curves");
        let figures = src
            .files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "svg") && !f.starts_with(&curves_dir))
            .filter_map(|f| {
                Some(InlineFigure {
                    file: f.file_name()?.to_string_lossy().into_owned(),
                    svg: std::fs::read_to_string(f).ok()?,
                })
            })
            .collect();

        let mut configs = details
            .iter()
            .filter_map(|d| d.facts.config.as_ref().map(config_lines));
        let mut shared_config: Vec<String> = configs.next().unwrap_or_default();
        for lines in configs {
            let lines: BTreeSet<String> = lines.into_iter().collect();
            shared_config.retain(|l| lines.contains(l));
        }

        PageData {
            sweep_name: &all.sweep_name,
            shared_config,
            header,
            table1: src.table1,
            comparison: src.comparison,
            bootstrap_samples: src.bootstrap_samples,
            figures,
            skipped: src.skipped,
            selecting: src.used.runs.len() != src.all.runs.len(),
            rows,
            details,
            priming,
            cells,
        }
    }

    /// Row keys of the finished runs the tables average for `setting` on `langs`.
    pub fn runs_of(&self, setting: &str, langs: &[&str]) -> Vec<usize> {
        let mut keys: Vec<usize> = langs
            .iter()
            .flat_map(|l| {
                self.cells
                    .get(&(setting.to_string(), l.to_string()))
                    .into_iter()
                    .flatten()
                    .copied()
            })
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Row keys of the finished runs of `setting` on `lang` with one of `seeds`.
    pub fn runs_with_seeds(&self, setting: &str, lang: &str, seeds: &[u64]) -> Vec<usize> {
        self.runs_of(setting, &[lang])
            .into_iter()
            .filter(|&k| seeds.contains(&self.rows[k].record.meta.seed))
            .collect()
    }
}

/// `a.b.c = value` lines of a JSON configuration, in its key order.
pub fn config_lines(v: &serde_json::Value) -> Vec<String> {
    let mut lines = Vec::new();
    flatten_config(v, "", &mut lines);
    lines
}

fn flatten_config(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_config(v, &key, out);
            }
        }
        other => out.push(format!("{prefix} = {other}")),
    }
}

/// Renders the page of a report and writes `<results dir>/index.html` atomically.
pub fn write_page(src: &PageSources<'_>) -> Result<PathBuf, ReportError> {
    let data = PageData::gather(src, primer_commit());
    let path = src.all.results_dir.join(PAGE_FILE);
    write_atomic(&path, render(&data).as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests;
