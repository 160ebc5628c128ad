//! Opening a connection and creating the schema, safely against other processes doing the same.

use rusqlite::{Connection, ErrorCode, OpenFlags};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a connection waits for another process's write lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bumped if the layout below ever changes incompatibly.
const SCHEMA_VERSION: i64 = 1;

/// `meta` holds the single row with the store-wide revision and the highest revision whose event
/// was discarded from `events` (a watcher behind it must resync). `kv` is the live state; `events`
/// the bounded change history watchers read (`value` NULL = delete).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    revision  INTEGER NOT NULL,
    compacted INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (id, revision, compacted) VALUES (1, 0, 0);
CREATE TABLE IF NOT EXISTS kv (
    key           TEXT PRIMARY KEY,
    value         TEXT NOT NULL,
    create_rev    INTEGER NOT NULL,
    mod_rev       INTEGER NOT NULL,
    expires_at_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expiry ON kv (expires_at_ms) WHERE expires_at_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    rev           INTEGER PRIMARY KEY,
    key           TEXT NOT NULL,
    value         TEXT,
    create_rev    INTEGER NOT NULL,
    expires_at_ms INTEGER
);
";

/// Opens `path` (creating the file if needed), switches it to WAL and creates the schema.
/// Several processes may do this at the same moment on a fresh file; the loser of each race just
/// retries until the winner is done.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let mut conn = Connection::open_with_flags(path, flags)?;
    conn.busy_handler(Some(busy_waiter()))?;
    retry_while_busy(|| init(&mut conn))?;
    Ok(conn)
}

/// Waits for another process's lock for up to `BUSY_TIMEOUT`, re-trying every ~1 ms.
///
/// SQLite's own `busy_timeout` backs off to sleeps of 25-100 ms; with dozens of agents writing
/// at the same moment (all starting together), that alone would blow the convergence budget.
/// Writes are short, so retrying often is cheap; the jitter stops waiters moving in lockstep.
fn busy_waiter() -> impl FnMut(i32) -> bool + Send + 'static {
    let mut started = Instant::now();
    move |attempt| {
        if attempt == 0 {
            started = Instant::now();
        }
        if started.elapsed() >= BUSY_TIMEOUT {
            return false;
        }
        let base = if attempt < 20 { 200 } else { 1000 };
        std::thread::sleep(Duration::from_micros(base + rand::random::<u64>() % 300));
        true
    }
}

fn init(conn: &mut Connection) -> rusqlite::Result<()> {
    // Persistent: once any process switched the file to WAL, this is a cheap no-op. Switching
    // needs an exclusive lock, which SQLite does not always wait for, hence `retry_while_busy`.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "cannot switch to WAL journal (got {mode:?})"
        )));
    }
    // In WAL mode NORMAL stays consistent after a crash; only the last commits may be lost on a
    // power cut, which leases (renewed every few seconds) tolerate.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "database schema version {version} is newer than this weft ({SCHEMA_VERSION})"
        )));
    }
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

/// Retries `f` while it fails with SQLITE_BUSY/SQLITE_LOCKED, for up to `BUSY_TIMEOUT`.
fn retry_while_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match f() {
            Err(e) if is_busy(&e) && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            other => return other,
        }
    }
}

pub fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}
