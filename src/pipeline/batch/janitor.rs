//! Data directory hygiene: removes a finished job's JSONL files (inputs kept as the backup
//! the old pipeline kept, outputs as downloaded) once `batch.retention_hours` have passed
//! since it finished, and forgets the ids of OpenAI webhooks older than
//! [`OPENAI_WEBHOOK_IDS_KEPT`] (a replay that old is refused by its timestamp anyway).

use std::path::Path;

use chrono::{Duration as ChronoDuration, Utc};
use uuid::Uuid;

use crate::pipeline::{StepError, WorkerContext};

/// How long a received OpenAI `webhook-id` is remembered: three times the timestamp
/// tolerance of `signing::verify`.
pub const OPENAI_WEBHOOK_IDS_KEPT: ChronoDuration = ChronoDuration::minutes(15);

/// Removes expired job folders under `<data_dir>/batches` and old OpenAI webhook ids.
/// Returns how many folders it removed.
pub async fn run_once(ctx: &WorkerContext) -> Result<usize, StepError> {
    let forgotten = ctx
        .store
        .forget_openai_webhooks(Utc::now() - OPENAI_WEBHOOK_IDS_KEPT)
        .await?;
    if forgotten > 0 {
        tracing::debug!(forgotten, "forgot old OpenAI webhook ids");
    }
    let root = ctx.settings.batches_dir();
    let retention = ChronoDuration::hours(ctx.settings.batch.retention_hours as i64);
    let mut removed = 0;
    let mut entries = match tokio::fs::read_dir(&root).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    while let Some(entry) = entries.next_entry().await? {
        let Some(job_id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<Uuid>().ok())
        else {
            continue;
        };
        let expired = match ctx.store.get_job(None, job_id).await? {
            // Files of a job the database does not know (another deployment's) are left.
            None => false,
            Some(job) => {
                job.status.is_terminal()
                    && job
                        .completed_at
                        .is_some_and(|at| at + retention <= Utc::now())
            }
        };
        if expired {
            remove(&entry.path()).await?;
            tracing::info!(job = %job_id, "removed the job's batch files (retention)");
            removed += 1;
        }
    }
    Ok(removed)
}

async fn remove(path: &Path) -> std::io::Result<()> {
    match tokio::fs::remove_dir_all(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
