//! The Slurm backend: a sweep's runs as Slurm job arrays, through the client in
//! `crate::slurm` (which knows nothing of sweeps). [`SlurmBackend`] implements
//! [`Backend`] with the functions below; [`SlurmTask`] is a run executing as a Slurm task
//! (requeued after the preemption warning, at most [`MAX_PREEMPTION_REQUEUES`] times).
//!
//! * [`submit_sweep`] writes each pending run's spec into the store and submits one array for
//!   the priming runs and one array per group of fine-tuning runs sharing the same pending
//!   priming run (`--dependency=afterok:<that priming task>`), so fine-tuning starts as soon
//!   as its own priming run is done. Runs already done, and runs whose earlier submission is
//!   still queued or running, are not submitted again.
//! * [`slurm_status`] combines the store (results, `status.json`) with Slurm's view of each
//!   run's recorded task (`slurm.json`), reporting tasks that Slurm ended unsuccessfully as
//!   failed even when they wrote nothing.
//! * [`cancel_sweep`] cancels the sweep's queued and running tasks; [`wait_sweep`] polls until
//!   none is left.

use super::{
    Backend, BackendError, BackendSettings, HostedTask, Queued, QueuedBatch, RunView, Submitted,
    ViewState,
};
use crate::slurm::client::{Submission, SubmittedArray};
use crate::slurm::record::{self, SlurmRecord};
use crate::slurm::requeue::current_job_id;
use crate::slurm::{ArrayJob, JobRef, Slurm, SlurmError, SlurmOptions, TaskStatus};
use crate::spec::plan::{Plan, RunKind};
use crate::store::{RunState, Store};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The Slurm job name of a sweep's tasks: `primer-<sweep name>` (sanitised).
pub fn job_name(sweep_name: &str) -> String {
    let safe: String = sweep_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("primer-{safe}")
}

/// The command each task runs, the run directory appended: `<exe> exec --device D --run-dir`.
/// With GPUs requested Slurm sets `CUDA_VISIBLE_DEVICES` for the task, so its first visible
/// GPU is `cuda:0`.
pub fn exec_command(exe: &Path, opts: &SlurmOptions) -> Vec<String> {
    let device = if opts.gpus_per_task.unwrap_or(0) > 0 {
        "cuda:0"
    } else {
        "cpu"
    };
    vec![
        exe.to_string_lossy().into_owned(),
        "exec".into(),
        "--device".into(),
        device.into(),
        "--run-dir".into(),
    ]
}

/// Whether any run of the plan was submitted to Slurm (has a `slurm.json`): then `primer
/// status` should report through [`slurm_status`].
pub fn uses_slurm(plan: &Plan, store: &Store) -> bool {
    plan.runs
        .iter()
        .any(|r| store.run_dir(r).join(record::RECORD_FILE).is_file())
}

/// What [`submit_sweep`] did.
#[derive(Debug, Clone, Default)]
pub struct SweepSubmission {
    /// Plan run index → its new task.
    pub submitted: Vec<(usize, JobRef)>,
    /// Runs skipped because their result exists.
    pub done: Vec<usize>,
    /// Runs skipped because an earlier submission is still queued or running.
    pub in_flight: Vec<(usize, JobRef)>,
    pub arrays: Vec<SubmittedArray>,
}

/// The store with an absolute root: Slurm tasks may start in another directory.
fn absolute_store(store: &Store) -> Result<Store, SlurmError> {
    let root = std::path::absolute(&store.root).map_err(|source| SlurmError::StoreNotWritable {
        path: store.root.clone(),
        source,
    })?;
    Ok(Store::new(root))
}

