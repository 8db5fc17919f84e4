//! Read side: a job as callers see it (its row, its shards, its first rejections) —
//! shared by the API and the webhook sender — and the pages of jobs, results and posts.
//! Returns domain data; the HTTP layer renders it.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{App, AppError, AppResult};
use crate::domain::{Item, ItemStatus, Job, JobStatus, Shard};
use crate::intake::Rejection;
use crate::store::DynStore;
pub use crate::store::{CostTotals, Gauges, JobCursor};

/// Everything a job's view is made of.
#[derive(Debug, Clone)]
pub struct JobSnapshot {
    pub job: Job,
    /// Items refused at intake: this request's on a submit or append, else the job's
    /// first 100 (kept on its row).
    pub rejected: Vec<Rejection>,
    pub shards: Vec<Shard>,
}

/// One page of a listing; `more` when another page follows.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub more: bool,
}

/// The items of one post, in item order (`post_id` None: the items without one).
#[derive(Debug, Clone)]
pub struct Post {
    pub post_id: Option<String>,
    pub items: Vec<Item>,
}

/// Items read from the store per round while grouping posts.
const POST_PAGE: i64 = 1000;

impl App {
    /// The caller's job, or not found.
    pub async fn job(&self, tenant: &str, id: Uuid) -> AppResult<Job> {
        self.store
            .get_job(Some(tenant), id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("no job {id}")))
    }

    /// A job by id whoever owns it (`None` when gone): for watchers of a job already
    /// checked to be the caller's.
    pub async fn job_now(&self, id: Uuid) -> AppResult<Option<Job>> {
        Ok(self.store.get_job(None, id).await?)
    }

    /// The job's `progress.processing`, from its shards (see [`crate::domain::processing`]).
    pub async fn job_processing(&self, id: Uuid) -> AppResult<i64> {
        let shards = self.store.list_shards(id).await?;
        Ok(crate::domain::processing(&shards))
    }

    /// The caller's job as callers see it, read in one statement (its row and its
    /// shards, never its items), or not found.
    pub async fn job_snapshot(&self, tenant: &str, id: Uuid) -> AppResult<JobSnapshot> {
        let (job, shards) = self
            .store
            .job_with_shards(Some(tenant), id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("no job {id}")))?;
        Ok(JobSnapshot {
            rejected: job.rejections.clone(),
            job,
            shards,
        })
    }

    /// The version of the caller's job (what its ETag is made of), or not found.
    pub async fn job_version(&self, tenant: &str, id: Uuid) -> AppResult<i64> {
        self.store
            .job_version(tenant, id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("no job {id}")))
    }

    /// The job as callers see it (see [`job_snapshot`]).
    pub async fn job_view(&self, job: &Job) -> AppResult<JobSnapshot> {
        job_snapshot(&self.store, job).await
    }

    /// The tenant's jobs, newest first, after `after`.
    pub async fn list_jobs(
        &self,
        tenant: &str,
        status: Option<JobStatus>,
        after: Option<JobCursor>,
        limit: i64,
    ) -> AppResult<Page<JobSnapshot>> {
        let jobs = self
            .store
            .list_jobs(tenant, status, after, limit + 1)
            .await?;
        let more = jobs.len() as i64 > limit;
        let jobs = &jobs[..jobs.len().min(limit as usize)];
        // The page's shards in one statement, not one per job.
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
        let mut by_job: HashMap<Uuid, Vec<Shard>> = HashMap::new();
        for shard in self.store.list_shards_of_jobs(&ids).await? {
            by_job.entry(shard.job_id).or_default().push(shard);
        }
        let data = jobs
            .iter()
            .map(|job| JobSnapshot {
                job: job.clone(),
                rejected: job.rejections.clone(),
                shards: by_job.remove(&job.id).unwrap_or_default(),
            })
            .collect();
        Ok(Page { data, more })
    }

    /// A job's items in order after position `after`.
    pub async fn results(
        &self,
        job_id: Uuid,
        status: Option<ItemStatus>,
        after: Option<i64>,
        limit: i64,
    ) -> AppResult<Page<Item>> {
        let mut items = self
            .store
            .list_items(job_id, status, after, limit + 1)
            .await?;
        let more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        Ok(Page { data: items, more })
    }

    /// Up to `limit` items after position `after`, for streaming every result.
    pub async fn items(
        &self,
        job_id: Uuid,
        status: Option<ItemStatus>,
        after: Option<i64>,
        limit: i64,
    ) -> AppResult<Vec<Item>> {
        Ok(self.store.list_items(job_id, status, after, limit).await?)
    }

    /// Up to `limit` posts after the post `after` (the last one of the previous page),
    /// items without a post last.
    pub async fn posts(
        &self,
        job_id: Uuid,
        after: Option<Option<String>>,
        limit: i64,
    ) -> AppResult<Page<Post>> {
        // Resume after all the items of the previous page's last post.
        let mut after: Option<(Option<String>, i64)> = after.map(|post| (post, i64::MAX));
        let mut posts: Vec<Post> = Vec::new();
        loop {
            let items = self
                .store
                .list_items_by_post(job_id, after.clone(), POST_PAGE)
                .await?;
            let Some(last) = items.last() else { break };
            after = Some((last.post_id.clone(), last.position));
            let full = items.len() as i64 == POST_PAGE;
            for item in items {
                match posts.last_mut() {
                    Some(p) if p.post_id == item.post_id => p.items.push(item),
                    _ => {
                        if posts.len() as i64 == limit {
                            return Ok(Page {
                                data: posts,
                                more: true,
                            });
                        }
                        posts.push(Post {
                            post_id: item.post_id.clone(),
                            items: vec![item],
                        });
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(Page {
            data: posts,
            more: false,
        })
    }

    /// Spend and savings of the tenant's jobs created in `[from, to)`.
    pub async fn cost_totals(
        &self,
        tenant: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> AppResult<CostTotals> {
        if from >= to {
            return Err(AppError::field("from", "must be before `to`"));
        }
        Ok(self.store.cost_totals(tenant, from, to).await?)
    }

    /// Whether the database answers within `within`; the answer says why not.
    pub async fn ready(&self, within: Duration) -> Result<(), String> {
        match tokio::time::timeout(within, self.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "readiness: database does not answer");
                Err("the database does not answer".into())
            }
            Err(_) => Err(format!(
                "the database did not answer within {} s",
                within.as_secs()
            )),
        }
    }

    /// Jobs by status and items waiting, over every tenant.
    pub async fn gauges(&self) -> AppResult<Gauges> {
        Ok(self.store.gauges().await?)
    }
}

/// The job as callers see it, from its row (with its first rejections) and its shards:
/// what the API answers and the webhook sender delivers. One statement; never items.
pub async fn job_snapshot(store: &DynStore, job: &Job) -> AppResult<JobSnapshot> {
    Ok(JobSnapshot {
        job: job.clone(),
        rejected: job.rejections.clone(),
        shards: store.list_shards(job.id).await?,
    })
}
