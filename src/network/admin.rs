//! Named networks in the store: create (with its VNI claimed first), delete, list, and the rule
//! agents apply when two stored networks want one VNI anyway.
//!
//! `create` claims `<prefix>/vnis/<VNI>` with the store's create-if-absent (etcd: a transaction on
//! `create_revision == 0`) *before* writing `<prefix>/networks/NAME/config`: of two concurrent
//! creates with one VNI, exactly one gets the claim and the other is refused. A VNI equal to the
//! default network's, or to one a hand-written named config already uses, is refused too.
//! `delete` removes the config first (agents stop serving the network), then its leases, then
//! the claim.

use super::{
    networks_prefix, parse_config_key, validate_name, vni_claim_key, vnis_prefix, Mode, NetworkError, NetworkKeys,
};
use crate::config::{ConfigError, NetworkConfig};
use crate::store::{Revision, Store, StoreError};
use std::collections::BTreeMap;
use std::time::Duration;

/// A VNI claim never expires in practice. (The store's create-if-absent comes with a TTL; 100
/// years is well within etcd's maximum lease TTL.)
pub const CLAIM_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Name(#[from] NetworkError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("network {0:?} already exists (delete it first with `weft net delete {0}`)")]
    Exists(String),
    #[error("no network {name:?} in {store}")]
    NotFound { name: String, store: String },
    #[error("VNI {vni} is already used by {by}; every network needs a VNI of its own")]
    VniTaken { vni: u32, by: String },
    #[error(
        "VNI {vni} is claimed by network {holder:?}, which has no config (an interrupted create?); \
         `weft net delete {holder}` removes the claim"
    )]
    StaleClaim { vni: u32, holder: String },
    #[error("network {0:?} was created by someone else at the same time; nothing was written")]
    Raced(String),
}

/// A named network as stored.
#[derive(Debug, Clone)]
pub struct StoredNetwork {
    pub name: String,
    pub config_text: String,
    pub config: Result<NetworkConfig, ConfigError>,
    pub mode: Result<Mode, NetworkError>,
    /// When the config key was created: the older of two networks with one VNI keeps it.
    pub create_revision: Revision,
    /// Lease keys under the network's `subnets/`, valid or not.
    pub leases: usize,
}

impl StoredNetwork {
    pub fn vni(&self) -> Option<u32> {
        self.config.as_ref().ok().map(|c| c.backend.vni)
    }
}

/// Every named network under `prefix`, sorted by name (one list of `<prefix>/networks/`).
pub async fn list(store: &dyn Store, prefix: &str) -> Result<Vec<StoredNetwork>, StoreError> {
    let listing = store.list(&networks_prefix(prefix)).await?;
    let mut nets: BTreeMap<String, StoredNetwork> = BTreeMap::new();
    let mut leases: BTreeMap<String, usize> = BTreeMap::new();
    let root = networks_prefix(prefix);
    for e in &listing.entries {
        if let Some(name) = parse_config_key(prefix, &e.key) {
            nets.insert(name.to_string(), stored(name, &e.value, e.create_revision));
        } else if let Some((name, _)) = e.key.strip_prefix(&root).and_then(|r| r.split_once("/subnets/")) {
            *leases.entry(name.to_string()).or_default() += 1;
        }
    }
    for (name, n) in &mut nets {
        n.leases = leases.get(name).copied().unwrap_or(0);
    }
    Ok(nets.into_values().collect())
}

/// A stored config, parsed as agents parse it.
pub fn stored(name: &str, text: &str, create_revision: Revision) -> StoredNetwork {
    StoredNetwork {
        name: name.to_string(),
        config_text: text.to_string(),
        config: NetworkConfig::parse(text),
        mode: Mode::from_config(text),
        create_revision,
        leases: 0,
    }
}