/// Submits the sweep's pending runs as job arrays (see the module documentation). `exe` is
/// the primer binary the tasks run (normally `std::env::current_exe()`); tasks start in the
/// current directory, against which relative paths in run specs resolve.
pub fn submit_sweep(
    plan: &Plan,
    store: &Store,
    slurm: &Slurm,
    opts: &SlurmOptions,
    exe: &Path,
) -> Result<SweepSubmission, BackendError> {
    let store = absolute_store(store)?;
    let info = slurm.validate(opts, &store.root)?;
    let name = job_name(&plan.sweep_name);
    let dirs: Vec<PathBuf> = plan.runs.iter().map(|r| store.run_dir(r)).collect();

    // Which runs are already taken care of.
    let mut result = SweepSubmission::default();
    let mut task_of: BTreeMap<usize, JobRef> = BTreeMap::new();
    let mut recorded = Vec::new();
    for (i, run) in plan.runs.iter().enumerate() {
        if Store::is_done(run.kind(), &dirs[i]) {
            result.done.push(i);
        } else if let Some(rec) = SlurmRecord::read(&dirs[i])? {
            recorded.push((i, rec));
        }
    }
    let records: Vec<SlurmRecord> = recorded.iter().map(|(_, r)| r.clone()).collect();
    for ((i, rec), st) in recorded.iter().zip(slurm.status_of(&records)?) {
        if st.is_some_and(|t| !t.state.is_terminal()) {
            result.in_flight.push((*i, rec.job_ref()));
            task_of.insert(*i, rec.job_ref());
        }
    }
    let pending: Vec<usize> = (0..plan.runs.len())
        .filter(|i| !result.done.contains(i) && !task_of.contains_key(i))
        .collect();
    if pending.is_empty() {
        return Ok(result);
    }
    for &i in &pending {
        store.prepare(&plan.runs[i])?;
    }

    let workdir = std::env::current_dir().ok();
    let command = exec_command(exe, opts);
    let mut submission = Submission::new(&store.root, &plan.sweep_name);
    let array = |runs: &[usize], after_ok: Vec<String>| {
        let mut job = ArrayJob::new(
            name.clone(),
            runs.iter().map(|&i| dirs[i].clone()).collect(),
            command.clone(),
        );
        job.after_ok = after_ok;
        job.workdir = workdir.clone();
        // The same file the local backend's executor writes.
        job.stdout_name = crate::store::layout::LOG.into();
        job.stderr_name = crate::store::layout::LOG.into();
        job
    };

    // Priming first: fine-tuning arrays depend on its tasks.
    let primes: Vec<usize> = pending
        .iter()
        .copied()
        .filter(|&i| plan.runs[i].kind() == RunKind::Prime)
        .collect();
    let mut submit = |runs: &[usize],
                      after_ok: Vec<String>,
                      result: &mut SweepSubmission,
                      task_of: &mut BTreeMap<usize, JobRef>| {
        let a = slurm.submit_array(
            &mut submission,
            &array(runs, after_ok),
            opts,
            info.max_array_size,
        )?;
        for (&i, t) in runs.iter().zip(&a.tasks) {
            task_of.insert(i, t.job);
            result.submitted.push((i, t.job));
            let note = format!("slurm {}", t.job);
            Store::update_status(&dirs[i], |s| {
                s.state = RunState::Pending;
                s.error = None;
                s.pid = None;
                s.child_pid = None;
                s.slot = Some(note);
            })?;
        }
        result.arrays.push(a);
        Ok::<(), BackendError>(())
    };
    if !primes.is_empty() {
        submit(&primes, Vec::new(), &mut result, &mut task_of)?;
    }
    // Fine-tuning runs grouped by the tasks they wait for (in plan order).
    let mut groups: Vec<(Vec<String>, Vec<usize>)> = Vec::new();
    for &i in pending
        .iter()
        .filter(|&&i| plan.runs[i].kind() == RunKind::Finetune)
    {
        let mut deps: Vec<String> = plan.runs[i]
            .deps
            .iter()
            .filter_map(|d| task_of.get(d).map(JobRef::to_string))
            .collect();
        deps.sort();
        match groups.iter_mut().find(|(d, _)| *d == deps) {
            Some((_, runs)) => runs.push(i),
            None => groups.push((deps, vec![i])),
        }
    }
    for (deps, runs) in groups {
        submit(&runs, deps, &mut result, &mut task_of)?;
    }
    Ok(result)
}

