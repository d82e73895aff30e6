//! Orchestration: sweep file → plan → backend → store → report, whatever the backend. What
//! `primer run`, `primer status` and `primer cancel` call; the command line only parses
//! flags and prints what these functions return.

use super::error::SweepError;
use super::run::{
    RemainingEstimate, estimate_remaining, gc_checkpoints, missing_inputs, model_problems,
    report_input_for, unreadable_inputs,
};
use crate::backend::{
    self, Backend, BackendKind, BackendSettings, Queued, RunSummary, RunView, Submitted, ViewState,
};
use crate::spec::file::Sweep;
use crate::spec::plan::Plan;
use crate::store::{ObservedRun, Store, observe};
use std::path::PathBuf;
use std::time::Duration;

/// What `primer run` asks for.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub backend: BackendKind,
    /// The backends' settings from the command line; its Slurm options go over the sweep
    /// file's `[slurm]` table.
    pub settings: BackendSettings,
    /// With a queueing backend: stay until every queued run has ended, looking this often.
    pub wait: Option<Duration>,
    /// At the end, remove primed checkpoints that no pending run of this sweep needs.
    pub gc_checkpoints: bool,
    /// Write the report (`results/<name>/`) once the runs have ended.
    pub write_report: bool,
}

/// What [`run`] reports while it works.
pub enum RunEvent<'a> {
    /// The runs were handed to a queueing backend.
    Queued {
        backend: &'static str,
        queued: &'a Queued,
    },
    /// One look at the queued runs while waiting.
    Polled {
        backend: &'static str,
        views: &'a [RunView],
    },
}

/// What [`run`] did.
#[derive(Debug, Clone)]
pub enum RunOutcome {
    /// The backend executed the runs before returning.
    Ran {
        summary: RunSummary,
        /// The report's text, when it was written.
        report: Option<String>,
    },
    /// The runs were queued (and, with `wait`, followed until they ended).
    Queued {
        backend: &'static str,
        queued: Queued,
        waited: Option<Waited>,
        report: Option<String>,
    },
}

/// The end of waiting for queued runs.
#[derive(Debug, Clone)]
pub struct Waited {
    pub plan: Plan,
    /// The last look at every run of the plan.
    pub views: Vec<RunView>,
    /// Checkpoints removed (`gc_checkpoints`, once every run is done).
    pub collected: Vec<PathBuf>,
}

impl RunOutcome {
    /// The exit status of `primer run`: 0 when every run is done (or queued, without
    /// waiting), 130 after Ctrl-C, 1 otherwise.
    pub fn exit_status(&self) -> u8 {
        match self {
            RunOutcome::Ran { summary, .. } if summary.interrupted => 130,
            RunOutcome::Ran { summary, .. } => u8::from(!summary.all_done()),
            RunOutcome::Queued { waited: None, .. } => 0,
            RunOutcome::Queued {
                waited: Some(w), ..
            } => u8::from(!w.views.iter().all(|v| v.state == ViewState::Done)),
        }
    }
}

