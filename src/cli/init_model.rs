//! `primer init-model` (being written).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct InitModelArgs {}

pub fn run(_args: InitModelArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
