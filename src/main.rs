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
    let cli = Cli::parse();
    if let Command::Agent(args) = cli.command {
        // The words after `agent`: the first `agent` is the subcommand (no flag comes before it).
        let argv = std::env::args_os().skip_while(|a| a != "agent").skip(1).collect();
        return cli::agent::main(*args, argv);
    }
    // The other commands drive many namespaces and processes at once and want the threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Agent(_) => unreachable!("handled above"),
            Command::Net(cmd) => cli::net::run(*cmd).await,
            Command::Endpoint(cmd) => cli::endpoint::run(*cmd).await,
            Command::Status(args) => cli::status::run(*args).await,
            Command::Lab(cmd) => cli::lab::run(cmd).await,
        }
    })
}
