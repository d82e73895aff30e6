//! Executing a sweep: inputs checked, the store locked, stale runs detected, pending runs
//! scheduled on device slots as `primer exec` children, status files kept up to date, and a
//! summary returned. Also the read-only views used by `primer plan` / `primer status`, the
//! checkpoint garbage collector, and the report input.

use super::display::Display;
use super::error::SweepError;
use super::file::Sweep;
use super::plan::{Plan, PlannedRun, RunKind, RunSpec};
use super::process::ProcessExecutor;
use super::sched::{ExecEvent, Executor, Observer, Outcome, Slot, Task, make_slots, schedule};
use super::store::{Observed, RunState, Store, layout, now_s};
use crate::device::DeviceSpec;
use crate::report::{PrimingRunRecord, ReportInput, RunMeta, RunRecord};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// Parses `--devices`: `cpu`, `all` (every CUDA GPU, or the CPU when there is none), or a
/// comma-separated list such as `cuda:0,cuda:1`. CUDA devices are opened once to fail up
/// front when CUDA is not compiled in or the GPU does not exist.
pub fn parse_devices(spec: &str) -> Result<Vec<DeviceSpec>, SweepError> {
    let spec = spec.trim();
    if spec.eq_ignore_ascii_case("all") {
        let mut found = Vec::new();
        if candle_core::utils::cuda_is_available() {
            for i in 0..64 {
                if DeviceSpec::Cuda(i).open().is_err() {
                    break;
                }
                found.push(DeviceSpec::Cuda(i));
            }
        }
        if found.is_empty() {
            found.push(DeviceSpec::Cpu);
        }
        return Ok(found);
    }
    let mut devices = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let d = DeviceSpec::parse(part)?;
        if devices.contains(&d) {
            return Err(SweepError::Usage(format!(
                "--devices: {d} is listed twice (use --per-device to run several runs on one device)"
            )));
        }
        if let DeviceSpec::Cuda(_) = d {
            d.open()?;
        }
        devices.push(d);
    }
    if devices.is_empty() {
        return Err(SweepError::Usage(
            "--devices: no device given (use cpu, cuda:0,cuda:1 or all)".into(),
        ));
    }
    Ok(devices)
}

/// The CUDA_VISIBLE_DEVICES value that exposes the orchestrator's `cuda:i` to a child: the
/// i-th entry of the orchestrator's own CUDA_VISIBLE_DEVICES when set, else `i`.
pub fn visible_device(i: usize) -> String {
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .nth(i)
            .map_or_else(|| i.to_string(), |s| s.trim().to_string()),
        _ => i.to_string(),
    }
}

/// Checks that every model folder and data directory the plan uses exists. Returns one line
/// per missing input.
pub fn missing_inputs(plan: &Plan) -> Vec<String> {
    let mut missing: Vec<String> = Vec::new();
    let mut note = |m: String| {
        if !missing.contains(&m) {
            missing.push(m);
        }
    };
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
        for lang in langs {
            let dir = root.join(&lang);
            if !dir.is_dir() {
                note(format!(
                    "data directory {} (language {lang})",
                    dir.display()
                ));
            }
        }
    }
    missing
}

/// The observed state of every run of the plan; a pending fine-tuning run whose priming run
/// failed is reported as blocked.
pub fn observe(plan: &Plan, store: &Store) -> Vec<ObservedRun> {
    let locked = store.is_locked();
    let mut states: Vec<ObservedRun> = plan
        .runs
        .iter()
        .map(|r| {
            let dir = store.run_dir(r);
            let status = Store::read_status(&dir);
            ObservedRun {
                state: Store::observe(r.kind(), &dir, locked),
                blocked_by: None,
                error: status.as_ref().and_then(|s| s.error.clone()),
                attempts: status.as_ref().map_or(0, |s| s.attempts),
                duration_s: status.and_then(|s| s.finished_at?.checked_sub(s.started_at?)),
                dir,
            }
        })
        .collect();
    for (i, r) in plan.runs.iter().enumerate() {
        if states[i].state == Observed::Done {
            continue;
        }
        if let Some(&d) = r
            .deps
            .iter()
            .find(|&&d| states[d].state == Observed::Failed)
        {
            states[i].blocked_by = Some(plan.runs[d].dir_name());
        }
    }
    states
}

