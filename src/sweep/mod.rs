//! Sweeps: a TOML file describing a grid of experiments → a DAG of priming and fine-tuning
//! runs with shared priming → resumable execution on device slots, one child process per run.
//!
//! * [`file`]   — the sweep file format and its validation;
//! * [`plan`]   — expansion into content-addressed runs (hash of the resolved spec) and the DAG;
//! * [`store`]  — one directory per run, status files, the store lock;
//! * [`sched`]  — the scheduler over an [`sched::Executor`] (the real one spawns `primer exec`).

pub mod error;
pub mod file;
pub mod source;

pub use error::SweepError;
pub use file::Sweep;