/// A run's state as the Slurm backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlurmRunState {
    Done,
    Running,
    Queued,
    /// Ended without a result (Slurm failure state, or completed/forgotten without result).
    Failed,
    /// Never submitted to Slurm (and not done).
    NotSubmitted,
}

impl SlurmRunState {
    pub fn as_str(self) -> &'static str {
        match self {
            SlurmRunState::Done => "done",
            SlurmRunState::Running => "running",
            SlurmRunState::Queued => "queued",
            SlurmRunState::Failed => "failed",
            SlurmRunState::NotSubmitted => "not submitted",
        }
    }
}

/// One run of the plan, seen through the store and Slurm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmRunView {
    /// Index into [`Plan::runs`].
    pub run: usize,
    pub dir: PathBuf,
    pub state: SlurmRunState,
    /// One line: Slurm's state and reason, exit code, or the run's own error.
    pub detail: String,
    pub job: Option<JobRef>,
}

/// The state of every run of the plan (see the module documentation).
pub fn slurm_status(
    plan: &Plan,
    store: &Store,
    slurm: &Slurm,
) -> Result<Vec<SlurmRunView>, BackendError> {
    let store = absolute_store(store)?;
    let mut views = Vec::with_capacity(plan.runs.len());
    let mut recorded: Vec<(usize, SlurmRecord)> = Vec::new();
    for (i, run) in plan.runs.iter().enumerate() {
        let dir = store.run_dir(run);
        let rec = if Store::is_done(run.kind(), &dir) {
            None
        } else {
            SlurmRecord::read(&dir)?
        };
        let (state, detail) = if Store::is_done(run.kind(), &dir) {
            (SlurmRunState::Done, String::new())
        } else if rec.is_some() {
            (SlurmRunState::Queued, String::new()) // filled in below
        } else {
            (SlurmRunState::NotSubmitted, String::new())
        };
        if let Some(r) = &rec {
            recorded.push((i, r.clone()));
        }
        views.push(SlurmRunView {
            run: i,
            job: rec.as_ref().map(SlurmRecord::job_ref),
            dir,
            state,
            detail,
        });
    }
    let records: Vec<SlurmRecord> = recorded.iter().map(|(_, r)| r.clone()).collect();
    let states = if records.is_empty() {
        Vec::new()
    } else {
        slurm.status_of(&records)?
    };
    for ((i, rec), st) in recorded.iter().zip(states) {
        let v = &mut views[*i];
        // The run may have finished between the first look and the query.
        if Store::is_done(plan.runs[*i].kind(), &v.dir) {
            v.state = SlurmRunState::Done;
            continue;
        }
        let own_error = Store::read_status(&v.dir)
            .filter(|s| s.state == RunState::Failed)
            .and_then(|s| s.error);
        (v.state, v.detail) = classify(st.as_ref(), rec, own_error);
    }
    Ok(views)
}

/// State and detail of a submitted run without a result.
fn classify(
    task: Option<&TaskStatus>,
    rec: &SlurmRecord,
    own_error: Option<String>,
) -> (SlurmRunState, String) {
    let with_error = |mut s: String| {
        if let Some(e) = &own_error {
            s.push_str(": ");
            s.push_str(e);
        }
        s
    };
    match task {
        Some(t) if t.state.is_queued() => (SlurmRunState::Queued, t.describe()),
        Some(t) if t.state.is_active() => (SlurmRunState::Running, t.describe()),
        Some(t) if t.state.is_failure() => (SlurmRunState::Failed, with_error(t.describe())),
        Some(t) if t.state.is_terminal() => (
            SlurmRunState::Failed,
            with_error(format!(
                "Slurm task {} completed but the run wrote no result (see its log.txt)",
                rec.job_ref()
            )),
        ),
        Some(t) => (SlurmRunState::Queued, t.describe()),
        None => (
            SlurmRunState::Failed,
            with_error(format!(
                "Slurm no longer knows task {} (submitted {}): it was cancelled before it started, or it ended longer ago than the cluster's MinJobAge; the run wrote no result",
                rec.job_ref(),
                rec.submitted_at
            )),
        ),
    }
}

