//! One behaviour suite for every `Store` backend: each test runs against SQLite (a fresh
//! file) and PostgreSQL (a fresh database, dropped afterwards).
//!
//! PostgreSQL comes from `DATABASE_URL`; without it the PostgreSQL half is skipped, except
//! under `CI=true`, where a missing database is a failure.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use super::{
    truncate_to_micros, DynStore, IdempotencyState, JobCursor, JobLease, LeasedShard, Leftover,
    Line, NewShard, PgStore, Settled, ShardLease, ShardPoll, StoreError, StoreResult, Verdict,
};
use crate::domain::{
    Analyzer, Detail, Event, Fetch, ItemError, ItemOutcome, ItemStatus, Job, JobStatus, Mode,
    NewItem, NewJob, ShardKind, ShardStatus, Usage,
};

const LEASE: Duration = Duration::from_secs(300);

/// The lease a claim of the shard with this token would have made.
fn lease(shard_id: Uuid, token: i64) -> ShardLease {
    ShardLease::new(shard_id, token)
}

fn job_lease(job_id: Uuid, token: i64) -> JobLease {
    JobLease::new(job_id, token)
}

/// Claims up to `limit` batch shards in one of `statuses` due by `due`, for `LEASE`.
async fn claim(
    s: &DynStore,
    statuses: &[ShardStatus],
    due: DateTime<Utc>,
    owner: &str,
    limit: i64,
) -> Vec<LeasedShard> {
    s.claim_shards(ShardKind::Batch, statuses, due, owner, LEASE, limit)
        .await
        .unwrap()
}

/// `claim_jobs_to_plan`, each job with its lease's token.
async fn claim_plan(
    s: &DynStore,
    owner: &str,
    lease_for: Duration,
    limit: i64,
) -> StoreResult<Vec<(Job, i64)>> {
    let claimed = s.claim_jobs_to_plan(owner, lease_for, limit).await?;
    Ok(claimed.into_iter().map(|(j, l)| (j, l.token())).collect())
}

// ---- runners ------------------------------------------------------------------------

async fn run_sqlite<F, Fut>(test: F)
where
    F: FnOnce(DynStore) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    // A folder that does not exist yet: connect must create it.
    let path = dir.path().join("nested").join("batchlens.db");
    let store = super::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open sqlite");
    store.ping().await.expect("ping");
    testkit::tally::record(
        testkit::tally::Backend::Sqlite,
        testkit::tally::Outcome::Ran,
    );
    test(store.clone()).await;
    store.close().await;
}

async fn run_postgres<F, Fut>(test: F)
where
    F: FnOnce(DynStore) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(database) = testkit::PgDatabase::create("bl_test").await else {
        return;
    };
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect_with(database.connect_options())
        .await
        .expect("connect to test database");
    let store = PgStore::from_pool(pool);
    store.migrate().await.expect("migrate");
    let store: DynStore = std::sync::Arc::new(store);
    store.ping().await.expect("ping");
    test(store.clone()).await;
    store.close().await;
}

macro_rules! conformance {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run_sqlite(super::$name).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::run_postgres(super::$name).await;
                }
            )+
        }
    };
}

conformance!(
    rate_budget_takes_refills_pauses_and_keys_accounts,
    jobs_create_get_list,
    create_job_rejects_duplicates,
    timestamps_round_trip,
    append_and_submit_open_job,
    submit_open_job_without_pending_items_is_terminal,
    list_items_and_posts,
    plan_claim_and_create_shards,
    planning_lease_expires_and_fences,
    claim_shards_respects_leases_and_due_time,
    concurrent_shard_claimers_are_disjoint,
    shard_steps_are_fenced,
    record_outcomes_moves_counters_and_costs,
    fail_shard_items_and_finish,
    transition_and_finish_job,
    events_in_order,
    idempotency_lifecycle,
    idempotency_concurrent_begin_starts_once,
    cost_totals_over_period,
    bulk_outcomes,
    individual_shards_round_robin_and_start,
    settle_outcomes_retries_within_attempts,
    settle_leftovers_as_asked,
    cancel_job_cancels_what_has_not_run,
    model_load_and_estimates,
    gauges_count_jobs_and_waiting_items,
    webhooks_are_owed_claimed_and_settled,
    openai_webhooks_make_shards_due_once,
    api_keys_created_listed_revoked,
    open_items_and_month_spend_per_tenant,
    version_moves_with_what_views_show,
    rejections_kept_on_the_job_row,
    shards_of_many_jobs_in_one_read,
    item_pages_skip_the_image,
);

// ---- fixtures -----------------------------------------------------------------------

pub(crate) fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_795_000_000 + secs, 0).unwrap()
}

pub(crate) fn new_job(
    tenant: &str,
    status: JobStatus,
    mode: Mode,
    created_at: DateTime<Utc>,
) -> NewJob {
    NewJob {
        id: Uuid::new_v4(),
        tenant: tenant.into(),
        name: Some("spring".into()),
        model: "gpt-4o-mini".into(),
        requested_mode: Mode::Auto,
        mode,
        mode_reason: "test".into(),
        detail: Detail::Low,
        analyzer: Analyzer {
            prompt: "Describe the garment.".into(),
            schema: json!({"type": "object", "properties": {"category": {"type": "string"}}}),
        },
        metadata: Some(json!({"campaign": "spring", "n": 1})),
        webhook_url: Some("https://example.com/hook".into()),
        fetch: Fetch::Inline,
        reuse: true,
        status,
        estimate_batch_pico_usd: Some(10),
        estimate_individual_pico_usd: Some(20),
        created_at,
    }
}

pub(crate) fn item(custom_id: &str, post_id: Option<&str>) -> NewItem {
    NewItem {
        custom_id: custom_id.into(),
        post_id: post_id.map(Into::into),
        image: format!("https://cdn.example.com/{custom_id}.jpg"),
        width: Some(640),
        height: Some(480),
        status: ItemStatus::Pending,
        error: None,
        note: None,
        content_sha256: None,
        reuse_key: None,
        reuse: crate::domain::ItemReuse::Sent,
    }
}

fn rejected(custom_id: &str) -> NewItem {
    NewItem {
        image: String::new(),
        width: None,
        height: None,
        status: ItemStatus::Rejected,
        error: Some(ItemError {
            code: "unsupported_image".into(),
            message: "not a PNG, JPEG, WEBP or GIF image".into(),
        }),
        ..item(custom_id, None)
    }
}

fn items(n: usize) -> Vec<NewItem> {
    (0..n).map(|i| item(&format!("item-{i}"), None)).collect()
}

pub(crate) fn new_shard(positions: Vec<i64>, next_poll_at: DateTime<Utc>) -> NewShard {
    NewShard {
        kind: ShardKind::Batch,
        id: Uuid::new_v4(),
        attempt: 1,
        model: "gpt-4o-mini".into(),
        positions,
        next_poll_at,
        poll_interval_ms: 30_000,
    }
}

fn usage(input: i64) -> Usage {
    Usage {
        input_tokens: input,
        cached_input_tokens: 1,
        output_tokens: 5,
        reasoning_tokens: 2,
    }
}

fn succeeded(custom_id: &str, cost: Option<i64>, mode: Mode) -> ItemOutcome {
    ItemOutcome {
        custom_id: custom_id.into(),
        status: ItemStatus::Succeeded,
        output: Some(json!({"category": "dress"})),
        error: None,
        usage: Some(usage(100)),
        cost_pico_usd: cost,
        individual_pico_usd: cost.map(|c| c * 2),
        run_mode: mode,
        resolved_model: Some("gpt-4o-mini-2024-07-18".into()),
    }
}

fn failed(custom_id: &str) -> ItemOutcome {
    ItemOutcome {
        custom_id: custom_id.into(),
        status: ItemStatus::Failed,
        output: None,
        error: Some(ItemError {
            code: "invalid_output".into(),
            message: "not JSON".into(),
        }),
        usage: None,
        cost_pico_usd: None,
        individual_pico_usd: None,
        run_mode: Mode::Batch,
        resolved_model: None,
    }
}

async fn job(s: &DynStore, id: Uuid) -> Job {
    s.get_job(None, id).await.unwrap().expect("job exists")
}

/// A queued batch job of `n` items planned into one shard, uploaded and submitted.
/// Returns (job id, shard id, shard lease token).
async fn submitted_shard(s: &DynStore, tenant: &str, n: usize) -> (Uuid, Uuid, i64) {
    let created = s
        .create_job(
            &new_job(tenant, JobStatus::Queued, Mode::Batch, Utc::now()),
            &items(n),
        )
        .await
        .unwrap();
    let (shard, token) = resubmit(s, created.id, 1).await;
    (created.id, shard, token)
}

// ---- jobs ---------------------------------------------------------------------------

async fn jobs_create_get_list(s: DynStore) {
    let mut a = Vec::new();
    // Two jobs share a created_at: the id breaks the tie.
    for (i, secs) in [0, 10, 10, 20, 30].into_iter().enumerate() {
        let status = if i == 3 {
            JobStatus::Open
        } else {
            JobStatus::Queued
        };
        let j = s
            .create_job(
                &new_job("acme", status, Mode::Batch, at(secs)),
                &[
                    NewItem {
                        note: Some("mime_type \"image/gif\" disagrees".into()),
                        ..item("a", Some("p1"))
                    },
                    item("b", None),
                    rejected("c"),
                ],
            )
            .await
            .unwrap();
        a.push(j);
    }
    let other = s
        .create_job(
            &new_job("globex", JobStatus::Queued, Mode::Batch, at(40)),
            &[],
        )
        .await
        .unwrap();

    let j = &a[0];
    assert_eq!(j.counts.total, 3);
    assert_eq!(j.counts.pending, 2);
    assert_eq!(j.counts.rejected, 1);
    assert_eq!(j.counts.terminal(), 1);
    assert_eq!(j.cost, Default::default());
    assert_eq!(j.status, JobStatus::Queued);
    assert_eq!(j.metadata, Some(json!({"campaign": "spring", "n": 1})));
    assert_eq!(j.fetch, Fetch::Inline);
    assert_eq!(j.analyzer.prompt, "Describe the garment.");
    assert_eq!(j.completed_at, None);

    assert_eq!(
        s.get_job(Some("acme"), j.id).await.unwrap().as_ref(),
        Some(j)
    );
    assert_eq!(s.get_job(None, j.id).await.unwrap().as_ref(), Some(j));
    assert_eq!(s.get_job(Some("globex"), j.id).await.unwrap(), None);
    assert_eq!(s.get_job(None, Uuid::new_v4()).await.unwrap(), None);

    // Newest first, ties by id descending, pages strictly after the cursor.
    let mut expected: Vec<&Job> = a.iter().collect();
    expected.sort_by_key(|j| std::cmp::Reverse((j.created_at, j.id)));
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.list_jobs("acme", None, cursor, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        let last = page.last().unwrap();
        cursor = Some(JobCursor {
            created_at: last.created_at,
            id: last.id,
        });
        seen.extend(page);
    }
    assert_eq!(seen.iter().collect::<Vec<_>>(), expected);

    let open = s
        .list_jobs("acme", Some(JobStatus::Open), None, 10)
        .await
        .unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].id, a[3].id);
    let globex = s.list_jobs("globex", None, None, 10).await.unwrap();
    assert_eq!(globex, vec![other]);
    assert!(s
        .list_jobs("nobody", None, None, 10)
        .await
        .unwrap()
        .is_empty());

    // Items kept in order with their positions; a rejected item is finished.
    let stored = s.list_items(j.id, None, None, 10).await.unwrap();
    assert_eq!(
        stored
            .iter()
            .map(|i| (i.position, i.custom_id.as_str()))
            .collect::<Vec<_>>(),
        vec![(0, "a"), (1, "b"), (2, "c")]
    );
    assert_eq!(stored[0].post_id.as_deref(), Some("p1"));
    assert_eq!(
        stored[0].image, "",
        "a page of results does not read the image"
    );
    assert_eq!((stored[0].width, stored[0].height), (Some(640), Some(480)));
    assert_eq!(stored[0].attempts, 0);
    assert_eq!(stored[0].finished_at, None);
    assert_eq!(
        stored[0].note.as_deref(),
        Some("mime_type \"image/gif\" disagrees")
    );
    assert_eq!(stored[1].note, None);
    let one = s.get_item(j.id, "a").await.unwrap().unwrap();
    assert_eq!(one.note, stored[0].note);
    assert_eq!(stored[2].status, ItemStatus::Rejected);
    assert_eq!(stored[2].error.as_ref().unwrap().code, "unsupported_image");
    assert!(stored[2].finished_at.is_some());
}

