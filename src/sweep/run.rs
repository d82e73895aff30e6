//! The store's view of a plan, whatever the backend: the inputs a plan needs, the observed
//! state of every run (`primer plan` / `primer status`), the run time left, the checkpoint
//! garbage collector, and the report input.

use super::error::SweepError;
use crate::report::{PrimingRunRecord, ReportInput, RunMeta, RunRecord};
use crate::spec::file::Sweep;
use crate::spec::plan::{Plan, PlannedRun, RunKind, RunSpec};
use crate::store::{Observed, ObservedRun, RunState, Store, layout};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Checks that every model folder and data directory the plan uses exists. Returns one line
/// per missing input.
pub fn missing_inputs(plan: &Plan) -> Vec<String> {
    let mut missing: Vec<String> = Vec::new();
    let mut note = |m: String| {
        if !missing.contains(&m) {
            missing.push(m);
        }
    };
    // Many runs share a data folder: each is checked (and a missing one described) once.
    let mut checked: std::collections::HashSet<PathBuf> = Default::default();
    for run in &plan.runs {
        let (model, root, langs) = match &run.spec {
            RunSpec::Prime { config } => (&config.model, &config.data.root, config.sources.clone()),
            RunSpec::Finetune { config, .. } => {
                (&config.model, &config.data.root, vec![config.lang.clone()])
            }
        };
        if !model.join("config.json").is_file() {
            note(format!(
                "model folder {} (no config.json there)",
                model.display()
            ));
        }
        if !root.is_dir() {
            // One line for the root rather than one per language under it.
            note(crate::data::reader::missing_language_hint(root));
            continue;
        }
        for lang in langs {
            let dir = root.join(&lang);
            if checked.insert(dir.clone()) && !dir.is_dir() {
                let hint = crate::data::reader::missing_language_hint(root);
                // Language codes are two or three letters, so only a single one-edit
                // neighbour is a plausible typo (`hx` for `hi`; `ex` could be en, es or et).
                let close: Vec<String> = crate::data::reader::language_dirs(root)
                    .into_iter()
                    .filter(|l| crate::spec::source::edit_distance(&lang, l) == 1)
                    .collect();
                let guess = match close.as_slice() {
                    [one] => format!(" (did you mean {one}?)"),
                    _ => String::new(),
                };
                note(format!(
                    "data directory {} (language {lang}){guess}: {hint}",
                    dir.display()
                ));
            }
        }
    }
    missing
}

/// Reads every language's data once, as its runs will, and returns one line per file that
/// cannot be used (a malformed line, an unknown tag, a missing split), each naming the file and
/// line. Run by `primer run` before anything starts: without it a bad target file is found by
/// every fine-tuning run of that language, each retried, after the priming runs they wait for.
/// Languages whose folder is missing are left to [`missing_inputs`].
pub fn unreadable_inputs(plan: &Plan) -> Vec<String> {
    let mut problems = model_problems(plan);
    // Whether a file is usable depends on its path and the tag check only, not on limits or
    // seeds, so each (root, language, strictness) is read once.
    let mut seen: std::collections::HashSet<(PathBuf, String, bool)> = Default::default();
    for run in &plan.runs {
        let (data, langs) = match &run.spec {
            RunSpec::Prime { config } => (&config.data, config.sources.clone()),
            RunSpec::Finetune { config, .. } => (&config.data, vec![config.lang.clone()]),
        };
        for lang in langs {
            if !data.root.join(&lang).is_dir()
                || !seen.insert((data.root.clone(), lang.clone(), data.strict_iob2))
            {
                continue;
            }
            if let Err(e) = crate::data::load_language(data, &lang, run.spec.seed()) {
                let line = format!("language {lang}: {e}");
                if !problems.contains(&line) {
                    problems.push(line);
                }
            }
        }
    }
    problems
}

/// Settings a model cannot serve, one line each: a `data.max_len` beyond its position table.
/// Cheap (each run's config.json), so `primer plan` shows them too.
pub fn model_problems(plan: &Plan) -> Vec<String> {
    let mut problems: Vec<String> = Vec::new();
    // Thousands of runs share a few models: each (model, max_len) reads config.json once.
    let mut checked: std::collections::HashSet<(&Path, usize)> = Default::default();
    for run in &plan.runs {
        let (model, data) = match &run.spec {
            RunSpec::Prime { config } => (&config.model, &config.data),
            RunSpec::Finetune { config, .. } => (&config.model, &config.data),
        };
        if !checked.insert((model.as_path(), data.max_len)) {
            continue;
        }
        if let Some(problem) = crate::model::BertConfig::max_len_problem(model, data.max_len)
            && !problems.contains(&problem)
        {
            problems.push(problem);
        }
    }
    problems
}