/// Cancels the sweep's queued and running tasks; returns them.
pub fn cancel_sweep(
    plan: &Plan,
    store: &Store,
    slurm: &Slurm,
) -> Result<Vec<JobRef>, BackendError> {
    let live: Vec<JobRef> = slurm_status(plan, store, slurm)?
        .into_iter()
        .filter(|v| matches!(v.state, SlurmRunState::Queued | SlurmRunState::Running))
        .filter_map(|v| v.job)
        .collect();
    slurm.cancel(&live)?;
    Ok(live)
}

/// Polls [`slurm_status`] every `poll` until no run is queued or running (what `--wait` does;
/// `sbatch --wait` itself polls too slowly). `on_poll` sees every snapshot (for a display).
pub fn wait_sweep(
    plan: &Plan,
    store: &Store,
    slurm: &Slurm,
    poll: Duration,
    mut on_poll: impl FnMut(&[SlurmRunView]),
) -> Result<Vec<SlurmRunView>, BackendError> {
    loop {
        let views = slurm_status(plan, store, slurm)?;
        on_poll(&views);
        if !views
            .iter()
            .any(|v| matches!(v.state, SlurmRunState::Queued | SlurmRunState::Running))
        {
            return Ok(views);
        }
        std::thread::sleep(poll);
    }
}

/// What [`SlurmTask::requeue`] does when a run stopped early because
/// [`crate::signal::stop_requested`] turned true (Slurm's warning before preemption or
/// the time limit): records the interruption in `status.json` and, inside a Slurm task
/// (`job_id` = [`current_job_id`]), asks Slurm to requeue it so that it runs again later.
/// Returns whether the task was requeued; the caller then exits (status 0 is fine: Slurm
/// ends this execution anyway).
pub fn on_preempted(
    run_dir: &Path,
    slurm: &Slurm,
    job_id: Option<&str>,
) -> Result<bool, BackendError> {
    use crate::store::mark_interrupted;
    let Some(id) = job_id else {
        mark_interrupted(
            run_dir,
            "interrupted by a preemption signal; rerun the sweep to resume",
        )?;
        return Ok(false);
    };
    // Recorded before the requeue: requeueing a running task makes Slurm terminate it, this
    // process included, within moments.
    mark_interrupted(
        run_dir,
        &format!("interrupted by Slurm's preemption signal; task {id} requeued"),
    )?;
    if let Err(e) = crate::slurm::requeue::requeue(slurm, id) {
        mark_interrupted(
            run_dir,
            &format!(
                "interrupted by Slurm's preemption signal; requeueing task {id} failed ({e}): rerun the sweep to resume"
            ),
        )?;
        return Err(e.into());
    }
    Ok(true)
}

/// Counts of runs per state, for a one-line summary.
pub fn summarize(views: &[SlurmRunView]) -> BTreeMap<SlurmRunState, usize> {
    let mut m = BTreeMap::new();
    for v in views {
        *m.entry(v.state).or_insert(0) += 1;
    }
    m
}

impl From<SlurmRunState> for ViewState {
    fn from(s: SlurmRunState) -> Self {
        match s {
            SlurmRunState::Done => ViewState::Done,
            SlurmRunState::Running => ViewState::Running,
            SlurmRunState::Queued => ViewState::Queued,
            SlurmRunState::Failed => ViewState::Failed,
            SlurmRunState::NotSubmitted => ViewState::NotSubmitted,
        }
    }
}

impl From<SlurmRunView> for RunView {
    fn from(v: SlurmRunView) -> Self {
        RunView {
            run: v.run,
            dir: v.dir,
            state: v.state.into(),
            detail: v.detail,
            job: v.job.map(|j| j.to_string()),
        }
    }
}

