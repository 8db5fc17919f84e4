//! The read path: a job's view from its row and its shards (rejections summarised on the
//! row), job listings, conditional GETs (`ETag: "v<version>"`, 304 on a match), and the
//! plans of the item pages on a 100,000-item job.

use std::time::Duration;

use batchlens::store::{DynStore, PgStore};
use reqwest::header::{CACHE_CONTROL, ETAG, IF_NONE_MATCH};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{b64, fast_sim, mixed_items, Db, TestApp};

on_both!(
    a_job_with_1600_rejections_answers_its_summary,
    etags_move_with_the_job_and_answer_304,
    etags_move_alike_with_the_view_cache_off,
    job_listings_match_the_job_views,
);

/// `n` items that are not images (rejected at intake) after `ok` usable URL items.
fn items_with_rejections(ok: usize, n: usize) -> Vec<Value> {
    let pdf = b64(b"%PDF-1.4 not an image");
    let good = (0..ok).map(|i| {
        json!({"custom_id": format!("ok-{i}"), "post_id": "p",
               "image_url": format!("https://cdn.example.com/{i}.jpg")})
    });
    let bad = (0..n).map(
        |i| json!({"custom_id": format!("bad-{i}"), "image_base64": pdf, "mime_type": "image/png"}),
    );
    good.chain(bad).collect()
}

async fn a_job_with_1600_rejections_answers_its_summary(db: Db) {
    // The batch stays in flight while the job is read.
    let sim = openai_sim::SimConfig {
        in_progress_ms: 600_000,
        ..fast_sim()
    };
    let Some(app) = TestApp::spawn(db, sim, &[]).await else {
        return;
    };
    let (status, created) = app
        .post(
            "/v1/jobs",
            &json!({"mode": "batch", "items": items_with_rejections(2, 1600)}),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["progress"]["rejected"], 1600);
    let id = created["id"].as_str().unwrap();

    let (status, job) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["progress"]["total"], 1602);
    assert_eq!(job["progress"]["rejected"], 1600);
    assert_eq!(job["progress"]["percent"], 0.0);
    let rejected = job["rejected"].as_array().unwrap();
    assert_eq!(
        rejected.len(),
        100,
        "the first 100, the rest through /results"
    );
    assert_eq!(rejected[0]["index"], 2);
    assert_eq!(rejected[0]["custom_id"], "bad-0");
    assert_eq!(rejected[99]["custom_id"], "bad-99");
    assert!(
        rejected[0]["reason"].as_str().unwrap().contains("PDF"),
        "{}",
        rejected[0]
    );
    // The same reasons as the submit answered.
    assert_eq!(job["rejected"][5], created["rejected"][5]);

    // All 1,600 through the results, in pages.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs/{id}/results?status=rejected&limit=500&cursor={c}"),
            None => format!("/v1/jobs/{id}/results?status=rejected&limit=500"),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200, "{page}");
        for r in page["data"].as_array().unwrap() {
            assert_eq!(r["status"], "rejected");
            seen.push(r["custom_id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..1600).map(|i| format!("bad-{i}")).collect();
    assert_eq!(seen, expected);
    app.shutdown().await;
}

/// GETs `path` with an optional `If-None-Match`: status, ETag, Cache-Control, body text.
async fn conditional_get(
    app: &TestApp,
    path: &str,
    if_none_match: Option<&str>,
) -> (StatusCode, Option<String>, Option<String>, String) {
    let mut request = app.http.get(app.url(path));
    if let Some(tag) = if_none_match {
        request = request.header(IF_NONE_MATCH, tag);
    }
    let response = request.send().await.unwrap();
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &reqwest::header::HeaderValue| v.to_str().unwrap().to_string())
    };
    let (etag, cache) = (header(ETAG), header(CACHE_CONTROL));
    let status = response.status();
    (status, etag, cache, response.text().await.unwrap())
}

