//! `vouch-backend`: the Vouch backend service and its operator CLI
//! ([`cli`]).

#![deny(clippy::unwrap_used, clippy::expect_used)]

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", vouch_host::report::one_line(&*e));
            std::process::ExitCode::FAILURE
        }
    }
}
