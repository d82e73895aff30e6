//! `primer plan | run | status | cancel | exec | demo` (being written).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct PlanArgs {}
#[derive(Debug, clap::Args)]
pub struct RunArgs {}
#[derive(Debug, clap::Args)]
pub struct StatusArgs {}
#[derive(Debug, clap::Args)]
pub struct CancelArgs {}
#[derive(Debug, clap::Args)]
pub struct ExecArgs {}
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

pub fn plan(_a: PlanArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
pub fn run(_a: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
pub fn status(_a: StatusArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
pub fn cancel(_a: CancelArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
pub fn exec(_a: ExecArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
pub fn demo(_a: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
