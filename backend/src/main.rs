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
    let json = cli.json();
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        // With --json the error is a JSON document too (`{"error": "..."}`
        // on standard error), unless `serve` installed JSON logs: then it is
        // their last line.
        Err(e) if json && vouch_host::logging::installed().is_none() => {
            let error = serde_json::json!({ "error": vouch_host::report::one_line(&*e) });
            eprintln!("{error}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            vouch_host::report::fatal(&*e);
            std::process::ExitCode::FAILURE
        }
    }
}
