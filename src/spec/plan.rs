//! Expansion of a sweep into runs. Each named setting is expanded over its axes (the global
//! grid and zips, minus what the setting fixes, plus its own grid) × seeds × targets; exclude
//! rules drop combinations. Each combination resolves to a [`FinetuneConfig`] and, for
//! settings that prime, a [`PrimeConfig`]; runs are identified by the hash of their spec, so a
//! priming run is shared by every target language, fine-tuning method and fine-tuning
//! hyperparameter that starts from it.

use super::error::SpecError;
use super::file::{Assign, Priming, Setting, Sweep, get_path, set_path};
use super::hash::content_id;
use super::source::values_equal;
use crate::config::{FinetuneConfig, PrimeConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Bumped when the meaning of a spec changes in a way its fields do not show; part of every id.
pub const SPEC_VERSION: u32 = 1;

/// The two kinds of runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    Prime,
    Finetune,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Prime => "prime",
            RunKind::Finetune => "finetune",
        }
    }
}

impl std::fmt::Display for RunKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fully resolved description of one run: what `spec.json` holds and what is hashed.
/// Paths are kept as written; `device` is always "cpu" here (the device is chosen at execution
/// and is not part of a run's identity); a fine-tuning run names its priming run by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RunSpec {
    Prime {
        config: PrimeConfig,
    },
    Finetune {
        config: FinetuneConfig,
        priming: Option<String>,
    },
}

impl RunSpec {
    pub fn kind(&self) -> RunKind {
        match self {
            RunSpec::Prime { .. } => RunKind::Prime,
            RunSpec::Finetune { .. } => RunKind::Finetune,
        }
    }

    /// The run's identity (16 hex digits of SHA-256 of the canonical spec).
    pub fn id(&self) -> String {
        let spec = serde_json::to_value(self).expect("serialisable");
        content_id(&serde_json::json!({ "spec_version": SPEC_VERSION, "run": spec }))
    }

    /// The directory name of the run in the store: `<kind>-<id>`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.kind(), self.id())
    }

    pub fn seed(&self) -> u64 {
        match self {
            RunSpec::Prime { config } => config.seed,
            RunSpec::Finetune { config, .. } => config.seed,
        }
    }
}

/// One distinct run of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRun {
    pub id: String,
    pub spec: RunSpec,
    /// Indices (into [`Plan::runs`]) of the runs this one starts from.
    pub deps: Vec<usize>,
    /// The settings that use this run, in sweep order.
    pub settings: Vec<String>,
}

impl PlannedRun {
    pub fn kind(&self) -> RunKind {
        self.spec.kind()
    }

    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.kind(), self.id)
    }

    /// Target language (fine-tuning) or the `+`-joined sources (priming).
    pub fn lang(&self) -> String {
        match &self.spec {
            RunSpec::Prime { config } => config.sources.join("+"),
            RunSpec::Finetune { config, .. } => config.lang.clone(),
        }
    }

    /// A short human label: `finetune-1a2b3c4d hi adapter seed 0 (3/AT)`.
    pub fn label(&self) -> String {
        let what = match &self.spec {
            RunSpec::Prime { config } => format!(
                "{} {:?}/{} S={}",
                config.sources.join("+"),
                config.method,
                config.inner_label(),
                config.inner_steps
            )
            .to_lowercase(),
            RunSpec::Finetune { config, .. } => format!("{} {}", config.lang, config.method),
        };
        format!(
            "{}-{} {what} seed {} ({})",
            self.kind(),
            &self.id[..8],
            self.spec.seed(),
            self.settings.join(", ")
        )
    }
}

/// One fine-tuning run as a member of a named setting (a run shared by two settings appears
/// once per setting, so each table row and figure cell sees it).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanEntry {
    pub setting: String,
    pub run: usize,
    pub seed: u64,
    pub lang: String,
    /// The axis values of this combination (for listings).
    pub axes: Vec<(String, Value)>,
}

/// The expansion of a sweep.
#[derive(Debug, Clone)]
pub struct Plan {
    pub sweep_name: String,
    /// The run store, as written in the sweep.
    pub store: PathBuf,
    /// Distinct runs: every priming run first, then the fine-tuning runs, in sweep order.
    pub runs: Vec<PlannedRun>,
    pub entries: Vec<PlanEntry>,
    pub settings: Vec<String>,
    /// Target languages in sweep order (settings' own targets appended).
    pub targets: Vec<String>,
}

impl Plan {
    /// A plan of explicit runs, each with the indices (into `runs`) of the runs it starts
    /// from, all used by one setting and with no report entries: for tools and tests that
    /// schedule runs without a sweep file.
    pub fn from_runs(
        sweep_name: &str,
        store: &Path,
        setting: &str,
        runs: Vec<(RunSpec, Vec<usize>)>,
        targets: Vec<String>,
    ) -> Plan {
        Plan {
            sweep_name: sweep_name.to_string(),
            store: store.to_path_buf(),
            runs: runs
                .into_iter()
                .map(|(spec, deps)| PlannedRun {
                    id: spec.id(),
                    spec,
                    deps,
                    settings: vec![setting.to_string()],
                })
                .collect(),
            entries: vec![],
            settings: vec![setting.to_string()],
            targets,
        }
    }

