//! The L2 agent's socket for `weft-cni`: `<subnet file dir>/networks/NAME.sock`, mode 0600 (only
//! root, which runs the runtime and its plugins, may register endpoints). One request per
//! connection, see [`crate::l2ipam::protocol`]; the store work is [`crate::l2ipam::store`].
//!
//! The plugin never holds store credentials: they stay with the agent, which answers only for
//! its own host (the endpoint's `Host` is always this agent's public IP).

use crate::l2ipam::protocol::{Op, Reply, Request, MAX_REQUEST_BYTES};
use crate::l2ipam::store::Ipam;
use crate::store::Store;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Mutex};
use tracing::{info, warn, Instrument};

/// A request not answered within this is answered with a retryable error (the store is slow).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// What the socket needs to answer: this host's public IP and the network's CIDR, once the agent
/// knows both.
pub(super) type Ready = watch::Receiver<Option<(Ipv4Addr, Ipv4Net)>>;

pub(super) struct Server {
    pub path: PathBuf,
    pub store: Arc<dyn Store>,
    pub net_prefix: String,
    pub ready: Ready,
}

/// Binds the socket (replacing a stale one) readable and writable by root only.
pub(super) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

impl Server {
    /// Serves until the task is dropped (aborted with the agent).
    pub(super) async fn run(self, listener: UnixListener) {
        info!(socket = %self.path.display(), "serving weft-cni requests");
        let this = Arc::new(self);
        // One request at a time per host: a runtime's ADD and DEL of one container never
        // interleave; hosts race each other only through the store's create-if-absent.
        let lock = Arc::new(Mutex::new(()));
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "accepting a weft-cni connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (this, lock) = (this.clone(), lock.clone());
            tokio::spawn(
                async move {
                    if let Err(e) = this.serve(stream, &lock).await {
                        warn!(error = %e, "weft-cni connection failed");
                    }
                }
                .in_current_span(),
            );
        }
    }

    async fn serve(&self, stream: UnixStream, lock: &Mutex<()>) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut line = Vec::new();
        let limit = (MAX_REQUEST_BYTES + 1) as u64;
        let mut reader = BufReader::new(read).take(limit);
        let read_line = reader.read_until(b'\n', &mut line);
        let reply = match tokio::time::timeout(REQUEST_TIMEOUT, read_line).await {
            Err(_) => Reply::failed("no request within the time allowed", false),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => match Request::parse(line.trim_ascii()) {
                Err(why) => Reply::failed(why, false),
                Ok(req) => {
                    let _one = lock.lock().await;
                    match tokio::time::timeout(REQUEST_TIMEOUT, self.answer(&req)).await {
                        Ok(r) => r,
                        Err(_) => Reply::failed("the store did not answer in time; try again", true),
                    }
                }
            },
        };
        write.write_all(reply.to_line().as_bytes()).await?;
        write.shutdown().await
    }

    async fn answer(&self, req: &Request) -> Reply {
        let Some((host, network)) = *self.ready.borrow() else {
            return Reply::failed(
                "the agent is still starting (no public interface or network config yet); try again",
                true,
            );
        };
        let ipam = Ipam {
            store: self.store.as_ref(),
            net_prefix: &self.net_prefix,
            network,
            host,
        };
        let (c, i) = (req.container.as_str(), req.ifname.as_str());
        let result = match (req.op, req.mac, req.ip) {
            (Op::Add, Some(mac), want) => ipam.add(c, i, mac, want).await.map(Some),
            (Op::Del, _, _) => ipam.release(c, i).await.map(|_| None),
            (Op::Check, Some(mac), Some(ip)) => ipam.check(c, i, mac, ip).await.map(Some),
            _ => return Reply::failed(format!("{:?} is missing its MAC or IP", req.op), false),
        };
        match result {
            Ok(reg) => Reply::done(reg),
            Err(e) => {
                warn!(op = ?req.op, container = c, ifname = i, error = %e, "weft-cni request refused");
                Reply::failed(e.to_string(), e.retry())
            }
        }
    }
}
