//! The job use cases that write: submit a job, append items to an open job, submit an
//! open job, cancel. Each checks the job's state, runs intake off the async threads, and
//! answers the job's snapshot.

use std::collections::HashSet;

use uuid::Uuid;

use super::limits;
use super::reuse::Scope;
use super::submit::{self, JobInput};
use super::views::JobSnapshot;
use super::{App, AppError, AppResult};
use crate::domain::JobStatus;
use crate::intake::ItemInput;
use crate::store::StoreError;

/// Rejections a submit answers at most (the job keeps them all).
const MAX_REJECTIONS_SHOWN: usize = 1000;

impl App {
    /// Checks a job, stores it with its accepted items, and answers it with this
    /// request's rejections. With the `Idempotency-Key` the request holds, the key is
    /// marked with the job in the transaction that creates it.
    pub async fn submit(
        &self,
        tenant: &str,
        req: JobInput,
        idempotency_key: Option<&str>,
    ) -> AppResult<JobSnapshot> {
        let spec = submit::check_spec(&self.settings, &req)?;
        let per_item = self.per_item_for(tenant, &spec).await?;
        let prepared = self.prepare(tenant, spec, req, per_item).await?;
        let _admission = self.admission(tenant).await;
        self.check_open_items(tenant, prepared.intake.accepted)
            .await?;
        let est = &prepared.estimate;
        let held = limits::estimate_for(prepared.job.mode, est.batch, est.individual);
        self.check_budget(tenant, held, None).await?;
        let job = self
            .store
            .create_job_keyed(&prepared.job, &prepared.intake.items, idempotency_key)
            .await?;
        // Stored and its key marked, the answer not yet recorded.
        crate::failpoint::crash_if_armed("after_create_job");
        tracing::info!(
            job = %job.id, tenant = %job.tenant, status = %job.status, mode = %job.mode,
            items = job.counts.total, rejected = job.counts.rejected,
            "job accepted"
        );
        metrics::counter!(crate::metrics::JOBS_CREATED, "mode" => job.mode.as_str()).increment(1);
        count_intake(prepared.intake.items.len(), prepared.intake.rejected.len());
        let mut rejected = prepared.intake.rejected;
        rejected.truncate(MAX_REJECTIONS_SHOWN);
        Ok(JobSnapshot {
            job,
            rejected,
            shards: Vec::new(),
        })
    }

    /// Adds items to an open job; answers the job with this chunk's rejections. With the
    /// `Idempotency-Key` the request holds, the key is marked done with the items.
    pub async fn append(
        &self,
        tenant: &str,
        id: Uuid,
        mut items: Vec<ItemInput>,
        idempotency_key: Option<&str>,
    ) -> AppResult<JobSnapshot> {
        let job = self.job(tenant, id).await?;
        if job.status != JobStatus::Open {
            return Err(AppError::Conflict(format!(
                "job {id} is {}, items can only be added while it is open",
                job.status
            )));
        }
        self.fetch_images(job.fetch, &job.model, job.detail, &mut items)
            .await;
        let taken = self.taken_custom_ids(id).await?;
        let limits = submit::intake_limits(&self.settings, &job.model, job.detail);
        let first = job.counts.total;
        let mut intake = tokio::task::spawn_blocking(move || {
            submit::take_items(&limits, items, first, &taken, false)
        })
        .await
        .map_err(AppError::internal)??;
        let scope = Scope {
            tenant,
            analyzer: &job.analyzer,
            model: &job.model,
            detail: job.detail,
            enabled: job.reuse && self.settings.intake.reuse,
        };
        self.mark_reuse(&scope, &mut intake.items, first, Some(id))
            .await?;
        let _admission = self.admission(tenant).await;
        self.check_open_items(tenant, intake.accepted).await?;
        // A budget holds the open job's estimate for all its images so far.
        let estimate = match self.settings.tenant_limits(tenant).monthly_budget_usd {
            None => None,
            Some(_) => {
                // As it is now: another chunk may have moved its estimate meanwhile.
                let job = self.job(tenant, id).await?;
                let before = self.estimate_stored_job(&job).await?;
                let dims = submit::item_dims(&self.settings, &intake.items);
                let chunk = self.estimate_for_job(&job, &dims).await?;
                let sum = |a: Option<i64>, b: Option<i64>| a.zip(b).map(|(a, b)| a + b);
                let (batch, individual) = (
                    sum(before.batch, chunk.batch),
                    sum(before.individual, chunk.individual),
                );
                let held = limits::estimate_for(job.mode, batch, individual);
                self.check_budget(tenant, held, Some(&job)).await?;
                Some((batch, individual))
            }
        };
        let job = self
            .store
            .append_items_keyed(tenant, id, &intake.items, idempotency_key)
            .await?;
        if let Some((batch, individual)) = estimate {
            self.store.set_open_estimate(id, batch, individual).await?;
        }
        tracing::info!(job = %id, added = intake.items.len(), total = job.counts.total, "items appended");
        count_intake(intake.items.len(), intake.rejected.len());
        // Where the chunk really landed: another chunk may have been stored meanwhile.
        let landed = job.counts.total - intake.items.len() as i64;
        let mut rejected = intake.rejected;
        for r in &mut rejected {
            r.index += landed - first;
        }
        let mut view = self.job_view(&job).await?;
        view.rejected = rejected;
        Ok(view)
    }

    async fn taken_custom_ids(&self, job_id: Uuid) -> AppResult<HashSet<String>> {
        let mut taken = HashSet::new();
        let mut after = None;
        loop {
            let page = self.store.list_items(job_id, None, after, 5000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.position);
            taken.extend(page.into_iter().map(|i| i.custom_id));
        }
        Ok(taken)
    }

    /// Closes an open job and starts it in the mode its pending items call for.
    pub async fn submit_open(&self, tenant: &str, id: Uuid) -> AppResult<JobSnapshot> {
        let job = self.job(tenant, id).await?;
        if job.status != JobStatus::Open {
            return Err(AppError::Conflict(format!(
                "job {id} is {}, only an open job can be submitted",
                job.status
            )));
        }
        if job.counts.pending == 0 {
            return Err(AppError::field(
                "items",
                "the job has no usable image to run",
            ));
        }
        let (mode, reason) = submit::resolve_mode(
            job.requested_mode,
            job.counts.pending as usize,
            self.settings.individual.max_items,
            self.settings.individual.offers_flex(&job.model),
        );
        let estimate = self.estimate_stored_job(&job).await?;
        let job = self
            .store
            .submit_open_job(
                tenant,
                id,
                mode,
                &reason,
                estimate.batch,
                estimate.individual,
            )
            .await?;
        tracing::info!(job = %id, mode = %job.mode, items = job.counts.pending, "open job submitted");
        self.job_view(&job).await
    }

    /// Cancels a job: it becomes `cancelling`, the workers stop its work.
    pub async fn cancel(&self, tenant: &str, id: Uuid) -> AppResult<JobSnapshot> {
        self.job(tenant, id).await?;
        let job = self
            .store
            .cancel_job(tenant, id)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => AppError::NotFound(format!("no job {id}")),
                other => other.into(),
            })?;
        tracing::info!(job = %id, status = %job.status, cancelled = job.counts.cancelled, "job cancel requested");
        self.job_view(&job).await
    }
}

/// `stored` counts every item row written, the rejected ones included.
fn count_intake(stored: usize, rejected: usize) {
    let accepted = stored.saturating_sub(rejected);
    metrics::counter!(crate::metrics::ITEMS_ACCEPTED).increment(accepted as u64);
    metrics::counter!(crate::metrics::ITEMS_REJECTED).increment(rejected as u64);
}
