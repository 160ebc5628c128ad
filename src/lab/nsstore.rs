//! A store whose connections are made from inside a lab namespace, for the lab's own use (the
//! test process and `weft lab` run in the root namespace, where the lab's etcd is unreachable —
//! as it must be: nothing of the lab is configured there).
//!
//! Every operation runs on a small runtime of its own whose threads have entered the namespace
//! (`setns` at thread start), so every socket the store opens is opened in the namespace.

use crate::store::{Entry, Listing, Revision, Store, StoreError, WatchEvent};
use async_trait::async_trait;
use nix::sched::{setns, CloneFlags};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub struct InNamespace {
    inner: Arc<dyn Store>,
    ns: String,
    /// Set if a runtime thread could not enter the namespace: then nothing is run at all.
    escaped: Arc<AtomicBool>,
    rt: Option<tokio::runtime::Runtime>,
}

impl InNamespace {
    /// `open` must not connect yet (the etcd store connects on first use, which happens on a
    /// thread of ours, inside `ns`).
    pub fn new(ns: &str, open: impl FnOnce() -> Result<Arc<dyn Store>, StoreError>) -> Result<InNamespace, StoreError> {
        let bad = |message: String| StoreError::Backend {
            store: format!("namespace {ns}"),
            message,
        };
        let escaped = Arc::new(AtomicBool::new(false));
        let (path, flag) = (format!("/run/netns/{ns}"), escaped.clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .thread_name(format!("store-{ns}"))
            .enable_all()
            .on_thread_start(move || {
                let entered = std::fs::File::open(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|f| setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string()));
                if entered.is_err() {
                    flag.store(true, Ordering::SeqCst);
                }
            })
            .build()
            .map_err(|e| bad(format!("starting its runtime: {e}")))?;
        let inner = open()?;
        Ok(InNamespace {
            inner,
            ns: ns.to_string(),
            escaped,
            rt: Some(rt),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let bad = |message: String| StoreError::Backend {
            store: self.inner.describe(),
            message,
        };
        if self.escaped.load(Ordering::SeqCst) {
            return Err(bad(format!("a thread could not enter namespace {}", self.ns)));
        }
        let rt = self.rt.as_ref().ok_or_else(|| bad("runtime gone".into()))?;
        rt.spawn(f).await.map_err(|e| bad(format!("store task: {e}")))?
    }
}

impl Drop for InNamespace {
    fn drop(&mut self) {
        // Dropping a runtime from async code would panic; this never blocks.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::ZERO);
        }
    }
}

#[async_trait]
impl Store for InNamespace {
    fn describe(&self) -> String {
        format!("{} (from namespace {})", self.inner.describe(), self.ns)
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let (s, k) = (self.inner.clone(), key.to_string());
        self.run(async move { s.get(&k).await }).await
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let (s, p) = (self.inner.clone(), prefix.to_string());
        self.run(async move { s.list(&p).await }).await
    }

    async fn put(&self, key: &str, value: &str) -> Result<Revision, StoreError> {
        let (s, k, v) = (self.inner.clone(), key.to_string(), value.to_string());
        self.run(async move { s.put(&k, &v).await }).await
    }

    async fn create(&self, key: &str, value: &str, ttl: Duration) -> Result<Option<Entry>, StoreError> {
        let (s, k, v) = (self.inner.clone(), key.to_string(), value.to_string());
        self.run(async move { s.create(&k, &v, ttl).await }).await
    }

    async fn refresh(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
        expected: Revision,
    ) -> Result<Option<Entry>, StoreError> {
        let (s, k, v) = (self.inner.clone(), key.to_string(), value.to_string());
        self.run(async move { s.refresh(&k, &v, ttl, expected).await }).await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let (s, k) = (self.inner.clone(), key.to_string());
        self.run(async move { s.delete(&k).await }).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<mpsc::Receiver<WatchEvent>, StoreError> {
        let (s, p) = (self.inner.clone(), prefix.to_string());
        self.run(async move { s.watch(&p, after).await }).await
    }
}