/// Creates named network `name` from a flannel-style config (its `Backend.VNI` is the network's
/// VNI). Returns the parsed config.
pub async fn create(
    store: &dyn Store,
    prefix: &str,
    name: &str,
    config_text: &str,
) -> Result<NetworkConfig, AdminError> {
    validate_name(name)?;
    let cfg = NetworkConfig::parse(config_text)?;
    Mode::from_config(config_text)?;
    let vni = cfg.backend.vni;
    let keys = NetworkKeys::named(prefix, name);
    if store.get(&keys.config()).await?.is_some() {
        return Err(AdminError::Exists(name.into()));
    }
    if let Some(e) = store.get(&NetworkKeys::new(prefix).config()).await? {
        if NetworkConfig::parse(&e.value).is_ok_and(|d| d.backend.vni == vni) {
            return Err(AdminError::VniTaken {
                vni,
                by: "the default network".into(),
            });
        }
    }
    // A config written by hand (without a claim) may hold the VNI already.
    if let Some(other) = list(store, prefix).await?.into_iter().find(|n| n.vni() == Some(vni)) {
        return Err(AdminError::VniTaken {
            vni,
            by: format!("network {:?}", other.name),
        });
    }
    let claim = vni_claim_key(prefix, vni);
    claim_vni(store, prefix, name, vni, &claim).await?;
    let text = config_text.trim();
    store.put(&keys.config(), text).await?;
    // Two creates of one name with different VNIs both get here: the last put wins, and the
    // loser gives its claim back.
    let now = store.get(&keys.config()).await?;
    if now.as_ref().map(|e| e.value.as_str()) != Some(text) {
        store.delete(&claim).await?;
        return Err(AdminError::Raced(name.into()));
    }
    Ok(cfg)
}

/// How long a claim without a config is taken for a create still in progress (which writes its
/// config milliseconds after its claim) before it is reported as left by an interrupted create.
const CLAIM_SETTLE: Duration = Duration::from_secs(2);