/// The views that carry the job's ETag.
fn views(id: &str) -> [String; 4] {
    [
        format!("/v1/jobs/{id}"),
        format!("/v1/jobs/{id}/results?limit=100"),
        format!("/v1/jobs/{id}/posts"),
        format!("/v1/jobs/{id}/cost"),
    ]
}

/// Every view answers 200 tagged `tag` without a condition and 304 (no body, the same
/// tag) with it; returns the tag.
async fn all_tagged_alike(app: &TestApp, id: &str) -> String {
    let (_, tag, _, _) = conditional_get(app, &format!("/v1/jobs/{id}"), None).await;
    let tag = tag.expect("the job carries an ETag");
    for path in views(id) {
        let (status, etag, cache, body) = conditional_get(app, &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(etag.as_deref(), Some(tag.as_str()), "{path}");
        assert_eq!(cache.as_deref(), Some("no-cache"), "{path}");
        assert!(body.starts_with('{'), "{path}: {body}");
        let (status, etag, cache, body) = conditional_get(app, &path, Some(&tag)).await;
        assert_eq!(status, 304, "{path}");
        assert_eq!(body, "", "a 304 has no body");
        assert_eq!(etag.as_deref(), Some(tag.as_str()), "{path}");
        assert_eq!(cache.as_deref(), Some("no-cache"), "{path}");
    }
    tag
}

async fn etags_move_with_the_job_and_answer_304(db: Db) {
    etags_move(db, &[]).await;
}

/// The same with no rendered views kept: every 200 renders the row and shards afresh.
async fn etags_move_alike_with_the_view_cache_off(db: Db) {
    etags_move(db, &[("BATCHLENS__SERVER__JOB_VIEW_CACHE_BYTES", "0")]).await;
}

async fn etags_move(db: Db, extra: &[(&str, &str)]) {
    let Some(app) = TestApp::spawn(db, fast_sim(), extra).await else {
        return;
    };
    // An open job: nothing moves until a chunk arrives.
    let (status, open) = app
        .post(
            "/v1/jobs",
            &json!({"open": true, "mode": "batch", "items": []}),
        )
        .await;
    assert_eq!(status, 202, "{open}");
    let id = open["id"].as_str().unwrap().to_string();
    let (status, _) = app
        .post(
            &format!("/v1/jobs/{id}/items"),
            &json!({"items": mixed_items(4, 0)}),
        )
        .await;
    assert_eq!(status, 200);
    let filled = all_tagged_alike(&app, &id).await;
    assert!(
        filled.starts_with("\"v") && filled.ends_with('"'),
        "{filled}"
    );
    // Nothing changed: the same tag, again and again.
    assert_eq!(all_tagged_alike(&app, &id).await, filled);

    // A list, a weak tag and `*` match too; another tag does not.
    let job = format!("/v1/jobs/{id}");
    let weak = format!("W/{filled}");
    let list = format!("\"v0\", {filled}");
    for tag in [weak.as_str(), list.as_str(), "*"] {
        let (status, _, _, body) = conditional_get(&app, &job, Some(tag)).await;
        assert_eq!((status.as_u16(), body.as_str()), (304, ""), "{tag}");
    }
    let (status, _, _, body) = conditional_get(&app, &job, Some("\"v0\"")).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["id"], id);
    // An unknown job is a 404 whatever the condition.
    let unknown = format!("/v1/jobs/{}", uuid::Uuid::new_v4());
    let (status, _, _, body) = conditional_get(&app, &unknown, Some("*")).await;
    assert_eq!(status, 404);
    let problem: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(
        problem["type"], "https://batchlens.dev/problems/not-found",
        "{problem}"
    );
    // The stream of results carries no tag.
    let ndjson = app
        .http
        .get(app.url(&format!("/v1/jobs/{id}/results")))
        .header("accept", "application/x-ndjson")
        .header(IF_NONE_MATCH, &filled)
        .send()
        .await
        .unwrap();
    assert_eq!(ndjson.status(), 200);
    assert!(ndjson.headers().get(ETAG).is_none());
    assert_eq!(ndjson.text().await.unwrap().lines().count(), 4);

    // Another chunk moves it: the old tag now gets the new view.
    let (status, _) = app
        .post(
            &format!("/v1/jobs/{id}/items"),
            &json!({"items": [{"custom_id": "late", "image_url": "https://cdn.example.com/late.jpg"}]}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, moved, _, body) = conditional_get(&app, &job, Some(&filled)).await;
    assert_eq!(status, 200);
    assert_ne!(moved.as_deref(), Some(filled.as_str()));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["progress"]["total"],
        5
    );
    let appended = all_tagged_alike(&app, &id).await;

    // Submitted, it runs to the end; every status it is seen in has its own tag.
    let (status, _) = app.post(&format!("/v1/jobs/{id}/submit"), &json!({})).await;
    assert_eq!(status, 202);
    let mut seen: Vec<(String, String)> = Vec::new();
    let done = loop {
        let (status, tag, _, body) = conditional_get(&app, &job, None).await;
        assert_eq!(status, 200);
        let view: Value = serde_json::from_str(&body).unwrap();
        let state = format!(
            "{} {} {}",
            view["status"], view["progress"], view["batches"]
        );
        let tag = tag.unwrap();
        match seen.iter().find(|(_, t)| *t == tag) {
            // A tag seen before names the same view.
            Some((earlier, _)) => assert_eq!(*earlier, state, "{tag} named two views"),
            None => seen.push((state, tag)),
        }
        if view["status"] == "completed" {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done["progress"]["succeeded"], 5, "{done}");
    assert!(seen.len() >= 2, "the job moved: {seen:?}");
    assert!(seen.iter().all(|(_, t)| *t != appended && *t != filled));
    // Finished, it stays put: the results and the cost answer the same tag, and 304.
    let finished = all_tagged_alike(&app, &id).await;
    assert_eq!(all_tagged_alike(&app, &id).await, finished);
    let (status, _, _, body) =
        conditional_get(&app, &format!("/v1/jobs/{id}/results"), Some(&appended)).await;
    assert_eq!(status, 200, "an old tag gets the current results");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert!(page["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == "succeeded"));
    app.shutdown().await;
}

async fn job_listings_match_the_job_views(db: Db) {
    let Some(app) = TestApp::spawn(db, fast_sim(), &[]).await else {
        return;
    };
    // Three jobs that run (with batches, one with rejections) and two open ones.
    let mut ids = Vec::new();
    for (i, items) in [
        mixed_items(3, 0),
        items_with_rejections(2, 120),
        mixed_items(5, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, job) = app
            .post(
                "/v1/jobs",
                &json!({"name": format!("run-{i}"), "mode": "batch", "items": items}),
            )
            .await;
        assert_eq!(status, 202, "{job}");
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        app.wait_terminal(id, Duration::from_secs(60)).await;
    }
    for i in 0..2 {
        let (status, job) = app
            .post(
                "/v1/jobs",
                &json!({"name": format!("open-{i}"), "open": true, "items": mixed_items(1, 0)}),
            )
            .await;
        assert_eq!(status, 202, "{job}");
        ids.push(job["id"].as_str().unwrap().to_string());
    }

    // Pages of two, newest first, each entry exactly the job's own view.
    let mut listed: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=2&cursor={c}"),
            None => "/v1/jobs?limit=2".to_string(),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        listed.extend(data.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let order: Vec<&str> = listed.iter().map(|j| j["id"].as_str().unwrap()).collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(order, newest_first);
    for entry in &listed {
        let (status, view) = app
            .get(&format!("/v1/jobs/{}", entry["id"].as_str().unwrap()))
            .await;
        assert_eq!(status, 200);
        assert_eq!(*entry, view, "a listed job is its view");
    }
    let with_rejections = &listed[3];
    assert_eq!(with_rejections["name"], "run-1");
    assert_eq!(with_rejections["rejected"].as_array().unwrap().len(), 100);
    assert_eq!(with_rejections["progress"]["rejected"], 120);
    for run in &listed[2..] {
        assert_eq!(run["status"], "completed", "{run}");
        assert!(!run["batches"].as_array().unwrap().is_empty(), "{run}");
    }
    for open in &listed[..2] {
        assert!(open["batches"].as_array().unwrap().is_empty(), "{open}");
    }
    // Filtered by status, the same views.
    let (_, completed) = app.get("/v1/jobs?status=completed&limit=10").await;
    assert_eq!(completed["data"].as_array().unwrap()[..], listed[2..]);
    app.shutdown().await;
}

/// A 100,000-item job on PostgreSQL: every results and posts page is served by an index
/// (no sequential scan of `items`), as the plans show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_item_pages_use_an_index_on_a_100000_item_job() {
    let Some(database) = testkit::PgDatabase::create("bl_plans").await else {
        return;
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(database.connect_options())
        .await
        .unwrap();
    let store = PgStore::from_pool(pool.clone());
    store.migrate().await.unwrap();
    let job_id = big_job(&pool, &store, 100_000).await;
    let small = big_job(&pool, &store, 1_000).await;
    assert_ne!(job_id, small);
    sqlx::query("ANALYZE items").execute(&pool).await.unwrap();

    let plans = store.read_path_plans(job_id).await.unwrap();
    assert_eq!(plans.len(), 6);
    for (page, plan) in &plans {
        assert!(!plan.contains("Seq Scan"), "{page}:\n{plan}");
        assert!(plan.contains("Index"), "{page}:\n{plan}");
        assert!(!plan.contains("Sort"), "{page} needs no sort:\n{plan}");
    }
    // The pages themselves, through the store.
    let s: DynStore = std::sync::Arc::new(store);
    let page = s.list_items(job_id, None, Some(49_999), 100).await.unwrap();
    assert_eq!(page.first().map(|i| i.position), Some(50_000));
    assert_eq!(page.len(), 100);
    assert!(page.iter().all(|i| i.image.is_empty()));
    let posts = s
        .list_items_by_post(job_id, Some((Some("post-12345".into()), 49_383)), 10)
        .await
        .unwrap();
    let keys: Vec<(Option<String>, i64)> = posts
        .iter()
        .map(|i| (i.post_id.clone(), i.position))
        .collect();
    assert_eq!(keys[0], (Some("post-12346".into()), 49_384));
    s.close().await;
}

/// A queued batch job of `n` items inserted in one statement (the first half succeeded,
/// every tenth item without a post). Returns its id.
async fn big_job(pool: &sqlx::PgPool, store: &PgStore, n: i64) -> uuid::Uuid {
    use batchlens::domain::{Detail, Fetch, JobStatus, Mode, NewJob};
    use batchlens::store::prelude::*;
    let job = NewJob {
        id: uuid::Uuid::new_v4(),
        tenant: "acme".into(),
        name: None,
        model: "gpt-4o-mini".into(),
        requested_mode: Mode::Batch,
        mode: Mode::Batch,
        mode_reason: "test".into(),
        detail: Detail::Low,
        analyzer: batchlens::analyzer::fashion(),
        metadata: None,
        webhook_url: None,
        fetch: Fetch::Pass,
        reuse: true,
        status: JobStatus::Queued,
        estimate_batch_pico_usd: None,
        estimate_individual_pico_usd: None,
        created_at: chrono::Utc::now(),
    };
    store.create_job(&job, &[]).await.unwrap();
    sqlx::query(
        "INSERT INTO items (job_id, position, custom_id, post_id, image, image_bytes, status, \
         output, updated_at) \
         SELECT $1, g, 'img-' || g, CASE WHEN g % 10 = 9 THEN NULL ELSE 'post-' || (g / 4) END, \
           'data:image/png;base64,' || repeat('A', 400), 422, \
           CASE WHEN g < $2 / 2 THEN 'succeeded' ELSE 'submitted' END, \
           CASE WHEN g < $2 / 2 THEN '{\"category\": \"dress\"}'::jsonb END, now() \
         FROM generate_series(0, $2 - 1) AS g",
    )
    .bind(job.id)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
    job.id
}
