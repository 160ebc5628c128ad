//! The key-value store behind the subnet manager.
//!
//! Every backend (embedded SQLite, etcd v3) offers the same small contract, modelled on
//! etcd's: keys holding JSON text, a store-wide revision that grows with every change, per-key
//! expiry, compare-and-create, and a watch that streams changes after a revision. Everything weft
//! stores (network config, leases) is built on top of this trait, so the agent never knows which
//! backend it talks to.
//!
//! Without the `runtime` feature only the plain data types are here (what leases are parsed
//! from); the trait and the backends need it.

#[cfg(feature = "runtime")]
pub mod etcd;
#[cfg(feature = "runtime")]
pub mod sqlite;

#[cfg(feature = "runtime")]
use async_trait::async_trait;
#[cfg(feature = "runtime")]
use std::sync::Arc;
use std::time::{Duration, SystemTime};
#[cfg(feature = "runtime")]
use tokio::sync::mpsc;

/// A store-wide, monotonically increasing change counter (etcd's revision).
pub type Revision = i64;

/// One key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// Revision at which the key was created (etcd's `create_revision`).
    pub create_revision: Revision,
    /// Revision of the last change to the key.
    pub mod_revision: Revision,
    /// When the key expires; `None` for keys that never do (the network config).
    pub expires_at: Option<SystemTime>,
}

/// A consistent snapshot of every key under a prefix, and the revision it was taken at: a watch
/// started from that revision misses nothing.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub entries: Vec<Entry>,
    pub revision: Revision,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Key created or changed.
    Put(Entry),
    /// Key deleted, by someone or by expiry.
    Delete { key: String, revision: Revision },
    /// The watch lost history (compaction, reconnect): the consumer must list again and diff.
    Resync,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {store}: {message}")]
    Backend { store: String, message: String },
    #[error("store {store} is unreachable: {message}")]
    Unavailable { store: String, message: String },
    #[error("invalid store address {0:?}: expected sqlite:PATH or etcd:ENDPOINT[,ENDPOINT…]")]
    BadUrl(String),
}

#[cfg(feature = "runtime")]
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short human description (`sqlite:/var/lib/weft/store.db`), for logs and errors.
    fn describe(&self) -> String;

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;

    /// Every live (unexpired) key starting with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError>;

    /// Writes `key` unconditionally, without expiry.
    async fn put(&self, key: &str, value: &str) -> Result<Revision, StoreError>;

    /// Creates `key` only if it does not exist (etcd: txn on `create_revision == 0`).
    /// `Ok(None)` when the key already exists.
    async fn create(&self, key: &str, value: &str, ttl: Duration) -> Result<Option<Entry>, StoreError>;

    /// Rewrites `key` with `value` and a fresh `ttl`, only if its `mod_revision` is still
    /// `expected`. `Ok(None)` when the key is gone or was changed by someone else.
    async fn refresh(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
        expected: Revision,
    ) -> Result<Option<Entry>, StoreError>;

    /// Deletes `key`; `Ok(false)` if it did not exist.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Streams every change under `prefix` made after revision `after`, in revision order.
    /// The channel closes if the store goes away; a `Resync` means history was lost.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<mpsc::Receiver<WatchEvent>, StoreError>;
}

/// Which store to open: `--store sqlite:PATH`, or etcd when `--etcd-endpoints` is given.
#[cfg(feature = "runtime")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Sqlite(String),
    Etcd(etcd::EtcdConfig),
}

#[cfg(feature = "runtime")]
impl StoreConfig {
    /// Parses a store address: `sqlite:PATH`, or `etcd:ENDPOINT[,ENDPOINT…]` (plain etcd, no TLS
    /// or credentials: those come from the `--etcd-*` flags).
    pub fn parse(url: &str) -> Result<StoreConfig, StoreError> {
        match url.split_once(':') {
            Some(("sqlite", path)) if !path.is_empty() => Ok(StoreConfig::Sqlite(path.to_string())),
            Some(("etcd", list)) if !etcd::split_endpoints(list).is_empty() => {
                Ok(StoreConfig::Etcd(etcd::EtcdConfig::from_endpoints(list)))
            }
            _ => Err(StoreError::BadUrl(url.to_string())),
        }
    }

    /// How logs name the store (never with credentials).
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Sqlite(path) => format!("sqlite:{path}"),
            StoreConfig::Etcd(c) => c.describe(),
        }
    }
}

/// Opens a store. etcd connects on first use, so this fails only on a bad config.
#[cfg(feature = "runtime")]
pub fn open(cfg: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    match cfg {
        StoreConfig::Sqlite(path) => Ok(Arc::new(sqlite::SqliteStore::open(path)?)),
        StoreConfig::Etcd(c) => Ok(Arc::new(etcd::EtcdStore::open(c)?)),
    }
}

/// Opens the store named by an address (see [`StoreConfig::parse`]).
#[cfg(feature = "runtime")]
pub fn open_url(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open(&StoreConfig::parse(url)?)
}

/// Longest value a watch event carries whole: more than anything weft reads from the store (the
/// network config, at most `config::MAX_CONFIG_BYTES`, is the largest; leases, endpoints and
/// claims are at most 4 KiB). A longer value, which only a hostile or foreign writer makes, is
/// cut by the backend to just over this length (see [`cut`]), so every reader still refuses it
/// on its length, and a watch channel holds at most its 256 events × 64 KiB (16 MiB), not × the
/// store's own limit (1.5 MiB a value in etcd, none in SQLite). Listings are not cut: they are
/// read, used and dropped at once (the agent keeps leases cut to 4 KiB).
pub const MAX_WATCH_VALUE_BYTES: usize = 64 * 1024;

const _: () = assert!(crate::config::MAX_CONFIG_BYTES <= MAX_WATCH_VALUE_BYTES);
const _: () = assert!(crate::lease::MAX_LEASE_VALUE_BYTES <= MAX_WATCH_VALUE_BYTES);
const _: () = assert!(crate::endpoint::MAX_ENDPOINT_VALUE_BYTES <= MAX_WATCH_VALUE_BYTES);
const _: () = assert!(crate::l2ipam::MAX_CLAIM_VALUE_BYTES <= MAX_WATCH_VALUE_BYTES);

/// `text` if it is at most `max` bytes long, else its shortest prefix longer than `max` that
/// ends on a character boundary (at most `max + 4` bytes): still recognisably too long.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let end = (max + 1..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    &text[..end]
}

/// Cuts `value` in place like [`cut`], giving back the memory it no longer needs.
pub fn cut_value(value: &mut String, max: usize) {
    let len = cut(value, max).len();
    if len < value.len() {
        value.truncate(len);
        value.shrink_to_fit();
    }
}

/// Time left before `entry` expires (zero if already past), `None` if it never expires.
pub fn remaining(entry: &Entry, now: SystemTime) -> Option<Duration> {
    entry
        .expires_at
        .map(|t| t.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod cut_tests {
    use super::*;

    #[test]
    fn cut_keeps_short_text_and_cuts_long_text_just_over_the_limit() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "abcd");
        assert_eq!(cut("abcde", 3), "abcd");
        // Two bytes a character: the cut ends on a boundary, one character over.
        let text = "é".repeat(10);
        assert_eq!(cut(&text, 5), "ééé");
        assert_eq!(cut(&text, 6), "éééé");
        let mut v = "x".repeat(1 << 20);
        cut_value(&mut v, MAX_WATCH_VALUE_BYTES);
        assert_eq!(v.len(), MAX_WATCH_VALUE_BYTES + 1);
        assert!(v.capacity() < 2 * MAX_WATCH_VALUE_BYTES);
    }
}
