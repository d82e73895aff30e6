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

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    // A second Ctrl-C while stopping exits at once (children die with us: PDEATHSIG).
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// Installs SIGINT/SIGTERM handlers that set the returned flag (for [`RunOptions::interrupt`]).
pub fn install_interrupt_handler() -> &'static AtomicBool {
    let handler = on_interrupt as extern "C" fn(libc::c_int);
    // SAFETY: the handler only touches an atomic and calls _exit.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
    &INTERRUPTED
}
