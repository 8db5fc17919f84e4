//! batchlens: turns image sets into structured vision analyses through the OpenAI Batch API.

pub mod cost;
pub mod domain;
pub mod store;
