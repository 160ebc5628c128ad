//! The `weft` command: the agent, store administration and the lab.

use anyhow::Result;
use clap::{Parser, Subcommand};
use weft::cli;

#[derive(Parser)]
#[command(name = "weft", version, about = "A flannel-compatible VXLAN overlay network agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the per-host agent (flanneld's role).
    Agent(Box<cli::agent::AgentArgs>),
    #[command(flatten)]
    Tool(Tool),
}

/// The commands other than the agent: they drive the store, namespaces and processes.
#[derive(Subcommand)]
enum Tool {
    /// Administer networks and leases in the store.
    #[command(subcommand)]
    Net(Box<cli::net::NetCommand>),
    /// Register, move and remove the endpoints of an L2 network.
    #[command(subcommand)]
    Endpoint(Box<cli::endpoint::EndpointCommand>),
    /// Show this host's overlay state (from the agent, or from the store and kernel).
    Status(Box<cli::status::StatusArgs>),
    /// Build a many-host overlay out of network namespaces on this machine.
    #[command(subcommand)]
    Lab(cli::lab::LabCommand),
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut words: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The agent's words as flanneld would take them (`-etcd-endpoints=…`, Go's one-dash form).
    let agent = words.get(1).is_some_and(|w| w == "agent");
    if agent {
        cli::agent::take_flanneld_env();
        let flags = cli::flanneld::go_style_args(words.split_off(2));
        words.extend(flags);
    }
    let tool = match Cli::parse_from(&words).command {
        Command::Agent(args) => {
            // The words after `agent`, re-read when a config file is layered in.
            return cli::agent::main(*args, words.split_off(2));
        }
        Command::Tool(tool) => tool,
    };
    // The other commands drive many namespaces and processes at once and want the threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match tool {
            Tool::Net(cmd) => cli::net::run(*cmd).await,
            Tool::Endpoint(cmd) => cli::endpoint::run(*cmd).await,
            Tool::Status(args) => cli::status::run(*args).await,
            Tool::Lab(cmd) => cli::lab::run(cmd).await,
        }
    })
}
