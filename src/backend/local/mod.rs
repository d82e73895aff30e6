//! The local backend: a sweep's pending runs executed on this machine's device slots (K per
//! device) by the scheduler ([`sched`]), one `primer exec` child process per run
//! ([`process`]), with status files and the live display ([`display`]) kept up to date.
//! [`Backend::submit`] returns once every run has ended, failed after its retries, or been
//! interrupted (Ctrl-C: running runs are stopped and marked pending).

pub mod display;
pub mod pack;
pub mod process;
pub mod sched;

use super::{Backend, BackendError, BackendSettings, RunView, Submitted, ViewState};
use crate::config::PerDevice;
use crate::device::DeviceSpec;
use crate::spec::plan::{Plan, RunKind};
use crate::store::{RunState, Store, StoreError, layout, now_s, observe};
use display::Display;
use process::ProcessExecutor;
use sched::{
    ExecEvent, Executor, Observer, Outcome, Packing, Slot, Task, make_slots, schedule_packed,
};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

/// The local backend's settings (`primer run --devices --per-device --retries --plain`).
#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub devices: Vec<DeviceSpec>,
    /// Concurrent runs per device, or as many as fit its memory.
    pub per_device: PerDevice,
    /// Retries of a failed run before it counts as failed.
    pub retries: u32,
    /// Plain line output even on a terminal.
    pub plain: bool,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            devices: vec![DeviceSpec::Cpu],
            per_device: PerDevice::Fixed(1),
            retries: 1,
            plain: false,
        }
    }
}

/// Runs on this machine (see the module documentation).
pub struct LocalBackend {
    opts: LocalOptions,
    exe: Option<PathBuf>,
}