/// Runs a sweep as Slurm job arrays (see the module documentation).
pub struct SlurmBackend {
    slurm: Slurm,
    opts: SlurmOptions,
    exe: Option<PathBuf>,
}

impl SlurmBackend {
    pub fn new(settings: &BackendSettings) -> Self {
        Self {
            // Tasks inherit sbatch's environment; their output goes to log.txt, a file, so
            // no terminal colour codes (as for the local backend's children).
            slurm: Slurm::from_env().with_env("NO_COLOR", "1"),
            opts: settings.slurm.clone(),
            exe: settings.exe.clone(),
        }
    }
}

impl Backend for SlurmBackend {
    fn name(&self) -> &'static str {
        "Slurm"
    }

    fn has_records(&self, plan: &Plan, store: &Store) -> bool {
        uses_slurm(plan, store)
    }

    fn submit(&self, plan: &Plan, store: &Store) -> Result<Submitted, BackendError> {
        // Checked against the cluster before anything is written (tools installed,
        // partition known, request satisfiable, store writable).
        let root = absolute_store(store)?.root;
        self.slurm.validate(&self.opts, &root)?;
        let exe = super::primer_exe(&self.exe, "Slurm tasks")?;
        let done = {
            // No local orchestrator may work on the store while runs are handed to Slurm.
            let _lock = store.lock(&format!(
                "primer run --backend slurm, sweep '{}'",
                plan.sweep_name
            ))?;
            submit_sweep(plan, store, &self.slurm, &self.opts, &exe)?
        };
        Ok(Submitted::Queued(Queued {
            total_runs: plan.runs.len(),
            store: root,
            submitted: done.submitted.iter().map(|(i, _)| *i).collect(),
            already_done: done.done.len(),
            in_flight: done.in_flight.len(),
            batches: done
                .arrays
                .iter()
                .map(|a| QueuedBatch {
                    what: "job array",
                    ids: a.chunks.iter().map(|c| c.job_id.to_string()).collect(),
                    tasks: a.tasks.len(),
                    script: a.chunks.first().map(|c| c.script.clone()),
                })
                .collect(),
        }))
    }

    fn poll(&self, plan: &Plan, store: &Store) -> Result<Vec<RunView>, BackendError> {
        Ok(slurm_status(plan, store, &self.slurm)?
            .into_iter()
            .map(RunView::from)
            .collect())
    }

    fn cancel(&self, plan: &Plan, store: &Store) -> Result<Vec<String>, BackendError> {
        Ok(cancel_sweep(plan, store, &self.slurm)?
            .iter()
            .map(JobRef::to_string)
            .collect())
    }

    fn hosted_task(&self) -> Option<Box<dyn HostedTask>> {
        let job_id = current_job_id()?;
        Some(Box::new(SlurmTask {
            job_id,
            restarts: restarts(),
            slurm: self.slurm.clone(),
        }))
    }
}

/// Preempted Slurm tasks are requeued at most this many times (`SLURM_RESTART_COUNT`).
pub const MAX_PREEMPTION_REQUEUES: u32 = 3;

