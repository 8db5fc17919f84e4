//! Building batch input files: 10,000 inline 60 KB images written as JSONL from the
//! store, measuring MB/s and the peak memory of the writing alone (the file is ~800 MB;
//! a writer that held it in memory would show it).
//!
//! `cargo bench --bench jsonl` (`BENCH_IMAGES=…`, `BENCH_IMAGE_KB=…` to change the size).

mod common;

use std::time::Instant;

use batchlens::domain::{Detail, ShardKind, ShardStatus};
use batchlens::pipeline::batch::jsonl::{write_shard_file, LineTemplate};

/// Items per store read in the stage timings.
const PAGE: i64 = 100;

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
    let file_len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(file_len, bytes);
    std::fs::remove_file(&path).unwrap();

    // The stages apart, over the same pages: the store's reads alone, then reads and
    // formatting into one reused buffer (nothing written). The lines' lengths add up to
    // what the file must hold.
    let compiled = template.compile();
    let stage = |format: bool| {
        let (store, compiled) = (&store, &compiled);
        async move {
            let start = Instant::now();
            let (mut after, mut lines, mut expected) = (None, 0usize, 0u64);
            let mut buf = Vec::with_capacity(1 << 21);
            loop {
                let page = store.shard_lines(shard_id, after, PAGE).await.unwrap();
                let Some(last) = page.len().checked_sub(1) else {
                    break;
                };
                after = Some(page.line(last).unwrap().position);
                lines += page.len();
                if format {
                    for item in page.lines() {
                        let item = item.unwrap();
                        buf.clear();
                        compiled.write_line(&mut buf, item.custom_id, item.image);
                        expected += buf.len() as u64;
                    }
                }
            }
            assert_eq!(lines, images);
            (start.elapsed(), expected)
        }
    };
    let (read, _) = stage(false).await;
    let (read_format, expected) = stage(true).await;
    assert_eq!(file_len, expected, "the file holds exactly its lines");
    println!("jsonl benchmark: {images} inline images of {kb} KB");
    println!(
        "  file: {:.1} MB in {:.2} s = {:.1} MB/s",
        bytes as f64 / 1e6,
        took.as_secs_f64(),
        bytes as f64 / 1e6 / took.as_secs_f64()
    );
    println!(
        "  stages alone: store reads {:.2} s; reads + formatting {:.2} s (formatting {:.2} s); \
         the rest of the write (file writes, sync) {:.2} s",
        read.as_secs_f64(),
        read_format.as_secs_f64(),
        (read_format.saturating_sub(read)).as_secs_f64(),
        took.saturating_sub(read_format).as_secs_f64()
    );
    println!("  RSS before writing: {before:.1} MiB; peak while writing: {peak:.1} MiB (target < 200 MiB)");
}