    /// Expands `sweep`. Fails when the expansion is empty or a combination does not resolve.
    pub fn expand(sweep: &Sweep) -> Result<Plan, SpecError> {
        let mut primes: Vec<PlannedRun> = Vec::new();
        let mut finetunes: Vec<PlannedRun> = Vec::new();
        let mut prime_index: HashMap<String, usize> = HashMap::new();
        let mut ft_index: HashMap<String, usize> = HashMap::new();
        // Entries refer to fine-tuning runs by their index in `finetunes` until the end.
        let mut entries: Vec<PlanEntry> = Vec::new();
        let mut excluded = 0usize;
        let mut targets: Vec<String> = sweep.targets.clone();
        let mut evaluation_sets: HashMap<String, (String, EvaluationKeys)> = HashMap::new();

        for setting in &sweep.settings {
            let axes = setting_axes(sweep, setting);
            let seeds = setting.seeds.clone().unwrap_or_else(|| sweep.seeds.clone());
            let langs = setting
                .targets
                .clone()
                .unwrap_or_else(|| sweep.targets.clone());
            for l in &langs {
                if !targets.contains(l) {
                    targets.push(l.clone());
                }
            }
            for combo in cartesian(&axes) {
                for &seed in &seeds {
                    for lang in &langs {
                        let resolved = resolve(sweep, setting, &combo, seed, lang)?;
                        if sweep.excludes.iter().any(|r| {
                            r.conditions
                                .iter()
                                .all(|(k, v)| rule_matches(k, v, setting, seed, lang, &resolved))
                        }) {
                            excluded += 1;
                            continue;
                        }
                        check_evaluation_sets(
                            sweep,
                            setting,
                            lang,
                            &resolved.finetune,
                            &mut evaluation_sets,
                        )?;
                        let prime_id = match resolved.prime {
                            Some(config) => {
                                let spec = RunSpec::Prime { config };
                                let id = spec.id();
                                let i = *prime_index.entry(id.clone()).or_insert_with(|| {
                                    primes.push(PlannedRun {
                                        id: id.clone(),
                                        spec,
                                        deps: Vec::new(),
                                        settings: Vec::new(),
                                    });
                                    primes.len() - 1
                                });
                                add_setting(&mut primes[i].settings, &setting.name);
                                Some((i, id))
                            }
                            None => None,
                        };
                        let spec = RunSpec::Finetune {
                            config: resolved.finetune,
                            priming: prime_id.as_ref().map(|(_, id)| id.clone()),
                        };
                        let id = spec.id();
                        let fi = *ft_index.entry(id.clone()).or_insert_with(|| {
                            finetunes.push(PlannedRun {
                                id: id.clone(),
                                spec,
                                deps: prime_id.iter().map(|(i, _)| *i).collect(),
                                settings: Vec::new(),
                            });
                            finetunes.len() - 1
                        });
                        add_setting(&mut finetunes[fi].settings, &setting.name);
                        if !entries
                            .iter()
                            .any(|e| e.setting == setting.name && e.run == fi)
                        {
                            entries.push(PlanEntry {
                                setting: setting.name.clone(),
                                run: fi,
                                seed,
                                lang: lang.clone(),
                                axes: combo.iter().map(|a| (a.0.clone(), a.1.clone())).collect(),
                            });
                        }
                    }
                }
            }
        }
        check_one_configuration_per_cell(sweep, &entries)?;
        check_runs_read_what_varies(sweep, &primes)?;
        check_runs_read_what_varies(sweep, &finetunes)?;
        if entries.is_empty() {
            let reason = if excluded > 0 {
                format!("all {excluded} combinations are excluded by [[exclude]] rules")
            } else {
                "no combinations".to_string()
            };
            return Err(SpecError::Empty {
                file: sweep.source.path.clone(),
                reason,
            });
        }
        let offset = primes.len();
        for e in &mut entries {
            e.run += offset;
        }
        let mut runs = primes;
        runs.extend(finetunes);
        Ok(Plan {
            sweep_name: sweep.name.clone(),
            store: sweep.store.clone(),
            runs,
            entries,
            settings: sweep.setting_names(),
            targets,
        })
    }

    /// Indices of the runs that depend on run `i`.
    pub fn dependents(&self, i: usize) -> Vec<usize> {
        (0..self.runs.len())
            .filter(|&j| self.runs[j].deps.contains(&i))
            .collect()
    }

    pub fn count(&self, kind: RunKind) -> usize {
        self.runs.iter().filter(|r| r.kind() == kind).count()
    }
}

fn add_setting(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|s| s == name) {
        list.push(name.to_string());
    }
}

/// One axis of a setting: its alternatives, each a set of key assignments.
type AxisAlts = Vec<Vec<(String, Value)>>;

