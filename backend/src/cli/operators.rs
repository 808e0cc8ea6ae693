//! `operators`, `tokens`, `whoami`: named operators with roles and their API
//! tokens ([`vouch_backend::access`]), locally or with `--url` (an admin's
//! token).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::Value;
use vouch_backend::access::{NewToken, TokenHash};
use vouch_backend::datadir::{self, DataDir};
use vouch_backend::registry;
use vouch_proto::wire::backend::route;

use super::registry::values;
use super::{api, format_ms, open_target, output, remote, Cli, Target};

/// The long help of `operators`.
pub(super) const OPERATORS_HELP: &str = "Named operators, each with one role:\n\
  viewer    reads everything (registry, policy, audit, lockouts, anchors, metrics)\n\
  operator  also enrolls, imports, suspends, reinstates, revokes, associates, lifts lockouts\n\
  admin     also manages operators and tokens, and removes policy rules\n\n\
Each operator has API tokens (`vouch-backend tokens`) for the admin API and for this CLI with --url; \
only their hashes are stored, and a token is shown once, when it is made. The admin token `init` printed \
is the token of the first admin, `admin`. Every audit entry names the operator who acted \
(`operator:NAME`; the local CLI writes `cli:USER`). A removed operator's tokens stop working at once and its \
name is not reused, so the audit log always names one person.";

