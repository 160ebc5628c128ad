//! The store operations as plain synchronous SQLite code, run on a blocking thread.
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction: it takes the database write lock up
//! front, so concurrent writers in other processes queue on `busy_timeout` instead of failing
//! with SQLITE_BUSY when a read transaction tries to upgrade. Every write also first deletes the
//! keys whose TTL has passed, so expiry produces ordinary Delete events with their own revision.

use super::super::{cut_value, Entry, Listing, Revision, WatchEvent, MAX_WATCH_VALUE_BYTES};
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the unit of `expires_at_ms`, comparable across processes.
pub fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn expiry_ms(now: i64, ttl: Duration) -> i64 {
    now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

/// SQL condition "key starts with ?prefix" (character-wise on TEXT, so UTF-8 safe; no LIKE
/// escaping problems with `_` or `%` in keys).
const PREFIX_MATCH: &str = "substr(key, 1, length(:prefix)) = :prefix";

fn entry_from_kv(row: &Row) -> rusqlite::Result<Entry> {
    Ok(Entry {
        key: row.get("key")?,
        value: row.get("value")?,
        create_revision: row.get("create_rev")?,
        mod_revision: row.get("mod_rev")?,
        expires_at: row.get::<_, Option<i64>>("expires_at_ms")?.map(from_ms),
    })
}

pub fn head(conn: &Connection) -> rusqlite::Result<Revision> {
    conn.query_row("SELECT revision FROM meta WHERE id = 1", [], |r| r.get(0))
}

// ---------------------------------------------------------------------------------------------
// Reads. Each runs in one (deferred) transaction, i.e. on one WAL snapshot.

pub fn get(conn: &mut Connection, key: &str) -> rusqlite::Result<Option<Entry>> {
    conn.query_row(
        "SELECT key, value, create_rev, mod_rev, expires_at_ms FROM kv
         WHERE key = ?1 AND (expires_at_ms IS NULL OR expires_at_ms > ?2)",
        params![key, now_ms()],
        entry_from_kv,
    )
    .optional()
}

pub fn list(conn: &mut Connection, prefix: &str) -> rusqlite::Result<Listing> {
    let tx = conn.transaction()?;
    let revision = head(&tx)?;
    let entries = {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT key, value, create_rev, mod_rev, expires_at_ms FROM kv
             WHERE {PREFIX_MATCH} AND (expires_at_ms IS NULL OR expires_at_ms > :now)
             ORDER BY key"
        ))?;
        let rows = stmt.query_map(
            rusqlite::named_params! {":prefix": prefix, ":now": now_ms()},
            entry_from_kv,
        )?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    tx.commit()?;
    Ok(Listing { entries, revision })
}

/// How much one watch read may hold: a page ends after `rows` events or once its keys and
/// values reach `bytes`, whichever comes first, and always holds at least one event (a single
/// event larger than `bytes` is its own page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBound {
    pub rows: usize,
    pub bytes: usize,
}

/// The watch's page: with the default 10,000-event history and values of any size (the store
/// does not limit them; the agent refuses leases over 4 KiB only after reading them), one
/// unbounded read could hold gigabytes. The byte bound is the one that matters (values are cut
/// to just over `MAX_WATCH_VALUE_BYTES`, so 4,096 rows could otherwise hold 256 MiB); the row
/// bound, well above the watch channel's 256, keeps a page of small events to ~1 MB as well
/// while letting a storm of small events arrive in few reads: the agent's drain yields to the
/// watch task but does not wait for a database read, so each read between two pages of a storm
/// can end a batch (with 256-row pages the 10,000-change burst of `tests/watch_storm.rs` took
/// 28 reconciles instead of 3-4).
pub const WATCH_PAGE: PageBound = PageBound {
    rows: 4096,
    bytes: 1 << 20,
};

/// What a watcher gets when it asks for the changes after `after`.
pub enum Changes {
    /// Changes after `after` up to `upto`, in order (possibly none). `upto` is the head when the
    /// page holds everything up to it (`cut` false); when the page was cut at the bound it is the
    /// revision of the last event read (`cut` true), and the watcher reads on from there.
    Events {
        events: Vec<WatchEvent>,
        upto: Revision,
        cut: bool,
    },
    /// Events after `after` were already discarded; the watcher continues from `head`.
    Lost { head: Revision },
}

