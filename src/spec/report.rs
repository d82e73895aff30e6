//! The `[report]` section of a sweep file: which named settings feed which table row and
//! figure cell, and the declared figures (`[[report.figure]]`). A preset figure whose settings
//! are missing from the sweep is skipped with a message; a declared figure is checked against
//! the sweep when the sweep file is read ([`FigureSpec::check`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

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
    /// Declared figures (`[[report.figure]]`), drawn after Figures 3 and 4.
    pub figure: Vec<FigureSpec>,
}

impl ReportSpec {
    /// The swept keys some declared figure plots (as `x` or `series`), in declaration order.
    /// Such a key may vary within a setting without `select`: the tables then give each of its
    /// values a row of its own (`crate::report::split`).
    pub fn plotted_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for f in &self.figure {
            for k in [&f.x, &f.series] {
                if !DIMENSIONS.contains(&k.as_str()) && !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
        keys
    }
}

/// `x`, `series` and filter names that are not swept keys.
const DIMENSIONS: [&str; 2] = ["lang", "setting"];

/// One `[[report.figure]]`: points are means over seeds of `y` for each `series` × `x`, in one
/// panel per language (`facet = "lang"`) or averaged over languages (`facet = "avg"`), with
/// the seed-aware interval as error bars (`crate::report::points`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FigureSpec {
    /// File stem: `<name>.svg`, `<name>.png` and `<name>.csv` in the results directory.
    pub name: String,
    pub kind: FigureKind,
    /// `lang` or a key the sweep varies (`finetune.data.train_limit`, `prime.inner_steps`).
    pub x: String,
    /// `setting` or a key the sweep varies: one line (or bar colour, or heatmap row) per value.
    #[serde(default = "default_series")]
    pub series: String,
    #[serde(default)]
    pub y: FigureY,
    #[serde(default)]
    pub facet: Facet,
    /// Only the runs whose `setting`, `lang` or swept key takes one of the listed values (every
    /// entry must match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<BTreeMap<String, Vec<Value>>>,
    /// Title over the figure (default: y against x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

fn default_series() -> String {
    "setting".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FigureKind {
    /// Lines over x with error bars (curves over a swept key).
    Line,
    /// Grouped bars: one group per x value, one bar per series.
    Bars,
    /// One cell per series (row) × x (column), annotated with its value.
    Heatmap,
}

/// What a figure plots (per run; points are means over seeds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FigureY {
    /// Entity F1 ×100 on the test set.
    #[default]
    TestF1,
    /// Entity F1 ×100 on dev at the run's best epoch.
    DevF1,
    /// Fine-tuning wall time in seconds.
    WallTimeS,
    /// Percentage of the parameters fine-tuning trains.
    TrainedPercent,
}

impl FigureY {
    /// The column name (`scores.csv`'s) and the axis title with its unit.
    pub fn name(self) -> &'static str {
        match self {
            FigureY::TestF1 => "test_f1",
            FigureY::DevF1 => "dev_f1",
            FigureY::WallTimeS => "wall_time_s",
            FigureY::TrainedPercent => "trained_percent",
        }
    }

    pub fn axis_title(self) -> &'static str {
        match self {
            FigureY::TestF1 => "Test F1 (×100)",
            FigureY::DevF1 => "Dev F1 (×100)",
            FigureY::WallTimeS => "Fine-tuning wall time (s)",
            FigureY::TrainedPercent => "Parameters trained (%)",
        }
    }
}

/// Panels of a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Facet {
    /// One panel: each point averages the languages (their means over seeds).
    #[default]
    Avg,
    /// One panel per target language.
    Lang,
}

/// What [`FigureSpec::check`] needs to know about the sweep.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepFacts {
    pub settings: Vec<String>,
    pub languages: Vec<String>,
    /// Every key that some axis (`[grid]`, `[[zip]]`, a setting's `grid`) gives two or more
    /// values, with its values in file order.
    pub varied: Vec<(String, Vec<Value>)>,
}

