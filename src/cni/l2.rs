//! `weft-cni` in a weft L2 network (`"weftNetwork": "NAME"` in the network config).
//!
//! The container joins the network's bridge `weftbr.<VNI>` through the standard `bridge` plugin
//! (`isGateway: false`, `ipMasq: false`, the network's MTU: a flat subnet has no gateway) with
//! `static` IPAM. Its address comes from the network's agent, which claims it in the store for
//! the whole cluster and registers the endpoint (MAC, IP, this host) so that every agent programs
//! it; the plugin talks to the agent over the root-only socket named in the agent's network file
//! `<dir of subnetFile>/networks/NAME.env`, and never holds store credentials itself.
//!
//! ADD: register (address + endpoint) → run `bridge` with that address and MAC → on failure,
//! unregister again. DEL: `bridge` DEL → unregister; with the network file gone (the network was
//! deleted, which removes its registrations) it succeeds. CHECK: the registration, then `bridge`.
//! The MAC is the runtime's (`runtimeConfig.mac`) or one derived from network, container and
//! interface; the address the runtime's (`runtimeConfig.ips`) or the lowest free one.

use super::agent_client;
use super::args::{CniArgs, Env};
use super::error::CniError;
use super::netconf::NetConf;
use super::{delegate, files};
use crate::l2ipam::container_mac;
use crate::l2ipam::env::{L2Env, NotL2};
use crate::l2ipam::protocol::{Op, Registration, Request};
use crate::mac::Mac;
use serde_json::{json, Map, Value};
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Delegate keys the L2 network decides (an override would leave the container unregistered
/// or off the network's bridge).
const FIXED: [&str; 4] = ["type", "bridge", "ipam", "isGateway"];

/// Refuses configs no L2 delegate can be built from (pure).
pub fn validate(conf: &NetConf) -> Result<(), CniError> {
    for key in ["name", "cniVersion"].into_iter().chain(FIXED) {
        if conf.delegate.contains_key(key) {
            return Err(CniError::UnsupportedField {
                field: format!("delegate.{key}"),
                hint: "in a weft L2 network (weftNetwork) the container always joins the network's bridge with the \
                       address its agent registers; remove it"
                    .into(),
            });
        }
    }
    if !conf.ipam.is_empty() {
        return Err(CniError::UnsupportedField {
            field: "ipam".into(),
            hint: "in a weft L2 network (weftNetwork) the agent assigns addresses, unique across the cluster; ask \
                   for one with the runtime's `ips` capability instead"
                .into(),
        });
    }
    requested(conf).map(|_| ())
}

/// The MAC and address the runtime asked for (`runtimeConfig.mac`, `runtimeConfig.ips`).
fn requested(conf: &NetConf) -> Result<(Option<Mac>, Option<Ipv4Addr>), CniError> {
    let Some(rc) = conf.runtime_config.as_ref().and_then(Value::as_object) else {
        return Ok((None, None));
    };
    let mac =
        match rc.get("mac").and_then(Value::as_str) {
            None => None,
            Some(m) => Some(m.parse::<Mac>().ok().filter(Mac::is_valid_unicast).ok_or_else(|| {
                CniError::InvalidConfig(format!("runtimeConfig.mac {m:?} is not a unicast MAC address"))
            })?),
        };
    let ip = rc
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok());
    Ok((mac, ip))
}

/// The agent's network file for `network`: `<dir of subnetFile>/networks/NAME.env`.
pub fn env_file(conf: &NetConf, network: &str) -> PathBuf {
    crate::network::named_subnet_file(&conf.subnet_file, network)
}

/// Reads the agent's network file; `Ok(None)` if it does not exist.
fn read_env(conf: &NetConf, network: &str) -> Result<Option<L2Env>, CniError> {
    let path = env_file(conf, network);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CniError::Io {
                action: "read",
                path,
                source: e,
                hint: " — weft-cni runs as the container runtime's user, which must be able to read it".into(),
            })
        }
    };
    match L2Env::parse(&text) {
        Ok(env) => Ok(Some(env)),
        Err(NotL2::L3) => Err(CniError::InvalidConfig(format!(
            "weftNetwork {network:?} is an L3 network ({} is its subnet.env): weftNetwork names an L2 network \
             (weft net create … --mode l2); for an L3 network drop weftNetwork and set subnetFile to that file",
            path.display()
        ))),
        Err(NotL2::Incomplete(missing)) => Err(CniError::Decode {
            what: path.display().to_string(),
            problem: format!(
                "{} missing or malformed — it is written by the weft agent; restart the agent to rewrite it",
                missing.join(", ")
            ),
        }),
    }
}

