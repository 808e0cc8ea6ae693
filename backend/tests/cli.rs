//! The `vouch-backend` binary: init, the CLI verbs, serve with graceful
//! shutdown, a SIGKILL in the middle of a bulk import, and two `serve`
//! processes on one PostgreSQL honouring each other's revocations.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{gateway_takes, Db, Device};
use vouch_backend::store::{PeripheralFilter, Store};
use vouch_backend::{datadir, pki};
use vouch_proto::anchor::{Anchor, AnchorSet};
use vouch_proto::keys::{IdentityKey, PeripheralId};
use vouch_proto::wire::backend::{
    decode_body, encode_body, FeedBatch, FeedChange, Refusal, VouchAnswer, VouchRequest,
    CONTENT_TYPE,
};

const BIN: &str = env!("CARGO_BIN_EXE_vouch-backend");

on_both!(
    cli_verbs_work_and_bad_input_is_a_clear_error,
    sigkill_mid_import_loses_nothing_acknowledged,
    keys_rotate_purge_and_export_through_the_cli,
    an_invalid_utf8_line_is_reported_and_the_rest_imported,
    refusals_counted_before_a_sigterm_are_written_and_audit_prune_keeps_verify_working,
    keys_rotate_waits_for_every_live_serve_instance,
    the_cli_runs_the_registry_verbs_remotely_within_the_token_s_role,
);

fn cli(dir: &Path, db: &Db, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--data-dir").arg(dir);
    if let Db::Postgres { url, .. } = db {
        cmd.arg("--database-url").arg(url);
    }
    cmd.args(args)
        .env_remove("VOUCH_DATABASE_URL")
        .output()
        .expect("run vouch-backend")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Whether `out` has the line `NAME: VALUE` (a result printed as text).
fn has_field(out: &str, name: &str, value: &str) -> bool {
    out.lines().any(|l| {
        l.split_once(':')
            .is_some_and(|(k, v)| k == name && v.trim() == value)
    })
}

/// The cells of row `n` of a table (0: the header).
fn row(out: &str, n: usize) -> Vec<String> {
    out.lines()
        .nth(n)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn fails_cleanly(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("error"), "no error message: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
}

fn init(dir: &Path, db: &Db) -> String {
    let out = ok(&cli(dir, db, &["init", "--san", "vouch.test"]));
    out.lines().nth(2).expect("token line").trim().to_owned()
}

async fn cli_verbs_work_and_bad_input_is_a_clear_error(db: Db) {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let dir = dir.as_path();
    let token = init(dir, &db);
    assert!(token.starts_with("vouch_"), "{token}");
    let before = std::fs::read(dir.join("signing-1.pem")).expect("key");
    let again = ok(&cli(dir, &db, &["init"]));
    assert!(
        again.contains("already initialized; nothing changed"),
        "{again}"
    );
    assert_eq!(
        std::fs::read(dir.join("signing-1.pem")).expect("key"),
        before
    );

    let dev = Device::new(1);
    let pk = dev.key.public_key().to_string();
    let out = ok(&cli(
        dir,
        &db,
        &[
            "enroll",
            "peripheral",
            "--public-key",
            &pk,
            "--group",
            "meters",
            "--attr",
            "fw=1.0",
        ],
    ));
    // One form for a result: `field: value` lines.
    assert!(
        has_field(&out, "id", &dev.id.to_string()) && has_field(&out, "outcome", "created"),
        "{out}"
    );
    let out = ok(&cli(
        dir,
        &db,
        &[
            "enroll",
            "peripheral",
            "--public-key",
            &pk,
            "--group",
            "meters",
            "--attr",
            "fw=1.0",
        ],
    ));
    assert!(has_field(&out, "outcome", "unchanged"), "{out}");
    // A gateway key as a PEM file.
    let gw = IdentityKey::from_seed(&[100; 32]);
    let gw_pem = tmp.path().join("gw.pub.pem");
    std::fs::write(&gw_pem, gw.public_key().to_public_key_pem()).expect("write");
    let cert = tmp.path().join("gw.crt");
    ok(&cli(
        dir,
        &db,
        &[
            "enroll",
            "gateway",
            "--public-key",
            &format!("@{}", gw_pem.display()),
            "--site",
            "plant",
            "--out",
            cert.to_str().expect("utf8"),
        ],
    ));
    let cert_pem = std::fs::read_to_string(&cert).expect("cert");
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes()).expect("der");
    assert_eq!(pki::ed25519_key_of(&der), Some(gw.public_key()));

    let out = ok(&cli(
        dir,
        &db,
        &[
            "associate",
            "--peripheral",
            "group:meters",
            "--gateway",
            "site:plant",
            "--scope",
            "telemetry,command",
        ],
    ));
    // For people, the scope by name and the time as a time.
    assert!(
        has_field(&out, "scope", "telemetry,command")
            && out
                .lines()
                .any(|l| l.starts_with("created:") && l.trim_end().ends_with('Z')),
        "{out}"
    );
    // Lists are tables with a header row.
    let out = ok(&cli(dir, &db, &["policy", "list"]));
    assert_eq!(
        row(&out, 0),
        [
            "ID",
            "PERIPHERAL",
            "GATEWAY",
            "SCOPE",
            "SESSION_S",
            "RESUMPTION_S"
        ],
        "{out}"
    );
    assert_eq!(
        row(&out, 1)[1..6],
        [
            "group:meters",
            "site:plant",
            "telemetry,command",
            "3600",
            "86400"
        ],
        "{out}"
    );
    let out = ok(&cli(dir, &db, &["list", "peripheral"]));
    assert_eq!(
        row(&out, 0),
        ["ID", "STATUS", "GROUP", "ATTRIBUTES"],
        "{out}"
    );
    assert_eq!(
        row(&out, 1),
        [dev.id.to_string().as_str(), "active", "meters", "fw=1.0"],
        "{out}"
    );
    // --json: one document, in the admin API's shape.
    let out = ok(&cli(dir, &db, &["list", "gateway", "--json"]));
    let gws: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(gws["items"][0]["site"], "plant");
    assert_eq!(gws["next_cursor"], serde_json::Value::Null);
    let out = ok(&cli(dir, &db, &["show", "peripheral", &dev.id.to_string()]));
    assert!(has_field(&out, "status", "active"), "{out}");
    for verb in ["suspend", "reinstate", "revoke"] {
        ok(&cli(dir, &db, &[verb, "peripheral", &dev.id.to_string()]));
    }
    let out = ok(&cli(
        dir,
        &db,
        &["audit", "query", "--peripheral", &dev.id.to_string()],
    ));
    for action in [
        "peripheral_enroll",
        "peripheral_suspend",
        "peripheral_reinstate",
        "peripheral_revoke",
    ] {
        assert!(out.contains(action), "{action} missing from {out}");
    }
    let out = ok(&cli(dir, &db, &["audit", "verify"]));
    assert!(has_field(&out, "result", "intact"), "{out}");
    let out = ok(&cli(dir, &db, &["export-anchor"]));
    let bundle: vouch_proto::anchor::AnchorBundle =
        serde_json::from_str(&out).expect("bundle json");
    let anchors = bundle.to_anchor_set().expect("valid bundle");
    let anchor: Anchor = *anchors.primary();
    assert_eq!(anchor.kid.0, 1);

    // Bad input: a clear error and a failing exit status, never a panic.
    fails_cleanly(
        &cli(
            dir,
            &db,
            &["enroll", "peripheral", "--public-key", "nothex"],
        ),
        "invalid_public_key",
    );
    fails_cleanly(
        &cli(
            dir,
            &db,
            &[
                "enroll",
                "peripheral",
                "--public-key",
                &pk,
                "--group",
                "other",
            ],
        ),
        "peripheral_exists",
    );
    fails_cleanly(
        &cli(
            dir,
            &db,
            &["enroll", "peripheral", "--public-key", "@/does/not/exist"],
        ),
        "cannot read",
    );
    fails_cleanly(&cli(dir, &db, &["show", "peripheral", "zz"]), "16 hex");
    fails_cleanly(
        &cli(dir, &db, &["show", "peripheral", "0000000000000000"]),
        "not_found",
    );
    fails_cleanly(
        &cli(dir, &db, &["reinstate", "peripheral", &dev.id.to_string()]),
        "invalid_transition",
    );
    fails_cleanly(
        &cli(
            dir,
            &db,
            &["associate", "--peripheral", "x", "--gateway", "any"],
        ),
        "invalid_selector",
    );
    fails_cleanly(
        &cli(dir, &db, &["audit", "query", "--since", "soon"]),
        "invalid_time",
    );
    fails_cleanly(
        &cli(dir, &db, &["import", "/does/not/exist.csv"]),
        "cannot open",
    );
    // With --json, a failure is a JSON document on standard error too.
    let failed = cli(dir, &db, &["--json", "import", "/does/not/exist.csv"]);
    assert!(!failed.status.success());
    let error: serde_json::Value =
        serde_json::from_slice(&failed.stderr).expect("--json error is JSON");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot open") && e.contains("exist.csv")),
        "{error}"
    );
    // init says what it did in the same two forms; nothing is created again.
    let again: serde_json::Value =
        serde_json::from_str(&ok(&cli(dir, &db, &["--json", "init"]))).expect("init --json");
    assert_eq!(
        (&again["created"], &again["admin_token"]),
        (&serde_json::json!(false), &serde_json::Value::Null),
        "{again}"
    );
    // An import's summary is a result like any other: `field: value`.
    let rows = tmp.path().join("one.ndjson");
    let row_dev = Device::new(77);
    std::fs::write(
        &rows,
        format!(
            "{{\"public_key\":\"{}\",\"group\":\"g\"}}\n",
            row_dev.key.public_key()
        ),
    )
    .expect("write rows");
    let out = ok(&cli(dir, &db, &["import", rows.to_str().expect("utf8")]));
    assert!(
        has_field(&out, "rows", "1")
            && has_field(&out, "created", "1")
            && has_field(&out, "errors", "0"),
        "{out}"
    );
    fails_cleanly(
        &cli(dir, &db, &["list", "peripheral", "--status", "sideways"]),
        "status",
    );
    // A limit of nothing would print an empty page and no cursor.
    fails_cleanly(
        &cli(dir, &db, &["list", "peripheral", "--limit", "0"]),
        "--limit",
    );
    let fresh = tmp.path().join("nothing");
    fails_cleanly(
        &cli(&fresh, &Db::Sqlite, &["list", "peripheral"]),
        "not initialized",
    );
    let out = cli(
        dir,
        &db,
        &["serve", "--insecure-http", "--listen", "0.0.0.0:0"],
    );
    fails_cleanly(&out, "loopback");
}

