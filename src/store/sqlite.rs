//! Embedded SQLite store: one database file shared by every agent process on a machine.
//!
//! Layout (see `schema.rs`): `kv` holds the live keys, `events` the last `history` changes with
//! their revisions, `meta` the store-wide revision. Writes are `BEGIN IMMEDIATE` transactions
//! (`ops.rs`) that also delete expired keys, so expiry is an ordinary change with a revision that
//! every process's watchers see. Watchers are woken across processes by inotify on the database
//! directory (`notify.rs`), with a 1 s fallback poll that also drives expiry.
//!
//! All SQLite calls are blocking; they run on tokio's blocking pool, serialised per store by a
//! mutex around its single connection. Concurrency between processes is SQLite's business (WAL
//! readers never block, writers queue on `busy_timeout`).

mod notify;
mod ops;
mod schema;
#[cfg(test)]
mod tests;

use super::*;
use rusqlite::{Connection, Transaction};
use std::fmt::Display;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Weak};
use tokio::sync::watch;

/// Events kept for watchers; one further behind gets `WatchEvent::Resync`.
pub const DEFAULT_HISTORY: usize = 10_000;

/// Buffer of each watch channel; a slow consumer only delays its own watch.
const WATCH_BUFFER: usize = 256;

pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// `sqlite:PATH`, as given.
    name: String,
    history: i64,
    conn: Mutex<Connection>,
    /// Change ticks from the notifier thread, started by the first `watch`.
    notifier: Mutex<Option<watch::Receiver<u64>>>,
    /// Set when the store is dropped: the notifier thread stops, which ends the watches.
    stop: Arc<AtomicBool>,
}

impl SqliteStore {
    /// Opens (creating if needed, with its parent directory) the database at `path`.
    pub fn open(path: &str) -> Result<Self, StoreError> {
        Self::open_with_history(path, DEFAULT_HISTORY)
    }

    /// Like `open`, keeping only the last `history` events for watchers.
    pub fn open_with_history(path: &str, history: usize) -> Result<Self, StoreError> {
        let name = format!("sqlite:{path}");
        let unavailable = |what: &str, e: &dyn Display| StoreError::Unavailable {
            store: name.clone(),
            message: format!("{what}: {e}"),
        };
        let file = PathBuf::from(path);
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable(&format!("creating directory {}", dir.display()), &e))?;
        }
        let conn = schema::open(&file).map_err(|e| unavailable("opening database", &e))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: file,
                name,
                history: i64::try_from(history.max(1)).unwrap_or(i64::MAX),
                conn: Mutex::new(conn),
                notifier: Mutex::new(None),
                stop: Arc::new(AtomicBool::new(false)),
            }),
        })
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
    }
}

impl Inner {
    fn backend(&self, what: &str, e: impl Display) -> StoreError {
        StoreError::Backend {
            store: self.name.clone(),
            message: format!("{what}: {e}"),
        }
    }

