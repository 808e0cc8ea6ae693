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
