//! Command-line interface. Each subcommand's arguments and handler live in their own file;
//! handlers return `anyhow::Result` and the single error print happens in [`main`].

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod bench;
mod compare;
mod finetune;
mod init_model;
mod prime;
pub mod progress_bar;
mod report;
mod run_args;
mod score;
mod sweep;
mod verify_golden;

/// primer: run, sweep and report priming experiments (meta-learning for parameter-efficient
/// fine-tuning, Gheini et al. 2022).
#[derive(Debug, Parser)]
#[command(name = "primer", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fine-tune a tagger on one target language (full, head, adapter, LoRA or BitFit tuning) and write metrics.json.
    Finetune(finetune::FinetuneArgs),
    /// Prime a model on source languages (meta priming, FT priming, MAML loop) and write a checkpoint.
    Prime(prime::PrimeArgs),
    /// Score a conlleval-format file (token ... gold predicted) with seqeval-identical entity F1.
    Score(score::ScoreArgs),
    /// Write a small, seeded, randomly initialised BERT folder (for the demo and tests).
    InitModel(init_model::InitModelArgs),
    /// Show the runs a sweep file expands into, their dependencies and status.
    Plan(sweep::PlanArgs),
    /// Execute a sweep's pending runs on CPU or CUDA device slots, or as Slurm jobs (resumable).
    Run(sweep::RunArgs),
    /// Summarise a sweep's done / running / failed / pending runs.
    Status(sweep::StatusArgs),
    /// Cancel a sweep's Slurm jobs.
    Cancel(sweep::CancelArgs),
    /// Execute one stored run (used by the orchestrator and by Slurm tasks).
    #[command(hide = true)]
    Exec(sweep::ExecArgs),
    /// Gather a sweep's scores into tables (Table 1) and figures (Figures 3 and 4).
    Report(report::ReportArgs),
    /// Is setting A better than setting B? The seed-aware comparison of two settings of a sweep.
    Compare(compare::CompareArgs),
    /// Run the embedded demo sweep on CPU and write its report under results/demo (--quick: results/demo-quick).
    Demo(sweep::DemoArgs),
    /// Time training steps side by side with the PyTorch reference (ratios primer / PyTorch).
    Bench(bench::BenchArgs),
    /// Replay the PyTorch golden dumps on a device (cpu, cuda:N) and report per dump whether primer matches.
    VerifyGolden(verify_golden::VerifyGoldenArgs),
}

pub fn main() -> ExitCode {
    primer::device::retain_freed_memory();
    primer::signal::default_sigpipe();
    let cli = Cli::parse();
    // Read once here so that a typo is an error, not a silent choice; sweep and Slurm child
    // processes inherit the variable.
    match primer::model::dispatch::cpu_kernels_from_env() {
        Ok(Some(on)) => primer::model::dispatch::set_cpu_kernels(on),
        Ok(None) => {}
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::FAILURE;
        }
    }
    // The GEMM backend, likewise read once: a library that cannot be opened is an error
    // here rather than a silent fallback to the gemm crate.
    match primer::model::sgemm::backend_from_env() {
        Ok(Some(backend)) => primer::model::sgemm::set_gemm_backend(backend),
        Ok(None) => {}
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Command::Finetune(a) => finetune::run(a),
        Command::Prime(a) => prime::run(a),
        Command::Score(a) => score::run(a),
        Command::InitModel(a) => init_model::run(a),
        Command::Plan(a) => sweep::plan(a),
        Command::Run(a) => sweep::run(a),
        Command::Status(a) => sweep::status(a),
        Command::Cancel(a) => sweep::cancel(a),
        Command::Exec(a) => sweep::exec(a),
        Command::Report(a) => report::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Demo(a) => sweep::demo(a),
        Command::Bench(a) => bench::run(a),
        Command::VerifyGolden(a) => verify_golden::run(a),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", chain_text(&err));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `outer: cause: ...`, as anyhow's `{:#}` writes them,
/// except that a cause whose text the line already holds is left out: many library errors
/// write their source into their own message (`cannot read {path}: {source}`) and also
/// expose it as the source, which `{:#}` would print twice.
pub fn chain_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.is_empty() {
            text = part;
        } else if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

/// Sets up `tracing` output on stderr, controlled by `RUST_LOG` (default: info).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Reads a whole config struct from a JSON (`.json`) or TOML (any other extension) file, with
/// errors naming the file (and line for TOML).
pub fn read_config_file<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> anyhow::Result<T> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))
    } else {
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))
    }
}

/// Refuses a run's settings that break the configs' range rules before anything runs, naming
/// where each bad value came from. `errors` are those of the settings as they will run (the
/// file with the flags applied); `config_file` is `--config FILE`, whose own errors
/// (`errors_of` the file alone) tell which values came from it. An error the file alone
/// already has is the file's: it is named `FILE:LINE:COLUMN` for TOML, as a sweep file's values
/// are (JSON carries no positions: `FILE`); any other came from a flag and keeps the plain
/// `key: problem`.
pub fn refuse_bad_values<T: serde::de::DeserializeOwned>(
    errors: &[primer::config::ValueError],
    config_file: Option<&std::path::Path>,
    errors_of: impl Fn(&T) -> Vec<primer::config::ValueError>,
) -> anyhow::Result<()> {
    if errors.is_empty() {
        return Ok(());
    }
    let file = match config_file {
        Some(path) => Some((path, errors_of(&read_config_file::<T>(path)?))),
        None => None,
    };
    let lines: Vec<String> = errors
        .iter()
        .map(|e| match &file {
            Some((path, in_file)) if in_file.contains(e) => match key_position(path, &e.key) {
                Some((line, column)) => format!("{}:{line}:{column}: {e}", path.display()),
                None => format!("{}: {e}", path.display()),
            },
            _ => e.to_string(),
        })
        .collect();
    anyhow::bail!(
        "invalid settings (nothing was run):\n  {}",
        lines.join("\n  ")
    )
}

/// The 1-based line and column of a dotted `key` (`data.train_limit`) in a TOML config file;
/// None for JSON or a key the file does not hold.
fn key_position(path: &std::path::Path, key: &str) -> Option<(usize, usize)> {
    if path.extension().is_some_and(|e| e == "json") {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let source = primer::spec::source::Source::from_text(path, &text);
    let root = source.parse().ok()?;
    let mut keys = Vec::new();
    primer::spec::source::flatten("", root.as_table()?, &mut keys);
    let (_, span, _) = keys.into_iter().find(|(k, _, _)| k == key)?;
    Some(source.line_col(span.start))
}

#[cfg(test)]
mod tests {
    use super::chain_text;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct ReadError {
        path: String,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn chain_text_prints_a_cause_the_message_already_holds_once() {
        let inner = ReadError {
            path: "tok/vocab.txt".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        };
        let err = anyhow::Error::new(inner).context("cannot write a random BERT to out");
        assert_eq!(
            chain_text(&err),
            "cannot write a random BERT to out: cannot read tok/vocab.txt: no such file"
        );
        let plain = anyhow::anyhow!("first").context("outer");
        assert_eq!(chain_text(&plain), "outer: first");
    }
}
