//! `weft-cni`: the CNI plugin binary. All logic is in `weft::cni`; this maps its outcome to the
//! spec's output (result or error JSON on stdout, non-zero exit on error).

use std::io::Read;
use std::process::ExitCode;
use weft::cni::{self, CniError, Env};

fn main() -> ExitCode {
    // Lossy: a non-UTF-8 variable is not one of ours, and the delegate gets the same lossy copy.
    let env: Env = std::env::vars_os()
        .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
        .collect();
    let mut stdin = Vec::new();
    // VERSION may come without a config; don't wait on a stdin nobody writes to.
    if env.get("CNI_COMMAND").map(String::as_str) != Some("VERSION") {
        if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
            let err = CniError::io("read", "stdin", e);
            println!("{}", err.to_json(cni::CNI_VERSION));
            return ExitCode::FAILURE;
        }
    }
    match cni::run(&env, &stdin) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", e.to_json(&cni::reply_version(&stdin)));
            ExitCode::FAILURE
        }
    }
}
