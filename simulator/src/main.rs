//! `vouch-sim`: simulated Vouch fleets.

use clap::{Parser, Subcommand};

/// Simulated Vouch fleets against the real backend and gateway code.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A real backend (HTTPS, SQLite in a temporary directory), a real gateway
    /// and a few real peripherals in one process: enrollment, handshakes,
    /// data both ways, a revocation, and a resumption with the backend down.
    Demo {
        /// How many peripherals.
        #[arg(long, default_value_t = 3)]
        devices: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo { devices } => vouch_simulator::demo(devices).await,
    }
}
