//! Secrets encrypted at rest end to end: raw store values hold no plaintext; key rotation.
//!
//! The server runs on SQLite (whatever the run's datastore) so the test can read the raw row
//! from the database file itself, read-only, beside the running server.

use std::path::Path;
use std::process::Command;

use crate::harness::{Kubectl, Out, Server, ServerOptions, run};

const K: Kubectl = Kubectl::Minor(32);
const NS: &str = "enc-e2e";

fn capstan(args: &[&str]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capstan"));
    cmd.args(args).env("RUST_LOG", "warn");
    run(cmd, None)
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The latest raw value of `key` in the server's SQLite file, bypassing the server.
fn raw_value(data_dir: &Path, key: &str) -> Vec<u8> {
    let db = data_dir.join("db").join("state.db");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("open {} read-only: {e}", db.display()));
    conn.query_row(
        "SELECT value FROM log WHERE key = ?1 ORDER BY rev DESC LIMIT 1",
        [key],
        |r| r.get::<_, Vec<u8>>(0),
    )
    .unwrap_or_else(|e| panic!("raw row of {key}: {e}"))
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The key names in the key file, the write key first.
fn key_names(data_dir: &Path) -> Vec<String> {
    let path = data_dir.join("cred").join("encryption.json");
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read key file")).expect("json");
    file["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["name"].as_str().expect("name").to_string())
        .collect()
}

/// The key name a raw value is sealed with.
fn sealed_with(raw: &[u8]) -> String {
    let rest = raw
        .strip_prefix(b"k8s:enc:aesgcm:v1:")
        .unwrap_or_else(|| panic!("not encrypted: {:?}", String::from_utf8_lossy(raw)));
    let end = rest.iter().position(|b| *b == b':').expect("key name end");
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

#[test]
fn secrets_are_encrypted_in_the_database_and_survive_key_rotation() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start_with(ServerOptions {
        datastore_endpoint: Some("sqlite://".into()),
        ..Default::default()
    });
    let data_dir = server.data_dir().to_path_buf();
    let dir = data_dir.to_str().expect("utf-8 path");
    let plaintext = format!("s3cr3t-value-{}", std::process::id());
    server.kubectl(K, &["create", "namespace", NS], None).ok();
    for name in ["db", "api"] {
        server
            .kubectl(
                K,
                &[
                    "create",
                    "secret",
                    "generic",
                    name,
                    "-n",
                    NS,
                    &format!("--from-literal=password={plaintext}-{name}"),
                ],
                None,
            )
            .ok();
    }

    let key_file = data_dir.join("cred").join("encryption.json");
    let mode = std::fs::metadata(&key_file)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "key file mode {mode:o}");
    let first = key_names(&data_dir);
    assert_eq!(first.len(), 1, "{first:?}");
    let key = format!("/registry/secrets/{NS}/db");
    let raw = raw_value(&data_dir, &key);
    assert!(!contains(&raw, &plaintext), "plaintext in the database");
    assert!(
        !contains(&raw, &b64(&format!("{plaintext}-db"))),
        "base64 of it too"
    );
    assert_eq!(sealed_with(&raw), first[0]);
    // Other objects stay readable in the database.
    assert!(contains(
        &raw_value(&data_dir, &format!("/registry/namespaces/{NS}")),
        NS
    ));

    let read = |name: &str| {
        server
            .kubectl(
                K,
                &[
                    "get",
                    "secret",
                    name,
                    "-n",
                    NS,
                    "-o",
                    "jsonpath={.data.password}",
                ],
                None,
            )
            .ok()
            .stdout
    };
    assert_eq!(read("db"), b64(&format!("{plaintext}-db")));

    capstan(&["secrets-encrypt", "status", "--data-dir", dir])
        .ok()
        .stdout_has(&format!("Write key: {}", first[0]))
        .stdout_has(&format!("Secrets encrypted with {}: 2", first[0]));
    capstan(&[
        "secrets-encrypt",
        "rotate-keys",
        "--data-dir",
        dir,
        "--timeout-seconds",
        "30",
    ])
    .ok()
    .stdout_has("old keys removed");

    let second = key_names(&data_dir);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second, first);
    for name in ["db", "api"] {
        assert_eq!(read(name), b64(&format!("{plaintext}-{name}")));
        let raw = raw_value(&data_dir, &format!("/registry/secrets/{NS}/{name}"));
        assert_eq!(sealed_with(&raw), second[0], "{name} not re-encrypted");
        assert!(!contains(&raw, &plaintext));
    }
    // Writes after the rotation use the new key; updates through kubectl still work.
    server
        .kubectl(K, &["label", "secret", "db", "-n", NS, "rotated=yes"], None)
        .ok();
    assert_eq!(sealed_with(&raw_value(&data_dir, &key)), second[0]);
    assert_eq!(read("db"), b64(&format!("{plaintext}-db")));
    capstan(&["secrets-encrypt", "status", "--data-dir", dir])
        .ok()
        .stdout_has(&format!("Secrets encrypted with {}: 2", second[0]));
}
