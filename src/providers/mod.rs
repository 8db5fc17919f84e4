//! Model vendors: the one trait a pipeline step reaches a vendor through (files, batches,
//! chat), and its implementations (`openai/` is the one today). A second vendor is one
//! more module implementing [`Provider`]; the steps do not change.
//!
//! The trait's types are, for now, OpenAI's wire types re-exported under neutral names
//! (the Batch API shape other vendors copy); a second vendor maps its own onto them.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

pub mod openai;

pub use openai::{
    Batch, BatchList, BatchOutputLine, BatchStatus, ChatCompletion, ChatResponse,
    CreateBatchRequest, DeletedFile, FileObject, OpenAiError as ProviderError, RateLimitHeaders,
};

/// What the batch steps and the individual executor need from a model vendor.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Uploads the file at `path` under `filename` for `purpose` (`batch`).
    async fn upload_file(
        &self,
        path: &Path,
        filename: &str,
        purpose: &str,
    ) -> Result<FileObject, ProviderError>;

    /// Streams a file's content to `dest`; returns its size in bytes.
    async fn download_file(&self, file_id: &str, dest: &Path) -> Result<u64, ProviderError>;

    async fn delete_file(&self, file_id: &str) -> Result<DeletedFile, ProviderError>;

    async fn create_batch(&self, req: &CreateBatchRequest) -> Result<Batch, ProviderError>;

    async fn retrieve_batch(&self, batch_id: &str) -> Result<Batch, ProviderError>;

    async fn cancel_batch(&self, batch_id: &str) -> Result<Batch, ProviderError>;

    /// One page of batches, newest first, after the batch id `after`.
    async fn list_batches(
        &self,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<BatchList, ProviderError>;

    /// One chat completion of a request `body`, with the rate-limit headers of its answer;
    /// each attempt within `timeout` when given, else the client's request timeout.
    async fn chat_completion(
        &self,
        body: &serde_json::Value,
        timeout: Option<std::time::Duration>,
    ) -> Result<ChatResponse, ProviderError>;
}

/// The provider as the worker context holds it.
pub type DynProvider = Arc<dyn Provider>;
