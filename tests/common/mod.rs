//! Test harness: the real application on port 0 against openai-sim and a fresh database
//! (a temporary SQLite file, or a PostgreSQL database of its own that is dropped after).
#![allow(dead_code, unused_macros)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use batchlens::config::Settings;
use batchlens::startup::Application;
use openai_sim::{SimConfig, SimServer};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Runs each listed `async fn name(db: Db)` as two tests, `sqlite::name` and
/// `postgres::name` (the latter skips outside CI when DATABASE_URL is not PostgreSQL).
macro_rules! on_both {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Db::Sqlite).await }
            )+
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::Db::Postgres).await }
            )+
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A database for one test; PostgreSQL ones are dropped when this is dropped.
pub struct TestDb {
    pub url: String,
    _pg: Option<testkit::PgDatabase>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// None when PostgreSQL is wanted but DATABASE_URL is not set (outside CI).
    pub async fn new(kind: Db) -> Option<TestDb> {
        match kind {
            Db::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("t.db").display());
                testkit::tally::record(
                    testkit::tally::Backend::Sqlite,
                    testkit::tally::Outcome::Ran,
                );
                Some(TestDb {
                    url,
                    _pg: None,
                    _dir: Some(dir),
                })
            }
            Db::Postgres => {
                let pg = testkit::PgDatabase::create("bl_e2e").await?;
                Some(TestDb {
                    url: pg.url().to_string(),
                    _pg: Some(pg),
                    _dir: None,
                })
            }
        }
    }
}

/// For tests that need the process to themselves (the metrics recorder is process-wide):
/// in the test harness's own process this runs the current test again, alone, in a child
/// process of the same binary, asserts it passed and returns false; in that child it
/// returns true, and the test's body runs there.
pub fn in_own_process() -> bool {
    const CHILD: &str = "BATCHLENS_TEST_OWN_PROCESS";
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .expect("libtest names the test's thread")
        .to_string();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .expect("run the test in a process of its own");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in its own process:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// Settings for a test: port 0, a temp data dir, fast polling, the given database and sim.
pub fn settings(
    db_url: &str,
    openai_base: &str,
    data_dir: &std::path::Path,
    extra: &[(&str, &str)],
    config_file: Option<&std::path::Path>,
) -> Settings {
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("DATABASE_URL".into(), db_url.into());
    env.insert("OPENAI_BASE_URL".into(), openai_base.into());
    env.insert("OPENAI_API_KEY".into(), "sk-test".into());
    env.insert("BATCHLENS__SERVER__PORT".into(), "0".into());
    env.insert("BATCHLENS__DATA_DIR".into(), data_dir.display().to_string());
    env.insert("BATCHLENS__BATCH__POLL_MIN_MS".into(), "50".into());
    env.insert("BATCHLENS__BATCH__POLL_MAX_MS".into(), "200".into());
    env.insert("BATCHLENS__BATCH__TICK_MS".into(), "20".into());
    env.insert("BATCHLENS__BATCH__LEASE_SECS".into(), "5".into());
    env.insert("BATCHLENS__OPENAI__MAX_RETRIES".into(), "8".into());
    env.insert("BATCHLENS__LOG__LEVEL".into(), "warn".into());
    // Most tests send the same few images again and again and count what reaches
    // openai-sim; tests/reuse.rs turns reuse on.
    env.insert("BATCHLENS__INTAKE__REUSE".into(), "false".into());
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    Settings::load_from(config_file.map(|f| (f, true)), &env).expect("test settings are valid")
}

/// Changes a built application before it runs.
type Customize = Box<dyn FnOnce(Application) -> Application + Send>;

/// A running application and what it runs against.
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub sim: std::sync::Arc<SimServer>,
    pub stop: CancellationToken,
    pub handle: tokio::task::JoinHandle<std::io::Result<()>>,
    pub data_dir: PathBuf,
    pub db: std::sync::Arc<TestDb>,
    _data: Option<tempfile::TempDir>,
}

pub fn fast_sim() -> SimConfig {
    SimConfig {
        validating_ms: 20,
        in_progress_ms: 300,
        finalizing_ms: 20,
        ..SimConfig::default()
    }
}

impl TestApp {
    pub async fn spawn(kind: Db, sim: SimConfig, extra: &[(&str, &str)]) -> Option<TestApp> {
        Self::spawn_with_config(kind, sim, extra, None).await
    }

    pub async fn spawn_with_config(
        kind: Db,
        sim: SimConfig,
        extra: &[(&str, &str)],
        config_file: Option<&std::path::Path>,
    ) -> Option<TestApp> {
        Self::spawn_full(kind, sim, extra, config_file, None).await
    }

