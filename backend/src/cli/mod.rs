//! The operator CLI: one file per group of verbs. Each verb works on the
//! store directly (the SQLite file in the data directory, or
//! `--database-url`) through the same library functions the admin API calls
//! ([`vouch_backend::registry`]); see backend/README.md for why. With
//! `--url`, the registry verbs run through the admin API of a backend
//! elsewhere instead ([`remote`], a [`Target`]), with an operator's token,
//! and print the same output: both modes print the admin API's JSON shapes.
//!
//! | file | verbs |
//! |---|---|
//! | `init.rs` | `init` |
//! | `serve.rs` | `serve` |
//! | `registry.rs` | `enroll`, `list`, `show`, `activate`, `suspend`, `reinstate`, `revoke`, `associate`, `policy` |
//! | `import.rs` | `import` |
//! | `audit.rs` | `audit query`, `audit verify`, `audit prune` |
//! | `lockouts.rs` | `lockouts list`, `lockouts clear` |
//! | `keys.rs` | `keys list`, `keys rotate`, `keys purge`, `export-anchor` |
//! | `server_cert.rs` | `server-cert reissue` |
//! | `backup.rs` | `backup`, `restore` |
//! | `operators.rs` | `operators`, `tokens`, `whoami` |
//! | `remote.rs` | the admin API client of `--url` |

mod audit;
mod backup;
mod import;
mod init;
mod keys;
mod lockouts;
mod operators;
mod output;
mod registry;
mod remote;
mod serve;
mod server_cert;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use vouch_backend::config::Config;
use vouch_backend::datadir;
use vouch_backend::error::AppError;
use vouch_backend::store::Store;

/// The actor the local CLI records in the audit log: `cli:` and the user
/// running it (whoever has a shell on the backend's host and its data
/// directory acts with every right; the audit log says who it was).
fn local_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .or_else(user_of_uid)
        .filter(|u| vouch_backend::access::valid_operator_name(u));
    format!("cli:{}", user.as_deref().unwrap_or("unknown"))
}

/// The name of this process's real user, from `/proc/self/status` and
/// `/etc/passwd` (a service's environment often has no `USER`).
fn user_of_uid() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_owned();
    let passwd = std::fs::read_to_string("/etc/passwd").ok();
    let name = passwd.as_deref().and_then(|p| {
        p.lines().find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)? == uid).then(|| name.to_owned())
        })
    });
    Some(name.unwrap_or(format!("uid-{uid}")))
}

