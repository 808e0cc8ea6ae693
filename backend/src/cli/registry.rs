//! The registry verbs: `enroll`, `list`, `show`, the lifecycle
//! (`activate`, `suspend`, `reinstate`, `revoke`), `associate`, `policy`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use vouch_backend::datadir::{self, DataDir};
use vouch_backend::model::{scope_names, GatewayRecord, PeripheralRecord, Status};
use vouch_backend::registry::{self, EnrollGateway, EnrollPeripheral, NewPolicy};
use vouch_backend::store::{EnrollOutcome, GatewayFilter, PeripheralFilter, MAX_PAGE};
use vouch_proto::keys::{PeripheralId, PublicKey};
use vouch_proto::wire::backend::route;
use vouch_proto::wire::Scope;

use super::{api, format_ms, open_target, output, read_key_arg, remote, settings, Cli, Target};

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
pub(super) struct Subject {
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
            let target = open_target(cli).await?;
            let result = match &target {
                Target::Local { store, actor } => {
                    let (id, outcome) = registry::enroll_peripheral(store, &req, actor)
                        .await
                        .map_err(api)?;
                    serde_json::json!({ "id": id.to_string(), "outcome": outcome_name(outcome) })
                }
                Target::Remote(admin) => {
                    let a = admin
                        .post(route::admin::PERIPHERALS, Some(serde_json::to_value(&req)?))
                        .await?;
                    serde_json::json!({ "id": a["id"], "outcome": a["outcome"] })
                }
            };
            target.close().await;
            output::record(cli.json, &result)?;
        }
        Enroll::Gateway {
            public_key,
            name,
            group,
            site,
            out,
        } => {
            let req = EnrollGateway {
                public_key: read_key_arg(public_key)?,
                name: name.clone(),
                group: group.clone(),
                site: site.clone(),
            };
            let target = open_target(cli).await?;
            let (answer, pin) = match &target {
                Target::Local { store, actor } => {
                    let data = DataDir::load(&cli.data_dir)?;
                    let lifetime = settings(cli)?.certificates.gateway_lifetime();
                    let answer = registry::enroll_gateway(store, &data.ca, lifetime, &req, actor)
                        .await
                        .map_err(api)?;
                    (
                        serde_json::to_value(&answer)?,
                        cli.data_dir.join(datadir::files::CA),
                    )
                }
                Target::Remote(admin) => (
                    admin
                        .post(route::admin::GATEWAYS, Some(serde_json::to_value(&req)?))
                        .await?,
                    admin.ca_path.clone(),
                ),
            };
            target.close().await;
            print_gateway_enrolled(cli, &answer, &pin, out.as_ref())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes or prints an enrolled gateway's certificate, from the admin API's
/// answer (`registry::GatewayEnrolled`).
fn print_gateway_enrolled(
    cli: &Cli,
    answer: &Value,
    pin: &Path,
    out: Option<&PathBuf>,
) -> Result<()> {
    let key = answer["gateway"]["public_key"].as_str().unwrap_or("-");
    let outcome = answer["outcome"].as_str().unwrap_or("-");
    let pem = answer["certificate_pem"]
        .as_str()
        .context("the answer holds no certificate")?;
    let mut result = serde_json::json!({
        "gateway": key,
        "outcome": outcome,
        "pin": pin.display().to_string(),
        // The gateway renews it itself, well before.
        "certificate_expires": answer["gateway"]["certificate_expires_ms"].as_i64().map(format_ms),
    });
    match out {
        Some(p) => {
            std::fs::write(p, pem).with_context(|| format!("cannot write {}", p.display()))?;
            result["certificate_file"] = p.display().to_string().into();
            output::record(cli.json, &result)
        }
        // The certificate is the output (to redirect into a file); the rest
        // is said on standard error, unless JSON holds it all.
        None if cli.json => {
            result["certificate_pem"] = pem.into();
            output::record(true, &result)
        }
        None => {
            eprintln!("gateway {key} {outcome}; pin {}", pin.display());
            print!("{pem}");
            Ok(())
        }
    }
}

/// Lists peripherals or gateways, a page at a time.
pub(super) async fn list(cli: &Cli, args: &ListArgs) -> Result<ExitCode> {
    let status = args
        .status
        .as_deref()
        .map(|s| Status::parse(s).context("status: pending, active, suspended, revoked"))
        .transpose()?
        .map(|s| s.to_string());
    let target = open_target(cli).await?;
    let listed = match args.what {
        Kind::Peripheral => list_peripherals(&target, args, status).await,
        Kind::Gateway => list_gateways(&target, args, status).await,
    };
    target.close().await;
    let (items, next) = listed?;
    match args.what {
        Kind::Peripheral => output::page(
            cli.json,
            &items,
            next,
            &["id", "status", "group", "attributes"],
            |p| {
                let attrs: Vec<String> = p["attributes"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default();
                vec![
                    text(&p["id"]),
                    text(&p["status"]),
                    output::cell(p["group"].as_str()),
                    output::cell(Some(&attrs.join(";"))),
                ]
            },
        ),
        Kind::Gateway => output::page(
            cli.json,
            &items,
            next,
            &[
                "public_key",
                "status",
                "name",
                "group",
                "site",
                "certificate_expires",
                "last_poll",
            ],
            |g| {
                vec![
                    text(&g["public_key"]),
                    text(&g["status"]),
                    output::cell(g["name"].as_str()),
                    output::cell(g["group"].as_str()),
                    output::cell(g["site"].as_str()),
                    g["certificate_expires_ms"]
                        .as_i64()
                        .map_or_else(|| "-".to_owned(), format_ms),
                    g["last_poll_ms"]
                        .as_i64()
                        .map_or_else(|| "-".to_owned(), format_ms),
                ]
            },
        ),
    }?;
    Ok(ExitCode::SUCCESS)
}

/// A string field of an answer, or `-`.
fn text(v: &Value) -> String {
    output::cell(v.as_str())
}

/// A page of the admin API, read remotely: its items, from `path` with the
/// cursor and the page size added to `query`.
async fn remote_page(
    admin: &remote::Admin,
    path: &str,
    query: &[(&str, Option<String>)],
    after: Option<String>,
    limit: u32,
) -> Result<Vec<Value>> {
    let mut q = query.to_vec();
    q.push(("after", after));
    q.push(("limit", Some(limit.to_string())));
    let page = admin.get(&format!("{path}{}", remote::query(&q))).await?;
    match page["items"].as_array() {
        Some(items) => Ok(items.clone()),
        None => anyhow::bail!("{path} answered a page without items"),
    }
}

async fn list_peripherals(
    target: &Target,
    args: &ListArgs,
    status: Option<String>,
) -> Result<(Vec<Value>, Option<String>)> {
    let after = args
        .after
        .as_deref()
        .map(|a| PeripheralId::from_hex(a).context("the cursor is a peripheral id"))
        .transpose()?;
    match target {
        Target::Local { store, .. } => {
            let status = status.as_deref().and_then(Status::parse);
            let (items, next) = output::collect(
                args.limit,
                MAX_PAGE,
                after,
                |p: &PeripheralRecord| p.id,
                |after, limit| {
                    let f = PeripheralFilter {
                        attribute: None,
                        status,
                        group: args.group.clone(),
                        after,
                        limit,
                    };
                    async move { store.list_peripherals(&f).await.map_err(api) }
                },
            )
            .await?;
            Ok((values(&items)?, next.map(|c| c.to_string())))
        }
        Target::Remote(admin) => {
            let q = [("status", status), ("group", args.group.clone())];
            output::collect(
                args.limit,
                MAX_PAGE,
                after.map(|a| a.to_string()),
                |p: &Value| text(&p["id"]),
                |after, limit| remote_page(admin, route::admin::PERIPHERALS, &q, after, limit),
            )
            .await
        }
    }
}

async fn list_gateways(
    target: &Target,
    args: &ListArgs,
    status: Option<String>,
) -> Result<(Vec<Value>, Option<String>)> {
    let after = args
        .after
        .as_deref()
        .map(|a| PublicKey::from_hex(a).context("the cursor is a gateway key"))
        .transpose()?;
    match target {
        Target::Local { store, .. } => {
            let status = status.as_deref().and_then(Status::parse);
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
            Ok((values(&items)?, next.map(|c| c.to_string())))
        }
        Target::Remote(admin) => {
            let q = [
                ("status", status),
                ("group", args.group.clone()),
                ("site", args.site.clone()),
            ];
            output::collect(
                args.limit,
                MAX_PAGE,
                after.map(|a| a.to_string()),
                |g: &Value| text(&g["public_key"]),
                |after, limit| remote_page(admin, route::admin::GATEWAYS, &q, after, limit),
            )
            .await
        }
    }
}

/// Records as the admin API writes them.
pub(super) fn values<T: serde::Serialize>(items: &[T]) -> Result<Vec<Value>> {
    items
        .iter()
        .map(|i| serde_json::to_value(i).map_err(Into::into))
        .collect()
}

/// The name of an enrollment's outcome, as the admin API writes it.
fn outcome_name(o: EnrollOutcome) -> &'static str {
    match o {
        EnrollOutcome::Created => "created",
        EnrollOutcome::Unchanged => "unchanged",
    }
}

/// A peripheral or gateway named on the command line, its id checked.
enum SubjectId {
    Peripheral(PeripheralId),
    Gateway(PublicKey),
}

impl SubjectId {
    fn parse(what: Kind, id: &str) -> Result<Self> {
        Ok(match what {
            Kind::Peripheral => Self::Peripheral(
                PeripheralId::from_hex(id).context("a peripheral id is 16 hex digits")?,
            ),
            Kind::Gateway => {
                Self::Gateway(PublicKey::from_hex(id).context("a gateway key is 64 hex digits")?)
            }
        })
    }

    /// Its admin API path.
    fn path(&self) -> String {
        match self {
            Self::Peripheral(id) => format!("/v1/admin/peripherals/{id}"),
            Self::Gateway(key) => format!("/v1/admin/gateways/{key}"),
        }
    }
}

/// Shows one peripheral or gateway.
pub(super) async fn show(cli: &Cli, args: &ShowArgs) -> Result<ExitCode> {
    let subject = SubjectId::parse(args.what, &args.id)?;
    let target = open_target(cli).await?;
    let record = match (&target, &subject) {
        (Target::Local { store, .. }, SubjectId::Peripheral(id)) => {
            registry::peripheral_view(store, id)
                .await
                .map_err(api)
                .and_then(json)
        }
        (Target::Local { store, .. }, SubjectId::Gateway(key)) => {
            let within = registry::online_within(settings(cli)?.limits.feed_wait_max_ms);
            registry::gateway_view(store, key, within)
                .await
                .map_err(api)
                .and_then(json)
        }
        (Target::Remote(admin), s) => admin.get(&s.path()).await,
    };
    target.close().await;
    output::record(cli.json, &record?)?;
    Ok(ExitCode::SUCCESS)
}

/// A record as the admin API writes it.
fn json<T: serde::Serialize>(v: T) -> Result<Value> {
    serde_json::to_value(v).map_err(Into::into)
}

/// A lifecycle transition (`verb`: activate, suspend, reinstate, revoke).
pub(super) async fn transition(cli: &Cli, t: &Subject, verb: &str) -> Result<ExitCode> {
    let tr = registry::parse_transition(verb).map_err(api)?;
    let subject = SubjectId::parse(t.what, &t.id)?;
    let target = open_target(cli).await?;
    let record = match (&target, &subject) {
        (Target::Local { store, actor }, SubjectId::Peripheral(id)) => store
            .transition_peripheral(id, tr, actor)
            .await
            .map_err(api)
            .and_then(json),
        (Target::Local { store, actor }, SubjectId::Gateway(key)) => store
            .transition_gateway(key, tr, actor)
            .await
            .map_err(api)
            .and_then(json),
        (Target::Remote(admin), s) => admin.post(&format!("{}/{verb}", s.path()), None).await,
    };
    target.close().await;
    output::record(cli.json, &record?)?;
    Ok(ExitCode::SUCCESS)
}

/// Adds a policy rule.
pub(super) async fn associate(cli: &Cli, args: &AssociateArgs) -> Result<ExitCode> {
    let rule = NewPolicy {
        peripheral: args.peripheral.clone(),
        gateway: args.gateway.clone(),
        scope: args.scope.clone(),
        session_s: args.session_s,
        resumption_s: args.resumption_s,
    };
    let target = open_target(cli).await?;
    let added = match &target {
        Target::Local { store, actor } => registry::add_policy(store, &rule, actor)
            .await
            .map_err(api)
            .and_then(json),
        Target::Remote(admin) => {
            admin
                .post(route::admin::POLICIES, Some(serde_json::to_value(&rule)?))
                .await
        }
    };
    target.close().await;
    let rule = added?;
    if cli.json {
        output::record(true, &rule)?;
    } else {
        // For people: the scope by name, the time as a time.
        output::record(
            false,
            &serde_json::json!({
                "rule": rule["id"],
                "peripheral": rule["peripheral"],
                "gateway": rule["gateway"],
                "scope": scope_text(&rule["scope"]),
                "session_s": rule["lifetimes"]["session_s"],
                "resumption_s": rule["lifetimes"]["resumption_s"],
                "created": rule["created_ms"].as_i64().map(format_ms),
            }),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A rule's scope bits by name.
fn scope_text(v: &Value) -> String {
    v.as_u64()
        .and_then(|b| u32::try_from(b).ok())
        .map_or_else(|| "-".to_owned(), |b| scope_names(Scope(b)))
}

/// Lists or removes policy rules.
pub(super) async fn policy(cli: &Cli, cmd: &PolicyCmd) -> Result<ExitCode> {
    let target = open_target(cli).await?;
    let done = policy_on(cli, &target, cmd).await;
    target.close().await;
    done.map(|()| ExitCode::SUCCESS)
}

async fn policy_on(cli: &Cli, target: &Target, cmd: &PolicyCmd) -> Result<()> {
    match cmd {
        PolicyCmd::List => {
            let rules = match target {
                Target::Local { store, .. } => values(&store.list_policies().await.map_err(api)?)?,
                Target::Remote(admin) => match admin.get(route::admin::POLICIES).await? {
                    Value::Array(rules) => rules,
                    _ => anyhow::bail!("the policy list is not a list"),
                },
            };
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
                        r["id"].to_string(),
                        text(&r["peripheral"]),
                        text(&r["gateway"]),
                        scope_text(&r["scope"]),
                        r["lifetimes"]["session_s"].to_string(),
                        r["lifetimes"]["resumption_s"].to_string(),
                    ]
                },
            )
        }
        PolicyCmd::Remove { id } => {
            match target {
                Target::Local { store, actor } => {
                    store.remove_policy(*id, actor).await.map_err(api)?;
                }
                Target::Remote(admin) => {
                    admin.delete(&format!("/v1/admin/policies/{id}")).await?;
                }
            }
            output::record(cli.json, &serde_json::json!({ "removed_rule": id }))
        }
    }
}
