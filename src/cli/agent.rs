//! `weft agent` (to be written).
#[derive(clap::Args, Debug)]
pub struct AgentArgs {}
pub async fn run(_args: AgentArgs) -> anyhow::Result<()> { anyhow::bail!("not yet") }