/// The agent's network file, which ADD and CHECK cannot do without.
fn need_env(conf: &NetConf, network: &str) -> Result<L2Env, CniError> {
    read_env(conf, network)?.ok_or_else(|| {
        CniError::TryAgainLater(format!(
            "the weft agent does not serve an L2 network {network:?} on this host ({} does not exist): is the \
             weft agent running here, and does the network exist (`weft net list`)?",
            env_file(conf, network).display()
        ))
    })
}

/// Where ADD saves the delegate config: one file per network, container and interface.
fn saved_id(network: &str, args: &CniArgs) -> String {
    format!("l2-{network}-{}-{}", args.container_id, args.ifname)
}

/// The `bridge` delegate config for a registered container (pure). `reg` is `None` only for a
/// DEL that has nothing saved (static IPAM then has no address to release anyway).
pub fn build(conf: &NetConf, env: &L2Env, reg: Option<&Registration>) -> Value {
    let mut d = conf.delegate.clone();
    d.insert("cniVersion".into(), json!(conf.cni_version));
    d.insert("name".into(), json!(conf.name));
    d.insert("type".into(), json!(delegate::DEFAULT_TYPE));
    d.insert("bridge".into(), json!(env.bridge));
    d.insert("isGateway".into(), json!(false));
    for (k, v) in [
        ("isDefaultGateway", json!(false)),
        ("ipMasq", json!(false)),
        ("hairpinMode", json!(false)),
        ("mtu", json!(env.mtu)),
    ] {
        d.entry(k).or_insert(v);
    }
    let addresses: Vec<Value> = reg
        .map(|r| json!({ "address": format!("{}/{}", r.ip, r.prefix_len) }))
        .into_iter()
        .collect();
    d.insert("ipam".into(), json!({ "type": "static", "addresses": addresses }));
    let mut rc: Map<String, Value> = conf
        .runtime_config
        .as_ref()
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    // The address is static IPAM's; `ips` would be passed on to it as a second one.
    rc.remove("ips");
    if let Some(r) = reg {
        rc.insert("mac".into(), json!(r.mac.to_string()));
    }
    if !rc.is_empty() {
        d.insert("runtimeConfig".into(), Value::Object(rc));
    }
    Value::Object(d)
}

/// The MAC and address a saved delegate config gave the container.
fn saved_endpoint(saved: &Value) -> Option<(Mac, Ipv4Addr)> {
    let mac = saved["runtimeConfig"]["mac"].as_str()?.parse().ok()?;
    let ip = saved["ipam"]["addresses"][0]["address"]
        .as_str()?
        .split('/')
        .next()?
        .parse()
        .ok()?;
    Some((mac, ip))
}

/// The MAC of the container's interface in a CNI result (the one with a `sandbox`).
pub fn result_mac(result: &Value, ifname: &str) -> Option<Mac> {
    result["interfaces"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == ifname && i["sandbox"].as_str().is_some_and(|s| !s.is_empty()))?["mac"]
        .as_str()?
        .parse()
        .ok()
}

fn request(op: Op, args: &CniArgs, mac: Option<Mac>, ip: Option<Ipv4Addr>) -> Request {
    Request {
        op,
        container: args.container_id.clone(),
        ifname: args.ifname.clone(),
        mac,
        ip,
    }
}

