//! The store's view of a plan: the observed state of every run, read from the run
//! directories alone (the backends and `primer plan` / `primer status` share it).

use super::{Observed, Store};
use crate::spec::{Plan, RunKind};
use std::path::PathBuf;

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
    // A collected priming run (`--gc-checkpoints` removed its checkpoint once every dependent
    // in the sweep that ran it was done) is done only while nothing here needs it: a sweep
    // sharing the store with pending runs that start from it runs it again, as the backends'
    // `prepare` decides, so `plan` and `status` must not count it as done.
    for (i, r) in plan.runs.iter().enumerate() {
        if r.kind() == RunKind::Prime
            && states[i].state == Observed::Done
            && !Store::is_done(RunKind::Prime, &states[i].dir)
            && plan
                .dependents(i)
                .iter()
                .any(|&j| states[j].state != Observed::Done)
        {
            states[i].state = Observed::Pending;
        }
    }
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
