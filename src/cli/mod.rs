//! One file per `weft` subcommand; `anyhow` lives here, at the binary's edge.

pub mod agent;
pub mod lab;
pub mod net;