pub fn add(args: &CniArgs, conf: &NetConf, network: &str, env: &Env) -> Result<String, CniError> {
    let l2 = need_env(conf, network)?;
    let (mac, ip) = requested(conf)?;
    let mac = mac.unwrap_or_else(|| container_mac(network, &args.container_id, &args.ifname));
    let reg = agent_client::call(&l2.socket, network, &request(Op::Add, args, Some(mac), ip))?.ok_or_else(|| {
        CniError::Decode {
            what: format!("the reply of the weft agent of L2 network {network}"),
            problem: "ADD was answered without an address".into(),
        }
    })?;
    let config = build(conf, &l2, Some(&reg));
    let id = saved_id(network, args);
    // A repeated ADD of a container that is up: if it fails, the container stays as it was.
    let repeated = files::load(&conf.data_dir, &id).is_some();
    let outcome = files::save(&conf.data_dir, &id, &config)
        .and_then(|()| super::plugin::call(args, conf, config.clone(), env))
        .and_then(|out| {
            let result: Value = serde_json::from_str(&out).map_err(|e| CniError::Decode {
                what: "the delegate's result".into(),
                problem: format!("{e}: {out:?}"),
            })?;
            match result_mac(&result, &args.ifname) {
                Some(m) if m == reg.mac => Ok(out),
                other => Err(CniError::DelegateRun {
                    plugin: delegate::DEFAULT_TYPE.into(),
                    problem: format!(
                        "gave {} MAC {}, not the registered {} (weft-cni needs bridge 1.1 or newer, which takes \
                         runtimeConfig.mac)",
                        args.ifname,
                        other.map(|m| m.to_string()).unwrap_or_else(|| "no".into()),
                        reg.mac
                    ),
                    details: String::new(),
                }),
            }
        });
    outcome.inspect_err(|_| {
        if repeated {
            return;
        }
        // Undo what this ADD did: the runtime may never send a DEL for a failed ADD.
        let _ = super::plugin::call(
            &CniArgs {
                command: super::args::Command::Del,
                ..args.clone()
            },
            conf,
            config.clone(),
            &with_command(env, "DEL"),
        );
        let _ = agent_client::call(&l2.socket, network, &request(Op::Del, args, None, None));
        let _ = files::remove(&conf.data_dir, &id);
    })
}

fn with_command(env: &Env, command: &str) -> Env {
    let mut e = env.clone();
    e.insert("CNI_COMMAND".into(), command.into());
    e
}

pub fn del(args: &CniArgs, conf: &NetConf, network: &str, env: &Env) -> Result<String, CniError> {
    let id = saved_id(network, args);
    let l2 = read_env(conf, network)?;
    let saved = files::load(&conf.data_dir, &id).or_else(|| l2.as_ref().map(|l| build(conf, l, None)));
    if let Some(config) = saved {
        super::plugin::call(args, conf, config, env)?;
    }
    // No network file: the network is gone from this host (deleted, which removed its
    // registrations with it), so there is nothing left to unregister.
    if let Some(l2) = l2 {
        agent_client::call(&l2.socket, network, &request(Op::Del, args, None, None))?;
    }
    files::remove(&conf.data_dir, &id)?;
    Ok(String::new())
}

