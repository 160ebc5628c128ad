//! One file per `weft` subcommand; `anyhow` lives here, at the binary's edge.

pub mod agent;
pub mod config_file;
pub mod lab;
pub mod net;
pub mod status;

use anyhow::{Context, Result};
use tracing_subscriber::EnvFilter;

/// Where the network lives: shared by every command that talks to the store.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// The store: `sqlite:PATH` (an embedded store file shared by the agents of one machine).
    #[arg(long, env = "WEFT_STORE", default_value = "sqlite:/var/lib/weft/store.db")]
    pub store: String,

    /// Key prefix of the network in the store (flannel's `--etcd-prefix`).
    #[arg(long, env = "WEFT_ETCD_PREFIX", default_value = crate::network::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log format: human-readable text, or JSON lines for collectors.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log level or filter (`info`, `debug`, `weft=debug`); `RUST_LOG` is used when not given.
    #[arg(long, env = "WEFT_LOG_LEVEL")]
    pub log_level: Option<String>,
}

impl LogArgs {
    pub fn init(&self) -> Result<()> {
        let filter = match &self.log_level {
            Some(l) => EnvFilter::try_new(l).with_context(|| format!("--log-level {l:?}"))?,
            None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let res = match self.log_format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().try_init(),
        };
        res.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
    }
}