#[derive(Subcommand, Debug)]
pub(super) enum OperatorsCmd {
    /// List operators (removed ones too).
    List,
    /// Add an operator with a role; prints its first token, once.
    Add {
        /// Name: 1-64 of letters, digits, '.', '_', '-', '@'.
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
        /// Write the token to this new file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Remove an operator: its tokens stop working at once.
    Remove {
        /// Name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum TokensCmd {
    /// List tokens (never their secrets).
    List {
        /// Only this operator's.
        #[arg(long)]
        operator: Option<String>,
    },
    /// Make another token for an operator; prints it, once.
    Create {
        /// The operator.
        operator: String,
        /// Write the token to this new file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Replace a token: a new one for the same operator, the old one revoked.
    Rotate {
        /// The token's id (`tokens list`).
        id: String,
        /// Write the new token to this new file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a token: it stops working at once.
    Revoke {
        /// The token's id.
        id: String,
    },
}

/// Opens the registry; locally, first makes `init`'s admin token the first
/// admin's if no backend did yet (`serve` does it at its start).
async fn open(cli: &Cli) -> Result<Target> {
    let target = open_target(cli).await?;
    if let Target::Local { store, .. } = &target {
        if datadir::is_initialized(&cli.data_dir) {
            let data = DataDir::load(&cli.data_dir)?;
            store
                .bootstrap_operators(&TokenHash(data.token_hash))
                .await
                .map_err(api)?;
        }
    }
    Ok(target)
}

/// Lists, adds or removes operators.
pub(super) async fn operators(cli: &Cli, cmd: &OperatorsCmd) -> Result<ExitCode> {
    let target = open(cli).await?;
    let done = operators_on(cli, &target, cmd).await;
    target.close().await;
    done.map(|()| ExitCode::SUCCESS)
}

async fn operators_on(cli: &Cli, target: &Target, cmd: &OperatorsCmd) -> Result<()> {
    match cmd {
        OperatorsCmd::List => {
            let items = match target {
                Target::Local { store, .. } => values(&store.list_operators().await.map_err(api)?)?,
                Target::Remote(admin) => list(admin.get(route::admin::OPERATORS).await?)?,
            };
            output::page(
                cli.json,
                &items,
                None,
                &["name", "role", "created", "removed"],
                |o| {
                    vec![
                        output::cell(o["name"].as_str()),
                        output::cell(o["role"].as_str()),
                        time(&o["created_ms"]),
                        time(&o["removed_ms"]),
                    ]
                },
            )
        }
        OperatorsCmd::Add { name, role, out } => {
            let out = TokenFile::reserve(out.as_deref())?;
            let (operator, token) = match target {
                Target::Local { store, actor } => {
                    let (op, t) = registry::add_operator(store, name, role, actor)
                        .await
                        .map_err(api)?;
                    (serde_json::to_value(op)?, shown(&t))
                }
                Target::Remote(admin) => {
                    let a = admin
                        .post(
                            route::admin::OPERATORS,
                            Some(serde_json::json!({ "name": name, "role": role })),
                        )
                        .await?;
                    (a["operator"].clone(), a["token"].clone())
                }
            };
            let mut record = serde_json::json!({
                "operator": operator["name"],
                "role": operator["role"],
            });
            give_token(cli, &mut record, &token, out)
        }
        OperatorsCmd::Remove { name } => {
            match target {
                Target::Local { store, actor } => registry::remove_operator(store, name, actor)
                    .await
                    .map_err(api)?,
                Target::Remote(admin) => {
                    admin
                        .delete(&format!("/v1/admin/operators/{}", remote::enc(name)))
                        .await?;
                }
            }
            output::record(cli.json, &serde_json::json!({ "removed_operator": name }))
        }
    }
}

/// Lists, creates, rotates or revokes tokens.
pub(super) async fn tokens(cli: &Cli, cmd: &TokensCmd) -> Result<ExitCode> {
    let target = open(cli).await?;
    let done = tokens_on(cli, &target, cmd).await;
    target.close().await;
    done.map(|()| ExitCode::SUCCESS)
}

async fn tokens_on(cli: &Cli, target: &Target, cmd: &TokensCmd) -> Result<()> {
    match cmd {
        TokensCmd::List { operator } => {
            let items = match target {
                Target::Local { store, .. } => {
                    values(&store.list_tokens(operator.as_deref()).await.map_err(api)?)?
                }
                Target::Remote(admin) => list(
                    admin
                        .get(&format!(
                            "{}{}",
                            route::admin::TOKENS,
                            remote::query(&[("operator", operator.clone())])
                        ))
                        .await?,
                )?,
            };
            output::page(
                cli.json,
                &items,
                None,
                &["id", "operator", "created", "revoked"],
                |t| {
                    vec![
                        output::cell(t["id"].as_str()),
                        output::cell(t["operator"].as_str()),
                        time(&t["created_ms"]),
                        time(&t["revoked_ms"]),
                    ]
                },
            )
        }
        TokensCmd::Create { operator, out } => {
            let out = TokenFile::reserve(out.as_deref())?;
            let token = match target {
                Target::Local { store, actor } => {
                    let (_, t) = registry::add_token(store, operator, actor)
                        .await
                        .map_err(api)?;
                    shown(&t)
                }
                Target::Remote(admin) => {
                    admin
                        .post(
                            route::admin::TOKENS,
                            Some(serde_json::json!({ "operator": operator })),
                        )
                        .await?
                }
            };
            let mut record = serde_json::json!({ "operator": operator });
            give_token(cli, &mut record, &token, out)
        }
        TokensCmd::Rotate { id, out } => {
            let out = TokenFile::reserve(out.as_deref())?;
            let (operator, token) = match target {
                Target::Local { store, actor } => {
                    let (r, t) = registry::rotate_token(store, id, actor)
                        .await
                        .map_err(api)?;
                    (r.operator, shown(&t))
                }
                Target::Remote(admin) => {
                    let t = admin
                        .post(
                            &format!("/v1/admin/tokens/{}/rotate", remote::enc(id)),
                            None,
                        )
                        .await?;
                    (t["operator"].as_str().unwrap_or("-").to_owned(), t)
                }
            };
            let mut record = serde_json::json!({ "operator": operator, "replaces": id });
            give_token(cli, &mut record, &token, out)
        }
        TokensCmd::Revoke { id } => {
            match target {
                Target::Local { store, actor } => registry::revoke_token(store, id, actor)
                    .await
                    .map_err(api)?,
                Target::Remote(admin) => {
                    admin
                        .delete(&format!("/v1/admin/tokens/{}", remote::enc(id)))
                        .await?;
                }
            }
            output::record(cli.json, &serde_json::json!({ "revoked_token": id }))
        }
    }
}

/// Who is acting: the operator of `--url`'s token, or locally the shell
/// user, with every right.
pub(super) async fn whoami(cli: &Cli) -> Result<ExitCode> {
    let target = open_target(cli).await?;
    let me = match &target {
        Target::Local { actor, .. } => serde_json::json!({
            "name": actor,
            "role": "admin",
            "token_id": null,
        }),
        Target::Remote(admin) => admin.get(route::admin::WHOAMI).await?,
    };
    target.close().await;
    output::record(cli.json, &me)?;
    Ok(ExitCode::SUCCESS)
}

/// A list answer's items.
fn list(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) => Ok(items),
        _ => anyhow::bail!("the answer is not a list"),
    }
}

/// A time field, or `-`.
fn time(v: &Value) -> String {
    v.as_i64().map_or_else(|| "-".to_owned(), format_ms)
}

/// A token just made, in the admin API's form (`IssuedToken`).
fn shown(t: &NewToken) -> Value {
    serde_json::json!({ "id": t.id, "token": t.token.as_str() })
}

/// The file a new token goes into, created (empty, mode 0600, never over
/// an existing file) before the request that makes the token: a path that
/// cannot be written fails before the backend revokes or issues anything.
/// Removed again if the token never comes.
struct TokenFile {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl TokenFile {
    fn reserve(out: Option<&Path>) -> Result<Option<Self>> {
        let Some(path) = out else { return Ok(None) };
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| {
                format!(
                    "cannot create {} (a token file is never overwritten: give a new path)",
                    path.display()
                )
            })?;
        Ok(Some(Self {
            path: path.to_owned(),
            file: Some(file),
        }))
    }

    /// Writes the token and syncs it; the file is then kept.
    fn write(mut self, secret: &str) -> std::io::Result<()> {
        use std::io::Write;
        let mut file = self.file.take().ok_or(std::io::ErrorKind::Other)?;
        file.write_all(format!("{secret}\n").as_bytes())?;
        file.sync_all()
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        // Still holding the file: the token never came.
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Prints the record with the token's id, and the token itself: into a new
/// file (mode 0600) with `out`, else on standard output, once.
fn give_token(cli: &Cli, record: &mut Value, token: &Value, out: Option<TokenFile>) -> Result<()> {
    let secret = token["token"]
        .as_str()
        .context("the answer holds no token")?;
    record["token_id"] = token["id"].clone();
    match out {
        Some(file) => {
            let path = file.path.clone();
            match file.write(secret) {
                Ok(()) => {
                    record["token_file"] = path.display().to_string().into();
                    output::record(cli.json, record)
                }
                // The backend made the token (and may have revoked the one
                // it replaces): it must not be lost.
                Err(e) => {
                    eprintln!(
                        "error: cannot write the token to {}: {e}; here it is instead:",
                        path.display()
                    );
                    record["token"] = secret.into();
                    output::record(cli.json, record)?;
                    anyhow::bail!("the token was printed, not written to {}", path.display())
                }
            }
        }
        None => {
            record["token"] = secret.into();
            output::record(cli.json, record)?;
            if !cli.json {
                eprintln!(
                    "the token is shown this once; keep it in a file only its operator can read (chmod 600)"
                );
            }
            Ok(())
        }
    }
}
