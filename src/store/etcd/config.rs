//! What `--etcd-*` flags describe: endpoints, TLS files, credentials; and turning them into
//! etcd-client's connect options.

use crate::store::StoreError;
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How long to wait for a TCP (and TLS) connection to one endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on idle connections: a member that vanished without a FIN (power loss, partition)
/// ends its watches within interval + timeout, and the agent re-lists through another member.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// flannel's etcd flags. The password is kept out of `Debug` (and so out of every log line).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://192.0.2.2:2379`, `https://…`; several for a cluster.
    pub endpoints: Vec<String>,
    pub cafile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Whether `list` asks etcd when every listed lease expires (one call per lease). Off for the
    /// agent, which tracks only its own lease's expiry and lists often; on for `weft net leases`.
    pub list_expiries: bool,
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("cafile", &self.cafile)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("list_expiries", &self.list_expiries)
            .finish()
    }
}

impl EtcdConfig {
    /// A plain config from a comma-separated endpoint list (`--etcd-endpoints`).
    pub fn from_endpoints(list: &str) -> EtcdConfig {
        EtcdConfig {
            endpoints: split_endpoints(list),
            ..EtcdConfig::default()
        }
    }

    /// `etcd:http://a:2379,http://b:2379`: how logs and errors name the store.
    pub fn describe(&self) -> String {
        format!("etcd:{}", self.endpoints.join(","))
    }

    pub(super) fn tls_wanted(&self) -> bool {
        self.cafile.is_some()
            || self.certfile.is_some()
            || self.keyfile.is_some()
            || self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// Endpoints as the client wants them: without TLS, a bare `host:port` means `http://`; with
    /// TLS, `https://` (etcd-client refuses TLS options on `http://` URLs, so we say so first).
    pub(super) fn client_endpoints(&self) -> Result<Vec<String>, StoreError> {
        let tls = self.tls_wanted();
        self.endpoints
            .iter()
            .map(|e| match (e.split_once("://"), tls) {
                (None, false) => Ok(format!("http://{e}")),
                (None, true) => Ok(format!("https://{e}")),
                (Some(("http", _)), true) => Err(self.bad(format!(
                    "endpoint {e} is plain http but TLS files were given; use https://"
                ))),
                (Some(("http" | "https", _)), _) => Ok(e.clone()),
                (Some((scheme, _)), _) => Err(self.bad(format!("endpoint {e}: unknown scheme {scheme:?}"))),
            })
            .collect()
    }

    /// Connect options: timeouts, keep-alive, credentials, and TLS from the PEM files (read now,
    /// so a missing file is reported at start, naming the flag and the path).
    pub(super) fn connect_options(&self) -> Result<ConnectOptions, StoreError> {
        if self.endpoints.is_empty() {
            return Err(self.bad("no endpoints (--etcd-endpoints)".into()));
        }
        let mut o = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true);
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => o = o.with_user(u.clone(), p.clone()),
            (Some(_), None) => return Err(self.bad("--etcd-username given without --etcd-password".into())),
            (None, Some(_)) => return Err(self.bad("--etcd-password given without --etcd-username".into())),
            (None, None) => {}
        }
        if self.tls_wanted() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.cafile {
                tls = tls.ca_certificate(Certificate::from_pem(self.read("--etcd-cafile", ca)?));
            }
            match (&self.certfile, &self.keyfile) {
                (Some(c), Some(k)) => {
                    tls = tls.identity(Identity::from_pem(
                        self.read("--etcd-certfile", c)?,
                        self.read("--etcd-keyfile", k)?,
                    ))
                }
                (None, None) => {}
                _ => return Err(self.bad("--etcd-certfile and --etcd-keyfile go together".into())),
            }
            o = o.with_tls(tls);
        }
        Ok(o)
    }

    fn read(&self, flag: &str, path: &PathBuf) -> Result<Vec<u8>, StoreError> {
        std::fs::read(path).map_err(|e| self.bad(format!("reading {flag} {}: {e}", path.display())))
    }

    fn bad(&self, message: String) -> StoreError {
        StoreError::Backend {
            store: self.describe(),
            message,
        }
    }
}

/// `a, b,,c` → `[a, b, c]`.
pub fn split_endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_in_debug() {
        let c = EtcdConfig {
            username: Some("weft".into()),
            password: Some("s3cret-pw".into()),
            ..EtcdConfig::from_endpoints("http://192.0.2.2:2379")
        };
        let d = format!("{c:?}");
        assert!(!d.contains("s3cret-pw"), "{d}");
        assert!(d.contains("redacted"), "{d}");
    }

    #[test]
    fn endpoints() {
        let c = EtcdConfig::from_endpoints(" 192.0.2.2:2379,http://192.0.2.3:2379,, ");
        assert_eq!(c.endpoints, ["192.0.2.2:2379", "http://192.0.2.3:2379"]);
        assert_eq!(
            c.client_endpoints().unwrap(),
            ["http://192.0.2.2:2379", "http://192.0.2.3:2379"]
        );
        assert_eq!(c.describe(), "etcd:192.0.2.2:2379,http://192.0.2.3:2379");
        let tls = EtcdConfig {
            cafile: Some("/nonexistent/ca.pem".into()),
            ..EtcdConfig::from_endpoints("http://192.0.2.2:2379")
        };
        assert!(tls.client_endpoints().unwrap_err().to_string().contains("https://"));
        let err = tls.connect_options().unwrap_err().to_string();
        assert!(err.contains("--etcd-cafile /nonexistent/ca.pem"), "{err}");
        assert!(EtcdConfig::default().connect_options().is_err());
    }
}
