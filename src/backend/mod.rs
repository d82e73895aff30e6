//! Backends: where a sweep's runs execute. The orchestrator (`crate::sweep::orchestrate`)
//! plans, stores and reports; a [`Backend`] only decides where and when each stored run
//! executes `primer exec --run-dir DIR`, the single entry point of a run on every backend.
//!
//! * [`local`] — the scheduler over this machine's device slots, one child process per run;
//!   [`Backend::submit`] returns once the runs have ended ([`Submitted::Ran`]);
//! * [`slurm`](mod@slurm) — Slurm job arrays through the client in `crate::slurm`;
//!   [`Backend::submit`] returns once the runs are queued ([`Submitted::Queued`]) and
//!   [`Backend::poll`] follows them.
//!
//! A backend is chosen in one place, [`open`]: a new backend is one new file implementing
//! [`Backend`] (and, when its tasks can be preempted, [`HostedTask`]) plus one arm there.

pub mod local;
pub mod slurm;

pub use local::{LocalOptions, RunSummary};

use crate::slurm::{SlurmError, SlurmOptions};
use crate::spec::plan::Plan;
use crate::store::{Store, StoreError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The backends primer knows (`primer run --backend <kind>`; the variants' docs are its help).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Child processes on this machine's device slots (--devices, --per-device).
    Local,
    /// One Slurm array task per run, submitted with sbatch (--partition, --gpus-per-task, ...).
    Slurm,
}

impl BackendKind {
    /// Every backend (the enum's own list, so a new variant is in it).
    pub fn all() -> &'static [BackendKind] {
        <BackendKind as clap::ValueEnum>::value_variants()
    }
}

/// What the backends are configured with; each reads its own part. The defaults are what
/// `primer status`, `primer cancel` and `primer exec` need (they submit nothing).
#[derive(Debug, Clone, Default)]
pub struct BackendSettings {
    pub local: local::LocalOptions,
    /// The sweep file's `[slurm]` table with the command line over it.
    pub slurm: SlurmOptions,
    /// The primer binary the runs execute; None: this process's own executable.
    pub exe: Option<PathBuf>,
}

/// The one place a backend is chosen.
pub fn open(kind: BackendKind, settings: &BackendSettings) -> Box<dyn Backend> {
    match kind {
        BackendKind::Local => Box::new(local::LocalBackend::new(settings)),
        BackendKind::Slurm => Box::new(slurm::SlurmBackend::new(settings)),
    }
}

/// The backend holding records of the store's runs (a queueing backend's task ids), if any:
/// `primer status` and `primer cancel` ask it, and a run on another backend first checks that
/// none of them is still queued or running there.
pub fn recorded(plan: &Plan, store: &Store) -> Option<Box<dyn Backend>> {
    BackendKind::all()
        .iter()
        .map(|&k| open(k, &BackendSettings::default()))
        .find(|b| b.has_records(plan, store))
}

/// The task of a batch system that this process runs as, if any (detected from the
/// environment): what `primer exec` asks when a run is interrupted.
pub fn hosting_task() -> Option<Box<dyn HostedTask>> {
    BackendKind::all()
        .iter()
        .find_map(|&k| open(k, &BackendSettings::default()).hosted_task())
}

/// Where and when a sweep's stored runs execute.
pub trait Backend {
    /// How messages name the backend: `local`, `Slurm`.
    fn name(&self) -> &'static str;

    /// Whether this backend keeps records of some of the store's runs (then it, not the store
    /// alone, knows whether they are queued or running).
    fn has_records(&self, _plan: &Plan, _store: &Store) -> bool {
        false
    }

    /// Executes or queues every run of `plan` that is not done. The store's run directories
    /// (spec, status) are written here, under the store lock.
    fn submit(&self, plan: &Plan, store: &Store) -> Result<Submitted, BackendError>;

    /// One look at every run of `plan` (element i is `plan.runs[i]`).
    fn poll(&self, plan: &Plan, store: &Store) -> Result<Vec<RunView>, BackendError>;

    /// Stops the queued and running runs of `plan`; returns the backend's names of what it
    /// stopped.
    fn cancel(&self, plan: &Plan, store: &Store) -> Result<Vec<String>, BackendError>;

    /// The task of this backend that the current process runs as (from its environment).
    fn hosted_task(&self) -> Option<Box<dyn HostedTask>> {
        None
    }
}

