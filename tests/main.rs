//! The integration tests, one binary (one link, one copy of every dependency on disk):
//! each module below is one area, run against the real application and openai-sim, on
//! SQLite and on PostgreSQL. `autotests = false` in Cargo.toml: a new file here is a new
//! `mod` line below. `cargo test --test service individual::` runs one area.

#[macro_use]
mod common;

mod api;
mod batch_jobs;
mod cli;
mod config_rules;
mod contract;
mod cost;
mod crash_recovery;
mod dashboard;
mod fetch;
mod flex;
mod governor;
mod housekeeping;
mod individual;
mod intake_strict;
mod item_results;
mod live_progress;
mod multipart;
mod openai_webhooks;
mod openapi;
mod outbound;
mod read_path;
mod recommendation;
mod resilience;
mod reuse;
mod serve_log;
mod shared_budget;
mod tenants;
mod webhook_safety;
