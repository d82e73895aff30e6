//! The sweep file: a base configuration and the ways it varies (grid, zip, exclude, named
//! settings, seeds, targets), plus the `[report]` section. See `sweeps/README.md` for the
//! format. Everything is validated here, before anything runs: unknown keys (with the nearest
//! valid key suggested), wrong types and out-of-range values are reported as
//! `file:line:column: key: problem`.

use super::error::SpecError;
use super::report::ReportSpec;
use super::report::{FigureField, FigureSpec, SweepFacts};
use super::source::{Entry, Node, NodeKind, Source, flatten, nearest, values_equal};

use crate::config::{FinetuneConfig, PrimeConfig};
use crate::slurm::SlurmOptions;
use serde_json::Value;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The paper's six target languages, the default of `targets`.
pub const DEFAULT_TARGETS: [&str; 6] = ["hi", "af", "az", "lt", "et", "nl"];

/// The default run store, shared by all sweeps so identical runs are computed once.
pub const DEFAULT_STORE: &str = "results/store";

/// One `key = value` assignment of a dotted setting key (`finetune.lr`, `prime.data.train_limit`).
#[derive(Debug, Clone, PartialEq)]
pub struct Assign {
    pub key: String,
    pub value: Value,
    pub span: Range<usize>,
}

/// One `[grid]` axis: a key and the values it takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<Value>,
    pub span: Range<usize>,
}

/// One `[[zip]]` table: keys whose value lists vary together (row i takes the i-th of each).
#[derive(Debug, Clone, PartialEq)]
pub struct Zip {
    pub keys: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub span: Range<usize>,
}

/// One `[[exclude]]` rule: a combination is dropped when it matches every condition.
/// Keys are setting keys or `setting`, `target`, `seed`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub conditions: Vec<(String, Value)>,
    pub span: Range<usize>,
}

/// Whether and how a named setting primes before fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priming {
    None,
    Meta,
    Ft,
}

impl Priming {
    pub fn method(self) -> Option<crate::config::PrimingMethod> {
        match self {
            Priming::None => None,
            Priming::Meta => Some(crate::config::PrimingMethod::Meta),
            Priming::Ft => Some(crate::config::PrimingMethod::Ft),
        }
    }
}

/// A named setting (a Table 1 row, a figure cell): overrides, priming, optional own axes.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub name: String,
    pub priming: Priming,
    /// Fixed values; a key fixed here is no longer an axis within this setting.
    pub overrides: Vec<Assign>,
    /// Axes of this setting: they replace global axes of the same key and add new ones.
    pub grid: Vec<Axis>,
    pub seeds: Option<Vec<u64>>,
    pub targets: Option<Vec<String>>,
    pub span: Range<usize>,
}

/// A parsed and validated sweep file.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub source: Source,
    pub name: String,
    /// The run store, as written (resolved against the current directory when used).
    pub store: PathBuf,
    pub seeds: Vec<u64>,
    pub targets: Vec<String>,
    pub base_finetune: Vec<Assign>,
    pub base_prime: Vec<Assign>,
    pub grid: Vec<Axis>,
    pub zips: Vec<Zip>,
    pub excludes: Vec<Rule>,
    /// In declaration order. A sweep without `[settings]` has one setting, "default", without priming.
    pub settings: Vec<Setting>,
    pub report: ReportSpec,
    /// The `[slurm]` table: defaults of `primer run --backend slurm` (its command-line
    /// options override them); all defaults when absent.
    pub slurm: SlurmOptions,
}

const TOP_KEYS: [&str; 11] = [
    "name", "store", "seeds", "targets", "base", "grid", "zip", "exclude", "settings", "report",
    "slurm",
];
const SETTING_KEYS: [&str; 4] = ["priming", "grid", "seeds", "targets"];
const FIGURE_KEYS: [&str; 8] = [
    "name", "kind", "x", "series", "y", "facet", "filter", "title",
];

/// The valid dotted keys and how to check a value for each.
pub struct KeySpace {
    finetune_default: Value,
    prime_default: Value,
    keys: Vec<String>,
}

impl Default for KeySpace {
    fn default() -> Self {
        Self::new()
    }
}

