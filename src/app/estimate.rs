//! Estimates: what to assume per image beside its image tokens (learned from the billed
//! usage of the tenant's recent jobs with the same analyzer, else the formula), the
//! estimate of a job body before anything is stored (`POST /v1/estimates`), and the
//! estimate of a stored open job's pending items when it is submitted.

use super::submit::{self, JobInput, JobSpec};
use super::{App, AppResult};
use crate::cost::calibration::{Calibration, PerItem, UsageSample};
use crate::cost::estimate::Estimate;
use crate::cost::recommend::{self, Asked, Modes, Recommendation};
use crate::domain::{Analyzer, Detail, ItemStatus, Job, Mode};
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
    /// What was assumed per image on the job's model.
    pub per_item: PerItem,
    pub rejections: Vec<Rejection>,
    /// The cheapest (model, detail, mode) for these images; `None` when nothing is priced.
    pub recommendation: Option<Recommendation>,
    /// Images that would be answered from earlier analyses, at 0.
    pub reused: usize,
    /// The priced models that offer flex processing (at Batch API prices).
    pub flex_models: Vec<String>,
    /// The job's model offers flex processing.
    pub offers_flex: bool,
}

impl App {
    /// The priced models that offer flex processing (`individual.flex_models`, matched as
    /// submit matches them), by their price-table names.
    fn flex_models_priced(&self) -> Vec<String> {
        self.prices
            .models()
            .map(|(name, _)| name)
            .filter(|name| self.settings.individual.offers_flex(name))
            .map(str::to_string)
            .collect()
    }

    /// The tenant's history with `analyzer`: the billed usage of the succeeded items of its
    /// most recent jobs that ran it (`estimate.history_jobs` jobs, up to
    /// `estimate.history_items_per_job` items each), by model and detail.
    pub async fn calibration(&self, tenant: &str, analyzer: &Analyzer) -> AppResult<Calibration> {
        let cfg = &self.settings.estimate;
        let recent = self.store.list_jobs(tenant, None, None, 200).await?;
        let mut samples = Vec::new();
        for job in recent
            .iter()
            .filter(|j| j.counts.succeeded > 0 && *j.analyzer == *analyzer)
            .take(cfg.history_jobs)
        {
            let billed = self
                .store
                .billed_usage(job.id, cfg.history_items_per_job)
                .await?;
            samples.extend(billed.into_iter().map(|b| UsageSample {
                model: job.model.clone(),
                detail: job.detail,
                dims: b.dims,
                input_tokens: b.input_tokens,
                output_tokens: b.output_tokens,
            }));
        }
        Ok(Calibration::from_samples(&samples, cfg.min_observed_items))
    }

    /// What to assume per image on `model` for a job like `spec`: what the history
    /// observed, else the o200k count of the request's text and the job model's observed
    /// output length (else `estimate.default_output_tokens`).
    fn per_item(&self, cal: &Calibration, spec: &JobSpec, model: &str) -> PerItem {
        let fallback_output = cal
            .output_tokens(&spec.model, spec.detail)
            .unwrap_or(self.settings.estimate.default_output_tokens);
        let formula = submit::request_overhead_tokens(&self.settings, spec);
        cal.per_item(model, spec.detail, formula, fallback_output)
    }

    /// The per-image assumption for a job's own model.
    pub async fn per_item_for(&self, tenant: &str, spec: &JobSpec) -> AppResult<PerItem> {
        let cal = self.calibration(tenant, &spec.analyzer).await?;
        Ok(self.per_item(&cal, spec, &spec.model))
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
        self.estimate_for_job(job, &dims).await
    }

    /// The estimate of images of these dimensions run as `job` runs them.
    pub async fn estimate_for_job(&self, job: &Job, dims: &[(u32, u32)]) -> AppResult<Estimate> {
        let spec = JobSpec {
            name: job.name.clone(),
            model: job.model.clone(),
            requested_mode: job.requested_mode,
            detail: job.detail,
            analyzer: (*job.analyzer).clone(),
            metadata: None,
            webhook_url: None,
            fetch: job.fetch,
            reuse: job.reuse,
        };
        let per_item = self.per_item_for(&job.tenant, &spec).await?;
        Ok(crate::cost::estimate::estimate(
            &self.prices,
            &submit::estimate_input(&spec, dims, per_item),
        ))
    }

    /// Estimates a job body exactly as a submit would see it.
    pub async fn estimate(&self, tenant: &str, req: JobInput) -> AppResult<BodyEstimate> {
        let spec = submit::check_spec(&self.settings, &req)?;
        let cal = self.calibration(tenant, &spec.analyzer).await?;
        let per_item = self.per_item(&cal, &spec, &spec.model);
        let prepared = self.prepare(tenant, spec.clone(), req, per_item).await?;
        let accepted = prepared.intake.accepted;
        let dims = submit::item_dims(&self.settings, &prepared.intake.items);
        let models = submit::compare_models(&self.prices, &spec, &dims, |m| {
            self.per_item(&cal, &spec, m)
        });
        let (mode, _) = submit::resolve_mode(
            spec.requested_mode,
            dims.len(),
            self.settings.individual.max_items,
            self.settings.individual.offers_flex(&spec.model),
        );
        let by_detail: Vec<(Detail, Vec<Estimate>)> = Detail::ALL
            .iter()
            .map(|&detail| {
                let spec = JobSpec {
                    detail,
                    ..spec.clone()
                };
                let all = submit::compare_models(&self.prices, &spec, &dims, |m| {
                    self.per_item(&cal, &spec, m)
                });
                (detail, all)
            })
            .collect();
        let reused = prepared.reuse.total();
        let offers_flex = self.settings.individual.offers_flex(&spec.model);
        let flex_models = self.flex_models_priced();
        let recommendation = recommend::recommend(
            &by_detail,
            &Modes::with_flex(flex_models.clone()),
            Asked {
                model: &spec.model,
                detail: spec.detail,
                mode,
                images: dims.len() as u64,
                reused: reused as u64,
            },
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
            per_item,
            rejections: prepared.intake.rejected,
            recommendation,
            reused,
            flex_models,
            offers_flex,
        })
    }
}