/// The exported bundle as the anchors a device is flashed with.
/// Issue 16: a line of invalid UTF-8 in a bulk import used to abort the
/// whole file (exit 1, no line number, nothing imported). It is that row's
/// error now, with its line number; every other row is imported and the
/// exit status is 2 (some rows refused).
async fn an_invalid_utf8_line_is_reported_and_the_rest_imported(db: Db) {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let dir = dir.as_path();
    init(dir, &db);
    let key = |i: u8| IdentityKey::from_seed(&[i; 32]).public_key().to_string();
    for (name, bytes, bad_line) in [
        (
            "rows.ndjson",
            [
                format!("{{\"public_key\":\"{}\"}}\n", key(1)).into_bytes(),
                b"{\"public_key\":\"\xff\"}\n".to_vec(),
                format!("{{\"public_key\":\"{}\"}}\n", key(2)).into_bytes(),
            ]
            .concat(),
            2,
        ),
        (
            "rows.csv",
            [
                format!("public_key,group\n{},a\n", key(3)).into_bytes(),
                format!("{},b\n{},", key(4), key(5)).into_bytes(),
                b"\xe9t\xe9\n".to_vec(),
            ]
            .concat(),
            4,
        ),
    ] {
        let file = tmp.path().join(name);
        std::fs::write(&file, bytes).expect("write");
        let report = tmp.path().join(format!("{name}.report"));
        let out = cli(
            dir,
            &db,
            &[
                "--json",
                "import",
                file.to_str().expect("utf8"),
                "--report",
                report.to_str().expect("utf8"),
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary json");
        assert_eq!(
            (summary["created"].as_u64(), summary["errors"].as_u64()),
            (Some(2), Some(1)),
            "{name}: {summary}"
        );
        let rows: Vec<serde_json::Value> = std::fs::read_to_string(&report)
            .expect("report")
            .lines()
            .map(|l| serde_json::from_str(l).expect("report line"))
            .collect();
        let bad: Vec<&serde_json::Value> = rows.iter().filter(|r| r["result"] == "error").collect();
        assert_eq!(bad.len(), 1, "{name}: {rows:?}");
        assert_eq!(bad[0]["line"], bad_line, "{name}");
        assert_eq!(bad[0]["error"]["code"], "invalid_utf8", "{name}");
    }
    let listed = ok(&cli(dir, &db, &["list", "peripheral", "--json"]));
    for i in 1..=4 {
        assert!(listed.contains(&key(i)), "key {i} not imported: {listed}");
    }
    assert!(!listed.contains(&key(5)));

    // Paging never truncates silently: a limit below the count says where
    // the rest starts (standard error; `next_cursor` in JSON), a limit that
    // reaches the end says nothing.
    let first = cli(dir, &db, &["list", "peripheral", "--limit", "2"]);
    assert_eq!(ok(&first).lines().count(), 3, "a header and two rows");
    let hint = String::from_utf8_lossy(&first.stderr).into_owned();
    let cursor = hint
        .trim()
        .strip_prefix("more: next page with --after ")
        .unwrap_or_else(|| panic!("no next-page hint: {hint}"))
        .to_owned();
    let doc: serde_json::Value = serde_json::from_str(&ok(&cli(
        dir,
        &db,
        &["list", "peripheral", "--limit", "2", "--json"],
    )))
    .expect("json");
    assert_eq!(doc["next_cursor"], cursor.as_str());
    let rest = cli(
        dir,
        &db,
        &["list", "peripheral", "--after", &cursor, "--limit", "2"],
    );
    assert_eq!(ok(&rest).lines().count(), 3, "the other two");
    assert!(
        rest.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&rest.stderr)
    );
    let all = cli(dir, &db, &["list", "peripheral", "--limit", "4"]);
    assert_eq!(ok(&all).lines().count(), 5);
    assert!(all.stderr.is_empty(), "no hint when nothing is left");
}

fn export(dir: &Path, db: &Db) -> AnchorSet {
    let out = ok(&cli(dir, db, &["export-anchor"]));
    let bundle: vouch_proto::anchor::AnchorBundle = serde_json::from_str(&out).expect("bundle");
    bundle.to_anchor_set().expect("valid bundle")
}

fn key_list(dir: &Path, db: &Db) -> serde_json::Value {
    serde_json::from_str(&ok(&cli(dir, db, &["keys", "list", "--json"]))).expect("json")
}

fn states(list: &serde_json::Value) -> Vec<(u64, String)> {
    list["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            (
                k["kid"].as_u64().expect("kid"),
                k["state"].as_str().expect("state").to_owned(),
            )
        })
        .collect()
}

