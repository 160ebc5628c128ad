//! One task per agent process runs every network's `nft` work. Requests that arrive while an
//! `nft` run is under way wait for it and then go together in the next one (group commit), so a
//! single change costs no extra latency, and a hundred networks starting at once cost a few
//! `nft` runs, not hundreds (see `kernel::nft::run_batch`).
//!
//! Work nobody waits for ([`NftBatcher::run_later`]: taking a departed peer out of a set) rides
//! along with the next batch, or runs on its own after [`LATER`]: it then never competes with the
//! kernel work of a change, and a burst of departures costs one transaction. (A round of set
//! updates alone goes over nfnetlink without an `nft` run at all: `kernel::nft::setelem`.)

use crate::kernel::nft::{self, NftOutcome, NftRequest};
use crate::kernel::KernelError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// At most this many requests go in one run (a bound on one transaction's size).
const MAX_BATCH: usize = 256;
/// How long deferred work may wait for a batch to join.
pub const LATER: Duration = Duration::from_millis(300);

type Reply = oneshot::Sender<Result<NftOutcome, KernelError>>;

enum Job {
    /// The caller waits for the answer.
    Now(NftRequest, Reply),
    /// Nobody waits; a failure sets the flag (the owner then checks its whole table).
    Later(NftRequest, Arc<AtomicBool>),
}

/// A handle to the host's `nft` task; cheap to clone.
#[derive(Clone, Debug)]
pub struct NftBatcher {
    tx: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Now(r, _) => write!(f, "now {}", r.table()),
            Job::Later(r, _) => write!(f, "later {}", r.table()),
        }
    }
}

impl NftBatcher {
    /// Starts the task (on the current runtime). It ends when every handle is dropped.
    pub fn start() -> NftBatcher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(serve(rx));
        NftBatcher { tx }
    }

    pub async fn run(&self, request: NftRequest) -> Result<NftOutcome, KernelError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Job::Now(request, reply)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Queues `request` without waiting for it (within [`LATER`]); if it fails, `failed` is set.
    /// Requests for one table still run in the order they were made.
    pub fn run_later(&self, request: NftRequest, failed: Arc<AtomicBool>) -> Result<(), KernelError> {
        self.tx.send(Job::Later(request, failed)).map_err(|_| gone())
    }
}

fn gone() -> KernelError {
    KernelError::Nft {
        op: "batch",
        message: "the nft task has stopped".into(),
    }
}

async fn serve(mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut deferred: Vec<Job> = Vec::new();
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        let next = match due {
            None => rx.recv().await,
            Some(at) => match tokio::time::timeout_at(at, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    due = None;
                    run(std::mem::take(&mut deferred)).await;
                    continue;
                }
            },
        };
        let Some(job) = next else {
            if !deferred.is_empty() {
                run(deferred).await;
            }
            return;
        };
        if let Job::Later(..) = job {
            deferred.push(job);
            due.get_or_insert_with(|| tokio::time::Instant::now() + LATER);
            continue;
        }
        // Deferred jobs first: they were asked for before this one.
        let mut batch = std::mem::take(&mut deferred);
        due = None;
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run(batch).await;
    }
}

async fn run(batch: Vec<Job>) {
    let n = batch.len();
    let requests: Vec<NftRequest> = batch
        .iter()
        .map(|j| match j {
            Job::Now(r, _) | Job::Later(r, _) => r.clone(),
        })
        .collect();
    // nft runs in this process's network namespace, which blocking threads share.
    let results = match tokio::task::spawn_blocking(move || nft::run_batch(&requests)).await {
        Ok(r) => r,
        Err(e) => {
            let err = KernelError::Nft {
                op: "batch",
                message: format!("nft task failed: {e}"),
            };
            vec![Err(err); n]
        }
    };
    debug!(requests = n, "nft: batch done");
    for (job, result) in batch.into_iter().zip(results) {
        match job {
            // A requester that went away (its network was stopped) needs no answer.
            Job::Now(_, reply) => {
                let _ = reply.send(result);
            }
            Job::Later(request, failed) => {
                if let Err(e) = result {
                    warn!(table = %request.table(), error = %e, "nft: deferred update failed; the table is checked next");
                    failed.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::nft::testns::{can_run, Netns};
    use crate::kernel::nft::FirewallSpec;
    use std::net::Ipv4Addr;

    const A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    const B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);

    fn update(table: &str, added: &[Ipv4Addr], removed: &[Ipv4Addr]) -> NftRequest {
        NftRequest::UpdatePeers {
            table: table.into(),
            added: added.to_vec(),
            removed: removed.to_vec(),
        }
    }

    #[test]
    fn deferred_work_waits_for_a_batch_keeps_order_and_reports_failure() {
        if !can_run() {
            return;
        }
        let ns = Netns::new();
        let set = {
            let name = ns.name.clone();
            move || {
                let out = std::process::Command::new("ip")
                    .args(["netns", "exec", &name, "nft", "list", "set", "ip", "weft", "peers"])
                    .output()
                    .expect("nft list set");
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        ns.enter(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let nft = NftBatcher::start();
                let spec = FirewallSpec {
                    peers: [A, B].into(),
                    ..crate::kernel::nft::tests::spec()
                };
                nft.run(NftRequest::Ensure(spec)).await.expect("create");

                // A deferred removal is not run at once, but within LATER.
                let failed = Arc::new(AtomicBool::new(false));
                nft.run_later(update("weft", &[], &[A]), failed.clone()).unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert!(set().contains("198.51.100.2"), "{}", set());
                tokio::time::sleep(LATER + Duration::from_millis(300)).await;
                assert!(!set().contains("198.51.100.2"), "{}", set());
                assert!(!failed.load(Ordering::Relaxed));

                // A removal queued before an addition of the same peer runs before it.
                nft.run_later(update("weft", &[], &[B]), failed.clone()).unwrap();
                nft.run(update("weft", &[B], &[])).await.expect("add");
                assert!(set().contains("198.51.100.3"), "{}", set());
                assert!(!failed.load(Ordering::Relaxed));

                // A deferred update that fails raises the owner's flag.
                nft.run_later(update("weft-missing", &[], &[A]), failed.clone())
                    .unwrap();
                tokio::time::sleep(LATER + Duration::from_millis(300)).await;
                assert!(failed.load(Ordering::Relaxed));
            });
        });
    }
}
