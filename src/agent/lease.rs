//! Acquiring and renewing this host's subnet lease (DESIGN: "Lease choice on start").

use crate::alloc::{self, AllocError, Taken};
use crate::config::NetworkConfig;
use crate::lease::{lease_key, parse_subnet_key, vxlan_lease_value, Lease};
use crate::mac::Mac;
use crate::network::NetworkKeys;
use crate::store::{Entry, Revision, Store, StoreError};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};
use tracing::info;

/// The lease this host holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnLease {
    pub key: String,
    pub subnet: Ipv4Net,
    pub value: String,
    pub revision: Revision,
    pub expires_at: Option<SystemTime>,
}

impl OwnLease {
    fn from_entry(entry: Entry, subnet: Ipv4Net) -> OwnLease {
        OwnLease {
            key: entry.key,
            subnet,
            value: entry.value,
            revision: entry.mod_revision,
            expires_at: entry.expires_at,
        }
    }

    /// When to renew: `margin` before expiry (flannel's `--subnet-lease-renew-margin`, an hour by
    /// default); short TTLs renew at half-life.
    pub fn renew_at(&self, ttl: Duration, margin: Duration) -> Option<SystemTime> {
        let margin = (ttl / 2).min(margin);
        self.expires_at.map(|t| t - margin)
    }
}

/// What the lease says about us.
#[derive(Debug, Clone, Copy)]
pub struct LeaseRequest<'a> {
    pub keys: &'a NetworkKeys,
    pub config: &'a NetworkConfig,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: Mac,
    pub ttl: Duration,
    /// Subnet to ask for first when no lease names our IP: the one we just lost, or the one in
    /// the previous `subnet.env`.
    pub preferred: Option<Ipv4Net>,
    /// Subnets not to lease (nor keep) anything overlapping: this host's subnets in its other
    /// networks, when this is a named network.
    pub avoid: &'a [Ipv4Net],
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Full(#[from] AllocError),
    #[error("gave up leasing a subnet after {0} attempts lost to other hosts")]
    Contention(usize),
}

const ATTEMPTS: usize = 20;

pub async fn acquire(store: &dyn Store, req: &LeaseRequest<'_>) -> Result<OwnLease, AcquireError> {
    let value = vxlan_lease_value(req.public_ip, req.config.backend.vni, req.vtep_mac);
    let avoided = Taken::new(req.avoid.iter().copied());
    let fits =
        |s: Ipv4Net| req.config.network.contains(&s) && s.prefix_len() == req.config.subnet_len && !avoided.overlaps(s);
    for _ in 0..ATTEMPTS {
        let listing = store.list(&req.keys.subnets()).await?;

        // 1. A lease that already names our public IP: a restart, or a lease we lost track of.
        let mine = listing.entries.iter().find_map(|e| {
            let l = Lease::from_entry(e).ok()?;
            (l.public_ip == req.public_ip && fits(l.subnet)).then_some((e, l.subnet))
        });
        // One that names our IP but overlaps a subnet to avoid is given back.
        let clashing = listing
            .entries
            .iter()
            .find(|e| Lease::from_entry(e).is_ok_and(|l| l.public_ip == req.public_ip && avoided.overlaps(l.subnet)));
        if let (None, Some(e)) = (mine, clashing) {
            info!(key = %e.key, "giving back our lease: it overlaps this host's subnet in another network");
            store.delete(&e.key).await?;
            continue;
        }
        if let Some((e, subnet)) = mine {
            if let Some(entry) = store.refresh(&e.key, &value, req.ttl, e.mod_revision).await? {
                info!(subnet = %subnet, key = %entry.key, "reusing the lease that names our public IP");
                return Ok(OwnLease::from_entry(entry, subnet));
            }
            continue; // changed under us: look again
        }

        let taken = Taken::new(
            listing
                .entries
                .iter()
                .filter_map(|e| parse_subnet_key(&e.key))
                .chain(req.avoid.iter().copied()),
        );
        // 2. The subnet we had before, if still free.
        if let Some(subnet) = req.preferred.filter(|s| fits(*s) && !taken.overlaps(*s)) {
            let key = lease_key(&req.keys.prefix, subnet);
            if let Some(entry) = store.create(&key, &value, req.ttl).await? {
                info!(subnet = %subnet, key = %key, "leased our previous subnet again");
                return Ok(OwnLease::from_entry(entry, subnet));
            }
            continue;
        }

        // 3. A random free subnet, created only if absent.
        let subnet = alloc::pick_free(req.config, &taken, &mut rand::thread_rng())?;
        let key = lease_key(&req.keys.prefix, subnet);
        if let Some(entry) = store.create(&key, &value, req.ttl).await? {
            info!(subnet = %subnet, key = %key, "leased a new subnet");
            return Ok(OwnLease::from_entry(entry, subnet));
        }
    }
    Err(AcquireError::Contention(ATTEMPTS))
}

