//! The `[report]` section of a sweep file: which named settings feed which table row and
//! figure cell. A figure whose settings are missing from the sweep is skipped with a message.

use serde::{Deserialize, Serialize};

/// `[report]` of a sweep file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSpec {
    /// Table 1 rows, in order: setting names. Empty: every setting, in sweep order.
    pub table1_rows: Vec<String>,
    /// Groups of rows within which the best cell is bolded (setting names). Empty: one group.
    pub table1_groups: Vec<Vec<String>>,
    /// Map from setting name to the paper's Table 1 row label (e.g. "4/Meta Priming→AT"),
    /// for the comparison table.
    pub paper_rows: std::collections::BTreeMap<String, String>,
    /// Figure 3: one bar series per entry (label, setting name).
    pub figure3: Vec<FigureSeries>,
    /// Figure 4: the 2×2 matrix of setting names, rows = inner loop PE, Full; columns =
    /// downstream fine-tuning PE, Full.
    pub figure4: Option<[[String; 2]; 2]>,
    /// Pairs compared with a paired bootstrap (setting a vs setting b).
    pub compare: Vec<ComparePair>,
    /// Bootstrap resamples.
    pub bootstrap_samples: Option<usize>,
    /// Hyperparameter selection on dev: which of a setting's configurations each cell uses
    /// when the sweep varies keys within a setting (required then; see [`Selection`]).
    pub select: Option<Selection>,
}

/// `[report] select = { by = "dev_f1", over = ["finetune.lr"] }`: for each setting × language
/// × seed, the tables keep the configuration (of the values of `over`) with the best dev score
/// and report its test score, as papers tune on dev. The choices are listed in `selection.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    pub by: SelectBy,
    /// Swept keys (`finetune.lr`, `prime.inner_lr`, ...) whose values are chosen.
    pub over: Vec<String>,
}

/// The dev score a selection maximises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectBy {
    /// Entity F1 on dev at the run's best epoch (what `metrics.json` reports as `dev.f1`).
    DevF1,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FigureSeries {
    pub label: String,
    pub setting: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComparePair {
    pub a: String,
    pub b: String,
}
