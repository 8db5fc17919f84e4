//! Estimates: the output tokens to assume per image (from the tenant's recent jobs), the
//! estimate of a job body before anything is stored (`POST /v1/estimates`), and the
//! estimate of a stored open job's pending items when it is submitted.

use super::submit::{self, JobInput, JobSpec};
use super::{App, AppResult};
use crate::cost::estimate::Estimate;
use crate::domain::{Analyzer, ItemStatus, Job, JobStatus, Mode};
use crate::intake::Rejection;

/// What a job body would cost, by mode and by model; nothing stored or sent.
#[derive(Debug, Clone)]
pub struct BodyEstimate {
    /// Items that would run.
    pub accepted: usize,
    /// Items intake refused.
    pub rejected: usize,
    pub model: String,
    /// The mode `auto` (or the requested mode) would pick.
    pub mode: Mode,
    /// The estimate for the job's model.
    pub estimate: Estimate,
    /// Every priced model, cheapest first.
    pub models: Vec<Estimate>,
    pub output_tokens_per_item: u32,
    pub rejections: Vec<Rejection>,
}

impl App {
    /// Output tokens per image to assume for estimates: the average of the tenant's
    /// recent finished jobs with the same model and analyzer, else the configured default.
    pub async fn expected_output_tokens(
        &self,
        tenant: &str,
        model: &str,
        analyzer: &Analyzer,
    ) -> AppResult<u32> {
        let recent = self
            .store
            .list_jobs(tenant, Some(JobStatus::Completed), None, 50)
            .await?;
        let (tokens, items) = recent
            .iter()
            .filter(|j| j.model == model && &j.analyzer == analyzer)
            .filter(|j| j.counts.succeeded > 0)
            .take(10)
            .fold((0i64, 0i64), |(t, n), j| {
                (
                    t + j.cost.output_tokens,
                    n + j.counts.succeeded + j.counts.failed,
                )
            });
        Ok(if items > 0 && tokens > 0 {
            (tokens as f64 / items as f64).round() as u32
        } else {
            self.settings.estimate.default_output_tokens
        })
    }

    /// The estimate of a stored job's pending items (an open job being submitted).
    pub async fn estimate_stored_job(&self, job: &Job) -> AppResult<Estimate> {
        let dims: Vec<(u32, u32)> = self
            .store
            .pending_item_dims(job.id)
            .await?
            .into_iter()
            .map(|d| {
                d.unwrap_or((
                    self.settings.intake.default_image_width,
                    self.settings.intake.default_image_height,
                ))
            })
            .collect();
        let spec = JobSpec {
            name: job.name.clone(),
            model: job.model.clone(),
            requested_mode: job.requested_mode,
            detail: job.detail,
            analyzer: job.analyzer.clone(),
            metadata: None,
            webhook_url: None,
        };
        Ok(crate::cost::estimate::estimate(
            &self.prices,
            &submit::estimate_input(
                &self.settings,
                &spec,
                &dims,
                self.expected_output_tokens(&job.tenant, &job.model, &job.analyzer)
                    .await?,
            ),
        ))
    }

    /// Estimates a job body exactly as a submit would see it.
    pub async fn estimate(&self, tenant: &str, req: JobInput) -> AppResult<BodyEstimate> {
        let spec = submit::check_spec(&self.settings, &req)?;
        let output_tokens = self
            .expected_output_tokens(tenant, &spec.model, &spec.analyzer)
            .await?;
        let prepared = self
            .prepare(tenant, spec.clone(), req, output_tokens)
            .await?;
        let accepted = prepared.intake.accepted;
        let dims = submit::item_dims(&self.settings, &prepared.intake.items);
        let models =
            submit::compare_models(&self.settings, &self.prices, &spec, &dims, output_tokens);
        let (mode, _) = submit::resolve_mode(
            spec.requested_mode,
            accepted,
            self.settings.individual.max_items,
        );
        let rejected = prepared
            .intake
            .items
            .iter()
            .filter(|i| i.status == ItemStatus::Rejected)
            .count();
        Ok(BodyEstimate {
            accepted,
            rejected,
            model: spec.model,
            mode,
            estimate: prepared.estimate,
            models,
            output_tokens_per_item: output_tokens,
            rejections: prepared.intake.rejected,
        })
    }
}
