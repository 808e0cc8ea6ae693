//! `server-cert reissue`: a new server certificate from the same CA.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use vouch_backend::{datadir, pki};

use super::{format_ms, Cli};

#[derive(Subcommand, Debug)]
pub(super) enum ServerCertCmd {
    /// Replace server.pem and server-key.pem with a fresh key and
    /// certificate signed by the same CA (ca.pem is not touched, so gateways
    /// pinning it keep working). Restart every `serve` to use it.
    Reissue(ReissueArgs),
}

#[derive(Args, Debug)]
pub(super) struct ReissueArgs {
    /// DNS names or IP addresses for the new certificate, besides localhost,
    /// 127.0.0.1 and ::1 (repeatable). Without any, the current
    /// certificate's names are kept.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// Validity of the new certificate, in days (default: as at `init`,
    /// ten years).
    #[arg(long, default_value_t = default_days())]
    days: u32,
}

fn default_days() -> u32 {
    u32::try_from(pki::DEFAULT_SERVER_LIFETIME.as_secs() / 86_400).unwrap_or(3650)
}

/// Runs a `server-cert` command.
pub(super) fn server_cert(cli: &Cli, cmd: &ServerCertCmd) -> Result<ExitCode> {
    match cmd {
        ServerCertCmd::Reissue(args) => {
            if !(1..=3650).contains(&args.days) {
                bail!("--days must be 1..=3650 (got {})", args.days);
            }
            let lifetime = Duration::from_secs(u64::from(args.days) * 86_400);
            let extra = (!args.sans.is_empty()).then_some(args.sans.as_slice());
            let done = datadir::reissue_server_cert(&cli.data_dir, extra, lifetime)?;
            println!(
                "server certificate reissued: {} and {} in {}",
                datadir::files::SERVER,
                datadir::files::SERVER_KEY,
                cli.data_dir.display()
            );
            println!("names: {}", done.sans.join(", "));
            println!("valid until: {}", format_ms(done.not_after_ms));
            println!(
                "signed by the same CA ({} unchanged): gateways keep working. \
                 Restart every `serve` instance (copy both files to each host first).",
                datadir::files::CA
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
