//! Fixtures shared by every test of the workspace (unit tests in `src/`, the integration
//! tests, the benchmarks, openai-sim's tests): images built in code, base64 and data URLs,
//! and, with the `postgres` feature, a PostgreSQL database of one test's own.
//!
//! Dev-only: it must never depend on batchlens or openai-sim, which depend on it for tests.

mod images;
#[cfg(feature = "postgres")]
mod postgres;
pub mod tally;

pub use images::*;
#[cfg(feature = "postgres")]
pub use postgres::PgDatabase;

use base64::Engine as _;

/// Reads a spawned batchlens's JSON log from `stdout` on a thread of its own: hands the
/// address of its `batchlens listening` line to `on_addr`, then keeps draining so the child
/// never blocks on a full pipe.
pub fn on_listening_addr(
    stdout: impl std::io::Read + Send + 'static,
    on_addr: impl FnOnce(String) + Send + 'static,
) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut on_addr = Some(on_addr);
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if entry["message"] == "batchlens listening" {
                if let (Some(f), Some(addr)) = (on_addr.take(), entry["addr"].as_str()) {
                    f(addr.to_string());
                }
            }
        }
    });
}

/// Standard base64 (with padding) of `bytes`.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `data:{mime};base64,…` for `bytes`.
pub fn data_url(mime: &str, bytes: &[u8]) -> String {
    format!("data:{mime};base64,{}", b64(bytes))
}

/// `data:image/png;base64,…` for `bytes`.
pub fn png_data_url(bytes: &[u8]) -> String {
    data_url("image/png", bytes)
}
