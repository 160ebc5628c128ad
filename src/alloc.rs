//! Subnet allocation: which subnet a new host may lease. Pure; the lease keeper does the I/O.

use crate::config::NetworkConfig;
use ipnet::Ipv4Net;
use rand::Rng;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error(
        "network {network} is full: all {count} subnets of length /{subnet_len} between {min} and {max} are leased"
    )]
    Full {
        network: Ipv4Net,
        subnet_len: u8,
        count: u64,
        min: Ipv4Addr,
        max: Ipv4Addr,
    },
}

/// The `i`-th leasable subnet, counting from `SubnetMin`.
pub fn nth_subnet(cfg: &NetworkConfig, i: u64) -> Option<Ipv4Net> {
    if i >= cfg.subnet_count() {
        return None;
    }
    let size = 1u64 << (32 - cfg.subnet_len);
    let addr = u64::from(u32::from(cfg.subnet_min)) + i * size;
    Ipv4Net::new(Ipv4Addr::from(addr as u32), cfg.subnet_len).ok()
}

/// Whether `subnet` is one the config lets hosts lease (right length, inside Min..=Max).
pub fn is_leasable(cfg: &NetworkConfig, subnet: Ipv4Net) -> bool {
    subnet.prefix_len() == cfg.subnet_len
        && subnet.network() == subnet.addr()
        && subnet.addr() >= cfg.subnet_min
        && subnet.addr() <= cfg.subnet_max
}

/// Address ranges already taken, for overlap checks that work whatever the taken lengths are.
#[derive(Debug, Default, Clone)]
pub struct Taken(BTreeMap<u32, u32>);

impl Taken {
    pub fn new<I: IntoIterator<Item = Ipv4Net>>(nets: I) -> Taken {
        let mut t = Taken::default();
        for n in nets {
            t.insert(n);
        }
        t
    }

    pub fn insert(&mut self, n: Ipv4Net) {
        let (s, e) = (u32::from(n.network()), u32::from(n.broadcast()));
        let end = self.0.entry(s).or_insert(e);
        *end = (*end).max(e);
    }

    pub fn overlaps(&self, n: Ipv4Net) -> bool {
        let (s, e) = (u32::from(n.network()), u32::from(n.broadcast()));
        // Any range starting inside [s, e], or the nearest one starting before s reaching into it.
        self.0.range(s..=e).next().is_some() || self.0.range(..s).next_back().is_some_and(|(_, &end)| end >= s)
    }
}

/// A random free subnet, as flannel picks one (random, so racing hosts rarely collide).
pub fn pick_free<R: Rng>(cfg: &NetworkConfig, taken: &Taken, rng: &mut R) -> Result<Ipv4Net, AllocError> {
    let count = cfg.subnet_count();
    // A few random probes find a free subnet fast in a sparse network; a scan from a random
    // start finds the last free ones in a dense one.
    for _ in 0..32 {
        if let Some(n) = nth_subnet(cfg, rng.gen_range(0..count)) {
            if !taken.overlaps(n) {
                return Ok(n);
            }
        }
    }
    let start = rng.gen_range(0..count);
    for k in 0..count {
        if let Some(n) = nth_subnet(cfg, (start + k) % count) {
            if !taken.overlaps(n) {
                return Ok(n);
            }
        }
    }
    Err(AllocError::Full {
        network: cfg.network,
        subnet_len: cfg.subnet_len,
        count,
        min: cfg.subnet_min,
        max: cfg.subnet_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap()
    }

    #[test]
    fn fills_the_network_then_reports_full() {
        let c = cfg(r#"{"Network":"10.0.0.0/22","SubnetLen":26}"#);
        let mut rng = StdRng::seed_from_u64(7);
        let mut taken = Taken::default();
        let n = c.subnet_count();
        assert_eq!(n, 15);
        for _ in 0..n {
            let s = pick_free(&c, &taken, &mut rng).unwrap();
            assert!(is_leasable(&c, s));
            assert!(!taken.overlaps(s));
            taken.insert(s);
        }
        let err = pick_free(&c, &taken, &mut rng).unwrap_err();
        assert_eq!(
            err.to_string(),
            "network 10.0.0.0/22 is full: all 15 subnets of length /26 between 10.0.0.64 and 10.0.3.192 are leased"
        );
    }

    #[test]
    fn overlap_with_foreign_lengths() {
        let t = Taken::new(["10.0.4.0/22".parse().unwrap()]);
        assert!(t.overlaps("10.0.5.0/24".parse().unwrap()));
        assert!(t.overlaps("10.0.0.0/16".parse().unwrap()));
        assert!(!t.overlaps("10.0.8.0/24".parse().unwrap()));
        assert!(!t.overlaps("10.0.3.0/24".parse().unwrap()));
    }

    proptest! {
        #[test]
        fn picks_are_leasable_and_free(seed in any::<u64>(), plen in 16u8..=24, extra in 0u8..=6,
                                       taken_idx in proptest::collection::vec(0u64..4096, 0..40)) {
            let slen = (plen + extra).min(30);
            let c = cfg(&format!(r#"{{"Network":"10.0.0.0/{plen}","SubnetLen":{slen}}}"#));
            let taken = Taken::new(taken_idx.iter().filter_map(|&i| nth_subnet(&c, i % c.subnet_count())));
            let mut rng = StdRng::seed_from_u64(seed);
            match pick_free(&c, &taken, &mut rng) {
                Ok(s) => {
                    prop_assert!(is_leasable(&c, s));
                    prop_assert!(c.network.contains(&s));
                    prop_assert!(!taken.overlaps(s));
                }
                Err(AllocError::Full { .. }) => {
                    prop_assert!((0..c.subnet_count()).all(|i| taken.overlaps(nth_subnet(&c, i).unwrap())));
                }
            }
        }
    }
}
