//! `--config FILE`: every agent flag can also come from a TOML file, keyed by the flag's long
//! name (`subnet-lease-ttl = "1h"`, `iface = ["eth0", "eth1"]`). Precedence: flags > environment
//! > file > defaults. Unknown keys are an error naming the key.

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::Path;

/// Flags that make no sense in the file: the file itself, and one-shot actions (a `cleanup`
/// left in the file would tear the host's overlay down at every start).
const NOT_IN_FILE: &[&str] = &["config", "print-config", "help", "version", "cleanup", "release"];

/// Flags whose values are never printed.
const SECRET: &[&str] = &["etcd-password"];

/// The result of layering: final matches, and which flags the file supplied.
pub struct Layered {
    pub matches: ArgMatches,
    pub from_file: BTreeSet<String>,
}

/// Parses `args` (the command line after the subcommand) with `cmd`, filling in from `file` every
/// flag that neither the command line nor the environment set.
pub fn layer(cmd: Command, args: &[OsString], file: Option<&Path>) -> Result<Layered> {
    let prog: OsString = cmd.get_name().into();
    let argv = || std::iter::once(prog.clone()).chain(args.iter().cloned());
    let first = cmd.clone().try_get_matches_from(argv())?;
    let Some(path) = file else {
        return Ok(Layered {
            matches: first,
            from_file: BTreeSet::new(),
        });
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;

    // Long name → (id, whether the flag takes a value). A switch (`--ip-masq`) takes none; a
    // boolean option (`--vxlan-peer-filter true|false`) does: `true`/`false` mean different
    // command lines for the two.
    let ids: BTreeMap<String, (String, bool)> = cmd
        .get_arguments()
        .filter_map(|a| {
            a.get_long()
                .map(|l| (l.to_string(), (a.get_id().to_string(), a.get_action().takes_values())))
        })
        .filter(|(l, _)| !NOT_IN_FILE.contains(&l.as_str()))
        .collect();
    let mut injected: Vec<OsString> = Vec::new();
    let mut from_file = BTreeSet::new();
    for (key, value) in &table {
        if NOT_IN_FILE.contains(&key.as_str()) {
            bail!(
                "{}: `{key}` cannot be set in a config file; give it on the command line",
                path.display()
            );
        }
        let Some((id, takes_value)) = ids.get(key) else {
            bail!(
                "{}: unknown key `{key}` (keys are the agent's flag names, e.g. `subnet-lease-ttl`)",
                path.display()
            );
        };
        if matches!(
            first.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue; // flags and environment win over the file
        }
        let values: Vec<&toml::Value> = match value {
            toml::Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        for v in values {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) if *takes_value => b.to_string(),
                toml::Value::Boolean(true) => {
                    injected.push(format!("--{key}").into());
                    continue;
                }
                toml::Value::Boolean(false) => continue,
                other => bail!(
                    "{}: `{key}` = {other}: expected a string, number, boolean or list",
                    path.display()
                ),
            };
            injected.push(format!("--{key}={text}").into());
        }
        from_file.insert(id.clone());
    }
    let merged = std::iter::once(prog).chain(injected).chain(args.iter().cloned());
    let matches = cmd
        .try_get_matches_from(merged)
        .with_context(|| format!("applying {}", path.display()))?;
    Ok(Layered { matches, from_file })
}

/// `key = value  # source` for every flag: the effective configuration.
pub fn render(cmd: &Command, layered: &Layered) -> String {
    let mut out = String::new();
    for arg in cmd.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if NOT_IN_FILE.contains(&long) {
            continue;
        }
        let source = if layered.from_file.contains(id) {
            "file"
        } else {
            match layered.matches.value_source(id) {
                Some(ValueSource::CommandLine) => "flag",
                Some(ValueSource::EnvVariable) => "env",
                Some(ValueSource::DefaultValue) => "default",
                _ => "unset",
            }
        };
        let values: Vec<String> = layered
            .matches
            .get_raw(id)
            .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        // Booleans print bare, so that the output, pasted into a config file, means the same.
        let boolean = !arg.get_action().takes_values()
            || arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set()) // `--ip-masq` also takes yes/no/1/0, hidden
                .map(|v| v.get_name())
                .eq(["true", "false"]);
        let shown = if SECRET.contains(&long) && !values.is_empty() {
            "\"****\"".to_string()
        } else if boolean && values.len() == 1 {
            // As clap reads it (`WEFT_IP_MASQ=1` is true), so that the line is valid TOML.
            use clap::builder::TypedValueParser;
            clap::builder::BoolishValueParser::new()
                .parse_ref(cmd, Some(arg), std::ffi::OsStr::new(&values[0]))
                .map_or_else(|_| values[0].clone(), |on| on.to_string())
        } else if values.len() == 1 && !matches!(arg.get_action(), clap::ArgAction::Append) {
            format!("{:?}", values[0])
        } else if values.is_empty() && source == "unset" {
            "(unset)".to_string()
        } else {
            format!("{values:?}")
        };
        out.push_str(&format!("{long} = {shown}  # {source}\n"));
    }
    out
}
