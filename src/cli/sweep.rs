//! `primer plan | run | status | cancel | exec | demo`: sweeps from the command line.

use anyhow::Context;
use primer::progress::JsonLinesProgress;
use primer::slurm::backend::{
    SlurmRunState, SlurmRunView, cancel_sweep, on_preempted, slurm_status, submit_sweep, summarize,
    uses_slurm, wait_sweep,
};
use primer::slurm::requeue::current_job_id;
use primer::slurm::{Slurm, SlurmArgs};
use primer::sweep::plan::{Plan, RunKind};
use primer::sweep::process::{ExecJob, load_exec_job};
use primer::sweep::run::{
    count_states, estimate_remaining, gc_checkpoints, missing_inputs, observe, parse_devices,
    plan_rows,
};
use primer::sweep::store::RunState;
use primer::sweep::{
    RunOptions, RunSummary, Store, Sweep, SweepError, install_interrupt_handler, report_input_for,
    run_sweep,
};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

/// The demo sweep, embedded so that `primer demo` works from any checkout.
const DEMO_SWEEP: &str = include_str!("../../sweeps/demo.toml");

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The sweep file (TOML; see sweeps/README.md).
    pub sweep: PathBuf,
    /// Print one JSON object per run (id, kind, dependencies, status, setting, language,
    /// seed, resolved configuration) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Where `primer run` executes the runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Child processes on this machine's device slots (--devices, --per-device).
    Local,
    /// One Slurm array task per run, submitted with sbatch (--partition, --gpus-per-task, ...).
    Slurm,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The sweep file (TOML; see sweeps/README.md).
    pub sweep: PathBuf,
    /// Where the runs execute: on this machine, or as Slurm job arrays.
    #[arg(long, value_enum, default_value_t = Backend::Local)]
    pub backend: Backend,
    /// Devices to run on: `cpu`, a list such as `cuda:0,cuda:1`, or `all` (every GPU).
    /// Local backend only.
    #[arg(long, default_value = "cpu")]
    pub devices: String,
    /// Concurrent runs per device. Local backend only.
    #[arg(long, default_value_t = 1)]
    pub per_device: usize,
    /// Retries of a failed run before it is reported as failed. Local backend only (under
    /// Slurm, rerun `primer run --backend slurm` to resubmit failed runs).
    #[arg(long, default_value_t = 1)]
    pub retries: u32,
    #[command(flatten)]
    pub slurm: SlurmArgs,
    /// Slurm backend: stay until every submitted run has ended, print the failures and write
    /// the report (without it, `primer run` returns once the jobs are submitted).
    #[arg(long)]
    pub wait: bool,
    /// Slurm backend with --wait: seconds between two looks at the queue.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub poll_interval: f64,
    /// At the end, remove primed checkpoints that no pending run of this sweep needs
    /// (their curves.json is kept).
    #[arg(long)]
    pub gc_checkpoints: bool,
    /// Plain line-by-line output even on a terminal.
    #[arg(long)]
    pub plain: bool,
    /// Do not write the report (results/<name>/) at the end.
    #[arg(long)]
    pub no_report: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The sweep file.
    pub sweep: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The sweep file.
    pub sweep: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The run's store directory (holds spec.json).
    #[arg(long)]
    pub run_dir: PathBuf,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Two target languages instead of six (results under results/demo-quick).
    #[arg(long)]
    pub quick: bool,
    /// Concurrent runs on the CPU.
    #[arg(long, default_value_t = 1)]
    pub per_device: usize,
    /// Plain line-by-line output even on a terminal.
    #[arg(long)]
    pub plain: bool,
}

fn short(id: &str) -> &str {
    &id[..8.min(id.len())]
}

pub fn plan(a: PlanArgs) -> anyhow::Result<ExitCode> {
    match print_plan(&a) {
        // `primer plan ... | head` closes the pipe early: not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        other => other,
    }
}

