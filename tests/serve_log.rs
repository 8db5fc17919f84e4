//! The start-up log of `batchlens serve` says where the data lives: the database (a
//! PostgreSQL password shown as `***`, a SQLite path absolute) and the data directory
//! (absolute, though configured relative).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::common::Db;

on_both!(the_start_up_log_names_the_database_and_the_data_dir);

/// Runs `batchlens serve` in `cwd` with only `env` (and a port of its own), reads its log
/// until it listens, stops it, and answers all it wrote (stdout and stderr).
async fn serve_log(cwd: &Path, env: &[(&str, &str)]) -> String {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_batchlens"))
        .arg("serve")
        .current_dir(cwd)
        .env_clear()
        .env("BATCHLENS__SERVER__PORT", "0")
        .env("BATCHLENS__DATA_DIR", "data")
        // Nothing is sent anywhere; if it were, only to a closed loopback port.
        .env("OPENAI_BASE_URL", "http://127.0.0.1:9")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("batchlens runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut log = String::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            log.push_str(&line);
            log.push('\n');
            if line.contains("batchlens listening") {
                return true;
            }
        }
        false
    };
    let listening = tokio::time::timeout(Duration::from_secs(60), read).await;
    child.kill().await.ok();
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut err).await.ok();
    }
    assert_eq!(
        listening.ok(),
        Some(true),
        "serve did not start:\n{log}\n{err}"
    );
    log + &err
}

async fn the_start_up_log_names_the_database_and_the_data_dir(db: Db) {
    let cwd = tempfile::tempdir().unwrap();
    // The child's working directory as the kernel reports it (no symlinks).
    let root = cwd.path().canonicalize().unwrap();
    let data = root.join("data");
    let (log, database) = match db {
        Db::Sqlite => {
            let log = serve_log(&root, &[]).await;
            (
                log,
                format!("sqlite://{}", data.join("batchlens.db").display()),
            )
        }
        Db::Postgres => {
            let Some(pg) = testkit::PgDatabase::create("bl_serve_log").await else {
                return;
            };
            // The test server trusts loopback, so any password is accepted (and must not
            // be logged).
            let mut url = url::Url::parse(pg.url()).unwrap();
            url.set_password(Some("s3cret-pw")).unwrap();
            let log = serve_log(&root, &[("DATABASE_URL", url.as_str())]).await;
            url.set_password(Some("***")).unwrap();
            (log, url.to_string())
        }
    };
    let line = log
        .lines()
        .find(|l| l.contains("batchlens starting"))
        .unwrap_or_else(|| panic!("no start-up line in:\n{log}"));
    assert!(
        line.contains(&format!("database={database}")),
        "{database} in {line}"
    );
    assert!(
        line.contains(&format!("data_dir={}", data.display())),
        "{} in {line}",
        data.display()
    );
    assert!(!log.contains("s3cret-pw"), "the password leaked:\n{log}");
    assert!(data.join("batches").is_dir());
}
