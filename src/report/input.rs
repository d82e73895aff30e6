//! What the report stage consumes: one record per fine-tuning run of a sweep (done or not),
//! built by the sweep module from its plan and store (`crate::sweep::report_input`).

use crate::config::{FinetuneMethod, InnerLoop, PrimingMethod};
use crate::spec::ReportSpec;
use crate::train::FinetuneMetrics;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The settings that identify a fine-tuning run in tables and figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    pub run_id: String,
    /// Named setting of the sweep (e.g. "4/Meta Priming→AT").
    pub setting: String,
    /// None: no priming.
    pub priming: Option<PrimingMethod>,
    /// The id of the priming run it starts from.
    #[serde(default)]
    pub priming_run: Option<String>,
    pub inner_loop: Option<InnerLoop>,
    /// The PE method priming trained (`adapter`, `lora`, `bitfit`; None: no priming).
    #[serde(default)]
    pub pe_method: Option<String>,
    pub inner_steps: Option<usize>,
    pub inner_lr: Option<f64>,
    pub outer_lr: Option<f64>,
    pub ft_method: FinetuneMethod,
    pub ft_lr: f64,
    pub lang: String,
    pub seed: u64,
    /// The run's store directory.
    pub run_dir: PathBuf,
    /// How its dev and test sentences are drawn (`DataConfig::evaluation_keys`, `key = value`).
    #[serde(default)]
    pub evaluation: Vec<String>,
    /// The swept keys of its configuration and their values (JSON), as the sweep's axes set
    /// them (for `[report] select`).
    #[serde(default)]
    pub axes: Vec<(String, String)>,
}

/// One fine-tuning run and, when it is done, its metrics. Runs not done have `metrics: None`
/// and appear as missing (never as zeros).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub meta: RunMeta,
    pub metrics: Option<FinetuneMetrics>,
}

/// A priming run of the sweep (for learning curves).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrimingRunRecord {
    pub run_id: String,
    pub setting: String,
    /// The primed checkpoint folder (holds `curves.json` when done).
    pub checkpoint_dir: PathBuf,
    pub done: bool,
}

/// Everything needed to write a sweep's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportInput {
    pub sweep_name: String,
    pub spec: ReportSpec,
    /// Setting names in the order the sweep declares them.
    pub settings: Vec<String>,
    /// Target languages in sweep order.
    pub languages: Vec<String>,
    pub runs: Vec<RunRecord>,
    pub priming_runs: Vec<PrimingRunRecord>,
    /// Where the report goes (`results/<sweep name>/`).
    pub results_dir: PathBuf,
}
