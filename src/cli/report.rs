//! `primer report SWEEP [--curves] [--out DIR] [--open]`: gather a sweep's finished fine-tuning
//! runs into Table 1, the comparison with the paper, Figures 3 and 4 and the page
//! (`index.html`), and print the tables.

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
    /// Print the path of the page (index.html) last, and open it in a browser where a
    /// desktop exists (DISPLAY or WAYLAND_DISPLAY set).
    #[arg(long)]
    pub open: bool,
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
        sweep_file: Some(args.sweep.clone()),
    };
    let summary = write_report(&input, &opts)
        .with_context(|| format!("writing the report into {}", input.results_dir.display()))?;
    print!("{}", summary.text);
    if args.open {
        println!("page: {}", summary.page.display());
        open_in_browser(&summary.page);
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens `page` with xdg-open when a desktop session is there to show it; on a server the
/// printed path is all there is.
fn open_in_browser(page: &std::path::Path) {
    let desktop = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if !desktop {
        return;
    }
    let spawned = std::process::Command::new("xdg-open")
        .arg(page)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        eprintln!(
            "cannot run xdg-open ({e}): open {} yourself",
            page.display()
        );
    }
}
