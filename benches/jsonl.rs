//! Building batch input files: 10,000 inline 60 KB images written as JSONL from the
//! store, measuring MB/s and the peak memory of the writing alone (the file is ~800 MB;
//! a writer that held it in memory would show it).
//!
//! `cargo bench --bench jsonl` (`BENCH_IMAGES=…`, `BENCH_IMAGE_KB=…` to change the size).

mod common;

use std::time::Instant;

use batchlens::domain::{Detail, ShardKind, ShardStatus};
use batchlens::pipeline::batch::jsonl::{write_shard_file, LineTemplate};

#[tokio::main]
async fn main() {
    let images: usize = std::env::var("BENCH_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let kb: usize = std::env::var("BENCH_IMAGE_KB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = batchlens::store::connect(&url).await.unwrap();
    // Distinct bytes per image so nothing is shared or compressed away.
    let image = |i: usize| {
        let mut bytes = vec![0u8; kb * 1024];
        for (j, b) in bytes.iter_mut().enumerate() {
            *b = (j.wrapping_mul(31) ^ i.wrapping_mul(7919)) as u8;
        }
        testkit::data_url("image/jpeg", &bytes)
    };
    let (_, shard_id) = common::job_with_one_shard(&store, images, image).await;
    let shard = store
        .claim_shards(
            ShardKind::Batch,
            &[ShardStatus::Planned],
            chrono::Utc::now(),
            "bench",
            std::time::Duration::from_secs(600),
            10,
        )
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.id == shard_id)
        .unwrap();
    let analyzer = common::analyzer();
    let template = LineTemplate {
        analyzer: &analyzer,
        model: "gpt-4o-mini",
        detail: Detail::Low,
        max_completion_tokens: 600,
    };
    let before = common::rss_mib();
    common::reset_peak_rss();
    let start = Instant::now();
    let (path, bytes) = write_shard_file(&store, dir.path(), &shard, &template)
        .await
        .unwrap();
    let took = start.elapsed();
    let peak = common::peak_rss_mib();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);
    println!("jsonl benchmark: {images} inline images of {kb} KB");
    println!(
        "  file: {:.1} MB in {:.2} s = {:.1} MB/s",
        bytes as f64 / 1e6,
        took.as_secs_f64(),
        bytes as f64 / 1e6 / took.as_secs_f64()
    );
    println!("  RSS before writing: {before:.1} MiB; peak while writing: {peak:.1} MiB (target < 200 MiB)");
}
