//! `vouch-backend`: the Vouch backend service and its operator CLI.
//!
//! The CLI works on the store directly (the SQLite file in the data directory,
//! or `--database-url`), through the same functions the admin API calls; see
//! backend/README.md for why.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use vouch_backend::config::{Config, LogFormat};
use vouch_backend::datadir::{self, DataDir, InitOutcome};
use vouch_backend::error::AppError;
use vouch_backend::import::{self, Format};
use vouch_backend::model::{PeripheralRecord, Status};
use vouch_backend::routes::admin::{
    audit_filter, enroll_gateway_with_cert, parse_transition, EnrollGateway, EnrollPeripheral,
    NewPolicy,
};
use vouch_backend::server::{self, Transport};
use vouch_backend::store::{GatewayFilter, PeripheralFilter, Store};
use vouch_backend::{app, keyring, pki, AppState};
use vouch_proto::keys::{PeripheralId, PublicKey};

/// The actor recorded in the audit log for CLI commands.
const CLI_ACTOR: &str = "cli";

#[derive(Parser, Debug)]
#[command(
    name = "vouch-backend",
    version,
    about = "The Vouch backend: registry, vouch issuing, admin API and operator CLI",
    long_about = "The Vouch backend: registry of peripherals and gateways, vouch issuing over mutual TLS, \
revocation feed, audit log.\n\nStart with `vouch-backend init --data-dir DIR`, then `vouch-backend serve --data-dir DIR`. \
Every other command works on the registry directly (SQLite in DIR, or --database-url) and is recorded in the audit log."
)]
struct Cli {
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
    Serve(ServeArgs),
    /// Enroll one peripheral or gateway.
    #[command(subcommand)]
    Enroll(Enroll),
    /// Enroll peripherals in bulk from CSV or NDJSON (id, public_key, group, attributes).
    Import {
        /// The file (`-` for standard input).
        file: PathBuf,
        /// Input format (default: from the file extension, .csv or NDJSON).
        #[arg(long, value_enum)]
        format: Option<FormatArg>,
        /// Check every row against the registry; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Rows per transaction.
        #[arg(long, default_value_t = 200)]
        batch_size: usize,
        /// Append a per-row report (NDJSON) to this file, each batch right after it committed.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// List peripherals or gateways (cursor pagination).
    List {
        /// What to list.
        #[arg(value_enum)]
        what: Kind,
        /// Only this status.
        #[arg(long)]
        status: Option<String>,
        /// Only this group.
        #[arg(long)]
        group: Option<String>,
        /// Only this site (gateways).
        #[arg(long)]
        site: Option<String>,
        /// Start after this cursor (printed at the end of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one peripheral (by id) or gateway (by key).
    Show {
        /// Peripheral or gateway.
        #[arg(value_enum)]
        what: Kind,
        /// Peripheral id (16 hex) or gateway key (64 hex).
        id: String,
    },
    /// pending → active.
    Activate(Target),
    /// active → suspended.
    Suspend(Target),
    /// suspended → active.
    Reinstate(Target),
    /// Revoke for good (final).
    Revoke(Target),
    /// Allow peripherals to attach to gateways: add a policy rule.
    Associate {
        /// `peripheral:ID`, `group:NAME` or `any`.
        #[arg(long)]
        peripheral: String,
        /// `gateway:KEY`, `group:NAME`, `site:NAME` or `any`.
        #[arg(long)]
        gateway: String,
        /// Scope: telemetry, command, app8..app31, comma-separated.
        #[arg(long, default_value = "telemetry")]
        scope: String,
        /// Session lifetime, seconds.
        #[arg(long, default_value_t = 3600)]
        session_s: u32,
        /// Resumption lifetime, seconds.
        #[arg(long, default_value_t = 86_400)]
        resumption_s: u32,
    },
    /// List or remove policy rules.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Query or verify the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// List or lift lockouts.
    #[command(subcommand)]
    Lockouts(LockoutCmd),
    /// Print the provisioning bundle for peripherals: the current anchors and the last anchor-update serial (JSON).
    #[command(
        long_about = "Print the provisioning bundle new peripherals are flashed with \
(`vouch-peripheral provision --anchor FILE`): the anchors a peripheral holds once it applied every \
anchor update this backend issued (the current key last, as the primary), and the serial of the last \
update. A device flashed with it starts current; export it again after every `keys rotate` and \
`keys retire`."
    )]
    ExportAnchor {
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Manage the backend's key pairs: list, rotate, retire, purge (SPEC.md §7.7).
    #[command(subcommand, long_about = KEYS_HELP)]
    Keys(KeysCmd),
}

const KEYS_HELP: &str =
    "Manage the backend's key pairs (the key ring) and the signed trust-anchor \
updates that move peripherals from one key to the next without re-flashing them (SPEC.md §7.7).

Each key pair has a key id (0-255, never reused). Its private halves are the files \
signing-N.pem and sealing-N.pem (mode 0600) in the data directory; its status and the signed \
updates are in the database, shared by every instance. Keys are pre-rotated: every key is created \
with its successor, and peripherals hold a commitment to that successor, so whoever steals the \
current key cannot move them to a key of its own. `init` creates key 1 (current) and key 2 (next).

