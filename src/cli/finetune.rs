//! `primer finetune` (being written).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct FinetuneArgs {}

pub fn run(_args: FinetuneArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
