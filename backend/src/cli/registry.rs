//! The registry verbs: `enroll`, `list`, `show`, the lifecycle
//! (`activate`, `suspend`, `reinstate`, `revoke`), `associate`, `policy`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use vouch_backend::datadir::{self, DataDir};
use vouch_backend::model::{scope_names, GatewayRecord, PeripheralRecord, Status};
use vouch_backend::registry::{self, EnrollGateway, EnrollPeripheral, NewPolicy};
use vouch_backend::store::{EnrollOutcome, GatewayFilter, PeripheralFilter, Store, MAX_PAGE};
use vouch_proto::keys::{PeripheralId, PublicKey};

use super::{api, format_ms, open_store, output, read_key_arg, settings, Cli, CLI_ACTOR};

#[derive(Subcommand, Debug)]
pub(super) enum Enroll {
    /// Enroll a peripheral.
    Peripheral {
        /// Its Ed25519 public key: 64 hex digits, a PEM string (it starts with
        /// `-----`), @FILE, or @- for standard input (the file is read by
        /// this process: as the service user, it must be readable to it).
        #[arg(long, allow_hyphen_values = true)]
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
        /// Its Ed25519 identity key: 64 hex digits, a PEM string (it starts with
        /// `-----`), @FILE, or @- for standard input (the file is read by
        /// this process: as the service user, it must be readable to it).
        #[arg(long, allow_hyphen_values = true)]
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

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Peripheral,
    Gateway,
}

#[derive(Args, Debug)]
pub(super) struct Target {
    /// Peripheral or gateway.
    #[arg(value_enum)]
    what: Kind,
    /// Peripheral id (16 hex) or gateway key (64 hex).
    id: String,
}

// The flags of `list`.
#[derive(Args, Debug)]
pub(super) struct ListArgs {
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
    /// Most rows to print (read page after page; when more remain, the
    /// cursor of the next page is printed on standard error, and with
    /// --json as `next_cursor`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
}

// The flags of `show`.
#[derive(Args, Debug)]
pub(super) struct ShowArgs {
    /// Peripheral or gateway.
    #[arg(value_enum)]
    what: Kind,
    /// Peripheral id (16 hex) or gateway key (64 hex).
    id: String,
}

// The flags of `associate`.
#[derive(Args, Debug)]
pub(super) struct AssociateArgs {
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
}

#[derive(Subcommand, Debug)]
pub(super) enum PolicyCmd {
    /// List the rules.
    List,
    /// Remove a rule by id.
    Remove {
        /// Rule id.
        id: i64,
    },
}

/// Enrolls one peripheral or gateway.
pub(super) async fn enroll(cli: &Cli, e: &Enroll) -> Result<ExitCode> {
    let store = open_store(cli).await?;
    match e {
        Enroll::Peripheral {
            public_key,
            id,
            group,
            attrs,
            pending,
        } => {
            let mut attributes = BTreeMap::new();
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
            let (id, outcome) = registry::enroll_peripheral(&store, &req, CLI_ACTOR)
                .await
                .map_err(api)?;
            output::record(
                cli.json,
                &serde_json::json!({ "id": id.to_string(), "outcome": outcome_name(outcome) }),
            )?;
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
            enroll_gateway(cli, &store, &data, &req, out.as_ref()).await?;
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Enrolls a gateway and writes or prints its certificate.
async fn enroll_gateway(
    cli: &Cli,
    store: &Store,
    data: &DataDir,
    req: &EnrollGateway,
    out: Option<&PathBuf>,
) -> Result<()> {
    let lifetime = settings(cli)?.certificates.gateway_lifetime();
    let answer = registry::enroll_gateway(store, &data.ca, lifetime, req, CLI_ACTOR)
        .await
        .map_err(api)?;
    let ca = cli.data_dir.join(datadir::files::CA);
    let mut result = serde_json::json!({
        "gateway": answer.gateway.public_key.to_string(),
        "outcome": outcome_name(answer.outcome),
        "pin": ca.display().to_string(),
        // The gateway renews it itself, well before.
        "certificate_expires": answer.gateway.certificate_expires_ms.map(format_ms),
    });
    match out {
        Some(p) => {
            std::fs::write(p, &answer.certificate_pem)
                .with_context(|| format!("cannot write {}", p.display()))?;
            result["certificate_file"] = p.display().to_string().into();
            output::record(cli.json, &result)
        }
        // The certificate is the output (to redirect into a file); the rest
        // is said on standard error, unless JSON holds it all.
        None if cli.json => {
            result["certificate_pem"] = answer.certificate_pem.clone().into();
            output::record(true, &result)
        }
        None => {
            eprintln!(
                "gateway {} {}; pin {}",
                answer.gateway.public_key,
                outcome_name(answer.outcome),
                ca.display()
            );
            print!("{}", answer.certificate_pem);
            Ok(())
        }
    }
}

/// Lists peripherals or gateways, a page at a time.
pub(super) async fn list(cli: &Cli, args: &ListArgs) -> Result<ExitCode> {
    let store = open_store(cli).await?;
    let status = args
        .status
        .as_deref()
        .map(|s| Status::parse(s).context("status: pending, active, suspended, revoked"))
        .transpose()?;
    match args.what {
        Kind::Peripheral => list_peripherals(&store, args, status, cli.json).await?,
        Kind::Gateway => list_gateways(&store, args, status, cli.json).await?,
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn list_peripherals(
    store: &Store,
    args: &ListArgs,
    status: Option<Status>,
    json: bool,
) -> Result<()> {
    let after = args
        .after
        .as_deref()
        .map(|a| PeripheralId::from_hex(a).context("the cursor is a peripheral id"))
        .transpose()?;
    let (items, next) = output::collect(
        args.limit,
        MAX_PAGE,
        after,
        |p: &PeripheralRecord| p.id,
        |after, limit| {
            let f = PeripheralFilter {
                status,
                group: args.group.clone(),
                after,
                limit,
            };
            async move { store.list_peripherals(&f).await.map_err(api) }
        },
    )
    .await?;
    output::page(
        json,
        &items,
        next.map(|c| c.to_string()),
        &["id", "status", "group", "attributes"],
        |p| {
            let attrs: Vec<String> = p
                .attributes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            vec![
                p.id.to_string(),
                p.status.to_string(),
                output::cell(p.group.as_deref()),
                output::cell(Some(&attrs.join(";"))),
            ]
        },
    )
}

async fn list_gateways(
    store: &Store,
    args: &ListArgs,
    status: Option<Status>,
    json: bool,
) -> Result<()> {
    let after = args
        .after
        .as_deref()
        .map(|a| PublicKey::from_hex(a).context("the cursor is a gateway key"))
        .transpose()?;
    let (items, next) = output::collect(
        args.limit,
        MAX_PAGE,
        after,
        |g: &GatewayRecord| g.public_key,
        |after, limit| {
            let f = GatewayFilter {
                status,
                group: args.group.clone(),
                site: args.site.clone(),
                after,
                limit,
            };
            async move { store.list_gateways(&f).await.map_err(api) }
        },
    )
    .await?;
    output::page(
        json,
        &items,
        next.map(|c| c.to_string()),
        &[
            "public_key",
            "status",
            "name",
            "group",
            "site",
            "certificate_expires",
        ],
        |g| {
            vec![
                g.public_key.to_string(),
                g.status.to_string(),
                output::cell(g.name.as_deref()),
                output::cell(g.group.as_deref()),
                output::cell(g.site.as_deref()),
                g.certificate_expires_ms
                    .map_or_else(|| "-".to_owned(), format_ms),
            ]
        },
    )
}

/// The name of an enrollment's outcome, as the admin API writes it.
fn outcome_name(o: EnrollOutcome) -> &'static str {
    match o {
        EnrollOutcome::Created => "created",
        EnrollOutcome::Unchanged => "unchanged",
    }
}

/// Shows one peripheral or gateway.
pub(super) async fn show(cli: &Cli, args: &ShowArgs) -> Result<ExitCode> {
    let store = open_store(cli).await?;
    let id = &args.id;
    match args.what {
        Kind::Peripheral => {
            let id = PeripheralId::from_hex(id).context("a peripheral id is 16 hex digits")?;
            output::record(cli.json, &store.peripheral(&id).await.map_err(api)?)?;
        }
        Kind::Gateway => {
            let key = PublicKey::from_hex(id).context("a gateway key is 64 hex digits")?;
            output::record(cli.json, &store.gateway(&key).await.map_err(api)?)?;
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// A lifecycle transition (`verb`: activate, suspend, reinstate, revoke).
pub(super) async fn transition(cli: &Cli, t: &Target, verb: &str) -> Result<ExitCode> {
    let store = open_store(cli).await?;
    let tr = registry::parse_transition(verb).map_err(api)?;
    match t.what {
        Kind::Peripheral => {
            let id = PeripheralId::from_hex(&t.id).context("a peripheral id is 16 hex digits")?;
            let r = store
                .transition_peripheral(&id, tr, CLI_ACTOR)
                .await
                .map_err(api)?;
            output::record(cli.json, &r)?;
        }
        Kind::Gateway => {
            let key = PublicKey::from_hex(&t.id).context("a gateway key is 64 hex digits")?;
            let r = store
                .transition_gateway(&key, tr, CLI_ACTOR)
                .await
                .map_err(api)?;
            output::record(cli.json, &r)?;
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Adds a policy rule.
pub(super) async fn associate(cli: &Cli, args: &AssociateArgs) -> Result<ExitCode> {
    let store = open_store(cli).await?;
    let rule = NewPolicy {
        peripheral: args.peripheral.clone(),
        gateway: args.gateway.clone(),
        scope: args.scope.clone(),
        session_s: args.session_s,
        resumption_s: args.resumption_s,
    };
    let rule = registry::add_policy(&store, &rule, CLI_ACTOR)
        .await
        .map_err(api)?;
    if cli.json {
        output::record(true, &rule)?;
    } else {
        // For people: the scope by name, the time as a time.
        output::record(
            false,
            &serde_json::json!({
                "rule": rule.id,
                "peripheral": rule.peripheral.to_string(),
                "gateway": rule.gateway.to_string(),
                "scope": scope_names(rule.scope),
                "session_s": rule.lifetimes.session_s,
                "resumption_s": rule.lifetimes.resumption_s,
                "created": format_ms(rule.created_ms),
            }),
        )?;
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Lists or removes policy rules.
pub(super) async fn policy(cli: &Cli, cmd: &PolicyCmd) -> Result<ExitCode> {
    let store = open_store(cli).await?;
    match cmd {
        PolicyCmd::List => {
            let rules = store.list_policies().await.map_err(api)?;
            output::page(
                cli.json,
                &rules,
                None,
                &[
                    "id",
                    "peripheral",
                    "gateway",
                    "scope",
                    "session_s",
                    "resumption_s",
                ],
                |r| {
                    vec![
                        r.id.to_string(),
                        r.peripheral.to_string(),
                        r.gateway.to_string(),
                        scope_names(r.scope),
                        r.lifetimes.session_s.to_string(),
                        r.lifetimes.resumption_s.to_string(),
                    ]
                },
            )?;
        }
        PolicyCmd::Remove { id } => {
            store.remove_policy(*id, CLI_ACTOR).await.map_err(api)?;
            output::record(cli.json, &serde_json::json!({ "removed_rule": id }))?;
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
