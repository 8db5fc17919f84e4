//! Which backend each test really ran on, written by the tests themselves: one line per test
//! and backend, `<backend> <ran|skipped> <test>`, appended to `BATCHLENS_TEST_TALLY` (default
//! `target/test-tally.log` in the workspace). `.ci/run` empties the file before the suite and
//! prints `postgres: N ran, M skipped` (and the same for SQLite) from it afterwards, so a run
//! where the PostgreSQL half quietly returned early shows as such.

use std::io::Write;
use std::path::PathBuf;

/// The backend a test asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Whether the test got its database or returned early without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ran,
    Skipped,
}

/// The tally file: `BATCHLENS_TEST_TALLY`, else `target/test-tally.log` in the workspace.
pub fn path() -> PathBuf {
    std::env::var_os("BATCHLENS_TEST_TALLY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-tally.log")
        })
}

/// Records that the current test ran (or skipped) on `backend`. The test is named by its
/// thread, which libtest names after the test; a test that makes several databases is one
/// line after de-duplication. Best effort: a tally that cannot be written fails no test.
pub fn record(backend: Backend, outcome: Outcome) {
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main" && !n.starts_with("tokio-runtime"))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("unnamed-{}", std::process::id()));
    let backend = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let outcome = match outcome {
        Outcome::Ran => "ran",
        Outcome::Skipped => "skipped",
    };
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| match stem.rsplit_once('-') {
            // cargo names test binaries `<target>-<hash>`.
            Some((name, _hash)) => name.to_owned(),
            None => stem,
        })
        .unwrap_or_default();
    let line = format!("{backend} {outcome} {binary}::{test}\n");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path());
    // One short write with O_APPEND: lines from parallel tests do not interleave.
    if let Ok(mut file) = file {
        let _ = file.write_all(line.as_bytes());
    }
}