/// Executes (or queues) the pending runs of `sweep` on the requested backend, then collects
/// checkpoints and writes the report as asked. `on_event` sees the queued runs and every look
/// at them while waiting.
pub fn run(
    sweep: &Sweep,
    req: &RunRequest,
    on_event: &mut dyn FnMut(RunEvent<'_>),
) -> Result<RunOutcome, SweepError> {
    let plan = Plan::expand(sweep)?;
    if plan.store.is_file() {
        return Err(SweepError::StoreIsAFile {
            file: sweep.source.path.clone(),
            path: plan.store.clone(),
        });
    }
    let missing = missing_inputs(&plan);
    if !missing.is_empty() {
        return Err(SweepError::MissingInputs {
            file: sweep.source.path.clone(),
            cwd: std::env::current_dir().unwrap_or_default(),
            missing,
        });
    }
    let problems = unreadable_inputs(&plan);
    if !problems.is_empty() {
        return Err(SweepError::UnreadableInputs {
            file: sweep.source.path.clone(),
            problems,
        });
    }
    let store = Store::new(&plan.store);
    let mut settings = req.settings.clone();
    settings.slurm = sweep.slurm.merge(&settings.slurm);
    let backend = backend::open(req.backend, &settings);
    refuse_if_in_flight_elsewhere(backend.as_ref(), &plan, &store)?;
    let lock_note = format!("primer run, sweep '{}'", sweep.name);
    match backend.submit(&plan, &store)? {
        Submitted::Ran(mut summary) => {
            if req.gc_checkpoints && !summary.interrupted {
                let _lock = store.lock(&lock_note)?;
                summary.collected = gc_checkpoints(&plan, &store)?;
            }
            let report = if req.write_report && !summary.interrupted {
                Some(write_report(sweep)?)
            } else {
                None
            };
            Ok(RunOutcome::Ran { summary, report })
        }
        Submitted::Queued(queued) => {
            let name = backend.name();
            on_event(RunEvent::Queued {
                backend: name,
                queued: &queued,
            });
            let Some(poll) = req.wait else {
                return Ok(RunOutcome::Queued {
                    backend: name,
                    queued,
                    waited: None,
                    report: None,
                });
            };
            let views = wait(backend.as_ref(), &plan, &store, poll, &mut |views| {
                on_event(RunEvent::Polled {
                    backend: name,
                    views,
                })
            })?;
            let mut collected = Vec::new();
            if req.gc_checkpoints && views.iter().all(|v| v.state == ViewState::Done) {
                let _lock = store.lock(&lock_note)?;
                collected = gc_checkpoints(&plan, &store)?;
            }
            let report = if req.write_report {
                Some(write_report(sweep)?)
            } else {
                None
            };
            Ok(RunOutcome::Queued {
                backend: name,
                queued,
                waited: Some(Waited {
                    plan,
                    views,
                    collected,
                }),
                report,
            })
        }
    }
}

/// Polls `backend` every `poll` until no run is queued or running; returns the last look.
pub fn wait(
    backend: &dyn Backend,
    plan: &Plan,
    store: &Store,
    poll: Duration,
    on_poll: &mut dyn FnMut(&[RunView]),
) -> Result<Vec<RunView>, SweepError> {
    loop {
        let views = backend.poll(plan, store)?;
        on_poll(&views);
        if !views.iter().any(|v| v.state.is_live()) {
            return Ok(views);
        }
        std::thread::sleep(poll);
    }
}

/// Runs still queued or running on the backend they were submitted to would execute twice.
fn refuse_if_in_flight_elsewhere(
    chosen: &dyn Backend,
    plan: &Plan,
    store: &Store,
) -> Result<(), SweepError> {
    let Some(other) = backend::recorded(plan, store) else {
        return Ok(());
    };
    if other.name() == chosen.name() {
        // The backend itself leaves its own queued runs alone.
        return Ok(());
    }
    let elsewhere = match chosen.name() {
        "local" => "locally".to_string(),
        name => format!("on {name}"),
    };
    match other.poll(plan, store) {
        Ok(views) => {
            let live = views.iter().filter(|v| v.state.is_live()).count();
            if live > 0 {
                return Err(SweepError::InFlight {
                    live,
                    sweep: plan.sweep_name.clone(),
                    backend: other.name(),
                    elsewhere,
                });
            }
        }
        // The store may have moved off the cluster: the backend cannot be asked, runs go
        // ahead.
        Err(e) => tracing::warn!(
            "some runs were submitted to {0}, but {0} cannot be asked about them ({e}); running {elsewhere}",
            other.name()
        ),
    }
    Ok(())
}

/// Writes the sweep's report (`results/<name>/`) and returns its text: the single call site of
/// the report stage after a sweep, for every backend.
fn write_report(sweep: &Sweep) -> Result<String, SweepError> {
    let input = report_input_for(sweep)?;
    let opts = crate::report::ReportOptions {
        sweep_file: Some(sweep.source.path.clone()),
        ..crate::report::ReportOptions::default()
    };
    let written = crate::report::write_report(&input, &opts).map_err(SweepError::Report)?;
    Ok(written.text)
}

/// What `primer plan` shows: the plan and the store's view of it.
#[derive(Debug, Clone)]
pub struct Overview {
    pub plan: Plan,
    pub store: PathBuf,
    pub observed: Vec<ObservedRun>,
    pub time_left: RemainingEstimate,
    /// Inputs (model folders, data directories) not found: `primer run` would refuse to start.
    pub missing: Vec<String>,
    /// Settings a model cannot serve (`run::model_problems`): `primer run` would refuse too.
    pub model_problems: Vec<String>,
}

/// The plan of `sweep` and the store's view of every run.
pub fn overview(sweep: &Sweep) -> Result<Overview, SweepError> {
    let plan = Plan::expand(sweep)?;
    let store = Store::new(&plan.store);
    let observed = observe(&plan, &store);
    Ok(Overview {
        time_left: estimate_remaining(&plan, &observed),
        missing: missing_inputs(&plan),
        model_problems: model_problems(&plan),
        observed,
        store: store.root,
        plan,
    })
}

/// What `primer status` shows.
#[derive(Debug, Clone)]
pub struct SweepStatus {
    pub plan: Plan,
    pub store: PathBuf,
    /// A `primer run` holds the store's lock.
    pub locked: bool,
    pub view: StatusView,
}

/// Whose view of the runs `primer status` shows.
#[derive(Debug, Clone)]
pub enum StatusView {
    /// No run was handed to a queueing backend: the store's view.
    Store {
        observed: Vec<ObservedRun>,
        time_left: RemainingEstimate,
    },
    /// Runs were submitted to `backend`: its view of every run.
    Backend {
        backend: &'static str,
        views: Vec<RunView>,
    },
}

/// The state of every run of `sweep`, from the backend that holds records of them, else from
/// the store.
pub fn status(sweep: &Sweep) -> Result<SweepStatus, SweepError> {
    let plan = Plan::expand(sweep)?;
    let store = Store::new(&plan.store);
    let view = match backend::recorded(&plan, &store) {
        Some(b) => StatusView::Backend {
            backend: b.name(),
            views: b.poll(&plan, &store)?,
        },
        None => {
            let observed = observe(&plan, &store);
            StatusView::Store {
                time_left: estimate_remaining(&plan, &observed),
                observed,
            }
        }
    };
    Ok(SweepStatus {
        locked: store.is_locked(),
        store: store.root,
        plan,
        view,
    })
}

/// What [`cancel`] stopped.
#[derive(Debug, Clone)]
pub struct Cancelled {
    pub backend: &'static str,
    /// The backend's names of the stopped tasks.
    pub tasks: Vec<String>,
}

/// Cancels the queued and running runs of `sweep` on the backend they were submitted to.
pub fn cancel(sweep: &Sweep) -> Result<Cancelled, SweepError> {
    let plan = Plan::expand(sweep)?;
    let store = Store::new(&plan.store);
    let backend = backend::recorded(&plan, &store)
        .unwrap_or_else(|| backend::open(BackendKind::Local, &BackendSettings::default()));
    Ok(Cancelled {
        backend: backend.name(),
        tasks: backend.cancel(&plan, &store)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;
    use std::cell::Cell;

    /// A queueing backend whose one run stays queued for `queued_polls` looks, then fails.
    struct FakeQueue {
        queued_polls: usize,
        polls: Cell<usize>,
    }

    impl Backend for FakeQueue {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn submit(&self, _plan: &Plan, _store: &Store) -> Result<Submitted, BackendError> {
            Ok(Submitted::Queued(Queued::default()))
        }
        fn poll(&self, _plan: &Plan, _store: &Store) -> Result<Vec<RunView>, BackendError> {
            let n = self.polls.get();
            self.polls.set(n + 1);
            Ok(vec![RunView {
                run: 0,
                dir: PathBuf::from("run"),
                state: if n < self.queued_polls {
                    ViewState::Queued
                } else {
                    ViewState::Failed
                },
                detail: String::new(),
                job: Some("7_0".into()),
            }])
        }
        fn cancel(&self, _plan: &Plan, _store: &Store) -> Result<Vec<String>, BackendError> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn waiting_polls_a_backend_until_nothing_is_queued_or_running() {
        let tmp = tempfile::tempdir().unwrap();
        let plan = Plan::from_runs("t", tmp.path(), "s", Vec::new(), Vec::new());
        let store = Store::new(tmp.path());
        let fake = FakeQueue {
            queued_polls: 2,
            polls: Cell::new(0),
        };
        let mut seen = Vec::new();
        let last = wait(&fake, &plan, &store, Duration::ZERO, &mut |v| {
            seen.push(v[0].state)
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![ViewState::Queued, ViewState::Queued, ViewState::Failed]
        );
        assert_eq!(last[0].state, ViewState::Failed);
    }

    #[test]
    fn status_and_cancel_of_a_store_without_queued_runs_use_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let text = format!(
            "name = \"t\"\nstore = \"{}\"\ntargets = [\"hi\"]\n[base.finetune]\nmodel = \"m\"\n",
            tmp.path().join("store").display()
        );
        let sweep = Sweep::from_text(&tmp.path().join("t.toml"), &text).unwrap();
        let st = status(&sweep).unwrap();
        assert!(matches!(st.view, StatusView::Store { .. }), "{st:?}");
        let e = cancel(&sweep).unwrap_err().to_string();
        assert!(
            e.contains("no run of this sweep was submitted") && e.contains("Ctrl-C"),
            "{e}"
        );
    }
}