/// One page of the changes under `prefix` after `after`, read lazily (rows are fetched one at a
/// time and the read stops at the bound: a cut page never reads past it). Values are cut to just
/// over `MAX_WATCH_VALUE_BYTES` (in SQL already, so a huge value is never copied out whole).
pub fn changes_since(
    conn: &mut Connection,
    prefix: &str,
    after: Revision,
    bound: PageBound,
) -> rusqlite::Result<Changes> {
    let tx = conn.transaction()?;
    let (head, compacted): (Revision, Revision) =
        tx.query_row("SELECT revision, compacted FROM meta WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    if after < compacted {
        return Ok(Changes::Lost { head });
    }
    if after >= head {
        return Ok(Changes::Events {
            events: Vec::new(),
            upto: after,
            cut: false,
        });
    }
    let rows_max = bound.rows.max(1);
    let mut events = Vec::new();
    let mut bytes = 0usize;
    let mut cut = false;
    {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT rev, key, substr(value, 1, :chars) AS value, create_rev, expires_at_ms FROM events
             WHERE rev > :after AND rev <= :head AND {PREFIX_MATCH} ORDER BY rev LIMIT :rows"
        ))?;
        let mut rows = stmt.query(rusqlite::named_params! {
            ":after": after,
            ":head": head,
            ":prefix": prefix,
            ":rows": i64::try_from(rows_max).unwrap_or(i64::MAX),
            // SQLite counts characters: at most 4 bytes each, cut to bytes below.
            ":chars": i64::try_from(MAX_WATCH_VALUE_BYTES + 1).unwrap_or(i64::MAX),
        })?;
        while let Some(row) = rows.next()? {
            let mut event = event_from_row(row)?;
            if let WatchEvent::Put(e) = &mut event {
                cut_value(&mut e.value, MAX_WATCH_VALUE_BYTES);
            }
            bytes = bytes.saturating_add(event_size(&event));
            events.push(event);
            if events.len() >= rows_max || bytes >= bound.bytes {
                cut = true;
                break;
            }
        }
    }
    tx.commit()?;
    // A page that reached its bound exactly at the last matching event is still marked cut: the
    // next read finds nothing more and moves on to the head, which costs one cheap query.
    let upto = match events.last() {
        Some(last) if cut => event_revision(last),
        _ => head,
    };
    Ok(Changes::Events { events, upto, cut })
}

/// What an event costs to hold, roughly: its key and value.
fn event_size(ev: &WatchEvent) -> usize {
    match ev {
        WatchEvent::Put(e) => e.key.len() + e.value.len(),
        WatchEvent::Delete { key, .. } => key.len(),
        WatchEvent::Resync => 0,
    }
}

fn event_revision(ev: &WatchEvent) -> Revision {
    match ev {
        WatchEvent::Put(e) => e.mod_revision,
        WatchEvent::Delete { revision, .. } => *revision,
        WatchEvent::Resync => 0,
    }
}

fn event_from_row(row: &Row) -> rusqlite::Result<WatchEvent> {
    let revision: Revision = row.get("rev")?;
    let key: String = row.get("key")?;
    Ok(match row.get::<_, Option<String>>("value")? {
        None => WatchEvent::Delete { key, revision },
        Some(value) => WatchEvent::Put(Entry {
            key,
            value,
            create_revision: row.get("create_rev")?,
            mod_revision: revision,
            expires_at: row.get::<_, Option<i64>>("expires_at_ms")?.map(from_ms),
        }),
    })
}

/// The earliest expiry of any key, to know when the next purge is due.
pub fn next_expiry_ms(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT min(expires_at_ms) FROM kv WHERE expires_at_ms IS NOT NULL",
        [],
        |r| r.get(0),
    )
}

// ---------------------------------------------------------------------------------------------
// Writes.

/// Runs `f` in an IMMEDIATE transaction after purging expired keys, then trims the history to
/// `history` events. Returns `f`'s result and whether the revision moved (someone must be told).
pub fn write<T>(
    conn: &mut Connection,
    history: i64,
    f: impl FnOnce(&Transaction, i64) -> rusqlite::Result<T>,
) -> rusqlite::Result<(T, bool)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Read the clock only once holding the write lock, so expiry decisions are ordered.
    let now = now_ms();
    let before = head(&tx)?;
    purge_expired(&tx, now)?;
    let out = f(&tx, now)?;
    let after = head(&tx)?;
    if after != before {
        compact(&tx, after, history)?;
    }
    tx.commit()?;
    Ok((out, after != before))
}

