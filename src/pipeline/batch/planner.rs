//! Planning: cuts a job's unassigned pending items into shards that respect OpenAI's
//! limits (lines, bytes, one model per file, the model's enqueued-token limit when known)
//! and, after a batch of the job was refused for that limit, at most half as many items
//! as the smallest refused shard. The cut itself is pure; `run_once` claims jobs, cuts,
//! and stores the shards in one fenced transaction. Items sent back for another attempt
//! come through here again and get a shard of the next attempt number.

use chrono::Utc;
use tracing::Instrument;
use uuid::Uuid;

use super::tokens::{limit_for, TokenEstimator};
use crate::domain::{Job, Mode, Shard, ShardKind, ShardStatus};
use crate::pipeline::retry::TOKEN_LIMIT_EXCEEDED;
use crate::pipeline::{StepError, WorkerContext};
use crate::store::{JobLease, NewShard, PlanItem, StoreResult};

/// What one shard may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub max_lines: u64,
    pub max_bytes: u64,
    /// Bytes a JSONL line adds around the image reference: the prompt, the schema and the
    /// request envelope. Measured per job, so custom analyzers with long prompts count.
    pub overhead: u64,
    /// Estimated input tokens, when the model's enqueued-token limit is known.
    pub max_tokens: Option<u64>,
}

/// Cuts items, in order, into shards within `caps`; `tokens` estimates one item. An item
/// over a cap on its own gets a shard of its own.
pub fn plan(items: &[PlanItem], caps: &Caps, tokens: impl Fn(&PlanItem) -> u64) -> Vec<Vec<i64>> {
    let mut shards = Vec::new();
    let mut current = Vec::new();
    let (mut bytes, mut toks) = (0u64, 0u64);
    for item in items {
        let line = item.image_bytes.max(0) as u64 + caps.overhead;
        let t = if caps.max_tokens.is_some() {
            tokens(item)
        } else {
            0
        };
        let full = current.len() as u64 >= caps.max_lines
            || bytes + line > caps.max_bytes
            || caps.max_tokens.is_some_and(|max| toks + t > max);
        if full && !current.is_empty() {
            shards.push(std::mem::take(&mut current));
            bytes = 0;
            toks = 0;
        }
        current.push(item.position);
        bytes += line;
        toks += t;
    }
    if !current.is_empty() {
        shards.push(current);
    }
    shards
}

/// Half the item count of the job's smallest shard that OpenAI refused for the
/// enqueued-token limit (at least 1); `None` when none was.
pub fn refused_cap(shards: &[Shard]) -> Option<u64> {
    shards
        .iter()
        .filter(|s| {
            s.status == ShardStatus::Failed
                && s.error
                    .as_ref()
                    .is_some_and(|e| e.code == TOKEN_LIMIT_EXCEEDED)
        })
        .map(|s| (s.item_count.max(0) as u64 / 2).max(1))
        .min()
}

fn dims(item: &PlanItem) -> Option<(u32, u32)> {
    match (item.width, item.height) {
        (Some(w), Some(h)) if w > 0 && h > 0 => Some((w as u32, h as u32)),
        _ => None,
    }
}

/// Plans every claimable job once, each under a span naming the job. Returns how many
/// shards it created.
pub async fn run_once(ctx: &WorkerContext) -> Result<usize, StepError> {
    let claimed = ctx
        .store
        .claim_jobs_to_plan(&ctx.replica, ctx.lease(), 4)
        .await?;
    let mut created = 0;
    for (job, token) in claimed {
        let span = tracing::info_span!("step", step = "planning", job = %job.id);
        created += plan_job(ctx, job, token).instrument(span).await?;
    }
    Ok(created)
}

/// The kind of shard an unassigned item of `job` goes into: individual calls for
/// individual and flex jobs, except a flex item that fell back to batch.
pub fn shard_kind(job_mode: Mode, item: &PlanItem) -> ShardKind {
    match job_mode {
        Mode::Individual => ShardKind::Individual,
        Mode::Flex if item.run_mode != Some(Mode::Batch) => ShardKind::Individual,
        _ => ShardKind::Batch,
    }
}

