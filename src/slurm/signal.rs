//! Preemption warning for the run process. Slurm sends `--signal=B:USR2@90` to the batch
//! shell 90 s before killing a task; the wrapper script forwards it to `primer exec`. A run
//! installs [`install_preemption_handler`] at start, its training loop polls
//! [`preemption_requested`] between steps, and on `true` it saves what it can, marks itself
//! interrupted and either exits or calls [`requeue_self`] so Slurm runs it again later.
//!
//! The handler only stores into an atomic flag: that is all a signal handler may safely do.

use super::{Slurm, SlurmError};
use std::sync::atomic::{AtomicBool, Ordering};

static PREEMPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    PREEMPTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGUSR2 handler (idempotent). Blocking system calls interrupted by the signal
/// are restarted (`SA_RESTART`), so file I/O in progress is not disturbed.
pub fn install_preemption_handler() -> Result<(), SlurmError> {
    install_handler(libc::SIGUSR2)
}

fn install_handler(sig: libc::c_int) -> Result<(), SlurmError> {
    // SAFETY: `sigaction` with a zeroed struct, an empty mask and a handler that only performs
    // an atomic store (async-signal-safe).
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(sig, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(SlurmError::Other(format!(
            "cannot install the preemption signal handler: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// True once the preemption signal has arrived (stays true).
pub fn preemption_requested() -> bool {
    PREEMPTED.load(Ordering::SeqCst)
}

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

    #[test]
    fn usr2_sets_the_flag() {
        assert!(!preemption_requested());
        install_preemption_handler().unwrap();
        install_preemption_handler().unwrap();
        // SAFETY: raising a signal whose handler was just installed.
        unsafe {
            libc::raise(libc::SIGUSR2);
        }
        assert!(preemption_requested());
    }
}
