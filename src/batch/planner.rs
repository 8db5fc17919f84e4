//! Planning: cuts a job's unassigned pending items into shards that respect OpenAI's
//! limits (lines, bytes, one model per file). The cut itself is pure; `run_once` claims
//! jobs, cuts, and stores the shards in one fenced transaction.

use chrono::Utc;
use uuid::Uuid;

use super::BatchContext;
use crate::domain::{Mode, ShardKind};
use crate::store::{NewShard, PlanItem, StoreResult};

/// Bytes a JSONL line adds around the image reference: the prompt, the schema and the
/// request envelope. Measured per job, so custom analyzers with long prompts are counted.
pub fn plan(items: &[PlanItem], max_lines: u64, max_bytes: u64, overhead: u64) -> Vec<Vec<i64>> {
    let mut shards = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0u64;
    for item in items {
        let line = item.image_bytes.max(0) as u64 + overhead;
        let full = current.len() as u64 >= max_lines || bytes + line > max_bytes;
        if full && !current.is_empty() {
            shards.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(item.position);
        bytes += line;
    }
    if !current.is_empty() {
        shards.push(current);
    }
    shards
}

/// Plans every claimable job once. Returns how many shards it created.
pub async fn run_once(ctx: &BatchContext) -> StoreResult<usize> {
    let claimed = ctx
        .store
        .claim_jobs_to_plan(&ctx.replica, ctx.lease(), 4)
        .await?;
    let mut created = 0;
    for (job, token) in claimed {
        let items = ctx.store.unassigned_items(job.id).await?;
        let (kind, cuts) = if job.mode == Mode::Individual {
            let cuts = items
                .chunks(crate::individual::SHARD_ITEMS)
                .map(|c| c.iter().map(|i| i.position).collect())
                .collect();
            (ShardKind::Individual, cuts)
        } else {
            let overhead = super::jsonl::line_overhead(ctx, &job);
            let cuts = plan(
                &items,
                ctx.settings.batch.max_lines,
                ctx.settings.batch.max_file_bytes,
                overhead,
            );
            (ShardKind::Batch, cuts)
        };
        let attempt = 1 + ctx
            .store
            .list_shards(job.id)
            .await?
            .iter()
            .map(|s| s.attempt)
            .max()
            .unwrap_or(0);
        let now = Utc::now();
        let shards: Vec<NewShard> = cuts
            .into_iter()
            .map(|positions| NewShard {
                id: Uuid::now_v7(),
                kind,
                attempt,
                model: job.model.clone(),
                positions,
                next_poll_at: now,
                poll_interval_ms: ctx.settings.batch.poll_min_ms as i64,
            })
            .collect();
        if ctx.store.create_shards(job.id, token, &shards).await? {
            created += shards.len();
            for s in &shards {
                tracing::info!(job = %job.id, shard = %s.id, kind = %kind, items = s.positions.len(), attempt, "shard planned");
            }
        }
        ctx.store.release_job(job.id, token).await?;
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(sizes: &[i64]) -> Vec<PlanItem> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &b)| PlanItem {
                position: i as i64,
                image_bytes: b,
            })
            .collect()
    }

    #[test]
    fn cuts_by_line_count() {
        let cut = plan(&items(&[1; 7]), 3, 1_000_000, 10);
        assert_eq!(cut, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
    }

    #[test]
    fn cuts_by_bytes_without_losing_or_repeating_items() {
        let sizes: Vec<i64> = (0..100).map(|i| 100 + i * 7).collect();
        let cut = plan(&items(&sizes), 50_000, 5_000, 50);
        let flat: Vec<i64> = cut.iter().flatten().copied().collect();
        assert_eq!(flat, (0..100).collect::<Vec<_>>());
        for shard in &cut {
            let bytes: i64 = shard.iter().map(|&p| sizes[p as usize] + 50).sum();
            assert!(bytes <= 5_000, "shard of {bytes} bytes");
        }
        assert!(cut.len() > 1);
    }

    #[test]
    fn an_item_larger_than_the_cap_gets_a_shard_of_its_own() {
        let cut = plan(&items(&[10, 10_000, 10]), 100, 1_000, 0);
        assert_eq!(cut, vec![vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn nothing_to_plan_gives_no_shard() {
        assert!(plan(&[], 10, 10, 0).is_empty());
    }
}