/// One line of `primer plan --json`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub id: String,
    pub kind: RunKind,
    pub dir: PathBuf,
    pub dependencies: Vec<String>,
    pub status: String,
    /// The first setting using the run; `settings` lists all of them.
    pub setting: String,
    pub settings: Vec<String>,
    pub language: String,
    pub seed: u64,
    pub config: serde_json::Value,
}

/// The rows of `primer plan --json`; `obs` is [`crate::store::observe`]'s view of `plan`.
pub fn plan_rows(plan: &Plan, obs: &[ObservedRun]) -> Vec<PlanRow> {
    plan.runs
        .iter()
        .zip(obs)
        .map(|(r, o)| PlanRow {
            id: r.id.clone(),
            kind: r.kind(),
            dir: o.dir.clone(),
            dependencies: r.deps.iter().map(|&d| plan.runs[d].id.clone()).collect(),
            status: o.label().to_string(),
            setting: r.settings.first().cloned().unwrap_or_default(),
            settings: r.settings.clone(),
            language: r.lang(),
            seed: r.spec.seed(),
            config: match &r.spec {
                RunSpec::Prime { config } => serde_json::to_value(config),
                RunSpec::Finetune { config, .. } => serde_json::to_value(config),
            }
            .expect("serialisable"),
        })
        .collect()
}

/// Removes the checkpoints of priming runs whose dependents in this plan are all done
/// (keeping `curves.json` beside `status.json`). Returns the removed folders. The caller
/// must hold the store lock.
pub fn gc_checkpoints(plan: &Plan, store: &Store) -> Result<Vec<PathBuf>, SweepError> {
    let mut removed = Vec::new();
    for (i, r) in plan.runs.iter().enumerate() {
        if r.kind() != RunKind::Prime {
            continue;
        }
        let dir = store.run_dir(r);
        let ckpt = dir.join(layout::CHECKPOINT);
        if !ckpt.is_dir() {
            continue;
        }
        let all_done = plan
            .dependents(i)
            .iter()
            .all(|&j| Store::is_done(RunKind::Finetune, &store.run_dir(&plan.runs[j])));
        if !all_done {
            continue;
        }
        let curves = ckpt.join(layout::CURVES);
        if curves.is_file() {
            let bytes = std::fs::read(&curves).map_err(SweepError::io(&curves))?;
            crate::fsutil::write_atomic(&dir.join(layout::CURVES), &bytes)?;
        }
        // Rename first so that an interrupted removal never leaves a partial checkpoint
        // that looks complete.
        let doomed = dir.join(".collecting");
        let _ = std::fs::remove_dir_all(&doomed);
        std::fs::rename(&ckpt, &doomed).map_err(SweepError::io(&ckpt))?;
        std::fs::remove_dir_all(&doomed).map_err(SweepError::io(&doomed))?;
        Store::update_status(&dir, |s| {
            s.state = RunState::Collected;
            s.error = None;
        })?;
        removed.push(ckpt);
    }
    Ok(removed)
}

/// Builds the report input of a sweep file from its plan and the store: one record per
/// fine-tuning run of each setting (metrics None when not done) and the priming runs.
pub fn report_input(sweep_file: &Path) -> Result<ReportInput, SweepError> {
    report_input_for(&Sweep::load(sweep_file)?)
}

