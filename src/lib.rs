//! batchlens: turns image sets into structured vision analyses through the OpenAI Batch API.

pub mod analyzer;
pub mod cost;
pub mod domain;
pub mod intake;
pub mod openai;
pub mod store;