async fn create_job_rejects_duplicates(s: DynStore) {
    let nj = new_job("acme", JobStatus::Queued, Mode::Batch, at(0));
    let err = s
        .create_job(&nj, &[item("x", None), item("y", None), item("x", None)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateCustomId(ref id) if id == "x"),
        "{err:?}"
    );
    assert_eq!(
        s.get_job(None, nj.id).await.unwrap(),
        None,
        "nothing written"
    );

    s.create_job(&nj, &[item("x", None)]).await.unwrap();
    let err = s.create_job(&nj, &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(job(&s, nj.id).await.counts.total, 1);
}

async fn timestamps_round_trip(s: DynStore) {
    let precise = Utc.timestamp_opt(1_795_000_000, 123_456_789).unwrap();
    let created = s
        .create_job(
            &new_job("acme", JobStatus::Queued, Mode::Batch, precise),
            &[item("a", None)],
        )
        .await
        .unwrap();
    assert_eq!(created.created_at, truncate_to_micros(precise));
    assert_eq!(created.created_at.timestamp_subsec_nanos(), 123_456_000);
    assert_eq!(job(&s, created.id).await, created);

    let (token, shard_id) = {
        let (_, t) = claim_plan(&s, "p", LEASE, 1).await.unwrap().remove(0);
        let shard = new_shard(vec![0], precise);
        assert!(s
            .create_shards(&job_lease(created.id, t), std::slice::from_ref(&shard))
            .await
            .unwrap());
        (t, shard.id)
    };
    let shard = s.get_shard(shard_id).await.unwrap().unwrap();
    assert_eq!(shard.next_poll_at, truncate_to_micros(precise));
    assert_eq!(
        s.list_shards(created.id).await.unwrap(),
        vec![shard.clone()]
    );
    s.release_job(&job_lease(created.id, token)).await.unwrap();

    // A cursor built from a value read back finds the row strictly after it.
    let page = s
        .list_jobs(
            "acme",
            None,
            Some(JobCursor {
                created_at: created.created_at,
                id: created.id,
            }),
            10,
        )
        .await
        .unwrap();
    assert!(page.is_empty());
    let page = s
        .list_jobs(
            "acme",
            None,
            Some(JobCursor {
                created_at: precise + chrono::Duration::microseconds(1),
                id: created.id,
            }),
            10,
        )
        .await
        .unwrap();
    // The same row, but for the version its new shard moved.
    assert!(page[0].version > created.version);
    assert_eq!(
        page,
        vec![Job {
            version: page[0].version,
            ..created
        }]
    );
}

async fn append_and_submit_open_job(s: DynStore) {
    let open = s
        .create_job(
            &new_job("acme", JobStatus::Open, Mode::Auto, at(0)),
            &[item("a", None)],
        )
        .await
        .unwrap();
    assert_eq!(open.status, JobStatus::Open);

    let after = s
        .append_items("acme", open.id, &[item("b", Some("p")), rejected("c")])
        .await
        .unwrap();
    assert_eq!(after.counts.total, 3);
    assert_eq!(after.counts.pending, 2);
    assert_eq!(after.counts.rejected, 1);
    let positions: Vec<_> = s
        .list_items(open.id, None, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.position, i.custom_id))
        .collect();
    assert_eq!(
        positions,
        vec![(0, "a".into()), (1, "b".into()), (2, "c".into())]
    );

    let err = s
        .append_items("acme", open.id, &[item("d", None), item("a", None)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateCustomId(ref id) if id == "a"),
        "{err:?}"
    );
    let err = s
        .append_items("acme", open.id, &[item("d", None), item("d", None)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateCustomId(ref id) if id == "d"),
        "{err:?}"
    );
    assert_eq!(
        job(&s, open.id).await.counts.total,
        3,
        "failed appends wrote nothing"
    );
    assert!(matches!(
        s.append_items("globex", open.id, &[item("e", None)]).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.append_items("acme", Uuid::new_v4(), &[item("e", None)])
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.submit_open_job("globex", open.id, Mode::Batch, "x", None, None)
            .await,
        Err(StoreError::NotFound)
    ));

    let submitted = s
        .submit_open_job(
            "acme",
            open.id,
            Mode::Batch,
            "large job",
            Some(111),
            Some(222),
        )
        .await
        .unwrap();
    assert_eq!(submitted.status, JobStatus::Queued);
    assert_eq!(submitted.mode, Mode::Batch);
    assert_eq!(submitted.requested_mode, Mode::Auto);
    assert_eq!(submitted.mode_reason, "large job");
    assert_eq!(submitted.estimate_batch_pico_usd, Some(111));
    assert_eq!(submitted.estimate_individual_pico_usd, Some(222));
    assert_eq!(submitted.counts, after.counts);
    assert_eq!(job(&s, open.id).await, submitted);
    let events = s.events_after(open.id, 0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "status");
    assert_eq!(events[0].data, json!({"status": "queued"}));

    assert!(matches!(
        s.append_items("acme", open.id, &[item("z", None)]).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.submit_open_job("acme", open.id, Mode::Batch, "again", None, None)
            .await,
        Err(StoreError::Conflict(_))
    ));
}

async fn submit_open_job_without_pending_items_is_terminal(s: DynStore) {
    let open = s
        .create_job(
            &new_job("acme", JobStatus::Open, Mode::Auto, at(0)),
            &[rejected("a")],
        )
        .await
        .unwrap();
    let done = s
        .submit_open_job("acme", open.id, Mode::Individual, "small", None, None)
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Failed);
    assert!(done.completed_at.is_some());
    let events = s.events_after(open.id, 0, 10).await.unwrap();
    assert_eq!(events.last().unwrap().data, json!({"status": "failed"}));
}

async fn list_items_and_posts(s: DynStore) {
    let posts = [
        Some("b"),
        Some("a"),
        None,
        Some("a"),
        Some("b"),
        None,
        Some("B"),
    ];
    let list: Vec<NewItem> = posts
        .iter()
        .enumerate()
        .map(|(i, p)| item(&format!("i{i}"), *p))
        .collect();
    let mut list = list;
    list.push(rejected("r"));
    let j = s
        .create_job(
            &new_job("acme", JobStatus::Queued, Mode::Batch, at(0)),
            &list,
        )
        .await
        .unwrap();

    let page = s.list_items(j.id, None, Some(2), 3).await.unwrap();
    assert_eq!(
        page.iter().map(|i| i.position).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    let rejected_only = s
        .list_items(j.id, Some(ItemStatus::Rejected), None, 10)
        .await
        .unwrap();
    assert_eq!(rejected_only.len(), 1);
    assert_eq!(rejected_only[0].position, 7);
    assert!(s
        .list_items(j.id, Some(ItemStatus::Succeeded), None, 10)
        .await
        .unwrap()
        .is_empty());

    // Byte order of post_id ("B" < "a" < "b"), NULL last, then position.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s.list_items_by_post(j.id, after.clone(), 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        let last = page.last().unwrap();
        after = Some((last.post_id.clone(), last.position));
        seen.extend(page.into_iter().map(|i| (i.post_id, i.position)));
    }
    let p = |s: &str| Some(s.to_string());
    assert_eq!(
        seen,
        vec![
            (p("B"), 6),
            (p("a"), 1),
            (p("a"), 3),
            (p("b"), 0),
            (p("b"), 4),
            (None, 2),
            (None, 5),
            (None, 7),
        ]
    );

    // One item by custom_id; none for an unknown id or another job's.
    let one = s.get_item(j.id, "i4").await.unwrap().unwrap();
    assert_eq!((one.position, one.post_id.as_deref()), (4, Some("b")));
    assert_eq!(
        s.get_item(j.id, "r").await.unwrap().unwrap().status,
        ItemStatus::Rejected
    );
    assert!(s.get_item(j.id, "i99").await.unwrap().is_none());
    assert!(s.get_item(Uuid::now_v7(), "i4").await.unwrap().is_none());
}

// ---- planning -----------------------------------------------------------------------

async fn plan_claim_and_create_shards(s: DynStore) {
    let batch = s
        .create_job(
            &new_job("acme", JobStatus::Queued, Mode::Batch, at(0)),
            &[
                item("a", None),
                item("bb", None),
                rejected("r"),
                item("c", None),
                item("d", None),
            ],
        )
        .await
        .unwrap();
    // Not plannable: open, terminal, no pending item.
    for (status, mode, list) in [
        (JobStatus::Open, Mode::Batch, vec![item("a", None)]),
        (JobStatus::Completed, Mode::Batch, vec![item("a", None)]),
        (JobStatus::Queued, Mode::Batch, vec![rejected("a")]),
    ] {
        s.create_job(&new_job("acme", status, mode, at(1)), &list)
            .await
            .unwrap();
    }

    let claimed = claim_plan(&s, "planner-1", LEASE, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let (claimed_job, token) = claimed.into_iter().next().unwrap();
    assert_eq!(claimed_job.id, batch.id);
    assert!(token > 0);
    assert!(
        claim_plan(&s, "planner-2", LEASE, 10)
            .await
            .unwrap()
            .is_empty(),
        "a leased job is not claimed twice"
    );

    let plan = s.unassigned_items(batch.id).await.unwrap();
    assert_eq!(
        plan.iter().map(|p| p.position).collect::<Vec<_>>(),
        vec![0, 1, 3, 4]
    );
    assert_eq!(
        plan[1].image_bytes,
        "https://cdn.example.com/bb.jpg".len() as i64
    );

    let s1 = new_shard(vec![0, 1], at(100));
    let s2 = NewShard {
        kind: ShardKind::Batch,
        attempt: 2,
        ..new_shard(vec![3, 4], at(100))
    };
    assert!(!s
        .create_shards(&job_lease(batch.id, token + 1), &[s1.clone(), s2.clone()])
        .await
        .unwrap());
    assert!(
        s.list_shards(batch.id).await.unwrap().is_empty(),
        "stale token wrote nothing"
    );
    assert_eq!(s.unassigned_items(batch.id).await.unwrap().len(), 4);
    assert!(matches!(
        s.create_shards(&job_lease(Uuid::new_v4(), token), &[])
            .await,
        Err(StoreError::NotFound)
    ));

    assert!(s
        .create_shards(&job_lease(batch.id, token), &[s1.clone(), s2.clone()])
        .await
        .unwrap());
    assert!(s.unassigned_items(batch.id).await.unwrap().is_empty());
    let shards = s.list_shards(batch.id).await.unwrap();
    assert_eq!(
        shards.iter().map(|x| x.id).collect::<Vec<_>>(),
        vec![s1.id, s2.id]
    );
    let first = &shards[0];
    assert_eq!(first.status, ShardStatus::Planned);
    assert_eq!(first.item_count, 2);
    assert_eq!(first.attempt, 1);
    assert_eq!(first.model, "gpt-4o-mini");
    assert_eq!(first.poll_interval_ms, 30_000);
    assert_eq!(first.lease_token, 0);
    assert_eq!(first.openai_batch_id, None);
    let in_s2: Vec<_> = s
        .shard_items(s2.id, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.position, i.shard_id))
        .collect();
    assert_eq!(in_s2, vec![(3, Some(s2.id)), (4, Some(s2.id))]);
    let page = s.shard_items(s2.id, Some(3), 10).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].position, 4);
    // The batch file's reads: the same range, each line read in place from its row.
    let lines = s.shard_lines(s2.id, None, 10).await.unwrap();
    let lines: Vec<_> = lines.lines().map(Result::unwrap).collect();
    let c = "https://cdn.example.com/c.jpg";
    let d = "https://cdn.example.com/d.jpg";
    assert_eq!(
        lines,
        vec![
            Line {
                position: 3,
                custom_id: "c",
                image: c
            },
            Line {
                position: 4,
                custom_id: "d",
                image: d
            },
        ]
    );
    let page = s.shard_lines(s2.id, Some(3), 10).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page.line(0).unwrap().custom_id, "d");
    assert_eq!(s.shard_lines(s2.id, Some(4), 10).await.unwrap().len(), 0);

    // Released, but nothing is left to plan.
    s.release_job(&job_lease(batch.id, token)).await.unwrap();
    assert!(claim_plan(&s, "planner-2", LEASE, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn planning_lease_expires_and_fences(s: DynStore) {
    let j = s
        .create_job(
            &new_job("acme", JobStatus::Running, Mode::Batch, at(0)),
            &[item("a", None)],
        )
        .await
        .unwrap();
    let (_, t1) = claim_plan(&s, "p1", Duration::ZERO, 10)
        .await
        .unwrap()
        .remove(0);
    // The zero-length lease is already over: another planner takes the job.
    let (_, t2) = claim_plan(&s, "p2", LEASE, 10).await.unwrap().remove(0);
    assert!(t2 > t1);
    assert!(!s
        .create_shards(&job_lease(j.id, t1), &[new_shard(vec![0], at(0))])
        .await
        .unwrap());
    // A stale release leaves the new lease in place.
    s.release_job(&job_lease(j.id, t1)).await.unwrap();
    assert!(claim_plan(&s, "p3", LEASE, 10).await.unwrap().is_empty());
    s.release_job(&job_lease(j.id, t2)).await.unwrap();
    let (_, t3) = claim_plan(&s, "p3", LEASE, 10).await.unwrap().remove(0);
    assert!(t3 > t2);
    assert!(s
        .create_shards(&job_lease(j.id, t3), &[new_shard(vec![0], at(0))])
        .await
        .unwrap());
}

// ---- shards -------------------------------------------------------------------------

async fn claim_shards_respects_leases_and_due_time(s: DynStore) {
    let j = s
        .create_job(
            &new_job("acme", JobStatus::Queued, Mode::Batch, at(0)),
            &items(3),
        )
        .await
        .unwrap();
    let (_, t) = claim_plan(&s, "p", LEASE, 1).await.unwrap().remove(0);
    let due_early = new_shard(vec![0], at(10));
    let due_late = new_shard(vec![1], at(20));
    let future = new_shard(vec![2], at(1000));
    assert!(s
        .create_shards(
            &job_lease(j.id, t),
            &[future.clone(), due_late.clone(), due_early.clone()]
        )
        .await
        .unwrap());

    let now = at(100);
    assert!(claim(&s, &[ShardStatus::Submitted], now, "w", 10)
        .await
        .is_empty());
    let first = claim(&s, &[ShardStatus::Planned], now, "w1", 1).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].id, due_early.id, "oldest next_poll_at first");
    assert_eq!(first[0].lease_token, 1);
    let rest = claim(
        &s,
        &[ShardStatus::Planned, ShardStatus::Creating],
        now,
        "w2",
        10,
    )
    .await;
    assert_eq!(
        rest.iter().map(|x| x.id).collect::<Vec<_>>(),
        vec![due_late.id],
        "leased and not-yet-due shards are skipped"
    );
    assert!(claim(&s, &[ShardStatus::Planned], now, "w3", 10)
        .await
        .is_empty());

    // Renewal keeps the lease; a zero-length one lets the next claimer in.
    assert!(s.renew_shard(&lease(due_early.id, 1), LEASE).await.unwrap());
    assert!(!s.renew_shard(&lease(due_early.id, 7), LEASE).await.unwrap());
    assert!(s
        .renew_shard(&lease(due_early.id, 1), Duration::ZERO)
        .await
        .unwrap());
    let again = claim(&s, &[ShardStatus::Planned], now, "w4", 10).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, due_early.id);
    assert_eq!(again[0].lease_token, 2);
    assert!(
        !s.renew_shard(&lease(due_early.id, 1), LEASE).await.unwrap(),
        "old token is fenced"
    );

    // A stale release changes nothing; a current one frees the shard.
    s.release_shard(&lease(due_early.id, 1)).await.unwrap();
    assert!(claim(&s, &[ShardStatus::Planned], now, "w5", 10)
        .await
        .is_empty());
    s.release_shard(&lease(due_early.id, 2)).await.unwrap();
    let freed = claim(&s, &[ShardStatus::Planned], now, "w5", 10).await;
    assert_eq!(freed.len(), 1);
    assert_eq!(freed[0].lease_token, 3);

    let later = claim(&s, &[ShardStatus::Planned], at(5000), "w6", 10).await;
    assert_eq!(
        later.iter().map(|x| x.id).collect::<Vec<_>>(),
        vec![future.id]
    );
}