    /// Runs `f` on the connection, on the blocking pool. `what` names the operation and key for
    /// the error message.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        what: String,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(self);
        match tokio::task::spawn_blocking(move || f(&mut inner.lock_conn())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.backend(&what, e)),
            Err(e) => Err(self.backend(&what, e)),
        }
    }

    /// A panic while holding the lock leaves the connection usable (an open transaction is
    /// rolled back when dropped), so poisoning is ignored.
    fn lock_conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` in a write transaction; after a commit that changed something, pokes the file
    /// so other processes' watchers wake up.
    async fn write<T: Send + 'static>(
        self: &Arc<Self>,
        what: String,
        f: impl FnOnce(&Transaction, i64) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (history, path) = (self.history, self.path.clone());
        self.run(what, move |conn| {
            let (out, changed) = ops::write(conn, history, f)?;
            if changed {
                notify::poke(&path);
            }
            Ok(out)
        })
        .await
    }

    /// A receiver of change ticks, starting the notifier thread on first use.
    fn subscribe(self: &Arc<Self>) -> Result<watch::Receiver<u64>, StoreError> {
        let mut notifier = self.notifier.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = notifier.as_ref() {
            return Ok(rx.clone());
        }
        let weak = Arc::downgrade(self);
        let rx = notify::spawn(&self.path, move || purge_tick(&weak), Arc::clone(&self.stop))
            .map_err(|e| self.backend("watch: starting inotify notifier", e))?;
        *notifier = Some(rx.clone());
        Ok(rx)
    }

    /// Deletes expired keys if any are due, and says how long until the next one is.
    fn purge(&self) -> rusqlite::Result<Duration> {
        let mut conn = self.lock_conn();
        if ops::purge_if_due(&mut conn, self.history)? {
            notify::poke(&self.path);
        }
        let left = match ops::next_expiry_ms(&conn)? {
            None => notify::FALLBACK_POLL,
            // Still due after a purge only if a key was just created already expired: back
            // off a little rather than spin.
            Some(t) => Duration::from_millis(u64::try_from(t - ops::now_ms()).unwrap_or(0).max(5)),
        };
        Ok(left)
    }
}

/// The notifier thread's periodic work; holds only a weak reference so it never keeps a dropped
/// store alive.
fn purge_tick(inner: &Weak<Inner>) -> Duration {
    let Some(inner) = inner.upgrade() else {
        return notify::FALLBACK_POLL;
    };
    inner.purge().unwrap_or_else(|e| {
        tracing::warn!(store = %inner.name, error = %e, "purging expired keys failed");
        notify::FALLBACK_POLL
    })
}

/// One watch: reads the changes after `last` whenever the notifier ticks, until the receiver is
/// dropped or the store goes away. Changes are read a page at a time (`ops::WATCH_PAGE`): a
/// watcher far behind, or a history of huge values, never costs more than one page per read.
/// A cut page is followed by the next one at once, without waiting for a tick.
async fn watch_loop(
    inner: Arc<Inner>,
    prefix: String,
    mut last: Revision,
    tx: mpsc::Sender<WatchEvent>,
    mut ticks: watch::Receiver<u64>,
) {
    loop {
        // Mark the tick as seen *before* reading, so a commit during the read ticks again.
        ticks.borrow_and_update();
        let mut more = true;
        while more {
            more = false;
            let p = prefix.clone();
            let read = inner
                .run(format!("watch {prefix:?} after revision {last}"), move |conn| {
                    ops::changes_since(conn, &p, last, ops::WATCH_PAGE)
                })
                .await;
            match read {
                Ok(ops::Changes::Events { events, upto, cut }) => {
                    for event in events {
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                    last = upto;
                    more = cut;
                }
                Ok(ops::Changes::Lost { head }) => {
                    // The consumer lists again; continuing from `head` misses nothing that
                    // listing will not show (events at or below its listing revision are
                    // redundant).
                    if tx.send(WatchEvent::Resync).await.is_err() {
                        return;
                    }
                    last = head;
                }
                // Transient (e.g. disk trouble): retry on the next tick, at most a second away.
                Err(e) => tracing::warn!(error = %e, "store watch read failed"),
            }
        }
        tokio::select! {
            _ = tx.closed() => return,
            changed = ticks.changed() => if changed.is_err() { return },
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn describe(&self) -> String {
        self.inner.name.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let k = key.to_string();
        self.inner.run(format!("get {key:?}"), move |c| ops::get(c, &k)).await
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let p = prefix.to_string();
        self.inner
            .run(format!("list {prefix:?}"), move |c| ops::list(c, &p))
            .await
    }

    async fn put(&self, key: &str, value: &str) -> Result<Revision, StoreError> {
        let (k, v) = (key.to_string(), value.to_string());
        self.inner
            .write(format!("put {key:?}"), move |tx, _| ops::put(tx, &k, &v))
            .await
    }

    async fn create(&self, key: &str, value: &str, ttl: Duration) -> Result<Option<Entry>, StoreError> {
        let (k, v) = (key.to_string(), value.to_string());
        self.inner
            .write(format!("create {key:?}"), move |tx, now| {
                ops::create(tx, now, &k, &v, ttl)
            })
            .await
    }

    async fn refresh(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
        expected: Revision,
    ) -> Result<Option<Entry>, StoreError> {
        let (k, v) = (key.to_string(), value.to_string());
        self.inner
            .write(format!("refresh {key:?} at revision {expected}"), move |tx, now| {
                ops::refresh(tx, now, &k, &v, ttl, expected)
            })
            .await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let k = key.to_string();
        self.inner
            .write(format!("delete {key:?}"), move |tx, _| ops::delete(tx, &k))
            .await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<mpsc::Receiver<WatchEvent>, StoreError> {
        let ticks = self.inner.subscribe()?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(watch_loop(
            Arc::clone(&self.inner),
            prefix.to_string(),
            after,
            tx,
            ticks,
        ));
        Ok(rx)
    }
}