impl SweepFacts {
    fn values(&self, key: &str) -> Option<&[Value]> {
        self.varied
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

/// Which part of a `[[report.figure]]` is wrong (so the sweep parser can point at its line).
#[derive(Debug, Clone, PartialEq)]
pub enum FigureField {
    Name,
    X,
    Series,
    Facet,
    /// The filter as a whole.
    Filter,
    /// One entry of the filter (its key), or one value of it (key, index).
    FilterKey(String),
    FilterValue(String, usize),
}

/// File stems the report writes itself: a declared figure may not overwrite them.
pub const RESERVED_STEMS: [&str; 8] = [
    "scores",
    "table1",
    "comparison",
    "selection",
    "summary",
    "figure3",
    "figure4",
    "curves",
];

impl FigureSpec {
    /// Every rule a declared figure obeys, checked once when the sweep file is read: `x` and
    /// `series` are `lang` / `setting` or keys the sweep varies, they differ, a per-language
    /// facet needs another x than `lang`, and a filter names settings, languages or swept keys
    /// with values they take, never nothing. Err: the part that is wrong and why.
    pub fn check(&self, sweep: &SweepFacts) -> Result<(), (FigureField, String)> {
        let stem_ok = !self.name.is_empty()
            && !self.name.starts_with('.')
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !stem_ok {
            return Err((
                FigureField::Name,
                format!(
                    "name '{}' is the figure's file name: use letters, digits, '-', '_' or '.'",
                    self.name
                ),
            ));
        }
        if RESERVED_STEMS.contains(&self.name.as_str()) {
            return Err((
                FigureField::Name,
                format!(
                    "name '{}' is a file the report writes itself ({}); choose another",
                    self.name,
                    RESERVED_STEMS.join(", ")
                ),
            ));
        }
        let varied: Vec<&str> = sweep.varied.iter().map(|(k, _)| k.as_str()).collect();
        let dimension = |field: FigureField, what: &str, value: &str, own: &str| {
            if value == own || sweep.values(value).is_some() {
                return Ok(());
            }
            let choices = std::iter::once(own).chain(varied.iter().copied());
            let hint = match super::source::nearest(value, choices) {
                Some(n) if n != value => format!("; did you mean {n}?"),
                _ => String::new(),
            };
            let message = if DIMENSIONS.contains(&value) {
                format!("{what} = \"{value}\": {what} takes \"{own}\" or a key the sweep varies")
            } else {
                format!(
                    "{what} = \"{value}\" is not a key this sweep varies ({}){hint}",
                    if varied.is_empty() {
                        "it varies none: give a key two or more values in [grid], [[zip]] or a \
                         setting's grid"
                            .to_string()
                    } else {
                        format!("it varies {}", varied.join(", "))
                    }
                )
            };
            Err((field, message))
        };
        dimension(FigureField::X, "x", &self.x, "lang")?;
        dimension(FigureField::Series, "series", &self.series, "setting")?;
        if self.x == self.series {
            return Err((
                FigureField::Series,
                format!("series = \"{}\" is also x: choose another", self.series),
            ));
        }
        if self.x == "lang" && self.facet == Facet::Lang {
            return Err((
                FigureField::Facet,
                "facet = \"lang\" with x = \"lang\" would give one point per panel: use \
                 facet = \"avg\" (the default) or another x"
                    .to_string(),
            ));
        }
        let Some(filter) = &self.filter else {
            return Ok(());
        };
        if filter.is_empty() {
            return Err((
                FigureField::Filter,
                "filter is empty: it would keep every run; remove it or name settings, \
                 languages or swept keys with the values to keep"
                    .to_string(),
            ));
        }
        for (key, values) in filter {
            let field = || FigureField::FilterKey(key.clone());
            let known: Vec<Value> = match key.as_str() {
                "setting" => sweep
                    .settings
                    .iter()
                    .map(|s| Value::from(s.as_str()))
                    .collect(),
                "lang" => sweep
                    .languages
                    .iter()
                    .map(|s| Value::from(s.as_str()))
                    .collect(),
                k => match sweep.values(k) {
                    Some(v) => v.to_vec(),
                    None => {
                        return Err((
                            field(),
                            format!(
                                "filter.{k}: a filter names setting, lang or a key the sweep \
                                 varies ({})",
                                if varied.is_empty() {
                                    "none".to_string()
                                } else {
                                    varied.join(", ")
                                }
                            ),
                        ));
                    }
                },
            };
            if values.is_empty() {
                return Err((
                    field(),
                    format!("filter.{key}: the list is empty, so the figure would plot nothing"),
                ));
            }
            for (i, v) in values.iter().enumerate() {
                if !known.iter().any(|k| super::source::values_equal(k, v)) {
                    let shown: Vec<String> = known.iter().map(Value::to_string).collect();
                    return Err((
                        FigureField::FilterValue(key.clone(), i),
                        format!(
                            "filter.{key}: {v} is not a value of {key} in this sweep ({})",
                            shown.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether x is plotted on a log scale: learning rates and data sizes span decades.
    pub fn log_x(&self) -> bool {
        is_log_scaled(&self.x)
    }
}

/// Keys whose values span decades (learning rates, data sizes): plotted on a log scale.
pub fn is_log_scaled(key: &str) -> bool {
    let field = key.rsplit('.').next().unwrap_or(key);
    field == "lr" || field.ends_with("_lr") || field.ends_with("_limit")
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
    /// What the comparison asks, shown in the report's "Why" column (default:
    /// "`[report] compare`").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl ComparePair {
    /// The pair `a` vs `b`, without a stated reason.
    pub fn new(a: impl Into<String>, b: impl Into<String>) -> Self {
        Self {
            a: a.into(),
            b: b.into(),
            why: None,
        }
    }
}