async fn concurrent_shard_claimers_are_disjoint(s: DynStore) {
    const SHARDS: usize = 24;
    let j = s
        .create_job(
            &new_job("acme", JobStatus::Queued, Mode::Batch, at(0)),
            &items(SHARDS),
        )
        .await
        .unwrap();
    let (_, t) = claim_plan(&s, "p", LEASE, 1).await.unwrap().remove(0);
    let shards: Vec<NewShard> = (0..SHARDS as i64)
        .map(|i| new_shard(vec![i], at(i)))
        .collect();
    assert!(s.create_shards(&job_lease(j.id, t), &shards).await.unwrap());

    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(4));
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let (s, barrier) = (s.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                claim(
                    &s,
                    &[ShardStatus::Planned],
                    at(10_000),
                    &format!("worker-{w}"),
                    (SHARDS / 4) as i64,
                )
                .await
            })
        })
        .collect();
    let mut all = HashSet::new();
    let mut total = 0;
    for task in tasks {
        let got = task.await.unwrap();
        assert!(got.len() <= SHARDS / 4);
        total += got.len();
        for shard in got {
            assert!(all.insert(shard.id), "shard {} claimed twice", shard.id);
        }
    }
    assert_eq!(total, SHARDS, "every shard claimed exactly once");
}

async fn shard_steps_are_fenced(s: DynStore) {
    let j = s
        .create_job(
            &new_job("acme", JobStatus::Queued, Mode::Batch, at(0)),
            &[item("a", None), item("b", None), item("c", None)],
        )
        .await
        .unwrap();
    let (_, t) = claim_plan(&s, "p", LEASE, 1).await.unwrap().remove(0);
    let shard = new_shard(vec![0, 1], at(0));
    assert!(s
        .create_shards(&job_lease(j.id, t), std::slice::from_ref(&shard))
        .await
        .unwrap());

    let old = s
        .claim_shards(
            ShardKind::Batch,
            &[ShardStatus::Planned],
            at(10),
            "w1",
            Duration::ZERO,
            1,
        )
        .await
        .unwrap()[0]
        .lease_token;
    let tok = claim(&s, &[ShardStatus::Planned], at(10), "w2", 1).await[0].lease_token;
    assert!(tok > old);
    let before = s.get_shard(shard.id).await.unwrap().unwrap();
    assert_eq!(before.lease_token, tok);

    // Every step with the stale token changes nothing.
    assert!(!s
        .shard_uploaded(&lease(shard.id, old), "file-old")
        .await
        .unwrap());
    assert!(!s
        .shard_submitted(&lease(shard.id, old), "batch-old", at(50))
        .await
        .unwrap());
    let poll = ShardPoll {
        batch_status: "in_progress".into(),
        request_total: 2,
        request_completed: 1,
        request_failed: 0,
        output_file_id: Some("file-out".into()),
        error_file_id: None,
        next_poll_at: at(60),
        poll_interval_ms: 60_000,
    };
    assert!(!s.shard_polled(&lease(shard.id, old), &poll).await.unwrap());
    assert!(!s
        .set_shard_status(&lease(shard.id, old), ShardStatus::Failed, None)
        .await
        .unwrap());
    assert_eq!(s.get_shard(shard.id).await.unwrap().unwrap(), before);

    // Submitting needs the upload first.
    assert!(!s
        .shard_submitted(&lease(shard.id, tok), "batch_1", at(50))
        .await
        .unwrap());
    assert!(s
        .shard_uploaded(&lease(shard.id, tok), "file-in")
        .await
        .unwrap());
    assert!(!s
        .shard_uploaded(&lease(shard.id, tok), "file-again")
        .await
        .unwrap());
    let uploaded = s.get_shard(shard.id).await.unwrap().unwrap();
    assert_eq!(uploaded.status, ShardStatus::Creating);
    assert_eq!(uploaded.input_file_id.as_deref(), Some("file-in"));

    assert!(s
        .shard_submitted(&lease(shard.id, tok), "batch_1", at(50))
        .await
        .unwrap());
    let submitted = s.get_shard(shard.id).await.unwrap().unwrap();
    assert_eq!(submitted.status, ShardStatus::Submitted);
    assert_eq!(submitted.openai_batch_id.as_deref(), Some("batch_1"));
    assert_eq!(submitted.next_poll_at, at(50));
    let items = s.shard_items(shard.id, None, 10).await.unwrap();
    assert!(items
        .iter()
        .all(|i| i.status == ItemStatus::Submitted && i.attempts == 1));
    let unsharded = s.list_items(j.id, None, Some(1), 10).await.unwrap();
    assert_eq!(unsharded[0].status, ItemStatus::Pending);
    let running = job(&s, j.id).await;
    assert_eq!(running.status, JobStatus::Running);
    assert_eq!((running.counts.pending, running.counts.submitted), (1, 2));
    let events = s.events_after(j.id, 0, 10).await.unwrap();
    assert!(events
        .iter()
        .any(|e| e.kind == "status" && e.data == json!({"status": "running"})));
    assert!(!s
        .shard_submitted(&lease(shard.id, tok), "batch_2", at(50))
        .await
        .unwrap());
    assert_eq!(job(&s, j.id).await.counts, running.counts, "no double move");

    assert!(s.shard_polled(&lease(shard.id, tok), &poll).await.unwrap());
    let polled = s.get_shard(shard.id).await.unwrap().unwrap();
    assert_eq!(polled.batch_status.as_deref(), Some("in_progress"));
    assert_eq!(
        (
            polled.request_total,
            polled.request_completed,
            polled.request_failed
        ),
        (2, 1, 0)
    );
    assert_eq!(polled.output_file_id.as_deref(), Some("file-out"));
    assert_eq!(polled.next_poll_at, at(60));
    assert_eq!(polled.poll_interval_ms, 60_000);
    // The poll moved the counts: the job's progress event carries the line done.
    let progress = |events: &[Event]| {
        events
            .iter()
            .filter(|e| e.kind == "progress")
            .map(|e| e.data["processing"].clone())
            .collect::<Vec<_>>()
    };
    let events = s.events_after(j.id, 0, 100).await.unwrap();
    assert_eq!(progress(&events).last(), Some(&json!(1)), "{events:?}");
    let before = progress(&events).len();
    // A later poll that reports no file keeps the one already known.
    let quiet = ShardPoll {
        output_file_id: None,
        error_file_id: Some("file-err".into()),
        batch_status: "completed".into(),
        ..poll.clone()
    };
    assert!(s.shard_polled(&lease(shard.id, tok), &quiet).await.unwrap());
    let polled = s.get_shard(shard.id).await.unwrap().unwrap();
    assert_eq!(polled.output_file_id.as_deref(), Some("file-out"));
    assert_eq!(polled.error_file_id.as_deref(), Some("file-err"));
    let events = s.events_after(j.id, 0, 100).await.unwrap();
    assert_eq!(
        progress(&events).len(),
        before,
        "same counts, no progress event"
    );

    let error = ItemError {
        code: "batch_failed".into(),
        message: "OpenAI refused the batch".into(),
    };
    assert!(s
        .set_shard_status(&lease(shard.id, tok), ShardStatus::Failed, Some(&error))
        .await
        .unwrap());
    let failed = s.get_shard(shard.id).await.unwrap().unwrap();
    assert_eq!(failed.status, ShardStatus::Failed);
    assert_eq!(failed.error, Some(error));
    assert_eq!(
        job(&s, j.id).await.counts,
        running.counts,
        "no item changes"
    );
}

