//! The delegate's network config, built from ours and `subnet.env` the way flannel's plugin does.
//!
//! By default the delegate is the standard `bridge` plugin: a bridge `cni0` that is the
//! containers' gateway, `host-local` IPAM over the host's leased subnet, a route to the whole
//! cluster network through the bridge, and the MTU of the overlay. Anything the operator set in
//! `delegate` (or flannel's top-level `ipam`) wins over these defaults.

use super::error::CniError;
use super::netconf::NetConf;
use crate::subnet_env::SubnetEnv;
use serde_json::{json, Map, Value};
use std::net::Ipv4Addr;

pub const DEFAULT_TYPE: &str = "bridge";
pub const DEFAULT_BRIDGE: &str = "cni0";

/// Rejects overrides no delegate config can be built from. Pure and independent of
/// `subnet.env`, so a bad network config is reported as such even while the agent is down.
pub fn validate(conf: &NetConf) -> Result<String, CniError> {
    let d = &conf.delegate;
    // The runtime's name and version must reach the delegate unchanged: the result's format and
    // host-local's state directory depend on them.
    for key in ["name", "cniVersion"] {
        if d.contains_key(key) {
            return Err(CniError::UnsupportedField {
                field: format!("delegate.{key}"),
                hint: format!("the delegate always gets the network's own {key}; set it at the top level instead"),
            });
        }
    }
    let ty = match d.get("type") {
        None => DEFAULT_TYPE.to_string(),
        Some(Value::String(t)) => t.clone(),
        Some(other) => {
            return Err(CniError::InvalidConfig(format!(
                "delegate.type must be a plugin name, not {other}"
            )))
        }
    };
    // The type becomes a file name looked up in CNI_PATH: it must not be a path.
    if ty.is_empty() || ty.contains('/') || ty == "." || ty == ".." {
        return Err(CniError::InvalidConfig(format!(
            "delegate.type {ty:?} must be the name of a plugin binary in CNI_PATH, e.g. \"bridge\""
        )));
    }
    if let Some(other) = d.get("ipam").filter(|i| !i.is_object()) {
        return Err(CniError::InvalidConfig(format!(
            "delegate.ipam must be a JSON object, not {other}"
        )));
    }
    Ok(ty)
}

/// The delegate config for this network on this host. Pure: the same inputs give the same config.
pub fn build(conf: &NetConf, env: &SubnetEnv) -> Result<Value, CniError> {
    let ty = validate(conf)?;
    let mut d = conf.delegate.clone();
    d.insert("cniVersion".into(), json!(conf.cni_version));
    d.insert("name".into(), json!(conf.name));
    d.insert("type".into(), json!(ty));

    if ty == "bridge" {
        default(&mut d, "bridge", json!(DEFAULT_BRIDGE));
        default(&mut d, "isGateway", json!(true));
        // When the agent masquerades traffic leaving the cluster network, the bridge must not:
        // its rule masquerades everything leaving the host's subnet, traffic to other hosts'
        // containers included, which the agent's rules deliberately leave alone.
        default(&mut d, "ipMasq", json!(!env.ipmasq));
        default(&mut d, "hairpinMode", json!(true));
    }
    default(&mut d, "mtu", json!(env.mtu));

    let ipam = ipam(conf, &d, env);
    d.insert("ipam".into(), Value::Object(ipam));
    if let Some(rc) = &conf.runtime_config {
        d.insert("runtimeConfig".into(), rc.clone());
    }
    Ok(Value::Object(d))
}

/// host-local over the host's subnet with a route to the cluster network, under the operator's
/// overrides (`delegate.ipam` first, then flannel's top-level `ipam`).
fn ipam(conf: &NetConf, d: &Map<String, Value>, env: &SubnetEnv) -> Map<String, Value> {
    // validate() has made sure it is an object if present.
    let mut ipam = d.get("ipam").and_then(Value::as_object).cloned().unwrap_or_default();
    for (k, v) in &conf.ipam {
        ipam.entry(k.clone()).or_insert_with(|| v.clone());
    }
    default(&mut ipam, "type", json!("host-local"));
    // An old-style single `subnet` is host-local's too; adding ranges next to it would give the
    // container a second address.
    let route = if !ipam.contains_key("ranges") && !ipam.contains_key("subnet") {
        ipam.insert("ranges".into(), json!([[{ "subnet": env.subnet.to_string() }]]));
        // host-local's gateway is the range's first address, which the bridge takes. Naming it
        // in the route (flannel leaves it implicit) is the same route, and lets the bridge
        // plugin's CHECK find it: it looks for a route with exactly the result's gateway.
        json!({ "dst": env.network.to_string(), "gw": first_host(env).to_string() })
    } else {
        // The operator's own ranges: their gateway is theirs to name.
        json!({ "dst": env.network.to_string() })
    };
    default(&mut ipam, "routes", json!([route]));
    ipam
}

