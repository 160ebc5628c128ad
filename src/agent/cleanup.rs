//! `weft agent --cleanup [--release]`: take weft off this host. Removes the nft table, weft's
//! routes, the VXLAN device (its neighbour and FDB entries go with it) and `subnet.env`; with
//! `--release` also deletes this host's lease so its subnet is free for others.

use super::{iface, AgentError, AgentOptions};
use crate::config::NetworkConfig;
use crate::kernel::{nft, Kernel, KernelError};
use crate::lease::Lease;
use crate::network::{device_name, NetworkKeys};
use crate::planner::state::ROUTE_PROTO_WEFT;
use crate::store;
use tracing::warn;

/// Returns one line per thing removed.
pub async fn cleanup(opts: &AgentOptions, release: bool) -> Result<Vec<String>, AgentError> {
    let mut done = Vec::new();
    let kernel = Kernel::connect().await?;
    let keys = NetworkKeys::new(&opts.prefix);

    // The device name comes from the config; without a store, every flannel.N VXLAN device.
    let store = store::open(&opts.store);
    let vni = match &store {
        Ok(s) => match s.get(&keys.config()).await {
            Ok(Some(e)) => NetworkConfig::parse(&e.value).ok().map(|c| c.backend.vni),
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "store unavailable; removing every flannel.N VXLAN device");
                None
            }
        },
        Err(e) => {
            warn!(error = %e, "store unavailable; removing every flannel.N VXLAN device");
            None
        }
    };

    if release {
        let s = store.as_ref().map_err(|e| AgentError::Store(clone_err(e)))?;
        let public_ip = iface::select(&kernel, &opts.iface).await?.public_ip;
        for e in s.list(&keys.subnets()).await?.entries {
            if Lease::from_entry(&e).is_ok_and(|l| l.public_ip == public_ip) && s.delete(&e.key).await? {
                done.push(format!("released lease {}", e.key));
            }
        }
    }

    let removed_table = tokio::task::spawn_blocking(nft::remove)
        .await
        .map_err(|e| KernelError::Nft {
            op: "remove",
            message: e.to_string(),
        })??;
    if removed_table {
        done.push(format!("removed nft table ip {}", nft::TABLE));
    }

    for link in kernel.links().await? {
        for r in kernel.routes(link.index).await? {
            if r.protocol == ROUTE_PROTO_WEFT {
                kernel.remove_route(&r).await?;
                done.push(format!("removed route {} via {} dev {}", r.dst, r.gateway, link.name));
            }
        }
        let ours = match vni {
            Some(v) => link.name == device_name(v),
            None => link.name.starts_with("flannel.") && link.kind.as_deref() == Some("vxlan"),
        };
        if ours {
            kernel.delete_link(link.index).await?;
            done.push(format!(
                "removed device {} with its neighbour and FDB entries",
                link.name
            ));
        }
    }

    match std::fs::remove_file(&opts.subnet_file) {
        Ok(()) => done.push(format!("removed {}", opts.subnet_file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(AgentError::SubnetEnv {
                path: opts.subnet_file.clone(),
                source,
            })
        }
    }
    Ok(done)
}

fn clone_err(e: &store::StoreError) -> store::StoreError {
    store::StoreError::Unavailable {
        store: "store".into(),
        message: e.to_string(),
    }
}
