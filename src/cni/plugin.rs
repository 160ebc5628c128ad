//! One plugin call: the pure part turns the environment and stdin into a [`Plan`]; [`execute`]
//! does the file and process I/O.

use super::args::{CniArgs, Command, Env};
use super::error::CniError;
use super::netconf::NetConf;
use super::{delegate, exec, files, l2};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Version,
    // Boxed: a plan is made once per process, and clippy minds the size difference.
    Call { args: CniArgs, conf: Box<NetConf> },
}

/// Validates a call without touching anything: the environment first (it says what to do), then
/// the network config.
pub fn plan(env: &Env, stdin: &[u8]) -> Result<Plan, CniError> {
    let command = Command::from_env(env)?;
    if command == Command::Version {
        return Ok(Plan::Version);
    }
    let args = CniArgs::from_env(command, env)?;
    let conf = NetConf::parse(stdin)?;
    match conf.weft_network {
        Some(_) => l2::validate(&conf)?,
        None => drop(delegate::validate(&conf)?),
    }
    // CHECK arrived with spec 0.4.0; an older config cannot ask for it.
    if command == Command::Check && conf.cni_version.starts_with("0.3.") {
        return Err(CniError::CheckNeedsNewerVersion(conf.cni_version));
    }
    Ok(Plan::Call {
        args,
        conf: Box::new(conf),
    })
}

/// Runs a plan; returns what goes to stdout on success.
pub fn execute(plan: &Plan, env: &Env) -> Result<String, CniError> {
    let Plan::Call { args, conf } = plan else {
        return Ok(super::version_json());
    };
    if let Some(network) = &conf.weft_network {
        return match args.command {
            Command::Add => l2::add(args, conf, network, env),
            Command::Del => l2::del(args, conf, network, env),
            Command::Check => l2::check(args, conf, network, env),
            Command::Version => Ok(super::version_json()),
        };
    }
    match args.command {
        Command::Add => add(args, conf, env),
        Command::Del => del(args, conf, env),
        Command::Check => check(args, conf, env),
        Command::Version => Ok(super::version_json()),
    }
}

fn add(args: &CniArgs, conf: &NetConf, env: &Env) -> Result<String, CniError> {
    let subnet_env = files::read_subnet_env(&conf.subnet_file)?;
    let config = delegate::build(conf, &subnet_env)?;
    // Saved before the delegate runs: if it fails half-way, the runtime's DEL must still find
    // exactly what ADD asked for, even if subnet.env has changed by then.
    files::save(&conf.data_dir, &args.container_id, &config)?;
    let out = call(args, conf, config, env)?;
    match serde_json::from_str::<Value>(&out) {
        Ok(Value::Object(_)) => Ok(out),
        _ => Err(CniError::Decode {
            what: "the delegate's result".into(),
            problem: format!("it is not a JSON object: {out:?}"),
        }),
    }
}

/// DEL must succeed when there is nothing (left) to delete: runtimes repeat it until it does.
fn del(args: &CniArgs, conf: &NetConf, env: &Env) -> Result<String, CniError> {
    let saved = files::load(&conf.data_dir, &args.container_id).or_else(|| {
        // No saved config (deleted by hand, or the ADD never got that far): rebuild it, so
        // host-local still releases the address if one was taken.
        let subnet_env = files::read_subnet_env(&conf.subnet_file).ok()?;
        delegate::build(conf, &subnet_env).ok()
    });
    let Some(config) = saved else {
        return Ok(String::new());
    };
    call(args, conf, config, env)?;
    // Removed only after the delegate succeeded, so a retried DEL still has it.
    files::remove(&conf.data_dir, &args.container_id)?;
    Ok(String::new())
}

fn check(args: &CniArgs, conf: &NetConf, env: &Env) -> Result<String, CniError> {
    let config = files::load(&conf.data_dir, &args.container_id).ok_or_else(|| CniError::UnknownContainer {
        id: args.container_id.clone(),
        hint: format!(
            "{} holds no config for it: it was not added with this network config's dataDir, or was deleted",
            files::saved_path(&conf.data_dir, &args.container_id).display()
        ),
    })?;
    call(args, conf, config, env)?;
    Ok(String::new())
}

/// Runs the delegate named by `config` for this call.
pub(super) fn call(args: &CniArgs, conf: &NetConf, config: Value, env: &Env) -> Result<String, CniError> {
    let plugin = config
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or(delegate::DEFAULT_TYPE)
        .to_string();
    let binary = exec::find_plugin(&plugin, &args.path).ok_or_else(|| {
        let dirs: Vec<String> = args.path.iter().map(|d| d.display().to_string()).collect();
        CniError::invalid_env(
            "CNI_PATH",
            format!(
                "({}) holds no delegate plugin {plugin:?}: install the standard CNI plugins (Debian: \
                 containernetworking-plugins, in /usr/lib/cni) and list their directory in the runtime's CNI bin path",
                dirs.join(":")
            ),
        )
    })?;
    exec::run(&plugin, &binary, env, &delegate::for_call(config, conf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const CONF: &[u8] = br#"{"cniVersion":"1.0.0","name":"weft","type":"weft-cni"}"#;

    #[test]
    fn version_needs_nothing_else() {
        assert_eq!(plan(&env(&[("CNI_COMMAND", "VERSION")]), b"").unwrap(), Plan::Version);
        let v: Value = serde_json::from_str(&execute(&Plan::Version, &Env::new()).unwrap()).unwrap();
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
        );
    }

    #[test]
    fn environment_is_checked_before_the_config() {
        let e = plan(&env(&[("CNI_COMMAND", "ADD")]), b"junk").unwrap_err();
        assert_eq!(e.code(), 4);
    }

    #[test]
    fn check_needs_0_4_0() {
        let e = env(&[
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ]);
        let err = plan(&e, br#"{"cniVersion":"0.3.1","name":"weft"}"#).unwrap_err();
        assert_eq!(err.code(), 1);
        assert!(matches!(plan(&e, CONF), Ok(Plan::Call { .. })));
    }

    #[test]
    fn del_with_nothing_saved_and_no_subnet_env_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"weft","subnetFile":"{0}/none","dataDir":"{0}/data"}}"#,
            dir.path().display()
        );
        // CNI_PATH is an empty directory: had the plugin tried to run a delegate, it would fail.
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", &dir.path().display().to_string()),
        ]);
        let p = plan(&e, conf.as_bytes()).unwrap();
        assert_eq!(execute(&p, &e).unwrap(), "");
    }
}
