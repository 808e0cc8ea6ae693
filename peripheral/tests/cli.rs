//! The `vouch-peripheral` binary: keygen, provision and show in a temporary
//! directory, and `run` against the real gateway (telemetry, commands within
//! and outside the application scope, reboot with resumption, `--count`,
//! SIGTERM).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};

use common::{Backend, Gateway, DEADLINE};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use vouch_peripheral::reference::{ACTUATE, CONFIGURE};
use vouch_proto::keys::{IdentityKey, PeripheralId, PublicKey};
use vouch_proto::wire::Scope;

const BIN: &str = env!("CARGO_BIN_EXE_vouch-peripheral");

fn cli(args: &[&str]) -> Output {
    std::process::Command::new(BIN)
        .args(args)
        .env_remove("VOUCH_LOG")
        .env_remove("VOUCH_LOG_FORMAT")
        .output()
        .expect("run vouch-peripheral")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn keygen(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["keygen", "--dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = cli(&args);
    assert!(out.status.success(), "keygen failed: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout:?}");
    serde_json::from_str(lines[0]).expect("one JSON object")
}

#[test]
fn keygen_prints_the_import_row_of_the_key_it_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let out = {
        let args = [
            "keygen",
            "--dir",
            dir.to_str().unwrap(),
            "--group",
            "meters",
            "--attr",
            "site=plant-1",
            "--attr",
            "fw=1.0",
        ];
        cli(&args)
    };
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    assert!(stdout.ends_with('\n'));
    let row: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    // Exactly the backend's import fields.
    let keys: Vec<&str> = row
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, vec!["attributes", "group", "id", "public_key"]);
    let public =
        PublicKey::from_hex(row["public_key"].as_str().unwrap()).expect("64 hex, a valid key");
    assert_eq!(row["id"], PeripheralId::derive(&public).to_string());
    assert_eq!(row["group"], "meters");
    assert_eq!(row["attributes"]["site"], "plant-1");
    assert_eq!(row["attributes"]["fw"], "1.0");

    // The key on disk is the one in the row, PKCS#8 PEM, mode 0600.
    let key_path = dir.join("identity.pem");
    let pem = fs::read_to_string(&key_path).unwrap();
    assert_eq!(
        IdentityKey::from_pkcs8_pem(&pem).unwrap().public_key(),
        public
    );
    assert_eq!(
        fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Nothing of the private key is printed.
    let stderr = text(&out.stderr);
    let secret_line = pem.lines().nth(1).unwrap();
    assert!(!stdout.contains(secret_line) && !stderr.contains(secret_line));
    assert!(
        stderr.contains("generated a new device identity"),
        "{stderr}"
    );

    // A second keygen refuses and changes nothing.
    let again = cli(&["keygen", "--dir", dir.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(again.stdout.is_empty());
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(fs::read_to_string(&key_path).unwrap(), pem);

    // A factory-assigned id goes into the row and stays with the device.
    let dir2 = tmp.path().join("dev2");
    let row = keygen(&dir2, &["--id", "0011223344556677"]);
    assert_eq!(row["id"], "0011223344556677");
    assert!(
        row.get("group").is_none() && row.get("attributes").is_none(),
        "{row}"
    );
    let show = cli(&["show", "--dir", dir2.to_str().unwrap()]);
    assert!(text(&show.stdout).contains("id          0011223344556677"));
}

#[test]
fn keygen_refuses_bad_input_before_making_a_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    for (args, expect) in [
        (vec!["--id", "xyz"], "not a peripheral id"),
        (vec!["--attr", "novalue"], "is not NAME=VALUE"),
        (vec!["--attr", "a=1", "--attr", "a=2"], "given twice"),
        (vec!["--group", ""], "not a valid name"),
    ] {
        let mut all = vec!["keygen", "--dir", dir.to_str().unwrap()];
        all.extend(args);
        let out = cli(&all);
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(expect), "{}", text(&out.stderr));
        assert!(
            !dir.join("identity.pem").exists(),
            "no key after a refused keygen"
        );
    }
}

#[test]
fn provision_validates_the_bundle_and_show_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let d = dir.to_str().unwrap();
    let row = keygen(&dir, &[]);
    let backend = Backend::new(40);
    let good = tmp.path().join("anchor.json");
    fs::write(&good, serde_json::to_vec_pretty(&backend.bundle()).unwrap()).unwrap();

    // Bad bundles fail with a message that says what is wrong; nothing is installed.
    let mut wrong_format = backend.bundle();
    wrong_format.format = "something-else".into();
    let mut bad_key = backend.bundle();
    bad_key.anchor.signing = "zz".repeat(32);
    let mut no_commitment = serde_json::to_value(backend.bundle()).unwrap();
    no_commitment.as_object_mut().unwrap().remove("next");
    for (name, content, expect) in [
        (
            "notjson.json",
            b"not json".to_vec(),
            "is not an anchor bundle",
        ),
        (
            "format.json",
            serde_json::to_vec(&wrong_format).unwrap(),
            "not a Vouch anchor bundle",
        ),
        (
            "key.json",
            serde_json::to_vec(&bad_key).unwrap(),
            "invalid signing key",
        ),
        (
            "nonext.json",
            serde_json::to_vec(&no_commitment).unwrap(),
            "is not an anchor bundle",
        ),
    ] {
        let path = tmp.path().join(name);
        fs::write(&path, content).unwrap();
        let out = cli(&["provision", "--dir", d, "--anchor", path.to_str().unwrap()]);
        assert!(!out.status.success(), "{name}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(expect), "{name}: {stderr}");
        assert!(!dir.join("anchors.json").exists(), "{name}");
    }
    let missing = cli(&[
        "provision",
        "--dir",
        d,
        "--anchor",
        "/nonexistent/anchor.json",
    ]);
    assert!(text(&missing.stderr).contains("/nonexistent/anchor.json"));

    // Before provisioning, show says so.
    let show = text(&cli(&["show", "--dir", d]).stdout);
    assert!(show.contains("anchors     none"), "{show}");

    let out = cli(&["provision", "--dir", d, "--anchor", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("installed 1 trust anchor"));
    let show = cli(&["show", "--dir", d]);
    assert!(show.status.success());
    let show = text(&show.stdout);
    assert!(
        show.contains(&format!("id          {}", row["id"].as_str().unwrap())),
        "{show}"
    );
    assert!(show.contains(row["public_key"].as_str().unwrap()), "{show}");
    assert!(
        show.contains("anchors     1 held, serial 0, primary key id 1"),
        "{show}"
    );
    assert!(
        show.contains(&backend.keys(1).anchor().signing.to_string()),
        "{show}"
    );
    assert!(show.contains("ticket      none"), "{show}");
    let pem = fs::read_to_string(dir.join("identity.pem")).unwrap();
    assert!(
        !show.contains(pem.lines().nth(1).unwrap()),
        "no private key in show"
    );
}

#[test]
fn show_and_run_refuse_missing_corrupt_or_exposed_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let d = dir.to_str().unwrap();
    let out = cli(&["show", "--dir", d]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no identity key"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.exists(), "show creates nothing");

    keygen(&dir, &[]);
    let key = dir.join("identity.pem");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = cli(&["show", "--dir", d]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("chmod 600 {}", key.display())),
        "{stderr}"
    );

    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&key, "-----BEGIN PRIVATE KEY-----\ntruncated").unwrap();
    let out = cli(&["run", "--dir", d, "--connect", "tcp://127.0.0.1:9"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("not a valid Ed25519 PKCS#8 PEM private key"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(&key).unwrap(),
        "-----BEGIN PRIVATE KEY-----\ntruncated"
    );

    // Unprovisioned devices and bad addresses are refused up front.
    let dir2 = tmp.path().join("dev2");
    keygen(&dir2, &[]);
    let d2 = dir2.to_str().unwrap();
    let out = cli(&["run", "--dir", d2, "--connect", "tcp://127.0.0.1:9"]);
    assert!(
        text(&out.stderr).contains("not provisioned"),
        "{}",
        text(&out.stderr)
    );
    let backend = Backend::new(41);
    let bundle = tmp.path().join("a.json");
    fs::write(&bundle, serde_json::to_vec(&backend.bundle()).unwrap()).unwrap();
    assert!(cli(&[
        "provision",
        "--dir",
        d2,
        "--anchor",
        bundle.to_str().unwrap()
    ])
    .status
    .success());
    for (url, expect) in [
        ("127.0.0.1:9", "expected tcp://"),
        ("tcp://nohost", "invalid gateway address"),
    ] {
        let out = cli(&["run", "--dir", d2, "--connect", url]);
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains(expect),
            "{url}: {}",
            text(&out.stderr)
        );
    }
    let out = cli(&[
        "run",
        "--dir",
        d2,
        "--connect",
        "tcp://127.0.0.1:9",
        "--att-mtu",
        "20",
    ]);
    assert!(
        text(&out.stderr).contains("ATT MTU 20"),
        "{}",
        text(&out.stderr)
    );
}

/// A device directory set up as the README says: keygen, enroll the row,
/// provision the bundle.
fn setup_device(backend: &Backend, dir: &Path, scope: Scope) -> PeripheralId {
    let row = keygen(dir, &["--group", "lab"]);
    let public = PublicKey::from_hex(row["public_key"].as_str().unwrap()).unwrap();
    let id = backend.enroll(public, scope);
    assert_eq!(row["id"], id.to_string());
    let bundle = dir.parent().unwrap().join(format!("{id}.anchor.json"));
    fs::write(&bundle, serde_json::to_vec(&backend.bundle()).unwrap()).unwrap();
    let out = cli(&[
        "provision",
        "--dir",
        dir.to_str().unwrap(),
        "--anchor",
        bundle.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    id
}

struct Device {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    log: std::path::PathBuf,
}

impl Device {
    fn spawn(dir: &Path, url: &str, extra: &[&str]) -> Self {
        let log = dir.parent().unwrap().join("device.log");
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(["run", "--dir", dir.to_str().unwrap(), "--connect", url])
            .args(["--backoff-initial", "0.02", "--backoff-max", "0.2"])
            .args(extra)
            .env("VOUCH_LOG", "info")
            .env_remove("VOUCH_LOG_FORMAT")
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
            log,
        }
    }

    /// The next stdout line that starts with `prefix`.
    async fn line(&mut self, prefix: &str) -> String {
        let log = self.log.clone();
        let got = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Some(rest.to_string());
                }
            }
            None
        })
        .await;
        match got {
            Ok(Some(l)) => l,
            _ => panic!(
                "no line starting {prefix:?}; device log:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }

    async fn terminate(mut self) -> String {
        let pid = self.child.id().unwrap();
        let st = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the device exits after SIGTERM")
            .unwrap();
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        assert!(status.success(), "exit after SIGTERM: {status:?}\n{log}");
        log
    }
}

#[tokio::test]
async fn run_sends_telemetry_obeys_scoped_commands_and_stops_on_sigterm() {
    let backend = Backend::new(42);
    let gw = Gateway::start(&backend).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    // The policy grants actuation (app8) but not configuration (app9).
    let scope = Scope::TELEMETRY.union(Scope::COMMAND).union(ACTUATE);
    let id = setup_device(&backend, &dir, scope);
    let mut inbound = gw.ctx.table.sessions().subscribe();
    let mut dev = Device::spawn(&dir, &gw.url(), &["--interval", "0.2"]);

    // Telemetry arrives at the gateway as this device's JSON lines.
    let sent = dev.line("sent ").await;
    let v: serde_json::Value = serde_json::from_str(&sent).unwrap();
    assert!(
        v["seq"].as_u64().is_some() && v["temp_c"].as_f64().is_some(),
        "{sent}"
    );
    let got = recv_from(&mut inbound, id, |d| d.starts_with(b"{\"seq\"")).await;
    serde_json::from_slice::<serde_json::Value>(&got).unwrap();

    // A command within the scope is carried out and acknowledged.
    gw.ctx
        .table
        .sessions()
        .send(id, b"led=on".to_vec())
        .await
        .unwrap();
    assert_eq!(dev.line("recv ").await, "led=on");
    assert_eq!(
        recv_from(&mut inbound, id, |d| !d.starts_with(b"{")).await,
        b"ok: led=on"
    );
    let sent = dev.line("sent ").await;
    assert!(sent.contains("\"led\":true"), "{sent}");

    // Commands outside the granted application bits are refused.
    for cmd in ["interval=5", "reboot"] {
        gw.ctx
            .table
            .sessions()
            .send(id, cmd.as_bytes().to_vec())
            .await
            .unwrap();
        assert_eq!(dev.line("recv ").await, cmd);
        let reply = recv_from(&mut inbound, id, |d| !d.starts_with(b"{")).await;
        assert_eq!(text(&reply), format!("refused: {cmd} outside scope"));
    }
    gw.ctx
        .table
        .sessions()
        .send(id, b"self-destruct".to_vec())
        .await
        .unwrap();
    let reply = recv_from(&mut inbound, id, |d| !d.starts_with(b"{")).await;
    assert_eq!(text(&reply), "error: unknown command \"self-destruct\"");

    // SIGTERM: close record, exit 0, the session is gone at the gateway.
    let log = dev.terminate().await;
    assert!(
        log.contains("command refused: outside the granted scope"),
        "{log}"
    );
    assert!(log.contains("handshake ok (full"), "{log}");
    assert!(log.contains("session closed"), "{log}");
    gw.wait_until("the session to end", |t| t.sessions().is_empty())
        .await;
    gw.stop().await;
}

#[tokio::test]
async fn reboot_command_resumes_and_count_exits_zero_with_json_logs() {
    let backend = Backend::new(43);
    let gw = Gateway::start(&backend).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let scope = Scope::TELEMETRY
        .union(Scope::COMMAND)
        .union(ACTUATE)
        .union(CONFIGURE);
    let id = setup_device(&backend, &dir, scope);
    let mut inbound = gw.ctx.table.sessions().subscribe();
    let mut dev = Device::spawn(
        &dir,
        &gw.url(),
        &[
            "--interval",
            "30",
            "--count",
            "3",
            "--log-format",
            "json",
            "--att-mtu",
            "23",
        ],
    );
    // The first telemetry goes out as soon as the session is up.
    dev.line("sent ").await;
    gw.wait_until("the first session", |t| t.sessions().len() == 1)
        .await;
    assert!(!gw.ctx.table.sessions().list()[0].resumed);

    // `reboot` (needs app9): the device restarts from its directory and
    // resumes with the stored ticket, no backend round trip.
    let vouches = backend.requests.load(std::sync::atomic::Ordering::SeqCst);
    gw.ctx
        .table
        .sessions()
        .send(id, b"reboot".to_vec())
        .await
        .unwrap();
    assert_eq!(dev.line("recv ").await, "reboot");
    assert_eq!(
        recv_from(&mut inbound, id, |d| !d.starts_with(b"{")).await,
        b"ok: reboot"
    );
    dev.line("sent ").await;
    gw.wait_until("the resumed session", |t| {
        t.sessions().list().first().is_some_and(|s| s.resumed)
    })
    .await;
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::SeqCst),
        vouches
    );

    // `interval=0.1` speeds telemetry up; the third message ends the run.
    gw.ctx
        .table
        .sessions()
        .send(id, b"interval=0.1".to_vec())
        .await
        .unwrap();
    dev.line("sent ").await;
    let status = tokio::time::timeout(DEADLINE, dev.child.wait())
        .await
        .expect("exits after --count")
        .unwrap();
    let log = fs::read_to_string(&dev.log).unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    // JSON logs: every line is an object of the one shape every Vouch
    // binary writes (the message and the fields at the top level, as the
    // backend's), and they tell the story.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|v| v.get("fields").is_none() && v["level"].is_string()),
        "{lines:#?}"
    );
    let messages: Vec<&str> = lines.iter().filter_map(|v| v["message"].as_str()).collect();
    assert!(
        messages.iter().any(|m| m.starts_with("handshake ok (full")),
        "{messages:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("handshake ok (resumed")),
        "{messages:#?}"
    );
    assert!(messages.contains(&"rebooting"), "{messages:#?}");
    gw.wait_until("the session to end", |t| t.sessions().is_empty())
        .await;
    gw.stop().await;
}

