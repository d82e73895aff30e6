//! Sweeps: a TOML file describing a grid of experiments → a DAG of priming and fine-tuning
//! runs with shared priming → resumable execution on a backend (`crate::backend`) → report.
//!
//! * [`file`](mod@file) — the sweep file format and its validation (errors name file:line and key);
//! * [`plan`]    — expansion into content-addressed runs (hash of the resolved spec) and the DAG;
//! * [`store`]   — one directory per run, status files, the store lock;
//! * [`orchestrate`] — `primer run` / `status` / `cancel`: plan → backend → store → report;
//! * [`exec`]    — `primer exec`: one stored run, in this process, on every backend;
//! * [`run`]     — the store's view of a plan (`plan`, `status`), checkpoint GC, the report
//!   input.

pub mod error;
pub mod exec;
pub mod file;
pub mod hash;
pub mod orchestrate;
pub mod plan;
pub mod run;
pub mod source;
pub mod store;

pub use crate::backend::RunSummary;
pub use error::SweepError;
pub use file::Sweep;
pub use plan::{Plan, PlannedRun, RunKind, RunSpec};
pub use run::{report_input, report_input_for};
pub use store::Store;