async fn record_outcomes_moves_counters_and_costs(s: DynStore) {
    let (job_id, shard_id, tok) = submitted_shard(&s, "acme", 5).await;
    let before_events = s.events_after(job_id, 0, 100).await.unwrap().len();

    let outcomes = vec![
        succeeded("item-0", Some(100), Mode::Batch),
        failed("item-1"),
        succeeded("item-2", None, Mode::Batch),
        succeeded("item-3", Some(7), Mode::Individual),
        succeeded("not-in-shard", Some(1_000_000), Mode::Batch),
    ];
    assert_eq!(
        s.record_shard_outcomes(&lease(shard_id, tok + 1), &outcomes)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        job(&s, job_id).await.counts.submitted,
        5,
        "stale token changes nothing"
    );

    assert_eq!(
        s.record_shard_outcomes(&lease(shard_id, tok), &outcomes)
            .await
            .unwrap(),
        4
    );
    let j = job(&s, job_id).await;
    assert_eq!(j.counts.total, 5);
    assert_eq!(j.counts.submitted, 1);
    assert_eq!(j.counts.succeeded, 3);
    assert_eq!(j.counts.failed, 1);
    assert_eq!(j.cost.input_tokens, 300);
    assert_eq!(j.cost.cached_input_tokens, 3);
    assert_eq!(j.cost.output_tokens, 15);
    assert_eq!(j.cost.actual_pico_usd, 107);
    assert_eq!(j.cost.individual_pico_usd, 214);
    assert_eq!(j.cost.unpriced_items, 1, "item-2 has usage but no price");
    assert_eq!((j.cost.batch_items, j.cost.batch_pico_usd), (3, 100));
    assert_eq!(
        (j.cost.individual_items, j.cost.individual_mode_pico_usd),
        (1, 7)
    );

    // What estimates learn from: succeeded items only, the latest first, with their size.
    let billed = s.billed_usage(job_id, 10).await.unwrap();
    assert_eq!(billed.len(), 3, "{billed:?}");
    assert!(billed
        .iter()
        .all(|b| b.input_tokens == 100 && b.output_tokens == 5 && b.dims == Some((640, 480))));
    assert_eq!(s.billed_usage(job_id, 2).await.unwrap().len(), 2);
    assert!(s.billed_usage(Uuid::new_v4(), 10).await.unwrap().is_empty());

    let items = s.list_items(job_id, None, None, 10).await.unwrap();
    let ok = &items[0];
    assert_eq!(ok.status, ItemStatus::Succeeded);
    assert_eq!(ok.output, Some(json!({"category": "dress"})));
    assert_eq!(ok.usage, Some(usage(100)));
    assert_eq!(ok.cost_pico_usd, Some(100));
    assert_eq!(ok.individual_pico_usd, Some(200));
    assert_eq!(ok.run_mode, Some(Mode::Batch));
    assert_eq!(ok.resolved_model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    assert!(ok.finished_at.is_some());
    assert_eq!(ok.error, None);
    let bad = &items[1];
    assert_eq!(bad.status, ItemStatus::Failed);
    assert_eq!(bad.error.as_ref().unwrap().code, "invalid_output");
    assert_eq!(
        (bad.usage, bad.cost_pico_usd, bad.output.clone()),
        (None, None, None)
    );
    assert_eq!(items[2].cost_pico_usd, None);
    assert_eq!(items[4].status, ItemStatus::Submitted);

    let events = s.events_after(job_id, 0, 100).await.unwrap();
    assert_eq!(events.len(), before_events + 1);
    let progress = events.last().unwrap();
    assert_eq!(progress.kind, "progress");
    assert_eq!(
        progress.data,
        json!({"total": 5, "pending": 0, "submitted": 1, "succeeded": 3, "failed": 1,
               "rejected": 0, "cancelled": 0, "reused": 0, "processing": 0, "percent": 80.0})
    );

    // The same outcomes again change nothing, not even updated_at or the event log.
    assert_eq!(
        s.record_shard_outcomes(&lease(shard_id, tok), &outcomes)
            .await
            .unwrap(),
        0
    );
    assert_eq!(job(&s, job_id).await, j);
    assert_eq!(
        s.events_after(job_id, 0, 100).await.unwrap().len(),
        events.len()
    );
    assert_eq!(
        s.record_shard_outcomes(&lease(shard_id, tok), &[])
            .await
            .unwrap(),
        0
    );

    let wrong = ItemOutcome {
        status: ItemStatus::Pending,
        ..failed("item-4")
    };
    assert!(s
        .record_shard_outcomes(&lease(shard_id, tok), &[wrong])
        .await
        .is_err());
    assert_eq!(job(&s, job_id).await, j);

    assert_eq!(
        s.record_shard_outcomes(&lease(shard_id, tok), &[failed("item-4")])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.finish_job_if_done(job_id).await.unwrap(),
        Some(JobStatus::Completed)
    );
}

async fn fail_shard_items_and_finish(s: DynStore) {
    // Two shards: one submitted, one still planned (its items pending).
    let j = s
        .create_job(
            &new_job("acme", JobStatus::Queued, Mode::Batch, at(0)),
            &[
                item("a", None),
                item("b", None),
                item("c", None),
                rejected("r"),
            ],
        )
        .await
        .unwrap();
    let (_, t) = claim_plan(&s, "p", LEASE, 1).await.unwrap().remove(0);
    let sent = new_shard(vec![0, 1], at(0));
    let planned = new_shard(vec![2], at(5));
    assert!(s
        .create_shards(&job_lease(j.id, t), &[sent.clone(), planned.clone()])
        .await
        .unwrap());
    let claimed = claim(&s, &[ShardStatus::Planned], at(10), "w", 10).await;
    let tok = |id: Uuid| claimed.iter().find(|x| x.id == id).unwrap().lease_token;
    assert!(s
        .shard_uploaded(&lease(sent.id, tok(sent.id)), "f")
        .await
        .unwrap());
    assert!(s
        .shard_submitted(&lease(sent.id, tok(sent.id)), "b", at(20))
        .await
        .unwrap());
    assert_eq!(
        s.record_shard_outcomes(
            &lease(sent.id, tok(sent.id)),
            &[succeeded("a", Some(5), Mode::Batch)]
        )
        .await
        .unwrap(),
        1
    );

    let error = ItemError {
        code: "batch_expired".into(),
        message: "the batch expired".into(),
    };
    assert_eq!(
        s.fail_shard_items(&lease(sent.id, tok(sent.id) + 1), &error)
            .await
            .unwrap(),
        0,
        "stale token"
    );
    assert_eq!(
        s.fail_shard_items(&lease(sent.id, tok(sent.id)), &error)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.fail_shard_items(&lease(sent.id, tok(sent.id)), &error)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.finish_job_if_done(j.id).await.unwrap(),
        None,
        "c is still pending"
    );
    assert_eq!(
        s.fail_shard_items(&lease(planned.id, tok(planned.id)), &error)
            .await
            .unwrap(),
        1
    );
    let done = job(&s, j.id).await;
    assert_eq!(
        (
            done.counts.pending,
            done.counts.submitted,
            done.counts.succeeded,
            done.counts.failed
        ),
        (0, 0, 1, 2)
    );
    let b = &s.list_items(j.id, None, Some(0), 1).await.unwrap()[0];
    assert_eq!(
        (b.status, b.error.clone()),
        (ItemStatus::Failed, Some(error.clone()))
    );
    assert!(b.finished_at.is_some());
    let last = s.events_after(j.id, 0, 100).await.unwrap().pop().unwrap();
    assert_eq!(last.kind, "progress");
    assert_eq!(last.data["failed"], json!(2));
    assert_eq!(last.data["percent"], json!(100.0));

    assert_eq!(
        s.finish_job_if_done(j.id).await.unwrap(),
        Some(JobStatus::Completed)
    );
    let finished = job(&s, j.id).await;
    assert!(finished.completed_at.is_some());
    assert_eq!(
        s.finish_job_if_done(j.id).await.unwrap(),
        None,
        "already terminal"
    );
    assert!(matches!(
        s.fail_shard_items(&lease(Uuid::new_v4(), 1), &error).await,
        Err(StoreError::NotFound)
    ));
}

async fn transition_and_finish_job(s: DynStore) {
    let all_failed = s
        .create_job(
            &new_job("acme", JobStatus::Queued, Mode::Batch, at(0)),
            &[rejected("r")],
        )
        .await
        .unwrap();
    assert_eq!(
        s.finish_job_if_done(all_failed.id).await.unwrap(),
        Some(JobStatus::Failed)
    );
    let open_done = s
        .create_job(&new_job("acme", JobStatus::Open, Mode::Batch, at(0)), &[])
        .await
        .unwrap();
    assert_eq!(
        s.finish_job_if_done(open_done.id).await.unwrap(),
        None,
        "open jobs wait"
    );

    let busy = s
        .create_job(
            &new_job("acme", JobStatus::Queued, Mode::Individual, at(0)),
            &[item("a", None)],
        )
        .await
        .unwrap();
    assert_eq!(s.finish_job_if_done(busy.id).await.unwrap(), None);
    assert!(!s
        .transition_job(busy.id, &[JobStatus::Running], JobStatus::Cancelling)
        .await
        .unwrap());
    assert!(s
        .transition_job(
            busy.id,
            &[JobStatus::Queued, JobStatus::Running],
            JobStatus::Cancelling
        )
        .await
        .unwrap());
    let cancelling = job(&s, busy.id).await;
    assert_eq!(cancelling.status, JobStatus::Cancelling);
    assert_eq!(cancelling.completed_at, None);
    assert_eq!(
        s.finish_job_if_done(busy.id).await.unwrap(),
        None,
        "item still pending"
    );

    let empty = s
        .create_job(
            &new_job("acme", JobStatus::Running, Mode::Batch, at(0)),
            &[],
        )
        .await
        .unwrap();
    assert!(s
        .transition_job(empty.id, &[JobStatus::Running], JobStatus::Cancelling)
        .await
        .unwrap());
    assert_eq!(
        s.finish_job_if_done(empty.id).await.unwrap(),
        Some(JobStatus::Cancelled)
    );
    let statuses: Vec<_> = s
        .events_after(empty.id, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.data))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("status".to_string(), json!({"status": "cancelling"})),
            ("status".to_string(), json!({"status": "cancelled"})),
        ]
    );

    // A terminal transition stamps completed_at.
    assert!(s
        .transition_job(busy.id, &[JobStatus::Cancelling], JobStatus::Failed)
        .await
        .unwrap());
    let failed = job(&s, busy.id).await;
    assert!(failed.completed_at.is_some());
    assert!(failed.updated_at >= cancelling.updated_at);
    assert!(!s
        .transition_job(Uuid::new_v4(), &[JobStatus::Queued], JobStatus::Running)
        .await
        .unwrap());
    assert!(matches!(
        s.finish_job_if_done(Uuid::new_v4()).await,
        Err(StoreError::NotFound)
    ));
}

// ---- events -------------------------------------------------------------------------

