//! Crash points for tests: with `BATCHLENS_FAILPOINTS=after_create_batch` (a comma-separated
//! list of names; `after_create_job` is the other: a job stored, its answer not yet recorded
//! for its Idempotency-Key) the process exits at once, with code 86 and no cleanup, as if killed,
//! when it reaches that point. Tests use it to crash between two effects at a known place
//! (a batch created at OpenAI, its id not yet stored) instead of killing at random times.
//! Unset, each point costs one comparison against an empty list read once.

use std::sync::OnceLock;

/// The exit code of a process stopped at a failpoint.
pub const EXIT_CODE: i32 = 86;

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("BATCHLENS_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty())
            .collect()
    })
}

/// Exits the process here when `name` is armed.
pub fn crash_if_armed(name: &str) {
    if armed().iter().any(|armed| armed == name) {
        eprintln!("batchlens: failpoint {name} reached; exiting with {EXIT_CODE}");
        std::process::exit(EXIT_CODE);
    }
}
