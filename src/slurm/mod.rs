//! A Slurm client: job arrays over run directories, their states, cancellation and requeueing.
//!
//! Each array task executes one run directory with the same entry point as local execution
//! (`primer exec --run-dir DIR`), so Slurm only decides *where and when* a run executes. The
//! module knows nothing of sweeps (`crate::backend::slurm` adapts a sweep's plan and store
//! to it); it takes plain inputs:
//!
//! * [`SlurmOptions`] — partition, resources, throttle, extra `sbatch` arguments, preemption
//!   signal; serde-able so that a sweep file can carry defaults;
//! * [`ArrayJob`] — the run directories of one array, the command each task runs, the
//!   dependencies (`afterok` on earlier job references);
//! * [`script`] — `sbatch` script generation (array ranges, chunking at `MaxArraySize`,
//!   per-task wrapper mapping `SLURM_ARRAY_TASK_ID` → run directory);
//! * [`Slurm`] — the client: up-front validation, `sbatch --parsable` submission with a
//!   `slurm.json` record per run, state queries (`squeue`, `scontrol`; no `sacct`), `scancel`;
//! * [`parse`] — parsers of `squeue` / `scontrol` / `sinfo` output and the Slurm state model;
//! * [`requeue`] — requeueing the current task after the preemption warning (the SIGUSR2
//!   handler itself is `crate::signal`).

pub mod client;
pub mod options;
pub mod parse;
pub mod record;
pub mod requeue;
pub mod script;
#[cfg(test)]
pub(crate) mod testutil;

pub use client::{Slurm, SubmittedArray, SubmittedTask};
pub use options::{SlurmArgs, SlurmOptions};
pub use parse::{ExitCode, SlurmState, TaskStatus};
pub use record::SlurmRecord;
pub use script::{ArrayJob, JobRef};

use std::path::PathBuf;

/// Everything that can go wrong talking to Slurm, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error(
        "`{program}` not found on PATH: the Slurm backend needs the Slurm client tools (sbatch, squeue, scontrol, scancel, sinfo); run on a Slurm login node, install slurm-client, or use `--backend local`"
    )]
    NotInstalled { program: String },
    #[error("`{command}` failed (exit {status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected output from `{command}`: {message} (output: {output:?})")]
    Output {
        command: String,
        message: String,
        output: String,
    },
    #[error("invalid Slurm option {option}: {message}")]
    Option { option: String, message: String },
    #[error(
        "Slurm partition '{partition}' does not exist; available partitions: {available} (set --partition or `[slurm] partition` in the sweep file)"
    )]
    UnknownPartition {
        partition: String,
        available: String,
    },
    #[error("request impossible on Slurm partition '{partition}': {message}")]
    Impossible { partition: String, message: String },
    #[error(
        "store {path} is not writable: {source} (choose another --store or fix its permissions)"
    )]
    StoreNotWritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid run directory {path:?}: {message}")]
    RunDir { path: PathBuf, message: String },
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error("{0}")]
    Other(String),
}
