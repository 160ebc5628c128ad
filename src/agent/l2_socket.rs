//! The L2 agent's socket for `weft-cni`: `<subnet file dir>/networks/NAME.sock`, mode 0600 (only
//! root, which runs the runtime and its plugins, may register endpoints). One request per
//! connection, see [`crate::l2ipam::protocol`]; the store work is [`crate::l2ipam::store`].
//!
//! The plugin never holds store credentials: they stay with the agent, which answers only for
//! its own host (the endpoint's `Host` is always this agent's public IP).

use super::http::Shared;
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
    pub shared: Arc<Shared>,
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
                    let reply = match tokio::time::timeout(REQUEST_TIMEOUT, self.answer(&req)).await {
                        Ok(r) => r,
                        Err(_) => Reply::failed("the store did not answer in time; try again", true),
                    };
                    let result = match (reply.ok, reply.retry) {
                        (true, _) => "ok",
                        (false, true) => "retry",
                        (false, false) => "refused",
                    };
                    let op = serde_json::to_value(req.op).ok();
                    let op = op.as_ref().and_then(serde_json::Value::as_str).unwrap_or("?");
                    self.shared.metrics.cni_request(op, result);
                    reply
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::agent_client;
    use crate::l2ipam::protocol::{Op, Request};
    use crate::store::sqlite::SqliteStore;

    fn req(op: Op, container: &str, mac: Option<&str>, ip: Option<Ipv4Addr>) -> Request {
        Request {
            op,
            container: container.into(),
            ifname: "eth0".into(),
            mac: mac.map(|m| m.parse().unwrap()),
            ip,
        }
    }

    /// The plugin's client against the agent's server, through a real socket and store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plugin_and_agent_speak_through_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("s.db").to_str().unwrap()).unwrap());
        let path = dir.path().join("networks/l2.sock");
        let (ready_tx, ready) = watch::channel(None);
        let server = Server {
            path: path.clone(),
            store,
            net_prefix: "/coreos.com/network/networks/l2".into(),
            ready,
            shared: Arc::new(Shared::new(crate::agent::metrics::Metrics::new())),
        };
        let shared = server.shared.clone();
        let listener = bind(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let task = tokio::spawn(server.run(listener));
        let call = |r: Request| {
            let path = path.clone();
            tokio::task::spawn_blocking(move || agent_client::call(&path, "l2", &r))
        };

        let add = req(Op::Add, "c1", Some("02:00:00:00:00:01"), None);
        let e = call(add.clone()).await.unwrap().unwrap_err();
        assert_eq!(e.code(), 11, "not ready yet: {e}");
        ready_tx.send_replace(Some((Ipv4Addr::new(192, 0, 2, 10), "10.70.0.0/24".parse().unwrap())));
        let reg = call(add.clone()).await.unwrap().unwrap().unwrap();
        assert_eq!(
            (reg.ip, reg.prefix_len, reg.host),
            (Ipv4Addr::new(10, 70, 0, 1), 24, Ipv4Addr::new(192, 0, 2, 10))
        );
        let check = req(Op::Check, "c1", Some("02:00:00:00:00:01"), Some(reg.ip));
        call(check.clone()).await.unwrap().unwrap();
        let taken = req(Op::Add, "c2", Some("02:00:00:00:00:02"), Some(reg.ip));
        let e = call(taken).await.unwrap().unwrap_err();
        assert_eq!(e.code(), 100, "{e}");
        assert!(
            e.to_string()
                .contains("already taken: claimed by container c1 (eth0) on 192.0.2.10"),
            "{e}"
        );
        call(req(Op::Del, "c1", None, None)).await.unwrap().unwrap();
        call(req(Op::Del, "c1", None, None)).await.unwrap().unwrap();
        assert_eq!(call(check).await.unwrap().unwrap_err().code(), 100);

        // Junk gets an answer, not a hang.
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"junk\n").await.unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("{\"Ok\":false,\"Error\":\"not a request"), "{reply}");
        let metrics = shared.metrics.encode();
        for want in [
            "weft_cni_requests_total{op=\"ADD\",result=\"retry\"} 1",
            "weft_cni_requests_total{op=\"ADD\",result=\"ok\"} 1",
            "weft_cni_requests_total{op=\"ADD\",result=\"refused\"} 1",
            "weft_cni_requests_total{op=\"DEL\",result=\"ok\"} 2",
            "weft_cni_requests_total{op=\"CHECK\",result=\"refused\"} 1",
        ] {
            assert!(metrics.contains(want), "{want} missing from\n{metrics}");
        }
        task.abort();
    }
}
