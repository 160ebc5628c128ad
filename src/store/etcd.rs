//! etcd v3 store: the production backend, speaking flannel v0.18+'s keys and JSON.
//!
//! Mapping of the [`Store`] contract:
//! - revision = etcd's revision; `list` is range reads of `paging::PAGE_KEYS` keys, all at the
//!   first one's revision (one snapshot, however large: see `paging.rs`), and that revision is
//!   the one a watch continues from (`watch(prefix, after)` watches from `after + 1`).
//! - per-key TTL = an etcd lease attached to the key. `create` grants a lease and puts the key in
//!   a transaction on `create_revision == 0`; `refresh` keeps the key's *existing* lease alive
//!   (also a lease written by a previous agent process or by flannel) and rewrites the value only
//!   if it changed, so renewals never pile up leases (flannel's defect). See `leases.rs`.
//! - `delete` also revokes the key's lease when no other key is attached to it.
//! - `Entry::expires_at`: known exactly for leases this client granted or kept alive (the agent
//!   tracks only its own). For other keys' leases `get` asks etcd (`LeaseTimeToLive`), `list`
//!   does so only with `EtcdConfig::list_expiries` (one call per distinct lease, concurrently:
//!   fine for `weft net leases`, too much for agents and the lab, which list often), and watch
//!   events leave it `None`.
//! - watch: an etcd watch; a compacted start revision yields `WatchEvent::Resync`, any stream
//!   error or end closes the channel (the agent re-lists and re-watches with backoff).
//!
//! The connection is made lazily, on the first operation, and retried on the next one after a
//! failure: an agent started before etcd simply reports the store as unreachable until it is up.

mod config;
mod errors;
mod leases;
mod paging;
mod watch;

pub use config::{split_endpoints, EtcdConfig};

use super::*;
use etcd_client::{Client, Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};
use leases::Expiries;
use std::future::Future;
use tokio::sync::OnceCell;

/// Every unary call gets this long before the store counts as unreachable: long enough for a
/// leader election in a 3-member cluster, short enough that the agent notices an outage quickly.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct EtcdStore {
    name: String,
    endpoints: Vec<String>,
    options: etcd_client::ConnectOptions,
    client: OnceCell<Client>,
    /// Whether we speak TLS (for clearer errors when the server hangs up on us).
    tls: bool,
    /// Expiry of the leases this client granted or kept alive.
    expiries: Expiries,
    list_expiries: bool,
}

impl EtcdStore {
    /// Checks the config and reads the TLS files; connects on first use.
    pub fn open(cfg: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        Ok(EtcdStore {
            name: cfg.describe(),
            endpoints: cfg.client_endpoints()?,
            options: cfg.connect_options()?,
            client: OnceCell::new(),
            tls: cfg.tls_wanted(),
            expiries: Expiries::default(),
            list_expiries: cfg.list_expiries,
        })
    }

    /// A client handle (cheap clone of a shared channel), connecting first if needed.
    async fn client(&self) -> Result<Client, StoreError> {
        let c = self
            .client
            .get_or_try_init(|| async {
                let connect = Client::connect(&self.endpoints, Some(self.options.clone()));
                match tokio::time::timeout(OP_TIMEOUT, connect).await {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err(self.err("connecting", &e)),
                    Err(_) => Err(errors::timed_out(&self.name, "connecting", OP_TIMEOUT)),
                }
            })
            .await?;
        Ok(c.clone())
    }

    fn err(&self, what: &str, e: &etcd_client::Error) -> StoreError {
        errors::store_error(&self.name, what, e, self.tls)
    }

