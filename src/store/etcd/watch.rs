//! One etcd watch per `Store::watch` call, forwarded into the channel the agent reads.
//!
//! A compacted start revision becomes `WatchEvent::Resync` (the agent re-lists); an error or end
//! of the stream closes the channel, which the agent takes as "reconnect with backoff, re-list and
//! reconcile". Dropping the receiver ends the watch.

use super::leases::Expiries;
use super::{errors, OP_TIMEOUT};
use crate::store::{Entry, Revision, StoreError, WatchEvent};
use etcd_client::{Client, EventType, WatchOptions, WatchResponse, WatchStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Buffer of each watch channel, as for the SQLite store.
const WATCH_BUFFER: usize = 256;

/// Starts the watch (so that a refused watch is an error here, not a closed channel later).
///
/// With `fragment`, etcd splits a response larger than its request limit (1.5 MiB by default)
/// into several: without it, a watch catching up on a few ~1 MB values gets them in one response
/// over the client's 4 MiB and breaks at once. The events of the fragments are forwarded as they
/// come, in order, which is all reassembling them would give.
pub(super) async fn start(
    mut client: Client,
    store: &str,
    tls: bool,
    prefix: &str,
    after: Revision,
    expiries: Expiries,
) -> Result<mpsc::Receiver<WatchEvent>, StoreError> {
    let what = format!("watch {prefix:?} after revision {after}");
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(after + 1)
        .with_fragment();
    let stream = match tokio::time::timeout(OP_TIMEOUT, client.watch(prefix, Some(opts))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(errors::store_error(store, &what, &e, tls)),
        Err(_) => return Err(errors::timed_out(store, &what, OP_TIMEOUT)),
    };
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    tokio::spawn(forward(
        stream,
        tx,
        store.to_string(),
        tls,
        prefix.to_string(),
        expiries,
    ));
    Ok(rx)
}

async fn forward(
    mut stream: WatchStream,
    tx: mpsc::Sender<WatchEvent>,
    store: String,
    tls: bool,
    prefix: String,
    expiries: Expiries,
) {
    loop {
        let msg = tokio::select! {
            _ = tx.closed() => return,
            m = stream.message() => m,
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => {
                debug!(store = %store, prefix = %prefix, "etcd watch stream ended");
                return;
            }
            Err(e) => {
                let e = errors::store_error(&store, &format!("watch {prefix:?}"), &e, tls);
                warn!(error = %e, "etcd watch broke");
                return;
            }
        };
        if resp.compact_revision() > 0 {
            // History we still needed is gone: the consumer re-lists.
            debug!(store = %store, compacted = resp.compact_revision(), "etcd watch start revision compacted");
            let _ = tx.send(WatchEvent::Resync).await;
            return;
        }
        if resp.canceled() {
            warn!(store = %store, reason = %resp.cancel_reason(), "etcd cancelled the watch");
            return;
        }
        for ev in events(&resp, &expiries) {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
}

/// The events of one response, in revision order. Keys or values that are not UTF-8 cannot be
/// anything weft wrote or reads; they are skipped. Values are cut to just over
/// `MAX_WATCH_VALUE_BYTES`, so the channel never buffers etcd's 1.5 MiB values.
fn events(resp: &WatchResponse, expiries: &Expiries) -> Vec<WatchEvent> {
    resp.events()
        .iter()
        .filter_map(|ev| {
            let kv = ev.kv()?;
            let key = kv.key_str().ok()?.to_string();
            match ev.event_type() {
                EventType::Put => Some(WatchEvent::Put(Entry {
                    key,
                    value: crate::store::cut(kv.value_str().ok()?, crate::store::MAX_WATCH_VALUE_BYTES).to_string(),
                    create_revision: kv.create_revision(),
                    mod_revision: kv.mod_revision(),
                    expires_at: (kv.lease() != 0).then(|| expiries.get(kv.lease())).flatten(),
                })),
                EventType::Delete => Some(WatchEvent::Delete {
                    key,
                    revision: kv.mod_revision(),
                }),
            }
        })
        .collect()
}