async fn keys_rotate_purge_and_export_through_the_cli(db: Db) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let dir = dir.as_path();
    init(dir, &db);
    let secrets = |kid: u8| -> Vec<String> {
        // The base64 lines of both private key files.
        [format!("signing-{kid}.pem"), format!("sealing-{kid}.pem")]
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(dir.join(f))
                    .expect("key file")
                    .lines()
                    .filter(|l| !l.starts_with("-----"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let key1_secrets = secrets(1);

    // Before any rotation: key 1 current, key 2 next, serial 0.
    let list = key_list(dir, &db);
    assert_eq!(
        states(&list),
        [(1, "current".to_owned()), (2, "next".to_owned())]
    );
    assert_eq!(list["serial"], 0);
    assert_eq!(list["registered"], true, "`keys` registers the ring");
    let provisioned = export(dir, &db);
    assert_eq!((provisioned.primary().kid.0, provisioned.serial()), (1, 0));

    let out = ok(&cli(dir, &db, &["keys", "rotate"]));
    assert!(
        out.contains("anchor update 1 = Rotate(key 2), signed by key 2"),
        "{out}"
    );
    assert!(
        out.contains("key 3 created as the next committed key"),
        "{out}"
    );
    for f in ["signing-3.pem", "sealing-3.pem"] {
        let mode = std::fs::metadata(dir.join(f))
            .expect(f)
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let table = ok(&cli(dir, &db, &["keys", "list"]));
    assert!(
        table.contains("current") && table.contains("retired") && table.contains("next"),
        "{table}"
    );
    for secret in key1_secrets.iter().chain(&secrets(2)).chain(&secrets(3)) {
        assert!(
            !table.contains(secret.as_str()),
            "a private key was printed"
        );
        assert!(!out.contains(secret.as_str()), "a private key was printed");
    }
    let list = key_list(dir, &db);
    assert_eq!(
        states(&list),
        [
            (1, "retired".to_owned()),
            (2, "current".to_owned()),
            (3, "next".to_owned())
        ]
    );
    assert_eq!(list["current"], 2);
    let exported = export(dir, &db);
    assert_eq!((exported.primary().kid.0, exported.serial()), (2, 1));

    fails_cleanly(&cli(dir, &db, &["keys", "purge", "2", "--yes"]), "current");
    fails_cleanly(&cli(dir, &db, &["keys", "purge", "3", "--yes"]), "next");
    fails_cleanly(
        &cli(dir, &db, &["keys", "purge", "9", "--yes"]),
        "not in the key ring",
    );
    // Gone verbs and flags are refused by the argument parser.
    fails_cleanly(&cli(dir, &db, &["keys", "retire", "1"]), "retire");
    fails_cleanly(
        &cli(dir, &db, &["keys", "rotate", "--prepare"]),
        "--prepare",
    );

    // The next key kept offline: rotating says what to bring back, and
    // creates nothing.
    let offline = tmp.path().join("offline");
    std::fs::create_dir(&offline).expect("mkdir");
    for f in ["signing-3.pem", "sealing-3.pem"] {
        std::fs::rename(dir.join(f), offline.join(f)).expect("move out");
    }
    fails_cleanly(&cli(dir, &db, &["keys", "rotate"]), "signing-3.pem");
    assert!(!dir.join("signing-4.pem").exists());
    for f in ["signing-3.pem", "sealing-3.pem"] {
        std::fs::rename(offline.join(f), dir.join(f)).expect("bring back");
    }
    let out: serde_json::Value =
        serde_json::from_str(&ok(&cli(dir, &db, &["--json", "keys", "rotate"]))).expect("json");
    assert_eq!(
        (&out["update_serial"], &out["current"], &out["next"]),
        (
            &serde_json::json!(2),
            &serde_json::json!(3),
            &serde_json::json!(4)
        ),
        "{out}"
    );
    // A device flashed before the rotations catches up with the updates
    // the backend stored, in order (here read through the store).
    let store = Store::open(&db.url_for(dir)).await.expect("store");
    let mut caught_up = provisioned.clone();
    for row in store.anchor_updates_after(0).await.expect("updates") {
        caught_up.apply(&row.update).expect("applies in order");
    }
    store.close().await;
    assert_eq!(caught_up.primary().kid.0, 3);
    let exported = export(dir, &db);
    assert_eq!(exported, caught_up, "export = a fully updated device");

    fails_cleanly(&cli(dir, &db, &["keys", "purge", "1"]), "--yes");
    assert!(dir.join("signing-1.pem").exists());
    let out = ok(&cli(dir, &db, &["keys", "purge", "1", "--yes"]));
    assert!(out.contains("key 1 purged"), "{out}");
    let again: serde_json::Value = serde_json::from_str(&ok(&cli(
        dir,
        &db,
        &["--json", "keys", "purge", "1", "--yes"],
    )))
    .expect("purge --json");
    assert_eq!(
        again,
        serde_json::json!({"kid": 1, "newly_purged": false, "files_removed": false})
    );
    assert!(!dir.join("signing-1.pem").exists() && !dir.join("sealing-1.pem").exists());
    assert_eq!(
        states(&key_list(dir, &db)),
        [
            (1, "purged".to_owned()),
            (2, "retired".to_owned()),
            (3, "current".to_owned()),
            (4, "next".to_owned())
        ]
    );
    // Without key 1's files the directory is still initialized.
    let again = ok(&cli(dir, &db, &["init"]));
    assert!(again.contains("already initialized"), "{again}");

    // Every change is in the audit log, and the chain holds.
    let audit = ok(&cli(dir, &db, &["audit", "query", "--json"]));
    for action in [
        "backend_key_genesis",
        "backend_key_rotate",
        "backend_key_purge",
    ] {
        assert!(audit.contains(action), "{action} missing from {audit}");
    }
    let out = ok(&cli(dir, &db, &["audit", "verify"]));
    assert!(has_field(&out, "result", "intact"), "{out}");

    // The help explains the procedure.
    let help = ok(&cli(dir, &db, &["keys", "--help"]));
    for word in [
        "rotate",
        "commitment",
        "offline",
        "purge",
        "export-anchor",
        "unknown_backend_key",
    ] {
        assert!(
            help.contains(word),
            "{word} missing from keys --help: {help}"
        );
    }
    let help = ok(&cli(dir, &db, &["keys", "purge", "--help"]));
    assert!(help.contains("Irreversible"), "{help}");
}

/// Issue 16, item 5: a second `serve` instance on the same database, whose
/// data directory lacks the next key, makes `keys rotate` refuse (naming
/// it); `--force` issues the Rotate, which no instance hands out until that
/// instance serves the key, and the feed announcement follows.
async fn keys_rotate_waits_for_every_live_serve_instance(db: Db) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    init(&a, &db);
    std::fs::create_dir(&b).expect("mkdir");
    for f in datadir::files::IDENTITY {
        std::fs::copy(a.join(f), b.join(f)).expect("copy");
    }
    // Both on one database (A's SQLite file, or the PostgreSQL database).
    let url = match &db {
        Db::Sqlite => datadir::sqlite_url(&a),
        Db::Postgres { url, .. } => url.clone(),
    };
    let on = |dir: &Path, args: &[&str]| -> Output {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(dir)
            .arg("--database-url")
            .arg(&url)
            .args(args)
            .env_remove("VOUCH_DATABASE_URL")
            .output()
            .expect("run vouch-backend")
    };
    ok(&on(&a, &["keys", "list"])); // registers the ring
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(&b)
        .arg("--database-url")
        .arg(&url)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("VOUCH_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let server = Server {
        child,
        url: line.trim().to_owned(),
    };
    let b_dir = std::fs::canonicalize(&b).expect("canonical");
    let b_dir = b_dir.to_str().expect("utf-8 path");

    let table = ok(&on(&a, &["keys", "list"]));
    assert!(
        table.contains(&format!(
            "{b_dir}: serves keys 1; holds the private keys of 1"
        )),
        "{table}"
    );
    fails_cleanly(&on(&a, &["keys", "rotate"]), b_dir);
    assert!(!a.join("signing-3.pem").exists(), "nothing created");
    let out = ok(&on(&a, &["keys", "rotate", "--force"]));
    assert!(out.contains("anchor update 1 = Rotate(key 2)"), "{out}");
    let list: serde_json::Value =
        serde_json::from_str(&ok(&on(&a, &["keys", "list", "--json"]))).expect("json");
    assert_eq!(
        (&list["serial"], &list["handed_out"]),
        (&1.into(), &0.into())
    );
    let table = ok(&on(&a, &["keys", "list"]));
    assert!(
        table.contains("gateways are handed the updates up to serial 0 only"),
        "{table}"
    );
    // The key reaches B, which serves it within a second: the Rotate is
    // handed out and announced.
    for f in ["signing-2.pem", "sealing-2.pem"] {
        std::fs::copy(a.join(f), b.join(f)).expect("copy");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list: serde_json::Value =
            serde_json::from_str(&ok(&on(&a, &["keys", "list", "--json"]))).expect("json");
        if list["handed_out"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "B never served key 2: {list}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let audit = ok(&on(&a, &["audit", "query", "--json"]));
    assert!(audit.contains("anchor_updates_announced"), "{audit}");
    assert!(server.terminate().success());
}

async fn sigkill_mid_import_loses_nothing_acknowledged(db: Db) {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    init(&dir, &db);
    // A factory file: N rows, one attribute each.
    const N: usize = 20_000;
    let mut body = String::new();
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let key = IdentityKey::from_seed(&seed).public_key();
        ids.push(PeripheralId::derive(&key));
        body.push_str(&format!("{{\"public_key\":\"{key}\",\"group\":\"line-7\",\"attributes\":{{\"serial\":\"{i}\"}}}}\n"));
    }
    let file = tmp.path().join("factory.ndjson");
    std::fs::write(&file, body).expect("write");
    let report = tmp.path().join("report.ndjson");
    let run = |extra: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir").arg(&dir);
        if let Db::Postgres { url, .. } = &db {
            cmd.arg("--database-url").arg(url);
        }
        cmd.arg("import")
            .arg(&file)
            .arg("--report")
            .arg(&report)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let mut child = run(&["--batch-size", "5"]).spawn().expect("spawn import");
    // Wait until some batches are acknowledged, then kill -9.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let lines = std::fs::read_to_string(&report)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if lines >= 200 {
            break;
        }
        assert!(Instant::now() < deadline, "import made no progress");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "import ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap");
    assert!(!status.success());

    // Every acknowledged row is there, complete; the registry is consistent.
    let acked: Vec<serde_json::Value> = std::fs::read_to_string(&report)
        .expect("report")
        .lines()
        .map(|l| serde_json::from_str(l).expect("report line"))
        .collect();
    assert!(acked.iter().all(|r| r["result"] == "created"));
    let store = Store::open(&db.url_for(&dir)).await.expect("open");
    let all = list_all(&store).await;
    assert!(
        all.len() >= acked.len(),
        "{} in store < {} acknowledged",
        all.len(),
        acked.len()
    );
    assert!(
        all.len() < N,
        "the import finished before the kill; the test proves nothing"
    );
    let present: std::collections::HashSet<String> = all.iter().map(|p| p.id.to_string()).collect();
    for r in &acked {
        assert!(
            present.contains(r["id"].as_str().expect("id")),
            "acknowledged row lost: {r}"
        );
    }
    for p in &all {
        assert_eq!(p.group.as_deref(), Some("line-7"));
        assert!(
            p.attributes.contains_key("serial"),
            "row {} without its attributes",
            p.id
        );
    }
    let ca = std::fs::read_to_string(dir.join("ca.pem")).expect("ca.pem");
    let key = vouch_backend::store::CheckpointKey::from_ca_cert(&ca).expect("CA key");
    assert!(matches!(
        store.audit_verify(&key).await.expect("verify"),
        vouch_backend::store::AuditVerdict::Intact { .. }
    ));

    // Running the same import again completes it.
    let out = run(&["--batch-size", "500", "--json"])
        .output()
        .expect("re-run");
    let summary: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("summary"),
    )
    .expect("json");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary["rows"], N);
    assert_eq!(summary["errors"], 0);
    assert_eq!(
        summary["created"].as_u64().unwrap_or(0) as usize
            + summary["unchanged"].as_u64().unwrap_or(0) as usize,
        N
    );
    assert!(summary["unchanged"].as_u64().unwrap_or(0) as usize >= acked.len());
    let all = list_all(&store).await;
    assert_eq!(all.len(), N);
    let mut got: Vec<String> = all.iter().map(|p| p.id.to_string()).collect();
    let mut want: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    store.close().await;
}

