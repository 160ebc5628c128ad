//! The CNI plugin's pure core, end to end without I/O: the runtime's environment and stdin
//! ([`plugin::plan`]), the delegate config built from a plan and a `subnet.env`, the error reply,
//! and the reading of a delegate's reply.
//!
//! Input: up to four NUL-separated sections (JSON and env files hold no NUL, so seeds stay
//! readable): `CNI_*` variables as `K=V` lines, the network config on stdin, a `subnet.env`, and
//! a delegate's stdout (taken as a failed delegate's reply when non-empty).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Output};
use weft::cni::plugin::{plan, Plan};
use weft::cni::{delegate, exec, netconf, reply_version, Env, SUPPORTED_VERSIONS};
use weft::subnet_env::SubnetEnv;

const SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=10.0.37.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

fuzz_target!(|data: &[u8]| {
    let mut sections = data.splitn(4, |&b| b == 0);
    let env_text = String::from_utf8_lossy(sections.next().unwrap_or_default());
    let stdin = sections.next().unwrap_or_default();
    let subnet_env = SubnetEnv::parse(&String::from_utf8_lossy(sections.next().unwrap_or_default()))
        .or_else(|| SubnetEnv::parse(SUBNET_ENV))
        .expect("the fixed subnet.env is valid");
    let delegate_stdout = sections.next().unwrap_or_default();

    // The binary turns the process environment into this map the same way (lossily).
    let env: Env = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();

    match plan(&env, stdin) {
        Ok(Plan::Version) => assert_eq!(env.get("CNI_COMMAND").map(String::as_str), Some("VERSION")),
        Ok(Plan::Call { args, conf }) => {
            // What ends up in file names and argv must have passed validation.
            assert!(
                !args.container_id.is_empty() && !args.container_id.contains('/'),
                "{args:?}"
            );
            assert!(args.container_id != "." && args.container_id != "..", "{args:?}");
            assert!(!args.ifname.is_empty() && args.ifname.len() <= 15, "{args:?}");
            assert!(!args.path.is_empty(), "{args:?}");
            assert!(SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()), "{conf:?}");
            assert!(
                conf.subnet_file.is_absolute() && conf.data_dir.is_absolute(),
                "{conf:?}"
            );

            // A plan has passed delegate::validate, so a delegate config can always be built.
            let built = delegate::build(&conf, &subnet_env).expect("a valid plan builds a delegate config");
            let ty = built["type"].as_str().expect("the delegate has a type");
            assert!(
                !ty.is_empty() && !ty.contains('/') && ty != "." && ty != "..",
                "{built}"
            );
            assert_eq!(built["name"], Value::from(conf.name.clone()));
            assert!(built["ipam"].is_object(), "{built}");
            let call = delegate::for_call(built, &conf);
            assert_eq!(call["cniVersion"], Value::from(conf.cni_version.clone()));
            assert_eq!(call.get("prevResult"), conf.prev_result.as_ref());
        }
        Err(e) => {
            // The reply on stdout must be the spec's JSON error object, in a version we speak.
            let version = reply_version(stdin);
            assert!(SUPPORTED_VERSIONS.contains(&version.as_str()));
            let reply: Value = serde_json::from_str(&e.to_json(&version)).expect("error reply is JSON");
            assert_eq!(reply["code"], Value::from(e.code()));
            assert!(reply["msg"].is_string());
        }
    }
    let _ = netconf::peek_version(stdin);

    if !delegate_stdout.is_empty() {
        let out = Output {
            status: ExitStatus::from_raw(1 << 8),
            stdout: delegate_stdout.to_vec(),
            stderr: delegate_stdout.to_vec(),
        };
        let e = exec::outcome("bridge", &out).expect_err("a failed delegate is an error");
        let reply: Value = serde_json::from_str(&e.to_json("1.0.0")).expect("error reply is JSON");
        assert!(reply["code"].is_u64());
    }
});
