//! batchlens: turns image sets into structured vision analyses through the OpenAI Batch API.

pub mod analyzer;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod cost;
pub mod domain;
pub mod failpoint;
pub mod files;
pub mod intake;
pub mod keys;
pub mod metrics;
pub mod outbound;
pub mod pipeline;
pub mod providers;
pub mod signing;
pub mod startup;
pub mod store;
pub mod telemetry;
