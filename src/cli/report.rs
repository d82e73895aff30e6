//! `primer report SWEEP [--curves] [--out DIR]`: gather a sweep's finished fine-tuning runs into
//! Table 1, the comparison with the paper and Figures 3 and 4, and print the tables.

use anyhow::Context;
use primer::report::{ReportOptions, write_report};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The sweep file (TOML) whose runs to report.
    pub sweep: PathBuf,
    /// Also draw the learning curves of every finished fine-tuning and priming run (curves/).
    #[arg(long)]
    pub curves: bool,
    /// Write the report here instead of results/<sweep name>/.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Seed of the paired bootstrap resampling.
    #[arg(long, default_value_t = 0)]
    pub bootstrap_seed: u64,
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    super::init_logging();
    let mut input = primer::sweep::report_input(&args.sweep)
        .with_context(|| format!("reading the runs of sweep {}", args.sweep.display()))?;
    if let Some(out) = args.out {
        input.results_dir = out;
    }
    let opts = ReportOptions {
        curves: args.curves,
        bootstrap_seed: args.bootstrap_seed,
    };
    let summary = write_report(&input, &opts)
        .with_context(|| format!("writing the report into {}", input.results_dir.display()))?;
    print!("{}", summary.text);
    Ok(ExitCode::SUCCESS)
}