async fn list_all(store: &Store) -> Vec<vouch_backend::model::PeripheralRecord> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_peripherals(&PeripheralFilter {
                attribute: None,
                after,
                limit: 1000,
                ..PeripheralFilter::default()
            })
            .await
            .expect("list");
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        let n = page.len();
        out.extend(page);
        if n < 1000 {
            break;
        }
    }
    out
}

/// A running `serve` process.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(dir: &Path, db: &Db) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir").arg(dir);
        if let Db::Postgres { url, .. } = db {
            cmd.arg("--database-url").arg(url);
        }
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("VOUCH_FEED_POLL_MS", "100")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("listening line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Server { child, url }
    }

    /// SIGTERM, and the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("serve did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn https(ca: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(pki::client_config(ca, identity).expect("tls"))
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

async fn vouch_via(c: &reqwest::Client, url: &str, req: &VouchRequest) -> VouchAnswer {
    let res = c
        .post(format!("{url}/v1/vouch"))
        .header("content-type", CONTENT_TYPE)
        .body(encode_body(req))
        .send()
        .await
        .expect("vouch");
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    decode_body(&res.bytes().await.expect("body")).expect("answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_gracefully_on_sigterm() {
    let tmp = tempfile::tempdir().expect("tmp");
    init(tmp.path(), &Db::Sqlite);
    let server = Server::start(tmp.path(), &Db::Sqlite);
    let ca = std::fs::read_to_string(tmp.path().join("ca.pem")).expect("ca");
    let c = https(&ca, None);
    let res = c
        .get(format!("{}/readyz", server.url))
        .send()
        .await
        .expect("readyz");
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let res = c
        .get(format!("{}/v1/openapi.json", server.url))
        .send()
        .await
        .expect("openapi");
    let doc: serde_json::Value = res.json().await.expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    let status = server.terminate();
    assert!(status.success(), "{status:?}");

    // With --log-format json every log line is a JSON object.
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(tmp.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stderr.take().expect("stderr"))
        .read_line(&mut line)
        .expect("a log line");
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["message"], "serving", "{v}");
}

