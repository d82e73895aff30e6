//! `primer plan | run | status | cancel | exec | demo`: sweeps from the command line.

use anyhow::Context;
use primer::backend::{
    BackendKind, BackendSettings, LocalOptions, Queued, RunSummary, RunView, ViewState, count_views,
};
use primer::config::PerDevice;
use primer::slurm::SlurmArgs;
use primer::spec::plan::{Plan, RunKind};
use primer::store::ObservedRun;
use primer::sweep::orchestrate::{
    self, Overview, RunEvent, RunOutcome, RunRequest, StatusView, SweepStatus,
};
use primer::sweep::run::{RemainingEstimate, count_states, plan_rows};
use primer::sweep::{RunSpec, Sweep};
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
    #[arg(long, conflicts_with = "estimate")]
    pub json: bool,
    /// Also print the expected device hours per run kind and for the whole sweep: a few timed
    /// steps of each step kind the sweep runs (a random model of its config.json, its batch
    /// sizes and max length) on --device, times the step counts the plan implies. Reads each
    /// fine-tuning language's data to count its batches.
    #[arg(long)]
    pub estimate: bool,
    /// The device --estimate calibrates on: `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu", requires = "estimate")]
    pub device: String,
    /// Timed steps per step kind for --estimate (each after one untimed warm-up step).
    #[arg(long, default_value_t = 2, requires = "estimate")]
    pub calibration_steps: usize,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The sweep file (TOML; see sweeps/README.md).
    pub sweep: PathBuf,
    /// Where the runs execute: on this machine, or as Slurm job arrays.
    #[arg(long, value_enum, default_value_t = BackendKind::Local)]
    pub backend: BackendKind,
    /// Devices to run on: `cpu` (the default), a list such as `cuda:0,cuda:1`, or `all` (every
    /// GPU; the CPU, with a warning, where there is none). Local backend only.
    // The local options are Options, not defaults, so that one given with `--backend slurm`
    // is refused even at its default value.
    #[arg(long)]
    pub devices: Option<String>,
    /// Concurrent runs per device: a number (default 1), or `auto` (as many as fit each
    /// device's free memory by each run's estimate, CPU runs also capped by cores; a run out of
    /// memory beside others is retried alone). Local backend only.
    #[arg(long)]
    pub per_device: Option<PerDevice>,
    /// Retries of a failed run before it is reported as failed (default 1). Local backend only
    /// (under Slurm, rerun `primer run --backend slurm` to resubmit failed runs).
    #[arg(long)]
    pub retries: Option<u32>,
    #[command(flatten)]
    pub slurm: SlurmArgs,
    /// Slurm backend: stay until every submitted run has ended, print the failures and write
    /// the report (without it, `primer run` returns once the jobs are submitted).
    #[arg(long)]
    pub wait: bool,
    /// Slurm backend with --wait: seconds between two looks at the queue (default 10).
    #[arg(long, value_name = "SECONDS")]
    pub poll_interval: Option<f64>,
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

impl RunArgs {
    /// `--devices`, at its default `cpu` when not given.
    fn devices(&self) -> &str {
        self.devices.as_deref().unwrap_or("cpu")
    }