  1. keys rotate        the update Rotate(N+1), signed by N+1, the key N committed to; a new key
                        N+2 becomes the next one. Gateways deliver it to peripherals in session; a
                        peripheral that applied it seals its hellos to N+1 and no longer trusts N.
                        The backend keeps serving N (it still opens hellos sealed to N and signs
                        their vouches with N): a peripheral that missed the rotation still seals to
                        N and must be able to connect to receive it.
  2. export-anchor      new devices are flashed with the new anchor and commitment.
  3. keys purge N       when no peripheral uses key N any more (audit: vouches record kid=N): stop
                        serving N on every instance and delete its private key here. A peripheral
                        that still knows only N is refused (unknown_backend_key) and must be
                        provisioned again.

The next key's private files may be kept offline (`keys list` names it) until its rotation; with \
several backend instances, copy them to every instance's data directory (each instance loads them \
within a second, no restart) before `keys rotate`, which refuses until every live instance holds \
them. A Rotate is handed to gateways only once every live instance serves its key, and keys are \
purged only in the order they became current. See backend/README.md, \"Key rotation\".";

#[derive(Subcommand, Debug)]
enum KeysCmd {
    /// List every key id: state, created, update serials, public keys (never a private key).
    #[command(
        long_about = "List every key id the backend registered: its state (next: the committed \
successor devices hold a commitment to; current; retired: replaced by a rotation, still served; \
purged), when it was created, the serials of the rotations that made it current and replaced it, \
whether its private key is in this data directory, and its public keys. Never prints a private key."
    )]
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rotate to the committed next key (signed `Rotate`), and create the key it commits to.
    #[command(
        long_about = "Reveal the committed next key (see `keys list`) to peripherals with the anchor \
update Rotate(next key, commitment to a new key), with the next serial, signed by the next key \
itself, and create the new committed key (key id = the highest ever used + 1; files signing-N.pem \
and sealing-N.pem, mode 0600). Gateways fetch the update and deliver it to peripherals in session; a \
peripheral applies it only because its held commitment names that key, seals its next hellos to it \
and no longer trusts the previous key, which stays served for peripherals that missed the rotation. \
The next key's private files must be in this data directory (bring them back if they were kept \
offline) and on every live backend instance: it refuses, naming them, while a live instance \
(one that recorded the keys it serves within `keys.instance_ttl_s`) does not hold them. Whatever \
happens, no instance hands the Rotate to gateways until every live instance serves the new key, \
and the revocation feed then tells gateways to fetch it at once."
    )]
    Rotate {
        /// Rotate even though a live instance does not hold the next key: the Rotate then waits,
        /// unseen by gateways, until every live instance serves the key (or is stopped).
        #[arg(long)]
        force: bool,
    },
    /// Stop serving a retired key on every instance and delete its private key from this directory.
    #[command(
        long_about = "Stop serving key KID on every backend instance (within a second) and \
delete signing-KID.pem and sealing-KID.pem from this data directory. Only a retired key (one a \
rotation replaced) can be purged, and only the oldest one still served: keys are purged in the \
order they became current, since a peripheral catching up from an older key passes through the \
newer ones and may be left on any of them when its session ends. Irreversible: hellos sealed to KID are refused \
(unknown_backend_key) from then on, so a peripheral that still knows only KID (it missed every \
update) can no longer connect and must be provisioned again with `export-anchor`. Before purging, \
check the audit log: vouches record the key id that signed them (kid=N). On other hosts holding a \
copy of the key, run it again to delete their copy (it is not served there either way)."
    )]
    Purge {
        /// The key id.
        kid: u8,
        /// Confirm: this is irreversible.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to listen on (default from config: 127.0.0.1:8443).
    #[arg(long, env = "VOUCH_LISTEN")]
    listen: Option<String>,
    /// Operations listener: plain HTTP `/metrics`, `/healthz`, `/readyz`
    /// without credentials; refused unless the address is loopback.
    #[arg(long, env = "VOUCH_OPS_LISTEN")]
    ops_listen: Option<String>,
    /// Serve plain HTTP instead of HTTPS; refused unless the address is loopback.
    #[arg(long)]
    insecure_http: bool,
    /// Settings file (default: DATA_DIR/config.toml if present).
    #[arg(long, env = "VOUCH_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,
}