/// Takes `<prefix>/vnis/<vni>` for `name`, or says who holds it.
async fn claim_vni(store: &dyn Store, prefix: &str, name: &str, vni: u32, claim: &str) -> Result<(), AdminError> {
    let deadline = tokio::time::Instant::now() + CLAIM_SETTLE;
    loop {
        if store.create(claim, name, CLAIM_TTL).await?.is_some() {
            return Ok(());
        }
        // The claim may have gone between our create and this read (a racing create gave it
        // back): then try again.
        let Some(holder) = store.get(claim).await?.map(|e| e.value) else {
            continue;
        };
        // Our own claim, left by an interrupted create or delete: ours to use.
        if holder == name {
            return Ok(());
        }
        let holder_exists = validate_name(&holder).is_err()
            || store
                .get(&NetworkKeys::named(prefix, &holder).config())
                .await?
                .is_some();
        if holder_exists {
            return Err(AdminError::VniTaken {
                vni,
                by: format!("network {holder:?}"),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AdminError::StaleClaim { vni, holder });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What `delete` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    pub config: bool,
    pub leases: usize,
    /// VNIs whose claim named this network.
    pub claims: Vec<u32>,
}

/// Deletes named network `name`: its config (agents tear the network down), its leases and its
/// VNI claim. Also cleans up after an interrupted create (a claim without a config).
pub async fn delete(store: &dyn Store, prefix: &str, name: &str) -> Result<Deleted, AdminError> {
    validate_name(name)?;
    let keys = NetworkKeys::named(prefix, name);
    let mut done = Deleted {
        config: store.delete(&keys.config()).await?,
        ..Deleted::default()
    };
    for e in store.list(&keys.subnets()).await?.entries {
        if store.delete(&e.key).await? {
            done.leases += 1;
        }
    }
    // An L2 network's endpoints (counted with the leases: both are per-host registrations),
    // then its address claims.
    for e in store
        .list(&crate::endpoint::endpoints_prefix(&keys.prefix))
        .await?
        .entries
    {
        if store.delete(&e.key).await? {
            done.leases += 1;
        }
    }
    for e in store.list(&crate::l2ipam::ips_prefix(&keys.prefix)).await?.entries {
        store.delete(&e.key).await?;
    }
    let claims = vnis_prefix(prefix);
    for e in store.list(&claims).await?.entries {
        if e.value == name {
            if let Some(vni) = e.key.strip_prefix(&claims).and_then(|v| v.parse().ok()) {
                if store.delete(&e.key).await? {
                    done.claims.push(vni);
                }
            }
        }
    }
    if done == Deleted::default() {
        return Err(AdminError::NotFound {
            name: name.into(),
            store: store.describe(),
        });
    }
    Ok(done)
}

/// Whether an agent serves a named network, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Serve {
        vni: u32,
        mode: Mode,
    },
    /// The config does not parse: nothing to serve (an agent already serving it keeps going).
    Invalid(String),
    /// Its VNI belongs to another network.
    Refuse(String),
}

/// The VNI rule agents apply to what is stored, whatever `weft net create` did: a VNI belongs to
/// the default network if it uses it, else to the named network whose config was created first
/// (lowest create revision; the name breaks a tie). Others are refused, with the reason. A
/// network whose config does not parse is refused too (nothing to serve yet). Every host
/// reaches the same verdicts from the same store.
pub fn verdicts(default_vni: Option<u32>, networks: &[StoredNetwork]) -> BTreeMap<String, Verdict> {
    let mut owner: BTreeMap<u32, (&StoredNetwork, Revision)> = BTreeMap::new();
    for n in networks {
        if let Some(vni) = n.vni() {
            let e = owner.entry(vni).or_insert((n, n.create_revision));
            if (n.create_revision, &n.name) < (e.1, &e.0.name) {
                *e = (n, n.create_revision);
            }
        }
    }
    networks
        .iter()
        .map(|n| {
            let v = match (&n.config, &n.mode) {
                (Err(e), _) => Verdict::Invalid(format!("invalid config: {e}")),
                (_, Err(e)) => Verdict::Invalid(e.to_string()),
                (Ok(c), Ok(_)) if Some(c.backend.vni) == default_vni => Verdict::Refuse(format!(
                    "VNI {} is the default network's; this network is not served",
                    c.backend.vni
                )),
                (Ok(c), Ok(mode)) => match owner.get(&c.backend.vni) {
                    Some((o, _)) if o.name != n.name => Verdict::Refuse(format!(
                        "VNI {} is already used by network {:?} (created first); this network is not served",
                        c.backend.vni, o.name
                    )),
                    _ => Verdict::Serve {
                        vni: c.backend.vni,
                        mode: *mode,
                    },
                },
            };
            (n.name.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    const P: &str = "/coreos.com/network";

    fn cfg(vni: u32) -> String {
        format!(r#"{{"Network":"10.50.0.0/16","Backend":{{"Type":"vxlan","VNI":{vni}}}}}"#)
    }

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("store.db").display().to_string()).unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn create_claims_the_vni_and_refuses_a_second_user() {
        let (_d, s) = store();
        s.put(&format!("{P}/config"), &cfg(1)).await.unwrap();
        create(&s, P, "a", &cfg(100)).await.unwrap();
        assert_eq!(s.get(&format!("{P}/vnis/100")).await.unwrap().unwrap().value, "a");
        assert_eq!(
            s.get(&format!("{P}/networks/a/config")).await.unwrap().unwrap().value,
            cfg(100)
        );

        let err = create(&s, P, "b", &cfg(100)).await.unwrap_err();
        assert!(matches!(err, AdminError::VniTaken { vni: 100, .. }), "{err}");
        assert!(err.to_string().contains("\"a\""), "{err}");
        let err = create(&s, P, "b", &cfg(1)).await.unwrap_err();
        assert!(err.to_string().contains("default network"), "{err}");
        assert!(matches!(create(&s, P, "a", &cfg(7)).await, Err(AdminError::Exists(_))));
        assert!(matches!(create(&s, P, "Bad", &cfg(7)).await, Err(AdminError::Name(_))));
        assert!(matches!(create(&s, P, "c", "{}").await, Err(AdminError::Config(_))));
        // Nothing of the refused attempts was written.
        assert!(s.get(&format!("{P}/networks/b/config")).await.unwrap().is_none());
        assert!(s.get(&format!("{P}/vnis/7")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn concurrent_creates_of_one_vni_leave_exactly_one_network() {
        let (_d, s) = store();
        let s = std::sync::Arc::new(s);
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { create(s.as_ref(), P, &format!("n{i}"), &cfg(200)).await })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(AdminError::VniTaken { vni: 200, .. }) => {}
                Err(e) => panic!("unexpected: {e}"),
            }
        }
        assert_eq!(ok, 1);
        let nets = list(s.as_ref(), P).await.unwrap();
        assert_eq!(nets.len(), 1, "{nets:?}");
        assert_eq!(
            s.get(&format!("{P}/vnis/200")).await.unwrap().unwrap().value,
            nets[0].name
        );
    }

    #[tokio::test]
    async fn a_hand_written_config_holds_its_vni() {
        let (_d, s) = store();
        s.put(&format!("{P}/networks/x/config"), &cfg(300)).await.unwrap();
        let err = create(&s, P, "y", &cfg(300)).await.unwrap_err();
        assert!(err.to_string().contains("\"x\""), "{err}");
    }

    #[tokio::test]
    async fn delete_removes_config_leases_and_claim_and_list_counts_leases() {
        let (_d, s) = store();
        create(&s, P, "a", &cfg(100)).await.unwrap();
        create(&s, P, "b", &cfg(101)).await.unwrap();
        for sub in ["10.50.1.0-24", "10.50.2.0-24"] {
            s.create(&format!("{P}/networks/a/subnets/{sub}"), "{}", Duration::from_secs(60))
                .await
                .unwrap();
        }
        // An L2 network's address claim goes too (`list(…/networks/a/)` below sees every key).
        s.create(&format!("{P}/networks/a/ips/10.50.0.1"), "{}", CLAIM_TTL)
            .await
            .unwrap();
        let nets = list(&s, P).await.unwrap();
        let counts: Vec<_> = nets.iter().map(|n| (n.name.as_str(), n.vni(), n.leases)).collect();
        assert_eq!(counts, [("a", Some(100), 2), ("b", Some(101), 0)]);

        let done = delete(&s, P, "a").await.unwrap();
        assert_eq!(
            done,
            Deleted {
                config: true,
                leases: 2,
                claims: vec![100]
            }
        );
        assert_eq!(s.list(&format!("{P}/networks/a/")).await.unwrap().entries.len(), 0);
        assert!(s.get(&format!("{P}/vnis/100")).await.unwrap().is_none());
        assert!(matches!(delete(&s, P, "a").await, Err(AdminError::NotFound { .. })));
        // The VNI is free again.
        create(&s, P, "c", &cfg(100)).await.unwrap();
    }

    #[tokio::test]
    async fn a_stale_claim_is_named_and_delete_clears_it() {
        let (_d, s) = store();
        s.create(&format!("{P}/vnis/100"), "gone", CLAIM_TTL).await.unwrap();
        let err = create(&s, P, "a", &cfg(100)).await.unwrap_err();
        assert!(matches!(err, AdminError::StaleClaim { vni: 100, .. }), "{err}");
        let done = delete(&s, P, "gone").await.unwrap();
        assert_eq!(done.claims, [100]);
        create(&s, P, "a", &cfg(100)).await.unwrap();
        // A claim of our own (interrupted create) is reused.
        s.create(&format!("{P}/vnis/101"), "b", CLAIM_TTL).await.unwrap();
        create(&s, P, "b", &cfg(101)).await.unwrap();
    }

    #[test]
    fn agents_serve_the_older_of_two_networks_with_one_vni() {
        let nets = vec![
            stored("new", &cfg(100), 9),
            stored("old", &cfg(100), 5),
            stored("other", &cfg(101), 7),
            stored("dflt", &cfg(1), 3),
            stored("broken", "{", 4),
            stored(
                "l2",
                r#"{"Network":"10.9.0.0/16","Backend":{"VNI":5},"Weft":{"Mode":"l9"}}"#,
                4,
            ),
        ];
        let v = verdicts(Some(1), &nets);
        let l3 = |vni| Verdict::Serve { vni, mode: Mode::L3 };
        assert_eq!(v["old"], l3(100));
        assert_eq!(v["other"], l3(101));
        assert!(
            matches!(&v["new"], Verdict::Refuse(r) if r.contains("\"old\"")),
            "{v:?}"
        );
        assert!(
            matches!(&v["dflt"], Verdict::Refuse(r) if r.contains("default")),
            "{v:?}"
        );
        assert!(
            matches!(&v["broken"], Verdict::Invalid(r) if r.contains("invalid config")),
            "{v:?}"
        );
        assert!(matches!(&v["l2"], Verdict::Invalid(r) if r.contains("Mode")), "{v:?}");
        // Same revision (cannot happen in one store, but the verdict must not depend on order).
        let tie = vec![stored("b", &cfg(100), 5), stored("a", &cfg(100), 5)];
        assert_eq!(verdicts(None, &tie)["a"], l3(100));
        let tie: Vec<_> = tie.into_iter().rev().collect();
        assert_eq!(verdicts(None, &tie)["a"], l3(100));
        let l2 = stored(
            "flat",
            r#"{"Network":"10.9.0.0/16","Backend":{"VNI":5},"Weft":{"Mode":"l2"}}"#,
            4,
        );
        assert_eq!(verdicts(None, &[l2])["flat"], Verdict::Serve { vni: 5, mode: Mode::L2 });
    }
}
