//! `weft agent --cleanup [--release]`: take weft off this host. Removes the nft tables, weft's
//! routes and rules, the VXLAN devices (their neighbour and FDB entries go with them) and the
//! subnet files, of the default network and of every named one; with `--release` also deletes
//! this host's leases so its subnets are free for others.

use super::{iface, AgentError, AgentOptions};
use crate::config::NetworkConfig;
use crate::kernel::{nft, Kernel, KernelError};
use crate::lease::Lease;
use crate::network::{self, device_name, NetworkKeys};
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
        let mut lease_prefixes = vec![keys.subnets()];
        for n in network::admin::list(s.as_ref(), &opts.prefix).await? {
            lease_prefixes.push(NetworkKeys::named(&opts.prefix, &n.name).subnets());
        }
        for prefix in lease_prefixes {
            for e in s.list(&prefix).await?.entries {
                if Lease::from_entry(&e).is_ok_and(|l| l.public_ip == public_ip) && s.delete(&e.key).await? {
                    done.push(format!("released lease {}", e.key));
                }
            }
        }
    }

    let removed_tables = tokio::task::spawn_blocking(|| -> Result<Vec<String>, KernelError> {
        let mut removed = Vec::new();
        for t in nft::tables()? {
            let ours = t == nft::TABLE || network::parse_named_nft_table(&t).is_some();
            if ours && nft::remove(&t)? {
                removed.push(t);
            }
        }
        Ok(removed)
    })
    .await
    .map_err(|e| KernelError::Nft {
        op: "remove",
        message: e.to_string(),
    })??;
    for t in removed_tables {
        done.push(format!("removed nft table ip {t}"));
    }
    // The peer filter's BPF program: the one pinned in --bpf-pin-dir and any other of weft's
    // still attached to this namespace.
    let dir = opts.bpf_pin_dir.clone();
    let (pinned, strays) = tokio::task::spawn_blocking(move || -> Result<_, crate::kernel::bpf::BpfError> {
        let pinned = match &dir {
            Some(d) => crate::kernel::bpf::remove_pinned(d)?.then(|| d.display().to_string()),
            None => None,
        };
        Ok((pinned, crate::kernel::bpf::detach_strays(None)?))
    })
    .await
    .map_err(|e| KernelError::Nft {
        op: "bpf remove",
        message: e.to_string(),
    })?
    .map_err(KernelError::from)?;
    if let Some(d) = pinned {
        done.push(format!("detached the VXLAN peer filter's BPF program pinned in {d}"));
    }
    if strays > 0 {
        done.push(format!("detached {strays} other BPF peer filter program(s) of weft's"));
    }

    for r in kernel.weft_rules().await? {
        kernel.remove_rule(&r).await?;
        done.push(format!("removed rule {r}"));
    }

    for link in kernel.links().await? {
        for r in kernel.routes(link.index).await? {
            if r.protocol == ROUTE_PROTO_WEFT {
                kernel.remove_route(&r).await?;
                done.push(format!("removed route {} via {} dev {}", r.dst, r.gateway, link.name));
            }
        }
        let is_vxlan = link.kind.as_deref() == Some("vxlan");
        let ours = match vni {
            Some(v) => link.name == device_name(v),
            None => link.name.starts_with("flannel.") && is_vxlan,
        } || (network::parse_named_device(&link.name).is_some() && is_vxlan);
        if let Some(vni) = network::parse_named_device(&link.name).filter(|_| is_vxlan) {
            let n = kernel.with_table(network::route_table(vni)).flush_table().await?;
            if n > 0 {
                done.push(format!("removed {n} routes of table {}", network::route_table(vni)));
            }
        }
        if ours {
            kernel.delete_link(link.index).await?;
            done.push(format!(
                "removed device {} with its neighbour and FDB entries",
                link.name
            ));
        }
    }

    let mut files = vec![opts.subnet_file.clone()];
    let dir = network::named_subnet_file(&opts.subnet_file, "x");
    if let Some(Ok(entries)) = dir.parent().map(std::fs::read_dir) {
        files.extend(
            entries
                .flatten()
                .map(|e| e.path())
                // Named networks' files, and L2 networks' weft-cni sockets.
                .filter(|p| p.extension().is_some_and(|x| x == "env" || x == "sock")),
        );
    }
    for path in files {
        match std::fs::remove_file(&path) {
            Ok(()) => done.push(format!("removed {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(AgentError::SubnetEnv { path, source }),
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