/// A run executing as a backend's task that the backend may stop early (preemption, time
/// limit: the stop signal of `crate::signal`) and run again later.
pub trait HostedTask {
    /// Whether an interrupted run is handed back to the backend to run again (false once it
    /// was restarted too often).
    fn may_requeue(&self) -> bool;

    /// Records the interruption in the run's `status.json` and asks the backend to run the
    /// task again; `notice` is told first (the backend may end this process at once).
    fn requeue(&self, run_dir: &Path, notice: &mut dyn FnMut(&str)) -> Result<(), BackendError>;

    /// Why an interrupted run was not handed back, and what to change.
    fn not_requeued_reason(&self) -> String;
}

/// What [`Backend::submit`] did.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// The runs executed before `submit` returned.
    Ran(RunSummary),
    /// The runs are queued; [`Backend::poll`] follows them.
    Queued(Queued),
}

/// Runs handed to a queueing backend.
#[derive(Debug, Clone, Default)]
pub struct Queued {
    /// The runs of the plan.
    pub total_runs: usize,
    /// The store's absolute root (tasks may start in another directory).
    pub store: PathBuf,
    /// Plan run indices queued now.
    pub submitted: Vec<usize>,
    /// Runs not queued because their result exists.
    pub already_done: usize,
    /// Runs not queued because an earlier submission is still queued or running.
    pub in_flight: usize,
    pub batches: Vec<QueuedBatch>,
}

/// One unit of submission (a Slurm job array, possibly in chunks).
#[derive(Debug, Clone)]
pub struct QueuedBatch {
    /// What the backend calls it: `job array`.
    pub what: &'static str,
    /// The backend's ids of its parts.
    pub ids: Vec<String>,
    pub tasks: usize,
    /// The script of its first part.
    pub script: Option<PathBuf>,
}

/// A run's state as a backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViewState {
    Done,
    Running,
    Queued,
    /// Ended without a result.
    Failed,
    /// Never handed to the backend (and not done).
    NotSubmitted,
    /// Waiting to be run again (interrupted, or a failed attempt with retries left).
    Pending,
    /// Recorded as running by an orchestrator that is gone.
    Stale,
    /// Cannot run: a run it depends on failed.
    Blocked,
}

impl ViewState {
    pub fn as_str(self) -> &'static str {
        match self {
            ViewState::Done => "done",
            ViewState::Running => "running",
            ViewState::Queued => "queued",
            ViewState::Failed => "failed",
            ViewState::NotSubmitted => "not submitted",
            ViewState::Pending => "pending",
            ViewState::Stale => "stale",
            ViewState::Blocked => "blocked",
        }
    }

    /// Queued or running: the backend still works on it.
    pub fn is_live(self) -> bool {
        matches!(self, ViewState::Queued | ViewState::Running)
    }
}

/// One run of a plan, seen through the store and a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunView {
    /// Index into [`Plan::runs`].
    pub run: usize,
    pub dir: PathBuf,
    pub state: ViewState,
    /// One line: the backend's state and reason, exit code, or the run's own error.
    pub detail: String,
    /// The backend's name of the run's task, when it has one.
    pub job: Option<String>,
}

/// Counts of runs per state, in [`ViewState`]'s order.
pub fn count_views(views: &[RunView]) -> BTreeMap<ViewState, usize> {
    let mut m = BTreeMap::new();
    for v in views {
        *m.entry(v.state).or_insert(0) += 1;
    }
    m
}

/// Everything that can go wrong handing runs to a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Slurm(#[from] SlurmError),
    /// The store (run directories, the lock, status files).
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// Estimating the runs' memory for `--per-device auto`.
    #[error("--per-device auto: {0}")]
    Cost(#[from] crate::cost::CostError),
    /// Invalid command-line usage of a backend's options.
    #[error("{0}")]
    Usage(String),
    #[error("cannot locate the primer binary for {purpose}: {source}")]
    Exe {
        purpose: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The request does not apply to this backend; the message says what to do instead.
    #[error("{0}")]
    Unsupported(String),
}

/// `settings.exe`, or this process's own executable.
fn primer_exe(
    settings_exe: &Option<PathBuf>,
    purpose: &'static str,
) -> Result<PathBuf, BackendError> {
    match settings_exe {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe().map_err(|source| BackendError::Exe { purpose, source }),
    }
}
