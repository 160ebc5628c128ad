//! Claiming, registering, releasing and checking an L2 network's addresses in the store (see
//! the module above for the schema). Used by the agent for `weft-cni` and by the lab.

use super::protocol::Registration;
use super::{claim_key, free_addresses, ips_prefix, is_host_address, parse_claim_key, Claim};
use crate::endpoint::{endpoint_key, endpoints_prefix, Endpoint};
use crate::mac::Mac;
use crate::network::admin::CLAIM_TTL;
use crate::store::{Store, StoreError};
use ipnet::Ipv4Net;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use tracing::{debug, info};

/// How many addresses one allocation tries when other hosts keep winning the race for them.
pub const MAX_RACE_RETRIES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{ip} is not a host address of the network's {network}")]
    OutsideNetwork { ip: Ipv4Addr, network: Ipv4Net },
    #[error("{ip} is already taken: {by}")]
    IpTaken { ip: Ipv4Addr, by: String },
    #[error("container {container} ({ifname}) already holds {held}, not {asked}: DEL it first")]
    HoldsAnother {
        container: String,
        ifname: String,
        held: Ipv4Addr,
        asked: Ipv4Addr,
    },
    #[error(
        "MAC {mac} is already registered on host {host} with {ip}; a container's MAC must be unique in the network"
    )]
    MacTaken { mac: Mac, host: Ipv4Addr, ip: Ipv4Addr },
    #[error("no free address left in {network} ({claimed} claimed); release some or use a larger network")]
    Full { network: Ipv4Net, claimed: usize },
    #[error("other hosts took each of the {tries} addresses tried; try again")]
    Contended { tries: usize },
    #[error("{0}")]
    Check(String),
}

impl IpamError {
    /// Whether the same request may succeed later.
    pub fn retry(&self) -> bool {
        matches!(self, IpamError::Store(_) | IpamError::Contended { .. })
    }
}

/// One network's addresses as seen from one host.
pub struct Ipam<'a> {
    pub store: &'a dyn Store,
    /// The network's prefix, `<prefix>/networks/NAME`.
    pub net_prefix: &'a str,
    pub network: Ipv4Net,
    /// This host's public IP.
    pub host: Ipv4Addr,
}

/// Every claim of the network: (address, parsed claim if it is one).
async fn claims(store: &dyn Store, net_prefix: &str) -> Result<Vec<(Ipv4Addr, Option<Claim>)>, StoreError> {
    Ok(store
        .list(&ips_prefix(net_prefix))
        .await?
        .entries
        .into_iter()
        .filter_map(|e| Some((parse_claim_key(net_prefix, &e.key)?, Claim::parse(&e.value))))
        .collect())
}

fn describe(claim: &Option<Claim>) -> String {
    match claim {
        Some(c) => format!("claimed by container {} ({}) on {}", c.container, c.ifname, c.host),
        None => "claimed by an entry that is not a claim".into(),
    }
}

/// What [`forget_host`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// The endpoints that were registered on the host: MAC and address.
    pub endpoints: Vec<(Mac, Ipv4Addr)>,
    /// The addresses that were claimed for the host's containers, free now.
    pub released: Vec<Ipv4Addr>,
}