/// How often Slurm has restarted the current task.
fn restarts() -> u32 {
    std::env::var("SLURM_RESTART_COUNT")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// This process as a Slurm task ([`current_job_id`]).
pub struct SlurmTask {
    job_id: String,
    restarts: u32,
    slurm: Slurm,
}

impl HostedTask for SlurmTask {
    fn may_requeue(&self) -> bool {
        self.restarts < MAX_PREEMPTION_REQUEUES
    }

    fn requeue(&self, run_dir: &Path, notice: &mut dyn FnMut(&str)) -> Result<(), BackendError> {
        // Told first: the requeue makes Slurm terminate this task within moments.
        notice(
            "interrupted by the preemption signal: requeueing this Slurm task, which will restart the run from scratch",
        );
        on_preempted(run_dir, &self.slurm, Some(&self.job_id)).map(|_| ())
    }

    fn not_requeued_reason(&self) -> String {
        format!(
            "not requeued again after {} restarts of this Slurm task; if it is the time limit that stops it, raise --time (or `[slurm] time`)",
            self.restarts
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FinetuneConfig, PrimeConfig};
    use crate::slurm::testutil::Fake;
    use crate::spec::plan::RunSpec;

    /// Two priming runs; fine-tuning runs 2 and 3 start from prime 0, run 4 from prime 1, run 5
    /// from the plain model.
    fn plan(store: &Path) -> Plan {
        let prime = |seed| RunSpec::Prime {
            config: PrimeConfig {
                seed,
                ..Default::default()
            },
        };
        let p = [prime(0), prime(1)];
        let ft = |lang: &str, priming: Option<&RunSpec>| RunSpec::Finetune {
            config: FinetuneConfig {
                lang: lang.into(),
                ..Default::default()
            },
            priming: priming.map(RunSpec::id),
        };
        let specs = [
            (p[0].clone(), vec![]),
            (p[1].clone(), vec![]),
            (ft("hi", Some(&p[0])), vec![0]),
            (ft("ta", Some(&p[0])), vec![0]),
            (ft("hi", Some(&p[1])), vec![1]),
            (ft("hi", None), vec![]),
        ];
        Plan::from_runs(
            "demo",
            store,
            "s",
            Vec::from(specs),
            vec!["hi".into(), "ta".into()],
        )
    }

    fn setup() -> (Fake, tempfile::TempDir, Plan, Store) {
        let f = Fake::new();
        f.write("max_array", "1001");
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("store"));
        let p = plan(&store.root);
        (f, tmp, p, store)
    }

    fn script_of(a: &SubmittedArray) -> String {
        std::fs::read_to_string(&a.chunks[0].script).unwrap()
    }

    fn dependency_line(script: &str) -> Option<&str> {
        script
            .lines()
            .find_map(|l| l.strip_prefix("#SBATCH --dependency="))
    }

    #[test]
    fn fresh_sweep_submits_priming_then_fine_tuning_per_priming_run() {
        let (f, _tmp, plan, store) = setup();
        let s = f.slurm();
        assert!(!uses_slurm(&plan, &store));
        let r = submit_sweep(
            &plan,
            &store,
            &s,
            &SlurmOptions::default(),
            Path::new("/opt/primer"),
        )
        .unwrap();
        assert!(uses_slurm(&plan, &store));
        assert_eq!(r.arrays.len(), 4, "{:?}", r.arrays);
        let scripts: Vec<String> = r.arrays.iter().map(script_of).collect();
        let deps: Vec<Option<&str>> = scripts.iter().map(|s| dependency_line(s)).collect();
        assert_eq!(
            deps,
            vec![None, Some("afterok:100_0"), Some("afterok:100_1"), None]
        );
        let runs: Vec<Vec<usize>> = {
            let mut by_array: Vec<Vec<usize>> = vec![vec![]; 4];
            for (i, j) in &r.submitted {
                by_array[(j.array_job_id - 100) as usize].push(*i);
            }
            by_array
        };
        assert_eq!(runs, vec![vec![0, 1], vec![2, 3], vec![4], vec![5]]);
        assert!(
            scripts[1].contains("'/opt/primer' 'exec' '--device' 'cpu' '--run-dir' \"$run_dir\" &")
        );
        assert!(scripts[1].contains("#SBATCH --job-name=primer-demo\n"));
        assert!(scripts[1].contains("exec >>\"$run_dir\"/'log.txt' 2>&1"));
        let dir = store.run_dir(&plan.runs[3]);
        assert!(
            dir.join("spec.json").is_file(),
            "spec written before submission"
        );
        assert_eq!(
            SlurmRecord::read(&dir)
                .unwrap()
                .unwrap()
                .job_ref()
                .to_string(),
            "101_1"
        );
        let st = Store::read_status(&dir).unwrap();
        assert_eq!(
            (st.state, st.slot.as_deref()),
            (RunState::Pending, Some("slurm 101_1"))
        );
        // Task lists hold absolute run directories.
        let list = std::fs::read_to_string(&r.arrays[1].task_list).unwrap();
        assert!(
            list.lines()
                .all(|l| Path::new(l).is_absolute() && Path::new(l).is_dir()),
            "{list}"
        );
    }

    #[test]
    fn done_and_in_flight_runs_are_not_resubmitted() {
        let (f, _tmp, plan, store) = setup();
        let s = f.slurm();
        // Prime 0 is done; prime 1 runs from an earlier submission as task 50_0.
        std::fs::create_dir_all(store.run_dir(&plan.runs[0]).join("checkpoint")).unwrap();
        let p1 = store.run_dir(&plan.runs[1]);
        std::fs::create_dir_all(&p1).unwrap();
        SlurmRecord {
            job_id: 50,
            array_task_id: 0,
            job_name: "primer-demo".into(),
            cluster: None,
            script: PathBuf::new(),
            submitted_at: "2025-01-01T00:00:00Z".into(),
        }
        .write(&p1)
        .unwrap();
        f.write("squeue.txt", "50|0|51|RUNNING|None|primer-demo\n");
        let gpu = SlurmOptions {
            gpus_per_task: Some(1),
            partition: Some("gpu".into()),
            ..Default::default()
        };
        let r = submit_sweep(&plan, &store, &s, &gpu, Path::new("/opt/primer")).unwrap();
        assert_eq!(r.done, vec![0]);
        assert_eq!(
            r.in_flight
                .iter()
                .map(|(i, j)| (*i, j.to_string()))
                .collect::<Vec<_>>(),
            vec![(1, "50_0".into())]
        );
        let submitted: Vec<usize> = r.submitted.iter().map(|(i, _)| *i).collect();
        assert_eq!(
            submitted,
            vec![2, 3, 5, 4],
            "no priming array; runs grouped by what they wait for"
        );
        let deps: Vec<Option<String>> = r
            .arrays
            .iter()
            .map(|a| dependency_line(&script_of(a)).map(str::to_string))
            .collect();
        assert_eq!(deps, vec![None, Some("afterok:50_0".into())]);
        assert!(script_of(&r.arrays[0]).contains("'--device' 'cuda:0'"));

        // Nothing left to do: nothing is submitted.
        f.write("squeue.txt", "50|0|51|RUNNING|None|primer-demo\n100|0|100|PENDING|None|primer-demo\n100|1|100|PENDING|None|primer-demo\n100|2|100|PENDING|None|primer-demo\n101|0|101|PENDING|Dependency|primer-demo\n");
        let again = submit_sweep(&plan, &store, &s, &gpu, Path::new("/opt/primer")).unwrap();
        assert!(
            again.submitted.is_empty() && again.arrays.is_empty(),
            "{again:?}"
        );
        assert_eq!(again.in_flight.len(), 5);
    }

    #[test]
    fn status_reports_slurm_failures_even_without_output_and_cancel_hits_live_tasks() {
        let (f, _tmp, plan, store) = setup();
        let s = f.slurm();
        submit_sweep(
            &plan,
            &store,
            &s,
            &SlurmOptions::default(),
            Path::new("/opt/primer"),
        )
        .unwrap();
        // 100_0 completed without writing a checkpoint, 100_1 failed (and said why in
        // status.json), 101_0 waits, 101_1 runs, 102_0 was forgotten, 103_0 was cancelled.
        f.write(
            "squeue.txt",
            "100|0|104|COMPLETED|None|primer-demo\n100|1|105|FAILED|NonZeroExitCode|primer-demo\n101|0|101|PENDING|Dependency|primer-demo\n101|1|106|RUNNING|None|primer-demo\n103|0|103|CANCELLED|None|primer-demo\n",
        );
        f.write(
            "job_100",
            "JobId=104 ArrayJobId=100 ArrayTaskId=0 JobName=primer-demo JobState=COMPLETED Reason=None ExitCode=0:0\nJobId=105 ArrayJobId=100 ArrayTaskId=1 JobName=primer-demo JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0\n",
        );
        f.write("job_103", "JobId=103 ArrayJobId=103 ArrayTaskId=0 JobName=primer-demo JobState=CANCELLED Reason=None ExitCode=0:15\n");
        Store::update_status(&store.run_dir(&plan.runs[1]), |st| {
            st.state = RunState::Failed;
            st.error = Some("out of patience".into());
        })
        .unwrap();
        let v = slurm_status(&plan, &store, &s).unwrap();
        let states: Vec<SlurmRunState> = v.iter().map(|x| x.state).collect();
        use SlurmRunState::*;
        assert_eq!(
            states,
            vec![Failed, Failed, Queued, Running, Failed, Failed]
        );
        assert!(
            v[0].detail
                .contains("100_0 completed but the run wrote no result"),
            "{}",
            v[0].detail
        );
        assert_eq!(
            v[1].detail,
            "failed with Slurm state FAILED exit 1:0 (NonZeroExitCode): out of patience"
        );
        assert!(v[2].detail.contains("Dependency"));
        assert!(
            v[4].detail.contains("no longer knows task 102_0"),
            "{}",
            v[4].detail
        );
        assert_eq!(v[5].detail, "failed with Slurm state CANCELLED exit 0:15");
        assert_eq!(summarize(&v)[&Failed], 4);

        let cancelled = cancel_sweep(&plan, &store, &s).unwrap();
        assert_eq!(
            cancelled.iter().map(JobRef::to_string).collect::<Vec<_>>(),
            vec!["101_0", "101_1"]
        );
        assert_eq!(f.read("scancel.log"), "101_0 101_1\n");

        // A result that appears makes the run done whatever Slurm says.
        std::fs::create_dir_all(store.run_dir(&plan.runs[0]).join("checkpoint")).unwrap();
        assert_eq!(slurm_status(&plan, &store, &s).unwrap()[0].state, Done);
    }

    #[test]
    fn wait_polls_until_nothing_is_queued_or_running() {
        let (f, _tmp, plan, store) = setup();
        let s = f.slurm();
        submit_sweep(
            &plan,
            &store,
            &s,
            &SlurmOptions::default(),
            Path::new("/opt/primer"),
        )
        .unwrap();
        f.write("squeue.txt", "100|0|100|PENDING|None|primer-demo\n");
        let mut polls = 0;
        let v = wait_sweep(&plan, &store, &s, Duration::from_millis(1), |_| {
            polls += 1;
            // The second snapshot still shows the pending task; then Slurm forgets it.
            if polls == 2 {
                f.write("squeue.txt", "");
            }
        })
        .unwrap();
        assert_eq!(polls, 3);
        assert!(v.iter().all(|x| x.state == SlurmRunState::Failed));
    }

    #[test]
    fn preempted_runs_are_requeued_and_marked() {
        let f = Fake::new();
        let dir = tempfile::tempdir().unwrap();
        assert!(on_preempted(dir.path(), &f.slurm(), Some("57")).unwrap());
        assert_eq!(f.read("scontrol.log"), "requeue 57\n");
        let st = Store::read_status(dir.path()).unwrap();
        assert_eq!(st.state, RunState::Pending);
        assert!(st.error.unwrap().contains("task 57 requeued"));
        assert!(!on_preempted(dir.path(), &f.slurm(), None).unwrap());
        assert!(on_preempted(dir.path(), &f.slurm(), Some("57; rm")).is_err());
    }

    #[test]
    fn names_and_commands() {
        assert_eq!(job_name("paper table 1"), "primer-paper_table_1");
        let c = exec_command(Path::new("/bin/primer"), &SlurmOptions::default());
        assert_eq!(
            c,
            vec!["/bin/primer", "exec", "--device", "cpu", "--run-dir"]
        );
    }
}
