//! Requeueing the current Slurm task. Slurm sends `--signal=B:USR2@90` to the batch shell 90 s
//! before killing a task; the wrapper script forwards it to `primer exec`, whose training
//! loops stop between steps (`crate::signal`); the run marks itself interrupted and calls
//! [`requeue_self`] so that Slurm runs it again later.

use super::{Slurm, SlurmError};

/// The current Slurm task as `scontrol` and `scancel` name it, None outside Slurm: inside an
/// array task `ARRAYJOBID_TASKID` (`SLURM_ARRAY_JOB_ID`, `SLURM_ARRAY_TASK_ID`), else
/// `SLURM_JOB_ID`. An array task's own `SLURM_JOB_ID` is not enough: the first task to start
/// gets the array's job id, and `scontrol requeue <that id>` requeues the whole array,
/// finished tasks included.
pub fn current_job_id() -> Option<String> {
    let var = |k: &str| std::env::var(k).ok();
    task_id_of(
        var("SLURM_JOB_ID").as_deref(),
        var("SLURM_ARRAY_JOB_ID").as_deref(),
        var("SLURM_ARRAY_TASK_ID").as_deref(),
    )
}

/// [`current_job_id`] from the values of `SLURM_JOB_ID`, `SLURM_ARRAY_JOB_ID` and
/// `SLURM_ARRAY_TASK_ID`.
fn task_id_of(
    job: Option<&str>,
    array_job: Option<&str>,
    array_task: Option<&str>,
) -> Option<String> {
    let digits = |s: &&str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    match (array_job.filter(digits), array_task.filter(digits)) {
        (Some(a), Some(t)) => Some(format!("{a}_{t}")),
        _ => job.filter(|s| !s.is_empty()).map(str::to_string),
    }
}

/// Asks Slurm to requeue the current task (`scontrol requeue` of [`current_job_id`]): Slurm ends
/// this execution and runs the task again later (with `SLURM_RESTART_COUNT` incremented).
/// Returns false outside Slurm, where there is nothing to requeue.
pub fn requeue_self(slurm: &Slurm) -> Result<bool, SlurmError> {
    match current_job_id() {
        None => Ok(false),
        Some(id) => requeue(slurm, &id).map(|()| true),
    }
}

/// `scontrol requeue JOB_ID`.
pub fn requeue(slurm: &Slurm, job_id: &str) -> Result<(), SlurmError> {
    if job_id.is_empty() || !job_id.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return Err(SlurmError::Other(format!(
            "'{job_id}' is not a Slurm job id"
        )));
    }
    slurm.run("scontrol", &["requeue", job_id]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_tasks_are_named_by_array_and_task() {
        assert_eq!(
            task_id_of(Some("12"), Some("12"), Some("2")).as_deref(),
            Some("12_2")
        );
        assert_eq!(
            task_id_of(Some("13"), Some("12"), Some("0")).as_deref(),
            Some("12_0")
        );
        assert_eq!(task_id_of(Some("57"), None, None).as_deref(), Some("57"));
        assert_eq!(
            task_id_of(Some("57"), Some(""), Some("3")).as_deref(),
            Some("57")
        );
        assert_eq!(task_id_of(Some(""), None, None), None);
        assert_eq!(task_id_of(None, None, None), None);
    }
}
