//! Typed OpenAI client for what batchlens needs: Files, Batches, Chat Completions. Owns the
//! wire types, retries and rate-limit header parsing; knows nothing of jobs, shards or storage.
//! Implements [`crate::providers::Provider`], the only way the pipeline reaches it.

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
pub(crate) use retry::RetryPolicy;
pub use retry::{parse_retry_after, MAX_HONOURED_RETRY_AFTER};
pub use types::{
    ApiError, AssistantMessage, Batch, BatchError, BatchErrors, BatchLineError, BatchLineResponse,
    BatchList, BatchOutputLine, BatchStatus, BatchUsage, ChatCompletion, Choice,
    CompletionTokensDetails, CompletionUsage, CreateBatchRequest, DeletedFile, FileList,
    FileObject, InputTokensDetails, OutputTokensDetails, PromptTokensDetails, RequestCounts,
};

use std::path::Path;

use async_trait::async_trait;

use crate::providers::{Provider, ProviderError};

#[async_trait]
impl Provider for OpenAiClient {
    async fn upload_file(
        &self,
        path: &Path,
        filename: &str,
        purpose: &str,
    ) -> Result<FileObject, ProviderError> {
        OpenAiClient::upload_file(self, path, filename, purpose).await
    }

    async fn download_file(&self, file_id: &str, dest: &Path) -> Result<u64, ProviderError> {
        OpenAiClient::download_file(self, file_id, dest).await
    }

    async fn delete_file(&self, file_id: &str) -> Result<DeletedFile, ProviderError> {
        OpenAiClient::delete_file(self, file_id).await
    }

    async fn create_batch(&self, req: &CreateBatchRequest) -> Result<Batch, ProviderError> {
        OpenAiClient::create_batch(self, req).await
    }

    async fn retrieve_batch(&self, batch_id: &str) -> Result<Batch, ProviderError> {
        OpenAiClient::retrieve_batch(self, batch_id).await
    }

    async fn cancel_batch(&self, batch_id: &str) -> Result<Batch, ProviderError> {
        OpenAiClient::cancel_batch(self, batch_id).await
    }

    async fn list_batches(
        &self,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<BatchList, ProviderError> {
        OpenAiClient::list_batches(self, after, limit).await
    }

    async fn chat_completion(
        &self,
        body: &serde_json::Value,
        timeout: Option<std::time::Duration>,
    ) -> Result<ChatResponse, ProviderError> {
        match timeout {
            Some(t) => OpenAiClient::chat_completion_within(self, body, t).await,
            None => OpenAiClient::chat_completion(self, body).await,
        }
    }
}