/// A run's state as seen by `plan` and `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedRun {
    pub state: Observed,
    /// Set when the run cannot execute because this (failed) priming run has to succeed first.
    pub blocked_by: Option<String>,
    pub error: Option<String>,
    pub attempts: u32,
    pub dir: PathBuf,
    /// Seconds from the last attempt's start to its end, when status.json records both.
    pub duration_s: Option<u64>,
}

impl ObservedRun {
    /// `done`, `running`, `failed`, `stale`, `pending` or `blocked`.
    pub fn label(&self) -> &'static str {
        if self.blocked_by.is_some() {
            "blocked"
        } else {
            self.state.as_str()
        }
    }
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

/// The rows of `primer plan --json`.
pub fn plan_rows(plan: &Plan, store: &Store) -> Vec<PlanRow> {
    let obs = observe(plan, store);
    plan.runs
        .iter()
        .zip(&obs)
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

/// Options of [`run_sweep`].
pub struct RunOptions<'a> {
    pub devices: Vec<DeviceSpec>,
    pub per_device: usize,
    pub retries: u32,
    /// Remove primed checkpoints no pending run of this sweep needs, at the end.
    pub gc_checkpoints: bool,
    /// The primer binary used for `primer exec` children.
    pub exe: PathBuf,
    /// Set by a Ctrl-C handler; stops the run cleanly.
    pub interrupt: &'a AtomicBool,
    /// Plain line output even on a terminal.
    pub plain: bool,
}

/// What [`run_sweep`] did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub total_runs: usize,
    pub already_done: usize,
    pub executed: usize,
    /// (run label, error, log path)
    pub failed: Vec<(String, String, PathBuf)>,
    /// (run label, reason)
    pub blocked: Vec<(String, String)>,
    pub interrupted: bool,
    pub not_run: usize,
    pub collected: Vec<PathBuf>,
}

impl RunSummary {
    pub fn all_done(&self) -> bool {
        self.failed.is_empty() && self.blocked.is_empty() && !self.interrupted && self.not_run == 0
    }
}

/// Executes the pending runs of `sweep` with child processes.
pub fn run_sweep(sweep: &Sweep, opts: &RunOptions<'_>) -> Result<RunSummary, SweepError> {
    let plan = Plan::expand(sweep)?;
    let missing = missing_inputs(&plan);
    if !missing.is_empty() {
        return Err(SweepError::MissingInputs {
            file: sweep.source.path.clone(),
            cwd: std::env::current_dir().unwrap_or_default(),
            missing,
        });
    }
    let store = Store::new(&plan.store);
    let cpu_slots = if opts.devices.contains(&DeviceSpec::Cpu) {
        opts.per_device
    } else {
        0
    };
    let prepared = prepare(&plan, &store, &format!("sweep '{}'", sweep.name))?;
    let run_dirs: Vec<PathBuf> = prepared
        .tasks
        .iter()
        .map(|&r| store.run_dir(&plan.runs[r]))
        .collect();
    let executor = ProcessExecutor::new(opts.exe.clone(), run_dirs, cpu_slots);
    execute_prepared(&plan, &store, prepared, opts, &executor)
}

/// A locked store and the runs left to execute.
pub struct Prepared {
    _lock: super::store::StoreLock,
    /// Plan run index of each task.
    pub tasks: Vec<usize>,
    pub deps: Vec<Vec<usize>>,
    pub already_done: usize,
}

