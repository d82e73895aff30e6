//! `primer plan | run | status | cancel | exec | demo`: sweeps from the command line.

use anyhow::Context;
use primer::progress::JsonLinesProgress;
use primer::sweep::plan::{Plan, RunKind};
use primer::sweep::process::{ExecJob, load_exec_job};
use primer::sweep::run::{count_states, missing_inputs, observe, parse_devices, plan_rows};
use primer::sweep::{
    RunOptions, RunSummary, Store, Sweep, install_interrupt_handler, report_input_for, run_sweep,
};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

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

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The sweep file (TOML; see sweeps/README.md).
    pub sweep: PathBuf,
    /// Devices to run on: `cpu`, a list such as `cuda:0,cuda:1`, or `all` (every GPU).
    #[arg(long, default_value = "cpu")]
    pub devices: String,
    /// Concurrent runs per device.
    #[arg(long, default_value_t = 1)]
    pub per_device: usize,
    /// Retries of a failed run before it is reported as failed.
    #[arg(long, default_value_t = 1)]
    pub retries: u32,
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

pub fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let sweep = Sweep::load(&a.sweep)?;
    let plan = Plan::expand(&sweep)?;
    let store = Store::new(&plan.store);
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
                o.dir.join("log.txt").display()
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
    if store.is_locked() {
        println!("a `primer run` is active on this store");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cancel(a: CancelArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "`primer cancel {}`: only the Slurm backend has jobs to cancel; a local `primer run` is stopped with Ctrl-C (its runs are marked pending and resume with `primer run`)",
        a.sweep.display()
    )
}

pub fn exec(a: ExecArgs) -> anyhow::Result<ExitCode> {
    super::init_logging();
    let job = load_exec_job(&a.run_dir, &a.device)?;
    match job {
        ExecJob::Prime { config, out_dir } => {
            tracing::info!("priming into {}", out_dir.display());
            primer::prime::run_priming(&config, &out_dir, &JsonLinesProgress)?;
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
    Ok(ExitCode::SUCCESS)
}

pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    super::init_logging();
    let sweep = Sweep::load(&a.sweep)?;
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
        // The single call site of the report stage after a sweep.
        let input = report_input_for(sweep)?;
        let written =
            primer::report::write_report(&input, &primer::report::ReportOptions::default())
                .context("the runs finished but writing the report failed")?;
        println!("{}", written.text);
    }
    Ok(if summary.all_done() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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

/// The quick demo: the same settings on two target languages, under its own name.
fn quick_variant(text: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let (mut named, mut targeted) = (false, false);
    for line in text.lines() {
        if line.starts_with("name = ") {
            out.push_str("name = \"demo-quick\"\n");
            named = true;
        } else if line.starts_with("targets = ") {
            out.push_str("targets = [\"hi\", \"af\"]\n");
            targeted = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    anyhow::ensure!(
        named && targeted,
        "the embedded demo sweep must have top-level `name = ` and `targets = ` lines"
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

    #[test]
    fn embedded_demo_and_its_quick_variant_are_valid() {
        let demo = Sweep::from_text(Path::new("demo.toml"), DEMO_SWEEP).unwrap();
        assert_eq!(demo.name, "demo");
        let quick =
            Sweep::from_text(Path::new("q.toml"), &quick_variant(DEMO_SWEEP).unwrap()).unwrap();
        assert_eq!(quick.name, "demo-quick");
        assert_eq!(quick.targets, vec!["hi", "af"]);
        assert_eq!(quick.settings.len(), demo.settings.len());
        Plan::expand(&quick).unwrap();
    }
}
