//! `vouch-gateway init` as an installer runs it: the key (0600) and its
//! public key beside it, for the operator's `enroll gateway --public-key @FILE`.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

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