/// Locks the store, records stale runs, writes every pending run's spec and selects the runs
/// to execute: fine-tuning runs not done, and the priming runs they need that are not done.
pub fn prepare(plan: &Plan, store: &Store, what: &str) -> Result<Prepared, SweepError> {
    let lock = store.lock(what)?;
    let mut done = vec![false; plan.runs.len()];
    for (i, r) in plan.runs.iter().enumerate() {
        let dir = store.run_dir(r);
        done[i] = Store::is_done(r.kind(), &dir);
        let status = Store::read_status(&dir);
        if done[i] {
            // A child can finish after its orchestrator died: the result is what counts.
            if status
                .as_ref()
                .is_some_and(|s| s.state != RunState::Done && s.state != RunState::Collected)
            {
                Store::update_status(&dir, |s| {
                    s.state = RunState::Done;
                    s.finished_at.get_or_insert(now_s());
                    s.error = None;
                })?;
            }
        } else if status
            .as_ref()
            .is_some_and(|s| s.state == RunState::Running)
        {
            // We hold the lock, so whoever recorded "running" is gone.
            Store::update_status(&dir, |s| {
                s.state = RunState::Pending;
                s.error = Some(format!(
                    "stale: was running under pid {} when its orchestrator stopped; rerun",
                    s.pid.map_or_else(|| "?".into(), |p| p.to_string())
                ));
            })?;
        }
    }
    let mut needed = vec![false; plan.runs.len()];
    for (i, r) in plan.runs.iter().enumerate() {
        if r.kind() == RunKind::Finetune && !done[i] {
            needed[i] = true;
            for &d in &r.deps {
                if !done[d] {
                    needed[d] = true;
                }
            }
        }
    }
    let tasks: Vec<usize> = (0..plan.runs.len()).filter(|&i| needed[i]).collect();
    let deps = tasks
        .iter()
        .map(|&r| {
            plan.runs[r]
                .deps
                .iter()
                .filter_map(|d| tasks.iter().position(|t| t == d))
                .collect()
        })
        .collect();
    for &r in &tasks {
        let dir = store.prepare(&plan.runs[r])?;
        if Store::read_status(&dir).is_none() {
            Store::update_status(&dir, |_| {})?;
        }
    }
    Ok(Prepared {
        _lock: lock,
        tasks,
        deps,
        already_done: plan.runs.len() - needed.iter().filter(|&&n| n).count(),
    })
}

/// Schedules the prepared runs with `executor` (the real one, or a fake in tests).
pub fn execute_prepared(
    plan: &Plan,
    store: &Store,
    prepared: Prepared,
    opts: &RunOptions<'_>,
    executor: &dyn Executor,
) -> Result<RunSummary, SweepError> {
    let slots = make_slots(&opts.devices, opts.per_device, visible_device);
    let tasks: Vec<Task> = prepared
        .tasks
        .iter()
        .zip(&prepared.deps)
        .map(|(&r, deps)| Task {
            deps: deps.clone(),
            priority: match plan.runs[r].kind() {
                RunKind::Prime => 0,
                RunKind::Finetune => 1,
            },
        })
        .collect();
    let labels: Vec<String> = prepared
        .tasks
        .iter()
        .map(|&r| plan.runs[r].label())
        .collect();
    let mut observer = StoreObserver {
        plan,
        store,
        runs: &prepared.tasks,
        labels: &labels,
        slots: &slots,
        display: Display::new(
            tasks.len(),
            slots.iter().map(Slot::label).collect(),
            opts.plain,
        ),
        error: None,
    };
    observer.display.println(&format!(
        "sweep '{}': {} runs, {} already done, {} to run on {} slot(s); store {}",
        plan.sweep_name,
        plan.runs.len(),
        prepared.already_done,
        tasks.len(),
        slots.len(),
        store.root.display()
    ));
    let outcome: Outcome = schedule(
        &tasks,
        &slots,
        opts.retries,
        executor,
        &mut observer,
        opts.interrupt,
    );
    observer.display.finish();
    if let Some(e) = observer.error.take() {
        return Err(e);
    }
    let run_of = |t: usize| &plan.runs[prepared.tasks[t]];
    let mut summary = RunSummary {
        total_runs: plan.runs.len(),
        already_done: prepared.already_done,
        executed: outcome.succeeded.len(),
        failed: outcome
            .failed
            .iter()
            .map(|(t, e)| {
                (
                    run_of(*t).label(),
                    e.clone(),
                    store.run_dir(run_of(*t)).join(layout::LOG),
                )
            })
            .collect(),
        blocked: outcome
            .blocked
            .iter()
            .map(|(t, _)| {
                let r = run_of(*t);
                let failed_dep = r
                    .deps
                    .first()
                    .map(|&d| plan.runs[d].dir_name())
                    .unwrap_or_default();
                (r.label(), format!("its priming run {failed_dep} failed"))
            })
            .collect(),
        interrupted: outcome.interrupted,
        not_run: outcome.not_run.len(),
        collected: Vec::new(),
    };
    if opts.gc_checkpoints && !outcome.interrupted {
        summary.collected = gc_checkpoints(plan, store)?;
    }
    // The store lock (in `prepared`) is released when this function returns.
    Ok(summary)
}