#[tokio::test]
async fn run_waits_for_a_gateway_that_is_not_there_yet() {
    let backend = Backend::new(44);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    setup_device(&backend, &dir, Scope::TELEMETRY.union(Scope::COMMAND));
    // Reserve a port, then free it: nobody listens there yet.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut dev = Device::spawn(&dir, &format!("tcp://{addr}"), &["--interval", "0.1"]);
    let log_has_retries = || {
        fs::read_to_string(&dev.log)
            .unwrap_or_default()
            .matches("retrying in")
            .count()
            >= 2
    };
    common::wait_until("two retries in the log", log_has_retries).await;
    let gw = Gateway::start_on(
        &backend,
        addr,
        vouch_gateway::sessions::SessionTable::new(10),
    )
    .await;
    dev.line("sent ").await;
    gw.wait_until("the session", |t| t.sessions().len() == 1)
        .await;
    dev.terminate().await;
    gw.stop().await;
}

/// The next message from `id` that `want` accepts.
async fn recv_from(
    inbound: &mut tokio::sync::broadcast::Receiver<vouch_gateway::sessions::Inbound>,
    id: PeripheralId,
    want: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let m = inbound.recv().await.unwrap();
            if m.peripheral == id && want(&m.data) {
                return m.data;
            }
        }
    })
    .await
    .expect("a message from the device")
}
