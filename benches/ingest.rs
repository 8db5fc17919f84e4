//! Ingesting a 50,000-line batch output file into PostgreSQL: results per second through
//! the real ingester (parse, validation and pricing on a blocking thread, pipelined with
//! one UPDATE per `ingest::CHUNK` results),
//! against a baseline that writes each result with its own statement.
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench --bench ingest`
//! (`BENCH_LINES=…` to change the size). Prints figures; asserts nothing about time.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use batchlens::analyzer::OutputValidator;
use batchlens::config::Settings;
use batchlens::cost::pricing::PriceTable;
use batchlens::domain::{ItemStatus, ShardKind, ShardStatus};
use batchlens::pipeline::batch::ingest;
use batchlens::pipeline::WorkerContext;
use batchlens::providers::openai::{Batch, BatchOutputLine, OpenAiClient, OpenAiConfig};
use chrono::Utc;
use serde_json::json;

fn output_line(i: usize, content: &str) -> String {
    json!({"id": format!("batch_req_{i}"), "custom_id": format!("img-{i}"),
        "response": {"status_code": 200, "request_id": format!("req_{i}"), "body": {
            "id": format!("chatcmpl-{i}"), "object": "chat.completion", "created": 1_700_000_000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null},
                         "finish_reason": "stop", "logprobs": null}],
            "usage": {"prompt_tokens": 2900, "completion_tokens": 61, "total_tokens": 2961,
                      "prompt_tokens_details": {"cached_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0}}}},
        "error": null})
    .to_string()
}

fn sample_answer() -> String {
    let schema = batchlens::analyzer::fashion().schema;
    let mut out = serde_json::Map::new();
    for (name, prop) in schema["properties"].as_object().unwrap() {
        let value = if let Some(choices) = prop["enum"].as_array() {
            choices[0].clone()
        } else if prop["type"] == "array" {
            json!(["black", "white"])
        } else {
            json!("a short text")
        };
        out.insert(name.clone(), value);
    }
    serde_json::Value::Object(out).to_string()
}

#[tokio::main]
async fn main() {
    let Ok(admin) = std::env::var("DATABASE_URL") else {
        eprintln!("set DATABASE_URL=postgres://… to run this benchmark");
        return;
    };
    let lines: usize = std::env::var("BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let name = format!("bl_bench_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&pool)
        .await
        .unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let result = std::panic::AssertUnwindSafe(run(&url, lines));
    let outcome = futures::FutureExt::catch_unwind(result).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&pool)
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn run(url: &str, lines: usize) {
    let store = batchlens::store::connect(url).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut env = std::collections::HashMap::new();
    env.insert("DATABASE_URL".to_string(), url.to_string());
    env.insert(
        "BATCHLENS__DATA_DIR".to_string(),
        data.path().display().to_string(),
    );
    let settings = Arc::new(Settings::load_from(None, &env).unwrap());
    let ctx = WorkerContext {
        store: store.clone(),
        provider: Arc::new(
            OpenAiClient::new(OpenAiConfig::new(
                "http://127.0.0.1:9/v1",
                "sk-unused".to_string().into(),
            ))
            .unwrap(),
        ),
        settings: settings.clone(),
        prices: Arc::new(PriceTable::defaults()),
        replica: "bench".into(),
    };
    let answer = sample_answer();

    // The batchlens path.
    let (job_id, shard_id) = common::job_with_one_shard(&store, lines, |i| {
        format!("https://cdn.example.com/{i}.jpg")
    })
    .await;
    let shard = submit(&store, shard_id).await;
    let dir = batchlens::pipeline::batch::jsonl::shard_dir(&settings.data_dir, job_id);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{shard_id}.output.jsonl"));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for i in (0..lines).rev() {
        writeln!(file, "{}", output_line(i, &answer)).unwrap();
    }
    file.flush().unwrap();
    drop(file);
    let size = std::fs::metadata(&path).unwrap().len();
    let batch: Batch = serde_json::from_value(json!({
        "id": "batch_bench", "object": "batch", "endpoint": "/v1/chat/completions",
        "input_file_id": "file-in", "completion_window": "24h", "status": "completed",
        "created_at": Utc::now().timestamp(), "output_file_id": "file-out", "error_file_id": null,
        "request_counts": {"total": lines, "completed": lines, "failed": 0}}))
    .unwrap();
    // What the ingester does before writing: read, parse, validate and price every line.
    let job = store.get_job(None, job_id).await.unwrap().unwrap();
    let validator = OutputValidator::new(&job.analyzer.schema).unwrap();
    let start = Instant::now();
    let text = std::fs::read_to_string(&path).unwrap();
    let judged = text
        .lines()
        .map(|l| {
            let line: BatchOutputLine = serde_json::from_str(l).unwrap();
            ingest::verdict_of(&ctx.prices, line, &job.model, &validator)
        })
        .filter(|v| v.outcome.status == ItemStatus::Succeeded)
        .count();
    let parse_only = start.elapsed();
    assert_eq!(judged, lines);
    drop(text);

    let start = Instant::now();
    let report = ingest::ingest(&ctx, &shard, &batch).await.unwrap();
    let ours = start.elapsed();
    assert_eq!(report.succeeded as usize, lines);
    let job = store.get_job(None, job_id).await.unwrap().unwrap();
    assert_eq!(job.counts.succeeded as usize, lines);

    // Baseline: the same results, one UPDATE statement (one round trip) per row.
    let (job2, shard2) = common::job_with_one_shard(&store, lines, |i| {
        format!("https://cdn.example.com/{i}.jpg")
    })
    .await;
    submit(&store, shard2).await;
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let start = Instant::now();
    let mut tx = pool.begin().await.unwrap();
    for i in 0..lines {
        sqlx::query(
            "UPDATE items SET status = 'succeeded', output = $3::jsonb, input_tokens = 2900, \
             cached_input_tokens = 0, output_tokens = 61, cost_pico_usd = $4, finished_at = now() \
             WHERE job_id = $1 AND custom_id = $2 AND status = 'submitted'",
        )
        .bind(job2)
        .bind(format!("img-{i}"))
        .bind(&answer)
        .bind(2900i64 * 75_000 + 61 * 300_000)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let baseline = start.elapsed();

    let rate = |d: Duration| lines as f64 / d.as_secs_f64();
    println!(
        "ingest benchmark: {lines} output lines ({:.1} MB) into PostgreSQL",
        size as f64 / 1e6
    );
    println!("  batchlens ingester (stream, validate, price, 1 UPDATE per {}): {:>8.2} s  {:>9.0} results/s", ingest::CHUNK, ours.as_secs_f64(), rate(ours));
    println!("  of which reading, parsing, validating, pricing alone (1 thread): {:>8.2} s  {:>9.0} lines/s", parse_only.as_secs_f64(), rate(parse_only));
    println!("  baseline, one statement per row (no parse, no validation):     {:>8.2} s  {:>9.0} results/s", baseline.as_secs_f64(), rate(baseline));
    println!(
        "  speed-up: {:.1}x",
        baseline.as_secs_f64() / ours.as_secs_f64()
    );
}

/// Moves the shard to submitted the way the submitter does and returns it leased.
async fn submit(
    store: &batchlens::store::DynStore,
    shard_id: uuid::Uuid,
) -> batchlens::store::LeasedShard {
    let lease = Duration::from_secs(600);
    let claimed = store
        .claim_shards(
            ShardKind::Batch,
            &[ShardStatus::Planned],
            Utc::now(),
            "bench",
            lease,
            100,
        )
        .await
        .unwrap();
    let shard = claimed.into_iter().find(|s| s.id == shard_id).unwrap();
    assert!(store.shard_uploaded(&shard.lease, "file-in").await.unwrap());
    assert!(store
        .shard_submitted(&shard.lease, "batch_bench", Utc::now())
        .await
        .unwrap());
    shard
}
