//! `keys list`, `keys rotate`, `keys purge` and `export-anchor`: the
//! backend's key pairs and the provisioning bundle ([`vouch_backend::keyring`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use vouch_backend::datadir::{self, DataDir};
use vouch_backend::keyring::{self, RingStatus};
use vouch_backend::store::{Rfc3339, Store};

use vouch_proto::wire::backend::route;

use super::{local_actor, open_store, open_target, output, Cli, Target};

pub(super) const KEYS_HELP: &str =
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
pub(super) enum KeysCmd {
    /// List every key id: state, created, update serials, public keys (never a private key).
    #[command(
        long_about = "List every key id the backend registered: its state (next: the committed \
successor devices hold a commitment to; current; retired: replaced by a rotation, still served; \
purged), when it was created, the serials of the rotations that made it current and replaced it, \
whether its private key is in this data directory, and its public keys. Never prints a private key."
    )]
    List,
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

// The flags of `export-anchor`.
#[derive(Args, Debug)]
pub(super) struct ExportAnchorArgs {
    /// Write to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Prints or writes the provisioning bundle.
pub(super) async fn export_anchor(cli: &Cli, args: &ExportAnchorArgs) -> Result<ExitCode> {
    let bundle = match open_target(cli).await? {
        Target::Remote(admin) => admin.get(route::admin::ANCHOR).await?,
        local @ Target::Local { .. } => {
            local.close().await;
            let mut data = DataDir::load(&cli.data_dir)?;
            let store = open_store(cli).await?;
            let status = match keyring::register(&mut data, &store, &local_actor()).await {
                Ok(_) => keyring::status(&data, &store).await,
                Err(e) => Err(e),
            };
            store.close().await;
            serde_json::to_value(vouch_backend::anchor::bundle(&status?.fleet))?
        }
    };
    let json = serde_json::to_string_pretty(&bundle)?;
    match &args.out {
        Some(p) => std::fs::write(p, json + "\n")
            .with_context(|| format!("cannot write {}", p.display()))?,
        None => println!("{json}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists, rotates or purges the backend's key pairs.
pub(super) async fn keys(cli: &Cli, cmd: &KeysCmd) -> Result<ExitCode> {
    let mut data = DataDir::load(&cli.data_dir)?;
    let store = open_store(cli).await?;
    let result = match keyring::register(&mut data, &store, &local_actor()).await {
        Ok(_) => keys_on(cli, cmd, &data, &store).await,
        Err(e) => Err(e.into()),
    };
    store.close().await;
    result.map(|()| ExitCode::SUCCESS)
}

async fn keys_on(cli: &Cli, cmd: &KeysCmd, data: &DataDir, store: &Store) -> Result<()> {
    match cmd {
        KeysCmd::List => {
            let status = keyring::status(data, store).await?;
            if cli.json {
                print_status_json(&status)
            } else {
                print_status(&status);
                Ok(())
            }
        }
        KeysCmd::Rotate { force } => rotate(cli, data, store, *force).await,
        KeysCmd::Purge { kid, yes } => purge(cli, store, *kid, *yes).await,
    }
}

/// `keys list --json`.
fn print_status_json(status: &RingStatus) -> Result<()> {
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
                "started": Rfc3339(i.started_ms).to_string(),
                "seen": Rfc3339(i.seen_ms).to_string(),
                "serves": i.serves,
                "holds": i.holds,
            })).collect::<Vec<_>>(),
        }))?
    );
    Ok(())
}

/// `keys list`: the keys (a table), then the live instances.
fn print_status(status: &RingStatus) {
    let serial = |s: Option<u32>| s.map_or_else(|| "-".to_owned(), |s| s.to_string());
    let rows: Vec<Vec<String>> = status
        .keys
        .iter()
        .map(|k| {
            vec![
                k.kid.to_string(),
                k.state.as_str().to_owned(),
                k.created.to_string(),
                serial(k.added_serial),
                serial(k.retired_serial),
                if k.private_key_here { "here" } else { "absent" }.to_owned(),
                k.signing.clone(),
                k.sealing.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &["kid", "state", "created", "added", "retired", "private", "signing", "sealing"],
            &rows
        )
    );
    println!(
        "last update serial {}; a fully updated peripheral seals to key {} and holds the commitment to the next key",
        status.serial(),
        status.current(),
    );
    if !status.registered {
        println!("not registered yet: the data directory's two lowest keys are current and next");
    }
    if status.handed_out < status.serial() {
        println!(
            "gateways are handed the updates up to serial {} only: the next one rotates to a key \
             a live instance does not serve yet (see below)",
            status.handed_out
        );
    }
    let list = |kids: &BTreeSet<u8>| kids.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
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

/// `keys rotate`.
async fn rotate(cli: &Cli, data: &DataDir, store: &Store, force: bool) -> Result<()> {
    let options = keyring::RotateOptions { force };
    let r = keyring::rotate_with(data, store, &local_actor(), options).await?;
    let (kid, next) = (r.anchor.kid, r.next.kid);
    let next_files = [
        cli.data_dir.join(datadir::files::signing(next)),
        cli.data_dir.join(datadir::files::sealing(next)),
    ];
    if cli.json {
        return output::record(
            true,
            &serde_json::json!({
                "update_serial": r.update.serial,
                "current": kid.0,
                "next": next.0,
                "next_files": next_files,
            }),
        );
    }
    let files = format!(
        "{} and {}",
        next_files[0].display(),
        next_files[1].display()
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
    Ok(())
}

/// `keys purge`.
async fn purge(cli: &Cli, store: &Store, kid: u8, yes: bool) -> Result<()> {
    if !yes {
        bail!(
            "purging key {kid} is irreversible: peripherals that still know only key {kid} \
             will be refused and must be provisioned again. Run again with --yes"
        );
    }
    let p = keyring::purge(
        &cli.data_dir,
        store,
        vouch_proto::keys::KeyId(kid),
        &local_actor(),
    )
    .await?;
    if cli.json {
        return output::record(
            true,
            &serde_json::json!({
                "kid": kid,
                "newly_purged": p.newly_purged,
                "files_removed": p.files_removed,
            }),
        );
    }
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
    Ok(())
}
