//! `primer prime` (being written).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct PrimeArgs {}

pub fn run(_args: PrimeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