/// The subnet's first host address, flannel's FLANNEL_SUBNET address and the bridge's.
fn first_host(env: &SubnetEnv) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(env.subnet.network()).saturating_add(1))
}

fn default(m: &mut Map<String, Value>, key: &str, value: Value) {
    m.entry(key.to_string()).or_insert(value);
}

/// What the delegate gets on stdin for one call: the saved (or built) config, stamped with this
/// call's version, plus the runtime's `prevResult` (the bridge plugin's CHECK needs it).
pub fn for_call(mut saved: Value, conf: &NetConf) -> Value {
    if let Value::Object(m) = &mut saved {
        m.insert("cniVersion".into(), json!(conf.cni_version));
        match &conf.prev_result {
            Some(p) => m.insert("prevResult".into(), p.clone()),
            None => m.remove("prevResult"),
        };
    }
    saved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(ipmasq: bool) -> SubnetEnv {
        SubnetEnv::parse(&format!(
            "FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=10.0.37.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ={ipmasq}\n"
        ))
        .unwrap()
    }

    fn conf(extra: &str) -> NetConf {
        NetConf::parse(format!(r#"{{"cniVersion":"1.0.0","name":"weft","type":"weft-cni"{extra}}}"#).as_bytes())
            .unwrap()
    }

    #[test]
    fn default_is_flannels_bridge() {
        let d = build(&conf(""), &env(true)).unwrap();
        assert_eq!(
            d,
            json!({
                "cniVersion": "1.0.0", "name": "weft", "type": "bridge", "bridge": "cni0",
                "isGateway": true, "ipMasq": false, "hairpinMode": true, "mtu": 1450,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.0.37.0/24"}]],
                    "routes": [{"dst": "10.0.0.0/16", "gw": "10.0.37.1"}]
                }
            })
        );
    }

    #[test]
    fn ipmasq_is_the_opposite_of_the_agents() {
        assert_eq!(build(&conf(""), &env(true)).unwrap()["ipMasq"], false);
        assert_eq!(build(&conf(""), &env(false)).unwrap()["ipMasq"], true);
    }

    #[test]
    fn overrides_win() {
        let c = conf(
            r#","delegate":{"bridge":"weft0","mtu":1400,"ipMasq":false,"ipam":{"dataDir":"/tmp/x"}},
               "ipam":{"dataDir":"/ignored","routes":[{"dst":"0.0.0.0/0"}]},"runtimeConfig":{"a":1}"#,
        );
        let d = build(&c, &env(false)).unwrap();
        assert_eq!(d["bridge"], "weft0");
        assert_eq!(d["mtu"], 1400);
        assert_eq!(d["ipMasq"], false);
        assert_eq!(d["ipam"]["dataDir"], "/tmp/x", "delegate.ipam wins over ipam");
        assert_eq!(d["ipam"]["routes"], json!([{"dst": "0.0.0.0/0"}]));
        assert_eq!(d["ipam"]["ranges"], json!([[{"subnet": "10.0.37.0/24"}]]));
        assert_eq!(d["runtimeConfig"], json!({"a": 1}));
    }

    #[test]
    fn other_delegate_types_get_no_bridge_keys() {
        let d = build(&conf(r#","delegate":{"type":"ipvlan","master":"eth0"}"#), &env(false)).unwrap();
        assert_eq!(d["type"], "ipvlan");
        assert!(d.get("bridge").is_none() && d.get("isGateway").is_none());
        assert_eq!(d["mtu"], 1450);
    }

    #[test]
    fn an_old_style_subnet_gets_no_ranges() {
        let d = build(&conf(r#","ipam":{"subnet":"10.0.37.0/25"}"#), &env(false)).unwrap();
        assert!(d["ipam"].get("ranges").is_none());
        assert_eq!(
            d["ipam"]["routes"],
            json!([{"dst": "10.0.0.0/16"}]),
            "no gateway guessed"
        );
    }

    #[test]
    fn unusable_overrides_are_errors() {
        let e = build(&conf(r#","delegate":{"name":"x"}"#), &env(false)).unwrap_err();
        assert_eq!(e.code(), 2);
        for bad in [
            r#"{"type":"../../bin/sh"}"#,
            r#"{"type":7}"#,
            r#"{"ipam":"host-local"}"#,
        ] {
            let e = build(&conf(&format!(r#","delegate":{bad}"#)), &env(false)).unwrap_err();
            assert_eq!(e.code(), 7, "{bad}: {e}");
        }
    }

    #[test]
    fn a_call_carries_its_version_and_prev_result() {
        let saved = build(&conf(""), &env(false)).unwrap();
        let c = conf(r#","prevResult":{"cniVersion":"1.0.0","ips":[]}"#);
        let call = for_call(saved.clone(), &c);
        assert_eq!(call["prevResult"]["ips"], json!([]));
        let call = for_call(call, &conf(""));
        assert!(call.get("prevResult").is_none());
        assert_eq!(call["ipam"], saved["ipam"]);
    }
}