    /// An application whose outbound requests resolve names through `resolver`.
    pub async fn spawn_resolving(
        kind: Db,
        sim: SimConfig,
        extra: &[(&str, &str)],
        resolver: std::sync::Arc<dyn batchlens::outbound::Resolver>,
    ) -> Option<TestApp> {
        Self::spawn_customized(kind, sim, extra, move |app| app.with_resolver(resolver)).await
    }

    /// An application changed by `customize` before it runs (`with_resolver`,
    /// `with_fetch_policy`).
    pub async fn spawn_customized(
        kind: Db,
        sim: SimConfig,
        extra: &[(&str, &str)],
        customize: impl FnOnce(Application) -> Application + Send + 'static,
    ) -> Option<TestApp> {
        Self::spawn_full(kind, sim, extra, None, Some(Box::new(customize))).await
    }

    async fn spawn_full(
        kind: Db,
        sim: SimConfig,
        extra: &[(&str, &str)],
        config_file: Option<&std::path::Path>,
        customize: Option<Customize>,
    ) -> Option<TestApp> {
        let db = std::sync::Arc::new(TestDb::new(kind).await?);
        let sim = std::sync::Arc::new(SimServer::spawn(sim).await.unwrap());
        let data = tempfile::tempdir().unwrap();
        let data_dir = data.path().to_path_buf();
        let mut app =
            Self::start_configured(db, sim, data_dir, extra, config_file, customize).await;
        app._data = Some(data);
        Some(app)
    }

    /// Starts (another) application on the same database, simulator and data directory.
    pub async fn start(
        db: std::sync::Arc<TestDb>,
        sim: std::sync::Arc<SimServer>,
        data_dir: PathBuf,
        extra: &[(&str, &str)],
    ) -> TestApp {
        Self::start_configured(db, sim, data_dir, extra, None, None).await
    }

