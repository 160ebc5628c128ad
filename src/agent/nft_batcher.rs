//! One task per agent process runs every network's `nft` work. Requests that arrive while an
//! `nft` run is under way wait for it and then go together in the next one (group commit), so a
//! single change costs no extra latency, and a hundred networks starting at once cost a few
//! `nft` runs, not hundreds (see `kernel::nft::run_batch`).

use crate::kernel::nft::{self, NftOutcome, NftRequest};
use crate::kernel::KernelError;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

/// At most this many requests go in one run (a bound on one transaction's size).
const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<NftOutcome, KernelError>>;

/// A handle to the host's `nft` task; cheap to clone.
#[derive(Clone, Debug)]
pub struct NftBatcher {
    tx: mpsc::UnboundedSender<(NftRequest, Reply)>,
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
        let gone = || KernelError::Nft {
            op: "batch",
            message: "the nft task has stopped".into(),
        };
        self.tx.send((request, reply)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn serve(mut rx: mpsc::UnboundedReceiver<(NftRequest, Reply)>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<NftRequest>, Vec<Reply>) = batch.into_iter().unzip();
        let n = requests.len();
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
        for (reply, result) in replies.into_iter().zip(results) {
            // A requester that went away (its network was stopped) needs no answer.
            let _ = reply.send(result);
        }
    }
}
