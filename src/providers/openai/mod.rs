//! Typed OpenAI client for what batchlens needs: Files, Batches, Chat Completions. Owns the
//! wire types, retries and rate-limit header parsing; knows nothing of jobs, shards or storage.

mod client;
mod error;
mod ratelimit;
mod retry;
mod types;

#[cfg(test)]
mod tests;

pub use client::{ChatResponse, OpenAiClient, OpenAiConfig};
pub use error::OpenAiError;
pub use ratelimit::{parse_duration, RateLimitHeaders};
pub use retry::{parse_retry_after, MAX_HONOURED_RETRY_AFTER};
pub use types::{
    ApiError, AssistantMessage, Batch, BatchError, BatchErrors, BatchLineError, BatchLineResponse,
    BatchList, BatchOutputLine, BatchStatus, BatchUsage, ChatCompletion, Choice,
    CompletionTokensDetails, CompletionUsage, CreateBatchRequest, DeletedFile, FileList,
    FileObject, InputTokensDetails, OutputTokensDetails, PromptTokensDetails, RequestCounts,
};
