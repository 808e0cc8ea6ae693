//! `vouch-gateway init` as an installer runs it: the key (0600) and its
//! public key beside it, for the operator's `enroll gateway --public-key @FILE`;
//! `vouch-gateway run` saying what is wrong with its client certificate.

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use vouch_proto::keys::{IdentityKey, PublicKey};

fn init(key: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vouch-gateway"))
        .args(["init", "--key"])
        .arg(key)
        .output()
        .expect("run vouch-gateway");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn printed_public_key(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .expect("a public key line")
        .to_string()
}

#[test]
fn init_writes_the_key_and_its_public_key_file_and_never_replaces_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("identity.pem");
    let stdout = init(&key_path);
    let printed = printed_public_key(&stdout);

    let pem = std::fs::read_to_string(&key_path).unwrap();
    let key = IdentityKey::from_pkcs8_pem(&pem).unwrap();
    assert_eq!(key.public_key().to_string(), printed);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key_path), 0o600);

    let pub_path = dir.path().join("identity.pub.pem");
    let spki = std::fs::read_to_string(&pub_path).unwrap();
    assert_eq!(
        PublicKey::from_public_key_pem(&spki).unwrap(),
        key.public_key()
    );
    assert_eq!(mode(&pub_path), 0o644);
    assert!(
        stdout.contains("--public-key @identity.pub.pem"),
        "{stdout}"
    );

    // Again: the key stays, the public key file is written again if lost.
    std::fs::remove_file(&pub_path).unwrap();
    let again = init(&key_path);
    assert!(
        again.contains("already exists; not overwriting it"),
        "{again}"
    );
    assert_eq!(printed_public_key(&again), printed);
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), pem);
    assert_eq!(std::fs::read_to_string(&pub_path).unwrap(), spki);
}

/// A self-signed certificate for `key_pem` (PKCS#8), valid from
/// `not_before` to `not_after` days from now: its own CA.
fn self_signed(key_pem: &str, not_before: i64, not_after: i64) -> String {
    let key = rcgen::KeyPair::from_pem(key_pem).expect("key");
    let mut params = rcgen::CertificateParams::default();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(not_before);
    params.not_after = now + time::Duration::days(not_after);
    params.self_signed(&key).expect("certificate").pem()
}

/// A configuration in `dir` with this certificate and CA, for a backend
/// that is not there.
fn config(dir: &Path, cert: &str, ca: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("client.pem"), cert).unwrap();
    std::fs::write(dir.join("ca.pem"), ca).unwrap();
    let d = dir.display();
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[identity]\nkey = \"{d}/identity.pem\"\n\
             [backend]\nurl = \"https://127.0.0.1:1\"\nca = \"{d}/ca.pem\"\ncertificate = \"{d}/client.pem\"\n\
             [transport.tcp]\nlisten = \"127.0.0.1:0\"\n\
             [api]\nsocket = \"{d}/api.sock\"\n\
             [state]\ndir = \"\"\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn run_says_at_start_what_is_wrong_with_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    init(&dir.path().join("identity.pem"));
    let identity = std::fs::read_to_string(dir.path().join("identity.pem")).unwrap();

    // Another key's certificate: the daemon cannot authenticate, and stops.
    let other = IdentityKey::from_seed(&[7; 32]).to_pkcs8_pem().unwrap();
    let cert = self_signed(&other, -1, 90);
    let out = Command::new(env!("CARGO_BIN_EXE_vouch-gateway"))
        .arg("run")
        .arg("--config")
        .arg(config(dir.path(), &cert, &cert))
        .output()
        .expect("run vouch-gateway");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("client.pem: the client certificate is for key")
            && stderr.contains("but this gateway's identity key is"),
        "{stderr}"
    );

    // Its own certificate, expired: said at once, and the daemon runs on
    // (devices holding a ticket keep resuming).
    let cert = self_signed(&identity, -30, -1);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vouch-gateway"))
        .arg("run")
        .arg("--config")
        .arg(config(dir.path(), &cert, &cert))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vouch-gateway");
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        // The check comes before the daemon says it is starting.
        let done = line.contains("the client certificate expired at")
            || line.contains("vouch-gateway starting");
        seen.push(line);
        if done {
            break;
        }
    }
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.last()
            .is_some_and(|l| l.contains("ERROR") && l.contains("client.pem")),
        "{seen:#?}"
    );
    assert!(running, "the daemon stopped: {seen:#?}");
}

/// The packaged example configuration with every path in `dir` and the
/// given `[log] format`.
fn config_in(dir: &std::path::Path, format: &str) -> std::path::PathBuf {
    let example = Command::new(env!("CARGO_BIN_EXE_vouch-gateway"))
        .arg("example-config")
        .output()
        .expect("example-config");
    let d = dir.display().to_string();
    let text = String::from_utf8(example.stdout)
        .expect("utf-8")
        .replace("/var/lib/vouch-gateway", &d)
        .replace("/etc/vouch", &d)
        .replace("/run/vouch-gateway", &d)
        .replace("format = \"text\"", &format!("format = \"{format}\""));
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Issue 19: in JSON mode every line on standard error is a JSON log
/// object of the one shape all Vouch binaries write (the message at the top
/// level), the error that stops the daemon included; `VOUCH_LOG` is the
/// filter, and a malformed one is an error naming it.
#[test]
fn json_logs_have_one_shape_and_vouch_log_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), "json");
    // No identity key in the directory: the daemon stops at once.
    let out = Command::new(env!("CARGO_BIN_EXE_vouch-gateway"))
        .args(["run", "--config"])
        .arg(&config)
        .env("VOUCH_LOG", "debug")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).expect("utf-8");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = lines.last().expect("a log line");
    assert_eq!(last["level"], "ERROR", "{stderr}");
    assert_eq!(last["message"], "stopped on an error", "{stderr}");
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.contains("identity.pem")),
        "{stderr}"
    );
    assert!(lines.iter().all(|v| v.get("fields").is_none()), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_vouch-gateway"))
        .args(["run", "--config"])
        .arg(&config)
        .env("VOUCH_LOG", "vouch_gateway=loud")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("VOUCH_LOG=\"vouch_gateway=loud\""),
        "{stderr}"
    );
}
