//! The binary's command line: `--help` documents every setting; a bad config names the key.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ingest-server"))
        .args(args)
        .output()
        .expect("running ingest-server");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_documents_every_setting() {
    let (ok, out, _) = run(&["--help"]);
    assert!(ok);
    for key in [
        "--config",
        "listen",
        "[clickhouse]",
        "url",
        "database",
        "user",
        "password",
        "[spool]",
        "dir",
        "max_bytes",
        "[writer]",
        "max_rows",
        "max_age",
        "max_attempts",
        "max_backoff",
        "WAYMARK_WRITER_MAX_BACKOFF",
        "WAYMARK_WRITER_MAX_ATTEMPTS",
        "quarantine",
        "[edge]",
        "secret",
        "replay_window",
        "max_body",
        "[dedup]",
        "capacity",
        "[[sites]]",
        "id",
        "write_keys",
        "allowed_origins",
        "ip",
        "WAYMARK_LISTEN",
        "WAYMARK_CLICKHOUSE_URL",
        "WAYMARK_CLICKHOUSE_DATABASE",
        "WAYMARK_CLICKHOUSE_USER",
        "WAYMARK_CLICKHOUSE_PASSWORD",
        "WAYMARK_CLICKHOUSE_CLUSTER",
        "cluster",
        "servers = N",
        "WAYMARK_SPOOL_DIR",
        "WAYMARK_SPOOL_MAX_BYTES",
        "WAYMARK_EDGE_SECRET",
        "WAYMARK_WRITER_MAX_ROWS",
        "WAYMARK_WRITER_MAX_BYTES",
        "WAYMARK_WRITER_MAX_AGE",
    ] {
        assert!(out.contains(key), "--help does not mention {key}:\n{out}");
    }
}

#[test]
fn a_wrong_key_or_value_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[spool]\nmax_byte = \"1GiB\"\n", "max_byte"),
        ("[writer]\nmax_age = \"soon\"\n", "max_age"),
        ("[[sites]]\nid = \"a\"\nip = \"keep\"\n", "ip"),
        ("listen = \"not an address\"\n", "listen"),
    ];
    for (i, (toml, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let (ok, _, err) = run(&["--config", path.to_str().unwrap()]);
        assert!(!ok, "{toml:?} was accepted");
        assert!(
            err.contains(key),
            "error for {toml:?} does not name {key}: {err}"
        );
    }
    let (ok, _, err) = run(&[
        "--config",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("missing.toml"), "{err}");
}

#[test]
fn quarantine_replay_has_help_and_names_a_bad_since() {
    let (ok, out, _) = run(&["quarantine", "replay", "--help"]);
    assert!(ok);
    for want in [
        "--site",
        "--since",
        "--wait",
        "--config",
        "Idempotent by message id",
        "dead-letter.jsonl",
        "quarantine_replays",
    ] {
        assert!(
            out.contains(want),
            "replay --help does not mention {want}:\n{out}"
        );
    }
    let (ok, _, err) = run(&["quarantine", "replay", "--since", "last tuesday"]);
    assert!(!ok);
    assert!(
        err.contains("--since") && err.contains("last tuesday"),
        "{err}"
    );
}