async fn events_in_order(s: DynStore) {
    let a = s
        .create_job(&new_job("acme", JobStatus::Queued, Mode::Batch, at(0)), &[])
        .await
        .unwrap();
    let b = s
        .create_job(&new_job("acme", JobStatus::Queued, Mode::Batch, at(0)), &[])
        .await
        .unwrap();
    for i in 0..3 {
        s.append_event(a.id, "progress", &json!({"i": i}))
            .await
            .unwrap();
        s.append_event(b.id, "other", &json!([i])).await.unwrap();
    }
    let all = s.events_after(a.id, 0, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert!(all.iter().all(|e| e.job_id == a.id && e.kind == "progress"));
    assert_eq!(
        all.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
        vec![json!({"i": 0}), json!({"i": 1}), json!({"i": 2})]
    );
    let rest = s.events_after(a.id, all[0].id, 10).await.unwrap();
    assert_eq!(rest, all[1..].to_vec());
    assert_eq!(
        s.events_after(a.id, all[0].id, 1).await.unwrap(),
        all[1..2].to_vec()
    );
    assert!(s
        .events_after(a.id, all[2].id, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.last_event_id(a.id).await.unwrap(), all[2].id);
    assert_eq!(s.last_event_id(Uuid::new_v4()).await.unwrap(), 0);
    assert!(matches!(
        s.append_event(Uuid::new_v4(), "x", &json!({})).await,
        Err(StoreError::NotFound)
    ));
}

// ---- idempotency --------------------------------------------------------------------

async fn idempotency_lifecycle(s: DynStore) {
    let later = Utc::now() + chrono::Duration::hours(24);
    let begin = |tenant: &'static str, key: &'static str, hash: &'static str| {
        let s = s.clone();
        async move { s.idempotency_begin(tenant, key, hash, later).await.unwrap() }
    };
    assert_eq!(begin("acme", "k1", "h1").await, IdempotencyState::Started);
    assert_eq!(
        begin("acme", "k1", "h2").await,
        IdempotencyState::InFlight {
            request_hash: "h1".into()
        }
    );
    assert_eq!(begin("globex", "k1", "h3").await, IdempotencyState::Started);

    let j = s
        .create_job(&new_job("acme", JobStatus::Queued, Mode::Batch, at(0)), &[])
        .await
        .unwrap();
    let response = json!({"id": j.id, "status": "queued"});
    s.idempotency_complete("acme", "k1", j.id, &response, later)
        .await
        .unwrap();
    let replay = IdempotencyState::Completed {
        request_hash: "h1".into(),
        job_id: j.id,
        response: response.clone(),
    };
    assert_eq!(begin("acme", "k1", "h1").await, replay);
    // Aborting only frees keys still in flight.
    s.idempotency_abort("acme", "k1").await.unwrap();
    assert_eq!(begin("acme", "k1", "h1").await, replay);

    assert_eq!(begin("acme", "k2", "h1").await, IdempotencyState::Started);
    s.idempotency_abort("acme", "k2").await.unwrap();
    assert_eq!(begin("acme", "k2", "h9").await, IdempotencyState::Started);

    // An expired key is free again, completed or not.
    let past = Utc::now() - chrono::Duration::seconds(1);
    assert_eq!(
        s.idempotency_begin("acme", "k3", "h1", past).await.unwrap(),
        IdempotencyState::Started
    );
    assert_eq!(
        s.idempotency_begin("acme", "k3", "h2", later)
            .await
            .unwrap(),
        IdempotencyState::Started
    );
    assert_eq!(
        begin("acme", "k3", "h3").await,
        IdempotencyState::InFlight {
            request_hash: "h2".into()
        }
    );
    assert!(matches!(
        s.idempotency_complete("acme", "missing", j.id, &response, later)
            .await,
        Err(StoreError::NotFound)
    ));

    // An in-flight hold renewed stays held; one whose holder stopped renewing (died) is
    // taken by the next request; a completed key is not renewed.
    let soon = Utc::now() + chrono::Duration::seconds(60);
    assert_eq!(
        s.idempotency_begin("acme", "k4", "h1", soon).await.unwrap(),
        IdempotencyState::Started
    );
    assert!(s.idempotency_renew("acme", "k4", later).await.unwrap());
    assert!(matches!(
        begin("acme", "k4", "h1").await,
        IdempotencyState::InFlight { .. }
    ));
    assert!(s.idempotency_renew("acme", "k4", past).await.unwrap());
    assert_eq!(begin("acme", "k4", "h1").await, IdempotencyState::Started);
    assert!(!s.idempotency_renew("acme", "k1", later).await.unwrap());
    assert!(!s.idempotency_renew("acme", "missing", later).await.unwrap());

    // A chunk stored with its key marked, whose holder then died (its lease lapsed): the
    // key says the work is done; it is not taken over, nor freed by an abort.
    let open = s
        .create_job(&new_job("acme", JobStatus::Open, Mode::Batch, at(0)), &[])
        .await
        .unwrap();
    assert_eq!(
        s.idempotency_begin("acme", "k5", "h1", soon).await.unwrap(),
        IdempotencyState::Started
    );
    s.append_items_keyed("acme", open.id, &[item("a", None)], Some("k5"))
        .await
        .unwrap();
    assert!(s.idempotency_renew("acme", "k5", past).await.unwrap());
    let committed = IdempotencyState::Committed {
        request_hash: "h1".into(),
        job_id: open.id,
    };
    assert_eq!(begin("acme", "k5", "h1").await, committed);
    s.idempotency_abort("acme", "k5").await.unwrap();
    assert_eq!(begin("acme", "k5", "h1").await, committed);
    // Another tenant's key of the same name is not marked.
    assert_eq!(begin("globex", "k5", "h1").await, IdempotencyState::Started);

    // A job created with its key marked, whose holder then died: the same.
    assert_eq!(
        s.idempotency_begin("acme", "k6", "h1", soon).await.unwrap(),
        IdempotencyState::Started
    );
    let created = s
        .create_job_keyed(
            &new_job("acme", JobStatus::Queued, Mode::Batch, at(0)),
            &[item("a", None)],
            Some("k6"),
        )
        .await
        .unwrap();
    assert!(s.idempotency_renew("acme", "k6", past).await.unwrap());
    let committed = IdempotencyState::Committed {
        request_hash: "h1".into(),
        job_id: created.id,
    };
    assert_eq!(begin("acme", "k6", "h1").await, committed);
    s.idempotency_abort("acme", "k6").await.unwrap();
    assert_eq!(begin("acme", "k6", "h1").await, committed);
}

async fn idempotency_concurrent_begin_starts_once(s: DynStore) {
    let later = Utc::now() + chrono::Duration::hours(1);
    let past = Utc::now() - chrono::Duration::hours(1);
    // A fresh key, then an expired one: both must be taken by exactly one request.
    s.idempotency_begin("acme", "expired", "old", past)
        .await
        .unwrap();
    for key in ["fresh", "expired"] {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(8));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (s, barrier) = (s.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    s.idempotency_begin("acme", key, &format!("h{i}"), later)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut started = 0;
        for t in tasks {
            match t.await.unwrap() {
                IdempotencyState::Started => started += 1,
                IdempotencyState::InFlight { request_hash } => {
                    assert!(request_hash.starts_with('h') && request_hash != "old")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(started, 1, "key {key}");
    }
}

// ---- costs and keys -----------------------------------------------------------------

async fn cost_totals_over_period(s: DynStore) {
    let (job_id, shard_id, tok) = submitted_shard(&s, "acme", 3).await;
    s.record_shard_outcomes(
        &lease(shard_id, tok),
        &[
            succeeded("item-0", Some(1_000), Mode::Batch),
            succeeded("item-1", Some(500), Mode::Batch),
        ],
    )
    .await
    .unwrap();
    let spent = job(&s, job_id).await;
    let created = spent.created_at;
    // Another job in the period with a rejected image, one outside it, one of another tenant.
    s.create_job(
        &new_job("acme", JobStatus::Queued, Mode::Batch, created),
        &[item("a", None), rejected("r")],
    )
    .await
    .unwrap();
    s.create_job(
        &new_job(
            "acme",
            JobStatus::Queued,
            Mode::Batch,
            created + chrono::Duration::hours(1),
        ),
        &[item("a", None)],
    )
    .await
    .unwrap();
    s.create_job(
        &new_job("globex", JobStatus::Queued, Mode::Batch, created),
        &[item("a", None)],
    )
    .await
    .unwrap();

    let from = created;
    let to = created + chrono::Duration::hours(1);
    let totals = s.cost_totals("acme", from, to).await.unwrap();
    assert_eq!(totals.jobs, 2, "from is inclusive, to exclusive");
    assert_eq!(totals.images, 4, "rejected images are not counted");
    assert_eq!(totals.actual_pico_usd, 1_500);
    assert_eq!(totals.individual_pico_usd, 3_000);
    let empty = s
        .cost_totals(
            "acme",
            to + chrono::Duration::hours(1),
            to + chrono::Duration::hours(2),
        )
        .await
        .unwrap();
    assert_eq!(empty, Default::default());
}

// ---- bulk ---------------------------------------------------------------------------

async fn bulk_outcomes(s: DynStore) {
    const N: usize = 5_000;
    let (job_id, shard_id, tok) = submitted_shard(&s, "acme", N).await;
    let shard = s.get_shard(shard_id).await.unwrap().unwrap();
    assert_eq!(shard.item_count, N as i64);
    assert_eq!(job(&s, job_id).await.counts.submitted, N as i64);

    let outcomes: Vec<ItemOutcome> = (0..N)
        .map(|i| succeeded(&format!("item-{i}"), Some(i as i64), Mode::Batch))
        .collect();
    for chunk in outcomes.chunks(1_000) {
        assert_eq!(
            s.record_shard_outcomes(&lease(shard_id, tok), chunk)
                .await
                .unwrap(),
            1_000
        );
    }
    let j = job(&s, job_id).await;
    assert_eq!(j.counts.submitted, 0);
    assert_eq!(j.counts.succeeded, N as i64);
    assert_eq!(j.cost.input_tokens, 100 * N as i64);
    let sum: i64 = (0..N as i64).sum();
    assert_eq!(j.cost.actual_pico_usd, sum);
    assert_eq!(j.cost.individual_pico_usd, 2 * sum);
    assert_eq!((j.cost.batch_items, j.cost.batch_pico_usd), (N as i64, sum));
    assert_eq!(
        s.record_shard_outcomes(&lease(shard_id, tok), &outcomes[..1_000])
            .await
            .unwrap(),
        0
    );
    let progress = s.events_after(job_id, 0, 100).await.unwrap();
    assert_eq!(
        progress.iter().filter(|e| e.kind == "progress").count(),
        1 + 5
    );
    assert_eq!(
        s.finish_job_if_done(job_id).await.unwrap(),
        Some(JobStatus::Completed)
    );
}

#[tokio::test]
async fn connect_rejects_unknown_schemes() {
    for url in ["mysql://localhost/db", "nonsense", "http://x"] {
        match super::connect(url).await {
            Err(StoreError::InvalidUrl(msg)) => assert!(msg.contains("expected")),
            Err(other) => panic!("{url}: unexpected {other:?}"),
            Ok(_) => panic!("{url}: connected"),
        }
    }
}

#[tokio::test]
async fn connect_opens_in_memory_sqlite() {
    let s = super::connect("sqlite::memory:").await.unwrap();
    let j = s
        .create_job(
            &new_job("acme", JobStatus::Queued, Mode::Batch, at(0)),
            &items(2),
        )
        .await
        .unwrap();
    // Every pooled connection must see the same in-memory database.
    assert_eq!(job(&s, j.id).await.counts.total, 2);
    s.close().await;
}

async fn individual_shards_round_robin_and_start(s: DynStore) {
    // A big job planned first, a small one after: the small one's shard is claimed in the
    // first round, not after every shard of the big one.
    let big = new_job("acme", JobStatus::Queued, Mode::Individual, at(1));
    let small = new_job("acme", JobStatus::Queued, Mode::Individual, at(2));
    let big_items: Vec<NewItem> = (0..12).map(|i| item(&format!("b{i}"), None)).collect();
    s.create_job(&big, &big_items).await.unwrap();
    s.create_job(&small, &[item("s0", None), item("s1", None)])
        .await
        .unwrap();
    let mut big_shards = Vec::new();
    for (job, chunks) in [
        (
            &big,
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9, 10, 11]],
        ),
        (&small, vec![vec![0, 1]]),
    ] {
        let claimed = claim_plan(&s, "p", LEASE, 10).await.unwrap();
        let token = claimed.iter().find(|(j, _)| j.id == job.id).unwrap().1;
        let shards: Vec<NewShard> = chunks
            .into_iter()
            .enumerate()
            .map(|(k, positions)| NewShard {
                kind: ShardKind::Individual,
                ..new_shard(positions, at(10 + k as i64))
            })
            .collect();
        if job.id == big.id {
            big_shards = shards.iter().map(|s| s.id).collect();
        }
        assert!(s
            .create_shards(&job_lease(job.id, token), &shards)
            .await
            .unwrap());
        for (j, t) in claimed {
            s.release_job(&job_lease(j.id, t)).await.unwrap();
        }
    }
    // Batch claimers do not see individual shards.
    let batch = claim(&s, &[ShardStatus::Planned], at(100_000), "b", 10).await;
    assert!(batch.is_empty());

    let first = s.claim_individual_shards("x", LEASE, 2).await.unwrap();
    let jobs: std::collections::HashSet<Uuid> = first.iter().map(|sh| sh.job_id).collect();
    assert_eq!(jobs.len(), 2, "one shard of each job first");
    assert!(first.iter().all(|sh| sh.kind == ShardKind::Individual));
    let big_first = first.iter().find(|sh| sh.job_id == big.id).unwrap();
    assert_eq!(big_first.id, big_shards[0]);

    // Starting moves the shard's items and the job.
    let small_shard = first.iter().find(|sh| sh.job_id == small.id).unwrap();
    assert!(!s
        .start_individual_shard(&lease(small_shard.id, small_shard.lease_token + 1))
        .await
        .unwrap());
    assert!(s
        .start_individual_shard(&lease(small_shard.id, small_shard.lease_token))
        .await
        .unwrap());
    let job = s.get_job(None, small.id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Running);
    assert_eq!((job.counts.pending, job.counts.submitted), (0, 2));
    let items = s.shard_items(small_shard.id, None, 10).await.unwrap();
    assert!(items
        .iter()
        .all(|i| i.status == ItemStatus::Submitted && i.attempts == 1));
    // Started twice: refused (it is no longer planned).
    assert!(!s
        .start_individual_shard(&lease(small_shard.id, small_shard.lease_token))
        .await
        .unwrap());

    // Held shards are not claimed again; the rest of the big job is.
    let next = s.claim_individual_shards("y", LEASE, 10).await.unwrap();
    assert_eq!(next.len(), 2);
    assert!(next.iter().all(|sh| sh.job_id == big.id));

    // Dimensions of pending items, in position order.
    let mut sized = item("w", None);
    sized.width = Some(640);
    sized.height = Some(480);
    let mut url = item("u", None);
    url.width = None;
    url.height = None;
    let job = new_job("acme", JobStatus::Open, Mode::Batch, at(3));
    s.create_job(&job, &[sized, url, rejected("r")])
        .await
        .unwrap();
    assert_eq!(
        s.pending_item_dims(job.id).await.unwrap(),
        vec![Some((640, 480)), None]
    );
}

// ---- retries and cancelling ---------------------------------------------------------

/// Plans the job's unassigned items into one shard of `attempt`, uploads and submits it
/// (the planner's and the submitter's steps, by hand).
/// Returns (shard id, token).
async fn resubmit(s: &DynStore, job_id: Uuid, attempt: i32) -> (Uuid, i64) {
    let claimed = claim_plan(s, "planner", LEASE, 100).await.unwrap();
    let (_, job_token) = claimed
        .into_iter()
        .find(|(j, _)| j.id == job_id)
        .expect("the job has unassigned items");
    let positions = s
        .unassigned_items(job_id)
        .await
        .unwrap()
        .iter()
        .map(|i| i.position)
        .collect();
    let shard = NewShard {
        attempt,
        ..new_shard(positions, Utc::now() - chrono::Duration::seconds(1))
    };
    assert!(s
        .create_shards(&job_lease(job_id, job_token), std::slice::from_ref(&shard))
        .await
        .unwrap());
    s.release_job(&job_lease(job_id, job_token)).await.unwrap();
    let token = claim(s, &[ShardStatus::Planned], Utc::now(), "submitter", 100)
        .await
        .into_iter()
        .find(|x| x.id == shard.id)
        .expect("shard claimed")
        .lease_token;
    assert!(s
        .shard_uploaded(&lease(shard.id, token), "file-in")
        .await
        .unwrap());
    assert!(s
        .shard_submitted(&lease(shard.id, token), "batch_n", Utc::now())
        .await
        .unwrap());
    (shard.id, token)
}

fn verdict(outcome: ItemOutcome, retry: bool) -> Verdict {
    Verdict { outcome, retry }
}

fn server_error(custom_id: &str) -> ItemOutcome {
    ItemOutcome {
        error: Some(ItemError {
            code: "server_error".into(),
            message: "try again".into(),
        }),
        ..failed(custom_id)
    }
}

async fn item_named(s: &DynStore, job_id: Uuid, custom_id: &str) -> crate::domain::Item {
    s.list_items(job_id, None, None, 100)
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.custom_id == custom_id)
        .expect("item exists")
}

async fn settle_outcomes_retries_within_attempts(s: DynStore) {
    let (job_id, shard_id, tok) = submitted_shard(&s, "acme", 5).await;
    let billed = ItemOutcome {
        usage: Some(usage(10)),
        cost_pico_usd: Some(3),
        ..server_error("item-3")
    };
    let verdicts = vec![
        verdict(succeeded("item-0", Some(100), Mode::Batch), false),
        verdict(server_error("item-1"), true),
        verdict(failed("item-2"), false),
        verdict(billed, true),
    ];
    assert_eq!(
        s.settle_shard_outcomes(&lease(shard_id, tok + 1), &verdicts, 2)
            .await
            .unwrap(),
        Settled::default(),
        "stale token"
    );
    let settled = s
        .settle_shard_outcomes(&lease(shard_id, tok), &verdicts, 2)
        .await
        .unwrap();
    assert_eq!(
        settled,
        Settled {
            succeeded: 1,
            failed: 2,
            requeued: 1,
            cancelled: 0
        }
    );
    let j = job(&s, job_id).await;
    assert_eq!(
        (
            j.counts.pending,
            j.counts.submitted,
            j.counts.succeeded,
            j.counts.failed
        ),
        (1, 1, 1, 2)
    );
    assert_eq!(j.cost.actual_pico_usd, 103, "the billed failure counts");
    let back = item_named(&s, job_id, "item-1").await;
    assert_eq!(back.status, ItemStatus::Pending);
    assert_eq!(back.shard_id, None);
    assert_eq!(back.attempts, 1);
    assert_eq!(back.finished_at, None);
    assert_eq!(back.error.as_ref().unwrap().code, "server_error");
    let kept = item_named(&s, job_id, "item-3").await;
    assert_eq!(
        (kept.status, kept.cost_pico_usd),
        (ItemStatus::Failed, Some(3))
    );
    // The same verdicts again change nothing.
    assert_eq!(
        s.settle_shard_outcomes(&lease(shard_id, tok), &verdicts, 2)
            .await
            .unwrap(),
        Settled::default()
    );
    assert_eq!(job(&s, job_id).await, j);
    assert_eq!(s.finish_job_if_done(job_id).await.unwrap(), None);

    // The planner sees it again; its second attempt fails again and stays failed.
    let unassigned = s.unassigned_items(job_id).await.unwrap();
    assert_eq!(unassigned.len(), 1);
    assert_eq!(
        (
            unassigned[0].position,
            unassigned[0].width,
            unassigned[0].height
        ),
        (1, Some(640), Some(480))
    );
    let (second, tok2) = resubmit(&s, job_id, 2).await;
    assert_eq!(item_named(&s, job_id, "item-1").await.attempts, 2);
    let again = s
        .settle_shard_outcomes(
            &lease(second, tok2),
            &[verdict(server_error("item-1"), true)],
            2,
        )
        .await
        .unwrap();
    assert_eq!(again.failed, 1);
    let spent = item_named(&s, job_id, "item-1").await;
    assert_eq!(
        (spent.status, spent.attempts, spent.shard_id),
        (ItemStatus::Failed, 2, Some(second))
    );
    assert!(spent.finished_at.is_some());

    // While the job is cancelling, a retryable failure is cancelled instead.
    s.cancel_job("acme", job_id).await.unwrap();
    let last = s
        .settle_shard_outcomes(
            &lease(shard_id, tok),
            &[verdict(server_error("item-4"), true)],
            9,
        )
        .await
        .unwrap();
    assert_eq!(last.cancelled, 1);
    let j = job(&s, job_id).await;
    assert_eq!(
        (j.counts.submitted, j.counts.cancelled, j.counts.failed),
        (0, 1, 3)
    );
    assert_eq!(
        s.finish_job_if_done(job_id).await.unwrap(),
        Some(JobStatus::Cancelled)
    );
    // Outcomes that are neither success nor failure are refused.
    let wrong = Verdict {
        outcome: ItemOutcome {
            status: ItemStatus::Cancelled,
            ..failed("item-4")
        },
        retry: false,
    };
    assert!(s
        .settle_shard_outcomes(&lease(shard_id, tok), &[wrong], 2)
        .await
        .is_err());
}

async fn settle_leftovers_as_asked(s: DynStore) {
    let error = ItemError {
        code: "token_limit_exceeded".into(),
        message: "Enqueued token limit reached".into(),
    };
    // Requeue: back to pending, the attempt taken back.
    let (job_id, shard_id, tok) = submitted_shard(&s, "acme", 3).await;
    assert_eq!(
        s.settle_shard_items(&lease(shard_id, tok + 1), &error, Leftover::Requeue)
            .await
            .unwrap(),
        Settled::default(),
        "stale token"
    );
    let settled = s
        .settle_shard_items(&lease(shard_id, tok), &error, Leftover::Requeue)
        .await
        .unwrap();
    assert_eq!(settled.requeued, 3);
    let j = job(&s, job_id).await;
    assert_eq!((j.counts.pending, j.counts.submitted), (3, 0));
    for item in s.list_items(job_id, None, None, 10).await.unwrap() {
        assert_eq!(
            (item.status, item.attempts, item.shard_id),
            (ItemStatus::Pending, 0, None)
        );
        assert_eq!(item.error.as_ref().unwrap().code, "token_limit_exceeded");
    }
    let last = s.events_after(job_id, 0, 100).await.unwrap().pop().unwrap();
    assert_eq!(last.data["pending"], json!(3));
    assert_eq!(
        s.settle_shard_items(&lease(shard_id, tok), &error, Leftover::Requeue)
            .await
            .unwrap(),
        Settled::default(),
        "nothing left in the shard"
    );

    // Retry: back while under max_attempts, failed after.
    let (second, tok2) = resubmit(&s, job_id, 2).await;
    let settled = s
        .settle_shard_items(
            &lease(second, tok2),
            &error,
            Leftover::Retry { max_attempts: 2 },
        )
        .await
        .unwrap();
    assert_eq!(settled.requeued, 3);
    assert!(s
        .list_items(job_id, None, None, 10)
        .await
        .unwrap()
        .iter()
        .all(|i| i.attempts == 1 && i.status == ItemStatus::Pending));
    let (third, tok3) = resubmit(&s, job_id, 3).await;
    let settled = s
        .settle_shard_items(
            &lease(third, tok3),
            &error,
            Leftover::Retry { max_attempts: 2 },
        )
        .await
        .unwrap();
    assert_eq!(settled.failed, 3);
    let j = job(&s, job_id).await;
    assert_eq!((j.counts.pending, j.counts.failed), (0, 3));
    for item in s.list_items(job_id, None, None, 10).await.unwrap() {
        assert_eq!(
            (item.status, item.attempts, item.shard_id),
            (ItemStatus::Failed, 2, Some(third))
        );
        assert!(item.finished_at.is_some());
    }

    // Fail and Cancel settle for good.
    let (j2, shard2, t2) = submitted_shard(&s, "acme", 2).await;
    assert_eq!(
        s.settle_shard_items(&lease(shard2, t2), &error, Leftover::Cancel)
            .await
            .unwrap()
            .cancelled,
        2
    );
    assert_eq!(job(&s, j2).await.counts.cancelled, 2);
    let (j3, shard3, t3) = submitted_shard(&s, "acme", 2).await;
    assert_eq!(
        s.settle_shard_items(&lease(shard3, t3), &error, Leftover::Fail)
            .await
            .unwrap()
            .failed,
        2
    );
    assert_eq!(job(&s, j3).await.counts.failed, 2);

    // fail_shard: the same, and the shard failed with the error, at once.
    let (j5, shard5, t5) = submitted_shard(&s, "acme", 2).await;
    assert_eq!(
        s.fail_shard(&lease(shard5, t5 + 1), &error, Leftover::Requeue)
            .await
            .unwrap(),
        Settled::default()
    );
    assert_eq!(
        s.get_shard(shard5).await.unwrap().unwrap().status,
        ShardStatus::Submitted,
        "stale token: the shard is untouched too"
    );
    let settled = s
        .fail_shard(&lease(shard5, t5), &error, Leftover::Requeue)
        .await
        .unwrap();
    assert_eq!(settled.requeued, 2);
    let failed_shard = s.get_shard(shard5).await.unwrap().unwrap();
    assert_eq!(failed_shard.status, ShardStatus::Failed);
    assert_eq!(failed_shard.error, Some(error.clone()));
    assert_eq!(job(&s, j5).await.counts.pending, 2);
    assert_eq!(s.unassigned_items(j5).await.unwrap().len(), 2);

    // While the job is cancelling, Retry and Requeue cancel.
    let (j4, shard4, t4) = submitted_shard(&s, "acme", 2).await;
    s.cancel_job("acme", j4).await.unwrap();
    let settled = s
        .settle_shard_items(&lease(shard4, t4), &error, Leftover::Requeue)
        .await
        .unwrap();
    assert_eq!(settled.cancelled, 2);
    assert_eq!(
        s.finish_job_if_done(j4).await.unwrap(),
        Some(JobStatus::Cancelled)
    );
    assert!(matches!(
        s.settle_shard_items(&lease(Uuid::new_v4(), 1), &error, Leftover::Fail)
            .await,
        Err(StoreError::NotFound)
    ));
}

async fn cancel_job_cancels_what_has_not_run(s: DynStore) {
    // Two items in flight, two planned into a batch shard (the submitter may be sending
    // it right now), one not planned yet.
    let created = s
        .create_job(
            &new_job("acme", JobStatus::Queued, Mode::Batch, at(0)),
            &items(5),
        )
        .await
        .unwrap();
    let (_, t) = claim_plan(&s, "p", LEASE, 10).await.unwrap().remove(0);
    let sent = new_shard(vec![0, 1], at(0));
    let planned = new_shard(vec![2, 3], at(5));
    assert!(s
        .create_shards(&job_lease(created.id, t), &[sent.clone(), planned.clone()])
        .await
        .unwrap());
    s.release_job(&job_lease(created.id, t)).await.unwrap();
    let claimed = claim(&s, &[ShardStatus::Planned], at(10), "w", 10).await;
    let tok = claimed
        .iter()
        .find(|x| x.id == sent.id)
        .unwrap()
        .lease_token;
    assert!(s.shard_uploaded(&lease(sent.id, tok), "f").await.unwrap());
    assert!(s
        .shard_submitted(&lease(sent.id, tok), "b", at(20))
        .await
        .unwrap());

    assert!(matches!(
        s.cancel_job("other-tenant", created.id).await,
        Err(StoreError::NotFound)
    ));
    let j = s.cancel_job("acme", created.id).await.unwrap();
    assert_eq!(j.status, JobStatus::Cancelling);
    assert_eq!(
        (j.counts.pending, j.counts.submitted, j.counts.cancelled),
        (2, 2, 1)
    );
    assert_eq!(
        item_named(&s, created.id, "item-2").await.status,
        ItemStatus::Pending,
        "the planned batch shard's items are left to the submitter"
    );
    let cancelled = item_named(&s, created.id, "item-4").await;
    assert_eq!(cancelled.status, ItemStatus::Cancelled);
    assert_eq!(cancelled.error.as_ref().unwrap().code, "job_cancelled");
    assert!(cancelled.finished_at.is_some());
    let kinds: Vec<String> = s
        .events_after(created.id, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{}:{}", e.kind, e.data["status"].as_str().unwrap_or("")))
        .collect();
    assert!(
        kinds.contains(&"status:cancelling".to_string()),
        "{kinds:?}"
    );
    // Twice: the same job, nothing moves.
    assert_eq!(s.cancel_job("acme", created.id).await.unwrap(), j);
    // The planner leaves a cancelling job alone.
    assert!(claim_plan(&s, "p", LEASE, 10).await.unwrap().is_empty());

    // The batch's results: one kept, one cancelled; then the job is cancelled.
    let settled = s
        .settle_shard_outcomes(
            &lease(sent.id, tok),
            &[
                verdict(succeeded("item-0", Some(9), Mode::Batch), false),
                verdict(server_error("item-1"), true),
            ],
            3,
        )
        .await
        .unwrap();
    assert_eq!((settled.succeeded, settled.cancelled), (1, 1));
    assert_eq!(s.finish_job_if_done(created.id).await.unwrap(), None);
    // The submitter closes the planned shard of the cancelled job without a batch.
    let planned_tok = claimed
        .iter()
        .find(|x| x.id == planned.id)
        .unwrap()
        .lease_token;
    let closed = s
        .settle_shard_items(
            &lease(planned.id, planned_tok),
            &crate::store::job_cancelled_error(),
            Leftover::Cancel,
        )
        .await
        .unwrap();
    assert_eq!(closed.cancelled, 2);
    assert_eq!(
        s.finish_job_if_done(created.id).await.unwrap(),
        Some(JobStatus::Cancelled)
    );
    let done = job(&s, created.id).await;
    assert_eq!((done.counts.succeeded, done.counts.cancelled), (1, 4));
    assert_eq!(done.cost.actual_pico_usd, 9);
    assert!(matches!(
        s.cancel_job("acme", created.id).await,
        Err(StoreError::Conflict(_))
    ));

    // Nothing in flight: cancelled at once, open jobs included.
    for status in [JobStatus::Queued, JobStatus::Open] {
        let quiet = s
            .create_job(&new_job("acme", status, Mode::Batch, at(1)), &items(2))
            .await
            .unwrap();
        let j = s.cancel_job("acme", quiet.id).await.unwrap();
        assert_eq!(j.status, JobStatus::Cancelled);
        assert_eq!(j.counts.cancelled, 2);
        assert!(j.completed_at.is_some());
    }
    assert!(matches!(
        s.cancel_job("acme", Uuid::new_v4()).await,
        Err(StoreError::NotFound)
    ));

    // A cancelling job's started individual shard is still claimed, to be settled.
    let ind = new_job("acme", JobStatus::Queued, Mode::Individual, at(2));
    s.create_job(&ind, &items(2)).await.unwrap();
    let (_, t) = claim_plan(&s, "p", LEASE, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|(j, _)| j.id == ind.id)
        .unwrap();
    let shard = NewShard {
        kind: ShardKind::Individual,
        ..new_shard(vec![0, 1], at(0))
    };
    assert!(s
        .create_shards(&job_lease(ind.id, t), std::slice::from_ref(&shard))
        .await
        .unwrap());
    s.release_job(&job_lease(ind.id, t)).await.unwrap();
    let first = s.claim_individual_shards("x", LEASE, 10).await.unwrap();
    assert!(s
        .start_individual_shard(&lease(shard.id, first[0].lease_token))
        .await
        .unwrap());
    s.release_shard(&lease(shard.id, first[0].lease_token))
        .await
        .unwrap();
    assert_eq!(
        s.cancel_job("acme", ind.id).await.unwrap().status,
        JobStatus::Cancelling
    );
    let again = s.claim_individual_shards("y", LEASE, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, shard.id);
}

async fn model_load_and_estimates(s: DynStore) {
    let (_, shard_id, tok) = submitted_shard(&s, "acme", 3).await;
    assert_eq!(
        s.shard_item_dims(shard_id).await.unwrap(),
        vec![Some((640, 480)); 3]
    );
    assert!(!s
        .set_shard_estimate(&lease(shard_id, tok + 1), 500)
        .await
        .unwrap());
    assert!(s
        .set_shard_estimate(&lease(shard_id, tok), 500)
        .await
        .unwrap());
    let (_, other, tok2) = submitted_shard(&s, "acme", 1).await;
    assert!(s.set_shard_estimate(&lease(other, tok2), 70).await.unwrap());
    let load = s
        .batch_model_load("gpt-4o-mini", "token_limit_exceeded")
        .await
        .unwrap();
    assert_eq!((load.in_flight, load.in_flight_tokens), (2, 570));
    assert_eq!((load.last_refusal_at, load.last_completed_at), (None, None));
    assert_eq!(
        s.batch_model_load("gpt-4o", "token_limit_exceeded")
            .await
            .unwrap(),
        super::ModelLoad::default()
    );

    // One refused, one completed: both leave the in-flight count.
    let refusal = ItemError {
        code: "token_limit_exceeded".into(),
        message: "limit".into(),
    };
    assert!(s
        .set_shard_status(&lease(other, tok2), ShardStatus::Failed, Some(&refusal))
        .await
        .unwrap());
    let load = s
        .batch_model_load("gpt-4o-mini", "token_limit_exceeded")
        .await
        .unwrap();
    assert_eq!((load.in_flight, load.in_flight_tokens), (1, 500));
    let refused_at = load.last_refusal_at.expect("a refusal");
    assert_eq!(load.last_completed_at, None);
    assert_eq!(
        s.batch_model_load("gpt-4o-mini", "other_code")
            .await
            .unwrap()
            .last_refusal_at,
        None
    );
    let poll = ShardPoll {
        batch_status: "completed".into(),
        request_total: 3,
        request_completed: 3,
        request_failed: 0,
        output_file_id: Some("out".into()),
        error_file_id: None,
        next_poll_at: Utc::now(),
        poll_interval_ms: 1000,
    };
    assert!(s.shard_polled(&lease(shard_id, tok), &poll).await.unwrap());
    assert!(s
        .set_shard_status(&lease(shard_id, tok), ShardStatus::Done, None)
        .await
        .unwrap());
    let load = s
        .batch_model_load("gpt-4o-mini", "token_limit_exceeded")
        .await
        .unwrap();
    assert_eq!(load.in_flight, 0);
    assert!(load.last_completed_at.unwrap() >= refused_at);
    assert!(s.shard_item_dims(Uuid::new_v4()).await.unwrap().is_empty());
}

async fn gauges_count_jobs_and_waiting_items(s: DynStore) {
    assert_eq!(s.gauges().await.unwrap(), crate::store::Gauges::default());
    s.create_job(
        &new_job("acme", JobStatus::Queued, Mode::Batch, Utc::now()),
        &items(4),
    )
    .await
    .unwrap();
    // Another tenant's job counts too: the gauges cover the whole database.
    let (_, _, _) = submitted_shard(&s, "globex", 3).await;
    let g = s.gauges().await.unwrap();
    assert_eq!(
        g.jobs,
        vec![(JobStatus::Queued, 1), (JobStatus::Running, 1)],
        "{g:?}"
    );
    assert_eq!((g.pending_items, g.submitted_items), (4, 3));
}

async fn webhooks_are_owed_claimed_and_settled(s: DynStore) {
    use crate::domain::WebhookState;
    use crate::store::WebhookAttempt;
    let lease = Duration::from_secs(60);
    let mut quiet = new_job("acme", JobStatus::Queued, Mode::Batch, at(0));
    quiet.webhook_url = None;
    let quiet = s.create_job(&quiet, &[rejected("r")]).await.unwrap();
    let hooked = s
        .create_job(
            &new_job("acme", JobStatus::Queued, Mode::Batch, at(0)),
            &[rejected("r")],
        )
        .await
        .unwrap();
    assert!(
        s.claim_webhooks(lease, 10).await.unwrap().is_empty(),
        "nothing finished yet"
    );
    for id in [quiet.id, hooked.id] {
        assert_eq!(
            s.finish_job_if_done(id).await.unwrap(),
            Some(JobStatus::Failed)
        );
    }
    assert_eq!(
        s.get_job(None, quiet.id)
            .await
            .unwrap()
            .unwrap()
            .webhook_state,
        None
    );

    let claimed = s.claim_webhooks(lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 1, "only the job with a webhook_url owes one");
    let (job, claim) = claimed[0].clone();
    assert_eq!(
        (job.id, job.webhook_state),
        (hooked.id, Some(WebhookState::Pending))
    );
    assert!(
        s.claim_webhooks(lease, 10).await.unwrap().is_empty(),
        "claimed"
    );

    // A failed attempt: due again at once (retry_at in the past), attempts counted.
    let refused = WebhookAttempt {
        state: WebhookState::Pending,
        retry_at: Some(Utc::now() - chrono::Duration::seconds(1)),
        error: Some("HTTP 500".into()),
        detail: json!({"state": "pending", "attempt": 1}),
    };
    assert!(s.webhook_attempted(job.id, claim, &refused).await.unwrap());
    let delivered = WebhookAttempt {
        state: WebhookState::Delivered,
        retry_at: None,
        error: None,
        detail: json!({"state": "delivered", "attempt": 2}),
    };
    assert!(
        !s.webhook_attempted(job.id, claim, &delivered)
            .await
            .unwrap(),
        "an old claim cannot settle the delivery"
    );
    let (again, claim) = s.claim_webhooks(lease, 10).await.unwrap()[0].clone();
    assert_eq!(
        (again.webhook_attempts, again.webhook_error.as_deref()),
        (1, Some("HTTP 500"))
    );
    assert!(s
        .webhook_attempted(job.id, claim, &delivered)
        .await
        .unwrap());
    let done = s.get_job(None, job.id).await.unwrap().unwrap();
    assert_eq!(
        (
            done.webhook_state,
            done.webhook_attempts,
            done.webhook_error
        ),
        (Some(WebhookState::Delivered), 2, None)
    );
    assert!(s
        .claim_webhooks(Duration::ZERO, 10)
        .await
        .unwrap()
        .is_empty());
    let events = s.events_after(job.id, 0, 100).await.unwrap();
    let hooks: Vec<_> = events.iter().filter(|e| e.kind == "webhook").collect();
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[1].data["state"], "delivered");
}

/// One poll of the shard under `lease`: `status`, next poll in an hour; the lease is then
/// released, as the poller's kernel does.
async fn polled_for_an_hour(s: &DynStore, lease: &ShardLease, status: &str) {
    let poll = ShardPoll {
        batch_status: status.into(),
        request_total: 2,
        request_completed: 0,
        request_failed: 0,
        output_file_id: None,
        error_file_id: None,
        next_poll_at: Utc::now() + chrono::Duration::hours(1),
        poll_interval_ms: 60_000,
    };
    assert!(s.shard_polled(lease, &poll).await.unwrap());
    s.release_shard(lease).await.unwrap();
}

/// Claims the shard whatever its next poll (a poll in flight), returning its lease.
async fn claim_now(s: &DynStore, shard: Uuid) -> ShardLease {
    let later = Utc::now() + chrono::Duration::hours(2);
    let claimed = claim(s, &[ShardStatus::Submitted], later, "poller", 100).await;
    let token = claimed
        .iter()
        .find(|x| x.id == shard)
        .expect("shard claimed")
        .lease_token;
    lease(shard, token)
}

async fn openai_webhooks_make_shards_due_once(s: DynStore) {
    use super::OpenAiWebhookReceipt as Receipt;
    let (_, shard, token) = submitted_shard(&s, "acme", 2).await;
    let next_poll =
        |s: DynStore| async move { s.get_shard(shard).await.unwrap().unwrap().next_poll_at };
    let soon = || Utc::now() + chrono::Duration::minutes(30);
    s.release_shard(&lease(shard, token)).await.unwrap();
    let polling = claim_now(&s, shard).await;
    polled_for_an_hour(&s, &polling, "in_progress").await;
    assert!(next_poll(s.clone()).await > soon());

    let first = Receipt {
        replay: false,
        shards_due: 0,
    };
    let replay = Receipt {
        replay: true,
        shards_due: 0,
    };
    // Another batch's event: recorded, no shard due.
    assert_eq!(
        s.openai_webhook_received("evt_1", Some("batch_other"))
            .await
            .unwrap(),
        first
    );
    assert!(next_poll(s.clone()).await > soon());
    // The same webhook-id again, even naming this batch: a replay, nothing changes.
    assert_eq!(
        s.openai_webhook_received("evt_1", Some("batch_n"))
            .await
            .unwrap(),
        replay
    );
    assert!(next_poll(s.clone()).await > soon());
    // A new event for the batch: due now.
    assert_eq!(
        s.openai_webhook_received("evt_2", Some("batch_n"))
            .await
            .unwrap(),
        Receipt {
            replay: false,
            shards_due: 1
        }
    );
    assert!(next_poll(s.clone()).await <= Utc::now());
    let due = claim(&s, &[ShardStatus::Submitted], Utc::now(), "poller", 100).await;
    assert_eq!(due.iter().map(|x| x.id).collect::<Vec<_>>(), vec![shard]);
    // The poll it caused still finds the batch running (OpenAI lagging): poll again at once,
    // once; the hint is then spent.
    let hinted = lease(shard, due[0].lease_token);
    polled_for_an_hour(&s, &hinted, "in_progress").await;
    assert!(next_poll(s.clone()).await <= Utc::now());
    let again = claim_now(&s, shard).await;
    polled_for_an_hour(&s, &again, "in_progress").await;
    assert!(next_poll(s.clone()).await > soon(), "the hint is spent");

    // An event while a poll is in flight: that poll does not push the next one an hour out.
    let in_flight = claim_now(&s, shard).await;
    assert_eq!(
        s.openai_webhook_received("evt_3", Some("batch_n"))
            .await
            .unwrap()
            .shards_due,
        1
    );
    polled_for_an_hour(&s, &in_flight, "in_progress").await;
    assert!(next_poll(s.clone()).await <= Utc::now());
    // A poll that finds the batch ended ignores the hint (the ingester takes over).
    let ended = claim_now(&s, shard).await;
    s.openai_webhook_received("evt_4", Some("batch_n"))
        .await
        .unwrap();
    polled_for_an_hour(&s, &ended, "completed").await;
    assert!(next_poll(s.clone()).await > soon());
    // Events for a shard no longer submitted make nothing due.
    assert!(s
        .set_shard_status(&ended, ShardStatus::Ingesting, None)
        .await
        .unwrap());
    assert_eq!(
        s.openai_webhook_received("evt_5", Some("batch_n"))
            .await
            .unwrap(),
        first
    );

    // The janitor's sweep: ids received before the cut are forgotten, then count anew.
    assert_eq!(
        s.forget_openai_webhooks(Utc::now() - chrono::Duration::minutes(15))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.forget_openai_webhooks(Utc::now() + chrono::Duration::seconds(1))
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        s.openai_webhook_received("evt_1", None).await.unwrap(),
        first
    );
}

// ---- tenants ------------------------------------------------------------------------

async fn api_keys_created_listed_revoked(s: DynStore) {
    let (h1, h2, h3) = ("1".repeat(64), "2".repeat(64), "3".repeat(64));
    s.insert_api_key(&h1, "bl_00000001", "acme").await.unwrap();
    let taken = s.insert_api_key(&h3, "bl_00000001", "acme").await;
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
    s.insert_api_key(&h2, "bl_00000002", "globex")
        .await
        .unwrap();
    let mut active = s.active_api_keys().await.unwrap();
    active.sort();
    assert_eq!(
        active,
        vec![(h1.clone(), "acme".into()), (h2.clone(), "globex".into())]
    );
    assert!(s.revoke_api_key("bl_00000001").await.unwrap());
    assert!(!s.revoke_api_key("bl_00000001").await.unwrap(), "once");
    assert!(!s.revoke_api_key("bl_nope").await.unwrap());
    assert_eq!(
        s.active_api_keys().await.unwrap(),
        vec![(h2, "globex".into())]
    );
    let listed = s.list_api_keys().await.unwrap();
    let shown: Vec<_> = listed
        .iter()
        .map(|k| (k.prefix.as_str(), k.tenant.as_str(), k.revoked_at.is_some()))
        .collect();
    assert_eq!(
        shown,
        vec![
            ("bl_00000001", "acme", true),
            ("bl_00000002", "globex", false)
        ]
    );
    let age = Utc::now() - listed[0].created_at;
    assert!(age < chrono::Duration::minutes(5), "created now: {age}");
}

async fn open_items_and_month_spend_per_tenant(s: DynStore) {
    let since = Utc::now() - chrono::Duration::hours(1);
    // Running, 3 items submitted, 2 of them settled for 1,500 (over its estimate of 10).
    let (a, shard, tok) = submitted_shard(&s, "acme", 3).await;
    s.record_shard_outcomes(
        &lease(shard, tok),
        &[
            succeeded("item-0", Some(1_000), Mode::Batch),
            succeeded("item-1", Some(500), Mode::Batch),
        ],
    )
    .await
    .unwrap();
    // Queued individual: holds its individual estimate (20); one rejected image.
    s.create_job(
        &new_job("acme", JobStatus::Queued, Mode::Individual, Utc::now()),
        &[item("a", None), item("b", None), rejected("r")],
    )
    .await
    .unwrap();
    // Created before the month: open, but not in its spend.
    s.create_job(
        &new_job("acme", JobStatus::Queued, Mode::Batch, at(0)),
        &[item("a", None)],
    )
    .await
    .unwrap();
    s.create_job(
        &new_job("globex", JobStatus::Queued, Mode::Batch, Utc::now()),
        &[item("a", None)],
    )
    .await
    .unwrap();
    assert_eq!(s.open_items("acme").await.unwrap(), 4);
    assert_eq!(s.open_items("globex").await.unwrap(), 1);
    assert_eq!(s.open_items("nobody").await.unwrap(), 0);
    let spend = s.month_spend("acme", since).await.unwrap();
    assert_eq!(
        (spend.actual_pico_usd, spend.in_flight_pico_usd),
        (0, 1_520)
    );

    assert!(s
        .transition_job(
            a,
            &[JobStatus::Queued, JobStatus::Running],
            JobStatus::Completed
        )
        .await
        .unwrap());
    assert_eq!(
        s.open_items("acme").await.unwrap(),
        3,
        "a finished job holds none"
    );
    let spend = s.month_spend("acme", since).await.unwrap();
    assert_eq!(
        (spend.actual_pico_usd, spend.in_flight_pico_usd),
        (1_500, 20)
    );
    assert_eq!(spend.total(), 1_520);

    // An open job holds its running estimate (auto: the individual one).
    let open = s
        .create_job(
            &new_job("acme", JobStatus::Open, Mode::Auto, Utc::now()),
            &[item("a", None)],
        )
        .await
        .unwrap();
    assert_eq!(
        s.month_spend("acme", since)
            .await
            .unwrap()
            .in_flight_pico_usd,
        40
    );
    assert!(s
        .set_open_estimate(open.id, Some(100), Some(300))
        .await
        .unwrap());
    assert_eq!(
        s.month_spend("acme", since)
            .await
            .unwrap()
            .in_flight_pico_usd,
        320
    );
    assert!(
        !s.set_open_estimate(a, Some(1), Some(1)).await.unwrap(),
        "not open"
    );
    let globex = s.month_spend("globex", since).await.unwrap();
    assert_eq!((globex.actual_pico_usd, globex.in_flight_pico_usd), (0, 10));
}

// ---- read path ----------------------------------------------------------------------

/// The job's version now, checked against its row and `job_version`.
async fn version(s: &DynStore, id: Uuid) -> i64 {
    let v = job(s, id).await.version;
    assert_eq!(s.job_version("acme", id).await.unwrap(), Some(v));
    v
}

/// Asserts whether the job's version moved since `before` (`what` moved it or not), and
/// returns the current one.
async fn check_version(s: &DynStore, id: Uuid, before: i64, moved: bool, what: &str) -> i64 {
    let now = version(s, id).await;
    if moved {
        assert!(now > before, "{what} moves the version ({before} → {now})");
    } else {
        assert_eq!(now, before, "{what} leaves the version alone");
    }
    now
}

/// Runs `step`, then [`check_version`].
macro_rules! moves {
    ($s:expr, $id:expr, $before:expr, $moved:expr, $what:literal, $step:expr) => {{
        $step;
        check_version($s, $id, $before, $moved, $what).await
    }};
}

async fn version_moves_with_what_views_show(s: DynStore) {
    let s = &s;
    let mut batch = items(3);
    batch.push(rejected("bad"));
    let created = s
        .create_job(
            &new_job("acme", JobStatus::Queued, Mode::Batch, at(0)),
            &batch,
        )
        .await
        .unwrap();
    let id = created.id;
    assert_eq!(s.job_version("globex", id).await.unwrap(), None);
    assert_eq!(s.job_version("acme", Uuid::new_v4()).await.unwrap(), None);
    let v = version(s, id).await;
    assert_eq!(v, created.version);

    // Planning: the lease is nobody's business, the new shard is (`batches[]`).
    let (_, t) = claim_plan(s, "p", LEASE, 10).await.unwrap().remove(0);
    let v = check_version(s, id, v, false, "a planning lease").await;
    let shard = new_shard(vec![0, 1, 2], at(0));
    let v = moves!(s, id, v, true, "a new shard", {
        assert!(s
            .create_shards(&job_lease(id, t), std::slice::from_ref(&shard))
            .await
            .unwrap())
    });
    let v = moves!(s, id, v, false, "releasing the plan lease", {
        s.release_job(&job_lease(id, t)).await.unwrap()
    });

    // The submitter: claims, estimates and renewals show nowhere; statuses do.
    let tok = claim(s, &[ShardStatus::Planned], at(10), "w", 10).await[0].lease_token;
    let l = lease(shard.id, tok);
    let v = check_version(s, id, v, false, "a shard claim").await;
    let v = moves!(s, id, v, false, "a shard estimate", {
        assert!(s.set_shard_estimate(&l, 1234).await.unwrap())
    });
    let v = moves!(s, id, v, false, "a lease renewal", {
        assert!(s.renew_shard(&l, LEASE).await.unwrap())
    });
    let v = moves!(s, id, v, true, "an upload (planned → creating)", {
        assert!(s.shard_uploaded(&l, "file-in").await.unwrap())
    });
    let v = moves!(s, id, v, true, "a created batch", {
        assert!(s.shard_submitted(&l, "batch_1", at(20)).await.unwrap())
    });

    // The poller: a poll that learns nothing new leaves it; moving counts move it.
    let poll = ShardPoll {
        batch_status: "in_progress".into(),
        request_total: 3,
        request_completed: 0,
        request_failed: 0,
        output_file_id: None,
        error_file_id: None,
        next_poll_at: at(30),
        poll_interval_ms: 1000,
    };
    let v = moves!(s, id, v, true, "the first poll (batch status)", {
        assert!(s.shard_polled(&l, &poll).await.unwrap())
    });
    let later = ShardPoll {
        next_poll_at: at(40),
        poll_interval_ms: 2000,
        ..poll.clone()
    };
    let v = moves!(s, id, v, false, "a poll with the same counts", {
        assert!(s.shard_polled(&l, &later).await.unwrap())
    });
    let v = moves!(s, id, v, true, "a poll with more lines done", {
        let done = ShardPoll {
            request_completed: 2,
            ..later.clone()
        };
        assert!(s.shard_polled(&l, &done).await.unwrap())
    });
    let v = moves!(s, id, v, true, "a set shard status", {
        assert!(s
            .set_shard_status(&l, ShardStatus::Ingesting, None)
            .await
            .unwrap())
    });

    // Item results, once: the same outcomes again change nothing.
    let outcomes = [succeeded("item-0", Some(7), Mode::Batch), failed("item-1")];
    let v = moves!(s, id, v, true, "item results", {
        assert_eq!(s.record_shard_outcomes(&l, &outcomes).await.unwrap(), 2)
    });
    let v = moves!(s, id, v, false, "the same results again", {
        assert_eq!(s.record_shard_outcomes(&l, &outcomes).await.unwrap(), 0)
    });

    // Cancelling: once; a second cancel finds it cancelling and changes nothing.
    let v = moves!(s, id, v, true, "a cancel", {
        assert_eq!(
            s.cancel_job("acme", id).await.unwrap().status,
            JobStatus::Cancelling
        )
    });
    let v = moves!(s, id, v, false, "a second cancel", {
        s.cancel_job("acme", id).await.unwrap()
    });
    let v = moves!(s, id, v, true, "the leftovers settled", {
        let settled = s
            .settle_shard_items(&l, &crate::store::job_cancelled_error(), Leftover::Cancel)
            .await
            .unwrap();
        assert_eq!(settled.cancelled, 1)
    });
    let v = moves!(s, id, v, true, "finishing", {
        assert_eq!(
            s.finish_job_if_done(id).await.unwrap(),
            Some(JobStatus::Cancelled)
        )
    });
    let v = moves!(s, id, v, false, "finishing a finished job", {
        assert_eq!(s.finish_job_if_done(id).await.unwrap(), None)
    });
    // The webhook the finished job owes: its delivery shows in `webhook`.
    let (_, claim_at) = s
        .claim_webhooks(LEASE, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|(j, _)| j.id == id)
        .expect("the finished job owes its webhook");
    let v = check_version(s, id, v, false, "claiming the webhook").await;
    moves!(s, id, v, true, "a webhook attempt", {
        let attempt = crate::store::WebhookAttempt {
            state: crate::domain::WebhookState::Delivered,
            retry_at: None,
            error: None,
            detail: json!({"status": 200}),
        };
        assert!(s.webhook_attempted(id, claim_at, &attempt).await.unwrap())
    });

    // An open job: each chunk and the submit.
    let open = s
        .create_job(&new_job("acme", JobStatus::Open, Mode::Batch, at(1)), &[])
        .await
        .unwrap();
    let v = version(s, open.id).await;
    let v = moves!(s, open.id, v, true, "appended items", {
        s.append_items("acme", open.id, &items(2)).await.unwrap()
    });
    moves!(s, open.id, v, true, "submitting the open job", {
        s.submit_open_job("acme", open.id, Mode::Batch, "test", None, None)
            .await
            .unwrap()
    });
}

async fn rejections_kept_on_the_job_row(s: DynStore) {
    let mut first: Vec<NewItem> = (0..120).map(|i| rejected(&format!("r{i}"))).collect();
    first.insert(0, item("ok", None));
    let created = s
        .create_job(
            &new_job("acme", JobStatus::Open, Mode::Batch, at(0)),
            &first,
        )
        .await
        .unwrap();
    assert_eq!(created.counts.rejected, 120);
    assert_eq!(created.rejections.len(), 100, "the first 100 are kept");
    assert_eq!(
        (
            created.rejections[0].index,
            created.rejections[0].custom_id.as_str()
        ),
        (1, "r0")
    );
    assert_eq!(
        created.rejections[0].reason,
        "not a PNG, JPEG, WEBP or GIF image"
    );
    assert_eq!(created.rejections[99].custom_id, "r99");
    assert_eq!(job(&s, created.id).await.rejections, created.rejections);

    // An open job fills them chunk by chunk, up to 100.
    let open = s
        .create_job(&new_job("acme", JobStatus::Open, Mode::Batch, at(1)), &[])
        .await
        .unwrap();
    assert!(open.rejections.is_empty());
    let chunk = [item("a", None), rejected("x"), rejected("y")];
    let after = s.append_items("acme", open.id, &chunk).await.unwrap();
    let kept: Vec<(i64, &str)> = after
        .rejections
        .iter()
        .map(|r| (r.index, r.custom_id.as_str()))
        .collect();
    assert_eq!(kept, vec![(1, "x"), (2, "y")]);
    let many: Vec<NewItem> = (0..150).map(|i| rejected(&format!("m{i}"))).collect();
    let full = s.append_items("acme", open.id, &many).await.unwrap();
    assert_eq!(full.rejections.len(), 100);
    assert_eq!(full.rejections[2].index, 3);
    assert_eq!(full.rejections[99].custom_id, "m97");
    let more = s
        .append_items("acme", open.id, &[rejected("z")])
        .await
        .unwrap();
    assert_eq!(more.rejections, full.rejections);
    assert_eq!(more.counts.rejected, 153);
}

async fn shards_of_many_jobs_in_one_read(s: DynStore) {
    let (a, a_shard, _) = submitted_shard(&s, "acme", 2).await;
    let b = s
        .create_job(
            &new_job("acme", JobStatus::Queued, Mode::Batch, at(0)),
            &items(4),
        )
        .await
        .unwrap()
        .id;
    let (_, t) = claim_plan(&s, "p", LEASE, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|(j, _)| j.id == b)
        .unwrap();
    let (one, two) = (new_shard(vec![0, 1], at(0)), new_shard(vec![2, 3], at(0)));
    assert!(s
        .create_shards(&job_lease(b, t), &[one.clone(), two.clone()])
        .await
        .unwrap());
    let (b_shard, b2) = (one.id, two.id);
    let quiet = s
        .create_job(
            &new_job("acme", JobStatus::Queued, Mode::Batch, at(0)),
            &items(1),
        )
        .await
        .unwrap();
    assert!(s.list_shards_of_jobs(&[]).await.unwrap().is_empty());
    let shards = s
        .list_shards_of_jobs(&[a, b, quiet.id, Uuid::new_v4()])
        .await
        .unwrap();
    // By job; within a job, as `list_shards` orders them.
    let got: Vec<(Uuid, Uuid)> = shards.iter().map(|x| (x.job_id, x.id)).collect();
    let mut expected = vec![(a, a_shard), (b, b_shard), (b, b2)];
    let mut got_sorted = got.clone();
    got_sorted.sort();
    expected.sort();
    assert_eq!(got_sorted, expected);
    let mut by_job = got.clone();
    by_job.sort_by_key(|(job, _)| *job);
    assert_eq!(got, by_job);
    for job_id in [a, b] {
        let one: Vec<_> = shards
            .iter()
            .filter(|x| x.job_id == job_id)
            .cloned()
            .collect();
        assert_eq!(one, s.list_shards(job_id).await.unwrap());
    }

    // A job's view in one statement: its row and its shards, oldest first.
    for job_id in [a, b, quiet.id] {
        let (row, shards) = s
            .job_with_shards(Some("acme"), job_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row, job(&s, job_id).await);
        assert_eq!(shards, s.list_shards(job_id).await.unwrap());
        assert_eq!(
            s.job_with_shards(None, job_id).await.unwrap().unwrap().0,
            row
        );
    }
    assert_eq!(s.list_shards(b).await.unwrap().len(), 2);
    assert!(s
        .job_with_shards(Some("globex"), a)
        .await
        .unwrap()
        .is_none());
    assert!(s
        .job_with_shards(None, Uuid::new_v4())
        .await
        .unwrap()
        .is_none());
}

async fn item_pages_skip_the_image(s: DynStore) {
    let list = [
        item("a", Some("p2")),
        item("b", None),
        item("c", Some("p1")),
    ];
    let created = s
        .create_job(
            &new_job("acme", JobStatus::Queued, Mode::Batch, at(0)),
            &list,
        )
        .await
        .unwrap();
    let page = s.list_items(created.id, None, None, 10).await.unwrap();
    assert_eq!(page.len(), 3);
    assert!(page.iter().all(|i| i.image.is_empty()), "{page:?}");
    let posts = s.list_items_by_post(created.id, None, 10).await.unwrap();
    assert!(posts.iter().all(|i| i.image.is_empty()));
    // The writers that send images still read them.
    let (_, shard_id, _) = submitted_shard(&s, "acme", 1).await;
    let sent = s.shard_items(shard_id, None, 10).await.unwrap();
    assert_eq!(sent[0].image, "https://cdn.example.com/item-0.jpg");
}

async fn rate_budget_takes_refills_pauses_and_keys_accounts(s: DynStore) {
    use super::{BudgetOp, BudgetRefill};
    // 2 requests/s, 100 tokens/s, holding 2 requests and 100 tokens.
    let refill = BudgetRefill {
        requests_per_sec: 2.0,
        tokens_per_sec: 100.0,
        max_requests: 2.0,
        max_tokens: 100.0,
    };
    let take = |tokens| BudgetOp::Take { tokens };
    // A new row starts full: two takes pass, the third does not.
    let first = s
        .budget_step("acct-a", "m", &refill, take(10.0))
        .await
        .unwrap();
    assert!(first.granted, "{first:?}");
    assert!(
        s.budget_step("acct-a", "m", &refill, take(10.0))
            .await
            .unwrap()
            .granted
    );
    let third = s
        .budget_step("acct-a", "m", &refill, take(10.0))
        .await
        .unwrap();
    assert!(!third.granted, "{third:?}");
    assert!(third.requests < 1.0 && third.requests >= 0.0, "{third:?}");
    // Another account's row is its own.
    assert!(
        s.budget_step("acct-b", "m", &refill, take(10.0))
            .await
            .unwrap()
            .granted
    );
    // Refill: after 0.6 s at 2/s there is a request again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        s.budget_step("acct-a", "m", &refill, take(10.0))
            .await
            .unwrap()
            .granted
    );
    // Debt: a call that counted 300 more tokens leaves the level below zero and blocks takes.
    let debt = s
        .budget_step("acct-a", "m", &refill, BudgetOp::AdjustTokens(300.0))
        .await
        .unwrap();
    assert!(debt.tokens < -100.0, "{debt:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let blocked = s
        .budget_step("acct-a", "m", &refill, take(10.0))
        .await
        .unwrap();
    assert!(!blocked.granted && blocked.requests >= 1.0, "{blocked:?}");
    // Giving back never raises the level above what it holds.
    let back = s
        .budget_step("acct-a", "m", &refill, BudgetOp::AdjustTokens(-10_000.0))
        .await
        .unwrap();
    assert_eq!(back.tokens, 100.0);
    // Lowered to what OpenAI says is left.
    let low = s
        .budget_step(
            "acct-a",
            "m",
            &refill,
            BudgetOp::LowerTo {
                requests: Some(0.0),
                tokens: None,
            },
        )
        .await
        .unwrap();
    assert!(low.requests < 0.1, "{low:?}");
    // A pause is on the row: a take right after it does not pass and says how long.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let paused = s
        .budget_step(
            "acct-a",
            "m",
            &refill,
            BudgetOp::Pause(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert!(paused.paused_for > Duration::from_secs(29), "{paused:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let held = s
        .budget_step("acct-a", "m", &refill, take(1.0))
        .await
        .unwrap();
    assert!(!held.granted && held.requests >= 1.0, "{held:?}");
    assert!(held.paused_for > Duration::from_secs(28), "{held:?}");
    // The other account is not paused.
    assert!(
        s.budget_step("acct-b", "m", &refill, take(1.0))
            .await
            .unwrap()
            .granted
    );
}