/// Issue 19: `server-cert reissue` replaces the server certificate and key,
/// signed by the same CA, which it does not touch; `serve` then presents
/// the new certificate, and a client pinning the CA trusts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_cert_reissue_keeps_the_ca_and_serve_presents_the_new_certificate() {
    use rustls::pki_types::pem::PemObject;
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    init(dir, &Db::Sqlite);
    let read = |name: &str| std::fs::read(dir.join(name)).expect(name);
    let (ca, server, server_key) = (read("ca.pem"), read("server.pem"), read("server-key.pem"));
    let out = ok(&cli(
        dir,
        &Db::Sqlite,
        &["server-cert", "reissue", "--san", "backend.example.net"],
    ));
    assert!(
        out.contains("names: localhost, 127.0.0.1, ::1, backend.example.net"),
        "{out}"
    );
    assert_eq!(read("ca.pem"), ca);
    assert_ne!(read("server.pem"), server);
    assert_ne!(read("server-key.pem"), server_key);
    let mode = std::fs::metadata(dir.join("server-key.pem"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Without --san the names are kept.
    let out = ok(&cli(
        dir,
        &Db::Sqlite,
        &["server-cert", "reissue", "--days", "30"],
    ));
    assert!(out.contains("backend.example.net"), "{out}");
    fails_cleanly(
        &cli(dir, &Db::Sqlite, &["server-cert", "reissue", "--days", "0"]),
        "--days must be 1..=3650",
    );

    let served = String::from_utf8(read("server.pem")).expect("PEM");
    let server = Server::start(dir, &Db::Sqlite);
    let ca_pem = String::from_utf8(ca).expect("PEM");
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(pki::client_config(&ca_pem, None).expect("tls"))
        .tls_info(true)
        .build()
        .expect("client");
    let res = client
        .get(format!("{}/readyz", server.url))
        .send()
        .await
        .expect("the pinned CA trusts the reissued certificate");
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let presented = res
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate().map(<[u8]>::to_vec))
        .expect("the server's certificate");
    let reissued =
        rustls::pki_types::CertificateDer::from_pem_slice(served.as_bytes()).expect("server.pem");
    assert_eq!(presented, reissued.as_ref());
    assert!(server.terminate().success());
}