pub fn check(args: &CniArgs, conf: &NetConf, network: &str, env: &Env) -> Result<String, CniError> {
    let id = saved_id(network, args);
    let unknown = |why: &str| CniError::UnknownContainer {
        id: args.container_id.clone(),
        hint: format!("{} {why}", files::saved_path(&conf.data_dir, &id).display()),
    };
    let saved = files::load(&conf.data_dir, &id)
        .ok_or_else(|| unknown("does not exist: it was not added to this network with this dataDir, or was deleted"))?;
    let (mac, ip) = saved_endpoint(&saved).ok_or_else(|| unknown("holds no MAC and address"))?;
    let l2 = need_env(conf, network)?;
    agent_client::call(&l2.socket, network, &request(Op::Check, args, Some(mac), Some(ip)))?;
    super::plugin::call(args, conf, saved, env)?;
    Ok(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> NetConf {
        NetConf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"l2","type":"weft-cni","weftNetwork":"l2net"{extra}}}"#)
                .as_bytes(),
        )
        .unwrap()
    }

    fn l2env() -> L2Env {
        L2Env {
            network: "10.70.0.0/16".parse().unwrap(),
            mtu: 1450,
            bridge: "weftbr.300".into(),
            socket: "/run/flannel/networks/l2net.sock".into(),
        }
    }

    fn reg() -> Registration {
        Registration {
            ip: Ipv4Addr::new(10, 70, 0, 2),
            prefix_len: 16,
            mac: "02:00:00:00:00:01".parse().unwrap(),
            host: Ipv4Addr::new(192, 0, 2, 10),
            seq: 0,
        }
    }

    #[test]
    fn delegate_is_a_gatewayless_bridge_with_the_registered_address() {
        let d = build(
            &conf(r#","runtimeConfig":{"ips":["10.70.0.2/16"],"portMappings":[]}"#),
            &l2env(),
            Some(&reg()),
        );
        assert_eq!(
            d,
            json!({
                "cniVersion": "1.0.0", "name": "l2", "type": "bridge", "bridge": "weftbr.300",
                "isGateway": false, "isDefaultGateway": false, "ipMasq": false, "hairpinMode": false, "mtu": 1450,
                "ipam": {"type": "static", "addresses": [{"address": "10.70.0.2/16"}]},
                "runtimeConfig": {"mac": "02:00:00:00:00:01", "portMappings": []}
            })
        );
        assert_eq!(saved_endpoint(&d), Some((reg().mac, reg().ip)));
        let bare = build(&conf(""), &l2env(), None);
        assert_eq!(bare["ipam"], json!({"type": "static", "addresses": []}));
        assert!(bare.get("runtimeConfig").is_none());
        assert_eq!(saved_endpoint(&bare), None);
    }

    #[test]
    fn delegate_overrides_only_where_harmless() {
        let d = build(
            &conf(r#","delegate":{"mtu":1400,"hairpinMode":true}"#),
            &l2env(),
            Some(&reg()),
        );
        assert_eq!((d["mtu"].clone(), d["hairpinMode"].clone()), (json!(1400), json!(true)));
        for bad in [
            r#","delegate":{"bridge":"cni0"}"#,
            r#","delegate":{"type":"macvlan"}"#,
            r#","delegate":{"ipam":{"type":"host-local"}}"#,
            r#","delegate":{"isGateway":true}"#,
            r#","ipam":{"type":"host-local"}"#,
        ] {
            assert_eq!(validate(&conf(bad)).unwrap_err().code(), 2, "{bad}");
        }
        let e = validate(&conf(r#","runtimeConfig":{"mac":"01:00:5e:00:00:01"}"#)).unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
    }

    #[test]
    fn the_runtime_may_ask_for_mac_and_address() {
        let c = conf(r#","runtimeConfig":{"mac":"02:aa:00:00:00:01","ips":["fd00::1/64","10.70.0.9/16"]}"#);
        assert_eq!(
            requested(&c).unwrap(),
            (
                Some("02:aa:00:00:00:01".parse().unwrap()),
                Some(Ipv4Addr::new(10, 70, 0, 9))
            )
        );
        assert_eq!(requested(&conf("")).unwrap(), (None, None));
    }

    #[test]
    fn network_file_missing_l3_or_broken() {
        let dir = tempfile::tempdir().unwrap();
        let c = conf(&format!(r#","subnetFile":"{}/subnet.env""#, dir.path().display()));
        let e = need_env(&c, "l2net").unwrap_err();
        assert_eq!(e.code(), 11);
        assert!(e.to_string().contains("does not serve an L2 network \"l2net\""), "{e}");
        assert!(e.to_string().contains("networks/l2net.env"), "{e}");
        let path = env_file(&c, "l2net");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            "FLANNEL_NETWORK=10.50.0.0/16\nFLANNEL_SUBNET=10.50.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        let e = need_env(&c, "l2net").unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("is an L3 network"), "{e}");
        std::fs::write(&path, "WEFT_MODE=l2\n").unwrap();
        assert_eq!(need_env(&c, "l2net").unwrap_err().code(), 6);
        std::fs::write(&path, l2env().render()).unwrap();
        assert_eq!(need_env(&c, "l2net").unwrap(), l2env());
    }

    #[test]
    fn mac_from_the_result() {
        let r = json!({"interfaces": [
            {"name": "weftbr.300", "mac": "aa:00:00:00:00:01"},
            {"name": "veth1", "mac": "aa:00:00:00:00:02"},
            {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/x"}
        ]});
        assert_eq!(result_mac(&r, "eth0"), Some(reg().mac));
        assert_eq!(result_mac(&r, "eth1"), None);
        assert_eq!(result_mac(&json!({}), "eth0"), None);
    }
}