/// Removes everything of `host` (its public IP) from an L2 network: every endpoint registered
/// on it, then every address claimed for its containers. For a host that is gone for good:
/// nothing of an L2 network expires by itself, so otherwise its addresses stay taken and every
/// other host keeps its entries (and floods to it). The endpoints go first, so an address is
/// never free while an endpoint still has it; a claim whose endpoint has moved to another host
/// (`weft endpoint move`) with its address stays.
pub async fn forget_host(store: &dyn Store, net_prefix: &str, host: Ipv4Addr) -> Result<Forgotten, StoreError> {
    let mut out = Forgotten::default();
    // Leniently parsed: an entry the agents reject as invalid is still the host's to go.
    let mut elsewhere = BTreeSet::new();
    for e in store.list(&endpoints_prefix(net_prefix)).await?.entries {
        let Ok(ep) = serde_json::from_str::<Endpoint>(&e.value) else {
            continue;
        };
        if ep.host != host {
            elsewhere.insert((ep.mac, ep.ip));
        } else if store.delete(&e.key).await? {
            info!(mac = %ep.mac, ip = %ep.ip, %host, "endpoint of a forgotten host removed");
            out.endpoints.push((ep.mac, ep.ip));
        }
    }
    for (ip, claim) in claims(store, net_prefix).await? {
        let Some(c) = claim.filter(|c| c.host == host) else {
            continue;
        };
        if elsewhere.contains(&(c.mac, ip)) {
            info!(%ip, mac = %c.mac, %host, "address of a forgotten host kept: its endpoint moved");
        } else if store.delete(&claim_key(net_prefix, ip)).await? {
            info!(%ip, %host, "address of a forgotten host released");
            out.released.push(ip);
        }
    }
    Ok(out)
}

