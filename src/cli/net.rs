//! `weft net` (to be written).
#[derive(clap::Subcommand, Debug)]
pub enum NetCommand { Leases }
pub async fn run(_cmd: NetCommand) -> anyhow::Result<()> { anyhow::bail!("not yet") }
