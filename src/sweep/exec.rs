//! `primer exec`: one stored run executed in this process, the single entry point of a run on
//! every backend (the local scheduler's children and Slurm's tasks alike). The run's
//! `spec.json` says what to do; the result lands in its run directory.
//!
//! When the process runs as a backend's task ([`crate::backend::hosting_task`]), the stop
//! signal (`crate::signal`, sent before preemption or the time limit) makes the training
//! loops end between steps; the run is then handed back to the backend to run again, at most
//! as often as the backend allows, and a failure is recorded in `status.json` (nobody else
//! would record why the task failed).

use super::error::SweepError;
use crate::backend::{BackendError, HostedTask};
use crate::config::{FinetuneConfig, PrimeConfig};
use crate::device::DeviceSpec;
use crate::prime::PrimeError;
use crate::progress::JsonLinesProgress;
use crate::spec::plan::RunSpec;
use crate::store::{RunState, Store, StoreError, layout, mark_interrupted, now_s};
use crate::train::FinetuneError;
use std::path::{Path, PathBuf};

/// Everything that can end `primer exec` with an error.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The run directory does not hold a valid run.
    #[error(transparent)]
    Load(#[from] SweepError),
    #[error(transparent)]
    Prime(#[from] PrimeError),
    #[error(transparent)]
    Finetune(#[from] FinetuneError),
    #[error("{0}")]
    Signal(#[source] std::io::Error),
    /// Handing the interrupted run back to its backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The run was interrupted once more than its backend allows to hand back.
    #[error("{reason}")]
    NotRequeued {
        reason: String,
        #[source]
        source: Box<ExecError>,
    },
}

impl ExecError {
    /// Whether the run stopped early because the stop signal arrived.
    pub fn is_interrupted(&self) -> bool {
        matches!(
            self,
            ExecError::Prime(PrimeError::Interrupted { .. })
                | ExecError::Finetune(FinetuneError::Interrupted { .. })
        )
    }
}

/// The error and its causes on one line (`outer: inner: ...`), as `primer` prints errors.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

/// Executes the run stored in `run_dir` on `device` (`cpu`, `cuda:N`). `notice` receives the
/// lines for the user about an interruption (the run's log, under a backend).
pub fn exec_run(
    run_dir: &Path,
    device: &str,
    notice: &mut dyn FnMut(&str),
) -> Result<(), ExecError> {
    let host = crate::backend::hosting_task();
    // Inside a backend's task the stop signal makes the training loops end between steps;
    // elsewhere it keeps its default action.
    if host.is_some() {
        crate::signal::install_stop_handler().map_err(ExecError::Signal)?;
    }
    // The signal also comes before a time limit: a run longer than that would otherwise be
    // handed back and restarted from scratch forever.
    let may_requeue = host.as_ref().is_none_or(|h| h.may_requeue());
    match execute_job(run_dir, device) {
        Err(e) if e.is_interrupted() && may_requeue => {
            tracing::warn!("{}", error_chain(&e));
            hand_back(run_dir, host.as_deref(), notice)
        }
        Err(e) => {
            let e = match &host {
                Some(h) if e.is_interrupted() => ExecError::NotRequeued {
                    reason: h.not_requeued_reason(),
                    source: Box::new(e),
                },
                _ => e,
            };
            // Under a backend nobody else records why the run failed: `primer status` shows
            // this next to the backend's state and exit code.
            if host.is_some() {
                let _ = Store::update_status(run_dir, |s| {
                    s.state = RunState::Failed;
                    s.error = Some(error_chain(&e));
                    s.finished_at = Some(now_s());
                });
            }
            Err(e)
        }
        Ok(()) => Ok(()),
    }
}

/// An interrupted run: requeued by its backend, or marked pending for the next `primer run`.
fn hand_back(
    run_dir: &Path,
    host: Option<&dyn HostedTask>,
    notice: &mut dyn FnMut(&str),
) -> Result<(), ExecError> {
    match host {
        Some(h) => h.requeue(run_dir, notice)?,
        None => {
            mark_interrupted(
                run_dir,
                "interrupted by a preemption signal; rerun the sweep to resume",
            )
            .map_err(SweepError::from)?;
            notice("interrupted by the preemption signal: rerun the sweep to run it again");
        }
    }
    Ok(())
}

fn execute_job(run_dir: &Path, device: &str) -> Result<(), ExecError> {
    match load_exec_job(run_dir, device)? {
        ExecJob::Prime { config, out_dir } => {
            tracing::info!("priming into {}", out_dir.display());
            crate::prime::prime(&config, &out_dir, &JsonLinesProgress)?;
        }
        ExecJob::Finetune { config, out_dir } => {
            tracing::info!(
                "fine-tuning {} ({}) into {}",
                config.lang,
                config.method,
                out_dir.display()
            );
            let m = crate::train::run_finetune(&config, &out_dir, &JsonLinesProgress)?;
            tracing::info!(
                "test F1 {:.4} (dev F1 {:.4}, epoch {})",
                m.test.f1,
                m.dev.f1,
                m.best_epoch
            );
        }
    }
    Ok(())
}

/// What `primer exec` runs, read from a run directory.
#[derive(Debug, Clone)]
pub enum ExecJob {
    /// Prime with `config`, writing the checkpoint folder `out_dir`.
    Prime {
        config: PrimeConfig,
        out_dir: PathBuf,
    },
    /// Fine-tune with `config` (its `init` filled with the priming checkpoint), writing
    /// `metrics.json` into `out_dir`.
    Finetune {
        config: FinetuneConfig,
        out_dir: PathBuf,
    },
}

/// Reads `DIR/spec.json` and prepares the job: device set, the priming checkpoint filled in
/// (from the sibling `prime-<id>/checkpoint` of the same store). Relative paths stay relative
/// to the current directory.
pub fn load_exec_job(run_dir: &Path, device: &str) -> Result<ExecJob, SweepError> {
    DeviceSpec::parse(device)?;
    let spec = Store::read_spec(run_dir)?;
    Ok(match spec {
        RunSpec::Prime { mut config } => {
            config.device = device.to_string();
            ExecJob::Prime {
                config,
                out_dir: run_dir.join(layout::CHECKPOINT),
            }
        }
        RunSpec::Finetune {
            mut config,
            priming,
        } => {
            config.device = device.to_string();
            if let Some(id) = priming {
                let store = Store::new(run_dir.parent().unwrap_or(Path::new(".")));
                let ckpt = store.checkpoint_dir(&id);
                if !ckpt.is_dir() {
                    return Err(StoreError::BadRun {
                        dir: run_dir.to_path_buf(),
                        message: format!(
                            "its priming checkpoint {} does not exist: run the sweep (`primer run`) so that the priming run executes first",
                            ckpt.display()
                        ),
                    }
                    .into());
                }
                config.init = Some(ckpt);
            }
            ExecJob::Finetune {
                config,
                out_dir: run_dir.to_path_buf(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::plan::PlannedRun;

    #[test]
    fn exec_job_fills_the_priming_checkpoint_and_device() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let prime = RunSpec::Prime {
            config: PrimeConfig::default(),
        };
        let ft = RunSpec::Finetune {
            config: FinetuneConfig {
                lang: "hi".into(),
                ..FinetuneConfig::default()
            },
            priming: Some(prime.id()),
        };
        let run = PlannedRun {
            id: ft.id(),
            spec: ft,
            deps: vec![],
            settings: vec![],
        };
        let run_dir = store.prepare(&run).unwrap();
        let err = load_exec_job(&run_dir, "cpu").unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        std::fs::create_dir_all(store.checkpoint_dir(&prime.id())).unwrap();
        match load_exec_job(&run_dir, "cuda:0").unwrap() {
            ExecJob::Finetune { config, out_dir } => {
                assert_eq!(config.init, Some(store.checkpoint_dir(&prime.id())));
                assert_eq!(config.device, "cuda:0");
                assert_eq!(out_dir, run_dir);
            }
            other => panic!("{other:?}"),
        }
        assert!(load_exec_job(&run_dir, "tpu").is_err());
    }

    #[test]
    fn an_edited_spec_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spec = RunSpec::Prime {
            config: PrimeConfig::default(),
        };
        let run_dir = dir.path().join(spec.dir_name());
        let edited = PrimeConfig {
            steps: 7,
            ..PrimeConfig::default()
        };
        crate::fsutil::write_json_atomic(
            &run_dir.join("spec.json"),
            &RunSpec::Prime { config: edited },
        )
        .unwrap();
        let err = load_exec_job(&run_dir, "cpu").unwrap_err().to_string();
        assert!(err.contains("was edited"), "{err}");
    }
}
