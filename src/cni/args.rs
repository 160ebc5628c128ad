//! The runtime's side of the call: the `CNI_*` environment variables (CNI spec 1.0, "Parameters").

use super::error::CniError;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The environment a plugin was started with (variable → value).
pub type Env = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

impl Command {
    pub fn from_env(env: &Env) -> Result<Command, CniError> {
        match env.get("CNI_COMMAND").map(String::as_str) {
            None | Some("") => Err(CniError::invalid_env(
                "CNI_COMMAND",
                "is not set: weft-cni is a CNI plugin, run by a container runtime with CNI_COMMAND=ADD, DEL, CHECK or VERSION",
            )),
            Some("ADD") => Ok(Command::Add),
            Some("DEL") => Ok(Command::Del),
            Some("CHECK") => Ok(Command::Check),
            Some("VERSION") => Ok(Command::Version),
            Some(other) => Err(CniError::invalid_env(
                "CNI_COMMAND",
                format!("is {other:?}, which weft-cni does not know: use ADD, DEL, CHECK or VERSION"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
        }
    }
}

/// The parameters of an ADD, DEL or CHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniArgs {
    pub command: Command,
    pub container_id: String,
    /// Required for ADD and CHECK; the spec lets a runtime omit it on DEL (the namespace may be gone).
    pub netns: Option<String>,
    pub ifname: String,
    /// The directories searched for the delegate plugin.
    pub path: Vec<PathBuf>,
}

impl CniArgs {
    pub fn from_env(command: Command, env: &Env) -> Result<CniArgs, CniError> {
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let container_id = get("CNI_CONTAINERID").ok_or_else(|| {
            CniError::invalid_env(
                "CNI_CONTAINERID",
                "is not set: the runtime must pass the container's ID",
            )
        })?;
        validate_container_id(&container_id)?;
        let netns = get("CNI_NETNS");
        if netns.is_none() && command != Command::Del {
            return Err(CniError::invalid_env(
                "CNI_NETNS",
                format!(
                    "is not set: {} needs the path of the container's network namespace (e.g. /run/netns/NAME)",
                    command.as_str()
                ),
            ));
        }
        let ifname = get("CNI_IFNAME").ok_or_else(|| {
            CniError::invalid_env(
                "CNI_IFNAME",
                "is not set: the runtime must name the interface to create in the container (e.g. eth0)",
            )
        })?;
        validate_ifname(&ifname)?;
        let path: Vec<PathBuf> = get("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect();
        if path.is_empty() {
            return Err(CniError::invalid_env(
                "CNI_PATH",
                "is not set: it must list the directories holding the CNI plugins (e.g. /opt/cni/bin:/usr/lib/cni)",
            ));
        }
        Ok(CniArgs {
            command,
            container_id,
            netns,
            ifname,
            path,
        })
    }
}

/// The spec's rule (alphanumeric first, then alphanumerics, `_`, `.`, `-`). It also matters to us:
/// the ID names a file in dataDir, so it must not be able to climb out of it.
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(CniError::invalid_env(
            "CNI_CONTAINERID",
            format!("is {id:?}: a container ID may hold only letters, digits, '_', '.' and '-', and must start with a letter or digit"),
        ))
    }
}

/// The kernel's rule for interface names (at most 15 bytes, no '/', no whitespace, not . or ..).
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let ok = name.len() <= 15
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(CniError::invalid_env(
            "CNI_IFNAME",
            format!("is {name:?}, not a valid interface name: use at most 15 characters without '/', ':' or spaces"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn full() -> Env {
        env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-123"),
            ("CNI_NETNS", "/run/netns/pod"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
        ])
    }

    #[test]
    fn parses_a_full_environment() {
        let e = full();
        let a = CniArgs::from_env(Command::from_env(&e).unwrap(), &e).unwrap();
        assert_eq!(a.command, Command::Add);
        assert_eq!(a.container_id, "abc-123");
        assert_eq!(a.netns.as_deref(), Some("/run/netns/pod"));
        assert_eq!(
            a.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    #[test]
    fn missing_or_bad_variables_are_code_4() {
        assert_eq!(Command::from_env(&env(&[])).unwrap_err().code(), 4);
        assert_eq!(Command::from_env(&env(&[("CNI_COMMAND", "GC")])).unwrap_err().code(), 4);
        for (var, value) in [
            ("CNI_CONTAINERID", ""),
            ("CNI_CONTAINERID", "../../etc/passwd"),
            ("CNI_CONTAINERID", "-x"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", ""),
            ("CNI_IFNAME", "a-very-long-interface"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_PATH", ""),
        ] {
            let mut e = full();
            e.insert(var.into(), value.into());
            let err = CniArgs::from_env(Command::Add, &e).unwrap_err();
            assert_eq!(err.code(), 4, "{var}={value:?}: {err}");
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }

    #[test]
    fn del_may_omit_the_namespace() {
        let mut e = full();
        e.remove("CNI_NETNS");
        assert_eq!(CniArgs::from_env(Command::Del, &e).unwrap().netns, None);
        assert!(CniArgs::from_env(Command::Check, &e).is_err());
    }
}
