//! batchlens: turns image sets into structured vision analyses through the OpenAI Batch API.

pub mod domain;
pub mod openai;
pub mod store;
