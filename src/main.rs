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
    // The agent is one task reacting to events: a single-threaded runtime keeps it small.
    // The lab drives many namespaces and processes at once and wants the threads.
    let rt = match cli.command {
        Command::Agent(_) => {
            one_malloc_arena();
            tokio::runtime::Builder::new_current_thread().enable_all().build()?
        }
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
    };
    rt.block_on(async move {
        match cli.command {
            Command::Agent(args) => cli::agent::run(*args).await,
            Command::Net(cmd) => cli::net::run(*cmd).await,
            Command::Endpoint(cmd) => cli::endpoint::run(*cmd).await,
            Command::Status(args) => cli::status::run(*args).await,
            Command::Lab(cmd) => cli::lab::run(cmd).await,
        }
    })
}

/// The agent's work is on one thread; glibc would still give each blocking helper thread (store
/// calls, `nft`) an arena of its own, where memory freed after a large sync stays resident.
/// One arena keeps the agent's footprint to what it holds (docs/benchmarks.md, footprint).
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tuning parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
