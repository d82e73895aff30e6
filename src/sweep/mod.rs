//! Sweeps: a TOML file describing a grid of experiments → a DAG of priming and fine-tuning
//! runs with shared priming → resumable execution on a backend (`crate::backend`) → report.
//!
//! What a sweep asks for (the file, its expansion into runs) is `crate::spec`; where runs
//! and their results live is `crate::store`; where they execute is `crate::backend`. This
//! module ties them together:
//!
//! * [`orchestrate`] — `primer run` / `status` / `cancel`: plan → backend → store → report;
//! * [`exec`]    — `primer exec`: one stored run, in this process, on every backend;
//! * [`run`]     — the store's view of a plan (`plan`, `status`), checkpoint GC, the report
//!   input.

pub mod error;
pub mod exec;
pub mod orchestrate;
pub mod run;

pub use crate::backend::RunSummary;
pub use crate::spec::{Plan, PlannedRun, RunKind, RunSpec, Sweep};
pub use crate::store::Store;
pub use error::SweepError;
pub use run::{report_input, report_input_for};
