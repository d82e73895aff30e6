//! Sweeps: a TOML file describing a grid of experiments → a DAG of priming and fine-tuning
//! runs with shared priming → resumable execution on device slots, one child process per run.
//!
//! * [`file`](mod@file) — the sweep file format and its validation (errors name file:line and key);
//! * [`plan`]    — expansion into content-addressed runs (hash of the resolved spec) and the DAG;
//! * [`store`]   — one directory per run, status files, the store lock;
//! * [`sched`]   — the scheduler over an [`sched::Executor`], tested with a fake executor;
//! * [`process`] — the real executor (`primer exec` children) and the child's job loading;
//! * [`run`]     — `primer run` / `plan` / `status` logic, checkpoint GC, the report input.

pub mod display;
pub mod error;
pub mod file;
pub mod hash;
pub mod plan;
pub mod process;
pub mod run;
pub mod sched;
pub mod source;
pub mod store;

pub use error::SweepError;
pub use file::Sweep;
pub use plan::{Plan, PlannedRun, RunKind, RunSpec};
pub use run::{RunOptions, RunSummary, report_input, report_input_for, run_sweep};
pub use store::Store;

/// The orchestrator's SIGINT/SIGTERM handlers live with the other signals.
pub use crate::signal::install_interrupt_handler;