/// [`report_input`] for an already loaded sweep.
pub fn report_input_for(sweep: &Sweep) -> Result<ReportInput, SweepError> {
    let plan = Plan::expand(sweep)?;
    let store = Store::new(&plan.store);
    let runs = plan
        .entries
        .iter()
        .filter_map(|e| {
            let run = &plan.runs[e.run];
            let RunSpec::Finetune { config, .. } = &run.spec else {
                return None;
            };
            let prime = run.deps.first().and_then(|&d| match &plan.runs[d].spec {
                RunSpec::Prime { config } => Some(config),
                RunSpec::Finetune { .. } => None,
            });
            let meta_prime = prime.filter(|p| p.method == crate::config::PrimingMethod::Meta);
            let dir = store.run_dir(run);
            Some(RunRecord {
                meta: RunMeta {
                    run_id: run.id.clone(),
                    setting: e.setting.clone(),
                    priming: prime.map(|p| p.method),
                    priming_run: run.deps.first().map(|&d| plan.runs[d].id.clone()),
                    inner_loop: meta_prime.map(|p| p.effective_inner_loop()),
                    pe_method: prime.map(|p| p.pe_kind().as_str().to_string()),
                    inner_steps: meta_prime.map(|p| p.inner_steps),
                    inner_lr: meta_prime.map(|p| p.effective_inner_lr()),
                    outer_lr: prime.map(|p| match p.method {
                        crate::config::PrimingMethod::Meta => p.outer_lr,
                        crate::config::PrimingMethod::Ft => p.ft_lr,
                    }),
                    ft_method: config.method,
                    ft_lr: config.effective_lr(),
                    lang: config.lang.clone(),
                    seed: config.seed,
                    run_dir: dir.clone(),
                    evaluation: config
                        .data
                        .evaluation_keys()
                        .into_iter()
                        .map(|(k, v)| format!("{k} = {v}"))
                        .collect(),
                    axes: e
                        .axes
                        .iter()
                        .map(|(k, v)| (k.clone(), v.to_string()))
                        .collect(),
                },
                metrics: Store::read_metrics(&dir),
            })
        })
        .collect();
    let mut priming_runs = Vec::new();
    for r in plan.runs.iter().filter(|r| r.kind() == RunKind::Prime) {
        let dir = store.run_dir(r);
        let ckpt = dir.join(layout::CHECKPOINT);
        // After garbage collection the curves live beside status.json.
        let checkpoint_dir = if ckpt.is_dir() { ckpt } else { dir };
        let done = checkpoint_dir.join(layout::CURVES).is_file();
        for setting in &r.settings {
            priming_runs.push(PrimingRunRecord {
                run_id: r.id.clone(),
                setting: setting.clone(),
                checkpoint_dir: checkpoint_dir.clone(),
                done,
            });
        }
    }
    Ok(ReportInput {
        sweep_name: sweep.name.clone(),
        spec: sweep.report.clone(),
        settings: plan.settings.clone(),
        languages: plan.targets.clone(),
        runs,
        priming_runs,
        results_dir: sweep.results_dir(),
    })
}

/// The run time left in a plan, estimated from its finished runs: each run not done counts the
/// mean duration ([`ObservedRun::duration_s`]) of the finished runs of its kind
/// (priming by method, fine-tuning by method). A sum of run time: divide by the slots that
/// run at once. Finish a few runs of each kind (`primer run`, then Ctrl-C) for an estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct RemainingEstimate {
    pub seconds: f64,
    /// Runs not done with finished runs of their kind to go by.
    pub estimated: usize,
    /// Runs not done with no finished run of their kind yet.
    pub unmeasured: usize,
}

/// What a run's duration is estimated by.
fn duration_kind(run: &PlannedRun) -> String {
    match &run.spec {
        RunSpec::Prime { config } => format!("prime {}", crate::prime::run::method_name(config)),
        RunSpec::Finetune { config, .. } => format!("finetune {}", config.method),
    }
}

/// See [`RemainingEstimate`]; `obs` is [`crate::store::observe`]'s view of `plan`.
pub fn estimate_remaining(plan: &Plan, obs: &[ObservedRun]) -> RemainingEstimate {
    let mut measured: std::collections::HashMap<String, (f64, usize)> = Default::default();
    for (r, o) in plan.runs.iter().zip(obs) {
        if o.state == Observed::Done
            && let Some(secs) = o.duration_s
        {
            let m = measured.entry(duration_kind(r)).or_default();
            m.0 += secs as f64;
            m.1 += 1;
        }
    }
    let mut estimate = RemainingEstimate {
        seconds: 0.0,
        estimated: 0,
        unmeasured: 0,
    };
    for (r, o) in plan.runs.iter().zip(obs) {
        if o.state == Observed::Done {
            continue;
        }
        match measured.get(&duration_kind(r)) {
            Some((total, n)) => {
                estimate.seconds += total / *n as f64;
                estimate.estimated += 1;
            }
            None => estimate.unmeasured += 1,
        }
    }
    estimate
}

/// Counts of runs by displayed state, for `primer status` and `primer plan`.
pub fn count_states(obs: &[ObservedRun]) -> Vec<(&'static str, usize)> {
    ["done", "running", "failed", "blocked", "stale", "pending"]
        .into_iter()
        .map(|l| (l, obs.iter().filter(|o| o.label() == l).count()))
        .collect()
}