impl KeySpace {
    pub fn new() -> Self {
        let finetune_default =
            serde_json::to_value(FinetuneConfig::default()).expect("serialisable");
        let prime_default = serde_json::to_value(PrimeConfig::default()).expect("serialisable");
        let mut keys = Vec::new();
        leaf_paths("finetune", &finetune_default, &mut keys);
        leaf_paths("prime", &prime_default, &mut keys);
        // Keys the defaults leave out because they are unset (see `config::PE_SETTING_KEYS`).
        use crate::config::{PE_SETTING_KEYS, PRIME_OPTIONAL_KEYS, RUN_OPTIONAL_KEYS};
        let optional = (PE_SETTING_KEYS.iter())
            .chain(RUN_OPTIONAL_KEYS)
            .map(|k| ("finetune", k));
        let optional = optional.chain(
            (PE_SETTING_KEYS.iter())
                .chain(PRIME_OPTIONAL_KEYS)
                .chain(RUN_OPTIONAL_KEYS)
                .map(|k| ("prime", k)),
        );
        for (section, k) in optional {
            let key = format!("{section}.{k}");
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        Self {
            finetune_default,
            prime_default,
            keys,
        }
    }

    /// Every valid dotted key.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The defaults of a section ("finetune" or "prime") as JSON.
    pub fn default_json(&self, section: &str) -> &Value {
        if section == "prime" {
            &self.prime_default
        } else {
            &self.finetune_default
        }
    }

    /// Checks that `key` may be set and that `value` has its type and range. The message
    /// (without location) explains the problem and the fix.
    pub fn check(&self, key: &str, value: &Value) -> Result<(), String> {
        self.check_key(key)?;
        let (section, rest) = key.split_once('.').expect("checked key has a section");
        let mut json = self.default_json(section).clone();
        set_path(&mut json, rest, value.clone());
        // Types at deserialisation, ranges by the configs' own rules (the same verdict as
        // `primer plan` and the runs give); here only the rules about this key count: others
        // may hinge on keys set elsewhere and are checked on the resolved configurations.
        let errors = if section == "prime" {
            serde_json::from_value::<PrimeConfig>(json).map(|c| c.value_errors())
        } else {
            serde_json::from_value::<FinetuneConfig>(json).map(|c| c.value_errors())
        }
        .map_err(|e| format!("{key}: {e}"))?;
        match errors.into_iter().find(|e| e.key == rest && !e.cross_field) {
            Some(e) => Err(format!("{key}: {}", e.problem)),
            None => Ok(()),
        }
    }

    /// Checks that `key` names a settable leaf.
    pub fn check_key(&self, key: &str) -> Result<(), String> {
        if let Some(hint) = reserved_hint(key) {
            return Err(format!("{key} cannot be set in a sweep: {hint}"));
        }
        if self.keys.iter().any(|k| k == key) {
            return Ok(());
        }
        let prefix = format!("{key}.");
        if self.keys.iter().any(|k| k.starts_with(&prefix)) {
            return Err(format!(
                "{key} is a table: set its fields, e.g. {key}.{}",
                self.keys
                    .iter()
                    .find(|k| k.starts_with(&prefix))
                    .map(|k| &k[prefix.len()..])
                    .unwrap_or("...")
            ));
        }
        // Candidates: every settable key, plus common other names of a few of them
        // (`learning_rate` for `lr`), each standing for the real key.
        let mut candidates: Vec<(String, &str)> = self
            .keys
            .iter()
            .filter(|k| reserved_hint(k).is_none())
            .map(|k| (k.clone(), k.as_str()))
            .collect();
        for k in &self.keys {
            let (section, field) = k.rsplit_once('.').unwrap_or(("", k));
            for (alias, target) in ALIASES {
                if field == *target {
                    candidates.push((format!("{section}.{alias}"), k.as_str()));
                }
            }
        }
        let best = nearest(key, candidates.iter().map(|c| c.0.as_str()))
            .and_then(|n| candidates.iter().find(|c| c.0 == n))
            .map(|c| c.1);
        match best {
            Some(s) => Err(format!("unknown key {key}: did you mean {s}?")),
            None if !key.starts_with("finetune.") && !key.starts_with("prime.") => Err(format!(
                "unknown key {key}: setting keys start with finetune. or prime. (e.g. finetune.lr, prime.inner_steps)"
            )),
            None => Err(format!("unknown key {key}")),
        }
    }
}

/// Other names people use for some fields (alias, field), for suggestions only.
const ALIASES: &[(&str, &str)] = &[
    ("learning_rate", "lr"),
    ("inner_learning_rate", "inner_lr"),
    ("outer_learning_rate", "outer_lr"),
    ("num_epochs", "epochs"),
    ("adapter_size", "adapter_dim"),
    ("bottleneck", "adapter_dim"),
    ("max_length", "max_len"),
    ("max_seq_length", "max_len"),
    ("num_inner_steps", "inner_steps"),
];

/// Keys the sweep sets itself; each with the way to vary it instead.
fn reserved_hint(key: &str) -> Option<&'static str> {
    match key {
        "finetune.lang" => Some("the target language comes from `targets = [...]`"),
        "finetune.seed" | "prime.seed" => {
            Some("seeds come from `seeds = [...]` (they set both priming and fine-tuning seeds)")
        }
        "finetune.device" | "prime.device" => {
            Some("devices are chosen at execution time with `primer run --devices`")
        }
        "finetune.init" => Some(
            "a setting's `priming = \"meta\" | \"ft\"` makes fine-tuning start from its primed checkpoint",
        ),
        "prime.method" => Some("use `priming = \"meta\" | \"ft\"` in a [settings.\"...\"] table"),
        _ => None,
    }
}

/// Range checks by field name (the last segment of the key), for the values serde accepts
/// but training cannot use.
fn leaf_paths(prefix: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                leaf_paths(&format!("{prefix}.{k}"), v, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// Sets `path` (dotted, relative to `json`) to `value`, creating objects on the way.
pub fn set_path(json: &mut Value, path: &str, value: Value) {
    let mut cur = json;
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        let obj = cur.as_object_mut().expect("object");
        if parts.peek().is_none() {
            obj.insert(p.to_string(), value);
            return;
        }
        cur = obj
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
}

/// Reads `path` (dotted) from `json`.
pub fn get_path<'a>(json: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(json, |cur, p| cur.get(p))
}

struct Parser<'s> {
    src: &'s Source,
    keys: KeySpace,
}

impl Sweep {
    /// Reads and validates a sweep file.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        Self::parse(Source::read(path)?)
    }

    /// Parses and validates sweep text (the path is used in messages).
    pub fn from_text(path: &Path, text: &str) -> Result<Self, SpecError> {
        Self::parse(Source::from_text(path, text))
    }

    fn parse(source: Source) -> Result<Self, SpecError> {
        let root = source.parse()?;
        let p = Parser {
            src: &source,
            keys: KeySpace::new(),
        };
        let top = root.as_table().expect("a document is a table");
        let mut name = None;
        let mut store = PathBuf::from(DEFAULT_STORE);
        let mut seeds = vec![0];
        let mut targets: Vec<String> = DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect();
        let (mut base_finetune, mut base_prime) = (Vec::new(), Vec::new());
        let (mut grid, mut zips, mut excludes, mut settings) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut report = None;
        let mut slurm = SlurmOptions::default();
        for e in top {
            match e.key.as_str() {
                "name" => {
                    let n = p.string(e)?;
                    if n.is_empty()
                        || !n
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                        || n.starts_with('.')
                    {
                        return Err(p.src.error(&e.value.span, format!(
                            "name: '{n}' is used as a folder name (results/<name>/): use letters, digits, '-', '_' or '.'"
                        )));
                    }
                    name = Some(n);
                }
                "store" => store = PathBuf::from(p.string(e)?),
                "seeds" => seeds = p.seeds(e)?,
                "targets" => targets = p.strings(e)?,
                "base" => (base_finetune, base_prime) = p.base(e)?,
                "grid" => grid = p.axes("grid", e)?,
                "zip" => zips = p.zips(e)?,
                "exclude" => excludes = p.excludes_raw(e)?,
                "settings" => settings = p.settings(e)?,
                "report" => report = Some(e),
                "slurm" => slurm = p.slurm(e)?,
                other => return Err(p.unknown(e, other, &TOP_KEYS, "top level")),
            }
        }
        let Some(name) = name else {
            return Err(p.src.error(
                &(0..0),
                "missing `name = \"...\"` (results go to results/<name>/)",
            ));
        };
        if settings.is_empty() {
            settings.push(Setting {
                name: "default".into(),
                priming: Priming::None,
                overrides: Vec::new(),
                grid: Vec::new(),
                seeds: None,
                targets: None,
                span: 0..0,
            });
        }
        // Exclude rules name settings, targets and seeds: checked now that all are known.
        p.check_excludes(&excludes, &settings, &targets, &seeds)?;
        // A key both in [grid] and in a [[zip]] would take the zip's values only.
        for zip in &zips {
            for axis in &grid {
                if zip.keys.contains(&axis.key) {
                    return Err(p.src.error(
                        &axis.span,
                        format!(
                            "grid: {} is also varied by the [[zip]] at line {}, whose values \
                             would replace these; vary it in one of the two",
                            axis.key,
                            p.src.line_col(zip.span.start).0
                        ),
                    ));
                }
            }
        }
        let facts = sweep_facts(&settings, &targets, &grid, &zips);
        let report = match report {
            Some(e) => p.report(e, &settings, &facts)?,
            None => ReportSpec::default(),
        };
        Ok(Sweep {
            name,
            store,
            seeds,
            targets,
            base_finetune,
            base_prime,
            grid,
            zips,
            excludes,
            settings,
            report,
            slurm,
            source,
        })
    }

    /// Setting names in declaration order.
    pub fn setting_names(&self) -> Vec<String> {
        self.settings.iter().map(|s| s.name.clone()).collect()
    }

    /// Where this sweep's report and summaries go: `results/<name>/`.
    pub fn results_dir(&self) -> PathBuf {
        Path::new("results").join(&self.name)
    }
}

