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