#[derive(Parser, Debug)]
#[command(
    name = "vouch-backend",
    version,
    about = "The Vouch backend: registry, vouch issuing, admin API and operator CLI",
    long_about = "The Vouch backend: registry of peripherals and gateways, vouch issuing over mutual TLS, \
revocation feed, audit log.\n\nStart with `vouch-backend init --data-dir DIR`, then `vouch-backend serve --data-dir DIR`. \
Every other command works on the registry directly (SQLite in DIR, or --database-url) and is recorded in the audit log."
)]
pub(crate) struct Cli {
    /// The data directory (keys, CA, admin token hash, SQLite database).
    #[arg(
        long,
        global = true,
        env = "VOUCH_DATA_DIR",
        default_value = "./vouch-data"
    )]
    data_dir: PathBuf,
    /// Use this database instead of the SQLite file in the data directory
    /// (postgres://user:pass@host/db).
    #[arg(long, global = true, env = "VOUCH_DATABASE_URL")]
    database_url: Option<String>,
    /// The settings file, for every verb (default: DATA_DIR/config.toml if
    /// present; the Debian package's is /etc/vouch/backend.toml). Its
    /// `database_url` is the registry unless --database-url says otherwise.
    #[arg(long, global = true, env = "VOUCH_CONFIG")]
    config: Option<PathBuf>,
    /// Run the verb through the admin API of the backend at this URL
    /// (https://HOST:8443) instead of opening its store here: from any
    /// machine, with an operator's token, refused above its role. The
    /// registry verbs work this way; init, serve, keys, server-cert, backup,
    /// restore and audit prune need the backend's host.
    #[arg(long, global = true, env = "VOUCH_URL")]
    url: Option<String>,
    /// With --url: the file holding the operator's API token (mode 0600);
    /// without it, the token is read from VOUCH_TOKEN.
    #[arg(long, global = true, env = "VOUCH_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// With --url: the backend CA to pin (the `ca.pem` of its data
    /// directory); the server's certificate must chain to it and nothing else.
    #[arg(long, global = true, env = "VOUCH_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Print the result as one JSON document (lists: `{"items": [...],
    /// "next_cursor": ...}`, as the admin API answers) instead of a table or
    /// `field: value` lines.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the backend's keys, CA, server certificate, admin token and database (idempotent).
    Init {
        /// Extra DNS names or IP addresses for the server certificate (besides localhost, 127.0.0.1, ::1).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// Run the HTTPS service.
    Serve(serve::ServeArgs),
    /// Enroll one peripheral or gateway.
    #[command(subcommand)]
    Enroll(registry::Enroll),
    /// Enroll peripherals in bulk from CSV or NDJSON (id, public_key, group, attributes).
    Import(import::ImportArgs),
    /// List peripherals or gateways (cursor pagination).
    List(registry::ListArgs),
    /// Show one peripheral (by id) or gateway (by key).
    Show(registry::ShowArgs),
    /// pending → active.
    Activate(registry::Subject),
    /// active → suspended.
    Suspend(registry::Subject),
    /// suspended → active.
    Reinstate(registry::Subject),
    /// Revoke for good (final).
    Revoke(registry::Subject),
    /// Allow peripherals to attach to gateways: add a policy rule.
    Associate(registry::AssociateArgs),
    /// List or remove policy rules.
    #[command(subcommand)]
    Policy(registry::PolicyCmd),
    /// Query or verify the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// List or lift lockouts.
    #[command(subcommand)]
    Lockouts(lockouts::LockoutCmd),
    /// Print the provisioning bundle for peripherals: the current anchors and the last anchor-update serial (JSON).
    #[command(
        long_about = "Print the provisioning bundle new peripherals are flashed with \
(`vouch-peripheral provision --anchor FILE`): the anchors a peripheral holds once it applied every \
anchor update this backend issued (the current key last, as the primary), and the serial of the last \
update. A device flashed with it starts current; export it again after every `keys rotate` and \
`keys retire`."
    )]
    ExportAnchor(keys::ExportAnchorArgs),
    /// Manage the backend's key pairs: list, rotate, retire, purge (SPEC.md §7.7).
    #[command(subcommand, long_about = keys::KEYS_HELP)]
    Keys(keys::KeysCmd),
    /// Reissue the server certificate (new names, fresh validity) from the same CA.
    #[command(subcommand)]
    ServerCert(server_cert::ServerCertCmd),
    /// Named operators with roles: list, add (prints its first token), remove.
    #[command(subcommand, long_about = operators::OPERATORS_HELP)]
    Operators(operators::OperatorsCmd),
    /// Operators' API tokens: list, create, rotate, revoke (a token is shown once).
    #[command(subcommand)]
    Tokens(operators::TokensCmd),
    /// Who the token of --url belongs to, and its role (locally: the shell user, every right).
    Whoami,
    /// Back the data directory up while the backend serves (SQLite registry included).
    #[command(long_about = backup::BACKUP_HELP)]
    Backup(backup::BackupArgs),
    /// Restore a backup into a new data directory and verify its audit chain.
    #[command(long_about = backup::RESTORE_HELP)]
    Restore(backup::RestoreArgs),
    #[command(flatten)]
    Docs(vouch_host::cli::Docs),
}

impl Command {
    /// The verb's name if it works on the backend's host only.
    fn host_only(&self) -> Option<&'static str> {
        Some(match self {
            Command::Init { .. } => "init",
            Command::Serve(_) => "serve",
            Command::Keys(_) => "keys",
            Command::ServerCert(_) => "server-cert",
            Command::Backup(_) => "backup",
            Command::Restore(_) => "restore",
            Command::Audit(audit::AuditCmd::Prune { .. }) => "audit prune",
            _ => return None,
        })
    }
}

impl Cli {
    /// Whether the global `--json` was given.
    pub(crate) fn json(&self) -> bool {
        self.json
    }
}