/// Keeps status files and the display up to date as the scheduler works.
struct StoreObserver<'a> {
    plan: &'a Plan,
    store: &'a Store,
    runs: &'a [usize],
    labels: &'a [String],
    slots: &'a [Slot],
    display: Display,
    /// The first store write that failed (the pass continues; the error is returned after).
    error: Option<SweepError>,
}

impl StoreObserver<'_> {
    fn dir(&self, task: usize) -> PathBuf {
        self.store.run_dir(&self.plan.runs[self.runs[task]])
    }

    fn slot_index(&self, slot: &Slot) -> usize {
        self.slots.iter().position(|s| s == slot).unwrap_or(0)
    }

    fn update(&mut self, task: usize, f: impl FnOnce(&mut super::store::RunStatus)) {
        if let Err(e) = Store::update_status(&self.dir(task), f) {
            self.display.println(&format!("warning: {e}"));
            self.error.get_or_insert(e);
        }
    }
}

impl Observer for StoreObserver<'_> {
    fn started(&mut self, task: usize, slot: &Slot, attempt: u32) {
        let label = slot.label();
        self.update(task, |s| {
            s.state = RunState::Running;
            s.pid = Some(std::process::id());
            s.child_pid = None;
            s.attempts += 1;
            s.started_at = Some(now_s());
            s.finished_at = None;
            s.error = None;
            s.slot = Some(label);
        });
        let i = self.slot_index(slot);
        self.display.started(i, &self.labels[task], attempt);
    }

    fn event(&mut self, task: usize, slot: &Slot, event: ExecEvent) {
        match event {
            ExecEvent::Spawned(pid) => self.update(task, |s| s.child_pid = Some(pid)),
            ExecEvent::Progress(e) => {
                let i = self.slot_index(slot);
                self.display.progress(i, &e);
            }
        }
    }

    fn succeeded(&mut self, task: usize, slot: &Slot) {
        self.update(task, |s| {
            s.state = RunState::Done;
            s.finished_at = Some(now_s());
        });
        let i = self.slot_index(slot);
        self.display.finished(i, Ok(()), false, "");
    }

    fn failed(&mut self, task: usize, slot: &Slot, error: &str, will_retry: bool) {
        let msg = error.to_string();
        self.update(task, |s| {
            s.state = if will_retry {
                RunState::Pending
            } else {
                RunState::Failed
            };
            s.error = Some(msg);
            s.finished_at = Some(now_s());
        });
        let i = self.slot_index(slot);
        let log = self.dir(task).join(layout::LOG).display().to_string();
        self.display.finished(i, Err(error), will_retry, &log);
    }

    fn blocked(&mut self, task: usize, _reason: &str) {
        let run = &self.plan.runs[self.runs[task]];
        let dep = run
            .deps
            .first()
            .map(|&d| self.plan.runs[d].dir_name())
            .unwrap_or_default();
        let reason = format!("not runnable: its priming run {dep} failed");
        let r = reason.clone();
        self.update(task, |s| {
            s.state = RunState::Pending;
            s.error = Some(r);
        });
        self.display.skipped(&self.labels[task], &reason);
    }

    fn interrupted(&mut self, task: usize) {
        self.update(task, |s| {
            s.state = RunState::Pending;
            s.error = Some("interrupted; `primer run` resumes it".into());
        });
    }

    fn tick(&mut self) {
        self.display.tick();
    }
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
                    inner_loop: meta_prime.map(|p| p.inner_loop),
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

/// See [`RemainingEstimate`]; `obs` is [`observe`]'s view of `plan`.
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
            let mut status = super::super::store::RunStatus::new();
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