    /// `--per-device`, at its default 1 when not given.
    fn per_device(&self) -> PerDevice {
        self.per_device.unwrap_or(PerDevice::Fixed(1))
    }
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
    /// Concurrent runs on the CPU: a number, or `auto` (as `primer run --per-device`).
    #[arg(long, default_value = "1")]
    pub per_device: PerDevice,
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
    let Overview {
        plan,
        store,
        observed: obs,
        time_left,
        missing,
        model_problems,
    } = orchestrate::overview(&sweep)?;
    if a.json {
        for row in plan_rows(&plan, &obs) {
            writeln!(out, "{}", serde_json::to_string(&row)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "sweep '{}' ({}), store {}",
        sweep.name,
        a.sweep.display(),
        store.display()
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
            RunSpec::Prime { config } => format!("{:?}", config.method).to_lowercase(),
            RunSpec::Finetune { config, .. } => config.method.to_string(),
        };
        let detail = match &r.spec {
            RunSpec::Prime { config } if config.method == primer::config::PrimingMethod::Ft => {
                format!("lr {} steps {}", config.ft_lr, config.steps)
            }
            RunSpec::Prime { config } => format!(
                "inner {} S={} inner_lr {} outer_lr {} steps {}",
                config.inner_label(),
                config.inner_steps,
                config.effective_inner_lr(),
                config.outer_lr,
                config.steps
            )
            .to_lowercase(),
            RunSpec::Finetune { config, .. } => {
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
    if let Some(line) = run_time_left(&time_left) {
        writeln!(out, "{line}")?;
    }
    if a.estimate {
        let not_done: Vec<bool> = obs.iter().map(|o| o.label() != "done").collect();
        print_estimate(&mut out, a, &plan, &not_done)?;
    }
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
    if !model_problems.is_empty() {
        writeln!(out, "warning: `primer run` will refuse to start:")?;
        for m in model_problems {
            writeln!(out, "  {m}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `primer plan --estimate`: calibrates on the chosen device, then prints the step times, the
/// hours per run kind and the totals.
fn print_estimate(
    out: &mut dyn std::io::Write,
    a: &PlanArgs,
    plan: &Plan,
    not_done: &[bool],
) -> anyhow::Result<()> {
    use primer::cost::calibrate::DeviceTimer;
    use primer::cost::estimate::{DataCounts, estimate_plan, memory_by_kind};
    let device = primer::device::DeviceSpec::parse(&a.device)?;
    let mut timer = DeviceTimer::new(
        device,
        a.calibration_steps,
        Box::new(move |what| eprintln!("calibrating on {device}: {what}")),
    )?;
    let est = estimate_plan(plan, &mut timer, &mut DataCounts::default())
        .context("primer plan --estimate")?;
    writeln!(
        out,
        "\nestimate on {}: {} step kind(s), each timed over {} step(s) after a warm-up step, on \
         random weights of the run's model config; sequences padded to data.max_len (real \
         batches are length-bucketed and shorter, so this errs high); data loading, evaluation \
         and checkpoints are not counted; one run at a time on the device (runs sharing it with \
         --per-device each run slower)",
        est.device,
        est.step_times.len(),
        est.timed_steps
    )?;
    writeln!(out, "{:>10} {:>12}  step kind", "s/step", "steps")?;
    for s in &est.step_times {
        writeln!(
            out,
            "{:>10.4} {:>12}  {}",
            s.seconds,
            s.count,
            s.shape.describe()
        )?;
    }
    let memory = memory_by_kind(plan).context("primer plan --estimate")?;
    writeln!(
        out,
        "{:<34} {:>5} {:>12} {:>14} {:>12}",
        "run kind",
        "runs",
        "steps",
        format!("{} hours", est.device),
        "GiB/run"
    )?;
    for k in &est.kinds {
        let gib = memory
            .iter()
            .find(|(kind, _)| *kind == k.kind)
            .map_or(0.0, |(_, b)| *b as f64 / (1u64 << 30) as f64);
        writeln!(
            out,
            "{:<34} {:>5} {:>12} {:>14.2} {:>12.1}",
            k.kind,
            k.runs,
            k.steps,
            k.seconds / 3600.0,
            gib
        )?;
    }
    writeln!(
        out,
        "(GiB/run: the largest memory estimate of the kind's runs, what --per-device auto packs by)"
    )?;
    let left: f64 = est
        .run_seconds
        .iter()
        .zip(not_done)
        .filter(|(_, n)| **n)
        .fold(0.0, |acc, (s, _)| acc + s);
    writeln!(
        out,
        "whole sweep: {:.2} {} hours for {} runs ({:.2} hours for the {} not done yet)",
        est.total_seconds / 3600.0,
        est.device,
        plan.runs.len(),
        left / 3600.0,
        not_done.iter().filter(|n| **n).count()
    )?;
    Ok(())
}

/// `primer plan`'s and `primer status`'s line on the run time left, once some runs of the
/// kinds still to run have finished.
fn run_time_left(left: &RemainingEstimate) -> Option<String> {
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
    let status = orchestrate::status(&sweep)?;
    let SweepStatus {
        plan,
        store,
        locked,
        view,
    } = &status;
    match view {
        StatusView::Store {
            observed,
            time_left,
        } => print_store_status(&sweep, plan, store, observed, time_left),
        StatusView::Backend { backend, views } => {
            println!(
                "sweep '{}': {} runs; store {} ({backend} backend)",
                sweep.name,
                plan.runs.len(),
                store.display()
            );
            for (state, n) in count_views(views) {
                println!("  {:<14} {n}", state.as_str());
            }
            print_failures(plan, views);
            for v in views.iter().filter(|v| v.state.is_live()) {
                println!(
                    "{:<7} {}: {}",
                    v.state.as_str(),
                    plan.runs[v.run].label(),
                    v.detail
                );
            }
        }
    }
    if *locked {
        println!("a `primer run` is active on this store");
    }
    let page = sweep.results_dir().join(primer::report::html::PAGE_FILE);
    if page.is_file() {
        println!("report page: {}", page.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `primer status` of a sweep run on this machine: the store's view.
fn print_store_status(
    sweep: &Sweep,
    plan: &Plan,
    store: &Path,
    obs: &[ObservedRun],
    time_left: &RemainingEstimate,
) {
    // Before the first `primer run` there is no store: say so rather than imply one.
    let store_note = if store.is_dir() {
        String::new()
    } else {
        " (not created yet: `primer run` creates it)".to_string()
    };
    println!(
        "sweep '{}': {} runs; store {}{store_note}",
        sweep.name,
        plan.runs.len(),
        store.display()
    );
    for (label, n) in count_states(obs) {
        println!("  {label:<8} {n}");
    }
    for (r, o) in plan.runs.iter().zip(obs) {
        match o.label() {
            "failed" => println!(
                "failed  {} after {} attempt(s): {}\n        log: {}",
                r.label(),
                o.attempts,
                o.error.as_deref().unwrap_or("?"),
                o.dir.join(primer::store::layout::LOG).display()
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
    if let Some(line) = run_time_left(time_left) {
        println!("{line}");
    }
}

pub fn cancel(a: CancelArgs) -> anyhow::Result<ExitCode> {
    let sweep = Sweep::load(&a.sweep).with_context(|| {
        format!(
            "cannot cancel the Slurm jobs of {} (a local `primer run` is stopped with Ctrl-C)",
            a.sweep.display()
        )
    })?;
    let cancelled = orchestrate::cancel(&sweep)
        .with_context(|| format!("`primer cancel {}`", a.sweep.display()))?;
    println!(
        "cancelled {} queued or running {} task(s) of sweep '{}'{}",
        cancelled.tasks.len(),
        cancelled.backend,
        sweep.name,
        if cancelled.tasks.is_empty() {
            String::new()
        } else {
            format!(": {}", cancelled.tasks.join(" "))
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub fn exec(a: ExecArgs) -> anyhow::Result<ExitCode> {
    use primer::device::{OUT_OF_MEMORY_EXIT_STATUS, is_out_of_memory};
    use primer::sweep::exec::{error_chain, exec_run};
    super::init_logging();
    match exec_run(&a.run_dir, &a.device, &mut |line| println!("{line}")) {
        // The local scheduler retries such a run alone on its device.
        Err(e) if is_out_of_memory(&error_chain(&e)) => {
            eprintln!("error: {}", error_chain(&e));
            Ok(ExitCode::from(OUT_OF_MEMORY_EXIT_STATUS))
        }
        other => {
            other?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    super::init_logging();
    let sweep = Sweep::load(&a.sweep)?;
    let request = run_request(&a)?;
    let resume = match a.backend {
        BackendKind::Local => format!(
            "primer run {} --devices {} --per-device {}",
            a.sweep.display(),
            a.devices(),
            a.per_device()
        ),
        BackendKind::Slurm => format!("primer run {} --backend slurm --wait", a.sweep.display()),
    };
    execute(&sweep, &request, &a.sweep, &resume)
}

/// Runs a sweep and prints what happened, the report last.
fn execute(
    sweep: &Sweep,
    request: &RunRequest,
    sweep_file: &Path,
    resume: &str,
) -> anyhow::Result<ExitCode> {
    let mut last = String::new();
    let outcome = orchestrate::run(sweep, request, &mut |event| match event {
        RunEvent::Queued { backend, queued } => print_queued(sweep, backend, queued),
        RunEvent::Polled { backend, views } => {
            let line = counts_line(views);
            if line != last {
                println!("{}: {line}", backend.to_lowercase());
                last = line;
            }
        }
    })?;
    match &outcome {
        RunOutcome::Ran { summary, .. } => print_summary(summary, resume),
        RunOutcome::Queued { waited: None, .. } => println!(
            "follow with `primer status {0}`, cancel with `primer cancel {0}`; rerun this command to resubmit failed runs",
            sweep_file.display()
        ),
        RunOutcome::Queued {
            waited: Some(w), ..
        } => {
            let failed = print_failures(&w.plan, &w.views);
            for c in &w.collected {
                println!("removed checkpoint {}", c.display());
            }
            if failed > 0 {
                println!("rerun to resubmit the failed runs:\n  {resume}");
            }
        }
    }
    if let RunOutcome::Ran {
        report: Some(text), ..
    }
    | RunOutcome::Queued {
        report: Some(text), ..
    } = &outcome
    {
        println!("{text}");
    }
    Ok(ExitCode::from(outcome.exit_status()))
}

/// The backend and its settings from the command line; refuses options that the chosen
/// backend would silently ignore.
fn run_request(a: &RunArgs) -> anyhow::Result<RunRequest> {
    let mut settings = BackendSettings::default();
    let wait = match a.backend {
        BackendKind::Local => {
            let mut given = Vec::new();
            if a.slurm != SlurmArgs::default() {
                given.push("Slurm resource options (--partition, --gpus-per-task, ...)");
            }
            if a.wait {
                given.push("--wait");
            }
            if a.poll_interval.is_some() {
                given.push("--poll-interval");
            }
            anyhow::ensure!(
                given.is_empty(),
                "these options only apply to `--backend slurm` (a local run always waits for \
                 its runs): {}",
                given.join(" and ")
            );
            settings.local = LocalOptions {
                devices: primer::backend::local::parse_devices(a.devices())?,
                per_device: a.per_device(),
                retries: a.retries.unwrap_or(1),
                plain: a.plain,
            };
            None
        }
        BackendKind::Slurm => {
            let mut given = Vec::new();
            if a.devices.is_some() {
                given.push("--devices (request GPUs with --gpus-per-task)");
            }
            if a.per_device.is_some() {
                given.push("--per-device (limit concurrency with --array-throttle)");
            }
            if a.retries.is_some() {
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
            let poll_interval = a.poll_interval.unwrap_or(10.0);
            anyhow::ensure!(
                poll_interval.is_finite() && poll_interval > 0.0,
                "--poll-interval must be a positive number of seconds, got {poll_interval}"
            );
            settings.slurm = a.slurm.to_options();
            a.wait.then(|| Duration::from_secs_f64(poll_interval))
        }
    };
    Ok(RunRequest {
        backend: a.backend,
        settings,
        wait,
        gc_checkpoints: a.gc_checkpoints,
        write_report: !a.no_report,
    })
}

/// What a queueing backend took: printed before waiting.
fn print_queued(sweep: &Sweep, backend: &str, q: &Queued) {
    println!(
        "sweep '{}': {} runs, store {}: {} submitted to {backend} now, {} already done, {} still queued or running from an earlier submission",
        sweep.name,
        q.total_runs,
        q.store.display(),
        q.submitted.len(),
        q.already_done,
        q.in_flight
    );
    for b in &q.batches {
        println!(
            "  {} {} ({} task(s)); script {}",
            b.what,
            b.ids.join(", "),
            b.tasks,
            b.script
                .as_ref()
                .map_or_else(String::new, |s| s.display().to_string())
        );
    }
}

/// `3 done, 1 running, 2 queued`: the counts of [`count_views`] in a fixed order.
fn counts_line(views: &[RunView]) -> String {
    let parts: Vec<String> = count_views(views)
        .iter()
        .map(|(state, n)| format!("{n} {}", state.as_str()))
        .collect();
    parts.join(", ")
}

/// Prints every failed run with the backend's detail and its log; returns how many failed.
fn print_failures(plan: &Plan, views: &[RunView]) -> usize {
    let mut n = 0;
    for v in views.iter().filter(|v| v.state == ViewState::Failed) {
        n += 1;
        let run = &plan.runs[v.run];
        let failed_dep = run
            .deps
            .iter()
            .find(|&&d| views[d].state == ViewState::Failed)
            .map(|&d| format!(" (its priming run {} failed)", plan.runs[d].dir_name()))
            .unwrap_or_default();
        println!(
            "failed  {}: {}{failed_dep}\n        log: {}",
            run.label(),
            v.detail,
            v.dir.join(primer::store::layout::LOG).display()
        );
    }
    n
}

fn print_summary(s: &RunSummary, resume: &str) {
    println!(
        "{} runs: {} already done, {} executed now, {} failed, {} not runnable{}",
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
    let request = RunRequest {
        backend: BackendKind::Local,
        settings: BackendSettings {
            local: LocalOptions {
                devices: vec![primer::device::DeviceSpec::Cpu],
                per_device: a.per_device,
                retries: 1,
                plain: a.plain,
            },
            ..BackendSettings::default()
        },
        wait: None,
        gc_checkpoints: false,
        write_report: true,
    };
    execute(&sweep, &request, &sweep_path, &resume)
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
        // init-model prints the folder's path, which the line above already named; its
        // errors (stderr) still reach the user.
        .stdout(std::process::Stdio::null())
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
    use primer::spec::plan::RunSpec;

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
