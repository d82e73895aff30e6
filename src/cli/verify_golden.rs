//! `primer verify-golden DIR... [--device cpu|cuda:N] [--encoder-model DIR] [--json]`: replay
//! the PyTorch reference dumps on a device and say, per dump, whether primer matches them
//! (see [`primer::verify`]). Exits 1 when any dump fails or cannot be replayed.

use anyhow::Context;
use primer::device::DeviceSpec;
use primer::verify::{DumpOutcome, Status, Tolerances, VerifyOptions, verify};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct VerifyGoldenArgs {
    /// Dump folders (meta.json + dump.safetensors) or folders of them, e.g. ../shared/golden
    /// and tests/fixtures/golden-pe.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Where to replay: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The all-MiniLM-L6-v2 folder, for the encoder dump (`encoder/forward.safetensors`);
    /// without it that dump is listed as skipped.
    #[arg(long)]
    pub encoder_model: Option<PathBuf>,
    /// Print one JSON report (device, tolerances, per-dump outcomes) instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn line(o: &DumpOutcome) -> String {
    let status = match o.status {
        Status::Pass => "PASS",
        Status::Fail => "FAIL",
        Status::Error => "ERROR",
        Status::Skipped => "SKIP",
    };
    let mut s = format!(
        "{status:<5} {:<24} {:<12} {:>4} compared, {:>3} failed  {:.2}s",
        o.name,
        o.mode,
        o.compared,
        o.failures.len(),
        o.seconds
    );
    for f in &o.failures {
        s.push_str(&format!("\n        {f}"));
    }
    if let Some(e) = &o.error {
        s.push_str(&format!("\n        {e}"));
    }
    s
}

pub fn run(args: VerifyGoldenArgs) -> anyhow::Result<ExitCode> {
    let spec = DeviceSpec::parse(&args.device)?;
    let device = spec.open()?;
    let opts = VerifyOptions {
        device,
        device_name: args.device.clone(),
        encoder_model: args.encoder_model.clone(),
        tolerances: Tolerances::FP32,
    };
    let json = args.json;
    let report = verify(&args.dirs, &opts, &mut |o| {
        if !json {
            println!("{}", line(o));
        }
    })
    .context("verify-golden")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} dumps on {} ({} path, {} tolerances): {} passed, {} failed, {} errors, {} skipped",
            report.dumps.len(),
            report.device,
            report.path,
            report.tolerances.precision,
            report.count(Status::Pass),
            report.count(Status::Fail),
            report.count(Status::Error),
            report.count(Status::Skipped)
        );
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