impl Ipam<'_> {
    /// Claims an address for `container`/`ifname` (`want`, or the lowest free one) and
    /// registers endpoint `mac` with it on this host. Repeated, it returns what the first call
    /// got (a different `want` is refused).
    pub async fn add(
        &self,
        container: &str,
        ifname: &str,
        mac: Mac,
        want: Option<Ipv4Addr>,
    ) -> Result<Registration, IpamError> {
        if let Some(ip) = want.filter(|ip| !is_host_address(self.network, *ip)) {
            return Err(IpamError::OutsideNetwork {
                ip,
                network: self.network,
            });
        }
        let all = claims(self.store, self.net_prefix).await?;
        let own = all
            .iter()
            .find(|(_, c)| c.as_ref().is_some_and(|c| c.held_by(self.host, container, ifname)));
        let (ip, mac, fresh) = match own {
            Some((held, Some(c))) => {
                if let Some(asked) = want.filter(|w| w != held) {
                    return Err(IpamError::HoldsAnother {
                        container: container.into(),
                        ifname: ifname.into(),
                        held: *held,
                        asked,
                    });
                }
                (*held, c.mac, false)
            }
            _ => {
                let claim = Claim {
                    container: container.into(),
                    ifname: ifname.into(),
                    host: self.host,
                    mac,
                };
                (self.claim(&all, &claim, want).await?, mac, true)
            }
        };
        match self.register(mac, ip).await {
            Ok(reg) => Ok(reg),
            Err(e) => {
                if fresh {
                    // Ours since a moment ago: not left claimed for nothing.
                    self.store.delete(&claim_key(self.net_prefix, ip)).await?;
                }
                Err(e)
            }
        }
    }

    /// Creates the claim of `want`, or of the lowest address nobody holds, retrying on races.
    async fn claim(
        &self,
        all: &[(Ipv4Addr, Option<Claim>)],
        claim: &Claim,
        want: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, IpamError> {
        let value = claim.to_json();
        if let Some(ip) = want {
            if self
                .store
                .create(&claim_key(self.net_prefix, ip), &value, CLAIM_TTL)
                .await?
                .is_some()
            {
                info!(%ip, container = %claim.container, "address claimed");
                return Ok(ip);
            }
            let by = self.store.get(&claim_key(self.net_prefix, ip)).await?;
            return Err(IpamError::IpTaken {
                ip,
                by: describe(&by.and_then(|e| Claim::parse(&e.value))),
            });
        }
        // Addresses registered by hand (`weft endpoint add`) hold no claim: avoided as well.
        let mut taken: BTreeSet<Ipv4Addr> = all.iter().map(|(ip, _)| *ip).collect();
        let eps = endpoints_prefix(self.net_prefix);
        for e in self.store.list(&eps).await?.entries {
            if let Ok(ep) = serde_json::from_str::<Endpoint>(&e.value) {
                taken.insert(ep.ip);
            }
        }
        let claimed = taken.len();
        let mut tries = 0;
        for ip in free_addresses(self.network, &taken) {
            if tries == MAX_RACE_RETRIES {
                return Err(IpamError::Contended { tries });
            }
            tries += 1;
            if self
                .store
                .create(&claim_key(self.net_prefix, ip), &value, CLAIM_TTL)
                .await?
                .is_some()
            {
                info!(%ip, container = %claim.container, tries, "address claimed");
                return Ok(ip);
            }
            debug!(%ip, "address taken by another host meanwhile; trying the next");
        }
        Err(IpamError::Full {
            network: self.network,
            claimed,
        })
    }

    /// Registers endpoint `mac`/`ip` on this host (keeping its Seq if it is already here).
    async fn register(&self, mac: Mac, ip: Ipv4Addr) -> Result<Registration, IpamError> {
        let key = endpoint_key(self.net_prefix, mac);
        let mut seq = 0;
        if let Some(e) = self.store.get(&key).await? {
            if let Ok(have) = serde_json::from_str::<Endpoint>(&e.value) {
                if have.host != self.host || have.ip != ip {
                    return Err(IpamError::MacTaken {
                        mac,
                        host: have.host,
                        ip: have.ip,
                    });
                }
                seq = have.seq;
            }
        }
        let ep = Endpoint {
            mac,
            ip,
            host: self.host,
            seq,
        };
        ep.validate(self.network).map_err(|e| IpamError::Check(e.to_string()))?;
        self.store.put(&key, &ep.to_json()).await?;
        info!(%mac, %ip, host = %self.host, "endpoint registered");
        Ok(Registration {
            ip,
            prefix_len: self.network.prefix_len(),
            mac,
            host: self.host,
            seq,
        })
    }

    /// Unregisters the endpoint of `container`/`ifname` on this host and releases its address;
    /// returns what was released (nothing is fine: DEL is idempotent). The endpoint goes first,
    /// and only if it still is the claim's (on this host, with this address).
    pub async fn release(&self, container: &str, ifname: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        let mut released = Vec::new();
        for (ip, claim) in claims(self.store, self.net_prefix).await? {
            let Some(c) = claim.filter(|c| c.held_by(self.host, container, ifname)) else {
                continue;
            };
            let key = endpoint_key(self.net_prefix, c.mac);
            if let Some(e) = self.store.get(&key).await? {
                let ours =
                    serde_json::from_str::<Endpoint>(&e.value).is_ok_and(|ep| ep.host == self.host && ep.ip == ip);
                if ours {
                    self.store.delete(&key).await?;
                }
            }
            self.store.delete(&claim_key(self.net_prefix, ip)).await?;
            info!(%ip, mac = %c.mac, container, "endpoint unregistered, address released");
            released.push(ip);
        }
        Ok(released)
    }

    /// Checks that `container`/`ifname` holds `ip` with `mac` and that the endpoint is registered
    /// on this host as ADD left it.
    pub async fn check(
        &self,
        container: &str,
        ifname: &str,
        mac: Mac,
        ip: Ipv4Addr,
    ) -> Result<Registration, IpamError> {
        let fail = |why: String| IpamError::Check(why);
        let claim = self
            .store
            .get(&claim_key(self.net_prefix, ip))
            .await?
            .and_then(|e| Claim::parse(&e.value));
        match claim {
            Some(c) if c.held_by(self.host, container, ifname) && c.mac == mac => {}
            other => {
                return Err(fail(format!(
                    "{ip} is not claimed for container {container} ({ifname}) on {}: {}",
                    self.host,
                    if other.is_some() {
                        describe(&other)
                    } else {
                        "no claim".into()
                    }
                )))
            }
        }
        let ep = self
            .store
            .get(&endpoint_key(self.net_prefix, mac))
            .await?
            .and_then(|e| serde_json::from_str::<Endpoint>(&e.value).ok())
            .ok_or_else(|| fail(format!("endpoint {mac} is not registered")))?;
        if ep.host != self.host || ep.ip != ip {
            return Err(fail(format!(
                "endpoint {mac} is registered with {} on {}, not {ip} on {}",
                ep.ip, ep.host, self.host
            )));
        }
        Ok(Registration {
            ip,
            prefix_len: self.network.prefix_len(),
            mac,
            host: self.host,
            seq: ep.seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use std::sync::Arc;

    const P: &str = "/coreos.com/network/networks/l2";

    fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("s.db").to_str().unwrap()).unwrap();
        (dir, Arc::new(s))
    }

    fn ipam(s: &dyn Store, host: u8) -> Ipam<'_> {
        Ipam {
            store: s,
            net_prefix: P,
            network: "10.70.0.0/24".parse().unwrap(),
            host: Ipv4Addr::new(192, 0, 2, host),
        }
    }

    fn mac(n: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, n])
    }

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 70, 0, d)
    }

    #[tokio::test]
    async fn add_is_lowest_free_idempotent_and_released_by_del() {
        let (_d, s) = store();
        let a = ipam(s.as_ref(), 10);
        // A hand-registered endpoint holds .1 without a claim.
        let manual = Endpoint {
            mac: mac(9),
            ip: ip(1),
            host: Ipv4Addr::new(192, 0, 2, 99),
            seq: 0,
        };
        s.put(&endpoint_key(P, mac(9)), &manual.to_json()).await.unwrap();
        let r = a.add("c1", "eth0", mac(1), None).await.unwrap();
        assert_eq!((r.ip, r.prefix_len, r.seq), (ip(2), 24, 0));
        assert_eq!(a.add("c1", "eth0", mac(1), None).await.unwrap(), r, "repeated ADD");
        assert!(matches!(
            a.add("c1", "eth0", mac(1), Some(ip(7))).await,
            Err(IpamError::HoldsAnother { .. })
        ));
        assert_eq!(a.add("c2", "eth0", mac(2), None).await.unwrap().ip, ip(3));
        a.check("c1", "eth0", mac(1), ip(2)).await.unwrap();
        assert!(a.check("c1", "eth0", mac(1), ip(3)).await.is_err());
        assert_eq!(a.release("c1", "eth0").await.unwrap(), vec![ip(2)]);
        assert_eq!(
            a.release("c1", "eth0").await.unwrap(),
            Vec::<Ipv4Addr>::new(),
            "DEL again"
        );
        assert!(s.get(&endpoint_key(P, mac(1))).await.unwrap().is_none());
        assert!(a.check("c1", "eth0", mac(1), ip(2)).await.is_err());
        // .2 is free again, and the lowest.
        assert_eq!(a.add("c3", "eth0", mac(3), None).await.unwrap().ip, ip(2));
    }

    #[tokio::test]
    async fn forgetting_a_host_removes_its_endpoints_and_frees_its_addresses() {
        let (_d, s) = store();
        let (gone, stays) = (ipam(s.as_ref(), 10), ipam(s.as_ref(), 20));
        gone.add("c1", "eth0", mac(1), None).await.unwrap();
        gone.add("c2", "eth0", mac(2), None).await.unwrap();
        stays.add("c3", "eth0", mac(3), None).await.unwrap();
        // A claim of the host whose ADD never registered its endpoint, and an endpoint of the
        // host registered by hand (no claim).
        let half = Claim {
            container: "c4".into(),
            ifname: "eth0".into(),
            host: gone.host,
            mac: mac(4),
        };
        s.create(&claim_key(P, ip(9)), &half.to_json(), CLAIM_TTL)
            .await
            .unwrap();
        let manual = Endpoint {
            mac: mac(5),
            ip: ip(20),
            host: gone.host,
            seq: 3,
        };
        s.put(&endpoint_key(P, mac(5)), &manual.to_json()).await.unwrap();
        // c7's endpoint moved to the other host (`weft endpoint move`): its address is in use.
        let moved = gone.add("c7", "eth0", mac(7), None).await.unwrap();
        let there = Endpoint {
            mac: mac(7),
            ip: moved.ip,
            host: stays.host,
            seq: 1,
        };
        s.put(&endpoint_key(P, mac(7)), &there.to_json()).await.unwrap();

        let f = forget_host(s.as_ref(), P, gone.host).await.unwrap();
        assert_eq!(f.endpoints, vec![(mac(1), ip(1)), (mac(2), ip(2)), (mac(5), ip(20))]);
        assert_eq!(f.released, vec![ip(1), ip(2), ip(9)]);
        assert!(
            s.get(&claim_key(P, moved.ip)).await.unwrap().is_some(),
            "a moved endpoint's claim released"
        );
        assert!(s.get(&endpoint_key(P, mac(7))).await.unwrap().is_some());
        // The other host's container is untouched, and the freed addresses are taken again
        // lowest first.
        stays.check("c3", "eth0", mac(3), ip(3)).await.unwrap();
        for gone_mac in [mac(1), mac(2), mac(5)] {
            assert!(s.get(&endpoint_key(P, gone_mac)).await.unwrap().is_none());
        }
        assert!(s.get(&endpoint_key(P, mac(3))).await.unwrap().is_some());
        assert_eq!(stays.add("c6", "eth0", mac(6), None).await.unwrap().ip, ip(1));
        assert_eq!(
            forget_host(s.as_ref(), P, gone.host).await.unwrap(),
            Forgotten::default(),
            "again: nothing"
        );
    }

    #[tokio::test]
    async fn conflicts_are_refused_and_leave_nothing_behind() {
        let (_d, s) = store();
        let (a, b) = (ipam(s.as_ref(), 10), ipam(s.as_ref(), 20));
        a.add("c1", "eth0", mac(1), Some(ip(5))).await.unwrap();
        let e = b.add("c9", "eth0", mac(9), Some(ip(5))).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "10.70.0.5 is already taken: claimed by container c1 (eth0) on 192.0.2.10"
        );
        assert!(!e.retry());
        let e = b.add("c9", "eth0", mac(1), None).await.unwrap_err();
        assert!(matches!(e, IpamError::MacTaken { .. }), "{e}");
        assert_eq!(
            claims(s.as_ref(), P).await.unwrap().len(),
            1,
            "the refused ADD's claim is gone"
        );
        assert!(matches!(
            a.add("c2", "eth0", mac(2), Some(ip(255))).await,
            Err(IpamError::OutsideNetwork { .. })
        ));
        // b's DEL of a container it does not hold releases nothing of a's.
        assert_eq!(b.release("c1", "eth0").await.unwrap(), Vec::<Ipv4Addr>::new());
    }

    #[tokio::test]
    async fn a_full_network_says_so() {
        let (_d, s) = store();
        let a = Ipam {
            network: "10.70.0.0/30".parse().unwrap(),
            ..ipam(s.as_ref(), 10)
        };
        a.add("c1", "eth0", mac(1), None).await.unwrap();
        a.add("c2", "eth0", mac(2), None).await.unwrap();
        let e = a.add("c3", "eth0", mac(3), None).await.unwrap_err();
        assert!(e.to_string().starts_with("no free address left in 10.70.0.0/30"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_adds_from_many_hosts_never_share_an_address() {
        let (_d, s) = store();
        let tasks: Vec<_> = (0..16u8)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let a = ipam(s.as_ref(), 10 + i % 4);
                    a.add(&format!("c{i}"), "eth0", mac(i + 1), None).await.map(|r| r.ip)
                })
            })
            .collect();
        let mut ips = BTreeSet::new();
        for t in tasks {
            assert!(ips.insert(t.await.unwrap().unwrap()), "an address given twice");
        }
        assert_eq!(ips.len(), 16);
    }
}
