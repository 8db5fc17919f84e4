//! Shared by the benchmarks: peak memory readings, a store with one big shard, and the
//! service running in-process against a simulator.
#![allow(dead_code)]

use std::time::Duration;

use batchlens::domain::{
    Analyzer, Detail, Fetch, ItemStatus, JobStatus, Mode, NewItem, NewJob, ShardKind,
};
use batchlens::store::{DynStore, NewShard};
use chrono::Utc;
use uuid::Uuid;

/// Resets the kernel's peak-RSS mark for this process (Linux), so the next reading
/// covers only what follows.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size since the last reset, in MiB (VmHWM).
pub fn peak_rss_mib() -> f64 {
    read_status("VmHWM:")
}

pub fn rss_mib() -> f64 {
    read_status("VmRSS:")
}

fn read_status(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    x = x.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    x ^ (x >> 33)
}

/// A synthetic photo as a JPEG at `quality`: smooth gradients and waves, texture in
/// `cell` px cells (detail that survives a 4x downscale, as a photo's does) and per-pixel
/// sensor noise of ±`noise`: close enough to a photo for a JPEG encoder's output size, a decoder's and
/// a resizer's work. The same `seed` gives the same bytes.
pub fn photo_jpeg(
    seed: u64,
    (width, height): (u32, u32),
    quality: u8,
    cell: u32,
    noise: u64,
) -> Vec<u8> {
    use image::{codecs::jpeg::JpegEncoder, ExtendedColorType, ImageEncoder, RgbImage};
    let mut state = mix(seed) | 1;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % (2 * noise + 1)) as i32 - noise as i32
    };
    let phase = (seed % 97) as f32 / 97.0;
    let img = RgbImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        let wave = ((fx * 6.0 + phase * 6.3).sin() * (fy * 4.0).cos() * 40.0) as i32;
        let cell = mix(seed << 40 ^ u64::from(x / cell) << 20 ^ u64::from(y / cell));
        let texture = (cell % 49) as i32 - 24;
        let base = [
            (fx * 200.0) as i32 + 30 + wave + texture,
            (fy * 180.0) as i32 + 40 - wave / 2 + texture,
            ((1.0 - fx) * fy * 220.0) as i32 + 20 + texture / 2,
        ];
        image::Rgb(base.map(|c| (c + noise()).clamp(0, 255) as u8))
    });
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(img.as_raw(), width, height, ExtendedColorType::Rgb8)
        .expect("encoding a generated photo");
    out
}

pub fn new_job(model: &str) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        tenant: "bench".into(),
        name: Some("bench".into()),
        model: model.into(),
        requested_mode: Mode::Batch,
        mode: Mode::Batch,
        mode_reason: "bench".into(),
        detail: Detail::Low,
        analyzer: batchlens::analyzer::fashion(),
        metadata: None,
        webhook_url: None,
        fetch: Fetch::Pass,
        reuse: true,
        status: JobStatus::Open,
        estimate_batch_pico_usd: None,
        estimate_individual_pico_usd: None,
        created_at: Utc::now(),
    }
}

pub fn item(i: usize, image: String) -> NewItem {
    NewItem {
        custom_id: format!("img-{i}"),
        post_id: Some(format!("post-{}", i / 4)),
        image,
        width: Some(512),
        height: Some(512),
        status: ItemStatus::Pending,
        error: None,
        note: None,
        content_sha256: None,
        reuse_key: None,
        reuse: batchlens::domain::ItemReuse::Sent,
    }
}

/// Creates an open job, fills it in chunks (so filling does not hold everything in
/// memory), submits it and plans it as one batch shard. Returns the job and shard ids.
pub async fn job_with_one_shard(
    store: &DynStore,
    n: usize,
    image: impl Fn(usize) -> String,
) -> (Uuid, Uuid) {
    let job = new_job("gpt-4o-mini");
    store.create_job(&job, &[]).await.unwrap();
    let mut start = 0;
    while start < n {
        let end = (start + 1000).min(n);
        let chunk: Vec<NewItem> = (start..end).map(|i| item(i, image(i))).collect();
        store.append_items("bench", job.id, &chunk).await.unwrap();
        start = end;
    }
    store
        .submit_open_job("bench", job.id, Mode::Batch, "bench", None, None)
        .await
        .unwrap();
    let claimed = store
        .claim_jobs_to_plan("bench", Duration::from_secs(600), 10)
        .await
        .unwrap();
    let (_, token) = claimed.into_iter().find(|(j, _)| j.id == job.id).unwrap();
    let shard = NewShard {
        id: Uuid::now_v7(),
        kind: ShardKind::Batch,
        attempt: 1,
        model: job.model.clone(),
        positions: (0..n as i64).collect(),
        next_poll_at: Utc::now(),
        poll_interval_ms: 1000,
    };
    assert!(store
        .create_shards(&token, std::slice::from_ref(&shard))
        .await
        .unwrap());
    store.release_job(&token).await.unwrap();
    (job.id, shard.id)
}

pub fn analyzer() -> Analyzer {
    batchlens::analyzer::fashion()
}

/// The service on a free port over a SQLite file in `dir`, against `sim`, with the bench
/// defaults (errors-only logs) and `extra` settings on top.
pub struct Service {
    pub base: String,
    stop: tokio_util::sync::CancellationToken,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Service {
    pub async fn start(
        sim: &openai_sim::SimServer,
        dir: &std::path::Path,
        extra: &[(&str, String)],
    ) -> Service {
        let mut env = std::collections::HashMap::new();
        let defaults = [
            (
                "DATABASE_URL",
                format!("sqlite://{}", dir.join("b.db").display()),
            ),
            ("OPENAI_BASE_URL", sim.base_url()),
            ("OPENAI_API_KEY", "sk-bench".into()),
            ("BATCHLENS__SERVER__PORT", "0".into()),
            ("BATCHLENS__DATA_DIR", dir.display().to_string()),
            ("BATCHLENS__LOG__LEVEL", "error".into()),
        ];
        for (k, v) in defaults.into_iter().chain(extra.iter().cloned()) {
            env.insert(k.to_string(), v);
        }
        let settings = batchlens::config::Settings::load_from(None, &env).unwrap();
        let app = batchlens::startup::Application::build(settings)
            .await
            .unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let handle = tokio::spawn(app.run_until_stopped(async move { s.cancelled().await }));
        Service { base, stop, handle }
    }

    /// Stops it and waits for it to finish.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }
}