/// Runs one command.
pub(crate) async fn run(cli: Cli) -> Result<ExitCode> {
    if cli.url.is_some() {
        if let Some(verb) = cli.command.host_only() {
            bail!(
                "`{verb}` works on the backend's host only (its data directory); run it there, without --url"
            );
        }
    }
    match &cli.command {
        Command::Init { sans } => init::init(&cli, sans).await,
        Command::Serve(args) => serve::serve(&cli, args).await.map(|()| ExitCode::SUCCESS),
        Command::Enroll(e) => registry::enroll(&cli, e).await,
        Command::Import(args) => import::import(&cli, args).await,
        Command::List(args) => registry::list(&cli, args).await,
        Command::Show(args) => registry::show(&cli, args).await,
        Command::Activate(t) => registry::transition(&cli, t, "activate").await,
        Command::Suspend(t) => registry::transition(&cli, t, "suspend").await,
        Command::Reinstate(t) => registry::transition(&cli, t, "reinstate").await,
        Command::Revoke(t) => registry::transition(&cli, t, "revoke").await,
        Command::Associate(args) => registry::associate(&cli, args).await,
        Command::Policy(cmd) => registry::policy(&cli, cmd).await,
        Command::Audit(cmd) => audit::audit(&cli, cmd).await,
        Command::Lockouts(cmd) => lockouts::lockouts(&cli, cmd).await,
        Command::ExportAnchor(args) => keys::export_anchor(&cli, args).await,
        Command::Keys(cmd) => keys::keys(&cli, cmd).await,
        Command::ServerCert(cmd) => server_cert::server_cert(&cli, cmd),
        Command::Operators(cmd) => operators::operators(&cli, cmd).await,
        Command::Tokens(cmd) => operators::tokens(&cli, cmd).await,
        Command::Whoami => operators::whoami(&cli).await,
        Command::Backup(args) => backup::backup(&cli, args).await,
        Command::Restore(args) => backup::restore(&cli, args).await,
        Command::Docs(docs) => {
            docs.print(<Cli as clap::CommandFactory>::command())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The settings of the commands other than `serve` (which also takes
/// `--config` and flags): `DATA_DIR/config.toml`, then the environment.
fn settings(cli: &Cli) -> Result<Config> {
    let config = match &cli.config {
        Some(path) => Config::load(path, true)?,
        None => Config::load(&cli.data_dir.join(datadir::files::CONFIG), false)?,
    }
    .apply_env(std::env::vars())?;
    config.validate()?;
    Ok(config)
}

/// A time in ms since the Unix epoch as RFC 3339 (UTC, seconds).
fn format_ms(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn open_store(cli: &Cli) -> Result<Store> {
    // --database-url (or its variable), else the settings file's: a verb
    // must open the registry `serve` uses.
    let url = match cli.database_url.clone().or(settings(cli)?.database_url) {
        Some(u) => u,
        None => {
            if !datadir::is_initialized(&cli.data_dir) {
                bail!(
                    "{} is not initialized: run `vouch-backend init --data-dir {}`",
                    cli.data_dir.display(),
                    cli.data_dir.display()
                );
            }
            datadir::sqlite_url(&cli.data_dir)
        }
    };
    Store::open(&url).await.context("cannot open the database")
}

/// Where a registry verb runs.
pub(super) enum Target {
    /// On the store, from the backend's host.
    Local {
        /// The registry.
        store: Store,
        /// Who the audit log names ([`local_actor`]).
        actor: String,
    },
    /// Through the admin API of `--url`.
    Remote(remote::Admin),
}

impl Target {
    /// Closes the store's connections (nothing to do remotely).
    async fn close(self) {
        if let Target::Local { store, .. } = self {
            store.close().await;
        }
    }
}

/// Opens the registry a verb works on: the admin API of `--url`, else the
/// store.
async fn open_target(cli: &Cli) -> Result<Target> {
    match &cli.url {
        Some(url) => {
            let ca = cli.ca_cert.as_deref().context(
                "--url needs --ca-cert FILE (or VOUCH_CA_CERT): the backend CA to pin, ca.pem of its data directory",
            )?;
            let token = remote::read_token(cli.token_file.as_deref())?;
            Ok(Target::Remote(remote::Admin::new(url, token, ca)?))
        }
        None => Ok(Target::Local {
            store: open_store(cli).await?,
            actor: local_actor(),
        }),
    }
}

/// An error of the library as the CLI prints it: its message and stable
/// code, as the admin API would answer it.
fn api(e: impl Into<AppError>) -> anyhow::Error {
    let e = e.into();
    anyhow::anyhow!("{} ({})", e.message, e.code)
}

/// A key given on the command line: the value, `@FILE`'s contents, or
/// with `@-` standard input's.
fn read_key_arg(s: &str) -> Result<String> {
    match s.strip_prefix('@') {
        Some("-") => std::io::read_to_string(std::io::stdin().lock())
            .context("cannot read the key from standard input"),
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {path}")),
        None => Ok(s.to_owned()),
    }
}
