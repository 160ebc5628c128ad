//! etcd leases behind per-key TTLs: granting, keeping alive, revoking what nothing uses, and
//! knowing when each expires.
//!
//! The rule that keeps `etcdctl lease list` at one lease per live agent: a key keeps its lease for
//! life. Renewal is a keep-alive of the lease already attached to the key — found from the key
//! itself, so it also works for a lease granted by a previous agent process, or by flannel — and
//! a new lease is granted only when that one is dead or has another TTL, after which the old one
//! is revoked if no key uses it any more.

use super::{errors, EtcdStore, OP_TIMEOUT};
use crate::store::StoreError;
use etcd_client::LeaseTimeToLiveOptions;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tracing::{debug, warn};

/// etcd raises a TTL below its minimum lease TTL (2 s with the default election timeout) to
/// that minimum, so a lease granted for a short TTL may be a little longer than asked.
const SHORT_TTL_SLACK_SECS: i64 = 5;

/// Lease id → when it expires, for the leases this client granted or kept alive. Shared with the
/// watch tasks, which stamp `expires_at` on events for those keys.
#[derive(Clone, Default)]
pub(super) struct Expiries(Arc<Mutex<HashMap<i64, SystemTime>>>);

impl Expiries {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<i64, SystemTime>> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn get(&self, lease: i64) -> Option<SystemTime> {
        self.map().get(&lease).copied()
    }

    /// Every lease we know the expiry of.
    pub(super) fn known(&self) -> HashMap<i64, SystemTime> {
        self.map().clone()
    }

    fn set(&self, lease: i64, at: SystemTime) {
        self.map().insert(lease, at);
    }

    fn forget(&self, lease: i64) {
        self.map().remove(&lease);
    }
}

/// A TTL in etcd's whole seconds, rounded up (never 0, which etcd would take as "no TTL").
pub(super) fn ttl_secs(ttl: Duration) -> i64 {
    let s = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(s.max(1)).unwrap_or(i64::MAX)
}

/// Whether a lease granted for `granted` seconds serves a request for `want`.
fn fits(granted: i64, want: i64) -> bool {
    granted >= want && granted <= want.max(SHORT_TTL_SLACK_SECS)
}

fn after_secs(secs: i64) -> SystemTime {
    SystemTime::now() + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

impl EtcdStore {
    /// A new lease for `ttl`: its id and when it expires.
    pub(super) async fn grant(&self, ttl: Duration) -> Result<(i64, SystemTime), StoreError> {
        let want = ttl_secs(ttl);
        let resp = self
            .call(&format!("granting a {want}s lease"), |mut c| async move {
                c.lease_grant(want, None).await
            })
            .await?;
        let at = after_secs(resp.ttl());
        self.expiries.set(resp.id(), at);
        debug!(
            lease = format_args!("{:x}", resp.id()),
            ttl = resp.ttl(),
            "granted etcd lease"
        );
        Ok((resp.id(), at))
    }

    /// Keeps `lease` alive if it is alive and of the TTL wanted: when it now expires. `None`:
    /// there is no such lease (0, expired, revoked) or it has another TTL — the caller grants one.
    pub(super) async fn keep_alive(&self, lease: i64, ttl: Duration) -> Result<Option<SystemTime>, StoreError> {
        if lease == 0 {
            return Ok(None);
        }
        let want = ttl_secs(ttl);
        let info = self
            .call(&format!("reading lease {lease:x}"), |mut c| async move {
                c.lease_time_to_live(lease, None).await
            })
            .await?;
        if info.ttl() <= 0 {
            self.expiries.forget(lease);
            return Ok(None);
        }
        if !fits(info.granted_ttl(), want) {
            debug!(
                lease = format_args!("{lease:x}"),
                granted = info.granted_ttl(),
                want,
                "lease has another TTL; replacing it"
            );
            return Ok(None);
        }
        let what = format!("keeping lease {lease:x} alive");
        let client = self.client().await?;
        let kept = tokio::time::timeout(OP_TIMEOUT, async move {
            let mut c = client;
            // One request and its answer; dropping keeper and stream ends the gRPC stream.
            c.lease_keep_alive(lease).await.map(drop)
        })
        .await;
        match kept {
            Ok(Ok(())) => {
                let at = after_secs(info.granted_ttl());
                self.expiries.set(lease, at);
                Ok(Some(at))
            }
            // etcd-client's words for a keep-alive answered with TTL 0: it died meanwhile.
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => {
                self.expiries.forget(lease);
                Ok(None)
            }
            Ok(Err(e)) => Err(self.err(&what, &e)),
            Err(_) => Err(errors::timed_out(&self.name, &what, OP_TIMEOUT)),
        }
    }

    /// Revokes a lease we granted but could not use. A failure only delays its end to its TTL.
    pub(super) async fn revoke_quietly(&self, lease: i64) {
        self.expiries.forget(lease);
        let r = self
            .call(&format!("revoking lease {lease:x}"), |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await;
        if let Err(e) = r {
            warn!(lease = format_args!("{lease:x}"), error = %e, "could not revoke an unused lease; it ends with its TTL");
        }
    }

    /// Revokes `lease` if no key is attached to it any more (after a delete or a move).
    pub(super) async fn revoke_if_unused(&self, lease: i64) {
        let info = self
            .call(&format!("reading lease {lease:x}"), |mut c| async move {
                c.lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
                    .await
            })
            .await;
        match info {
            Ok(i) if i.ttl() > 0 && i.keys().is_empty() => self.revoke_quietly(lease).await,
            Ok(_) => {}
            Err(e) => {
                warn!(lease = format_args!("{lease:x}"), error = %e, "could not check a released lease; it ends with its TTL")
            }
        }
    }

    /// When each of `leases` expires (0 = no lease is skipped): ours from memory, others asked
    /// of etcd concurrently. Leases gone meanwhile, or that cannot be read, are left out.
    pub(super) async fn expiries_of(&self, leases: &[i64]) -> Result<HashMap<i64, SystemTime>, StoreError> {
        let now = SystemTime::now();
        let mut out = HashMap::new();
        let mut ask = Vec::new();
        for &l in leases {
            if l == 0 || out.contains_key(&l) || ask.contains(&l) {
                continue;
            }
            match self.expiries.get(l) {
                Some(at) if at > now => {
                    out.insert(l, at);
                }
                _ => ask.push(l),
            }
        }
        if ask.is_empty() {
            return Ok(out);
        }
        let client = self.client().await?;
        let lookups = ask.into_iter().map(|l| {
            let mut c = client.clone();
            async move {
                let r = tokio::time::timeout(OP_TIMEOUT, c.lease_time_to_live(l, None)).await;
                (l, r)
            }
        });
        for (l, r) in futures::future::join_all(lookups).await {
            match r {
                Ok(Ok(i)) if i.ttl() > 0 => {
                    out.insert(l, after_secs(i.ttl()));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => debug!(lease = format_args!("{l:x}"), error = %e, "lease lookup failed"),
                Err(_) => debug!(lease = format_args!("{l:x}"), "lease lookup timed out"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(ttl_secs(Duration::from_secs(3)), 3);
        assert_eq!(ttl_secs(Duration::from_millis(2500)), 3);
        assert_eq!(ttl_secs(Duration::ZERO), 1);
        assert_eq!(ttl_secs(Duration::from_secs(86400)), 86400);
        assert!(fits(3, 3));
        assert!(fits(2, 1), "etcd's minimum TTL");
        assert!(!fits(86400, 3), "flannel's 24 h lease for a 3 s agent");
        assert!(!fits(3, 86400));
    }
}
