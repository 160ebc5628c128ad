//! `weft lab` (to be written).
#[derive(clap::Subcommand, Debug)]
pub enum LabCommand { Up }
pub async fn run(_cmd: LabCommand) -> anyhow::Result<()> { anyhow::bail!("not yet") }