/// Deletes every key whose TTL has passed, one Delete event each.
fn purge_expired(tx: &Transaction, now: i64) -> rusqlite::Result<()> {
    let expired: Vec<String> = {
        let mut stmt =
            tx.prepare_cached("SELECT key FROM kv WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ?1")?;
        let rows = stmt.query_map([now], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for key in expired {
        remove(tx, &key)?;
    }
    Ok(())
}

/// A write with nothing else to do than purge: used by the background notifier, which only
/// takes the write lock when something is actually due (a cheap read first), because up to 50
/// processes wake up for the same expiry.
pub fn purge_if_due(conn: &mut Connection, history: i64) -> rusqlite::Result<bool> {
    match next_expiry_ms(conn)? {
        Some(t) if t <= now_ms() => Ok(write(conn, history, |_, _| Ok(()))?.1),
        _ => Ok(false),
    }
}

fn compact(tx: &Transaction, head: Revision, history: i64) -> rusqlite::Result<()> {
    let floor = head - history;
    let compacted: Revision = tx.query_row("SELECT compacted FROM meta WHERE id = 1", [], |r| r.get(0))?;
    if floor > compacted {
        tx.execute("DELETE FROM events WHERE rev <= ?1", [floor])?;
        tx.execute("UPDATE meta SET compacted = ?1 WHERE id = 1", [floor])?;
    }
    Ok(())
}

fn bump(tx: &Transaction) -> rusqlite::Result<Revision> {
    tx.query_row(
        "UPDATE meta SET revision = revision + 1 WHERE id = 1 RETURNING revision",
        [],
        |r| r.get(0),
    )
}

/// Stores `entry` in `kv` and records it as a Put event.
fn store(tx: &Transaction, e: &Entry) -> rusqlite::Result<()> {
    let expires = e.expires_at.map(to_ms);
    tx.prepare_cached(
        "INSERT INTO kv (key, value, create_rev, mod_rev, expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, create_rev = excluded.create_rev,
             mod_rev = excluded.mod_rev, expires_at_ms = excluded.expires_at_ms",
    )?
    .execute(params![e.key, e.value, e.create_revision, e.mod_revision, expires])?;
    tx.prepare_cached("INSERT INTO events (rev, key, value, create_rev, expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![e.mod_revision, e.key, e.value, e.create_revision, expires])?;
    Ok(())
}

/// Deletes `key` from `kv` and records a Delete event; false if it was not there.
fn remove(tx: &Transaction, key: &str) -> rusqlite::Result<bool> {
    let create_rev: Option<Revision> = tx
        .query_row("SELECT create_rev FROM kv WHERE key = ?1", [key], |r| r.get(0))
        .optional()?;
    let Some(create_rev) = create_rev else {
        return Ok(false);
    };
    let rev = bump(tx)?;
    tx.execute("DELETE FROM kv WHERE key = ?1", [key])?;
    tx.prepare_cached(
        "INSERT INTO events (rev, key, value, create_rev, expires_at_ms) VALUES (?1, ?2, NULL, ?3, NULL)",
    )?
    .execute(params![rev, key, create_rev])?;
    Ok(true)
}

/// `(create_rev, mod_rev)` of a live key. Expired keys are already purged inside `write`.
fn revisions(tx: &Transaction, key: &str) -> rusqlite::Result<Option<(Revision, Revision)>> {
    tx.query_row("SELECT create_rev, mod_rev FROM kv WHERE key = ?1", [key], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .optional()
}

pub fn put(tx: &Transaction, key: &str, value: &str) -> rusqlite::Result<Revision> {
    let rev = bump(tx)?;
    let create_revision = revisions(tx, key)?.map_or(rev, |(c, _)| c);
    let entry = Entry {
        key: key.to_string(),
        value: value.to_string(),
        create_revision,
        mod_revision: rev,
        expires_at: None,
    };
    store(tx, &entry)?;
    Ok(rev)
}

pub fn create(tx: &Transaction, now: i64, key: &str, value: &str, ttl: Duration) -> rusqlite::Result<Option<Entry>> {
    if revisions(tx, key)?.is_some() {
        return Ok(None);
    }
    let rev = bump(tx)?;
    let entry = Entry {
        key: key.to_string(),
        value: value.to_string(),
        create_revision: rev,
        mod_revision: rev,
        expires_at: Some(from_ms(expiry_ms(now, ttl))),
    };
    store(tx, &entry)?;
    Ok(Some(entry))
}

pub fn refresh(
    tx: &Transaction,
    now: i64,
    key: &str,
    value: &str,
    ttl: Duration,
    expected: Revision,
) -> rusqlite::Result<Option<Entry>> {
    let Some((create_revision, mod_rev)) = revisions(tx, key)? else {
        return Ok(None);
    };
    if mod_rev != expected {
        return Ok(None);
    }
    let entry = Entry {
        key: key.to_string(),
        value: value.to_string(),
        create_revision,
        mod_revision: bump(tx)?,
        expires_at: Some(from_ms(expiry_ms(now, ttl))),
    };
    store(tx, &entry)?;
    Ok(Some(entry))
}

pub fn delete(tx: &Transaction, key: &str) -> rusqlite::Result<bool> {
    remove(tx, key)
}