/// Labels of runs, for listings.
pub fn run_label(run: &PlannedRun) -> String {
    run.label()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FinetuneConfig, FinetuneMethod};
    use crate::store::observe;

    fn finetune(method: FinetuneMethod, seed: u64) -> RunSpec {
        RunSpec::Finetune {
            config: FinetuneConfig {
                model: PathBuf::from("m"),
                lang: "hi".into(),
                method,
                seed,
                ..FinetuneConfig::default()
            },
            priming: None,
        }
    }

    #[test]
    fn a_collected_priming_run_that_a_pending_run_needs_is_pending() {
        let tmp = tempfile::tempdir().unwrap();
        let prime = RunSpec::Prime {
            config: crate::config::PrimeConfig {
                model: PathBuf::from("m"),
                ..Default::default()
            },
        };
        let from_primed = |seed| match finetune(FinetuneMethod::Adapter, seed) {
            RunSpec::Finetune { config, .. } => RunSpec::Finetune {
                config,
                priming: Some("p".into()),
            },
            other => other,
        };
        let runs = vec![
            (prime, vec![]),
            (from_primed(1), vec![0]),
            (from_primed(2), vec![0]),
        ];
        let plan = Plan::from_runs("t", tmp.path(), "s", runs, vec!["hi".into()]);
        let store = Store::new(tmp.path());
        // Another sweep ran the priming run and collected its checkpoint; of this sweep's two
        // runs that start from it, one is done.
        let prime_dir = store.run_dir(&plan.runs[0]);
        std::fs::create_dir_all(&prime_dir).unwrap();
        let mut status = crate::store::RunStatus::new();
        status.state = RunState::Collected;
        Store::write_status(&prime_dir, &status).unwrap();
        let done_dir = store.run_dir(&plan.runs[1]);
        std::fs::create_dir_all(&done_dir).unwrap();
        crate::fsutil::write_json_atomic(
            &done_dir.join(crate::train::finetune::METRICS_FILE),
            &crate::report::testutil::metrics("hi", 1, 0.5),
        )
        .unwrap();
        let obs = observe(&plan, &store);
        assert_eq!(obs[0].state, Observed::Pending, "it runs again for run 2");
        // Once nothing needs it, collected counts as done again.
        std::fs::create_dir_all(store.run_dir(&plan.runs[2])).unwrap();
        crate::fsutil::write_json_atomic(
            &store
                .run_dir(&plan.runs[2])
                .join(crate::train::finetune::METRICS_FILE),
            &crate::report::testutil::metrics("hi", 2, 0.5),
        )
        .unwrap();
        assert_eq!(observe(&plan, &store)[0].state, Observed::Done);
    }

    #[test]
    fn remaining_run_time_comes_from_finished_runs_of_the_same_kind() {
        let tmp = tempfile::tempdir().unwrap();
        let runs = vec![
            (finetune(FinetuneMethod::Full, 1), vec![]),
            (finetune(FinetuneMethod::Full, 2), vec![]),
            (finetune(FinetuneMethod::Full, 3), vec![]),
            (finetune(FinetuneMethod::Adapter, 1), vec![]),
        ];
        let plan = Plan::from_runs("t", tmp.path(), "s", runs, vec!["hi".into()]);
        let store = Store::new(tmp.path());
        // Two full fine-tuning runs finished, in 30 and 50 s; nothing else ran.
        for (i, secs) in [(0, 30), (1, 50)] {
            let dir = store.run_dir(&plan.runs[i]);
            std::fs::create_dir_all(&dir).unwrap();
            let metrics = crate::report::testutil::metrics("hi", 1, 0.5);
            crate::fsutil::write_json_atomic(
                &dir.join(crate::train::finetune::METRICS_FILE),
                &metrics,
            )
            .unwrap();
            let mut status = crate::store::RunStatus::new();
            status.state = RunState::Done;
            status.started_at = Some(1000);
            status.finished_at = Some(1000 + secs);
            Store::write_status(&dir, &status).unwrap();
        }
        let obs = observe(&plan, &store);
        assert_eq!(obs.iter().filter(|o| o.state == Observed::Done).count(), 2);
        let e = estimate_remaining(&plan, &obs);
        assert_eq!(
            e,
            RemainingEstimate {
                seconds: 40.0,
                estimated: 1,
                unmeasured: 1
            }
        );
    }
}