    /// Runs one call with the operation timeout, mapping its error with `what` as context.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client().await?;
        match tokio::time::timeout(OP_TIMEOUT, f(client)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.err(what, &e)),
            Err(_) => Err(errors::timed_out(&self.name, what, OP_TIMEOUT)),
        }
    }

    /// Like `call`, for reads and blind writes that are safe to repeat: a transient failure (the
    /// member we hit died, a leader election) is retried a few times within the operation
    /// timeout, through whichever member answers, before the store counts as unreachable.
    async fn call_idempotent<T, F, Fut>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.call(what, &f).await {
                Err(StoreError::Unavailable { .. }) if tokio::time::Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
    }

    async fn get_kv(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut resp = self
            .call_idempotent(&format!("get {key:?}"), |mut c| async move { c.get(key, None).await })
            .await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    fn entry(&self, kv: &KeyValue, expires_at: Option<SystemTime>) -> Result<Entry, StoreError> {
        let text = |b: &[u8], what: &str| {
            String::from_utf8(b.to_vec()).map_err(|_| StoreError::Backend {
                store: self.name.clone(),
                message: format!("{what} of a key is not UTF-8"),
            })
        };
        Ok(Entry {
            key: text(kv.key(), "name")?,
            value: text(kv.value(), "value")?,
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            expires_at,
        })
    }
}

impl EtcdStore {
    /// Every key under `prefix` as one snapshot, read in pages (see `paging.rs`), and the
    /// revision it was read at.
    async fn list_kvs(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let what = format!("list {prefix:?}");
        let listed = paging::list(prefix.as_bytes(), KeyValue::key, |req| self.list_page(&what, req)).await;
        let backend = |message: String| StoreError::Backend {
            store: self.name.clone(),
            message: format!("{what}: {message}"),
        };
        match listed {
            Ok(v) => Ok(v),
            Err(paging::Failed::Read(e)) => Err(e),
            Err(paging::Failed::KeyTooLarge { start }) => {
                let key = self.key_at_or_after(&start).await;
                Err(backend(format!(
                    "key {key} is larger than the client accepts in one response (4 MiB)"
                )))
            }
            Err(paging::Failed::Compacted { revision }) => Err(backend(format!(
                "the listing's revision was compacted under it {} times in a row (last at \
                 revision {revision}); is something compacting continuously?",
                paging::RESTARTS
            ))),
        }
    }

    /// One page of a listing. A response too large for the client, or a compacted revision,
    /// is handed back to the pager (`Ok(Err(…))`), which reads smaller pages or starts over;
    /// every other failure is retried like any read.
    async fn list_page(
        &self,
        what: &str,
        req: paging::Request,
    ) -> Result<Result<paging::Page<KeyValue>, paging::Refused>, StoreError> {
        let what = format!("{what}: page of {} keys at revision {}", req.limit, req.revision);
        let req = &req;
        let resp = self
            .call_idempotent(&what, |mut c| async move {
                let opts = GetOptions::new()
                    .with_range(req.end.clone())
                    .with_limit(req.limit)
                    .with_revision(req.revision);
                match c.get(req.start.clone(), Some(opts)).await {
                    Ok(r) => Ok(Ok(r)),
                    Err(e) => errors::refused_page(&e).map(Err).ok_or(e),
                }
            })
            .await?;
        Ok(resp.map(|mut r| paging::Page {
            revision: revision(r.header()),
            more: r.more(),
            items: r.take_kvs(),
        }))
    }

    /// How an error names the first key at or after `start` (keys only, so it fits in a response).
    async fn key_at_or_after(&self, start: &[u8]) -> String {
        let found = self
            .call_idempotent("finding the key too large to list", |mut c| async move {
                let opts = GetOptions::new().with_from_key().with_limit(1).with_keys_only();
                c.get(start, Some(opts)).await
            })
            .await;
        match found.ok().and_then(|r| r.kvs().first().map(|kv| kv.key().to_vec())) {
            Some(k) => format!("{:?}", String::from_utf8_lossy(&k)),
            None => format!("at or after {:?}", String::from_utf8_lossy(start)),
        }
    }
}

/// The revision a response was served at (0 if etcd left the header out, which it does not).
fn revision(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    h.map(|h| h.revision()).unwrap_or(0)
}

