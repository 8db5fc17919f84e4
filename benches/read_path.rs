//! The read path under dashboard load: the service (release build, in this process, as
//! `benches/common` starts it) on PostgreSQL and on SQLite with
//! a 2,000-image batch job in flight (openai-sim's `in_progress` slowed so it stays there),
//! `wrk -t2 -c64 -d15s --latency` against `GET /v1/jobs/{id}`, the results page of 100, both
//! with `If-None-Match` (304s), the job GET again on a second replica keeping no rendered
//! views (`server.job_view_cache_bytes = 0`), and `/healthz` (the HTTP stack alone); beside it, on
//! PostgreSQL, `pgbench -c64 -j2 -T15` running the same point select of the job row and the
//! row plus its shards. Prints req/s, p50 and p99 of each, the aims, and the plans of the
//! item pages.
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench --bench read_path`
//! (without `DATABASE_URL`, SQLite only). `BENCH_SECS=…` changes the 15 s runs. Asserts
//! nothing about time.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use openai_sim::{SimConfig, SimServer};
use serde_json::{json, Value};

mod common;

const IMAGES: usize = 2_000;
const CONNECTIONS: &str = "64";

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>9.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms",
            self.rps, self.p50_ms, self.p99_ms
        )
    }
}

#[tokio::main]
async fn main() {
    for tool in ["wrk", "pgbench"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("{tool} is not installed (apt-get install wrk postgresql-client)");
            return;
        }
    }
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    match std::env::var("DATABASE_URL") {
        Ok(admin) if admin.starts_with("postgres") => {
            let name = format!("bl_bench_read_{}", uuid::Uuid::new_v4().simple());
            let pool = sqlx::PgPool::connect(&admin).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&pool)
                .await
                .unwrap();
            let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
            let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run(
                "PostgreSQL",
                &url,
                secs,
            )))
            .await;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&pool)
                .await
                .unwrap();
            if let Err(panic) = outcome {
                std::panic::resume_unwind(panic);
            }
        }
        _ => eprintln!("DATABASE_URL is not PostgreSQL: SQLite only"),
    }
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    run("SQLite", &url, secs).await;
}

async fn run(backend: &str, db_url: &str, secs: u64) {
    // 2,000 lines over 100 hours: the counts stand still for the length of a run.
    let sim = SimServer::spawn(SimConfig {
        in_progress_ms: 100 * 3600 * 1000,
        ..SimConfig::fast()
    })
    .await
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let service = common::Service::start(&sim, data.path(), &replica(db_url, None)).await;
    let base = service.base.clone();
    let http = reqwest::Client::new();
    wait_until(Duration::from_secs(60), || async {
        matches!(http.get(format!("{base}/readyz")).send().await, Ok(r) if r.status() == 200)
    })
    .await;

    let items: Vec<Value> = (0..IMAGES)
        .map(|i| {
            json!({"custom_id": format!("img-{i}"), "post_id": format!("post-{}", i / 4),
                   "image_url": format!("https://cdn.example.com/{i}.jpg")})
        })
        .collect();
    let job: Value = http
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"name": "read-path", "mode": "batch", "items": items}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().expect("the job is accepted").to_string();
    let job_url = format!("{base}/v1/jobs/{id}");
    wait_until(Duration::from_secs(120), || async {
        let job: Value = http
            .get(&job_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        job["batches"][0]["status"] == "in_progress"
    })
    .await;
    println!("\n== {backend}: job {id}, {IMAGES} images, its batch in_progress ==");

    let results_url = format!("{job_url}/results?limit=100");
    let healthz = wrk(&format!("{base}/healthz"), None, secs);
    println!("GET /healthz                  {healthz}");
    let job_200 = wrk(&job_url, None, secs);
    println!("GET /v1/jobs/{{id}}             {job_200}");
    let tag = etag(&http, &job_url).await;
    let job_304 = wrk(&job_url, Some(&tag), secs);
    let still = etag(&http, &job_url).await;
    println!("  with If-None-Match (304)    {job_304}   tag {tag} → {still}");
    // A second replica on the same database keeping no rendered views: every 200 reads the
    // row and its shards and serialises them (what the first does when the job moved).
    let bare_dir = tempfile::tempdir().unwrap();
    let bare = common::Service::start(&sim, bare_dir.path(), &replica(db_url, Some(0))).await;
    let bare_url = format!("{}/v1/jobs/{id}", bare.base);
    let job_bare = wrk(&bare_url, None, secs);
    println!("  no view cache (replica 2)   {job_bare}");
    bare.stop().await;
    let results_200 = wrk(&results_url, None, secs);
    println!("GET …/results?limit=100       {results_200}");
    let tag = etag(&http, &results_url).await;
    let results_304 = wrk(&results_url, Some(&tag), secs);
    let still = etag(&http, &results_url).await;
    println!("  with If-None-Match (304)    {results_304}   tag {tag} → {still}");
    let job: Value = http
        .get(&job_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!(
        "  (the job: status {}, batches {}, request_counts {})",
        job["status"],
        job["batches"].as_array().map_or(0, Vec::len),
        job["batches"][0]["request_counts"]
    );

    let mut pg_row = None;
    if db_url.starts_with("postgres") {
        let row = pgbench(
            db_url,
            &format!("SELECT * FROM jobs WHERE id = '{id}';\n"),
            secs,
        );
        println!("pgbench: the job row          {row}");
        let both = pgbench(
            db_url,
            &format!(
                "SELECT * FROM jobs WHERE id = '{id}';\n\
                 SELECT * FROM shards WHERE job_id = '{id}' ORDER BY created_at, attempt, id;\n"
            ),
            secs,
        );
        println!("pgbench: row + shards         {both}");
        pg_row = Some((row, both));
        let store = batchlens::store::PgStore::connect(db_url).await.unwrap();
        let job_id: uuid::Uuid = id.parse().unwrap();
        println!("\nPlans of the item pages (this {IMAGES}-item job):");
        for (page, plan) in store.read_path_plans(job_id).await.unwrap() {
            println!("-- {page}\n{plan}");
        }
    }

    println!("\nAims ({backend}):");
    if let Some((row, both)) = pg_row {
        println!(
            "  job GET ≥ 0.7× pgbench row+shards: {:.2}× ({:.0} / {:.0}); the row alone (a kept view reads its version): {:.2}×",
            job_200.rps / both.rps,
            job_200.rps,
            both.rps,
            job_200.rps / row.rps
        );
        println!(
            "  without the view cache: {:.2}× row+shards ({:.0} / {:.0}), p99 {:.2} ms",
            job_bare.rps / both.rps,
            job_bare.rps,
            both.rps,
            job_bare.p99_ms
        );
    }
    println!(
        "  job GET p99 < 20 ms: {:.2} ms; 304 ≥ 2× a 200: {:.2}× one that renders (replica 2), {:.2}× a kept one (the same version read); results page ≥ 2,000 req/s: {:.0} (its 304: {:.2}×)",
        job_200.p99_ms,
        job_304.rps / job_bare.rps,
        job_304.rps / job_200.rps,
        results_200.rps,
        results_304.rps / results_200.rps
    );
    service.stop().await;
}

/// A replica's settings: the database, quick batch ticks, and the view cache's bound when
/// given (the default otherwise).
fn replica(db_url: &str, view_cache_bytes: Option<usize>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("DATABASE_URL", db_url.to_string()),
        ("BATCHLENS__BATCH__TICK_MS", "100".into()),
        ("BATCHLENS__BATCH__POLL_MIN_MS", "1000".into()),
        ("BATCHLENS__BATCH__POLL_MAX_MS", "5000".into()),
    ];
    if let Some(bytes) = view_cache_bytes {
        env.push(("BATCHLENS__SERVER__JOB_VIEW_CACHE_BYTES", bytes.to_string()));
    }
    env
}

/// The ETag `url` answers now.
async fn etag(http: &reqwest::Client, url: &str) -> String {
    let r = http.get(url).send().await.unwrap();
    r.headers()
        .get("etag")
        .expect("the view carries an ETag")
        .to_str()
        .unwrap()
        .to_string()
}

/// `wrk -t2 -c64 -d<secs>s --latency` against `url`, with `If-None-Match: tag` if given.
fn wrk(url: &str, if_none_match: Option<&str>, secs: u64) -> Figures {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c", CONNECTIONS, &format!("-d{secs}s"), "--latency"]);
    if let Some(tag) = if_none_match {
        cmd.args(["-H", &format!("If-None-Match: {tag}")]);
    }
    let out = cmd.arg(url).output().expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        eprintln!("{text}");
    }
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no {prefix:?} in wrk's output:\n{text}"))
    };
    Figures {
        rps: field("Requests/sec:").parse().unwrap(),
        p50_ms: wrk_ms(&field("50%")),
        p99_ms: wrk_ms(&field("99%")),
    }
}

/// A wrk latency (`812.00us`, `1.25ms`, `2.01s`) in milliseconds.
fn wrk_ms(v: &str) -> f64 {
    let (number, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

/// `pgbench -n -M prepared -c64 -j2 -T<secs>` running `script`; tps and the p50/p99 of the
/// per-transaction latencies it logs.
fn pgbench(db_url: &str, script: &str, secs: u64) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("read.sql");
    std::fs::write(&file, script).unwrap();
    let prefix = dir.path().join("log");
    let out = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-c", CONNECTIONS, "-j2"])
        .arg(format!("-T{secs}"))
        .arg("-f")
        .arg(&file)
        .arg("-l")
        .arg(format!("--log-prefix={}", prefix.display()))
        .arg(db_url)
        .output()
        .expect("pgbench runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no tps in pgbench's output:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let mut latencies = logged_latencies_us(dir.path());
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    Figures {
        rps: tps,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    }
}

/// The latencies (µs, the third field) of every transaction pgbench logged in `dir`.
fn logged_latencies_us(dir: &Path) -> Vec<u64> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if !entry.file_name().to_string_lossy().starts_with("log") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        out.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2))
                .filter_map(|v| v.parse::<u64>().ok()),
        );
    }
    out
}

async fn wait_until<F, Fut>(deadline: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !probe().await {
        assert!(start.elapsed() < deadline, "not ready within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