    async fn start_configured(
        db: std::sync::Arc<TestDb>,
        sim: std::sync::Arc<SimServer>,
        data_dir: PathBuf,
        extra: &[(&str, &str)],
        config_file: Option<&std::path::Path>,
        customize: Option<Customize>,
    ) -> TestApp {
        let settings = settings(&db.url, &sim.base_url(), &data_dir, extra, config_file);
        let mut app = Application::build(settings)
            .await
            .expect("the application builds");
        if let Some(customize) = customize {
            app = customize(app);
        }
        let base = format!("http://127.0.0.1:{}", app.port());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let handle = tokio::spawn(app.run_until_stopped(async move { s.cancelled().await }));
        TestApp {
            base,
            http: reqwest::Client::new(),
            sim,
            stop,
            handle,
            data_dir,
            db,
            _data: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// `GET /metrics`: the process-wide recorder's text (see [`in_own_process`]).
    pub async fn metrics(&self) -> String {
        let r = self.http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls the job until it is terminal or the deadline passes.
    pub async fn wait_terminal(&self, id: &str, deadline: Duration) -> Value {
        let start = Instant::now();
        loop {
            let (status, job) = self.get(&format!("/v1/jobs/{id}")).await;
            assert_eq!(status, 200, "{job}");
            if ["completed", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or(""))
            {
                return job;
            }
            assert!(
                start.elapsed() < deadline,
                "job {id} not finished after {deadline:?}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every result of the job, through the NDJSON stream.
    pub async fn all_results(&self, id: &str) -> Vec<Value> {
        let text = self
            .http
            .get(self.url(&format!("/v1/jobs/{id}/results")))
            .header("accept", "application/x-ndjson")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every result of job `id`, asserting there are exactly `n`: a loop over them then
    /// checks something even when the job lost its items.
    pub async fn results_exactly(&self, id: &str, n: usize) -> Vec<Value> {
        let results = self.all_results(id).await;
        assert_eq!(results.len(), n, "results of job {id}");
        results
    }

    pub async fn shutdown(
        self,
    ) -> (
        std::sync::Arc<SimServer>,
        std::sync::Arc<TestDb>,
        PathBuf,
        Option<tempfile::TempDir>,
    ) {
        self.stop.cancel();
        let _ = self.handle.await;
        (self.sim, self.db, self.data_dir, self._data)
    }
}

pub use testkit::{b64, png};

/// A job body of `n` items mixing the three sources; every `invalid_every`-th item is a
/// broken image (0 = none).
pub fn mixed_items(n: usize, invalid_every: usize) -> Vec<Value> {
    let small = b64(&png(64, 48));
    (0..n)
        .map(|i| {
            let post = format!("post-{}", i / 4);
            if invalid_every > 0 && i % invalid_every == invalid_every - 1 {
                return json!({"custom_id": format!("img-{i}"), "post_id": post,
                              "image_base64": b64(b"%PDF-1.4 not an image"), "mime_type": "image/png"});
            }
            match i % 3 {
                0 => json!({"custom_id": format!("img-{i}"), "post_id": post,
                            "image_url": format!("https://cdn.example.com/{i}.jpg")}),
                1 => json!({"custom_id": format!("img-{i}"), "post_id": post,
                            "image_base64": small, "mime_type": "image/png"}),
                _ => json!({"custom_id": format!("img-{i}"), "post_id": post,
                            "data_url": format!("data:image/png;base64,{small}")}),
            }
        })
        .collect()
}

/// The values of the samples of `name` whose labels include every `k="v"` of `labels`.
pub fn metric_samples<'a>(
    text: &'a str,
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(move |l| {
            let metric = l.split(['{', ' ']).next().unwrap_or_default();
            metric == name
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The value of the first sample of `name` whose labels include every `k="v"` of `labels`.
pub fn metric_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric_samples(text, name, labels).next()
}

/// Submits a batch-mode job of `n` mixed images and returns its id.
pub async fn submit_batch(app: &TestApp, n: usize) -> String {
    submit(app, "batch", n).await
}

/// Submits a job of `n` mixed images in `mode` and returns its id.
pub async fn submit(app: &TestApp, mode: &str, n: usize) -> String {
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"mode": mode, "items": mixed_items(n, 0)}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    job["id"].as_str().unwrap().to_string()
}

/// GET `url`'s JSON body.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// POST `body` to `url` and read the JSON answer.
pub async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Value {
    http.post(url)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A loopback port that refuses connections for as long as the returned socket lives: bound
/// and never listening, so nobody else can take it between choosing it and connecting to it
/// (a port freed by dropping a listener can be).
pub fn refused_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

/// Polls `probe` until it is true or the deadline passes.
/// Whether `probe` became true within `deadline` (checked every 20 ms).
pub async fn wait_for(deadline: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !probe() {
        if start.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

pub async fn wait_until<F, Fut>(deadline: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !probe().await {
        assert!(
            start.elapsed() < deadline,
            "condition not met within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The first column of the first row of `sql` (an integer) on the database at `url`, read
/// directly, not through the service.
pub async fn sql_i64(url: &str, sql: &str) -> i64 {
    use sqlx::Row;
    if url.starts_with("sqlite:") {
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(url)
            .await
            .expect("open the test database");
        sqlx::query(sql)
            .fetch_one(&mut conn)
            .await
            .expect(sql)
            .get(0)
    } else {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .expect("connect to the test database");
        sqlx::query(sql)
            .fetch_one(&mut conn)
            .await
            .expect(sql)
            .get(0)
    }
}

/// Runs `sql` (no result) on the database at `url`.
pub async fn sql_exec(url: &str, sql: &str) {
    if url.starts_with("sqlite:") {
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(url)
            .await
            .expect("open the test database");
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    } else {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .expect("connect to the test database");
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
}

/// The service binary as an operator runs it, on a port it picks itself (read from its
/// "listening" log line), so parallel tests never race for one.
pub struct Service {
    pub child: Child,
    pub base: String,
}

impl Service {
    pub async fn start(
        db_url: &str,
        sim: &SimServer,
        data_dir: &std::path::Path,
        extra: &[(&str, &str)],
    ) -> Service {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("service-stderr.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_batchlens"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", db_url)
            .env("OPENAI_BASE_URL", sim.base_url())
            .env("OPENAI_API_KEY", "sk-test")
            .env("BATCHLENS__SERVER__PORT", "0")
            .env("BATCHLENS__DATA_DIR", data_dir)
            .env("BATCHLENS__BATCH__POLL_MIN_MS", "50")
            .env("BATCHLENS__BATCH__POLL_MAX_MS", "200")
            .env("BATCHLENS__BATCH__TICK_MS", "20")
            .env("BATCHLENS__BATCH__LEASE_SECS", "5")
            .env("BATCHLENS__LOG__LEVEL", "warn,batchlens::startup=info")
            .env("BATCHLENS__LOG__FORMAT", "json")
            .env("BATCHLENS__INTAKE__REUSE", "false")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the batchlens binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        testkit::on_listening_addr(stdout, move |addr| {
            let _ = tx.send(addr);
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("the service listens within 30 s")
            .expect("the service logs its address");
        Service {
            child,
            base: format!("http://{addr}"),
        }
    }

    pub async fn wait_ready(&self, http: &reqwest::Client) {
        let start = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", self.base)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "service not ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// Sends SIGTERM, as an orchestrator stopping the service does, and waits up to
    /// `within` for the process to exit; panics if it does not.
    pub async fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        self.wait_exit(within).await
    }

    /// Waits up to `within` for the process to exit on its own; panics if it does not.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the service") {
                return status;
            }
            assert!(
                start.elapsed() < within,
                "the service did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