#[derive(Subcommand, Debug)]
enum Enroll {
    /// Enroll a peripheral.
    Peripheral {
        /// Its Ed25519 public key: 64 hex digits, a PEM string, or @FILE.
        #[arg(long)]
        public_key: String,
        /// Registry id (default: derived from the key).
        #[arg(long)]
        id: Option<String>,
        /// Group.
        #[arg(long)]
        group: Option<String>,
        /// Attribute NAME=VALUE (repeatable).
        #[arg(long = "attr")]
        attrs: Vec<String>,
        /// Enroll as pending (activate later).
        #[arg(long)]
        pending: bool,
    },
    /// Enroll a gateway; writes its TLS client certificate.
    Gateway {
        /// Its Ed25519 identity key: 64 hex digits, a PEM string, or @FILE.
        #[arg(long)]
        public_key: String,
        /// Human name.
        #[arg(long)]
        name: Option<String>,
        /// Group.
        #[arg(long)]
        group: Option<String>,
        /// Site.
        #[arg(long)]
        site: Option<String>,
        /// Write the certificate here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct Target {
    /// Peripheral or gateway.
    #[arg(value_enum)]
    what: Kind,
    /// Peripheral id (16 hex) or gateway key (64 hex).
    id: String,
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// List the rules.
    List,
    /// Remove a rule by id.
    Remove {
        /// Rule id.
        id: i64,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Print entries (oldest first).
    Query {
        /// Only about this peripheral.
        #[arg(long)]
        peripheral: Option<String>,
        /// Only about this gateway.
        #[arg(long)]
        gateway: Option<String>,
        /// Only this action (vouch, peripheral_revoke, lockout, …).
        #[arg(long)]
        action: Option<String>,
        /// At or after (RFC 3339 or ms since the epoch).
        #[arg(long)]
        since: Option<String>,
        /// Before (RFC 3339 or ms since the epoch).
        #[arg(long)]
        until: Option<String>,
        /// After this sequence number (cursor).
        #[arg(long)]
        after: Option<i64>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recompute the hash chain (from the signed checkpoint if entries were
    /// pruned, checked with ca.pem); exit 1 and name the first broken link if
    /// it is broken.
    Verify,
    /// Delete the entries older than an age, keeping a checkpoint of the
    /// chain signed with the CA key (ca-key.pem), so that `audit verify`
    /// still proves the rest. Entries a live vouch still needs (the longest
    /// lifetime a policy grants, plus 120 s) are kept. Refuses if the
    /// entries to delete do not verify.
    Prune {
        /// Age, e.g. `90d`, `12h`, `3600s` (humantime).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
    },
}

#[derive(Subcommand, Debug)]
enum LockoutCmd {
    /// List lockouts in force.
    List,
    /// Lift one (`gateway:KEY` or `peripheral:ID`).
    Clear {
        /// The subject.
        subject: String,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Peripheral,
    Gateway,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum FormatArg {
    Csv,
    Ndjson,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormatArg {
    Text,
    Json,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VOUCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn open_store(cli: &Cli) -> Result<Store> {
    let url = match &cli.database_url {
        Some(u) => u.clone(),
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

fn api(e: AppError) -> anyhow::Error {
    anyhow::anyhow!("{} ({})", e.message, e.code)
}

fn read_key_arg(s: &str) -> Result<String> {
    match s.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {path}")),
        None => Ok(s.to_owned()),
    }
}

async fn run(cli: Cli) -> Result<std::process::ExitCode> {
    use std::process::ExitCode;
    match &cli.command {
        Command::Init { sans } => {
            let outcome = datadir::init(&cli.data_dir, sans)?;
            let store = open_store(&cli).await?;
            store.close().await;
            match outcome {
                InitOutcome::Created { admin_token } => {
                    println!("initialized {}", cli.data_dir.display());
                    println!("admin token (shown once; store it in a secret manager):");
                    println!("{}", admin_token.as_str());
                }
                InitOutcome::AlreadyInitialized => {
                    println!(
                        "{} is already initialized; nothing changed",
                        cli.data_dir.display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => serve(&cli, args).await.map(|()| ExitCode::SUCCESS),
        Command::Enroll(e) => {
            let store = open_store(&cli).await?;
            match e {
                Enroll::Peripheral {
                    public_key,
                    id,
                    group,
                    attrs,
                    pending,
                } => {
                    let mut attributes = std::collections::BTreeMap::new();
                    for a in attrs {
                        let (k, v) = a
                            .split_once('=')
                            .context("attributes are --attr NAME=VALUE")?;
                        attributes.insert(k.to_owned(), v.to_owned());
                    }
                    let req = EnrollPeripheral {
                        id: id.clone(),
                        public_key: read_key_arg(public_key)?,
                        group: group.clone(),
                        attributes,
                        status: pending.then(|| "pending".to_owned()),
                    };
                    let new = req.parse().map_err(api)?;
                    let outcome = store
                        .enroll_peripheral(&new, CLI_ACTOR)
                        .await
                        .map_err(|e| api(e.into()))?;
                    println!("{} {:?}", new.id, outcome);
                }
                Enroll::Gateway {
                    public_key,
                    name,
                    group,
                    site,
                    out,
                } => {
                    let data = DataDir::load(&cli.data_dir)?;
                    let req = EnrollGateway {
                        public_key: read_key_arg(public_key)?,
                        name: name.clone(),
                        group: group.clone(),
                        site: site.clone(),
                    };
                    let answer = enroll_gateway_with_cert(&store, &data.ca, &req, CLI_ACTOR)
                        .await
                        .map_err(api)?;
                    eprintln!("gateway {} {:?}", answer.gateway.public_key, answer.outcome);
                    match out {
                        Some(p) => {
                            std::fs::write(p, &answer.certificate_pem)
                                .with_context(|| format!("cannot write {}", p.display()))?;
                            eprintln!(
                                "certificate written to {}; pin {}",
                                p.display(),
                                cli.data_dir.join(datadir::files::CA).display()
                            );
                        }
                        None => print!("{}", answer.certificate_pem),
                    }
                }
            }
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Import {
            file,
            format,
            dry_run,
            batch_size,
            report,
        } => {
            import_cmd(
                &cli,
                file,
                *format,
                *dry_run,
                *batch_size,
                report.as_deref(),
            )
            .await
        }
        Command::List {
            what,
            status,
            group,
            site,
            after,
            limit,
            json,
        } => {
            let store = open_store(&cli).await?;
            let status = status
                .as_deref()
                .map(|s| Status::parse(s).context("status: pending, active, suspended, revoked"))
                .transpose()?;
            match what {
                Kind::Peripheral => {
                    let f = PeripheralFilter {
                        status,
                        group: group.clone(),
                        after: after
                            .as_deref()
                            .map(|a| {
                                PeripheralId::from_hex(a).context("the cursor is a peripheral id")
                            })
                            .transpose()?,
                        limit: *limit,
                    };
                    let items = store
                        .list_peripherals(&f)
                        .await
                        .map_err(|e| api(e.into()))?;
                    if *json {
                        println!("{}", serde_json::to_string_pretty(&items)?);
                    } else {
                        for p in &items {
                            print_peripheral_line(p);
                        }
                    }
                    if items.len() == *limit as usize {
                        if let Some(last) = items.last() {
                            eprintln!("next page: --after {}", last.id);
                        }
                    }
                }
                Kind::Gateway => {
                    let f = GatewayFilter {
                        status,
                        group: group.clone(),
                        site: site.clone(),
                        after: after
                            .as_deref()
                            .map(|a| PublicKey::from_hex(a).context("the cursor is a gateway key"))
                            .transpose()?,
                        limit: *limit,
                    };
                    let items = store.list_gateways(&f).await.map_err(|e| api(e.into()))?;
                    if *json {
                        println!("{}", serde_json::to_string_pretty(&items)?);
                    } else {
                        for g in &items {
                            println!(
                                "{}  {:<9}  name={}  group={}  site={}",
                                g.public_key,
                                g.status,
                                g.name.as_deref().unwrap_or("-"),
                                g.group.as_deref().unwrap_or("-"),
                                g.site.as_deref().unwrap_or("-")
                            );
                        }
                    }
                    if items.len() == *limit as usize {
                        if let Some(last) = items.last() {
                            eprintln!("next page: --after {}", last.public_key);
                        }
                    }
                }
            }
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { what, id } => {
            let store = open_store(&cli).await?;
            let json = match what {
                Kind::Peripheral => {
                    let id =
                        PeripheralId::from_hex(id).context("a peripheral id is 16 hex digits")?;
                    serde_json::to_string_pretty(
                        &store.peripheral(&id).await.map_err(|e| api(e.into()))?,
                    )?
                }
                Kind::Gateway => {
                    let key = PublicKey::from_hex(id).context("a gateway key is 64 hex digits")?;
                    serde_json::to_string_pretty(
                        &store.gateway(&key).await.map_err(|e| api(e.into()))?,
                    )?
                }
            };
            println!("{json}");
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Activate(t) => transition(&cli, t, "activate").await,
        Command::Suspend(t) => transition(&cli, t, "suspend").await,
        Command::Reinstate(t) => transition(&cli, t, "reinstate").await,
        Command::Revoke(t) => transition(&cli, t, "revoke").await,
        Command::Associate {
            peripheral,
            gateway,
            scope,
            session_s,
            resumption_s,
        } => {
            let store = open_store(&cli).await?;
            let (p, g, scope, life) = NewPolicy {
                peripheral: peripheral.clone(),
                gateway: gateway.clone(),
                scope: scope.clone(),
                session_s: *session_s,
                resumption_s: *resumption_s,
            }
            .parse()
            .map_err(api)?;
            let rule = store
                .add_policy(&p, &g, scope, life, CLI_ACTOR)
                .await
                .map_err(|e| api(e.into()))?;
            println!("{}", serde_json::to_string_pretty(&rule)?);
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(cmd) => {
            let store = open_store(&cli).await?;
            match cmd {
                PolicyCmd::List => {
                    for r in store.list_policies().await.map_err(|e| api(e.into()))? {
                        println!(
                            "{:>5}  {}  ->  {}  scope={} session_s={} resumption_s={}",
                            r.id,
                            r.peripheral,
                            r.gateway,
                            r.scope.0,
                            r.lifetimes.session_s,
                            r.lifetimes.resumption_s
                        );
                    }
                }
                PolicyCmd::Remove { id } => {
                    store
                        .remove_policy(*id, CLI_ACTOR)
                        .await
                        .map_err(|e| api(e.into()))?;
                    println!("removed rule {id}");
                }
            }
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(cmd) => {
            let store = open_store(&cli).await?;
            let code = match cmd {
                AuditCmd::Query {
                    peripheral,
                    gateway,
                    action,
                    since,
                    until,
                    after,
                    limit,
                    json,
                } => {
                    let f = audit_filter(
                        peripheral.clone(),
                        gateway.clone(),
                        action.clone(),
                        since.as_deref(),
                        until.as_deref(),
                        *after,
                        *limit,
                    )
                    .map_err(api)?;
                    let items = store.audit_query(&f).await.map_err(|e| api(e.into()))?;
                    for e in &items {
                        if *json {
                            println!("{}", serde_json::to_string(e)?);
                        } else {
                            println!(
                                "{:>8}  {}  {:<18} {:<8} {:<22} {:<26} peripheral={} gateway={} {}",
                                e.seq,
                                e.at,
                                e.action,
                                e.outcome,
                                e.reason,
                                e.actor.chars().take(26).collect::<String>(),
                                e.peripheral.as_deref().unwrap_or("-"),
                                e.gateway
                                    .as_deref()
                                    .map(|g| &g[..g.len().min(16)])
                                    .unwrap_or("-"),
                                e.detail
                            );
                        }
                    }
                    if items.len() == *limit as usize {
                        if let Some(last) = items.last() {
                            eprintln!("next page: --after {}", last.seq);
                        }
                    }
                    ExitCode::SUCCESS
                }
                AuditCmd::Verify => {
                    // The checkpoint is checked with the CA certificate of the
                    // data directory, never with anything from the database.
                    let ca = cli.data_dir.join(datadir::files::CA);
                    let pem = std::fs::read_to_string(&ca)
                        .with_context(|| format!("cannot read {}", ca.display()))?;
                    let key = vouch_backend::store::CheckpointKey::from_ca_cert(&pem)?;
                    match store.audit_verify(&key).await.map_err(|e| api(e.into()))? {
                        v @ vouch_backend::store::AuditVerdict::Intact { .. } => {
                            println!("{}", serde_json::to_string(&v)?);
                            ExitCode::SUCCESS
                        }
                        v => {
                            println!("{}", serde_json::to_string(&v)?);
                            ExitCode::FAILURE
                        }
                    }
                }
                AuditCmd::Prune { older_than } => {
                    let data = DataDir::load(&cli.data_dir)?;
                    let key = vouch_backend::store::CheckpointKey::from_ca(&data.ca)?;
                    let now = vouch_backend::store::now_ms();
                    let (cutoff, raised) =
                        vouch_backend::audit::prune_cutoff(&store, older_than.as_secs(), now)
                            .await
                            .map_err(|e| api(e.into()))?;
                    if raised {
                        eprintln!(
                            "note: keeping the entries a live vouch may still need (the longest \
                             lifetime a policy grants, plus 120 s)"
                        );
                    }
                    let o = store.audit_prune(cutoff, &key, CLI_ACTOR).await?;
                    println!(
                        "pruned {} entries written before {}; checkpoint at entry {}",
                        o.pruned,
                        vouch_backend::store::Rfc3339(cutoff),
                        o.checkpoint_seq
                    );
                    ExitCode::SUCCESS
                }
            };
            store.close().await;
            Ok(code)
        }
        Command::Lockouts(cmd) => {
            let store = open_store(&cli).await?;
            match cmd {
                LockoutCmd::List => {
                    for (s, until) in store
                        .active_lockouts(vouch_backend::store::now_ms())
                        .await
                        .map_err(|e| api(e.into()))?
                    {
                        println!("{s}  until {}", vouch_backend::store::Rfc3339(until));
                    }
                }
                LockoutCmd::Clear { subject } => {
                    store
                        .clear_lockout(subject, CLI_ACTOR)
                        .await
                        .map_err(|e| api(e.into()))?;
                    println!("cleared {subject}");
                }
            }
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::ExportAnchor { out } => {
            let mut data = DataDir::load(&cli.data_dir)?;
            let store = open_store(&cli).await?;
            let status = match keyring::register(&mut data, &store, CLI_ACTOR).await {
                Ok(_) => keyring::status(&data, &store).await,
                Err(e) => Err(e),
            };
            store.close().await;
            let json =
                serde_json::to_string_pretty(&vouch_backend::anchor::bundle(&status?.fleet))?;
            match out {
                Some(p) => std::fs::write(p, json + "\n")
                    .with_context(|| format!("cannot write {}", p.display()))?,
                None => println!("{json}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(cmd) => keys_cmd(&cli, cmd).await,
    }
}

async fn keys_cmd(cli: &Cli, cmd: &KeysCmd) -> Result<std::process::ExitCode> {
    let mut data = DataDir::load(&cli.data_dir)?;
    let store = open_store(cli).await?;
    let result = match keyring::register(&mut data, &store, CLI_ACTOR).await {
        Ok(_) => keys_on(cli, cmd, &data, &store).await,
        Err(e) => Err(e.into()),
    };
    store.close().await;
    result.map(|()| std::process::ExitCode::SUCCESS)
}

async fn keys_on(cli: &Cli, cmd: &KeysCmd, data: &DataDir, store: &Store) -> Result<()> {
    match cmd {
        KeysCmd::List { json } => {
            let status = keyring::status(data, store).await?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "current": status.current().0,
                        "serial": status.serial(),
                        "registered": status.registered,
                        "handed_out": status.handed_out,
                        "keys": status.keys,
                        "instances": status.instances.iter().map(|i| serde_json::json!({
                            "id": i.id,
                            "host": i.host,
                            "started": vouch_backend::store::Rfc3339(i.started_ms).to_string(),
                            "seen": vouch_backend::store::Rfc3339(i.seen_ms).to_string(),
                            "serves": i.serves,
                            "holds": i.holds,
                        })).collect::<Vec<_>>(),
                    }))?
                );
                return Ok(());
            }
            println!(
                "{:>3}  {:<8}  {:<24}  {:>5}  {:>7}  {:<7}  {:<64}  sealing",
                "kid", "state", "created", "added", "retired", "private", "signing"
            );
            for k in &status.keys {
                let serial = |s: Option<u32>| s.map_or_else(|| "-".to_owned(), |s| s.to_string());
                println!(
                    "{:>3}  {:<8}  {:<24}  {:>5}  {:>7}  {:<7}  {}  {}",
                    k.kid,
                    k.state.as_str(),
                    k.created.to_string(),
                    serial(k.added_serial),
                    serial(k.retired_serial),
                    if k.private_key_here { "here" } else { "absent" },
                    k.signing,
                    k.sealing
                );
            }
            println!(
                "last update serial {}; a fully updated peripheral seals to key {} and holds the commitment to the next key",
                status.serial(),
                status.current(),
            );
            if !status.registered {
                println!(
                    "not registered yet: the data directory's two lowest keys are current and next"
                );
            }
            if status.handed_out < status.serial() {
                println!(
                    "gateways are handed the updates up to serial {} only: the next one rotates to a key \
                     a live instance does not serve yet (see below)",
                    status.handed_out
                );
            }
            let list = |kids: &std::collections::BTreeSet<u8>| {
                kids.iter().map(u8::to_string).collect::<Vec<_>>().join(",")
            };
            for i in &status.instances {
                println!(
                    "live instance {} on {}: serves keys {}; holds the private keys of {}",
                    i.id,
                    i.host,
                    list(&i.serves),
                    list(&i.holds)
                );
            }
        }
        KeysCmd::Rotate { force } => {
            let options = keyring::RotateOptions { force: *force };
            let r = keyring::rotate_with(data, store, CLI_ACTOR, options).await?;
            let (kid, next) = (r.anchor.kid, r.next.kid);
            let files = format!(
                "{} and {}",
                cli.data_dir.join(datadir::files::signing(next)).display(),
                cli.data_dir.join(datadir::files::sealing(next)).display()
            );
            println!(
                "anchor update {} = Rotate(key {kid}), signed by key {kid}: peripherals that apply it seal to key {kid}",
                r.update.serial
            );
            println!(
                "gateways are handed it, and told on the revocation feed, once every live backend instance \
                 serves key {kid} (each loads it within a second; `vouch-backend keys list` shows them)"
            );
            println!(
                "the previous key stays served for peripherals that missed the rotation; purge it once the audit \
                 log shows no more vouches by it (`vouch-backend keys purge KID --yes`)"
            );
            println!(
                "key {next} created as the next committed key ({files}, mode 0600): copy them to every other \
                 backend instance, and keep them offline until the next rotation if you wish"
            );
        }
        KeysCmd::Purge { kid, yes } => {
            if !yes {
                bail!(
                    "purging key {kid} is irreversible: peripherals that still know only key {kid} \
                     will be refused and must be provisioned again. Run again with --yes"
                );
            }
            let p = keyring::purge(
                &cli.data_dir,
                store,
                vouch_proto::keys::KeyId(*kid),
                CLI_ACTOR,
            )
            .await?;
            if p.newly_purged {
                println!("key {kid} purged: no backend instance serves it any more");
            } else {
                println!("key {kid} was already purged");
            }
            println!(
                "{} private key files of key {kid} in {}",
                if p.files_removed {
                    "deleted the"
                } else {
                    "found no"
                },
                cli.data_dir.display()
            );
        }
    }
    Ok(())
}

fn print_peripheral_line(p: &PeripheralRecord) {
    let attrs: Vec<String> = p
        .attributes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "{}  {:<9}  group={}  {}",
        p.id,
        p.status,
        p.group.as_deref().unwrap_or("-"),
        attrs.join(";")
    );
}

async fn transition(cli: &Cli, t: &Target, verb: &str) -> Result<std::process::ExitCode> {
    let store = open_store(cli).await?;
    let tr = parse_transition(verb).map_err(api)?;
    let json = match t.what {
        Kind::Peripheral => {
            let id = PeripheralId::from_hex(&t.id).context("a peripheral id is 16 hex digits")?;
            serde_json::to_string(
                &store
                    .transition_peripheral(&id, tr, CLI_ACTOR)
                    .await
                    .map_err(|e| api(e.into()))?,
            )?
        }
        Kind::Gateway => {
            let key = PublicKey::from_hex(&t.id).context("a gateway key is 64 hex digits")?;
            serde_json::to_string(
                &store
                    .transition_gateway(&key, tr, CLI_ACTOR)
                    .await
                    .map_err(|e| api(e.into()))?,
            )?
        }
    };
    println!("{json}");
    store.close().await;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn import_cmd(
    cli: &Cli,
    file: &Path,
    format: Option<FormatArg>,
    dry_run: bool,
    batch_size: usize,
    report: Option<&Path>,
) -> Result<std::process::ExitCode> {
    let format = match format {
        Some(FormatArg::Csv) => Format::Csv,
        Some(FormatArg::Ndjson) => Format::Ndjson,
        None => Format::from_path(file),
    };
    let rows = if file == Path::new("-") {
        import::read_rows(std::io::stdin().lock(), format)
    } else {
        let f =
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        import::read_rows(f, format)
    }
    .context("cannot read the input")?;
    let store = open_store(cli).await?;
    let mut report_file = match report {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open {}", p.display()))?,
        ),
        None => None,
    };
    let bar = indicatif::ProgressBar::new(rows.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut write_error = None;
    let summary = import::run(&store, rows, dry_run, batch_size, CLI_ACTOR, |reports| {
        bar.inc(reports.len() as u64);
        for r in reports {
            if let Some(e) = &r.error {
                bar.suspend(|| eprintln!("line {}: {} ({})", r.line, e.message, e.code));
            }
        }
        if let Some(f) = report_file.as_mut() {
            let mut buf = String::new();
            for r in reports {
                if let Ok(line) = serde_json::to_string(r) {
                    buf.push_str(&line);
                    buf.push('\n');
                }
            }
            if let Err(e) = f.write_all(buf.as_bytes()).and_then(|()| f.sync_data()) {
                write_error = Some(e);
            }
        }
    })
    .await
    .map_err(|e| api(e.into()))?;
    bar.finish_and_clear();
    store.close().await;
    if let Some(e) = write_error {
        bail!("cannot write the report: {e}");
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(if summary.errors > 0 {
        std::process::ExitCode::from(2)
    } else {
        std::process::ExitCode::SUCCESS
    })
}

async fn serve(cli: &Cli, args: &ServeArgs) -> Result<()> {
    let config_path = args
        .config
        .clone()
        .unwrap_or_else(|| cli.data_dir.join(datadir::files::CONFIG));
    let mut config =
        Config::load(&config_path, args.config.is_some())?.apply_env(std::env::vars())?;
    if let Some(l) = &args.listen {
        config.listen = l.clone();
    }
    if let Some(l) = &args.ops_listen {
        config.ops_listen = Some(l.clone());
    }
    if args.insecure_http {
        config.insecure_http = true;
    }
    if let Some(f) = args.log_format {
        config.log_format = match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        };
    }
    if let Some(u) = &cli.database_url {
        config.database_url = Some(u.clone());
    }
    init_logging(config.log_format);
    let addr: SocketAddr = config
        .listen
        .parse()
        .with_context(|| format!("listen address {:?} is not IP:PORT", config.listen))?;
    if config.insecure_http && !server::insecure_allowed(&addr) {
        bail!("--insecure-http is only allowed on a loopback address, not {addr}");
    }
    let ops_addr: Option<SocketAddr> = match &config.ops_listen {
        None => None,
        Some(a) => {
            let ops: SocketAddr = a
                .parse()
                .with_context(|| format!("ops_listen address {a:?} is not IP:PORT"))?;
            if !server::insecure_allowed(&ops) {
                bail!(
                    "ops_listen serves /metrics without credentials over plain HTTP, so only on a \
                     loopback address, not {ops}; elsewhere read /metrics on the main listener \
                     with the admin token"
                );
            }
            Some(ops)
        }
    };
    let data = DataDir::load(&cli.data_dir)?;
    let transport = if config.insecure_http {
        Transport::InsecureLoopback
    } else {
        let (cert, key) = data.server_tls()?;
        Transport::Tls(Arc::new(pki::server_config(
            &data.ca.cert_pem,
            &cert,
            &key,
        )?))
    };
    let url = config
        .database_url
        .clone()
        .unwrap_or_else(|| data.sqlite_url());
    let store = Store::open(&url)
        .await
        .context("cannot open the database")?;
    let mut data = data;
    keyring::register(&mut data, &store, "backend")
        .await
        .context("cannot register the key ring")?;
    keyring::check(&data, &store)
        .await
        .context("the data directory's keys do not match the database")?;
    let engine = store.engine();
    let state = AppState::new(store.clone(), data, config.clone()).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let scheme = if config.insecure_http {
        "http"
    } else {
        "https"
    };
    // The line tests and scripts wait for (the port may have been 0).
    println!("listening on {scheme}://{local}");
    let _ = std::io::stdout().flush();
    tracing::info!(%local, ?engine, scheme, "serving");
    let ops_server = match ops_addr {
        None => None,
        Some(ops) => {
            let ops_listener = tokio::net::TcpListener::bind(ops)
                .await
                .with_context(|| format!("cannot listen on {ops} (ops_listen)"))?;
            let ops_local = ops_listener.local_addr()?;
            // After the line tests wait for; a closed stdout is not an error.
            let _ = writeln!(std::io::stdout(), "operations on http://{ops_local}");
            let _ = std::io::stdout().flush();
            tracing::info!(%ops_local, "serving /metrics, /healthz, /readyz (no credentials)");
            let stop = state.shutdown.clone();
            Some(tokio::spawn(server::serve(
                ops_listener,
                vouch_backend::ops_app(state.clone()),
                Transport::InsecureLoopback,
                async move { stop.cancelled().await },
            )))
        }
    };
    let shutdown_state = state.clone();
    let final_state = state.clone();
    server::serve(listener, app(state), transport, async move {
        server::shutdown_signal().await;
        tracing::info!("shutting down");
        shutdown_state.shutdown();
    })
    .await?;
    if let Some(ops) = ops_server {
        match ops.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the operations listener failed"),
            Err(e) => tracing::warn!(error = %e, "the operations listener panicked"),
        }
    }
    // Requests have drained: write the counts of repeated refusals.
    match final_state.flush_audit().await {
        Ok(n) => tracing::info!(summaries = n, "audit summaries written"),
        Err(e) => tracing::error!(error = %e, "could not write the audit summaries"),
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}