/// Extends the lease (and rewrites its value, e.g. a new VTEP MAC). `Ok(None)`: the lease was
/// deleted or taken by someone else meanwhile.
pub async fn renew(
    store: &dyn Store,
    own: &OwnLease,
    value: &str,
    ttl: Duration,
) -> Result<Option<OwnLease>, StoreError> {
    Ok(store
        .refresh(&own.key, value, ttl, own.revision)
        .await?
        .map(|e| OwnLease::from_entry(e, own.subnet)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    const CONFIG: &str = r#"{"Network":"10.50.0.0/16","SubnetMin":"10.50.1.0","SubnetMax":"10.50.4.0"}"#;

    fn req<'a>(keys: &'a NetworkKeys, cfg: &'a NetworkConfig, avoid: &'a [Ipv4Net]) -> LeaseRequest<'a> {
        LeaseRequest {
            keys,
            config: cfg,
            public_ip: "192.0.2.10".parse().unwrap(),
            vtep_mac: "02:00:00:00:00:01".parse().unwrap(),
            ttl: Duration::from_secs(60),
            preferred: Some("10.50.1.0/24".parse().unwrap()),
            avoid,
        }
    }

    #[test]
    fn renewal_is_the_margin_before_expiry_or_half_life() {
        let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let own = OwnLease {
            key: "k".into(),
            subnet: "10.50.1.0/24".parse().unwrap(),
            value: String::new(),
            revision: 1,
            expires_at: Some(expires),
        };
        let (hour, day) = (Duration::from_secs(3600), Duration::from_secs(86_400));
        // flannel's default: an hour before a day-long lease ends; a margin of 30 minutes.
        assert_eq!(own.renew_at(day, hour), Some(expires - hour));
        assert_eq!(own.renew_at(day, hour / 2), Some(expires - hour / 2));
        // A short lease renews at half-life, whatever the margin.
        assert_eq!(
            own.renew_at(Duration::from_secs(60), hour),
            Some(expires - Duration::from_secs(30))
        );
        // A lease that never expires is never renewed.
        assert_eq!(
            OwnLease {
                expires_at: None,
                ..own
            }
            .renew_at(day, hour),
            None
        );
    }

    #[tokio::test]
    async fn a_named_network_leases_around_the_hosts_other_subnets() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("s.db").display().to_string()).unwrap();
        let keys = NetworkKeys::named("/coreos.com/network", "a");
        let cfg = NetworkConfig::parse(CONFIG).unwrap();
        let avoid: Vec<Ipv4Net> = ["10.50.1.0/24", "10.50.2.0/24", "10.50.3.0/24"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        // The preferred subnet is avoided too: the only one left is taken.
        let own = acquire(&s, &req(&keys, &cfg, &avoid)).await.unwrap();
        assert_eq!(own.subnet, "10.50.4.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(own.key, "/coreos.com/network/networks/a/subnets/10.50.4.0-24");
        // A lease naming our IP that now overlaps an avoided subnet is given back and replaced.
        let avoid_4: Vec<Ipv4Net> = vec!["10.50.4.0/24".parse().unwrap()];
        let own = acquire(&s, &req(&keys, &cfg, &avoid_4)).await.unwrap();
        assert_eq!(own.subnet, "10.50.1.0/24".parse::<Ipv4Net>().unwrap());
        let keys_left: Vec<String> = s
            .list(&keys.subnets())
            .await
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys_left, ["/coreos.com/network/networks/a/subnets/10.50.1.0-24"]);
        // Nothing left: a clear error, not a clash.
        let all: Vec<Ipv4Net> = vec!["10.50.0.0/16".parse().unwrap()];
        assert!(matches!(
            acquire(&s, &req(&keys, &cfg, &all)).await,
            Err(AcquireError::Full(_))
        ));
    }
}