/// The axes a setting varies over: global grid axes not fixed or replaced by the setting
/// (prime.* axes only for settings that prime), zips filtered by the setting's fixed values,
/// and the setting's own grid.
fn setting_axes(sweep: &Sweep, setting: &Setting) -> Vec<AxisAlts> {
    let applies = |key: &str| setting.priming != Priming::None || !key.starts_with("prime.");
    let fixed = |key: &str| setting.overrides.iter().find(|a| a.key == key);
    let own = |key: &str| setting.grid.iter().find(|a| a.key == key);
    let mut axes: Vec<AxisAlts> = Vec::new();
    let mut used_own: Vec<&str> = Vec::new();
    for axis in &sweep.grid {
        if !applies(&axis.key) || fixed(&axis.key).is_some() {
            continue;
        }
        // A setting's own axis replaces the global one in place.
        let (key, values) = match own(&axis.key) {
            Some(o) => {
                used_own.push(&o.key);
                (&o.key, &o.values)
            }
            None => (&axis.key, &axis.values),
        };
        axes.push(
            values
                .iter()
                .map(|v| vec![(key.clone(), v.clone())])
                .collect(),
        );
    }
    for zip in &sweep.zips {
        // Rows must agree with the values the setting fixes; if none does, the setting's
        // overrides win and the zip does not apply to it.
        let rows: Vec<&Vec<Value>> = zip
            .rows
            .iter()
            .filter(|row| {
                zip.keys
                    .iter()
                    .zip(row.iter())
                    .all(|(k, v)| match fixed(k) {
                        Some(a) => values_equal(&a.value, v),
                        None => true,
                    })
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let mut alts: AxisAlts = Vec::new();
        for row in rows {
            let alt: Vec<(String, Value)> = zip
                .keys
                .iter()
                .zip(row.iter())
                .filter(|(k, _)| applies(k) && fixed(k).is_none() && own(k).is_none())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !alt.is_empty() && !alts.iter().any(|a| assignments_equal(a, &alt)) {
                alts.push(alt);
            }
        }
        if !alts.is_empty() {
            axes.push(alts);
        }
    }
    for o in &setting.grid {
        if !used_own.contains(&o.key.as_str()) {
            axes.push(
                o.values
                    .iter()
                    .map(|v| vec![(o.key.clone(), v.clone())])
                    .collect(),
            );
        }
    }
    axes
}

fn assignments_equal(a: &[(String, Value)], b: &[(String, Value)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.0 == y.0 && values_equal(&x.1, &y.1))
}

/// Every combination of one alternative per axis (the first axis varies slowest).
fn cartesian(axes: &[AxisAlts]) -> Vec<Vec<(String, Value)>> {
    let mut combos: Vec<Vec<(String, Value)>> = vec![Vec::new()];
    for axis in axes {
        let mut next = Vec::with_capacity(combos.len() * axis.len());
        for c in &combos {
            for alt in axis {
                let mut n = c.clone();
                n.extend(alt.iter().cloned());
                next.push(n);
            }
        }
        combos = next;
    }
    combos
}

/// `DataConfig::evaluation_keys` of a fine-tuning run.
type EvaluationKeys = Vec<(&'static str, String)>;

/// Every fine-tuning run of a sweep on one language must be scored on the same dev and test
/// sentences, or seeds and settings could not be compared sentence by sentence: the first run
/// of each language (`seen`, with its setting) fixes them and any other is an error at the
/// setting that differs.
fn check_evaluation_sets(
    sweep: &Sweep,
    setting: &Setting,
    lang: &str,
    finetune: &FinetuneConfig,
    seen: &mut HashMap<String, (String, EvaluationKeys)>,
) -> Result<(), SpecError> {
    let keys = finetune.data.evaluation_keys();
    let (first_setting, first) = seen
        .entry(lang.to_string())
        .or_insert_with(|| (setting.name.clone(), keys.clone()));
    if *first == keys {
        return Ok(());
    }
    let mut differences: Vec<String> = keys
        .iter()
        .filter(|k| !first.contains(k))
        .map(|(key, value)| {
            let other = first
                .iter()
                .find(|f| f.0 == *key)
                .map_or("unset", |f| f.1.as_str());
            format!("{key} = {value} here, {other} there")
        })
        .collect();
    differences.extend(
        first
            .iter()
            .filter(|f| !keys.iter().any(|k| k.0 == f.0))
            .map(|(key, value)| format!("{key} unset here, {value} there")),
    );
    let there = if *first_setting == setting.name {
        "other runs of the same setting".to_string()
    } else {
        format!("setting \"{first_setting}\"")
    };
    Err(sweep.source.error(
        &setting.span,
        format!(
            "setting \"{}\": its runs on '{lang}' would be scored on other dev/test sentences \
             than {there} ({}); every fine-tuning run of a sweep on one language must be scored \
             on the same sentences so that seeds and settings compare: set data.root, \
             data.dev_limit, data.test_limit, data.subsample and data.eval_seed once in \
             [base.finetune], not per setting or axis",
            setting.name,
            differences.join(", ")
        ),
    ))
}

/// Table 1 and the comparisons have one value per setting × language × seed. A setting whose
/// axes give it several configurations there must say how one is chosen (`[report] select`,
/// on dev) for every key that varies; otherwise cells would silently average over
/// configurations. The error names the first setting that varies an unselected key.
fn check_one_configuration_per_cell(sweep: &Sweep, entries: &[PlanEntry]) -> Result<(), SpecError> {
    let selected: &[String] = sweep
        .report
        .select
        .as_ref()
        .map_or(&[], |s| s.over.as_slice());
    // A key a declared figure plots is reported value by value (each value a row of its own in
    // the tables, `crate::report::split`), so it needs no selection.
    let mut plotted = sweep.report.plotted_keys();
    // A key zipped with a plotted key takes one value per value of it (a `[[zip]]` row), so
    // the plotted key's rows already hold one configuration each.
    for zip in &sweep.zips {
        if zip.keys.iter().any(|k| plotted.contains(k)) {
            for k in &zip.keys {
                if !plotted.contains(k) {
                    plotted.push(k.clone());
                }
            }
        }
    }
    let mut cells: HashMap<(&str, &str, u64), Vec<&PlanEntry>> = HashMap::new();
    for e in entries {
        cells
            .entry((e.setting.as_str(), e.lang.as_str(), e.seed))
            .or_default()
            .push(e);
    }
    for setting in &sweep.settings {
        // In sweep order, so that the message lists values as the file does.
        let shared_cells = entries.iter().filter(|e| {
            e.setting == setting.name
                && cells[&(e.setting.as_str(), e.lang.as_str(), e.seed)].len() > 1
        });
        let mut varying: Vec<(String, Vec<String>)> = Vec::new();
        for e in shared_cells {
            for (key, value) in &e.axes {
                let shown = value.to_string();
                match varying.iter_mut().find(|(k, _)| k == key) {
                    Some((_, values)) if !values.contains(&shown) => values.push(shown),
                    Some(_) => {}
                    None => varying.push((key.clone(), vec![shown])),
                }
            }
        }
        let split: Vec<&String> = varying
            .iter()
            .filter(|(k, values)| values.len() > 1 && plotted.contains(k))
            .map(|(k, _)| k)
            .collect();
        if !split.is_empty() {
            let spec = &sweep.report;
            let named_in = [
                ("paper_rows", spec.paper_rows.contains_key(&setting.name)),
                (
                    "figure3",
                    spec.figure3.iter().any(|f| f.setting == setting.name),
                ),
                (
                    "figure4",
                    spec.figure4
                        .iter()
                        .flatten()
                        .flatten()
                        .any(|s| *s == setting.name),
                ),
            ];
            if let Some((field, _)) = named_in.iter().find(|(_, named)| *named) {
                return Err(sweep.source.error(
                    &setting.span,
                    format!(
                        "setting \"{}\" varies {} (plotted by a [[report.figure]]), so it has \
                         one row per value and [report] {field} cannot name it as one cell: name \
                         a setting that fixes the key there",
                        setting.name,
                        split
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(" and ")
                    ),
                ));
            }
        }
        let unselected: Vec<String> = varying
            .iter()
            .filter(|(k, values)| values.len() > 1 && !selected.contains(k) && !plotted.contains(k))
            .map(|(k, values)| format!("{k} over [{}]", values.join(", ")))
            .collect();
        if unselected.is_empty() {
            continue;
        }
        let keys: Vec<String> = varying
            .iter()
            .filter(|(k, v)| v.len() > 1 && !plotted.contains(k))
            .map(|(k, _)| format!("\"{k}\""))
            .collect();
        return Err(sweep.source.error(
            &setting.span,
            format!(
                "setting \"{}\" varies {} for each language and seed, but a table cell holds \
                 one run per setting, language and seed: choose on dev with `select = {{ by = \
                 \"dev_f1\", over = [{}] }}` in [report], or fix the key (a value in the \
                 setting, or a named setting per value)",
                setting.name,
                unselected.join(" and "),
                keys.join(", ")
            ),
        ));
    }
    Ok(())
}

/// A setting whose axes vary a key its run does not read would run the same work once per
/// value: identical priming (FT priming and the inner learning rate), or identical fine-tuning
/// (full FT and the adapter's size). An error at the setting naming the key, rather than
/// duplicate runs that `select` then "chooses" among.
fn check_runs_read_what_varies(sweep: &Sweep, runs: &[PlannedRun]) -> Result<(), SpecError> {
    use crate::config::{FinetuneMethod, PrimingMethod, SupportMode};
    for setting in &sweep.settings {
        // Per run: what it reads, and the configuration as given.
        let mut seen: Vec<(Value, Value)> = Vec::new();
        for run in runs.iter().filter(|r| r.settings.contains(&setting.name)) {
            let (read, given, prefix) = match &run.spec {
                RunSpec::Prime { config } => (
                    serde_json::json!({ "prime": config.without_unread_values() }),
                    serde_json::to_value(config),
                    "prime",
                ),
                RunSpec::Finetune { config, priming } => (
                    serde_json::json!({
                        "finetune": config.without_unread_values(),
                        "priming": priming,
                    }),
                    serde_json::to_value(config),
                    "finetune",
                ),
            };
            let given = given.unwrap_or_default();
            let Some((_, first)) = seen.iter().find(|(r, _)| *r == read) else {
                seen.push((read, given));
                continue;
            };
            let differing: Vec<String> = first
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| given.get(k.as_str()) != Some(v))
                .map(|(k, _)| format!("{prefix}.{k}"))
                .collect();
            let (what, why) = match &run.spec {
                RunSpec::Prime { config } if config.method == PrimingMethod::Ft => (
                    "FT priming",
                    if config.support == SupportMode::Same
                        && differing.iter().any(|k| k == "prime.inner_steps")
                    {
                        " (inner_steps only sizes its batches with support = \"distinct\")"
                    } else {
                        ""
                    },
                ),
                RunSpec::Prime { .. } => ("meta priming", ""),
                RunSpec::Finetune { config, .. } => (
                    match (config.method, config.method.pe_kind()) {
                        (_, Some(pe)) => pe.registration().tuning_label,
                        (FinetuneMethod::Head, None) => "head tuning",
                        _ => "full fine-tuning",
                    },
                    " (it creates no adapter)",
                ),
            };
            return Err(sweep.source.error(
                &setting.span,
                format!(
                    "setting \"{}\" varies {}, which {what} does not read{why}: its runs would \
                     be identical once per value; vary the key only in settings that read it \
                     (a `grid` in those settings), or fix it in this one",
                    setting.name,
                    differing.join(" and "),
                ),
            ));
        }
    }
    Ok(())
}

/// The configurations of one combination, and their JSON (for exclude rules).
struct Resolved {
    finetune: FinetuneConfig,
    prime: Option<PrimeConfig>,
    finetune_json: Value,
    prime_json: Option<Value>,
}

fn resolve(
    sweep: &Sweep,
    setting: &Setting,
    combo: &[(String, Value)],
    seed: u64,
    lang: &str,
) -> Result<Resolved, SpecError> {
    let mut ft = serde_json::to_value(FinetuneConfig::default()).expect("serialisable");
    let mut pr = serde_json::to_value(PrimeConfig::default()).expect("serialisable");
    let mut prime_set: Vec<&str> = Vec::new();
    let assigns = sweep
        .base_finetune
        .iter()
        .chain(&sweep.base_prime)
        .chain(&setting.overrides)
        .map(|a: &Assign| (a.key.as_str(), &a.value))
        .chain(combo.iter().map(|(k, v)| (k.as_str(), v)));
    for (key, value) in assigns {
        if let Some(rest) = key.strip_prefix("finetune.") {
            set_path(&mut ft, rest, value.clone());
        } else if let Some(rest) = key.strip_prefix("prime.") {
            set_path(&mut pr, rest, value.clone());
            prime_set.push(rest);
        }
    }
    // A primed checkpoint derives from the model that is fine-tuned, and sources live beside
    // the targets, unless the sweep says otherwise.
    for path in ["model", "data.root"] {
        if !prime_set.contains(&path)
            && let Some(v) = get_path(&ft, path).cloned()
        {
            set_path(&mut pr, path, v);
        }
    }
    set_path(&mut ft, "lang", Value::from(lang));
    set_path(&mut ft, "seed", Value::from(seed));
    set_path(&mut ft, "device", Value::from("cpu"));
    set_path(&mut ft, "init", Value::Null);
    set_path(&mut pr, "seed", Value::from(seed));
    set_path(&mut pr, "device", Value::from("cpu"));
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        sweep.source.error(
            &setting.span,
            format!(
                "setting \"{}\": the resolved {what} configuration is invalid: {e}",
                setting.name
            ),
        )
    };
    // A rule about a key points at the line that sets it (this setting's value or axis, a
    // global axis or zip), else at the setting.
    let invalid_value = |section: &str, what: &str, e: &crate::config::ValueError| {
        let key = format!("{section}.{}", e.key);
        let span = setting
            .overrides
            .iter()
            .find(|a| a.key == key)
            .map(|a| &a.span)
            .or_else(|| setting.grid.iter().find(|a| a.key == key).map(|a| &a.span))
            .or_else(|| sweep.grid.iter().find(|a| a.key == key).map(|a| &a.span))
            .or_else(|| {
                sweep
                    .zips
                    .iter()
                    .find(|z| z.keys.contains(&key))
                    .map(|z| &z.span)
            })
            .unwrap_or(&setting.span);
        sweep.source.error(
            span,
            format!(
                "setting \"{}\": the resolved {what} configuration is invalid: {e}",
                setting.name
            ),
        )
    };
    let finetune: FinetuneConfig =
        serde_json::from_value(ft.clone()).map_err(|e| invalid("fine-tuning", &e))?;
    finetune
        .check_values()
        .map_err(|e| invalid_value("finetune", "fine-tuning", &e))?;
    let (prime, prime_json) = match setting.priming.method() {
        Some(method) => {
            set_path(
                &mut pr,
                "method",
                serde_json::to_value(method).expect("serialisable"),
            );
            let config: PrimeConfig =
                serde_json::from_value(pr.clone()).map_err(|e| invalid("priming", &e))?;
            config
                .check_values()
                .map_err(|e| invalid_value("prime", "priming", &e))?;
            (Some(config), Some(pr))
        }
        None => (None, None),
    };
    Ok(Resolved {
        finetune,
        prime,
        finetune_json: ft,
        prime_json,
    })
}

/// Whether one exclude condition holds for a resolved combination. Conditions on prime.*
/// keys never hold for settings without priming.
fn rule_matches(
    key: &str,
    value: &Value,
    setting: &Setting,
    seed: u64,
    lang: &str,
    r: &Resolved,
) -> bool {
    match key {
        "setting" => value.as_str() == Some(setting.name.as_str()),
        "target" => value.as_str() == Some(lang),
        "seed" => value.as_u64() == Some(seed),
        _ => {
            let actual = if let Some(rest) = key.strip_prefix("finetune.") {
                get_path(&r.finetune_json, rest)
            } else if let Some(rest) = key.strip_prefix("prime.") {
                r.prime_json.as_ref().and_then(|p| get_path(p, rest))
            } else {
                None
            };
            actual.is_some_and(|a| values_equal(a, value))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FinetuneMethod, InnerLoop, PrimingMethod};
    use std::path::Path;

    fn plan(text: &str) -> Plan {
        let sweep = Sweep::from_text(Path::new("t.toml"), text).unwrap();
        Plan::expand(&sweep).unwrap()
    }

    fn ft(r: &PlannedRun) -> &FinetuneConfig {
        match &r.spec {
            RunSpec::Finetune { config, .. } => config,
            _ => panic!("not fine-tuning"),
        }
    }

    fn pr(r: &PlannedRun) -> &PrimeConfig {
        match &r.spec {
            RunSpec::Prime { config } => config,
            _ => panic!("not priming"),
        }
    }

    const PAPERISH: &str = r#"
name = "t"
seeds = [1, 2]
targets = ["hi", "af", "az"]
[base.finetune]
model = "m"
epochs = 2
[base.prime]
steps = 10
[grid]
"finetune.lr" = [1e-3, 3e-3]
"prime.inner_steps" = [1, 5]
[[zip]]
"prime.inner_loop" = ["pe", "full"]
"prime.inner_lr" = [0.03, 1e-4]
[[exclude]]
"prime.inner_loop" = "full"
"prime.inner_steps" = 1
[settings."3/AT"]
[settings."4/MP"]
priming = "meta"
[settings."5/FT"]
priming = "ft"
"prime.inner_loop" = "pe"
"prime.inner_steps" = 5
[settings."1/Full"]
"finetune.method" = "full"
"finetune.lr" = 5e-5
[report]
select = { by = "dev_f1", over = ["finetune.lr", "prime.inner_steps", "prime.inner_loop", "prime.inner_lr"] }
"#;

    #[test]
    fn grid_zip_exclude_settings_seeds_targets_counts() {
        let p = plan(PAPERISH);
        // 3/AT: lr(2) × seeds(2) × targets(3) = 12 (prime axes do not apply).
        // 4/MP: lr(2) × steps(2) × zip(2) - excluded (full, S=1) = 6 per seed/target → 36.
        // 5/FT: lr(2), steps and loop fixed, zip filtered to the pe row → 2 × 6 = 12.
        // 1/Full: lr fixed → 1 × 6 = 6.
        let count = |s: &str| p.entries.iter().filter(|e| e.setting == s).count();
        assert_eq!(count("3/AT"), 12);
        assert_eq!(count("4/MP"), 36);
        assert_eq!(count("5/FT"), 12);
        assert_eq!(count("1/Full"), 6);
        // Priming runs are shared across targets and fine-tuning lr: 4/MP has 3 configs × 2
        // seeds, 5/FT one config × 2 seeds.
        assert_eq!(p.count(RunKind::Prime), 8);
        assert_eq!(p.count(RunKind::Finetune), 66);
        assert!(
            p.runs[..8].iter().all(|r| r.kind() == RunKind::Prime),
            "priming first"
        );
        for r in &p.runs[8..] {
            for &d in &r.deps {
                assert_eq!(p.runs[d].kind(), RunKind::Prime);
                if let RunSpec::Finetune { priming, .. } = &r.spec {
                    assert_eq!(priming.as_deref(), Some(p.runs[d].id.as_str()));
                }
            }
        }
        // Each priming run is used by 2 lr × 3 targets = 6 fine-tuning runs.
        for i in 0..8 {
            assert_eq!(p.dependents(i).len(), 6, "{}", p.runs[i].label());
        }
    }

    #[test]
    fn resolved_values_follow_base_axes_and_settings() {
        let p = plan(PAPERISH);
        let full: Vec<_> = p
            .entries
            .iter()
            .filter(|e| e.setting == "1/Full")
            .map(|e| ft(&p.runs[e.run]))
            .collect();
        assert!(
            full.iter()
                .all(|c| c.method == FinetuneMethod::Full && c.lr == Some(5e-5) && c.epochs == 2)
        );
        assert!(full.iter().all(|c| c.init.is_none() && c.device == "cpu"));
        let seeds: Vec<u64> = full.iter().map(|c| c.seed).collect();
        assert_eq!(seeds, vec![1, 1, 1, 2, 2, 2]);
        let langs: Vec<&str> = full.iter().map(|c| c.lang.as_str()).collect();
        assert_eq!(langs, vec!["hi", "af", "az", "hi", "af", "az"]);
        for r in p.runs.iter().filter(|r| r.kind() == RunKind::Prime) {
            let c = pr(r);
            assert_eq!(c.steps, 10);
            assert_eq!(
                c.model,
                PathBuf::from("m"),
                "prime.model follows finetune.model"
            );
            match c.inner_loop {
                InnerLoop::Pe => assert_eq!(c.inner_lr, Some(0.03)),
                InnerLoop::Full => {
                    assert_eq!(c.inner_lr, Some(1e-4));
                    assert_eq!(c.inner_steps, 5, "the (full, S=1) combination is excluded");
                }
            }
            if r.settings == ["5/FT"] {
                assert_eq!(c.method, PrimingMethod::Ft);
                assert_eq!((c.inner_loop, c.inner_steps), (InnerLoop::Pe, 5));
            } else {
                assert_eq!(c.method, PrimingMethod::Meta);
            }
            // The seed axis sets the priming seed and the seeds of its dependents.
            for j in p.dependents(p.runs.iter().position(|x| x.id == r.id).unwrap()) {
                assert_eq!(ft(&p.runs[j]).seed, c.seed);
            }
        }
    }

    #[test]
    fn setting_grid_replaces_global_axis_and_exclude_can_name_setting_and_target() {
        let p = plan(
            r#"
name = "t"
targets = ["hi", "af"]
[base.finetune]
model = "m"
[grid]
"finetune.lr" = [1e-3, 3e-3]
"finetune.epochs" = [1, 2]
[[exclude]]
setting = "b"
target = "af"
[settings.a]
[settings.b]
grid = { "finetune.lr" = [7e-4], "finetune.batch_size" = [8, 32] }
[report]
select = { by = "dev_f1", over = ["finetune.lr", "finetune.epochs", "finetune.batch_size"] }
"#,
        );
        let a: Vec<_> = p.entries.iter().filter(|e| e.setting == "a").collect();
        let b: Vec<_> = p.entries.iter().filter(|e| e.setting == "b").collect();
        assert_eq!(a.len(), 2 * 2 * 2);
        assert_eq!(
            b.len(),
            2 * 2,
            "lr replaced by one value, × batch 2 × epochs 2, af excluded"
        );
        assert!(
            b.iter()
                .all(|e| e.lang == "hi" && ft(&p.runs[e.run]).lr == Some(7e-4))
        );
        let batches: Vec<usize> = b.iter().map(|e| ft(&p.runs[e.run]).batch_size).collect();
        assert_eq!(batches, vec![8, 32, 8, 32]);
    }

    #[test]
    fn identical_runs_are_shared_between_settings() {
        let p = plan(
            r#"
name = "t"
targets = ["hi"]
[base.finetune]
model = "m"
[settings."1/Full FT"]
"finetune.method" = "full"
[settings."fig3/no priming"]
"finetune.method" = "full"
"#,
        );
        assert_eq!(p.runs.len(), 1);
        assert_eq!(p.entries.len(), 2);
        assert_eq!(p.runs[0].settings, vec!["1/Full FT", "fig3/no priming"]);
    }

    #[test]
    fn empty_expansion_is_an_error() {
        let sweep = Sweep::from_text(
            Path::new("t.toml"),
            "name = \"t\"\ntargets = [\"hi\"]\n[base.finetune]\nmodel = \"m\"\n[[exclude]]\ntarget = \"hi\"\n",
        )
        .unwrap();
        let e = Plan::expand(&sweep).unwrap_err().to_string();
        assert!(
            e.contains("expands to no runs") && e.contains("excluded"),
            "{e}"
        );
    }

    const SEEDED_EVAL: &str = r#"
name = "t"
seeds = [1, 2, 3]
targets = ["hi", "af"]
[base.finetune]
model = "m"
data = { root = "data/wikiann", train_limit = 20, dev_limit = 10, test_limit = 30, subsample = "seeded" }
[grid]
"finetune.lr" = [1e-3, 3e-3]
[settings."AT"]
"finetune.method" = "adapter"
[settings."Full"]
"finetune.method" = "full"
[settings."MP"]
priming = "meta"
[report]
select = { by = "dev_f1", over = ["finetune.lr"] }
"#;

    #[test]
    fn every_run_of_a_language_is_scored_on_the_same_sentences() {
        let p = plan(SEEDED_EVAL);
        for lang in ["hi", "af"] {
            let runs: Vec<&FinetuneConfig> = p
                .runs
                .iter()
                .filter(|r| r.kind() == RunKind::Finetune)
                .map(ft)
                .filter(|c| c.lang == lang)
                .collect();
            // 3 settings × 2 lrs × 3 seeds.
            assert_eq!(runs.len(), 18);
            let first = crate::data::load_language(&runs[0].data, lang, runs[0].seed).unwrap();
            let mut train_draws = std::collections::BTreeSet::new();
            for c in &runs {
                assert_eq!(c.data.evaluation_keys(), runs[0].data.evaluation_keys());
                let d = crate::data::load_language(&c.data, lang, c.seed).unwrap();
                assert_eq!(d.dev, first.dev, "{lang} seed {}", c.seed);
                assert_eq!(d.test, first.test, "{lang} seed {}", c.seed);
                train_draws.insert(format!("{:?}", d.train));
            }
            // Training subsets still follow the seed (train_seed = "run").
            assert_eq!(train_draws.len(), 3, "{lang}");
        }
    }

    #[test]
    fn a_setting_scored_on_other_sentences_is_an_error_at_its_line() {
        let text = SEEDED_EVAL.replace(
            "priming = \"meta\"\n",
            "priming = \"meta\"\n\"finetune.data.test_limit\" = 100\n",
        );
        let sweep = Sweep::from_text(Path::new("t.toml"), &text).unwrap();
        let e = Plan::expand(&sweep).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:14:"), "{e}");
        assert!(
            e.contains("setting \"MP\"")
                && e.contains("than setting \"AT\"")
                && e.contains("data.test_limit = 100 here, 30 there")
                && e.contains("[base.finetune]"),
            "{e}"
        );
        // A different eval seed under seeded subsampling is another set of sentences too.
        let text = SEEDED_EVAL.replace(
            "[settings.\"MP\"]",
            "\"finetune.data.eval_seed\" = 4\n[settings.\"MP\"]",
        );
        let sweep = Sweep::from_text(Path::new("t.toml"), &text).unwrap();
        let e = Plan::expand(&sweep).unwrap_err().to_string();
        assert!(
            e.contains("setting \"Full\"") && e.contains("data.eval_seed = 4 here, 0 there"),
            "{e}"
        );
    }

    /// `prime.inner_params = "adapter"` is what no value means: the same runs, the same ids
    /// (so stores made before the key existed are reused); `lora` is another priming run.
    #[test]
    fn inner_params_adapter_is_the_default_run() {
        let text = |extra: &str| {
            format!(
                "name = \"t\"\ntargets = [\"hi\"]\n[base.finetune]\nmodel = \".\"\n\
                 [settings.p]\npriming = \"meta\"\n{extra}"
            )
        };
        let ids = |extra: &str| -> Vec<String> {
            let sweep = Sweep::from_text(Path::new("t.toml"), &text(extra)).unwrap();
            Plan::expand(&sweep)
                .unwrap()
                .runs
                .iter()
                .map(|r| r.id.clone())
                .collect()
        };
        assert_eq!(ids(""), ids("\"prime.inner_params\" = \"adapter\"\n"));
        let lora = ids("\"prime.inner_params\" = \"lora\"\n\"finetune.method\" = \"lora\"\n");
        assert!(ids("").iter().all(|id| !lora.contains(id)));
        // A LoRA key with another method is an error at its line.
        let e = Sweep::from_text(
            Path::new("t.toml"),
            &text("\"finetune.method\" = \"bitfit\"\n\"finetune.lora_r\" = 4\n"),
        )
        .and_then(|s| Plan::expand(&s))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("t.toml:8:"), "{e}");
        assert!(
            e.contains("lora_r")
                && e.contains("setting of the lora method")
                && e.contains("bitfit"),
            "{e}"
        );
    }

    /// `precision = "auto"` is what no value means: the same runs, the same ids (stores made
    /// before the key existed are reused); an explicit precision is another run — of
    /// fine-tuning alone for `finetune.precision`, of priming and the fine-tuning after it for
    /// `prime.precision`. A value that is not a precision is an error at its line.
    #[test]
    fn precision_auto_is_the_default_run_and_an_explicit_one_another() {
        let text = |extra: &str| {
            format!(
                "name = \"t\"\ntargets = [\"hi\"]\n[base.finetune]\nmodel = \".\"\n\
                 [settings.p]\npriming = \"meta\"\n{extra}"
            )
        };
        let ids = |extra: &str| -> (Vec<String>, Vec<String>) {
            let sweep = Sweep::from_text(Path::new("t.toml"), &text(extra)).unwrap();
            let plan = Plan::expand(&sweep).unwrap();
            let of = |kind| {
                (plan.runs.iter())
                    .filter(|r| r.kind() == kind)
                    .map(|r| r.id.clone())
                    .collect()
            };
            (of(RunKind::Prime), of(RunKind::Finetune))
        };
        let (prime, finetune) = ids("");
        assert_eq!(
            (prime.clone(), finetune.clone()),
            ids("\"finetune.precision\" = \"auto\"\n\"prime.precision\" = \"auto\"\n")
        );
        let (p, f) = ids("\"finetune.precision\" = \"bf16\"\n");
        assert_eq!(p, prime, "fine-tuning's precision is not priming's");
        assert!(f.iter().all(|id| !finetune.contains(id)));
        let (p, f) = ids("\"prime.precision\" = \"fp32\"\n");
        assert!(p.iter().all(|id| !prime.contains(id)));
        assert!(
            f.iter().all(|id| !finetune.contains(id)),
            "they start elsewhere"
        );
        let e = Sweep::from_text(
            Path::new("t.toml"),
            &text("\"finetune.precision\" = \"fp16\"\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("t.toml:7:"), "{e}");
        assert!(
            e.contains("finetune.precision") && e.contains("fp16") && e.contains("bf16"),
            "{e}"
        );
    }

    #[test]
    fn a_key_varied_within_a_setting_must_be_selected_on_dev() {
        let text = SEEDED_EVAL.replace("over = [\"finetune.lr\"]", "over = []");
        let sweep = Sweep::from_text(Path::new("t.toml"), &text).unwrap();
        let e = Plan::expand(&sweep).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:10:"), "{e}");
        assert!(
            e.contains("setting \"AT\" varies finetune.lr over [0.001, 0.003]")
                && e.contains("over = [\"finetune.lr\"]"),
            "{e}"
        );
        // A key that takes one value per setting is no variation.
        let text = SEEDED_EVAL
            .replace("over = [\"finetune.lr\"]", "over = []")
            .replace("[1e-3, 3e-3]", "[1e-3]");
        Plan::expand(&Sweep::from_text(Path::new("t.toml"), &text).unwrap()).unwrap();
        // Selected keys must be keys.
        let text = SEEDED_EVAL.replace("over = [\"finetune.lr\"]", "over = [\"finetune.lrr\"]");
        let e = Sweep::from_text(Path::new("t.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("report.select.over: unknown key finetune.lrr: did you mean finetune.lr?"),
            "{e}"
        );
    }

    #[test]
    fn a_key_its_runs_do_not_read_cannot_vary_within_a_setting() {
        let sweep = |grid: &str, extra: &str| {
            format!(
                "name = \"t\"\nseeds = [1]\ntargets = [\"hi\"]\n[base.finetune]\nmodel = \"m\"\n\
                 [base.prime]\nsteps = 10\n{extra}[grid]\n{grid}\n\
                 [settings.\"MP\"]\npriming = \"meta\"\n[settings.\"FT\"]\npriming = \"ft\"\n\
                 [report]\nselect = {{ by = \"dev_f1\", over = [\"prime.inner_steps\", \
                 \"prime.inner_lr\", \"prime.ft_lr\"] }}\n"
            )
        };
        let err = |text: String| {
            Plan::expand(&Sweep::from_text(Path::new("t.toml"), &text).unwrap())
                .unwrap_err()
                .to_string()
        };
        // FT priming reads neither the inner learning rate nor, with the same support batch
        // for every inner step, the number of steps.
        for (grid, key) in [
            ("\"prime.inner_lr\" = [0.01, 0.03]", "prime.inner_lr"),
            ("\"prime.inner_steps\" = [1, 5]", "prime.inner_steps"),
        ] {
            let e = err(sweep(grid, ""));
            assert!(e.starts_with("t.toml:12:"), "{e}");
            assert!(
                e.contains(&format!(
                    "setting \"FT\" varies {key}, which FT priming does not read"
                )),
                "{e}"
            );
        }
        // Meta priming does not read FT priming's learning rate.
        let e = err(sweep("\"prime.ft_lr\" = [1e-4, 1e-3]", ""));
        assert!(
            e.starts_with("t.toml:10:")
                && e.contains(
                    "setting \"MP\" varies prime.ft_lr, which meta priming does not read"
                ),
            "{e}"
        );
        // With a support batch per inner step, FT priming draws S + 1 batches: inner_steps
        // changes what it trains on, so both settings may vary it.
        let p = plan(&sweep(
            "\"prime.inner_steps\" = [1, 5]",
            "support = \"distinct\"\n",
        ));
        assert_eq!(p.count(RunKind::Prime), 4);
        // Full fine-tuning creates no adapter, so its size is not read either; adapter tuning
        // reads it.
        let text = |method: &str| {
            format!(
                "name = \"t\"\nseeds = [1]\ntargets = [\"hi\"]\n[base.finetune]\nmodel = \"m\"\n\
                 [grid]\n\"finetune.adapter_dim\" = [8, 16]\n[settings.\"S\"]\n\
                 \"finetune.method\" = \"{method}\"\n[report]\n\
                 select = {{ by = \"dev_f1\", over = [\"finetune.adapter_dim\"] }}\n"
            )
        };
        let e = err(text("full"));
        assert!(
            e.contains(
                "setting \"S\" varies finetune.adapter_dim, which full fine-tuning does not read"
            ),
            "{e}"
        );
        assert_eq!(plan(&text("adapter")).count(RunKind::Finetune), 2);
    }

    /// Every ranged field at and around its boundaries gets one verdict from the sweep file's
    /// checks (`primer plan` / `primer run`) and from the run itself (`primer finetune` /
    /// `primer prime` validate before anything runs): the rules live in `crate::config`.
    #[test]
    fn boundaries_get_the_same_verdict_from_sweeps_and_runs() {
        // (key, TOML value, valid?)
        let cases: &[(&str, &str, bool)] = &[
            ("finetune.warmup_ratio", "0.0", true),
            ("finetune.warmup_ratio", "0.99", true),
            ("finetune.warmup_ratio", "1.0", false),
            ("finetune.warmup_ratio", "-0.1", false),
            ("finetune.epochs", "0", false),
            ("finetune.epochs", "1", true),
            ("finetune.batch_size", "0", false),
            ("finetune.lr", "0.0", false),
            ("finetune.lr", "1e-9", true),
            ("finetune.weight_decay", "-0.01", false),
            ("finetune.weight_decay", "0.0", true),
            ("finetune.adapter_dim", "0", false),
            ("finetune.dropout", "0.0", true),
            ("finetune.dropout", "1.0", false),
            ("finetune.data.max_len", "2", false),
            ("finetune.data.max_len", "3", true),
            ("finetune.data.train_limit", "0", false),
            ("finetune.data.test_limit", "1", true),
            ("prime.warmup_ratio", "1.0", false),
            ("prime.warmup_ratio", "0.5", true),
            ("prime.outer_lr", "0.0", true),
            ("prime.outer_lr", "-1e-5", false),
            ("prime.ft_lr", "-1e-5", false),
            ("prime.inner_lr", "0.0", false),
            ("prime.inner_lr", "0.03", true),
            ("prime.steps", "0", false),
            ("prime.inner_steps", "0", false),
            ("prime.tasks_per_step", "0", false),
            ("prime.support_batch_size", "0", false),
            ("prime.query_batch_size", "1", true),
            ("prime.dropout", "1.0", false),
            ("prime.data.dev_limit", "0", false),
            ("prime.sources", "[]", false),
            ("prime.sources", "[\"en\", \"en\"]", false),
            ("prime.select", "\"best-dev\"", false),
            // PE settings: a key of a method the run does not use is an error (the default
            // fine-tuning method and priming module are the adapter).
            ("finetune.adapter_layers", "\"all\"", true),
            ("finetune.lora_r", "4", false),
            ("finetune.lora_targets", "[\"query\"]", false),
            ("prime.lora_alpha", "8.0", false),
            ("prime.inner_params", "\"lora\"", true),
            ("prime.inner_params", "\"adapter\"", true),
            ("prime.inner_params", "\"full\"", false),
        ];
        for &(key, value, valid) in cases {
            let text = format!(
                "name = \"t\"\ntargets = [\"hi\"]\n[base.finetune]\nmodel = \".\"\n\
                 [settings.p]\npriming = \"meta\"\n\"{key}\" = {value}\n"
            );
            let swept = Sweep::from_text(Path::new("t.toml"), &text).and_then(|s| Plan::expand(&s));
            let (section, rest) = key.split_once('.').unwrap();
            let parsed: toml::Value = toml::from_str(&format!("v = {value}")).unwrap();
            let value_json = serde_json::to_value(&parsed["v"]).unwrap();
            let (rules, run_verdict) = if section == "finetune" {
                let mut json = serde_json::to_value(FinetuneConfig::default()).unwrap();
                set_path(&mut json, rest, value_json);
                let mut c: FinetuneConfig = serde_json::from_value(json).unwrap();
                c.model = PathBuf::from(".");
                c.lang = "hi".into();
                let run = crate::train::finetune::validate(&c).map_err(|e| e.to_string());
                (c.value_errors(), run)
            } else {
                let mut json = serde_json::to_value(PrimeConfig::default()).unwrap();
                set_path(&mut json, rest, value_json);
                let mut c: PrimeConfig = serde_json::from_value(json).unwrap();
                c.model = PathBuf::from(".");
                let run = crate::prime::run::validate(&c).map_err(|e| e.to_string());
                (c.value_errors(), run)
            };
            assert_eq!(rules.is_empty(), valid, "{key} = {value}: {rules:?}");
            assert_eq!(
                swept.is_ok(),
                valid,
                "{key} = {value} in a sweep: {swept:?}"
            );
            assert_eq!(
                run_verdict.is_ok(),
                valid,
                "{key} = {value} in a run: {run_verdict:?}"
            );
            if let (Err(sweep_err), Err(run_err)) = (&swept, &run_verdict) {
                // The same words: the rule's problem in both messages.
                let problem = &rules[0].problem;
                assert!(
                    sweep_err.to_string().contains(problem) && run_err.contains(problem),
                    "{key} = {value}: rule {problem:?}, sweep {sweep_err}, run {run_err}"
                );
            }
        }
    }

    fn ft_spec(f: impl FnOnce(&mut FinetuneConfig)) -> RunSpec {
        let mut config = FinetuneConfig {
            model: PathBuf::from("models/tiny"),
            lang: "hi".into(),
            ..FinetuneConfig::default()
        };
        f(&mut config);
        RunSpec::Finetune {
            config,
            priming: None,
        }
    }

    #[test]
    fn run_id_is_pinned_stable_and_sensitive() {
        // Pinned: a change here means every stored run gets a new id (and is recomputed).
        // It changes whenever FinetuneConfig gains a field, which is intended: the field's
        // value is part of what a run computed.
        assert_eq!(ft_spec(|_| {}).id(), "68239e2a9a9b8d18");
        assert_eq!(ft_spec(|_| {}).id(), ft_spec(|_| {}).id());
        let base = ft_spec(|_| {}).id();
        assert_ne!(ft_spec(|c| c.lr = Some(1e-3)).id(), base);
        assert_ne!(ft_spec(|c| c.data.train_limit = Some(10)).id(), base);
        assert_ne!(ft_spec(|c| c.seed = 1).id(), base);
        assert_ne!(
            ft_spec(|c| c.model = PathBuf::from("./models/tiny")).id(),
            base,
            "paths are hashed as written"
        );
        let primed = RunSpec::Finetune {
            config: match ft_spec(|_| {}) {
                RunSpec::Finetune { config, .. } => config,
                _ => unreachable!(),
            },
            priming: Some("0123456789abcdef".into()),
        };
        assert_ne!(primed.id(), base);
        assert_eq!(base.len(), 16);
    }

    #[test]
    fn a_key_a_figure_plots_may_vary_without_selection_but_is_no_single_cell() {
        let figure =
            "[[report.figure]]\nname = \"c\"\nkind = \"line\"\nx = \"finetune.data.train_limit\"\n";
        let text = SEEDED_EVAL.replace(
            "[settings.\"AT\"]",
            "\"finetune.data.train_limit\" = [20, 40]\n[settings.\"AT\"]",
        );
        let p = plan(&format!("{text}{figure}"));
        // 3 settings x 2 lrs x 2 sizes x 3 seeds x 2 languages.
        assert_eq!(p.entries.len(), 72);
        // Without the figure, the size is an unselected key.
        let e = Plan::expand(&Sweep::from_text(Path::new("t.toml"), &text).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("varies finetune.data.train_limit over [20, 40]"),
            "{e}"
        );
        // A setting split by the plotted key cannot be one cell of figure 4.
        let text = format!(
            "{}figure4 = [[\"AT\", \"Full\"], [\"MP\", \"AT\"]]\n{figure}",
            text
        );
        let e = Plan::expand(&Sweep::from_text(Path::new("t.toml"), &text).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.toml:11:") && e.contains("[report] figure4 cannot name it"),
            "{e}"
        );
    }
}