fn print_plan(a: &PlanArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let sweep = Sweep::load(&a.sweep)?;
    let plan = Plan::expand(&sweep)?;
    let store = Store::new(&plan.store);
    if a.json {
        for row in plan_rows(&plan, &store) {
            writeln!(out, "{}", serde_json::to_string(&row)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let obs = observe(&plan, &store);
    writeln!(
        out,
        "sweep '{}' ({}), store {}",
        sweep.name,
        a.sweep.display(),
        store.root.display()
    )?;
    writeln!(
        out,
        "{:<8} {:<17} {:<9} {:<10} {:<5} {:<17} setting(s) / configuration",
        "status", "run", "lang", "method", "seed", "depends on"
    )?;
    for (r, o) in plan.runs.iter().zip(&obs) {
        let deps: Vec<String> = r
            .deps
            .iter()
            .map(|&d| format!("prime-{}", short(&plan.runs[d].id)))
            .collect();
        let method = match &r.spec {
            primer::sweep::RunSpec::Prime { config } => {
                format!("{:?}", config.method).to_lowercase()
            }
            primer::sweep::RunSpec::Finetune { config, .. } => config.method.to_string(),
        };
        let detail = match &r.spec {
            primer::sweep::RunSpec::Prime { config }
                if config.method == primer::config::PrimingMethod::Ft =>
            {
                format!("lr {} steps {}", config.ft_lr, config.steps)
            }
            primer::sweep::RunSpec::Prime { config } => format!(
                "inner {:?} S={} inner_lr {} outer_lr {} steps {}",
                config.inner_loop,
                config.inner_steps,
                config.effective_inner_lr(),
                config.outer_lr,
                config.steps
            )
            .to_lowercase(),
            primer::sweep::RunSpec::Finetune { config, .. } => {
                format!("lr {} epochs {}", config.effective_lr(), config.epochs)
            }
        };
        writeln!(
            out,
            "{:<8} {:<17} {:<9} {:<10} {:<5} {:<17} {} · {detail}",
            o.label(),
            format!("{}-{}", r.kind(), short(&r.id)),
            r.lang(),
            method,
            r.spec.seed(),
            if deps.is_empty() {
                "-".to_string()
            } else {
                deps.join(",")
            },
            r.settings.join(", "),
        )?;
    }
    let counts: Vec<String> = count_states(&obs)
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(l, n)| format!("{n} {l}"))
        .collect();
    writeln!(
        out,
        "{} runs ({} priming, {} fine-tuning; {} table entries over {} settings): {}",
        plan.runs.len(),
        plan.count(RunKind::Prime),
        plan.count(RunKind::Finetune),
        plan.entries.len(),
        plan.settings.len(),
        counts.join(", ")
    )?;
    if let Some(line) = run_time_left(&plan, &obs) {
        writeln!(out, "{line}")?;
    }
    let missing = missing_inputs(&plan);
    if !missing.is_empty() {
        writeln!(
            out,
            "warning: inputs not found (relative to {}); `primer run` will refuse to start:",
            std::env::current_dir()?.display()
        )?;
        for m in missing {
            writeln!(out, "  {m}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `primer plan`'s and `primer status`'s line on the run time left, once some runs of the
/// kinds still to run have finished.
fn run_time_left(plan: &Plan, obs: &[primer::sweep::run::ObservedRun]) -> Option<String> {
    let left = estimate_remaining(plan, obs);
    (left.estimated > 0).then(|| {
        let unmeasured = match left.unmeasured {
            0 => String::new(),
            n => format!("; {n} more of kinds with no finished run yet"),
        };
        format!(
            "run time left: about {:.0} min for {} runs, from the mean duration of finished runs \
             of each kind (divide by the slots that run at once){unmeasured}",
            left.seconds / 60.0,
            left.estimated
        )
    })
}

pub fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let sweep = Sweep::load(&a.sweep)?;
    let plan = Plan::expand(&sweep)?;
    let store = Store::new(&plan.store);
    if uses_slurm(&plan, &store) {
        return slurm_status_report(&sweep, &plan, &store);
    }
    let obs = observe(&plan, &store);
    println!(
        "sweep '{}': {} runs in {}",
        sweep.name,
        plan.runs.len(),
        store.root.display()
    );
    for (label, n) in count_states(&obs) {
        println!("  {label:<8} {n}");
    }
    for (r, o) in plan.runs.iter().zip(&obs) {
        match o.label() {
            "failed" => println!(
                "failed  {} after {} attempt(s): {}\n        log: {}",
                r.label(),
                o.attempts,
                o.error.as_deref().unwrap_or("?"),
                o.dir.join(primer::sweep::store::layout::LOG).display()
            ),
            "blocked" => println!(
                "blocked {}: its priming run {} failed",
                r.label(),
                o.blocked_by.as_deref().unwrap_or("?")
            ),
            "running" => println!("running {}", r.label()),
            _ => {}
        }
    }
    if let Some(line) = run_time_left(&plan, &obs) {
        println!("{line}");
    }
    if store.is_locked() {
        println!("a `primer run` is active on this store");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cancel(a: CancelArgs) -> anyhow::Result<ExitCode> {
    let sweep = Sweep::load(&a.sweep).with_context(|| {
        format!(
            "cannot cancel the Slurm jobs of {} (a local `primer run` is stopped with Ctrl-C)",
            a.sweep.display()
        )
    })?;
    let plan = Plan::expand(&sweep)?;
    let store = Store::new(&plan.store);
    if !uses_slurm(&plan, &store) {
        anyhow::bail!(
            "`primer cancel {}`: no run of this sweep was submitted to Slurm, so there are no jobs to cancel; a local `primer run` is stopped with Ctrl-C (its runs are marked pending and resume with `primer run`)",
            a.sweep.display()
        );
    }
    let cancelled = cancel_sweep(&plan, &store, &Slurm::from_env())?;
    let list: Vec<String> = cancelled.iter().map(ToString::to_string).collect();
    println!(
        "cancelled {} queued or running Slurm task(s) of sweep '{}'{}",
        cancelled.len(),
        sweep.name,
        if list.is_empty() {
            String::new()
        } else {
            format!(": {}", list.join(" "))
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Preempted Slurm tasks are requeued at most this many times (`SLURM_RESTART_COUNT`).
const MAX_PREEMPTION_REQUEUES: u32 = 3;

/// How often Slurm has restarted the current task.
fn restarts() -> u32 {
    std::env::var("SLURM_RESTART_COUNT")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether a run stopped early because the preemption signal arrived.
fn interrupted(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<primer::prime::PrimeError>(),
        Some(primer::prime::PrimeError::Interrupted { .. })
    ) || matches!(
        e.downcast_ref::<primer::train::FinetuneError>(),
        Some(primer::train::FinetuneError::Interrupted { .. })
    )
}

pub fn exec(a: ExecArgs) -> anyhow::Result<ExitCode> {
    super::init_logging();
    // Inside a Slurm task the preemption warning (SIGUSR2, forwarded by the batch script)
    // makes the training loops stop between steps; elsewhere USR2 keeps its default action.
    let job_id = current_job_id();
    if job_id.is_some() {
        primer::signal::install_stop_handler()?;
    }
    // The warning also comes before the time limit: a run longer than --time would otherwise
    // be requeued and restarted from scratch forever.
    let give_up = job_id.is_some() && restarts() >= MAX_PREEMPTION_REQUEUES;
    let result = execute_job(&a);
    match result {
        Err(e) if interrupted(&e) && !give_up => {
            tracing::warn!("{e:#}");
            if job_id.is_some() {
                // Printed first: the requeue makes Slurm terminate this task within moments.
                println!(
                    "interrupted by the preemption signal: requeueing this Slurm task, which will restart the run from scratch"
                );
            }
            if !on_preempted(&a.run_dir, &Slurm::from_env(), job_id.as_deref())? {
                println!("interrupted by the preemption signal: rerun the sweep to run it again");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let e = if interrupted(&e) {
                e.context(format!(
                    "not requeued again after {} restarts of this Slurm task; if it is the time limit that stops it, raise --time (or `[slurm] time`)",
                    restarts()
                ))
            } else {
                e
            };
            // Under Slurm nobody else records why the run failed: `primer status` shows this
            // next to Slurm's state and exit code.
            if job_id.is_some() {
                let _ = Store::update_status(&a.run_dir, |s| {
                    s.state = RunState::Failed;
                    s.error = Some(format!("{e:#}"));
                    s.finished_at = Some(primer::sweep::store::now_s());
                });
            }
            Err(e)
        }
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

fn execute_job(a: &ExecArgs) -> anyhow::Result<()> {
    let job = load_exec_job(&a.run_dir, &a.device)?;
    match job {
        ExecJob::Prime { config, out_dir } => {
            tracing::info!("priming into {}", out_dir.display());
            primer::prime::prime(&config, &out_dir, &JsonLinesProgress)?;
        }
        ExecJob::Finetune { config, out_dir } => {
            tracing::info!(
                "fine-tuning {} ({}) into {}",
                config.lang,
                config.method,
                out_dir.display()
            );
            let m = primer::train::run_finetune(&config, &out_dir, &JsonLinesProgress)?;
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

pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    super::init_logging();
    let sweep = Sweep::load(&a.sweep)?;
    check_backend_args(&a)?;
    if a.backend == Backend::Slurm {
        return run_slurm(&a, &sweep);
    }
    {
        let plan = Plan::expand(&sweep)?;
        refuse_if_slurm_in_flight(&plan, &Store::new(&plan.store))?;
    }
    let devices = parse_devices(&a.devices)?;
    let resume = format!(
        "primer run {} --devices {} --per-device {}",
        a.sweep.display(),
        a.devices,
        a.per_device
    );
    execute(
        &sweep,
        devices,
        a.per_device,
        a.retries,
        a.gc_checkpoints,
        a.plain,
        !a.no_report,
        &resume,
    )
}

/// Runs a sweep, prints the summary and writes the report.
#[allow(clippy::too_many_arguments)]
fn execute(
    sweep: &Sweep,
    devices: Vec<primer::device::DeviceSpec>,
    per_device: usize,
    retries: u32,
    gc_checkpoints: bool,
    plain: bool,
    report: bool,
    resume: &str,
) -> anyhow::Result<ExitCode> {
    if per_device == 0 {
        anyhow::bail!("--per-device must be at least 1");
    }
    let opts = RunOptions {
        devices,
        per_device,
        retries,
        gc_checkpoints,
        exe: std::env::current_exe().context("cannot locate the primer binary for child runs")?,
        interrupt: install_interrupt_handler(),
        plain,
    };
    let summary = run_sweep(sweep, &opts)?;
    print_summary(&summary, resume);
    if summary.interrupted {
        return Ok(ExitCode::from(130));
    }
    if report {
        write_sweep_report(sweep)?;
    }
    Ok(if summary.all_done() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Writes the sweep's report (results/<name>/) and prints it: the single call site of the
/// report stage after a sweep, for both backends.
fn write_sweep_report(sweep: &Sweep) -> anyhow::Result<()> {
    let input = report_input_for(sweep)?;
    let written = primer::report::write_report(&input, &primer::report::ReportOptions::default())
        .context("the runs finished but writing the report failed")?;
    println!("{}", written.text);
    Ok(())
}

/// Refuses options that the chosen backend would silently ignore.
fn check_backend_args(a: &RunArgs) -> anyhow::Result<()> {
    match a.backend {
        Backend::Local => {
            let mut given = Vec::new();
            if a.slurm != SlurmArgs::default() {
                given.push("Slurm resource options (--partition, --gpus-per-task, ...)");
            }
            if a.wait {
                given.push("--wait");
            }
            anyhow::ensure!(
                given.is_empty(),
                "{} only apply to `--backend slurm` (a local run always waits for its runs)",
                given.join(" and ")
            );
        }
        Backend::Slurm => {
            let mut given = Vec::new();
            if a.devices != "cpu" {
                given.push("--devices (request GPUs with --gpus-per-task)");
            }
            if a.per_device != 1 {
                given.push("--per-device (limit concurrency with --array-throttle)");
            }
            if a.retries != 1 {
                given
                    .push("--retries (rerun `primer run --backend slurm` to resubmit failed runs)");
            }
            if a.gc_checkpoints && !a.wait {
                given.push("--gc-checkpoints without --wait (the runs have not finished yet)");
            }
            anyhow::ensure!(
                given.is_empty(),
                "with --backend slurm these local options do not apply: {}",
                given.join("; ")
            );
            anyhow::ensure!(
                a.poll_interval.is_finite() && a.poll_interval > 0.0,
                "--poll-interval must be a positive number of seconds, got {}",
                a.poll_interval
            );
        }
    }
    Ok(())
}

/// A local run on a store whose runs are queued or running in Slurm would execute them twice.
fn refuse_if_slurm_in_flight(plan: &Plan, store: &Store) -> anyhow::Result<()> {
    if !uses_slurm(plan, store) {
        return Ok(());
    }
    match slurm_status(plan, store, &Slurm::from_env()) {
        Ok(views) => {
            let live = views
                .iter()
                .filter(|v| matches!(v.state, SlurmRunState::Queued | SlurmRunState::Running))
                .count();
            anyhow::ensure!(
                live == 0,
                "{live} run(s) of sweep '{}' are queued or running in Slurm: wait for them (`primer status`) or cancel them (`primer cancel`) before running locally",
                plan.sweep_name
            );
        }
        // The store may have moved off the cluster: Slurm cannot be asked, runs go ahead.
        Err(e) => tracing::warn!(
            "some runs were submitted to Slurm, but Slurm cannot be asked about them ({e}); running locally"
        ),
    }
    Ok(())
}

/// `primer run --backend slurm [--wait]`.
fn run_slurm(a: &RunArgs, sweep: &Sweep) -> anyhow::Result<ExitCode> {
    let plan = Plan::expand(sweep)?;
    let missing = missing_inputs(&plan);
    if !missing.is_empty() {
        return Err(SweepError::MissingInputs {
            file: sweep.source.path.clone(),
            cwd: std::env::current_dir().unwrap_or_default(),
            missing,
        }
        .into());
    }
    // Command line over the sweep file's [slurm] table; checked against the cluster before
    // anything is written (tools installed, partition known, request satisfiable, store
    // writable).
    let opts = sweep.slurm.merge(&a.slurm.to_options());
    // Tasks inherit sbatch's environment; their output goes to log.txt, a file, so no terminal
    // colour codes (as for the local backend's children).
    let slurm = Slurm::from_env().with_env("NO_COLOR", "1");
    let store = Store::new(&plan.store);
    let root = std::path::absolute(&store.root)
        .with_context(|| format!("cannot resolve the store path {}", store.root.display()))?;
    slurm.validate(&opts, &root)?;
    let exe = std::env::current_exe().context("cannot locate the primer binary for Slurm tasks")?;
    let submitted = {
        // No local orchestrator may work on the store while runs are handed to Slurm.
        let _lock = store.lock(&format!("primer run --backend slurm {}", a.sweep.display()))?;
        submit_sweep(&plan, &store, &slurm, &opts, &exe)?
    };
    println!(
        "sweep '{}': {} runs, store {}: {} submitted to Slurm now, {} already done, {} still queued or running from an earlier submission",
        sweep.name,
        plan.runs.len(),
        root.display(),
        submitted.submitted.len(),
        submitted.done.len(),
        submitted.in_flight.len()
    );
    for arr in &submitted.arrays {
        let ids: Vec<String> = arr.chunks.iter().map(|c| c.job_id.to_string()).collect();
        println!(
            "  job array {} ({} task(s)); script {}",
            ids.join(", "),
            arr.tasks.len(),
            arr.chunks
                .first()
                .map_or_else(String::new, |c| c.script.display().to_string())
        );
    }
    if !a.wait {
        println!(
            "follow with `primer status {0}`, cancel with `primer cancel {0}`; rerun this command to resubmit failed runs",
            a.sweep.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut last = String::new();
    let views = wait_sweep(
        &plan,
        &store,
        &slurm,
        Duration::from_secs_f64(a.poll_interval),
        |v| {
            let line = counts_line(v);
            if line != last {
                println!("slurm: {line}");
                last = line;
            }
        },
    )?;
    let failed = print_failures(&plan, &views);
    let all_done = views.iter().all(|v| v.state == SlurmRunState::Done);
    if all_done && a.gc_checkpoints {
        let _lock = store.lock(&format!("primer run --backend slurm {}", a.sweep.display()))?;
        for c in gc_checkpoints(&plan, &store)? {
            println!("removed checkpoint {}", c.display());
        }
    }
    if failed > 0 {
        println!(
            "rerun to resubmit the failed runs:\n  primer run {} --backend slurm --wait",
            a.sweep.display()
        );
    }
    if !a.no_report {
        write_sweep_report(sweep)?;
    }
    Ok(if all_done {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `3 done, 1 running, 2 queued`: the counts of [`summarize`] in a fixed order.
fn counts_line(views: &[SlurmRunView]) -> String {
    let counts = summarize(views);
    let parts: Vec<String> = counts
        .iter()
        .map(|(state, n)| format!("{n} {}", state.as_str()))
        .collect();
    parts.join(", ")
}

/// Prints every failed run with Slurm's detail and its log; returns how many failed.
fn print_failures(plan: &Plan, views: &[SlurmRunView]) -> usize {
    let mut n = 0;
    for v in views.iter().filter(|v| v.state == SlurmRunState::Failed) {
        n += 1;
        let run = &plan.runs[v.run];
        let failed_dep = run
            .deps
            .iter()
            .find(|&&d| views[d].state == SlurmRunState::Failed)
            .map(|&d| format!(" (its priming run {} failed)", plan.runs[d].dir_name()))
            .unwrap_or_default();
        println!(
            "failed  {}: {}{failed_dep}\n        log: {}",
            run.label(),
            v.detail,
            v.dir.join(primer::sweep::store::layout::LOG).display()
        );
    }
    n
}

/// `primer status` of a sweep submitted to Slurm: the store's results combined with Slurm's
/// view of each recorded task.
fn slurm_status_report(sweep: &Sweep, plan: &Plan, store: &Store) -> anyhow::Result<ExitCode> {
    let views = slurm_status(plan, store, &Slurm::from_env())?;
    println!(
        "sweep '{}': {} runs in {} (Slurm backend)",
        sweep.name,
        plan.runs.len(),
        store.root.display()
    );
    for (state, n) in summarize(&views) {
        println!("  {:<14} {n}", state.as_str());
    }
    print_failures(plan, &views);
    for v in &views {
        if matches!(v.state, SlurmRunState::Running | SlurmRunState::Queued) {
            println!(
                "{:<7} {}: {}",
                v.state.as_str(),
                plan.runs[v.run].label(),
                v.detail
            );
        }
    }
    if store.is_locked() {
        println!("a `primer run` is active on this store");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(s: &RunSummary, resume: &str) {
    println!(
        "{} runs: {} were already done, {} executed now, {} failed, {} not runnable{}",
        s.total_runs,
        s.already_done,
        s.executed,
        s.failed.len(),
        s.blocked.len(),
        if s.not_run > 0 {
            format!(", {} not run", s.not_run)
        } else {
            String::new()
        }
    );
    for (run, err, log) in &s.failed {
        println!("FAILED {run}\n  error: {err}\n  log:   {}", log.display());
    }
    for (run, why) in &s.blocked {
        println!("NOT RUNNABLE {run}: {why}");
    }
    for c in &s.collected {
        println!("removed checkpoint {}", c.display());
    }
    if s.interrupted {
        println!(
            "interrupted: running runs were stopped and marked pending; resume with\n  {resume}"
        );
    } else if !s.failed.is_empty() {
        println!("rerun to retry the failed runs:\n  {resume}");
    }
}

/// Where the demo puts its tiny model.
const DEMO_MODEL: &str = "results/demo-model";
const DEMO_TOKENIZER: &str = "data/tokenizer/bert-base-multilingual-cased";

pub fn demo(a: DemoArgs) -> anyhow::Result<ExitCode> {
    super::init_logging();
    let name = if a.quick { "demo-quick" } else { "demo" };
    // The demo sweep is written next to its results, so `primer plan|status|report` work on it.
    let sweep_path = Path::new("results").join(name).join(format!("{name}.toml"));
    let mut text = DEMO_SWEEP.to_string();
    if a.quick {
        text = quick_variant(&text)?;
    }
    primer::fsutil::write_atomic(&sweep_path, text.as_bytes())?;
    let sweep = Sweep::load(&sweep_path)?;
    ensure_demo_model()?;
    let resume = format!("primer demo{}", if a.quick { " --quick" } else { "" });
    execute(
        &sweep,
        vec![primer::device::DeviceSpec::Cpu],
        a.per_device,
        1,
        false,
        a.plain,
        true,
        &resume,
    )
}

/// The quick demo: the same settings on two target languages with two fine-tuning epochs,
/// under its own name.
fn quick_variant(text: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let (mut named, mut targeted, mut shortened) = (false, false, false);
    for line in text.lines() {
        if line.starts_with("name = ") {
            out.push_str("name = \"demo-quick\"\n");
            named = true;
        } else if line.starts_with("targets = ") {
            out.push_str("targets = [\"hi\", \"af\"]\n");
            targeted = true;
        } else if line.starts_with("epochs = ") {
            out.push_str("epochs = 2\n");
            shortened = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    anyhow::ensure!(
        named && targeted && shortened,
        "the embedded demo sweep must have `name = `, `targets = ` and (fine-tuning) `epochs = ` lines"
    );
    Ok(out)
}

/// Creates the demo's tiny model with `primer init-model` unless it exists.
fn ensure_demo_model() -> anyhow::Result<()> {
    if Path::new(DEMO_MODEL).join("config.json").is_file() {
        return Ok(());
    }
    anyhow::ensure!(
        Path::new(DEMO_TOKENIZER).is_dir(),
        "the demo needs the tokenizer folder {DEMO_TOKENIZER}: run `primer demo` from the root of the primer checkout"
    );
    println!("creating the demo model in {DEMO_MODEL}");
    let exe = std::env::current_exe().context("cannot locate the primer binary")?;
    let status = Command::new(exe)
        .args([
            "init-model",
            "--out",
            DEMO_MODEL,
            "--tokenizer-from",
            DEMO_TOKENIZER,
        ])
        .status()
        .context("cannot run `primer init-model`")?;
    anyhow::ensure!(
        status.success(),
        "`primer init-model --out {DEMO_MODEL}` failed ({status})"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use primer::sweep::plan::RunSpec;

    #[test]
    fn embedded_demo_and_its_quick_variant_are_valid() {
        let demo = Sweep::from_text(Path::new("demo.toml"), DEMO_SWEEP).unwrap();
        assert_eq!(demo.name, "demo");
        let quick =
            Sweep::from_text(Path::new("q.toml"), &quick_variant(DEMO_SWEEP).unwrap()).unwrap();
        assert_eq!(quick.name, "demo-quick");
        assert_eq!(quick.targets, vec!["hi", "af"]);
        assert_eq!(quick.settings.len(), demo.settings.len());
        let epochs = |sweep: &Sweep| -> Vec<usize> {
            let mut e: Vec<usize> = Plan::expand(sweep)
                .unwrap()
                .runs
                .iter()
                .filter_map(|r| match &r.spec {
                    RunSpec::Finetune { config, .. } => Some(config.epochs),
                    RunSpec::Prime { .. } => None,
                })
                .collect();
            e.dedup();
            e
        };
        assert_eq!(epochs(&demo), vec![8]);
        assert_eq!(epochs(&quick), vec![2]);
    }
}
