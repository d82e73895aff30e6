//! Specs: what a sweep asks for, before anything runs. A TOML sweep file is parsed and
//! validated (errors name file:line and key), expanded into content-addressed runs, and read
//! for its report section. Nothing here touches the run store or a backend, so the store, the
//! backends and the orchestrator can all depend on it.
//!
//! * [`file`](mod@file) — the sweep file format and its validation;
//! * [`source`]  — the TOML source with spans, for errors that point at a line;
//! * [`plan`]    — expansion into runs identified by the hash of their resolved spec
//!   ([`hash`]), and the DAG of priming and fine-tuning runs;
//! * [`report`]  — the `[report]` section: what the report selects, compares and plots.

pub mod error;
pub mod file;
pub mod hash;
pub mod plan;
pub mod report;
pub mod source;

pub use error::SpecError;
pub use file::Sweep;
pub use plan::{Plan, PlannedRun, RunKind, RunSpec};
pub use report::ReportSpec;