impl LocalBackend {
    pub fn new(settings: &BackendSettings) -> Self {
        Self {
            opts: settings.local.clone(),
            exe: settings.exe.clone(),
        }
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn submit(&self, plan: &Plan, store: &Store) -> Result<Submitted, BackendError> {
        if self.opts.per_device == PerDevice::Fixed(0) {
            return Err(BackendError::Usage(
                "--per-device must be at least 1".into(),
            ));
        }
        let exe = super::primer_exe(&self.exe, "child runs")?;
        let prepared = prepare(plan, store, &format!("sweep '{}'", plan.sweep_name))?;
        let devices = self.opts.devices.clone();
        let uses_cpu = devices.contains(&DeviceSpec::Cpu);
        let (per_device, packing, cpu_runs, notes) = match self.opts.per_device {
            PerDevice::Fixed(n) => (n, Packing::default(), if uses_cpu { n } else { 0 }, vec![]),
            PerDevice::Auto => {
                let need = crate::cost::memory::plan_memory(plan, &prepared.tasks)?
                    .iter()
                    .map(|m| m.total())
                    .collect();
                let l = pack::auto_layout(&devices, need, &crate::device::SystemProbe)?;
                (l.per_device, l.packing, l.cpu_runs, l.notes)
            }
        };
        let opts = RunOptions {
            devices,
            per_device,
            packing,
            notes,
            retries: self.opts.retries,
            interrupt: crate::signal::install_interrupt_handler(),
            plain: self.opts.plain,
        };
        let run_dirs: Vec<PathBuf> = prepared
            .tasks
            .iter()
            .map(|&r| store.run_dir(&plan.runs[r]))
            .collect();
        let executor = ProcessExecutor::new(exe, run_dirs, cpu_runs);
        Ok(Submitted::Ran(execute_prepared(
            plan, store, prepared, &opts, &executor,
        )?))
    }

    /// The store's view: a local run has nothing beyond it.
    fn poll(&self, plan: &Plan, store: &Store) -> Result<Vec<RunView>, BackendError> {
        Ok(observe(plan, store)
            .into_iter()
            .enumerate()
            .map(|(run, o)| RunView {
                run,
                state: match o.label() {
                    "done" => ViewState::Done,
                    "running" => ViewState::Running,
                    "failed" => ViewState::Failed,
                    "blocked" => ViewState::Blocked,
                    "stale" => ViewState::Stale,
                    _ => ViewState::Pending,
                },
                detail: o.error.unwrap_or_default(),
                dir: o.dir,
                job: None,
            })
            .collect())
    }

    fn cancel(&self, _plan: &Plan, _store: &Store) -> Result<Vec<String>, BackendError> {
        Err(BackendError::Unsupported(
            "no run of this sweep was submitted to Slurm, so there are no jobs to cancel; a local `primer run` is stopped with Ctrl-C (its runs are marked pending and resume with `primer run`)".into(),
        ))
    }
}

/// Parses `--devices`: `cpu`, `all` (every CUDA GPU, or the CPU when there is none), or a
/// comma-separated list such as `cuda:0,cuda:1`. CUDA devices are opened once to fail up
/// front when CUDA is not compiled in or the GPU does not exist.
pub fn parse_devices(spec: &str) -> Result<Vec<DeviceSpec>, BackendError> {
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
            // `all` runs anywhere (a script for GPU nodes also runs on a laptop), but a user
            // who expected GPUs must hear that there are none.
            tracing::warn!(
                "--devices all: no GPU found ({}); running on the CPU",
                if cfg!(feature = "cuda") {
                    "no CUDA device is visible"
                } else {
                    "this build has no CUDA: build with --features cuda"
                }
            );
            found.push(DeviceSpec::Cpu);
        }
        return Ok(found);
    }
    let mut devices = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let d = DeviceSpec::parse(part)?;
        if devices.contains(&d) {
            return Err(BackendError::Usage(format!(
                "--devices: {d} is listed twice (use --per-device to run several runs on one device)"
            )));
        }
        if let DeviceSpec::Cuda(_) = d {
            d.open()?;
        }
        devices.push(d);
    }
    if devices.is_empty() {
        return Err(BackendError::Usage(
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

/// What one scheduling pass is run with.
pub struct RunOptions<'a> {
    pub devices: Vec<DeviceSpec>,
    /// Slots per device.
    pub per_device: usize,
    /// Memory-aware admission (`--per-device auto`; empty: slots only).
    pub packing: Packing,
    /// Lines printed before the runs start (what the packing decided).
    pub notes: Vec<String>,
    pub retries: u32,
    /// Set by a Ctrl-C handler; stops the run cleanly.
    pub interrupt: &'a AtomicBool,
    /// Plain line output even on a terminal.
    pub plain: bool,
}

/// What a local run of a sweep did.
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
    /// Checkpoints removed afterwards (`--gc-checkpoints`; filled in by the orchestrator).
    pub collected: Vec<PathBuf>,
}

impl RunSummary {
    pub fn all_done(&self) -> bool {
        self.failed.is_empty() && self.blocked.is_empty() && !self.interrupted && self.not_run == 0
    }
}

/// A locked store and the runs left to execute.
pub struct Prepared {
    _lock: crate::store::StoreLock,
    /// Plan run index of each task.
    pub tasks: Vec<usize>,
    pub deps: Vec<Vec<usize>>,
    pub already_done: usize,
}

/// Locks the store, records stale runs, writes every pending run's spec and selects the runs
/// to execute: fine-tuning runs not done, and the priming runs they need that are not done.
pub fn prepare(plan: &Plan, store: &Store, what: &str) -> Result<Prepared, StoreError> {
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
                    // The attempt that wrote the result ran to its end, even if an interrupt
                    // (which does not count attempts) was recorded after it.
                    s.attempts = s.attempts.max(1);
                })?;
            }
        } else if status
            .as_ref()
            .is_some_and(|s| s.state == RunState::Running)
        {
            // We hold the lock, so whoever recorded "running" is gone.
            Store::update_status(&dir, |s| {
                // Its orchestrator stopped, the run did not fail: not one of its attempts.
                s.attempts = s.attempts.saturating_sub(1);
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
) -> Result<RunSummary, StoreError> {
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
    for note in &opts.notes {
        observer.display.println(&format!("  {note}"));
    }
    let outcome: Outcome = schedule_packed(
        &tasks,
        &slots,
        &opts.packing,
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
    let summary = RunSummary {
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
    error: Option<StoreError>,
}

impl StoreObserver<'_> {
    fn dir(&self, task: usize) -> PathBuf {
        self.store.run_dir(&self.plan.runs[self.runs[task]])
    }

    fn slot_index(&self, slot: &Slot) -> usize {
        self.slots.iter().position(|s| s == slot).unwrap_or(0)
    }

    fn update(&mut self, task: usize, f: impl FnOnce(&mut crate::store::RunStatus)) {
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
            // Stopped by the user, not failed: it is not one of the run's attempts.
            s.attempts = s.attempts.saturating_sub(1);
            s.state = RunState::Pending;
            s.error = Some("interrupted; `primer run` resumes it".into());
        });
    }

    fn tick(&mut self) {
        self.display.tick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::file::Sweep;

    /// A run whose result exists counts the attempt that wrote it, even where an interrupt
    /// (which counts no attempt) was recorded after it finished.
    #[test]
    fn a_finished_run_recorded_as_interrupted_is_done_after_one_attempt() {
        let t = tempfile::tempdir().unwrap();
        let text =
            "name = \"t\"\nstore = \"store\"\ntargets = [\"hi\"]\n[base.finetune]\nmodel = \"m\"\n";
        let sweep = Sweep::from_text(&t.path().join("s.toml"), text).unwrap();
        let mut plan = Plan::expand(&sweep).unwrap();
        plan.store = t.path().join("store");
        let store = Store::new(&plan.store);
        let dir = store.prepare(&plan.runs[0]).unwrap();
        let mut status = crate::store::RunStatus::new();
        status.state = RunState::Pending;
        status.attempts = 0;
        Store::write_status(&dir, &status).unwrap();
        let metrics = crate::report::testutil::run("s", "hi", 0, Some(0.5))
            .metrics
            .unwrap();
        crate::fsutil::write_json_atomic(&dir.join(layout::METRICS), &metrics).unwrap();
        drop(prepare(&plan, &store, "test").unwrap());
        let status = Store::read_status(&dir).unwrap();
        assert_eq!((status.state, status.attempts), (RunState::Done, 1));
    }
}
