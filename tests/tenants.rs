//! Tenants: API keys created and revoked at run time (`batchlens keys`) across replicas,
//! limits per tenant (requests per second, open items, monthly budget), and owner-only
//! data files.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{fast_sim, mixed_items, wait_until, Db, TestApp};
use serde_json::{json, Value};

fn hash(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// A config file with one configured key per `(tenant, key)` and `extra` TOML after them.
pub(crate) fn config(dir: &Path, keys: &[(&str, &str)], extra: &str) -> std::path::PathBuf {
    let mut text = String::new();
    for (tenant, key) in keys {
        text += &format!(
            "[[auth.keys]]\ntenant = \"{tenant}\"\nsha256 = \"{}\"\n",
            hash(key)
        );
    }
    text += extra;
    let file = dir.join("tenants.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// Status, headers and problem+json body of an answer that must be a problem.
async fn problem(r: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    assert_eq!(
        headers["content-type"], "application/problem+json",
        "status {status}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], status);
    (status, headers, body)
}

/// GET `path` with `key`.
async fn get_with(app: &TestApp, path: &str, key: &str) -> reqwest::Response {
    app.http
        .get(app.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// GET `path` with `key`: the status.
async fn status_with(app: &TestApp, path: &str, key: &str) -> u16 {
    get_with(app, path, key).await.status().as_u16()
}

/// GET `path` with `key`: the JSON body.
pub(crate) async fn json_with(app: &TestApp, path: &str, key: &str) -> Value {
    get_with(app, path, key).await.json().await.unwrap()
}

/// The application with a key per `(tenant, key)` and the `[tenants]` TOML given.
async fn spawn_tenants(db: Db, keys: &[(&str, &str)], limits: &str) -> Option<TestApp> {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path(), keys, limits);
    TestApp::spawn_with_config(db, fast_sim(), &[], Some(&file)).await
}

pub(crate) async fn post_with(
    app: &TestApp,
    path: &str,
    key: &str,
    body: &Value,
) -> reqwest::Response {
    app.http
        .post(app.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// `batchlens keys …` against the database of `app`, as an operator runs it: exit code,
/// stdout, stderr.
fn keys_cli(app: &TestApp, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_batchlens"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &app.db.url)
        .env("BATCHLENS__DATA_DIR", &app.data_dir)
        .env("BATCHLENS__LOG__LEVEL", "warn")
        .arg("keys")
        .args(args)
        .output()
        .expect("the batchlens binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const TTL: &str = "1";

const TWO: &[(&str, &str)] = &[("acme", "key-a"), ("globex", "key-g")];

/// Created with the CLI, a key works on every replica without a restart; revoked, it is
/// refused on every replica; configured keys keep working throughout. PostgreSQL: two
/// application instances on one database; SQLite: one.
async fn keys_created_and_revoked_at_run_time(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path(), &[("ops", "ops-key")], "");
    let extra = [("BATCHLENS__AUTH__KEY_CACHE_SECS", TTL)];
    let Some(first) = TestApp::spawn_with_config(db, fast_sim(), &extra, Some(&file)).await else {
        return;
    };
    let mut replicas = vec![];
    if db == Db::Postgres {
        // The second replica has no configured key: database keys only, never open.
        let extra = [
            ("BATCHLENS__AUTH__KEY_CACHE_SECS", TTL),
            ("BATCHLENS__AUTH__REQUIRE_KEY", "true"),
        ];
        replicas.push(
            TestApp::start(
                first.db.clone(),
                first.sim.clone(),
                first.data_dir.clone(),
                &extra,
            )
            .await,
        );
    }
    replicas.insert(0, first);
    // Every replica has read the database's keys before the new one exists.
    for app in &replicas {
        assert_eq!(status_with(app, "/v1/jobs", "bl_not-yet").await, 401);
    }

    let (code, key, err) = keys_cli(&replicas[0], &["create", "--tenant", "acme"]);
    assert_eq!(code, 0, "{err}");
    let key = key.trim().to_string();
    assert!(key.starts_with("bl_") && key.len() == 67, "{key}");
    let prefix = &key[..11];
    assert!(err.contains(prefix) && err.contains("acme"), "{err}");

    for app in &replicas {
        wait_until(Duration::from_secs(10), || async {
            status_with(app, "/v1/jobs", &key).await == 200
        })
        .await;
    }
    assert_eq!(status_with(&replicas[0], "/v1/jobs", "ops-key").await, 200);
    // The key acts for its tenant, on every replica.
    let r = post_with(
        &replicas[0],
        "/v1/jobs",
        &key,
        &json!({"open": true, "items": mixed_items(1, 0)}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let last = replicas.last().unwrap();
    assert_eq!(
        status_with(last, &format!("/v1/jobs/{id}"), &key).await,
        200
    );
    assert_eq!(
        status_with(&replicas[0], &format!("/v1/jobs/{id}"), "ops-key").await,
        404,
        "another tenant's job"
    );
    if db == Db::Postgres {
        assert_eq!(status_with(last, "/v1/jobs", "ops-key").await, 401);
        assert_eq!(status_with(last, "/healthz", "").await, 200);
    }

    let (code, listed, _) = keys_cli(&replicas[0], &["list"]);
    assert_eq!(code, 0);
    let row = listed.lines().find(|l| l.starts_with(prefix)).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!((cols[1], cols[3]), ("acme", "-"), "{listed}");
    assert!(!listed.contains(&key[11..]), "the key is never shown again");

    let (code, _, err) = keys_cli(&replicas[0], &["revoke", prefix]);
    assert_eq!(code, 0, "{err}");
    for app in &replicas {
        wait_until(Duration::from_secs(10), || async {
            status_with(app, "/v1/jobs", &key).await == 401
        })
        .await;
    }
    assert_eq!(status_with(&replicas[0], "/v1/jobs", "ops-key").await, 200);
    let (_, listed, _) = keys_cli(&replicas[0], &["list"]);
    let row = listed.lines().find(|l| l.starts_with(prefix)).unwrap();
    assert_ne!(row.split_whitespace().nth(3), Some("-"), "{listed}");
    let (code, _, err) = keys_cli(&replicas[0], &["revoke", prefix]);
    assert_eq!(code, 1, "revoked once: {err}");
    let (code, _, err) = keys_cli(&replicas[0], &["create", "--tenant", "a b"]);
    assert_eq!(code, 2);
    assert!(err.contains("--tenant"), "{err}");
    for app in replicas {
        app.shutdown().await;
    }
}

/// One tenant over its requests per second gets 429 with Retry-After; another is not
/// slowed by it.
async fn requests_per_second_per_tenant(db: Db) {
    // 0.01 a second: one request, then the next token in 100 s.
    let limits = "[tenants.acme]\nrequests_per_second = 0.01\n\
                  [tenants.default]\nrequests_per_second = 1000\n";
    let Some(app) = spawn_tenants(db, TWO, limits).await else {
        return;
    };
    assert_eq!(status_with(&app, "/v1/jobs", "key-a").await, 200);
    let (status, headers, body) = problem(get_with(&app, "/v1/costs", "key-a").await).await;
    assert_eq!(status, 429);
    assert_eq!(body["type"], "https://batchlens.dev/problems/rate-limit");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("requests_per_second"),
        "{body}"
    );
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((90..=100).contains(&wait), "Retry-After {wait}");
    for _ in 0..20 {
        assert_eq!(status_with(&app, "/v1/jobs", "key-g").await, 200);
    }
    // An unknown key is a 401 whatever the bucket.
    assert_eq!(status_with(&app, "/v1/jobs", "nobody").await, 401);
    app.shutdown().await;
}

/// A job or chunk that would take a tenant past max_open_items is a 429 naming the limit,
/// stores nothing, and leaves another tenant free.
async fn max_open_items_per_tenant(db: Db) {
    let Some(app) = spawn_tenants(db, TWO, "[tenants.acme]\nmax_open_items = 3\n").await else {
        return;
    };
    let open = json!({"open": true, "items": mixed_items(2, 0)});
    let r = post_with(&app, "/v1/jobs", "key-a", &open).await;
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap();

    let more = json!({"items": mixed_items(2, 0).into_iter().enumerate()
        .map(|(i, mut item)| { item["custom_id"] = json!(format!("more-{i}")); item })
        .collect::<Vec<_>>()});
    let r = post_with(&app, &format!("/v1/jobs/{id}/items"), "key-a", &more).await;
    let (status, headers, body) = problem(r).await;
    assert_eq!(status, 429);
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("max_open_items") && detail.contains("limit of 3"),
        "{detail}"
    );
    assert!(headers.contains_key("retry-after"));
    let r = post_with(&app, "/v1/jobs", "key-a", &open).await;
    assert_eq!(problem(r).await.0, 429, "a new job counts too");
    let job = json_with(&app, &format!("/v1/jobs/{id}"), "key-a").await;
    assert_eq!(job["progress"]["total"], 2, "nothing was added: {job}");
    assert_eq!(
        status_with(&app, "/v1/jobs", "key-a").await,
        200,
        "other requests still answer"
    );

    // One more image fits exactly.
    let one = json!({"items": [more["items"][0].clone()]});
    let r = post_with(&app, &format!("/v1/jobs/{id}/items"), "key-a", &one).await;
    assert_eq!(r.status(), 200);
    // Another tenant is not held back by acme's images.
    let big = json!({"open": true, "items": mixed_items(8, 0)});
    let r = post_with(&app, "/v1/jobs", "key-g", &big).await;
    assert_eq!(r.status(), 202);
    app.shutdown().await;
}

/// Concurrent jobs of one tenant cannot together take more than its last open items: the
/// checks and the insert are one admission per tenant (in a replica).
async fn max_open_items_holds_under_concurrency(db: Db) {
    let Some(app) = spawn_tenants(db, TWO, "[tenants.acme]\nmax_open_items = 3\n").await else {
        return;
    };
    let one = json!({"open": true, "items": mixed_items(1, 0)});
    let sent = (0..8).map(|_| post_with(&app, "/v1/jobs", "key-a", &one));
    let statuses: Vec<u16> = futures::future::join_all(sent)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    let accepted = statuses.iter().filter(|&&s| s == 202).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((accepted, refused), (3, 5), "{statuses:?}");
    let list = json_with(&app, "/v1/jobs", "key-a").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    app.shutdown().await;
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// A job over what is left of a tenant's monthly budget is a 422 of type budget saying
/// how much is left; the other tenant runs, and its spend is charged to it once.
async fn monthly_budget_per_tenant(db: Db) {
    let keys = [("acme", "key-a"), ("globex", "key-g"), ("beta", "key-b")];
    let limits = "[tenants.default]\nmonthly_budget_usd = 100\n\
                  [tenants.acme]\nmonthly_budget_usd = 0.00001\n\
                  [tenants.beta]\nmonthly_budget_usd = 0.001\n";
    let Some(app) = spawn_tenants(db, &keys, limits).await else {
        return;
    };
    let body = json!({"mode": "batch", "items": mixed_items(3, 0)});
    let r = post_with(&app, "/v1/jobs", "key-a", &body).await;
    let (status, _, problem_body) = problem(r).await;
    assert_eq!(status, 422);
    assert_eq!(
        problem_body["type"],
        "https://batchlens.dev/problems/budget"
    );
    let detail = problem_body["detail"].as_str().unwrap();
    assert!(
        detail.contains("monthly_budget_usd") && detail.contains("0.000010 USD left"),
        "{detail}"
    );
    let list = json_with(&app, "/v1/jobs", "key-a").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "nothing stored");

    let r = post_with(&app, "/v1/jobs", "key-g", &body).await;
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let costs = |key: &'static str| json_with(&app, "/v1/costs", key);
    let held = costs("key-g").await;
    assert_eq!(held["budget"]["monthly_usd"], 100.0);
    assert!(f(&held["budget"]["in_flight_usd"]) > 0.0 || f(&held["budget"]["spent_usd"]) > 0.0);

    let path = format!("/v1/jobs/{id}");
    wait_until(Duration::from_secs(60), || async {
        json_with(&app, &path, "key-g").await["status"] == "completed"
    })
    .await;
    let spent = costs("key-g").await;
    let b = &spent["budget"];
    assert!(f(&spent["actual_usd"]) > 0.0, "{spent}");
    assert_eq!(f(&b["spent_usd"]), f(&spent["actual_usd"]), "{spent}");
    assert_eq!(f(&b["in_flight_usd"]), 0.0);
    assert!((f(&b["remaining_usd"]) - (100.0 - f(&b["spent_usd"]))).abs() < 1e-9);
    let other = costs("key-a").await;
    assert_eq!(
        (f(&other["actual_usd"]), f(&other["budget"]["spent_usd"])),
        (0.0, 0.0),
        "globex's spend is not acme's: {other}"
    );
    assert_eq!(other["budget"]["monthly_usd"], 0.00001);

    // An open job within beta's budget; a chunk that would pass it is refused.
    let r = post_with(
        &app,
        "/v1/jobs",
        "key-b",
        &json!({"open": true, "items": mixed_items(1, 0)}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let open: Value = r.json().await.unwrap();
    let chunk = json!({"items": mixed_items(400, 0).into_iter().skip(1).collect::<Vec<_>>()});
    let r = post_with(
        &app,
        &format!("/v1/jobs/{}/items", open["id"].as_str().unwrap()),
        "key-b",
        &chunk,
    )
    .await;
    let (status, _, body) = problem(r).await;
    assert_eq!(status, 422);
    assert_eq!(body["type"], "https://batchlens.dev/problems/budget");
    let left = costs("key-b").await;
    assert!(
        f(&left["budget"]["in_flight_usd"]) > 0.0,
        "the open job holds its estimate"
    );
    assert!(f(&left["budget"]["remaining_usd"]) < 0.001);
    app.shutdown().await;
}

/// The SQLite database (and its -wal/-shm), the data directory and the JSONL batch files
/// are owner-only.
#[cfg(unix)]
async fn data_files_are_owner_only(db: Db) {
    use std::os::unix::fs::PermissionsExt;
    let Some(app) = TestApp::spawn(db, fast_sim(), &[]).await else {
        return;
    };
    let body = json!({"mode": "batch", "items": mixed_items(4, 0)});
    let (status, job) = app.post("/v1/jobs", &body).await;
    assert_eq!(status, 202, "{job}");
    let done = app
        .wait_terminal(job["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "completed");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let mut checked = vec![];
    if db == Db::Sqlite {
        let file = std::path::PathBuf::from(app.db.url.trim_start_matches("sqlite://"));
        for suffix in ["", "-wal", "-shm"] {
            let path = std::path::PathBuf::from(format!("{}{suffix}", file.display()));
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            checked.push(path);
        }
    }
    assert_eq!(mode(&app.data_dir), 0o700);
    let mut dirs = vec![app.data_dir.join("batches")];
    let mut files = 0;
    while let Some(dir) = dirs.pop() {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                files += 1;
            }
        }
    }
    assert!(files > 0, "the batch wrote its JSONL files");
    app.shutdown().await;
}

/// Bad tenant settings stop the service with exit code 2 and a message naming them.
#[test]
fn bad_tenant_settings_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, setting) in [
        (
            "[tenants.acme]\nrequests_per_second = 0\n",
            "tenants.acme.requests_per_second",
        ),
        (
            "[tenants.default]\nmonthly_budget_usd = -1\n",
            "tenants.default.monthly_budget_usd",
        ),
        (
            "[tenants.acme]\nmax_open_items = 0\n",
            "tenants.acme.max_open_items",
        ),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, toml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_batchlens"))
            .env_clear()
            .env("BATCHLENS_CONFIG", &file)
            .env("BATCHLENS__DATA_DIR", dir.path().join("data"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {err}");
        assert!(err.contains(setting), "{toml}: {err}");
        assert!(!dir.path().join("data").exists(), "nothing created");
    }
}

on_both!(
    keys_created_and_revoked_at_run_time,
    requests_per_second_per_tenant,
    max_open_items_per_tenant,
    max_open_items_holds_under_concurrency,
    monthly_budget_per_tenant,
    data_files_are_owner_only,
);