impl Parser<'_> {
    fn err(&self, span: &Range<usize>, msg: impl Into<String>) -> SpecError {
        self.src.error(span, msg)
    }

    fn unknown(&self, e: &Entry, key: &str, valid: &[&str], place: &str) -> SpecError {
        let hint = match nearest(key, valid.iter().copied()) {
            Some(s) => format!("did you mean {s}?"),
            None => format!("valid keys here: {}", valid.join(", ")),
        };
        self.err(
            &e.key_span,
            format!("unknown key {key} at the {place}: {hint}"),
        )
    }

    /// An `[[exclude]]` rule on a setting, target or seed the sweep does not have would match
    /// nothing: refused at the rule, with the nearest name.
    fn check_excludes(
        &self,
        excludes: &[Rule],
        settings: &[Setting],
        targets: &[String],
        seeds: &[u64],
    ) -> Result<(), SpecError> {
        let all_targets: Vec<&str> = targets
            .iter()
            .chain(settings.iter().flat_map(|s| s.targets.iter().flatten()))
            .map(String::as_str)
            .collect();
        let all_seeds: Vec<u64> = seeds
            .iter()
            .chain(settings.iter().flat_map(|s| s.seeds.iter().flatten()))
            .copied()
            .collect();
        for rule in excludes {
            for (k, v) in &rule.conditions {
                let unknown = match k.as_str() {
                    "setting" => (!settings.iter().any(|s| Some(s.name.as_str()) == v.as_str()))
                        .then(|| {
                            format!(
                                "exclude: setting {v} is not a setting of this sweep{}",
                                self.setting_suggestion(v.as_str().unwrap_or(""), settings)
                            )
                        }),
                    "target" => (!all_targets.contains(&v.as_str().unwrap_or(""))).then(|| {
                        let hint = nearest(v.as_str().unwrap_or(""), all_targets.iter().copied())
                            .map_or(String::new(), |t| format!("; did you mean {t:?}?"));
                        format!(
                            "exclude: target {v} is not a target of this sweep (targets: \
                             {}){hint}",
                            all_targets.join(", ")
                        )
                    }),
                    "seed" => (!all_seeds.iter().any(|s| Some(*s) == v.as_u64())).then(|| {
                        format!(
                            "exclude: seed {v} is not a seed of this sweep (seeds: {})",
                            all_seeds
                                .iter()
                                .map(u64::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }),
                    _ => None,
                };
                if let Some(message) = unknown {
                    return Err(self.err(&rule.span, message));
                }
            }
        }
        Ok(())
    }

    fn string(&self, e: &Entry) -> Result<String, SpecError> {
        e.value.as_str().map(str::to_string).ok_or_else(|| {
            self.err(
                &e.value.span,
                format!(
                    "{}: expected a string, found a {}",
                    e.key,
                    e.value.type_name()
                ),
            )
        })
    }

    fn strings(&self, e: &Entry) -> Result<Vec<String>, SpecError> {
        let arr = e.value.as_array().ok_or_else(|| {
            self.err(
                &e.value.span,
                format!(
                    "{}: expected an array of strings, found a {}",
                    e.key,
                    e.value.type_name()
                ),
            )
        })?;
        if arr.is_empty() {
            return Err(self.err(
                &e.value.span,
                format!(
                    "{}: the list is empty, so the sweep would expand to no runs",
                    e.key
                ),
            ));
        }
        let mut out: Vec<String> = Vec::new();
        for n in arr {
            let v = n.as_str().map(str::to_string).ok_or_else(|| {
                self.err(
                    &n.span,
                    format!("{}: expected a string, found a {}", e.key, n.type_name()),
                )
            })?;
            if out.contains(&v) {
                return Err(self.listed_twice(&e.key, &n.span, &format!("\"{v}\"")));
            }
            out.push(v);
        }
        Ok(out)
    }

    /// A list entry given twice: once would run the same runs (or count a seed twice in the
    /// tables), so it is refused rather than silently dropped.
    fn listed_twice(&self, key: &str, span: &Range<usize>, value: &str) -> SpecError {
        self.err(span, format!("{key}: {value} is listed twice; remove one"))
    }

    fn seeds(&self, e: &Entry) -> Result<Vec<u64>, SpecError> {
        let arr = e.value.as_array().ok_or_else(|| {
            self.err(
                &e.value.span,
                format!(
                    "seeds: expected an array of integers, found a {}",
                    e.value.type_name()
                ),
            )
        })?;
        if arr.is_empty() {
            return Err(self.err(
                &e.value.span,
                "seeds: the list is empty, so the sweep would expand to no runs",
            ));
        }
        let mut out: Vec<u64> = Vec::new();
        for n in arr {
            let seed = match n.kind {
                NodeKind::Int(i) if i >= 0 => i as u64,
                _ => {
                    return Err(self.err(
                        &n.span,
                        format!(
                            "seeds: expected a non-negative integer, found {}",
                            n.to_json()
                        ),
                    ));
                }
            };
            if out.contains(&seed) {
                return Err(self.listed_twice("seeds", &n.span, &seed.to_string()));
            }
            out.push(seed);
        }
        Ok(out)
    }

    fn checked(&self, key: &str, span: &Range<usize>, value: &Node) -> Result<Value, SpecError> {
        let v = value.to_json();
        self.keys.check(key, &v).map_err(|m| self.err(span, m))?;
        Ok(v)
    }

    fn base(&self, e: &Entry) -> Result<(Vec<Assign>, Vec<Assign>), SpecError> {
        let t = e.value.as_table().ok_or_else(|| {
            self.err(
                &e.value.span,
                "base: expected a table ([base.finetune], [base.prime])",
            )
        })?;
        let (mut ft, mut pr) = (Vec::new(), Vec::new());
        for s in t {
            let section = s.key.as_str();
            if section != "finetune" && section != "prime" {
                return Err(self.unknown(s, section, &["finetune", "prime"], "[base] table"));
            }
            let entries = s.value.as_table().ok_or_else(|| {
                self.err(
                    &s.value.span,
                    format!("base.{section}: expected a table of {section} settings"),
                )
            })?;
            let mut flat = Vec::new();
            flatten(section, entries, &mut flat);
            for (key, span, node) in flat {
                let value = self.checked(&key, &span, node)?;
                let a = Assign { key, value, span };
                if section == "finetune" {
                    ft.push(a)
                } else {
                    pr.push(a)
                }
            }
        }
        Ok((ft, pr))
    }

    /// A table of `key = [values]` axes (the global `[grid]` or a setting's `grid`).
    fn axes(&self, place: &str, e: &Entry) -> Result<Vec<Axis>, SpecError> {
        let t = e.value.as_table().ok_or_else(|| {
            self.err(
                &e.value.span,
                format!("{place}: expected a table of key = [values]"),
            )
        })?;
        let mut flat = Vec::new();
        flatten("", t, &mut flat);
        let mut axes: Vec<Axis> = Vec::new();
        for (key, span, node) in flat {
            self.keys
                .check_key(&key)
                .map_err(|m| self.err(&span, format!("{place}: {m}")))?;
            let arr = node.as_array().ok_or_else(|| {
                self.err(&node.span, format!("{place}: {key}: expected a list of values to sweep over, found a {} (write [{}])", node.type_name(), node.to_json()))
            })?;
            if arr.is_empty() {
                return Err(self.err(
                    &node.span,
                    format!(
                        "{place}: {key}: the list is empty, so the sweep would expand to no runs"
                    ),
                ));
            }
            if axes.iter().any(|a| a.key == key) {
                return Err(self.err(&span, format!("{place}: {key} is given twice")));
            }
            let mut values: Vec<Value> = Vec::new();
            for v in arr {
                let value = self.checked(&key, &v.span, v)?;
                // Within a zip a value may repeat (another key's value beside it differs).
                if place != "[[zip]]" && values.iter().any(|x| values_equal(x, &value)) {
                    return Err(self.listed_twice(
                        &format!("{place}: {key}"),
                        &v.span,
                        &v.to_json().to_string(),
                    ));
                }
                values.push(value);
            }
            axes.push(Axis { key, values, span });
        }
        Ok(axes)
    }

    fn zips(&self, e: &Entry) -> Result<Vec<Zip>, SpecError> {
        let tables = e
            .value
            .as_array()
            .ok_or_else(|| self.err(&e.value.span, "zip: write each group as a [[zip]] table"))?;
        let mut zips = Vec::new();
        for t in tables {
            let entry = Entry {
                key: "zip".into(),
                key_span: t.span.clone(),
                value: t.clone(),
            };
            let axes = self.axes("[[zip]]", &entry)?;
            let Some(first) = axes.first() else {
                return Err(self.err(&t.span, "[[zip]]: empty table"));
            };
            let len = first.values.len();
            if let Some(bad) = axes.iter().find(|a| a.values.len() != len) {
                return Err(self.err(&bad.span, format!(
                    "[[zip]]: {} has {} values but {} has {}: the lists of a zip vary together and must have equal lengths",
                    bad.key, bad.values.len(), first.key, len
                )));
            }
            zips.push(Zip {
                keys: axes.iter().map(|a| a.key.clone()).collect(),
                rows: (0..len)
                    .map(|i| axes.iter().map(|a| a.values[i].clone()).collect())
                    .collect(),
                span: t.span.clone(),
            });
        }
        Ok(zips)
    }

    fn excludes_raw(&self, e: &Entry) -> Result<Vec<Rule>, SpecError> {
        let tables = e.value.as_array().ok_or_else(|| {
            self.err(
                &e.value.span,
                "exclude: write each rule as an [[exclude]] table",
            )
        })?;
        let mut rules = Vec::new();
        for t in tables {
            let entries = t
                .as_table()
                .ok_or_else(|| self.err(&t.span, "[[exclude]]: expected a table"))?;
            let mut flat = Vec::new();
            flatten("", entries, &mut flat);
            if flat.is_empty() {
                return Err(self.err(
                    &t.span,
                    "[[exclude]]: an empty rule would exclude everything",
                ));
            }
            let mut conditions = Vec::new();
            for (key, span, node) in flat {
                let value = match key.as_str() {
                    "setting" | "target" => {
                        Value::String(node.as_str().map(str::to_string).ok_or_else(|| {
                            self.err(&node.span, format!("[[exclude]]: {key}: expected a string"))
                        })?)
                    }
                    "seed" => match node.kind {
                        NodeKind::Int(i) if i >= 0 => Value::from(i),
                        _ => {
                            return Err(self.err(
                                &node.span,
                                "[[exclude]]: seed: expected a non-negative integer",
                            ));
                        }
                    },
                    _ => self.checked(&key, &span, node).map_err(|err| match err {
                        SpecError::Invalid {
                            file,
                            line,
                            column,
                            message,
                        } => SpecError::Invalid {
                            file,
                            line,
                            column,
                            message: format!(
                                "[[exclude]]: {message} (rules may also use setting, target, seed)"
                            ),
                        },
                        other => other,
                    })?,
                };
                conditions.push((key, value));
            }
            rules.push(Rule {
                conditions,
                span: t.span.clone(),
            });
        }
        Ok(rules)
    }

    fn settings(&self, e: &Entry) -> Result<Vec<Setting>, SpecError> {
        let t = e.value.as_table().ok_or_else(|| {
            self.err(&e.value.span, "settings: write each as [settings.\"name\"]")
        })?;
        let mut out = Vec::new();
        for s in t {
            let body = s.value.as_table().ok_or_else(|| {
                self.err(
                    &s.value.span,
                    format!(
                        "settings.\"{}\": expected a table (priming = ..., overrides)",
                        s.key
                    ),
                )
            })?;
            let mut setting = Setting {
                name: s.key.clone(),
                priming: Priming::None,
                overrides: Vec::new(),
                grid: Vec::new(),
                seeds: None,
                targets: None,
                span: s.key_span.clone(),
            };
            let mut rest = Vec::new();
            for item in body {
                match item.key.as_str() {
                    "priming" => {
                        setting.priming = match self.string(item)?.as_str() {
                            "none" => Priming::None,
                            "meta" => Priming::Meta,
                            "ft" => Priming::Ft,
                            other => {
                                return Err(self.err(&item.value.span, format!(
                                    "settings.\"{}\": priming: unknown value '{other}': use \"none\", \"meta\" (Algorithm 1 and its ablations) or \"ft\" (FT priming)",
                                    s.key
                                )));
                            }
                        }
                    }
                    "grid" => {
                        setting.grid = self.axes(&format!("settings.\"{}\".grid", s.key), item)?
                    }
                    "seeds" => setting.seeds = Some(self.seeds(item)?),
                    "targets" => setting.targets = Some(self.strings(item)?),
                    _ => rest.push(item.clone()),
                }
            }
            let mut flat = Vec::new();
            flatten("", &rest, &mut flat);
            for (key, span, node) in flat {
                if !key.contains('.') {
                    let mut valid: Vec<&str> = SETTING_KEYS.to_vec();
                    valid.extend(self.keys.keys().iter().map(String::as_str));
                    let hint = nearest(&key, valid.iter().copied())
                        .map(|k| format!("did you mean {k}?"))
                        .unwrap_or_else(|| "a setting holds priming, grid, seeds, targets and finetune.*/prime.* overrides".into());
                    return Err(self.err(
                        &span,
                        format!("settings.\"{}\": unknown key {key}: {hint}", s.key),
                    ));
                }
                let value = self
                    .checked(&key, &span, node)
                    .map_err(|err| prefix_err(err, &format!("settings.\"{}\": ", s.key)))?;
                setting.overrides.push(Assign { key, value, span });
            }
            if setting.priming == Priming::None {
                let prime_key = setting
                    .overrides
                    .iter()
                    .map(|a| (&a.key, &a.span))
                    .chain(setting.grid.iter().map(|a| (&a.key, &a.span)))
                    .find(|(k, _)| k.starts_with("prime."));
                if let Some((k, span)) = prime_key {
                    return Err(self.err(span, format!(
                        "settings.\"{}\": {k} is set but the setting does not prime: add priming = \"meta\" or \"ft\", or remove the key",
                        s.key
                    )));
                }
            }
            out.push(setting);
        }
        Ok(out)
    }

    fn setting_suggestion(&self, name: &str, settings: &[Setting]) -> String {
        match nearest(name, settings.iter().map(|s| s.name.as_str())) {
            Some(n) => format!(": did you mean \"{n}\"?"),
            None => format!(
                " (settings: {})",
                settings
                    .iter()
                    .map(|s| format!("\"{}\"", s.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn report(
        &self,
        e: &Entry,
        settings: &[Setting],
        facts: &SweepFacts,
    ) -> Result<ReportSpec, SpecError> {
        // Declared figures first: their errors point into the figure's own table.
        if let Some(figures) = e
            .value
            .as_table()
            .and_then(|t| t.iter().find(|item| item.key == "figure"))
        {
            self.figures(figures, facts)?;
        }
        let (t, spec) = self.typed_table::<ReportSpec>(e, "report", |_| Ok(()))?;
        // Every string naming a setting must name one of this sweep's settings.
        let naming: &[&str] = &[
            "table1_rows",
            "table1_groups",
            "figure3",
            "figure4",
            "compare",
        ];
        for item in t {
            let mut names = Vec::new();
            if naming.contains(&item.key.as_str()) {
                collect_setting_names(&item.value, &mut names);
            } else if item.key == "paper_rows" {
                for row in item.value.as_table().unwrap_or(&[]) {
                    names.push((row.key.clone(), row.key_span.clone()));
                }
            }
            if item.key == "select" {
                self.check_selected_keys(item)?;
            }
            for (name, span) in names {
                if !settings.iter().any(|s| s.name == name) {
                    return Err(self.err(
                        &span,
                        format!(
                            "report.{}: \"{name}\" is not a setting of this sweep{}",
                            item.key,
                            self.setting_suggestion(&name, settings)
                        ),
                    ));
                }
            }
        }
        Ok(spec)
    }
}

impl Parser<'_> {
    /// `[[report.figure]]` tables: each key checked on its own (unknown keys get the nearest
    /// valid one, bad values are reported at their line), then the figure's rules
    /// ([`FigureSpec::check`]) at the line of the part that breaks one.
    fn figures(&self, e: &Entry, facts: &SweepFacts) -> Result<(), SpecError> {
        let tables = e.value.as_array().ok_or_else(|| {
            self.err(
                &e.value.span,
                "report.figure: write each figure as a [[report.figure]] table",
            )
        })?;
        let mut names: Vec<String> = Vec::new();
        for t in tables {
            let entries = t
                .as_table()
                .ok_or_else(|| self.err(&t.span, "[[report.figure]]: expected a table"))?;
            for item in entries {
                if !FIGURE_KEYS.contains(&item.key.as_str()) {
                    return Err(self.unknown(item, &item.key, &FIGURE_KEYS, "[[report.figure]]"));
                }
            }
            // Each key on its own, in an otherwise valid figure: a bad value is reported at
            // its line, and only a missing key at the table's.
            for item in entries {
                let mut one = serde_json::json!({ "name": "f", "kind": "line", "x": "lang" });
                one[item.key.as_str()] = item.value.to_json();
                if let Err(err) = serde_json::from_value::<FigureSpec>(one) {
                    return Err(self.err(
                        &item.value.span,
                        format!("[[report.figure]]: {}: {err}", item.key),
                    ));
                }
            }
            let spec: FigureSpec = serde_json::from_value(t.to_json())
                .map_err(|err| self.err(&t.span, format!("[[report.figure]]: {err}")))?;
            let field_span = |key: &str| {
                entries
                    .iter()
                    .find(|item| item.key == key)
                    .map_or(&t.span, |item| &item.value.span)
            };
            if let Err((field, message)) = spec.check(facts) {
                let filter = entries.iter().find(|item| item.key == "filter");
                let filter_entry = |key: &str| {
                    filter
                        .and_then(|f| f.value.as_table())
                        .and_then(|f| f.iter().find(|item| item.key == key))
                };
                let span = match &field {
                    FigureField::Name => field_span("name"),
                    FigureField::X => field_span("x"),
                    FigureField::Series => field_span("series"),
                    FigureField::Facet => field_span("facet"),
                    FigureField::Filter => field_span("filter"),
                    FigureField::FilterKey(k) => {
                        filter_entry(k).map_or(field_span("filter"), |item| &item.key_span)
                    }
                    FigureField::FilterValue(k, i) => filter_entry(k)
                        .and_then(|item| item.value.as_array().and_then(|a| a.get(*i)))
                        .map_or(field_span("filter"), |v| &v.span),
                };
                return Err(self.err(
                    span,
                    format!("[[report.figure]] \"{}\": {message}", spec.name),
                ));
            }
            if names.contains(&spec.name) {
                return Err(self.err(
                    field_span("name"),
                    format!(
                        "[[report.figure]]: two figures are named \"{}\" (their files would \
                         overwrite each other)",
                        spec.name
                    ),
                ));
            }
            names.push(spec.name);
        }
        Ok(())
    }

    /// `[report] select`'s `over` keys must be settable keys (each error at the key's place).
    fn check_selected_keys(&self, select: &Entry) -> Result<(), SpecError> {
        let over = select
            .value
            .as_table()
            .and_then(|t| t.iter().find(|e| e.key == "over"));
        let Some(NodeKind::Array(keys)) = over.map(|e| &e.value.kind) else {
            return Ok(());
        };
        for k in keys {
            if let NodeKind::Str(key) = &k.kind {
                self.keys
                    .check_key(key)
                    .map_err(|m| self.err(&k.span, format!("report.select.over: {m}")))?;
            }
        }
        Ok(())
    }
}

impl Parser<'_> {
    /// The `[slurm]` table: every key checked (unknown keys get the nearest valid one), every
    /// value type- and syntax-checked, errors at the offending key's line.
    fn slurm(&self, e: &Entry) -> Result<SlurmOptions, SpecError> {
        let (_, opts) = self.typed_table::<SlurmOptions>(e, "slurm", |one| {
            one.validate().map_err(|err| err.to_string())
        })?;
        opts.validate()
            .map_err(|err| self.err(&e.value.span, format!("slurm: {err}")))?;
        Ok(opts)
    }
}

impl Parser<'_> {
    /// Deserialises a top-level table (`[report]`, `[slurm]`) into `T`, checking every key on
    /// its own first: an unknown key gets the nearest valid one, and a bad value (or one that
    /// `check` rejects) is reported at that key's line rather than at the table's.
    fn typed_table<'e, T>(
        &self,
        e: &'e Entry,
        name: &str,
        check: impl Fn(&T) -> Result<(), String>,
    ) -> Result<(&'e [Entry], T), SpecError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Default,
    {
        let t = e
            .value
            .as_table()
            .ok_or_else(|| self.err(&e.value.span, format!("{name}: expected a table")))?;
        let fields: Vec<String> = match serde_json::to_value(T::default()) {
            Ok(Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let field_refs: Vec<&str> = fields.iter().map(String::as_str).collect();
        for item in t {
            if !fields.contains(&item.key) {
                return Err(self.unknown(item, &item.key, &field_refs, &format!("[{name}] table")));
            }
            let mut one = serde_json::Map::new();
            one.insert(item.key.clone(), item.value.to_json());
            serde_json::from_value::<T>(Value::Object(one))
                .map_err(|err| err.to_string())
                .and_then(|p| check(&p))
                .map_err(|err| self.err(&item.value.span, format!("{name}.{}: {err}", item.key)))?;
        }
        let value: T = serde_json::from_value(e.value.to_json())
            .map_err(|err| self.err(&e.value.span, format!("{name}: {err}")))?;
        Ok((t, value))
    }
}

/// What a declared figure is checked against: the settings, the target languages, and every key
/// some axis gives two or more distinct values (with those values in file order).
fn sweep_facts(
    settings: &[Setting],
    targets: &[String],
    grid: &[Axis],
    zips: &[Zip],
) -> SweepFacts {
    let mut languages = targets.to_vec();
    for l in settings.iter().filter_map(|s| s.targets.as_ref()).flatten() {
        if !languages.contains(l) {
            languages.push(l.clone());
        }
    }
    let mut all: Vec<(String, Vec<Value>)> = Vec::new();
    let mut add = |key: &str, values: &[Value]| {
        let at = match all.iter().position(|(k, _)| k == key) {
            Some(i) => i,
            None => {
                all.push((key.to_string(), Vec::new()));
                all.len() - 1
            }
        };
        for v in values {
            if !all[at].1.iter().any(|x| values_equal(x, v)) {
                all[at].1.push(v.clone());
            }
        }
    };
    for a in grid.iter().chain(settings.iter().flat_map(|s| &s.grid)) {
        add(&a.key, &a.values);
    }
    for z in zips {
        for (i, key) in z.keys.iter().enumerate() {
            let column: Vec<Value> = z.rows.iter().map(|r| r[i].clone()).collect();
            add(key, &column);
        }
    }
    SweepFacts {
        settings: settings.iter().map(|s| s.name.clone()).collect(),
        languages,
        varied: all.into_iter().filter(|(_, v)| v.len() > 1).collect(),
    }
}

/// The strings of a report field that name settings (figure3's `label` is free text).
fn collect_setting_names(node: &Node, out: &mut Vec<(String, Range<usize>)>) {
    match &node.kind {
        NodeKind::Str(s) => out.push((s.clone(), node.span.clone())),
        NodeKind::Array(a) => a.iter().for_each(|n| collect_setting_names(n, out)),
        NodeKind::Table(t) => {
            for e in t {
                // Prose, not setting names: a figure series' label, a compared pair's why.
                if e.key != "label" && e.key != "why" {
                    collect_setting_names(&e.value, out);
                }
            }
        }
        _ => {}
    }
}

fn prefix_err(err: SpecError, prefix: &str) -> SpecError {
    match err {
        SpecError::Invalid {
            file,
            line,
            column,
            message,
        } => SpecError::Invalid {
            file,
            line,
            column,
            message: format!("{prefix}{message}"),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Sweep, SpecError> {
        Sweep::from_text(Path::new("sweeps/t.toml"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    use crate::spec::report::{Facet, FigureY};

    const HEAD: &str = "name = \"t\"\n[base.finetune]\nmodel = \"m\"\n";

    #[test]
    fn minimal_sweep_has_defaults() {
        let s = parse(HEAD).unwrap();
        assert_eq!(s.name, "t");
        assert_eq!(s.store, PathBuf::from("results/store"));
        assert_eq!(s.seeds, vec![0]);
        assert_eq!(s.targets, DEFAULT_TARGETS.to_vec());
        assert_eq!(s.setting_names(), vec!["default"]);
        assert_eq!(s.base_finetune[0].key, "finetune.model");
    }

    #[test]
    fn nested_and_dotted_keys_are_the_same_key() {
        let s = parse(&format!(
            "{HEAD}[grid]\n\"finetune.lr\" = [0.1]\nprime.inner_steps = [1, 5]\n"
        ))
        .unwrap();
        let keys: Vec<_> = s.grid.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, vec!["finetune.lr", "prime.inner_steps"]);
    }

    #[test]
    fn unknown_keys_name_line_and_suggest() {
        let e = err(&format!("{HEAD}[grid]\n\"finetune.lrr\" = [0.1]\n"));
        assert!(e.starts_with("sweeps/t.toml:5:"), "{e}");
        assert!(e.contains("did you mean finetune.lr?"), "{e}");

        let e = err(&format!("{HEAD}epoch = 3\n"));
        assert!(e.starts_with("sweeps/t.toml:4:"), "{e}");
        assert!(e.contains("did you mean finetune.epochs?"), "{e}");

        let e = err(&format!(
            "{HEAD}[grid]\n\"finetune.lerning_rate\" = [0.1]\n"
        ));
        assert!(
            e.starts_with("sweeps/t.toml:5:1:") && e.contains("did you mean finetune.lr?"),
            "{e}"
        );

        let e = err("name = \"t\"\nseed = [1]\n");
        assert!(
            e.starts_with("sweeps/t.toml:2:1:") && e.contains("did you mean seeds?"),
            "{e}"
        );

        let e = err(&format!(
            "{HEAD}[settings.\"a\"]\npriming = \"meta\"\nprime.inner_stpes = 1\n"
        ));
        assert!(
            e.starts_with("sweeps/t.toml:6:") && e.contains("did you mean prime.inner_steps?"),
            "{e}"
        );
    }

    #[test]
    fn type_and_range_errors_name_line_and_key() {
        let e = err(&format!("{HEAD}epochs = \"three\"\n"));
        assert!(
            e.starts_with("sweeps/t.toml:4:")
                && e.contains("finetune.epochs")
                && e.contains("invalid type"),
            "{e}"
        );

        let e = err(&format!(
            "{HEAD}[grid]\n\"finetune.method\" = [\"adapter\", \"adaptr\"]\n"
        ));
        assert!(
            e.starts_with("sweeps/t.toml:5:")
                && e.contains("finetune.method")
                && e.contains("unknown variant"),
            "{e}"
        );

        let e = err(&format!(
            "{HEAD}\n\n[grid]\n\"finetune.lr\" = [1e-3, -1.0]\n"
        ));
        assert!(
            e.starts_with("sweeps/t.toml:7:")
                && e.contains("finetune.lr: a learning rate must be positive"),
            "{e}"
        );

        let e = err(&format!("{HEAD}[grid]\n\"finetune.lr\" = 0.1\n"));
        assert!(e.contains("expected a list of values"), "{e}");

        let e = err(&format!("{HEAD}[grid]\n\"finetune.epochs\" = []\n"));
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn reserved_keys_explain_the_alternative() {
        let e = err(&format!("{HEAD}lang = \"hi\"\n"));
        assert!(e.contains("targets"), "{e}");
        let e = err(&format!("{HEAD}seed = 3\n"));
        assert!(e.contains("seeds"), "{e}");
    }

    #[test]
    fn zip_lengths_must_match() {
        let e = err(&format!(
            "{HEAD}[[zip]]\n\"prime.inner_loop\" = [\"pe\", \"full\"]\n\"prime.inner_lr\" = [0.03]\n"
        ));
        assert!(
            e.starts_with("sweeps/t.toml:6:") && e.contains("equal lengths"),
            "{e}"
        );
    }

    #[test]
    fn settings_check_priming_and_prime_keys() {
        let e = err(&format!("{HEAD}[settings.\"x\"]\npriming = \"maml\"\n"));
        assert!(
            e.starts_with("sweeps/t.toml:5:") && e.contains("\"meta\""),
            "{e}"
        );
        let e = err(&format!(
            "{HEAD}[settings.\"x\"]\n\"prime.inner_steps\" = 1\n"
        ));
        assert!(e.contains("does not prime"), "{e}");
        let s = parse(&format!(
            "{HEAD}[settings.\"b\"]\npriming = \"ft\"\n[settings.\"a\"]\n\"finetune.method\" = \"full\"\ngrid = {{ \"finetune.lr\" = [1e-5, 2e-5] }}\n"
        ))
        .unwrap();
        assert_eq!(s.setting_names(), vec!["b", "a"], "declaration order");
        assert_eq!(s.settings[0].priming, Priming::Ft);
        assert_eq!(s.settings[1].overrides[0].value, Value::from("full"));
        assert_eq!(s.settings[1].grid[0].values.len(), 2);
    }

    #[test]
    fn report_names_must_be_settings() {
        let ok =
            format!("{HEAD}[settings.\"1/Full FT\"]\n[report]\ntable1_rows = [\"1/Full FT\"]\n");
        assert_eq!(parse(&ok).unwrap().report.table1_rows, vec!["1/Full FT"]);
        let e = err(&format!(
            "{HEAD}[settings.\"1/Full FT\"]\n[report]\ntable1_rows = [\"1/Full F\"]\n"
        ));
        assert!(
            e.starts_with("sweeps/t.toml:6:") && e.contains("did you mean \"1/Full FT\""),
            "{e}"
        );
        let e = err(&format!("{HEAD}[report]\ntable_rows = []\n"));
        assert!(
            e.starts_with("sweeps/t.toml:5:") && e.contains("did you mean table1_rows?"),
            "{e}"
        );
        let e = err(&format!(
            "{HEAD}[settings.\"a\"]\n[report]\nfigure3 = [{{ label = \"free text\", setting = \"b\" }}]\n"
        ));
        assert!(e.contains("\"b\" is not a setting"), "{e}");
        // A compared pair's why is prose; its a and b are checked.
        let pairs = |b: &str| {
            format!(
                "{HEAD}[settings.\"a\"]\n[settings.\"b\"]\n[report]\n\
                 compare = [{{ a = \"a\", b = \"{b}\", why = \"free text\" }}]\n"
            )
        };
        let spec = parse(&pairs("b")).unwrap().report;
        assert_eq!(spec.compare[0].why.as_deref(), Some("free text"));
        let e = err(&pairs("c"));
        assert!(e.contains("\"c\" is not a setting"), "{e}");
    }

    #[test]
    fn exclude_rules_are_checked() {
        let e = err(&format!("{HEAD}[[exclude]]\nsetting = \"nope\"\n"));
        assert!(e.contains("not a setting"), "{e}");
        let e = err(&format!(
            "{HEAD}[[exclude]]\n\"finetune.methd\" = \"full\"\n"
        ));
        assert!(
            e.starts_with("sweeps/t.toml:5:") && e.contains("did you mean finetune.method?"),
            "{e}"
        );
    }

    /// Rules that can match nothing are mistakes: a misspelt target, a seed not run.
    #[test]
    fn exclude_rules_name_targets_and_seeds_the_sweep_runs() {
        let e = err(&format!(
            "targets = [\"hi\", \"af\"]\nseeds = [0, 1]\n{HEAD}[[exclude]]\ntarget = \"afr\"\n"
        ));
        assert!(
            e.starts_with("sweeps/t.toml:6:")
                && e.contains("target \"afr\" is not a target of this sweep (targets: hi, af)")
                && e.contains("did you mean \"af\"?"),
            "{e}"
        );
        let e = err(&format!("seeds = [0, 1]\n{HEAD}[[exclude]]\nseed = 7\n"));
        assert!(
            e.contains("seed 7 is not a seed of this sweep (seeds: 0, 1)"),
            "{e}"
        );
        // A setting's own seeds and targets count.
        parse(&format!(
            "seeds = [0]\n{HEAD}[[exclude]]\nseed = 7\ntarget = \"nl\"\n\
             [settings.a]\nseeds = [7]\ntargets = [\"nl\"]\n"
        ))
        .unwrap();
    }

    /// A list entry given twice would be dropped (or a seed counted twice): refused at its line.
    #[test]
    fn lists_refuse_an_entry_given_twice() {
        for (text, want) in [
            ("seeds = [0, 0]\n", "seeds: 0 is listed twice"),
            (
                "targets = [\"hi\", \"hi\"]\n",
                "targets: \"hi\" is listed twice",
            ),
        ] {
            let e = err(&format!("{text}{HEAD}"));
            assert!(e.starts_with("sweeps/t.toml:1:") && e.contains(want), "{e}");
        }
        let e = err(&format!("{HEAD}[grid]\n\"finetune.lr\" = [1e-3, 0.001]\n"));
        assert!(
            e.starts_with("sweeps/t.toml:5:")
                && e.contains("grid: finetune.lr: 0.001 is listed twice"),
            "{e}"
        );
        // In a zip a value may repeat beside different values of the other keys.
        parse(&format!(
            "{HEAD}[[zip]]\n\"finetune.lr\" = [1e-3, 1e-3]\n\"finetune.epochs\" = [1, 2]\n"
        ))
        .unwrap();
    }

    #[test]
    fn a_key_in_the_grid_and_a_zip_is_refused() {
        let e = err(&format!(
            "{HEAD}[grid]\n\"prime.inner_lr\" = [0.01, 0.02]\n[[zip]]\n\
             \"prime.inner_loop\" = [\"pe\", \"full\"]\n\"prime.inner_lr\" = [0.03, 1e-4]\n"
        ));
        assert!(
            e.starts_with("sweeps/t.toml:5:")
                && e.contains("grid: prime.inner_lr is also varied by the [[zip]] at line 6"),
            "{e}"
        );
    }

    #[test]
    fn missing_name_is_reported() {
        assert!(err("[base.finetune]\nmodel = \"m\"\n").contains("missing `name"));
    }

    #[test]
    fn slurm_table_is_parsed_and_checked_per_key() {
        assert_eq!(parse(HEAD).unwrap().slurm, SlurmOptions::default());
        let s = parse(&format!(
            "{HEAD}[slurm]\npartition = \"gpu\"\ngpus_per_task = 1\ntime = \"4:00:00\"\nsbatch_args = [\"--account=nlp\"]\n"
        ))
        .unwrap();
        assert_eq!(s.slurm.partition.as_deref(), Some("gpu"));
        assert_eq!(s.slurm.gpus_per_task, Some(1));
        assert_eq!(s.slurm.sbatch_args, vec!["--account=nlp"]);
        assert_eq!(s.slurm.signal, crate::slurm::options::DEFAULT_SIGNAL);

        let e = err(&format!("{HEAD}[slurm]\npartiton = \"gpu\"\n"));
        assert!(
            e.starts_with("sweeps/t.toml:5:1:") && e.contains("did you mean partition?"),
            "{e}"
        );
        let e = err(&format!("{HEAD}[slurm]\ncpus_per_task = \"four\"\n"));
        assert!(
            e.starts_with("sweeps/t.toml:5:") && e.contains("slurm.cpus_per_task"),
            "{e}"
        );
        let e = err(&format!(
            "{HEAD}[slurm]\npartition = \"gpu\"\ntime = \"2h\"\n"
        ));
        assert!(
            e.starts_with("sweeps/t.toml:6:") && e.contains("'2h' is not a Slurm time"),
            "{e}"
        );
        let e = err(&format!("slurm = 3\n{HEAD}"));
        assert!(e.contains("slurm: expected a table"), "{e}");
    }

    /// A sweep that varies the training size and the learning rate, with `figure` appended to
    /// its [report] (line 10 is the first line of `figure`).
    fn with_figure(figure: &str) -> String {
        format!(
            "name = \"t\"\n[base.finetune]\nmodel = \"m\"\n[grid]\n\
             \"finetune.data.train_limit\" = [50, 100]\n\"finetune.lr\" = [1e-3]\n\
             [settings.\"AT\"]\n[report]\n[[report.figure]]\n{figure}"
        )
    }

    #[test]
    fn declared_figures_are_parsed_with_defaults() {
        let s = parse(&with_figure(
            "name = \"curve\"\nkind = \"line\"\nx = \"finetune.data.train_limit\"\nfilter = { setting = [\"AT\"], \"finetune.data.train_limit\" = [100.0] }\n",
        ))
        .unwrap();
        let f = &s.report.figure[0];
        assert_eq!(
            (f.series.as_str(), f.y, f.facet),
            ("setting", FigureY::TestF1, Facet::Avg)
        );
        assert!(f.log_x());
        assert_eq!(s.report.plotted_keys(), vec!["finetune.data.train_limit"]);
    }

    #[test]
    fn declared_figure_errors_name_file_and_line() {
        let case = |figure: &str, line: usize, says: &str| {
            let e = err(&with_figure(figure));
            assert!(
                e.starts_with(&format!("sweeps/t.toml:{line}:")) && e.contains(says),
                "{figure:?}: {e}"
            );
        };
        let x = "name = \"c\"\nkind = \"line\"\nx = \"finetune.data.train_limit\"\n";
        // Unknown keys, with the nearest valid one.
        case(
            &format!("{x}seires = \"setting\"\n"),
            13,
            "did you mean series?",
        );
        // Values of the wrong kind, at their line.
        case(
            "name = \"c\"\nkind = \"curve\"\nx = \"lang\"\n",
            11,
            "unknown variant `curve`",
        );
        case(&format!("{x}y = \"f1\"\n"), 13, "unknown variant `f1`");
        // A key the sweep does not vary (finetune.lr has one value), or no key at all.
        case(
            "name = \"c\"\nkind = \"line\"\nx = \"finetune.lr\"\n",
            12,
            "finetune.lr\" is not a key this sweep varies (it varies finetune.data.train_limit)",
        );
        case(
            "name = \"c\"\nkind = \"line\"\nx = \"finetune.data.train_limt\"\n",
            12,
            "did you mean finetune.data.train_limit?",
        );
        case(
            &format!("{x}series = \"settings\"\n"),
            13,
            "did you mean setting?",
        );
        case(
            &format!("{x}series = \"finetune.data.train_limit\"\n"),
            13,
            "also x",
        );
        case(
            "name = \"c\"\nkind = \"line\"\nx = \"lang\"\nfacet = \"lang\"\n",
            13,
            "one point per panel",
        );
        // Filters: empty, an empty list, an unknown setting, a value the key never takes.
        case(&format!("{x}filter = {{}}\n"), 13, "filter is empty");
        case(
            &format!("{x}filter = {{ setting = [] }}\n"),
            13,
            "the list is empty",
        );
        case(
            &format!("{x}filter = {{ setting = [\"FT\"] }}\n"),
            13,
            "\"FT\" is not a value of setting",
        );
        case(
            &format!("{x}filter = {{ \"finetune.data.train_limit\" = [70] }}\n"),
            13,
            "70 is not a value of finetune.data.train_limit in this sweep (50, 100)",
        );
        case(
            &format!("{x}filter = {{ \"finetune.lr\" = [1e-3] }}\n"),
            13,
            "a filter names setting, lang or a key",
        );
        // Names: files of their own.
        case(
            "name = \"table1\"\nkind = \"line\"\nx = \"lang\"\n",
            10,
            "a file the report writes",
        );
        case(
            "name = \"a/b\"\nkind = \"line\"\nx = \"lang\"\n",
            10,
            "file name",
        );
        case(
            &format!("{x}[[report.figure]]\n{x}"),
            14,
            "two figures are named \"c\"",
        );
        // A missing key is reported at the figure's [[report.figure]] header.
        case("name = \"c\"\nkind = \"line\"\n", 9, "missing field `x`");
    }
}
