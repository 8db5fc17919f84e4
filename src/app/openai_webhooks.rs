//! OpenAI's own webhooks: a verified batch event (`batch.completed`, `batch.failed`,
//! `batch.expired`, `batch.cancelled`) makes the batch's in-flight shards due for polling
//! now. It is a hint, never the truth: the poller still asks OpenAI for the batch before it
//! ingests or fails anything. Each `webhook-id` counts once on every replica (the store
//! remembers it), so a replayed delivery changes nothing. The API verifies the signature
//! (`signing::verify`) before calling this.

use super::{App, AppResult};
pub use crate::store::OpenAiWebhookReceipt;

/// The event types that end a batch, the ones acted on.
pub const BATCH_EVENTS: [&str; 4] = [
    "batch.completed",
    "batch.failed",
    "batch.expired",
    "batch.cancelled",
];

/// Whether an event of this type ends a batch (and so names one in `data.id`).
pub fn is_batch_event(kind: &str) -> bool {
    BATCH_EVENTS.contains(&kind)
}

impl App {
    /// The key `openai.webhook_secret` holds; None when it is empty (every delivery is
    /// then refused).
    pub fn openai_webhook_key(&self) -> Option<Vec<u8>> {
        self.settings.openai.webhook_key()
    }

    /// Takes a verified delivery `webhook_id` of event `kind` about `batch_id` (None for
    /// events that name no batch, which are only recorded).
    pub async fn openai_webhook(
        &self,
        webhook_id: &str,
        kind: &str,
        batch_id: Option<&str>,
    ) -> AppResult<OpenAiWebhookReceipt> {
        let batch_id = batch_id.filter(|_| is_batch_event(kind));
        Ok(self
            .store
            .openai_webhook_received(webhook_id, batch_id)
            .await?)
    }
}
