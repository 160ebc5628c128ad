//! `weft-agent`: the per-host agent alone (flanneld's role), with exactly `weft agent`'s flags.
//! It leaves out the store administration, status and lab commands, so the code a running agent
//! maps is smaller (docs/benchmarks.md, footprint); `weft agent` runs the same agent.

use clap::Parser;
use std::process::ExitCode;
use weft::cli::agent::AgentArgs;
use weft::cli::flanneld::go_style_args;

#[derive(Parser)]
#[command(
    name = "weft-agent",
    version,
    about = "The weft per-host agent: a flannel-compatible VXLAN overlay (same flags as `weft agent`)"
)]
struct Cli {
    #[command(flatten)]
    args: AgentArgs,
}

fn main() -> ExitCode {
    weft::cli::agent::take_flanneld_env();
    // flanneld's `-etcd-endpoints=…` (Go's one-dash form) as `--etcd-endpoints=…`.
    let argv = go_style_args(std::env::args_os().skip(1));
    let program = std::env::args_os().next().unwrap_or_else(|| "weft-agent".into());
    let cli = Cli::parse_from(std::iter::once(program).chain(argv.iter().cloned()));
    match weft::cli::agent::main(cli.args, argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
