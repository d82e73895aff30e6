//! `primer score` (being written).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ScoreArgs {}

pub fn run(_args: ScoreArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