#[async_trait]
impl Store for EtcdStore {
    fn describe(&self) -> String {
        self.name.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let Some(kv) = self.get_kv(key).await? else {
            return Ok(None);
        };
        let exp = self.expiries_of(&[kv.lease()]).await?;
        Ok(Some(self.entry(&kv, exp.get(&kv.lease()).copied())?))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let (kvs, rev) = self.list_kvs(prefix).await?;
        let exp = if self.list_expiries {
            let leases: Vec<i64> = kvs.iter().map(|kv| kv.lease()).collect();
            self.expiries_of(&leases).await?
        } else {
            self.expiries.known()
        };
        let entries = kvs
            .iter()
            .map(|kv| self.entry(kv, exp.get(&kv.lease()).copied()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Listing { entries, revision: rev })
    }

    async fn put(&self, key: &str, value: &str) -> Result<Revision, StoreError> {
        let resp = self
            .call_idempotent(
                &format!("put {key:?}"),
                |mut c| async move { c.put(key, value, None).await },
            )
            .await?;
        Ok(revision(resp.header()))
    }

    async fn create(&self, key: &str, value: &str, ttl: Duration) -> Result<Option<Entry>, StoreError> {
        let (lease, expires_at) = self.grant(ttl).await?;
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)))]);
        let resp = match self
            .call(&format!("create {key:?}"), |mut c| async move { c.txn(txn).await })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.revoke_quietly(lease).await;
                return Err(e);
            }
        };
        if !resp.succeeded() {
            // Someone else has the key: the lease we granted for it must not linger.
            self.revoke_quietly(lease).await;
            return Ok(None);
        }
        let rev = revision(resp.header());
        Ok(Some(Entry {
            key: key.to_string(),
            value: value.to_string(),
            create_revision: rev,
            mod_revision: rev,
            expires_at: Some(expires_at),
        }))
    }

    async fn refresh(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
        expected: Revision,
    ) -> Result<Option<Entry>, StoreError> {
        let Some(kv) = self.get_kv(key).await? else {
            return Ok(None);
        };
        if kv.mod_revision() != expected {
            return Ok(None);
        }
        let old = kv.lease();
        let kept = self.keep_alive(old, ttl).await?;
        let (lease, expires_at) = match kept {
            Some(t) => (old, t),
            None => self.grant(ttl).await?,
        };
        let fresh = lease != old;
        if !fresh && kv.value() == value.as_bytes() {
            // Only the lease needed extending: no write, no new revision, no watch event.
            return Ok(Some(self.entry(&kv, Some(expires_at))?));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)))]);
        let resp = match self
            .call(&format!("refresh {key:?} at revision {expected}"), |mut c| async move {
                c.txn(txn).await
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                if fresh {
                    self.revoke_quietly(lease).await;
                }
                return Err(e);
            }
        };
        if !resp.succeeded() {
            if fresh {
                self.revoke_quietly(lease).await;
            }
            return Ok(None);
        }
        if fresh && old != 0 {
            // The key moved to a new lease (old one dead or of another TTL): the old one must
            // not stay behind holding nothing.
            self.revoke_if_unused(old).await;
        }
        Ok(Some(Entry {
            key: key.to_string(),
            value: value.to_string(),
            create_revision: kv.create_revision(),
            mod_revision: revision(resp.header()),
            expires_at: Some(expires_at),
        }))
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        // One transaction: the key's lease (keys only: its value may be larger than the client
        // accepts, and is not needed), then the delete.
        let txn = Txn::new().and_then([
            TxnOp::get(key, Some(GetOptions::new().with_keys_only())),
            TxnOp::delete(key, None),
        ]);
        let resp = self
            .call(&format!("delete {key:?}"), |mut c| async move { c.txn(txn).await })
            .await?;
        let mut deleted = false;
        for op in resp.op_responses() {
            match op {
                TxnOpResponse::Get(got) => {
                    for kv in got.kvs().iter().filter(|kv| kv.lease() != 0) {
                        self.revoke_if_unused(kv.lease()).await;
                    }
                }
                TxnOpResponse::Delete(del) => deleted = del.deleted() > 0,
                _ => {}
            }
        }
        Ok(deleted)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<mpsc::Receiver<WatchEvent>, StoreError> {
        let client = self.client().await?;
        watch::start(client, &self.name, self.tls, prefix, after, self.expiries.clone()).await
    }
}
