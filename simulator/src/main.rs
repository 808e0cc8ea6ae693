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
    /// Runs a scenario: a fleet of peripherals and gateways on the real
    /// gateway and backend code, the BLE radio modelled, adversaries in the
    /// mix. Prints a summary table; writes the JSON report and an SVG plot
    /// when asked.
    Run(RunArgs),
    /// Lists the built-in scenarios.
    List,
    /// Vouch against mutual TLS (rustls), EDHOC (lakers) and Noise (snow),
    /// measured side by side in one run: CPU per party, bytes on air, round
    /// trips, and the backend's vouches per second over HTTPS against the
    /// raw crypto bound. rustls runs in every configuration (ring and
    /// aws-lc-rs; Ed25519 and P-256; X25519 and X25519MLKEM768), in memory
    /// and over loopback TCP, and every ratio against it takes the best one.
    /// Prints Markdown tables; build with --release.
    Bench {
        /// Also write the full report as JSON to this file.
        #[arg(long)]
        report: Option<std::path::PathBuf>,
        /// A smoke run (few iterations; for CI and debug builds).
        #[arg(long)]
        quick: bool,
        /// Handshakes per row (default 1000, or 20 with --quick).
        #[arg(long)]
        iterations: Option<usize>,
        /// Vouches per throughput mode (default 6000, or 64 with --quick).
        #[arg(long)]
        vouches: Option<usize>,
        /// Only the backend: its vouches per second over HTTPS against the
        /// raw crypto bound and a rustls server (no handshake or peer tables).
        #[arg(long)]
        backend_only: bool,
        /// Run the backend throughput on PostgreSQL: a fresh database is made
        /// on this server for the run and dropped after (default: SQLite in a
        /// temporary directory).
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match command(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            vouch_host::report::fatal(&*e);
            std::process::ExitCode::FAILURE
        }
    }
}

async fn command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo { devices } => vouch_simulator::demo(devices).await,
        Command::Run(args) => run(args).await,
        Command::List => {
            for (name, text) in vouch_simulator::scenario::BUILTINS {
                let s = vouch_simulator::Scenario::parse(text, name)?;
                println!("{name:<20} {}", s.description);
            }
            Ok(())
        }
        Command::Bench {
            report,
            quick,
            iterations,
            vouches,
            backend_only,
            database_url,
        } => {
            let opts = vouch_simulator::bench::BenchOptions {
                quick,
                iterations,
                vouches,
                report,
                backend_only,
                database_url,
            };
            if backend_only {
                let r = vouch_simulator::bench::run_backend(opts).await?;
                println!(
                    "{}",
                    vouch_simulator::bench::render_backend(&r.machine, &r.backend)
                );
            } else {
                let report = vouch_simulator::bench::run(opts).await?;
                println!("{}", vouch_simulator::bench::render(&report));
            }
            Ok(())
        }
    }
}

/// `vouch-sim run`.
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// A built-in scenario (`vouch-sim list`) or a TOML file.
    #[arg(long)]
    scenario: String,
    /// Peripherals (default: the scenario's).
    #[arg(long)]
    peripherals: Option<usize>,
    /// Gateways (default: the scenario's).
    #[arg(long)]
    gateways: Option<usize>,
    /// Seed of every random choice; the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// Write an SVG plot here: latency CDF and timeline, and revocation
    /// reach where the scenario revokes live sessions.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// How gateways reach the backend: `inproc` (its router, in-process) or
    /// `https` (the real HTTPS service on loopback, mutual TLS).
    #[arg(long, default_value = "inproc")]
    backend: String,
    /// A PostgreSQL server URL (a database is created for the run and
    /// dropped after); SQLite in a temporary directory when absent.
    #[arg(long, env = "VOUCH_SIM_DATABASE_URL")]
    database_url: Option<String>,
    /// Backend instances on the one database (in-process): gateway g talks
    /// to instance g mod N, and revocations are made on instance 0, so the
    /// report's revocation reach is measured across instances.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    backend_instances: u16,
    /// Logs as JSON lines on stderr (filter from VOUCH_LOG, default error).
    #[arg(long)]
    json_logs: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // Quiet by default: the run prints its own progress and summary.
    let format = if args.json_logs {
        vouch_host::logging::Format::Json
    } else {
        vouch_host::logging::Format::Text
    };
    vouch_host::logging::init(format, "error")?;
    let scenario = vouch_simulator::Scenario::load(&args.scenario)?;
    let out = vouch_simulator::run(vouch_simulator::RunOptions {
        scenario,
        peripherals: args.peripherals,
        gateways: args.gateways,
        seed: args.seed,
        backend: args.backend.parse()?,
        database_url: args.database_url,
        backend_instances: usize::from(args.backend_instances),
        progress: !args.quiet,
    })
    .await?;
    print!("{}", out.report.table());
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&out.report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing the report to {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, vouch_simulator::plot::svg(&out)?)
            .with_context(|| format!("writing the plot to {}", path.display()))?;
        println!("plot written to {}", path.display());
    }
    Ok(())
}