/// Issue 16: `/metrics` counts refusals by cause, so the public listener
/// serves it only to the admin token; `--ops-listen` serves it without one,
/// over plain HTTP, and only on a loopback address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_admin_token_or_the_loopback_ops_listener() {
    let tmp = tempfile::tempdir().expect("tmp");
    let token = init(tmp.path(), &Db::Sqlite);
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(tmp.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "0.0.0.0:0",
        ])
        .output()
        .expect("serve");
    fails_cleanly(&out, "loopback");
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(tmp.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("listening line");
    let url = line.trim().strip_prefix("listening on ").map(str::to_owned);
    line.clear();
    stdout.read_line(&mut line).expect("operations line");
    let ops = line
        .trim()
        .strip_prefix("operations on ")
        .map(str::to_owned);
    let server = Server {
        child,
        url: url.unwrap_or_else(|| panic!("no listening line")),
    };
    let ops = ops.unwrap_or_else(|| panic!("unexpected line {line:?}"));
    let ca = std::fs::read_to_string(tmp.path().join("ca.pem")).expect("ca");
    let c = https(&ca, None);
    let metrics = format!("{}/metrics", server.url);
    let res = c.get(&metrics).send().await.expect("metrics");
    assert_eq!(res.status(), reqwest::StatusCode::UNAUTHORIZED);
    let res = c
        .get(&metrics)
        .bearer_auth("vouch_wrong")
        .send()
        .await
        .expect("metrics");
    assert_eq!(res.status(), reqwest::StatusCode::UNAUTHORIZED);
    let res = c
        .get(&metrics)
        .bearer_auth(&token)
        .send()
        .await
        .expect("metrics");
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    assert!(res
        .text()
        .await
        .expect("text")
        .contains("vouch_feed_waiters"));
    let plain = c.clone();
    let res = plain
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .expect("ops metrics");
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    assert!(res
        .text()
        .await
        .expect("text")
        .contains("vouch_feed_waiters"));
    let res = plain
        .get(format!("{ops}/readyz"))
        .send()
        .await
        .expect("ops readyz");
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    // Only the operations routes: not the admin API.
    let res = plain
        .get(format!("{ops}/v1/admin/peripherals"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("ops admin");
    assert_eq!(res.status(), reqwest::StatusCode::NOT_FOUND);
    drop(stdout);
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_on_one_postgres_honour_each_others_revocations() {
    let Some(db) = Db::postgres().await else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let token = init(dir, &db);
    let dev = Device::new(1);
    ok(&cli(
        dir,
        &db,
        &[
            "enroll",
            "peripheral",
            "--public-key",
            &dev.key.public_key().to_string(),
        ],
    ));
    let gw = IdentityKey::from_seed(&[100; 32]);
    let cert = tmp.path().join("gw.crt");
    ok(&cli(
        dir,
        &db,
        &[
            "enroll",
            "gateway",
            "--public-key",
            &gw.public_key().to_string(),
            "--out",
            cert.to_str().expect("utf8"),
        ],
    ));
    ok(&cli(
        dir,
        &db,
        &["associate", "--peripheral", "any", "--gateway", "any"],
    ));
    let a = Server::start(dir, &db);
    let b = Server::start(dir, &db);
    let ca = std::fs::read_to_string(dir.join("ca.pem")).expect("ca");
    let key_pem = gw.to_pkcs8_pem().expect("pem");
    let cert_pem = std::fs::read_to_string(&cert).expect("cert");
    let gateway = https(&ca, Some((&cert_pem, &key_pem)));
    let admin = https(&ca, None);
    let anchor: AnchorSet = serde_json::from_str::<vouch_proto::anchor::AnchorBundle>(&ok(&cli(
        dir,
        &db,
        &["export-anchor"],
    )))
    .expect("bundle json")
    .to_anchor_set()
    .expect("valid bundle");

    // B vouches.
    let (_, h) = dev.hello(&anchor, 1);
    let (_, r) = gateway_takes(&gw, &h, 2);
    assert!(matches!(
        vouch_via(&gateway, &b.url, &r).await,
        VouchAnswer::Vouched(_)
    ));
    // The replay cache is shared: the same hello through A is a replay.
    assert_eq!(
        vouch_via(&gateway, &a.url, &r).await,
        VouchAnswer::Refused(Refusal::Denied)
    );

    // B's feed subscriber, caught up to now, is waiting when A revokes.
    let res = gateway
        .get(format!("{}/v1/feed?after=0&wait_ms=0", b.url))
        .send()
        .await
        .expect("feed");
    let cursor = decode_body::<FeedBatch>(&res.bytes().await.expect("body"))
        .expect("batch")
        .next;
    let sub = {
        let gateway = gateway.clone();
        let url = b.url.clone();
        tokio::spawn(async move {
            let res = gateway
                .get(format!("{url}/v1/feed?after={cursor}&wait_ms=20000"))
                .send()
                .await
                .expect("feed");
            let bytes = res.bytes().await.expect("body");
            (
                Instant::now(),
                decode_body::<FeedBatch>(&bytes).expect("batch"),
            )
        })
    };
    // Wait until B reports the subscriber waiting, so that what is measured
    // below is A → shared log → B's poll → subscriber.
    common::eventually(Duration::from_secs(10), || async {
        let text = admin
            .get(format!("{}/metrics", b.url))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .any(|l| l == "vouch_feed_waiters 1")
            .then_some(())
    })
    .await
    .expect("B's subscriber is waiting");
    let start = Instant::now();
    let res = admin
        .post(format!("{}/v1/admin/peripherals/{}/revoke", a.url, dev.id))
        .bearer_auth(&token)
        .send()
        .await
        .expect("revoke via A");
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    // B honours it at the next vouch.
    let (_, h) = dev.hello(&anchor, 3);
    let (_, r) = gateway_takes(&gw, &h, 4);
    assert_eq!(
        vouch_via(&gateway, &b.url, &r).await,
        VouchAnswer::Refused(Refusal::Denied)
    );
    // And B's feed delivered it within a second.
    let (at, batch) = tokio::time::timeout(Duration::from_secs(5), sub)
        .await
        .expect("delivered")
        .expect("task");
    assert!(
        at.duration_since(start) < Duration::from_secs(1),
        "{:?}",
        at.duration_since(start)
    );
    assert_eq!(
        batch.events[0].change,
        FeedChange::PeripheralRevoked(dev.id)
    );
    let out = ok(&cli(
        dir,
        &db,
        &[
            "audit",
            "query",
            "--peripheral",
            &dev.id.to_string(),
            "--action",
            "vouch",
        ],
    ));
    assert!(out.contains("peripheral_revoked"), "{out}");
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    db.cleanup().await;
}

/// Issue 16, item 4: the counts of repeated refusals are written when
/// `serve` stops gracefully; `audit prune` keeps what a live vouch needs;
/// `audit verify` proves the chain from a pruned log's signed checkpoint
/// (checked with ca.pem) and fails when the checkpoint is edited.
async fn refusals_counted_before_a_sigterm_are_written_and_audit_prune_keeps_verify_working(
    db: Db,
) {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    init(dir, &db);
    let dev = Device::new(1);
    ok(&cli(
        dir,
        &db,
        &[
            "enroll",
            "peripheral",
            "--public-key",
            &dev.key.public_key().to_string(),
        ],
    ));
    let gw = IdentityKey::from_seed(&[100; 32]);
    let cert = dir.join("gw.crt");
    ok(&cli(
        dir,
        &db,
        &[
            "enroll",
            "gateway",
            "--public-key",
            &gw.public_key().to_string(),
            "--out",
            cert.to_str().expect("utf8"),
        ],
    ));
    ok(&cli(
        dir,
        &db,
        &["associate", "--peripheral", "any", "--gateway", "any"],
    ));
    let anchor: AnchorSet = serde_json::from_str::<vouch_proto::anchor::AnchorBundle>(&ok(&cli(
        dir,
        &db,
        &["export-anchor"],
    )))
    .expect("bundle json")
    .to_anchor_set()
    .expect("valid bundle");
    let server = Server::start(dir, &db);
    let ca = std::fs::read_to_string(dir.join("ca.pem")).expect("ca");
    let key_pem = gw.to_pkcs8_pem().expect("pem");
    let cert_pem = std::fs::read_to_string(&cert).expect("cert");
    let gateway = https(&ca, Some((&cert_pem, &key_pem)));
    let (_, h) = dev.hello(&anchor, 1);
    let (_, r) = gateway_takes(&gw, &h, 2);
    assert!(matches!(
        vouch_via(&gateway, &server.url, &r).await,
        VouchAnswer::Vouched(_)
    ));
    // More of each kind than are written one by one (32 by default).
    for _ in 0..40 {
        assert_eq!(
            vouch_via(&gateway, &server.url, &r).await,
            VouchAnswer::Refused(Refusal::Denied)
        );
    }
    let admin = https(&ca, None);
    for _ in 0..35 {
        let res = admin
            .get(format!("{}/v1/admin/peripherals", server.url))
            .bearer_auth("vouch_wrong")
            .send()
            .await
            .expect("admin");
        assert_eq!(res.status(), reqwest::StatusCode::UNAUTHORIZED);
    }
    assert!(server.terminate().success());

    let entries = |action: &str| -> Vec<serde_json::Value> {
        let doc: serde_json::Value = serde_json::from_str(&ok(&cli(
            dir,
            &db,
            &["audit", "query", "--action", action, "--json"],
        )))
        .expect("one JSON document");
        doc["items"].as_array().cloned().unwrap_or_default()
    };
    let details = |entries: &[serde_json::Value], reason: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|e| e["reason"] == reason)
            .map(|e| e["detail"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let replays = details(&entries("vouch"), "replay");
    assert_eq!(replays.len(), 33, "{replays:?}");
    assert!(replays[..32].iter().all(|d| !d.starts_with("repeated=")));
    assert!(replays[32].starts_with("repeated=8 "), "{replays:?}");
    let unauthorized = details(&entries("http_refused"), "unauthorized");
    assert_eq!(unauthorized.len(), 33, "{unauthorized:?}");
    assert!(
        unauthorized[32].starts_with("repeated=3 "),
        "{unauthorized:?}"
    );

    // Asked to prune everything: the vouch a session may still start from
    // is kept (the policy's lifetimes), so nothing goes.
    let out = cli(dir, &db, &["audit", "prune", "--older-than", "0s"]);
    assert!(ok(&out).contains("pruned 0 entries"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("live vouch"));
    let out = cli(dir, &db, &["audit", "prune", "--older-than", "bogus"]);
    assert!(!out.status.success());

    // Pruned (as time would, through the library), the log verifies from
    // its checkpoint …
    let store = Store::open(&db.url_for(dir)).await.expect("open");
    let data = vouch_backend::datadir::DataDir::load(dir).expect("data dir");
    let key = vouch_backend::store::CheckpointKey::from_ca(&data.ca).expect("CA key");
    let o = store
        .audit_prune(vouch_backend::store::now_ms() + 1, &key, "test")
        .await
        .expect("prune");
    // Enrollments, policy, the vouch, the two refusals and their summaries.
    assert!(o.pruned >= 8, "{o:?}");
    assert_eq!(o.pruned, o.checkpoint_seq);
    let out = ok(&cli(dir, &db, &["audit", "verify", "--json"]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("verdict");
    assert_eq!(v["result"], "intact", "{v}");
    assert_eq!(v["pruned_through"], o.checkpoint_seq, "{v}");
    // … and not once its checkpoint is edited.
    {
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(&db.url_for(dir))
            .await
            .expect("connect");
        sqlx::query("UPDATE audit_checkpoint SET seq = seq - 1")
            .execute(&mut conn)
            .await
            .expect("edit");
        conn.close().await.ok();
    }
    let out = cli(dir, &db, &["audit", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("verdict");
    assert_eq!(v["result"], "broken", "{v}");
    assert!(
        v["problem"].as_str().unwrap_or("").contains("checkpoint"),
        "{v}"
    );
    store.close().await;
}

/// Issue 19: every verb opens the registry the settings name (as `serve`
/// does), so that with the Debian package's /etc/vouch/backend.toml naming
/// a database, `list`, `enroll` and `backup` do not quietly use another.
#[test]
fn every_verb_opens_the_registry_the_settings_file_names() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    init(&dir, &Db::Sqlite);
    let other = tmp.path().join("other.db");
    let config = tmp.path().join("backend.toml");
    std::fs::write(
        &config,
        format!("database_url = \"sqlite://{}?mode=rwc\"\n", other.display()),
    )
    .expect("config");
    let config = config.to_str().expect("utf-8");
    let dev = IdentityKey::from_seed(&[77; 32]);
    let pk = dev.public_key().to_string();
    ok(&cli(
        &dir,
        &Db::Sqlite,
        &[
            "--config",
            config,
            "enroll",
            "peripheral",
            "--public-key",
            &pk,
        ],
    ));
    let id = vouch_proto::keys::PeripheralId::derive(&dev.public_key()).to_string();
    let with = ok(&cli(
        &dir,
        &Db::Sqlite,
        &["--config", config, "list", "peripheral"],
    ));
    assert!(with.contains(&id), "{with}");
    assert!(other.exists(), "the registry the settings name was used");
    let without = ok(&cli(&dir, &Db::Sqlite, &["list", "peripheral"]));
    assert!(!without.contains(&id), "{without}");
    // The backup of that registry is that registry.
    let dest = tmp.path().join("b");
    ok(&cli(
        &dir,
        &Db::Sqlite,
        &[
            "--config",
            config,
            "backup",
            "--to",
            dest.to_str().expect("utf-8"),
        ],
    ));
    let restored = tmp.path().join("r");
    ok(&cli(
        &restored,
        &Db::Sqlite,
        &["restore", "--from", dest.to_str().expect("utf-8")],
    ));
    let listed = ok(&cli(&restored, &Db::Sqlite, &["list", "peripheral"]));
    assert!(listed.contains(&id), "{listed}");
}

/// Issue 19: with JSON logs, the reason `serve` stopped is a log line like
/// the others, not a plain `error:` line outside the log format.
#[test]
fn serve_with_json_logs_says_why_it_stopped_in_json() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    init(&dir, &Db::Sqlite);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = cli(
        &dir,
        &Db::Sqlite,
        &["serve", "--listen", &addr, "--log-format", "json"],
    );
    assert!(!out.status.success(), "serve on a taken port succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines() {
        let _: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line:?}\n{stderr}"));
    }
    let last: serde_json::Value =
        serde_json::from_str(stderr.lines().last().expect("a last line")).expect("json");
    assert_eq!(
        (&last["level"], &last["message"]),
        (
            &serde_json::json!("ERROR"),
            &serde_json::json!("stopped on an error")
        ),
        "{stderr}"
    );
    assert!(
        last["error"].as_str().is_some_and(|e| e.contains(&addr)),
        "the error names the address: {stderr}"
    );
    drop(taken);
}

/// Issue 19, tried on a fresh Debian machine with the package: the service
/// user cannot read the operator's files, so a key comes as a PEM string
/// (`--public-key "$(cat gw.pub.pem)"`, a value that starts with `-----`)
/// or on standard input (`@-`).
#[test]
fn a_public_key_can_be_a_pem_string_or_standard_input() {
    use std::io::Write as _;
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    init(&dir, &Db::Sqlite);
    let gateway = IdentityKey::from_seed(&[91; 32]).public_key();
    let pem = gateway.to_public_key_pem();
    let out = ok(&cli(
        &dir,
        &Db::Sqlite,
        &["--json", "enroll", "gateway", "--public-key", &pem],
    ));
    let answer: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(answer["gateway"], gateway.to_string(), "{answer}");

    let device = IdentityKey::from_seed(&[92; 32]).public_key();
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(&dir)
        .args(["--json", "enroll", "peripheral", "--public-key", "@-"])
        .env_remove("VOUCH_DATABASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(device.to_public_key_pem().as_bytes())
        .expect("write the key");
    let out = ok(&child.wait_with_output().expect("wait"));
    let answer: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        answer["id"],
        PeripheralId::derive(&device).to_string(),
        "{answer}"
    );
}

/// `vouch-backend --url … --ca-cert … --token-file …`, elsewhere than the
/// backend's host (no data directory, no database).
fn remote(url: &str, ca: &Path, token: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg("/nonexistent/vouch-data")
        .args(["--url", url, "--ca-cert"])
        .arg(ca)
        .arg("--token-file")
        .arg(token)
        .args(args)
        .env_remove("VOUCH_DATABASE_URL")
        .env_remove("VOUCH_TOKEN")
        .output()
        .expect("run vouch-backend")
}

/// A new operator made with the local CLI; returns its token file.
fn operator(dir: &Path, db: &Db, tmp: &Path, name: &str, role: &str) -> std::path::PathBuf {
    let file = tmp.join(format!("{name}.token"));
    let out = ok(&cli(
        dir,
        db,
        &[
            "operators",
            "add",
            name,
            "--role",
            role,
            "--out",
            file.to_str().expect("utf8"),
        ],
    ));
    assert!(has_field(&out, "role", role), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "token file mode {mode:o}");
    file
}

async fn the_cli_runs_the_registry_verbs_remotely_within_the_token_s_role(db: Db) {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("data");
    let dir = dir.as_path();
    let admin = tmp.path().join("admin.token");
    std::fs::write(&admin, init(dir, &db)).expect("token");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let vera = operator(dir, &db, tmp.path(), "vera", "viewer");
    let otto = operator(dir, &db, tmp.path(), "otto", "operator");
    let server = Server::start(dir, &db);
    let url = server.url.clone();
    let ca = dir.join("ca.pem");

    // The operator does every registry verb from "another machine".
    let dev = Device::new(1);
    let pk = dev.key.public_key().to_string();
    let id = dev.id.to_string();
    let out = ok(&remote(
        &url,
        &ca,
        &otto,
        &[
            "enroll",
            "peripheral",
            "--public-key",
            &pk,
            "--group",
            "meters",
            "--attr",
            "fw=1",
        ],
    ));
    assert!(
        has_field(&out, "id", &id) && has_field(&out, "outcome", "created"),
        "{out}"
    );
    let gw = IdentityKey::from_seed(&[100; 32]);
    let cert = tmp.path().join("gw.crt");
    let out = ok(&remote(
        &url,
        &ca,
        &otto,
        &[
            "enroll",
            "gateway",
            "--public-key",
            &gw.public_key().to_string(),
            "--site",
            "plant",
            "--out",
            cert.to_str().expect("utf8"),
        ],
    ));
    assert!(has_field(&out, "outcome", "created"), "{out}");
    let cert_pem = std::fs::read_to_string(&cert).expect("cert");
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes()).expect("der");
    assert_eq!(pki::ed25519_key_of(&der), Some(gw.public_key()));
    let out = ok(&remote(
        &url,
        &ca,
        &otto,
        &[
            "associate",
            "--peripheral",
            "group:meters",
            "--gateway",
            "site:plant",
            "--scope",
            "telemetry,command",
        ],
    ));
    assert!(has_field(&out, "scope", "telemetry,command"), "{out}");
    let csv = tmp.path().join("more.csv");
    let more = Device::new(2);
    std::fs::write(
        &csv,
        format!(
            "public_key,group\n{},meters\nnot-a-key,meters\n",
            more.key.public_key()
        ),
    )
    .expect("csv");
    let report = tmp.path().join("report.ndjson");
    let out = remote(
        &url,
        &ca,
        &otto,
        &[
            "import",
            csv.to_str().expect("utf8"),
            "--report",
            report.to_str().expect("utf8"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        has_field(&stdout, "created", "1") && has_field(&stdout, "errors", "1"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 3:"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&report)
            .expect("report")
            .lines()
            .count(),
        2
    );
    for verb in ["suspend", "reinstate"] {
        let out = ok(&remote(&url, &ca, &otto, &[verb, "peripheral", &id]));
        assert!(
            has_field(&out, "status", "active") || verb == "suspend",
            "{out}"
        );
    }

    // Every read prints what the local CLI prints, byte for byte.
    for args in [
        &["list", "peripheral"][..],
        &["list", "peripheral", "--group", "meters", "--limit", "1"],
        &["list", "gateway", "--site", "plant"],
        &["show", "peripheral", &id],
        &["show", "gateway", &gw.public_key().to_string()],
        &["policy", "list"],
        &["lockouts", "list"],
        &["export-anchor"],
        &["--json", "list", "peripheral"],
        &["--json", "show", "peripheral", &id],
        &["--json", "policy", "list"],
    ] {
        let local = cli(dir, &db, args);
        let far = remote(&url, &ca, &vera, args);
        assert_eq!(
            (ok(&far), String::from_utf8_lossy(&far.stderr)),
            (ok(&local), String::from_utf8_lossy(&local.stderr)),
            "{args:?}"
        );
    }
    // The audit log names the operator, read remotely by the viewer.
    let out = ok(&remote(
        &url,
        &ca,
        &vera,
        &["--json", "audit", "query", "--peripheral", &id],
    ));
    let entries: serde_json::Value = serde_json::from_str(&out).expect("json");
    let actors: Vec<&str> = entries["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["actor"].as_str())
        .collect();
    assert!(
        actors.len() >= 3 && actors.iter().all(|a| *a == "operator:otto"),
        "{actors:?}"
    );
    let out = remote(&url, &ca, &vera, &["audit", "verify"]);
    assert!(ok(&out).contains("intact"), "{out:?}");
    let out = ok(&remote(&url, &ca, &vera, &["whoami"]));
    assert!(
        has_field(&out, "name", "vera") && has_field(&out, "role", "viewer"),
        "{out}"
    );

    // The viewer is refused every write, with the stable code, and nothing
    // changes.
    for args in [
        &[
            "enroll",
            "peripheral",
            "--public-key",
            &Device::new(3).key.public_key().to_string(),
        ][..],
        &["revoke", "peripheral", &id],
        &["suspend", "gateway", &gw.public_key().to_string()],
        &["associate", "--peripheral", "any", "--gateway", "any"],
        &["policy", "remove", "1"],
        &["import", csv.to_str().expect("utf8")],
        &["lockouts", "clear", "peripheral:0011223344556677"],
        &["operators", "add", "eve", "--role", "admin"],
        &["tokens", "list"],
    ] {
        fails_cleanly(&remote(&url, &ca, &vera, args), "(forbidden)");
    }
    let out = ok(&cli(dir, &db, &["show", "peripheral", &id]));
    assert!(has_field(&out, "status", "active"), "{out}");
    // The operator may not manage operators either; the admin (init's
    // token) may: a token rotated remotely stops at once.
    fails_cleanly(
        &remote(&url, &ca, &otto, &["operators", "list"]),
        "(forbidden)",
    );
    let out = ok(&remote(&url, &ca, &admin, &["operators", "list"]));
    assert_eq!(
        out.lines()
            .skip(1)
            .map(|l| row(l, 0)[..2].join(" "))
            .collect::<Vec<_>>(),
        ["admin admin", "otto operator", "vera viewer"],
        "{out}"
    );
    let vera_id = ok(&remote(&url, &ca, &vera, &["--json", "whoami"]));
    let vera_id: serde_json::Value = serde_json::from_str(&vera_id).expect("json");
    // A token file that cannot be made fails before the backend revokes
    // or issues anything: the token in use goes on working.
    fails_cleanly(
        &remote(
            &url,
            &ca,
            &admin,
            &[
                "tokens",
                "rotate",
                vera_id["token_id"].as_str().expect("id"),
                "--out",
                "/nonexistent/dir/vera.token",
            ],
        ),
        "cannot create",
    );
    ok(&remote(&url, &ca, &vera, &["whoami"]));
    let vera2 = tmp.path().join("vera2.token");
    let out = ok(&remote(
        &url,
        &ca,
        &admin,
        &[
            "tokens",
            "rotate",
            vera_id["token_id"].as_str().expect("id"),
            "--out",
            vera2.to_str().expect("utf8"),
        ],
    ));
    assert!(has_field(&out, "operator", "vera"), "{out}");
    fails_cleanly(&remote(&url, &ca, &vera, &["whoami"]), "(unauthorized)");
    ok(&remote(&url, &ca, &vera2, &["whoami"]));
    let out = ok(&remote(&url, &ca, &otto, &["revoke", "peripheral", &id]));
    assert!(has_field(&out, "status", "revoked"), "{out}");

    // Only the pinned CA: another backend's CA is refused before any token
    // is sent.
    let other = tmp.path().join("other");
    init(&other, &Db::Sqlite);
    fails_cleanly(
        &remote(&url, &other.join("ca.pem"), &otto, &["list", "peripheral"]),
        "pinned backend CA",
    );
    // Host-only verbs, bad URLs, readable token files: clear errors.
    for (args, says) in [
        (&["keys", "list"][..], "backend's host only"),
        (&["backup", "--to", "/tmp/x"], "backend's host only"),
        (
            &["audit", "prune", "--older-than", "1d"],
            "backend's host only",
        ),
    ] {
        fails_cleanly(&remote(&url, &ca, &otto, args), says);
    }
    fails_cleanly(
        &remote(
            &url.replace("https://", "http://"),
            &ca,
            &otto,
            &["list", "peripheral"],
        ),
        "https://",
    );
    std::fs::set_permissions(&otto, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    fails_cleanly(
        &remote(&url, &ca, &otto, &["list", "peripheral"]),
        "token file",
    );
    let garbage = tmp.path().join("garbage");
    std::fs::write(&garbage, "-----BEGIN PRIVATE KEY-----\n").expect("write");
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    fails_cleanly(
        &remote(&url, &ca, &garbage, &["list", "peripheral"]),
        "not a Vouch API token",
    );
    assert!(server.terminate().success());
}
