//! batchlens: turns image sets into structured vision analyses through the OpenAI Batch API.

pub mod analyzer;
pub mod api;
pub mod batch;
pub mod config;
pub mod cost;
pub mod domain;
pub mod individual;
pub mod intake;
pub mod metrics;
pub mod openai;
pub mod startup;
pub mod store;
pub mod submit;
pub mod telemetry;
pub mod webhooks;
pub mod workers;
