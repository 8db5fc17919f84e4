//! Estimated input tokens of a job's requests, which OpenAI's enqueued-token limit counts:
//! the planner caps a shard's estimate at the model's limit, the submitter keeps the sum
//! of a model's in-flight estimates under it. The job's text (prompt, schema, envelope) is
//! counted once; each item adds its image by the model's vision formula.

use crate::analyzer::{chat_request_body, RequestOptions};
use crate::cost::image_tokens::image_tokens;
use crate::cost::text_tokens::chat_request_input_tokens;
use crate::domain::{Detail, Job};
use crate::pipeline::WorkerContext;

/// Per-item input-token estimates for one job.
#[derive(Debug, Clone)]
pub struct TokenEstimator {
    model: String,
    detail: Detail,
    /// Tokens of everything but the image.
    text: u64,
    /// Size assumed for an image whose dimensions are not stored (URLs).
    default_dims: (u32, u32),
}

impl TokenEstimator {
    pub fn new(ctx: &WorkerContext, job: &Job) -> Self {
        let opts = RequestOptions {
            model: &job.model,
            detail: job.detail,
            max_completion_tokens: ctx.settings.openai.max_completion_tokens,
        };
        let body = chat_request_body(&job.analyzer, "https://image.invalid/x.png", &opts);
        let with_tiny = chat_request_input_tokens(&body, &|_| Some((1, 1)));
        let tiny = image_tokens(&job.model, 1, 1, job.detail);
        TokenEstimator {
            model: job.model.clone(),
            detail: job.detail,
            text: u64::from(with_tiny.saturating_sub(tiny)),
            default_dims: (
                ctx.settings.intake.default_image_width,
                ctx.settings.intake.default_image_height,
            ),
        }
    }

    /// Input tokens of one item's request.
    pub fn item(&self, dims: Option<(u32, u32)>) -> u64 {
        let (w, h) = dims.unwrap_or(self.default_dims);
        self.text + u64::from(image_tokens(&self.model, w, h, self.detail))
    }

    /// Input tokens of a whole shard.
    pub fn total(&self, dims: &[Option<(u32, u32)>]) -> u64 {
        dims.iter().map(|d| self.item(*d)).sum()
    }
}

/// The enqueued-token limit configured for a model: its `[batch.token_limits]` entry, else
/// `batch.enqueued_token_limit`; `None` when unknown (0).
pub fn limit_for(ctx: &WorkerContext, model: &str) -> Option<u64> {
    let b = &ctx.settings.batch;
    let limit = b
        .token_limits
        .get(model)
        .copied()
        .unwrap_or(b.enqueued_token_limit);
    (limit > 0).then_some(limit)
}
