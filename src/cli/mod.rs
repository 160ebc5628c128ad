//! One file per `weft` subcommand; `anyhow` lives here, at the binary's edge.

pub mod agent;
pub mod config_file;
pub mod endpoint;
pub mod flanneld;
pub mod lab;
pub mod net;
pub mod status;

use crate::store::etcd::{split_endpoints, EtcdConfig};
use crate::store::StoreConfig;
use anyhow::{Context, Result};
use std::path::PathBuf;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where the network lives: shared by every command that talks to the store. The etcd flags are
/// flannel's; `--etcd-endpoints` selects etcd, otherwise `--store` is used.
#[derive(clap::Args, Clone)]
pub struct StoreArgs {
    /// The store: `sqlite:PATH` (an embedded store file shared by the agents of one machine).
    #[arg(long, env = "WEFT_STORE", default_value = "sqlite:/var/lib/weft/store.db", value_parser = parse_store)]
    pub store: StoreConfig,

    /// Key prefix of the network in the store (flannel's `--etcd-prefix`).
    #[arg(long, env = "WEFT_ETCD_PREFIX", default_value = crate::network::DEFAULT_PREFIX)]
    pub etcd_prefix: String,

    /// etcd endpoints, comma-separated (`http://192.0.2.2:2379,…`); selects the etcd store.
    #[arg(long, env = "WEFT_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Option<String>,

    /// CA certificate (PEM) that signed the etcd servers' certificates.
    #[arg(long, env = "WEFT_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,

    /// Client certificate (PEM) for etcd's client-cert-auth.
    #[arg(long, env = "WEFT_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,

    /// Key (PEM) of the client certificate.
    #[arg(long, env = "WEFT_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,

    /// etcd user name.
    #[arg(long, env = "WEFT_ETCD_USERNAME")]
    pub etcd_username: Option<String>,

    /// etcd password (prefer the environment variable: command lines are visible to every user).
    #[arg(long, env = "WEFT_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
}

impl StoreArgs {
    /// The store these flags name, listing leases with their expiry (for admin commands).
    pub fn config_with_expiries(&self) -> StoreConfig {
        match self.config() {
            StoreConfig::Etcd(c) => StoreConfig::Etcd(EtcdConfig {
                list_expiries: true,
                ..c
            }),
            other => other,
        }
    }

    /// The store these flags name.
    pub fn config(&self) -> StoreConfig {
        match &self.etcd_endpoints {
            Some(list) => StoreConfig::Etcd(EtcdConfig {
                endpoints: split_endpoints(list),
                cafile: self.etcd_cafile.clone(),
                certfile: self.etcd_certfile.clone(),
                keyfile: self.etcd_keyfile.clone(),
                username: self.etcd_username.clone(),
                password: self.etcd_password.clone(),
                list_expiries: false,
            }),
            None => self.store.clone(),
        }
    }
}

/// Hand-written so the password never reaches a log or error message.
impl std::fmt::Debug for StoreArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreArgs")
            .field("store", &self.config())
            .field("etcd_prefix", &self.etcd_prefix)
            .finish()
    }
}

fn parse_store(s: &str) -> Result<StoreConfig, String> {
    StoreConfig::parse(s).map_err(|e| e.to_string())
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
    /// The log filter: `--log-level`, else `RUST_LOG`, else `info`. `Targets` takes `level` and
    /// `target=level,…` directives (RUST_LOG's usual form) without EnvFilter's regex engine, a
    /// large share of the agent's resident code.
    pub fn filter(&self, rust_log: Option<&str>) -> Result<Targets> {
        let info = || Targets::new().with_default(tracing::Level::INFO);
        Ok(match (&self.log_level, rust_log) {
            (Some(l), _) => l.parse().with_context(|| format!("--log-level {l:?}"))?,
            (None, Some(l)) => l.parse().unwrap_or_else(|_| info()),
            (None, None) => info(),
        })
    }

    pub fn init(&self) -> Result<()> {
        let filter = self.filter(std::env::var("RUST_LOG").ok().as_deref())?;
        let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let registry = tracing_subscriber::registry().with(filter);
        let res = match self.log_format {
            LogFormat::Text => registry.with(fmt).try_init(),
            LogFormat::Json => registry.with(fmt.json()).try_init(),
        };
        res.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn args(level: Option<&str>) -> LogArgs {
        LogArgs {
            log_format: LogFormat::Text,
            log_level: level.map(str::to_string),
        }
    }

    #[test]
    fn log_filter_takes_levels_and_per_target_directives() {
        let f = args(Some("info,weft::kernel::nft=debug")).filter(None).unwrap();
        assert!(f.would_enable("weft::kernel::nft::batch", &Level::DEBUG));
        assert!(!f.would_enable("weft::agent", &Level::DEBUG));
        assert!(f.would_enable("weft::agent", &Level::INFO));
        // --log-level wins over RUST_LOG; RUST_LOG over the default; the default is info.
        let f = args(Some("warn")).filter(Some("trace")).unwrap();
        assert!(!f.would_enable("weft", &Level::INFO));
        let f = args(None).filter(Some("weft=debug")).unwrap();
        assert!(f.would_enable("weft::agent", &Level::DEBUG));
        assert!(!f.would_enable("rtnetlink", &Level::ERROR), "targets not named are off");
        let f = args(None).filter(None).unwrap();
        assert!(f.would_enable("weft", &Level::INFO) && !f.would_enable("weft", &Level::DEBUG));
    }

    #[test]
    fn a_bad_log_level_is_a_clear_error_and_a_bad_rust_log_falls_back_to_info() {
        let err = args(Some("weft=loud")).filter(None).unwrap_err();
        assert!(format!("{err:#}").starts_with("--log-level \"weft=loud\""), "{err:#}");
        let f = args(None).filter(Some("weft=loud")).unwrap();
        assert!(f.would_enable("weft", &Level::INFO));
    }
}