/// Cuts one claimed job's unassigned items into shards, stores them fenced by the job's
/// lease `token`, and frees the job.
async fn plan_job(ctx: &WorkerContext, job: Job, token: JobLease) -> StoreResult<usize> {
    let items = ctx.store.unassigned_items(job.id).await?;
    let existing = ctx.store.list_shards(job.id).await?;
    let (calls, batched): (Vec<PlanItem>, Vec<PlanItem>) = items
        .into_iter()
        .partition(|i| shard_kind(job.mode, i) == ShardKind::Individual);
    let mut cuts: Vec<(ShardKind, Vec<i64>)> = calls
        .chunks(crate::pipeline::INDIVIDUAL_SHARD_ITEMS)
        .map(|c| {
            (
                ShardKind::Individual,
                c.iter().map(|i| i.position).collect(),
            )
        })
        .collect();
    if !batched.is_empty() {
        let mut max_lines = ctx.settings.batch.max_lines;
        if let Some(cap) = refused_cap(&existing) {
            max_lines = max_lines.min(cap);
        }
        let caps = Caps {
            max_lines,
            max_bytes: ctx.settings.batch.max_file_bytes,
            overhead: super::jsonl::line_overhead(ctx, &job),
            max_tokens: limit_for(ctx, &job.model),
        };
        let estimator = TokenEstimator::new(ctx, &job);
        let batch_cuts = plan(&batched, &caps, |i| estimator.item(dims(i)));
        cuts.extend(batch_cuts.into_iter().map(|c| (ShardKind::Batch, c)));
    }
    let attempt = 1 + existing.iter().map(|s| s.attempt).max().unwrap_or(0);
    let now = Utc::now();
    let shards: Vec<NewShard> = cuts
        .into_iter()
        .map(|(kind, positions)| NewShard {
            id: Uuid::now_v7(),
            kind,
            attempt,
            model: job.model.clone(),
            positions,
            next_poll_at: now,
            poll_interval_ms: ctx.settings.batch.poll_min_ms as i64,
        })
        .collect();
    let mut created = 0;
    if ctx.store.create_shards(&token, &shards).await? {
        created = shards.len();
        for s in &shards {
            tracing::info!(job = %job.id, shard = %s.id, kind = %s.kind, items = s.positions.len(), attempt, "shard planned");
        }
    }
    ctx.store.release_job(&token).await?;
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
                width: None,
                height: None,
                run_mode: None,
            })
            .collect()
    }

    fn caps(max_lines: u64, max_bytes: u64, overhead: u64) -> Caps {
        Caps {
            max_lines,
            max_bytes,
            overhead,
            max_tokens: None,
        }
    }

    fn plan(items: &[PlanItem], max_lines: u64, max_bytes: u64, overhead: u64) -> Vec<Vec<i64>> {
        super::plan(items, &caps(max_lines, max_bytes, overhead), |_| 0)
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
    fn a_shard_fills_up_to_its_caps_exactly() {
        // 4 lines of 100 + 10 bytes fill 440 bytes to the byte; a fifth starts a new shard.
        let cut = plan(&items(&[100; 5]), 100, 440, 10);
        assert_eq!(cut, vec![vec![0, 1, 2, 3], vec![4]]);
        // Tokens: 4 items of 250 fill 1,000.
        let caps = Caps {
            max_tokens: Some(1_000),
            ..caps(100, 1_000_000, 0)
        };
        let cut = super::plan(&items(&[1; 5]), &caps, |_| 250);
        assert_eq!(cut, vec![vec![0, 1, 2, 3], vec![4]]);
    }

    #[test]
    fn without_a_token_limit_tokens_are_not_estimated() {
        let cut = super::plan(&items(&[1; 3]), &caps(100, 1_000_000, 0), |_| {
            panic!("no limit, no estimate")
        });
        assert_eq!(cut, vec![vec![0, 1, 2]]);
    }

    #[test]
    fn only_positive_known_dimensions_are_dimensions() {
        let item = |width, height| PlanItem {
            position: 0,
            image_bytes: 1,
            width,
            height,
            run_mode: None,
        };
        assert_eq!(dims(&item(Some(640), Some(480))), Some((640, 480)));
        assert_eq!(dims(&item(Some(1), Some(1))), Some((1, 1)));
        for (w, h) in [
            (None, Some(480)),
            (Some(640), None),
            (Some(0), Some(480)),
            (Some(640), Some(0)),
            (Some(-1), Some(480)),
        ] {
            assert_eq!(dims(&item(w, h)), None, "{w:?}x{h:?}");
        }
    }

    #[test]
    fn nothing_to_plan_gives_no_shard() {
        assert!(plan(&[], 10, 10, 0).is_empty());
    }

    #[test]
    fn cuts_by_estimated_tokens() {
        let caps = Caps {
            max_tokens: Some(1_000),
            ..caps(100, 1_000_000, 0)
        };
        // Item i weighs 100 + i tokens.
        let cut = super::plan(&items(&[1; 20]), &caps, |i| 100 + i.position as u64);
        let flat: Vec<i64> = cut.iter().flatten().copied().collect();
        assert_eq!(flat, (0..20).collect::<Vec<_>>());
        for shard in &cut {
            let t: u64 = shard.iter().map(|&p| 100 + p as u64).sum();
            assert!(t <= 1_000, "shard of {t} tokens");
        }
        assert_eq!(cut[0].len(), 9, "100+…+108 = 936 fits, a tenth does not");
        let alone = super::plan(&items(&[1, 1]), &caps, |_| 5_000);
        assert_eq!(alone, vec![vec![0], vec![1]]);
    }

    #[test]
    fn a_refused_shard_halves_the_next_ones() {
        use crate::domain::{ItemError, Shard};
        let shard = |count: i64, status: ShardStatus, code: Option<&str>| Shard {
            id: Uuid::nil(),
            job_id: Uuid::nil(),
            kind: ShardKind::Batch,
            attempt: 1,
            model: "m".into(),
            status,
            item_count: count,
            input_file_id: None,
            openai_batch_id: None,
            output_file_id: None,
            error_file_id: None,
            batch_status: None,
            request_total: 0,
            request_completed: 0,
            request_failed: 0,
            error: code.map(|c| ItemError {
                code: c.into(),
                message: String::new(),
            }),
            poll_interval_ms: 0,
            next_poll_at: Utc::now(),
            lease_token: 0,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        assert_eq!(refused_cap(&[shard(10, ShardStatus::Done, None)]), None);
        assert_eq!(
            refused_cap(&[shard(10, ShardStatus::Failed, Some("invalid_json_line"))]),
            None
        );
        let refused = |n| shard(n, ShardStatus::Failed, Some(TOKEN_LIMIT_EXCEEDED));
        assert_eq!(refused_cap(&[refused(1000), refused(500)]), Some(250));
        assert_eq!(refused_cap(&[refused(1)]), Some(1));
    }

    #[test]
    fn flex_items_are_calls_until_they_fall_back_to_batch() {
        let item = |run_mode| PlanItem {
            position: 0,
            image_bytes: 1,
            width: None,
            height: None,
            run_mode,
        };
        assert_eq!(shard_kind(Mode::Flex, &item(None)), ShardKind::Individual);
        assert_eq!(
            shard_kind(Mode::Flex, &item(Some(Mode::Flex))),
            ShardKind::Individual
        );
        assert_eq!(
            shard_kind(Mode::Flex, &item(Some(Mode::Batch))),
            ShardKind::Batch
        );
        assert_eq!(
            shard_kind(Mode::Individual, &item(Some(Mode::Batch))),
            ShardKind::Individual
        );
        assert_eq!(shard_kind(Mode::Batch, &item(None)), ShardKind::Batch);
    }
}
